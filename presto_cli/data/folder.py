"""Folder datasets: audio files + captions -> a validated manifest -> random-crop clip dataset.

Captions come from an existing manifest (``.jsonl`` lines or ``.csv`` with ``path,caption``) or
from sidecar files next to the audio (``song.txt`` or ``song.json`` with ``caption``/``text``), else
from the file name. A tempo and key, optional, come from manifest columns or sidecar fields ``bpm``
(or ``tempo``), ``key`` (+ ``mode``), else from a BPM/key written in the caption
(:func:`presto_cli.text.musical.row_tempo_key`). ``prepare_folder`` decodes every file once and skips (and names) unreadable,
empty, silent, non-finite or too-short ones; the manifest it writes lists paths relative to the
dataset root: ``{"path", "caption", "duration", "sample_rate", "channels", [labels], [split]}``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from presto_cli.audio import AUDIO_EXTS, _read_any, resample, to_channels
from presto_cli.errors import PrestoError

CAPTION_KEYS = ("caption", "text", "description", "prompt")
PATH_KEYS = ("path", "file", "filename", "audio", "file_name")
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "metadata.jsonl", "metadata.csv", "captions.csv")
SILENCE_PEAK = 1e-4  # -80 dBFS: quieter than this is treated as silent


# ----------------------------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------------------------
def _pick(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    low = {str(k).strip().lower(): v for k, v in d.items()}
    for k in keys:
        if k in low and low[k] not in (None, ""):
            return low[k]
    return None


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` or ``.csv`` manifest; each has ``path`` and ``caption`` (maybe ``""``).

    Column aliases are accepted (``file``/``filename``/``audio`` for path, ``text``/
    ``description``/``prompt`` for caption); other keys are kept as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise PrestoError(f"manifest not found: {path}", "run `presto data prepare DIR` first")
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PrestoError(f"manifest {path} is not UTF-8 text") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or _pick({f: 1 for f in reader.fieldnames}, PATH_KEYS) is None:
            raise PrestoError(f"manifest {path} has no 'path' column",
                              "the first line must name the columns, e.g. path,caption")
        raw = [dict(r) for r in reader]
        where = lambda i: f"{path}:{i + 2}"  # noqa: E731  (header is line 1)
    else:
        raw = []
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrestoError(f"manifest {path} line {i + 1} is not valid JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise PrestoError(f"manifest {path} line {i + 1} is not a JSON object")
            obj["_line"] = i + 1
            raw.append(obj)
        where = lambda i: f"{path}:{raw[i].pop('_line')}"  # noqa: E731
    for i, r in enumerate(raw):
        loc = where(i)
        p = _pick(r, PATH_KEYS)
        if p is None:
            raise PrestoError(f"manifest row {loc} has no path")
        cap = _pick(r, CAPTION_KEYS)
        row = {k: v for k, v in r.items() if str(k).lower() not in PATH_KEYS + CAPTION_KEYS}
        row["path"] = str(p).strip()
        row["caption"] = "" if cap is None else str(cap).strip()
        rows.append(row)
    return rows


def find_manifest(root: Path) -> Path | None:
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def find_audio(root: str | Path) -> list[Path]:
    """Audio files under ``root`` (sorted; hidden files and folders skipped)."""
    root = Path(root)
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in AUDIO_EXTS:
            out.append(p)
    return out


CAPTION_EXTS = (".txt", ".json", ".jsonl", ".csv")


def why_nothing_usable(root: str | Path, problems: list[dict[str, str]]) -> str:
    """What `prepare` found when it kept nothing: files skipped and why, others it ignored."""
    from collections import Counter

    root = Path(root)
    other = Counter()
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and p.suffix.lower() not in AUDIO_EXTS + CAPTION_EXTS:
            other[p.suffix.lower() or "(no extension)"] += 1
    parts = []
    if problems:
        reasons = Counter(pr["reason"].split(" (")[0] for pr in problems)
        parts.append(f"{len(problems)} audio files found and skipped ("
                     + ", ".join(f"{n} {r}" for r, n in reasons.most_common(3)) + ")")
    if other:
        parts.append(f"{sum(other.values())} files of unsupported formats ignored ("
                     + ", ".join(f"{n} {e}" for e, n in other.most_common(3)) + ")")
    return "; ".join(parts) or "the folder holds no files"


def sidecar_caption(audio: Path, warn: list[str] | None = None) -> tuple[str | None, dict[str, Any]]:
    """Caption (and extra fields) from ``<stem>.txt`` or ``<stem>.json`` next to ``audio``; a sidecar
    that cannot be used (not UTF-8, malformed JSON, blank, no caption key) is named in ``warn``."""
    def bad(f: Path, why: str) -> None:
        if warn is not None:
            warn.append(f"{f}: {why}; its caption was not used (fix or remove the file)")

    js = audio.with_suffix(".json")
    if js.is_file():
        obj = None
        try:
            obj = json.loads(js.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            bad(js, "not valid UTF-8")
        except json.JSONDecodeError as e:
            bad(js, f"malformed JSON ({e.msg} at line {e.lineno})")
        except OSError as e:
            bad(js, f"unreadable ({e.strerror})")
        if isinstance(obj, dict):
            cap = _pick(obj, CAPTION_KEYS)
            extra = {k: obj[k] for k in ("labels", "split", "bpm", "tempo", "key", "mode") if k in obj}
            if cap is not None and str(cap).strip():
                return str(cap).strip(), extra
            bad(js, "blank caption" if cap is not None else f"no caption key ({', '.join(CAPTION_KEYS)})")
        elif isinstance(obj, str) and obj.strip():
            return obj.strip(), {}
        elif obj is not None:
            bad(js, "blank" if isinstance(obj, str) else f"a JSON {type(obj).__name__}, not an object")
    txt = audio.with_suffix(".txt")
    if txt.is_file():
        cap = ""
        try:
            cap = txt.read_bytes().decode("utf-8").strip()
            if not cap:
                bad(txt, "blank")
        except UnicodeDecodeError:
            bad(txt, "not valid UTF-8")
        except OSError as e:
            bad(txt, f"unreadable ({e.strerror})")
        if cap:
            return " ".join(cap.split()), {}
    return None, {}


def caption_from_name(audio: Path) -> str:
    return " ".join(audio.stem.replace("_", " ").replace("-", " ").split())


# ----------------------------------------------------------------------------------------------
# Validation and `presto data prepare`
# ----------------------------------------------------------------------------------------------
def check_audio(path: Path, min_seconds: float = 0.0) -> tuple[dict[str, Any] | None, str | None]:
    """Decode ``path`` once: ``(info, None)`` when usable, ``(None, reason)`` when not."""
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        data, sr = _read_any(path)
    except PrestoError as e:
        msg = e.message.split(": ", 1)[-1]
        return None, f"unreadable ({msg})"
    except OSError as e:
        return None, f"unreadable ({e.strerror or type(e).__name__})"
    if data.size == 0:
        return None, "empty (0 samples)"
    if not np.isfinite(data).all():
        return None, "contains NaN or Inf samples"
    dur = data.shape[0] / float(sr)
    if dur < min_seconds:
        return None, f"too short ({dur:.2f} s < {min_seconds:g} s)"
    peak = float(np.abs(data).max())
    if peak < SILENCE_PEAK:
        return None, f"silent (peak {20 * math.log10(max(peak, 1e-12)):.0f} dBFS)"
    return {"duration": round(dur, 4), "sample_rate": int(sr), "channels": int(data.shape[1])}, None


def prepare_folder(root: str | Path, manifest_out: str | Path | None = None,
                   captions: str | Path | None = None, min_seconds: float = 0.5,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Validate the audio under ``root`` and write its manifest atomically.

    Captions: ``captions`` (a jsonl/csv manifest) or an existing manifest in ``root``, then sidecar
    files, then the file name. Returns a summary ``{"root", "manifest", "kept", "skipped",
    "problems": [{"path", "reason"}], "hours", "captions": {"manifest", "sidecar", "filename"}}``.
    """
    from presto_cli.io import atomic_write_text

    root = Path(root)
    if root.is_file():
        raise PrestoError(f"{root} is a file, expected a folder of audio files",
                          f"give the folder that holds it: presto data prepare {root.parent}")
    if not root.is_dir():
        raise PrestoError(f"dataset folder not found: {root}")
    out = Path(manifest_out) if manifest_out else root / "manifest.jsonl"
    src = Path(captions) if captions else find_manifest(root)
    listed: dict[str, dict[str, Any]] = {}
    if src is not None:
        for row in read_manifest(src):
            rel = Path(row["path"])
            rel = rel.relative_to(root) if rel.is_absolute() and rel.is_relative_to(root) else rel
            listed[rel.as_posix()] = row
    files = {p.relative_to(root).as_posix(): p for p in find_audio(root)}
    problems: list[dict[str, str]] = []
    for rel in listed:
        if rel not in files:
            p = root / rel
            if p.is_file() and p.suffix.lower() not in AUDIO_EXTS:
                problems.append({"path": rel, "reason": f"not an audio file ({p.suffix or 'no extension'})"})
            elif p.is_file():
                files[rel] = p
            else:
                problems.append({"path": rel, "reason": "listed in the manifest but missing"})
    kept: list[dict[str, Any]] = []
    origin = {"manifest": 0, "sidecar": 0, "filename": 0}
    warnings: list[str] = []
    total = 0.0
    names = sorted(files)
    for k, rel in enumerate(names):
        info, reason = check_audio(files[rel], min_seconds)
        if progress:
            progress(k + 1, len(names))
        if reason is not None:
            problems.append({"path": rel, "reason": reason})
            continue
        row = dict(listed.get(rel, {}))
        cap = row.get("caption") or None
        if cap:
            origin["manifest"] += 1
        else:
            cap, extra = sidecar_caption(files[rel], warnings)
            if cap:
                origin["sidecar"] += 1
                row = {**extra, **row}
            else:
                cap = caption_from_name(files[rel])
                origin["filename"] += 1
        row.update({"path": rel, "caption": cap, **info})
        order = ["path", "caption", "duration", "sample_rate", "channels"]
        kept.append({**{k2: row[k2] for k2 in order}, **{k2: v for k2, v in row.items() if k2 not in order}})
        total += info["duration"]
    problems.sort(key=lambda d: d["path"])
    if kept:
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in kept))
    return {"root": str(root), "manifest": str(out) if kept else None, "kept": len(kept),
            "skipped": len(problems), "problems": problems, "hours": round(total / 3600.0, 4),
            "captions": origin, "warnings": warnings}


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------
def _hash01(text: str) -> float:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:12], 16) / float(16 ** 12)


