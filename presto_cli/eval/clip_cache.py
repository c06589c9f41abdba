"""Clips that ``presto eval`` generated before, reused instead of generated again.

A clip is keyed by everything its samples depend on: the model file's SHA-256 (and the codec file
it keeps beside itself, if any), the prompt, the seed, the sampler, its steps, guidance weight and
ρ, the number of latent frames (the duration), the prompt-matching mode and the presto version.
Device and batch composition are not in the key (they change a clip only at rounding level).
Layout: ``<root>/<key[:2]>/<key>.wav`` plus ``<key>.json`` (the conditions the clip was made
under, e.g. the matched training caption); the JSON is written first and the wav last, each
atomically, so a wav in the cache always has its record. The wav is hard-linked where it can be
(one copy on disk), else copied. With ``--metrics texture`` each clip's latents in dB are kept too
(``<key>.db.npy``); a clip without them is generated again when texture is asked for.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from presto_cli.io import atomic_write_json


def default_root(embedding_cache: str | None = None) -> Path:
    """``<embedding cache>/clips`` for ``--cache DIR``, else $PRESTO_CLIP_CACHE, else
    ``$PRESTO_CACHE/clips`` (default ``~/.cache/presto/clips``)."""
    from presto_cli.eval.embedders import default_cache_dir

    if embedding_cache:
        return Path(embedding_cache) / "clips"
    return Path(os.environ.get("PRESTO_CLIP_CACHE") or default_cache_dir().parent / "clips")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_digest(path: str | Path) -> str:
    """SHA-256 of the model file, combined with its shared codec file's when it names one."""
    from presto_cli.io import read_artefact_meta

    p = Path(path)
    digest = _sha256(p)
    try:
        codec = read_artefact_meta(p).get("codec_file")
    except Exception:  # an unreadable header: the model load reports it
        codec = None
    if codec and (p.parent / codec).is_file():
        digest = hashlib.sha256(f"{digest}\n{_sha256(p.parent / codec)}".encode()).hexdigest()
    return digest


def _place(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to (else a copy of) ``src``, atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


class ClipCache:
    """Generated clips by :meth:`key`; ``hits`` and ``misses`` count lookups."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model_digest: str, prompt: str, seed: int, settings: dict[str, Any]) -> str:
        from presto_cli import __version__

        text = json.dumps({"presto": __version__, "model": model_digest, "prompt": prompt, "seed": int(seed),
                           **settings}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _files(self, key: str) -> tuple[Path, Path]:
        d = self.root / key[:2]
        return d / f"{key}.wav", d / f"{key}.json"

    def has(self, key: str) -> bool:
        return all(f.is_file() for f in self._files(key))

    def get(self, key: str, dest: Path) -> dict | None:
        """Put the cached clip ``key`` at ``dest``; returns its conditions, or None if not cached."""
        wav, rec = self._files(key)
        try:
            conds = json.loads(rec.read_text(encoding="utf-8")) if wav.is_file() else None
            if conds is not None:
                _place(wav, Path(dest))
        except (OSError, json.JSONDecodeError):
            conds = None
        if conds is None:
            self.misses += 1
            return None
        self.hits += 1
        return conds

    def get_latents(self, key: str):
        """The clip's latents in dB kept for `--metrics texture` (None if not kept)."""
        import numpy as np

        f = self.root / key[:2] / f"{key}.db.npy"
        try:
            return np.load(f, allow_pickle=False) if f.is_file() else None
        except (OSError, ValueError):
            return None

    def put(self, key: str, src: Path, conds: dict, latents=None) -> None:
        """Keep the clip at ``src`` (made under ``conds``), and its latents in dB if given; a cache
        that cannot be written is skipped."""
        import io

        import numpy as np

        from presto_cli.io import atomic_write_bytes

        wav, rec = self._files(key)
        try:
            wav.parent.mkdir(parents=True, exist_ok=True)
            if latents is not None:
                buf = io.BytesIO()
                np.save(buf, np.asarray(latents), allow_pickle=False)
                atomic_write_bytes(wav.parent / f"{key}.db.npy", buf.getvalue())
            atomic_write_json(rec, conds)
            _place(Path(src), wav)
        except OSError:
            pass
