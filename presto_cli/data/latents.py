"""The latent cache: a folder dataset encoded once by a codec (``presto data encode``).

Every audio file of the manifest is cut into fixed, non-overlapping windows of ``clip_seconds``
(starting at 0; a file shorter than one window is zero-padded to one window; no random crops; each
item keeps its file's split under the folder dataset's rule, so ``LatentDataset(dir, "train")``
matches ``AudioClipDataset(split="train")``), each
window is encoded with the codec's deterministic ``encode`` (posterior mean times ``latent_scale``),
and the latents are stored as safetensors shards (``shard_00000.safetensors``, tensor ``latents``
``[n, C, F]``) plus ``index.jsonl`` (one line per item: shard, row, path, start, caption, split, tempo
and key: the file's BPM and key index, None when unknown, :func:`presto_cli.text.musical.row_tempo_key`;
a cache written before they were kept gets them from its manifest when next used) and
``cache.json`` (what the cache was built from).

The cache folder is ``<root>/<key[:16]>`` with ``root = data.latents`` or
``<data.path>/.presto-latents`` and ``key = sha256(codec file sha256, sample rate, clip length,
manifest sha256, window limit, val_fraction, format version)``: a cache is reused exactly when all of these
match, and a different codec gives a different folder. The folder is built under a temporary name
and renamed into place, so a killed encode never leaves a half cache behind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from presto_cli.errors import PrestoError

CACHE_VERSION = 1
SHARD_SIZE = 256


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _data_dict(data_cfg: Any) -> dict:
    if dataclasses.is_dataclass(data_cfg):
        return dataclasses.asdict(data_cfg)
    return dict(data_cfg or {})


def _manifest_path(data: dict) -> Path:
    if not data.get("path"):
        raise PrestoError("no dataset folder given (data.path)", "pass data.path=FOLDER")
    root = Path(data["path"])
    if not root.is_dir():
        raise PrestoError(f"dataset folder not found: {root}", "run `presto data synth` or check data.path")
    m = Path(data["manifest"]) if data.get("manifest") else root / "manifest.jsonl"
    if not m.is_file():
        raise PrestoError(f"dataset manifest not found: {m}", "run `presto data prepare` on the folder")
    return m


def _split_labels(rows: list[dict], val_fraction: float) -> list[str]:
    """Each row's split under the folder dataset's rule (:func:`presto_cli.data.folder.split_rows`):
    ``heldout``, ``val`` or ``train``."""
    from presto_cli.data.folder import split_rows

    val = {id(r) for r in split_rows(rows, "val", val_fraction)}
    held = {id(r) for r in split_rows(rows, "heldout", val_fraction)}
    return ["heldout" if id(r) in held else "val" if id(r) in val else "train" for r in rows]


def cache_key(codec_sha: str, sample_rate: int, clip_seconds: float, manifest_sha: str,
              max_windows_per_file: int | None = None, val_fraction: float = 0.0) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "codec": codec_sha, "sr": int(sample_rate),
                       "clip": round(float(clip_seconds), 6), "manifest": manifest_sha,
                       "max_windows": max_windows_per_file,
                       "val_fraction": round(float(val_fraction), 6)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _codec_sample_rate(codec_path: Path) -> int:
    from presto_cli.io import load_artefact

    _, meta = load_artefact(codec_path)
    sr = meta.get("sample_rate") or (meta.get("model") or {}).get("sample_rate")
    if not sr and isinstance(meta.get("codec"), dict):
        sr = meta["codec"].get("sample_rate")
    if not sr:
        raise PrestoError(f"{codec_path} does not say its sample rate", "is it a codec artefact?")
    return int(sr)


def latent_cache_dir(codec_path: str | Path, data_cfg: Any, max_windows_per_file: int | None = None
                     ) -> tuple[Path, str, dict]:
    """``(cache folder, key, facts)`` for ``codec_path`` and the dataset of ``data_cfg``."""
    data = _data_dict(data_cfg)
    codec_path = Path(codec_path)
    if not codec_path.is_file():
        raise PrestoError(f"codec file not found: {codec_path}", "train one with the autoencoder stage")
    manifest = _manifest_path(data)
    clip = float(data.get("clip_seconds") or 0)
    if clip <= 0:
        raise PrestoError(f"data.clip_seconds must be positive, got {clip}")
    val_fraction = float(data.get("val_fraction") or 0.0)
    facts = {"codec_sha256": file_sha256(codec_path), "manifest_sha256": file_sha256(manifest),
             "sample_rate": _codec_sample_rate(codec_path), "clip_seconds": clip,
             "max_windows_per_file": max_windows_per_file, "val_fraction": val_fraction}
    key = cache_key(facts["codec_sha256"], facts["sample_rate"], clip, facts["manifest_sha256"],
                    max_windows_per_file, val_fraction)
    root = Path(data["latents"]) if data.get("latents") else Path(data["path"]) / ".presto-latents"
    return root / key[:16], key, facts


def _is_valid(cache_dir: Path, key: str) -> bool:
    meta = cache_dir / "cache.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("key") == key
    except json.JSONDecodeError:
        return False


def _add_tempo_key(cache_dir: Path, manifest: Path) -> None:
    """Give the index rows of a cache written before tempo and key were kept their file's values
    (from the manifest it was built from: its digest is part of the cache key). Atomic; a no-op on
    a current cache."""
    from presto_cli.data.folder import read_manifest
    from presto_cli.io import atomic_write_text
    from presto_cli.text.musical import row_tempo_key

    path = cache_dir / "index.jsonl"
    items = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    if all("tempo" in it and "key" in it for it in items):
        return
    labels = {str(r["path"]): row_tempo_key(r) for r in read_manifest(manifest)}
    for it in items:
        it["tempo"], it["key"] = labels.get(str(it["path"]), (None, None))
    atomic_write_text(path, "".join(json.dumps(it) + "\n" for it in items))


def encode_dataset(codec_path: str | Path, data_cfg: Any, device: str | torch.device = "cpu",
                   batch_size: int = 16, force: bool = False, max_windows_per_file: int | None = None,
                   progress: bool = False) -> Path:
    """Encode the dataset of ``data_cfg`` with the codec at ``codec_path`` into its cache folder
    (see the module docstring); returns the folder. Reuses a complete cache with the same key
    unless ``force``."""
    from safetensors.torch import save_file

    from presto_cli.audio import load_audio
    from presto_cli.codec.base import load_codec
    from presto_cli.io import atomic_write_json

    data = _data_dict(data_cfg)
    cache_dir, key, facts = latent_cache_dir(codec_path, data, max_windows_per_file)
    if _is_valid(cache_dir, key) and not force:
        _add_tempo_key(cache_dir, _manifest_path(data))
        return cache_dir
    device = torch.device(device) if not isinstance(device, torch.device) else device
    codec = load_codec(codec_path, device)
    sr = codec.sample_rate
    win = int(round(facts["clip_seconds"] * sr))
    root = Path(data["path"])
    from presto_cli.data.folder import read_manifest
    from presto_cli.text.musical import row_tempo_key

    rows = read_manifest(_manifest_path(data))
    if not rows:
        raise PrestoError(f"the manifest of {root} lists no files", "run `presto data prepare`")
    splits = _split_labels(rows, facts["val_fraction"])

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.", suffix=".tmp", dir=str(cache_dir.parent)))
    try:
        index: list[dict] = []
        shard: list[Tensor] = []
        pending: list[tuple[Tensor, dict]] = []
        n_shards = 0
        shape: tuple[int, ...] = ()

        def flush_shard() -> None:
            nonlocal shard, n_shards
            if shard:
                save_file({"latents": torch.cat(shard).contiguous()},
                          str(tmp / f"shard_{n_shards:05d}.safetensors"))
                n_shards += 1
                shard = []

        def encode_pending() -> None:
            nonlocal pending, shape
            if not pending:
                return
            x = torch.stack([a for a, _ in pending]).to(device)
            with torch.no_grad():
                z = codec.encode(x).float().cpu()
            shape = tuple(z.shape[1:])
            for j, (_, info) in enumerate(pending):
                row = len(shard)
                info.update(shard=n_shards, row=row)
                index.append(info)
                shard.append(z[j:j + 1])
                if row + 1 >= SHARD_SIZE:
                    flush_shard()
            pending = []

        def encode_row(r: dict, split: str) -> None:
            rel = str(r["path"])
            bpm, key = row_tempo_key(r)
            file = Path(rel) if Path(rel).is_absolute() else root / rel
            audio = load_audio(file, sr, getattr(codec, "audio_channels", 1))  # [A, T]
            n_win = max(1, audio.shape[-1] // win)
            if max_windows_per_file:
                n_win = min(n_win, int(max_windows_per_file))
            for k in range(n_win):
                seg = audio[:, k * win:(k + 1) * win]
                if seg.shape[-1] < win:
                    seg = torch.nn.functional.pad(seg, (0, win - seg.shape[-1]))
                pending.append((seg, {"path": rel, "start": round(k * win / sr, 6),
                                            "caption": str(r.get("caption", "")), "split": split,
                                            "tempo": bpm, "key": key}))
                if len(pending) >= batch_size:
                    encode_pending()

        from presto_cli.runtime import progress as bar

        with bar("encoding", total=len(rows), quiet=not progress) as tick:
            for r, split in zip(rows, splits):
                encode_row(r, split)
                tick.advance()
        encode_pending()
        flush_shard()
        with open(tmp / "index.jsonl", "w") as f:
            for i, info in enumerate(index):
                f.write(json.dumps({"i": i, **info}) + "\n")
        atomic_write_json(tmp / "cache.json", {
            "key": key, "version": CACHE_VERSION, **facts, "codec_path": str(codec_path),
            "channels": int(shape[0]), "frames": int(shape[1]), "frame_rate": codec.frame_rate,
            "latent_scale": float(codec.latent_scale), "count": len(index), "shards": n_shards,
            "splits": {s: sum(1 for it in index if it["split"] == s) for s in sorted({it["split"] for it in index})},
        })
        if cache_dir.exists():  # stale or forced: replace
            shutil.rmtree(cache_dir)
        try:
            os.replace(tmp, cache_dir)
        except OSError:
            if not _is_valid(cache_dir, key):  # not a concurrent builder's complete cache
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return cache_dir


def ensure_latent_cache(codec_path: str | Path, data_cfg: Any, device: str | torch.device = "cpu",
                        batch_size: int = 16, max_windows_per_file: int | None = None,
                        progress: bool = False) -> Path:
    """The latent cache of the dataset under this codec, building it if needed (a progress bar
    on stderr with ``progress``). Under torchrun, rank 0 builds and the others wait for it."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    if dist and torch.distributed.get_rank() != 0:
        torch.distributed.barrier()
        cache_dir, key, _ = latent_cache_dir(codec_path, data_cfg, max_windows_per_file)
        if not _is_valid(cache_dir, key):
            raise PrestoError(f"rank 0 did not build the latent cache {cache_dir}")
        return cache_dir
    try:
        out = encode_dataset(codec_path, data_cfg, device, batch_size,
                             max_windows_per_file=max_windows_per_file, progress=progress)
    finally:
        if dist:
            torch.distributed.barrier()
    return out


