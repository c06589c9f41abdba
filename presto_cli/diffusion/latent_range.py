"""The training latents' range per channel, and clipping the denoiser's output to it (METHOD.md
section 2, "x0 clipping").

A diffusion model's prediction of the clean latent, ``x0 = D(x; sigma, c)``, can leave the range the
data ever takes: CFG extrapolates ``D(c) + (w - 1)(D(c) - D(null))`` and a few elements overshoot.
The demo teacher drew a median of 18 pixels per 4 s clip within 6 dB of its maximum (real clips: 152),
some above the loudest value the training latents ever take in that mel bin, so each clip's levels
relative to its maximum sat 5-6 dB below real clips'. DDPM clips its x0 prediction to the data's [-1, 1]
("clip_denoised"), Imagen calls the same static thresholding; here the bounds are measured, per
latent channel (mel bin), on the training split: ``hi[c] = max`` and ``lo[c] = min`` over every
training clip and frame of channel ``c``, in the model's scaled latent units. A real latent is
unchanged by the clip (every training value is inside its bounds by construction).

Stored in a model artefact as ``latent_range.hi`` / ``latent_range.lo`` (``[C]``) with
``meta["latent_range"]`` (where and how many); `presto pretrain` writes them for a teacher trained on
a codec's latents and the distillation stages carry them into their students.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["LatentRange", "PREFIX", "x0_clipped"]

PREFIX = "latent_range."


@dataclass
class LatentRange:
    hi: Tensor  # [C] the largest value of each channel over the training latents
    lo: Tensor  # [C] the smallest
    n: int = 0  # training clips measured
    source: str = ""

    def __post_init__(self):
        self.hi = torch.as_tensor(self.hi, dtype=torch.float32).flatten()
        self.lo = torch.as_tensor(self.lo, dtype=torch.float32).flatten()
        if self.hi.shape != self.lo.shape or self.hi.numel() == 0:
            raise ValueError(f"latent range needs hi and lo of one shape [C], got {tuple(self.hi.shape)} "
                             f"and {tuple(self.lo.shape)}")
        if bool((self.lo > self.hi).any()):
            raise ValueError("latent range has lo > hi in some channel")

    @property
    def channels(self) -> int:
        return int(self.hi.numel())

    @classmethod
    def measure(cls, latents: Iterable[Tensor], source: str = "") -> "LatentRange":
        """The per-channel max and min of latents ``[C, F]`` (or batches ``[B, C, F]``): over clips
        and frames, never over channels."""
        hi = lo = None
        n = 0
        for z in latents:
            z = torch.as_tensor(z).detach().float()
            if z.dim() == 2:
                z = z[None]
            if z.dim() != 3:
                raise ValueError(f"latents must be [C, F] or [B, C, F], got {tuple(z.shape)}")
            zh, zl = z.amax(dim=(0, 2)), z.amin(dim=(0, 2))
            hi = zh if hi is None else torch.maximum(hi, zh)
            lo = zl if lo is None else torch.minimum(lo, zl)
            n += z.shape[0]
        if hi is None:
            raise ValueError("latent range needs at least one latent")
        return cls(hi, lo, n, source)

    def clip(self, x: Tensor) -> Tensor:
        """``x`` ``[..., C, F]`` clamped into ``[lo[c], hi[c]]`` channel by channel."""
        if x.shape[-2] != self.channels:
            raise ValueError(f"latent range has {self.channels} channels, the latent {x.shape[-2]}")
        hi = self.hi.to(device=x.device, dtype=x.dtype)[:, None]
        lo = self.lo.to(device=x.device, dtype=x.dtype)[:, None]
        return torch.minimum(torch.maximum(x, lo), hi)

    def to_artefact(self) -> tuple[dict[str, Tensor], dict]:
        return ({PREFIX + "hi": self.hi.clone(), PREFIX + "lo": self.lo.clone()},
                {"n": int(self.n), "source": self.source, "rule": "per-channel max/min of the training latents"})

    @classmethod
    def from_artefact(cls, tensors: dict, meta: dict) -> "LatentRange | None":
        if PREFIX + "hi" not in tensors or PREFIX + "lo" not in tensors:
            return None
        m = meta.get("latent_range") or {}
        return cls(tensors[PREFIX + "hi"].float(), tensors[PREFIX + "lo"].float(), int(m.get("n", 0)),
                   str(m.get("source", "")))

    def save(self, path: str | Path) -> None:
        from presto_cli.io import save_artefact

        t, m = self.to_artefact()
        save_artefact(path, t, {"kind": "latent-range", "latent_range": m})

    @classmethod
    def load(cls, path: str | Path) -> "LatentRange | None":
        from presto_cli.io import load_artefact

        tensors, meta = load_artefact(path)
        return cls.from_artefact(tensors, meta)


def x0_clipped(model_fn: Callable, rng: LatentRange) -> Callable:
    """``model_fn`` (a denoiser returning x0 predictions ``[B, C, F]``) whose output is clamped into
    the training latents' range, channel by channel; keyword arguments pass through."""
    def clipped(x: Tensor, sigma: Tensor, **kw) -> Tensor:
        return rng.clip(model_fn(x, sigma, **kw))

    return clipped
