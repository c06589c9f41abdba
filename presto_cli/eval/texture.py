"""Texture of latent spectrograms (METHOD.md section 6, "Texture"): does a model draw what real
latents look like, or a grainy speckle with a grid at its token size?

Measured on the model's own latent (for the mel codecs: its log-mel, before the vocoder smooths
part of the speckle), converted to dB of mel magnitude, ``[channels (mel bins), frames]``:

- ``frame_change``: mean |z[:, t+1] - z[:, t]| (dB), how much each bin moves from frame to frame;
- ``speckle``: mean |z - median3x3(z)| (dB), the grain a 3x3 median filter removes;
- ``boundary_ratio``: the mean frame change across the DiT's token boundaries (frames t -> t+1
  with (t + 1) % patch == 0) over the mean frame change inside tokens (1.0 = no grid);
- ``peaks_per_frame``: spectral peaks per frame along the mel axis with at least ``prominence``
  dB of prominence;
- ``peak_persistence``: the share of those peaks that have a peak within one bin in the next
  frame (a sustained note is a persistent peak; speckle peaks flicker);
- ``level_p5/p50/p95``: percentiles of each clip's levels relative to its maximum (dB): contrast.

A set's figures are the means over its clips; :func:`texture_ratios` divides them by a reference
set's (real latents of the same codec). Known answers (tests/test_texture.py): real latents
against other real latents score about 1; real latents plus Gaussian noise score far above 1 on
frame change and speckle; a latent with a step every ``patch`` frames has a boundary ratio far
above 1.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

__all__ = ["TEXTURE_KEYS", "latents_to_db", "clip_texture", "set_texture", "texture_ratios"]

DB_PER_NAT = 20.0 / math.log(10.0)  # the mel codec's latents are ln(mel magnitude)
TEXTURE_KEYS = ("frame_change", "speckle", "boundary_ratio", "peaks_per_frame", "peak_persistence",
                "level_p5", "level_p50", "level_p95")
RATIO_KEYS = ("frame_change", "speckle", "boundary_ratio", "peaks_per_frame", "peak_persistence")


def latents_to_db(z, codec) -> np.ndarray:
    """Scaled latents ``[B, C, F]`` of a mel codec -> absolute log-mel in dB, ``[B, C, F]`` float64.

    For a codec without a mel mean (a learned latent), the latents in units of their scale."""
    import torch

    z = torch.as_tensor(z).detach().float().cpu()
    scale = float(getattr(codec, "latent_scale", torch.ones(())).item()) if codec is not None else 1.0
    mean = getattr(codec, "mel_mean", None)
    if mean is None:
        return (z / scale).double().numpy()
    ln = z / scale + mean.detach().float().cpu()[None, :, None]
    return (ln * DB_PER_NAT).double().numpy()


def _median3x3(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(x, size=3, mode="nearest")


def clip_texture(db: np.ndarray, patch: int = 4, prominence: float = 6.0) -> dict[str, float]:
    """The texture figures of one latent ``db[C (mel), F (frames)]`` in dB."""
    from scipy.signal import find_peaks

    db = np.asarray(db, dtype=np.float64)
    if db.ndim != 2 or db.shape[1] < 2:
        raise ValueError(f"texture needs a [channels, frames] latent with >= 2 frames, got {db.shape}")
    step = np.abs(np.diff(db, axis=1))  # [C, F-1]: change from frame t to t+1
    per_t = step.mean(axis=0)
    out = {"frame_change": float(per_t.mean()),
           "speckle": float(np.abs(db - _median3x3(db)).mean())}
    if patch > 1:
        t = np.arange(per_t.shape[0])
        edge = (t + 1) % patch == 0  # frame t is a token's last, t+1 the next token's first
        inside = per_t[~edge].mean() if (~edge).any() else float("nan")
        out["boundary_ratio"] = float(per_t[edge].mean() / max(inside, 1e-12)) if edge.any() else float("nan")
    else:
        out["boundary_ratio"] = 1.0
    peaks = [find_peaks(db[:, f], prominence=prominence)[0] for f in range(db.shape[1])]
    out["peaks_per_frame"] = float(np.mean([len(p) for p in peaks]))
    kept = total = 0
    for a, b in zip(peaks[:-1], peaks[1:]):
        total += len(a)
        if len(a) and len(b):
            kept += int((np.abs(a[:, None] - b[None, :]).min(axis=1) <= 1).sum())
    out["peak_persistence"] = kept / total if total else float("nan")
    rel = db - db.max()
    for q in (5, 50, 95):
        out[f"level_p{q}"] = float(np.percentile(rel, q))
    return out


def set_texture(dbs: Iterable[np.ndarray], patch: int = 4, prominence: float = 6.0) -> dict:
    """Mean texture figures over clips (each ``[C, F]`` in dB), with ``n`` and the settings."""
    rows = [clip_texture(d, patch, prominence) for d in dbs]
    if not rows:
        raise ValueError("texture needs at least one clip")
    def mean(vals):  # NaN (no peaks at all) only where every clip has none
        ok = [v for v in vals if not math.isnan(v)]
        return float(np.mean(ok)) if ok else float("nan")

    out = {k: mean([r[k] for r in rows]) for k in TEXTURE_KEYS}
    out.update(n=len(rows), patch=int(patch), prominence_db=float(prominence))
    return out


def texture_ratios(gen: dict, ref: dict, keys: Sequence[str] = RATIO_KEYS) -> dict[str, float]:
    """``gen / ref`` for the ratio figures, and ``gen - ref`` (dB) for the level percentiles."""
    out = {f"{k}_ratio": float(gen[k] / ref[k]) if ref.get(k) else float("nan") for k in keys}
    for q in (5, 50, 95):
        out[f"level_p{q}_diff_db"] = float(gen[f"level_p{q}"] - ref[f"level_p{q}"])
    return out