class LatentDataset(torch.utils.data.Dataset):
    """Items ``{"latents": Tensor[C, F], "caption": str, "tempo": Tensor[] float32 BPM (NaN:
    unknown), "key": Tensor[] long 0..23 (-1: unknown)}`` of a latent cache folder.

    ``split``: ``"train"`` (default: what training stages should see; excludes the validation
    fraction and rows marked held-out), ``"val"``, ``"heldout"`` or ``"all"`` (as
    :func:`presto_cli.data.folder.split_rows`). Shards are loaded lazily and a few
    are kept in memory.
    """

    def __init__(self, cache_dir: str | Path, split: str = "train", max_open_shards: int = 4):
        self.cache_dir = Path(cache_dir)
        meta = self.cache_dir / "cache.json"
        if not meta.is_file():
            raise PrestoError(f"{self.cache_dir} is not a latent cache (no cache.json)",
                              "build one with `presto data encode`")
        self.meta = json.loads(meta.read_text())
        if self.meta.get("version") != CACHE_VERSION:
            raise PrestoError(f"latent cache {self.cache_dir} has format version "
                              f"{self.meta.get('version')}, expected {CACHE_VERSION}",
                              "rebuild it with `presto data encode`")
        if split not in ("all", "train", "val", "heldout"):
            raise PrestoError(f"unknown split '{split}'", "use all, train, val or heldout")
        items = [json.loads(l) for l in (self.cache_dir / "index.jsonl").read_text().splitlines() if l.strip()]
        self.items = items if split == "all" else [it for it in items if it["split"] == split]
        if not self.items:
            raise PrestoError(f"the '{split}' split of the latent cache {self.cache_dir} is empty",
                              "check the manifest's split marks and data.val_fraction")
        self.channels = int(self.meta["channels"])
        self.frames = int(self.meta["frames"])
        self.frame_rate = float(self.meta["frame_rate"])
        self.sample_rate = int(self.meta["sample_rate"])
        self._shards: dict[int, Tensor] = {}
        self._max_open = max(1, max_open_shards)

    def __len__(self) -> int:
        return len(self.items)

    def _shard(self, k: int) -> Tensor:
        if k not in self._shards:
            from safetensors.torch import load_file

            if len(self._shards) >= self._max_open:
                self._shards.pop(next(iter(self._shards)))
            self._shards[k] = load_file(str(self.cache_dir / f"shard_{k:05d}.safetensors"))["latents"]
        return self._shards[k]

    def __getitem__(self, index: int) -> dict:
        it = self.items[index]
        tempo, key = it.get("tempo"), it.get("key")
        return {"latents": self._shard(int(it["shard"]))[int(it["row"])].clone(),
                "caption": it["caption"],
                "tempo": torch.tensor(float("nan") if tempo is None else float(tempo), dtype=torch.float32),
                "key": torch.tensor(-1 if key is None else int(key), dtype=torch.long)}