def split_rows(rows: list[dict[str, Any]], split: str, val_fraction: float) -> list[dict[str, Any]]:
    """Select a split. ``all``: every row. ``heldout``: rows marked ``split: heldout`` (or test).
    ``train``/``val``: rows not marked held-out; ``val`` gets rows marked ``val`` plus a
    deterministic ``val_fraction`` of the rest chosen by a hash of the path (stable across runs)."""
    if split == "all":
        return list(rows)
    if split == "heldout":
        return [r for r in rows if r.get("split") in ("heldout", "test")]
    if split not in ("train", "val"):
        raise PrestoError(f"unknown split '{split}'", "use train, val, heldout or all")
    pool = [r for r in rows if r.get("split") not in ("heldout", "test")]
    is_val = [r.get("split") == "val" or _hash01(r["path"]) < val_fraction for r in pool]
    return [r for r, v in zip(pool, is_val) if v == (split == "val")]


class AudioClipDataset(torch.utils.data.Dataset):
    """Fixed-length clips (mono, or stereo with ``channels=2``) with captions from a prepared folder.

    ``getitem(i, rng)`` draws a random crop from ``rng`` (a ``torch.Generator``) and zero-pads files
    shorter than ``clip_seconds`` at the end; ``dataset[i]`` is the deterministic centre crop.
    Decoded files are kept in a small LRU cache (``cache_mb``).
    """

    def __init__(self, root: str | Path, manifest: str | Path | None = None, sample_rate: int = 16000,
                 clip_seconds: float = 4.0, split: str = "train", val_fraction: float = 0.0,
                 cache_mb: float = 256.0, channels: int = 1):
        self.root = Path(root)
        self.channels = int(channels)
        mpath = Path(manifest) if manifest else self.root / "manifest.jsonl"
        if not mpath.is_file():
            raise PrestoError(f"no manifest at {mpath}", f"run `presto data prepare {self.root}` first")
        if clip_seconds <= 0:
            raise PrestoError(f"clip_seconds must be positive, got {clip_seconds}")
        if not 0.0 <= val_fraction < 1.0:
            raise PrestoError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.sample_rate = int(sample_rate)
        self.clip_seconds = float(clip_seconds)
        self.clip_len = int(round(clip_seconds * sample_rate))
        self.split = split
        self.rows = split_rows(read_manifest(mpath), split, val_fraction)
        if not self.rows:
            raise PrestoError(f"the '{split}' split of {mpath} is empty",
                              "check the manifest or lower val_fraction")
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_budget = int(cache_mb * 2**20 / 4)  # float32 samples
        self._cached = 0

    def __len__(self) -> int:
        return len(self.rows)

    def path(self, index: int) -> Path:
        p = Path(self.rows[index]["path"])
        return p if p.is_absolute() else self.root / p

    def caption(self, index: int) -> str:
        return self.rows[index]["caption"]

    def load(self, index: int) -> torch.Tensor:
        """The whole file, decoded to (channels, T) at ``sample_rate`` (cached)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        path = self.path(index)
        if not path.is_file():
            raise PrestoError(f"audio file not found: {path}", "re-run `presto data prepare`")
        data, sr = _read_any(path)
        if data.size == 0:
            raise PrestoError(f"audio file {path} is empty (0 samples)", "re-run `presto data prepare`")
        x = torch.from_numpy(np.ascontiguousarray(resample(to_channels(data, self.channels), sr, self.sample_rate),
                                                  dtype=np.float32))
        if not torch.isfinite(x).all():
            raise PrestoError(f"audio file {path} contains NaN or Inf samples", "re-run `presto data prepare`")
        n = x.numel()
        if n <= self._cache_budget:
            self._cache[index] = x
            self._cached += n
            while self._cached > self._cache_budget:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.numel()
        return x

    def _crop(self, x: torch.Tensor, start: int) -> torch.Tensor:
        T = self.clip_len
        if x.shape[-1] < T:
            return torch.nn.functional.pad(x, (0, T - x.shape[-1]))
        return x[:, start:start + T].clone()

    def _item(self, index: int, x: torch.Tensor) -> dict[str, Any]:
        return {"audio": x, "caption": self.caption(index), "path": self.rows[index]["path"]}

    def getitem(self, index: int, rng: torch.Generator) -> dict[str, Any]:
        x = self.load(index)
        span = x.shape[-1] - self.clip_len
        start = int(torch.randint(0, span + 1, (1,), generator=rng)) if span > 0 else 0
        return self._item(index, self._crop(x, start))

    def __getitem__(self, index: int) -> dict[str, Any]:
        x = self.load(index)
        return self._item(index, self._crop(x, max(0, (x.shape[-1] - self.clip_len) // 2)))
