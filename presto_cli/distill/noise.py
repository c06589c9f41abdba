"""Noise-level distributions of Presto-S (METHOD.md section 3, "Noise-level distributions").

Presto-S draws sigma in four places (generator input p_gen, DMD loss p_DMD, fake-score denoising
loss p_DSM, GAN noising p_GAN) and the paper's finding is that *which* distribution is used where
matters. Each place picks one of:

* ``"train"``: the teacher's training distribution, ``ln sigma ~ N(P_mean, P_std^2)`` (EDM).
* ``"inf"``: the inference schedule's distribution, ``sigma = (smax^(1/rho) + u (smin^(1/rho) -
  smax^(1/rho)))^rho`` with ``u ~ U(0, 1)``; with ``steps = N > 0`` instead the N points of the
  N-step few-step schedule, the one the exported sampler runs (``N = 1`` is sigma_max).
* ``"train/inf"`` [ours]: each sample independently from either, with probability 1/2.

Sampling is split in two so training stays DDP- and resume-exact: the caller draws the raw
randomness (one standard normal and two uniforms per sample, e.g. from ``ctx.randn``/``ctx.rand``,
which derive them from (seed, step, tag)), and :meth:`SigmaDist.from_noise` maps it to sigmas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from presto_cli.diffusion.schedules import inf_sigma
from presto_cli.errors import PrestoError

SigmaKind = Literal["train", "inf", "train/inf"]
SIGMA_KINDS: tuple[str, ...] = ("train", "inf", "train/inf")


@dataclass(frozen=True)
class SigmaDist:
    """One of the Presto-S noise-level distributions (see module docstring)."""

    kind: str = "train"
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    steps: int = 0  # "inf" only: 0 = continuous, N = the N points of an N-step schedule

    def __post_init__(self) -> None:
        if self.kind not in SIGMA_KINDS:
            raise PrestoError(f"unknown noise distribution '{self.kind}'",
                              f"use one of {', '.join(SIGMA_KINDS)}")
        if not (0 < self.sigma_min < self.sigma_max) or self.rho <= 0 or self.p_std < 0:
            raise PrestoError(f"invalid noise distribution parameters: sigma_min={self.sigma_min}, "
                              f"sigma_max={self.sigma_max}, rho={self.rho}, p_std={self.p_std}",
                              "need 0 < sigma_min < sigma_max, rho > 0, p_std >= 0")
        if self.steps < 0:
            raise PrestoError(f"noise distribution steps must be >= 0, got {self.steps}")

    @classmethod
    def from_edm(cls, kind: str, edm_cfg, steps: int = 0, rho: float | None = None) -> "SigmaDist":
        """Build from anything with EDMConfig's attributes (p_mean, p_std, sigma_min/max, rho);
        ``rho`` overrides the config's (the exported few-step sampler's rho)."""
        return cls(kind=kind, p_mean=float(edm_cfg.p_mean), p_std=float(edm_cfg.p_std),
                   sigma_min=float(edm_cfg.sigma_min), sigma_max=float(edm_cfg.sigma_max),
                   rho=float(edm_cfg.rho if rho is None else rho), steps=int(steps))

    # the two pure distributions ---------------------------------------------------------------
    def train_sigma(self, z: torch.Tensor) -> torch.Tensor:
        """p_train from a standard normal ``z``: ``exp(P_mean + P_std z)``."""
        return torch.exp(self.p_mean + self.p_std * z)

    def inf_sigma(self, u: torch.Tensor) -> torch.Tensor:
        """p_inf from a uniform ``u`` in [0, 1): continuous, or one of the ``steps`` points of the
        few-step schedule (:mod:`presto_cli.diffusion.schedules`, the exported sampler's)."""
        return inf_sigma(u, self.sigma_min, self.sigma_max, self.rho, self.steps)

    # the mapping used by training -------------------------------------------------------------
    def from_noise(self, z: torch.Tensor, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Sigmas from raw draws: ``z ~ N(0,1)``, ``u, c ~ U(0,1)``, all of shape ``[B]``.

        ``c`` picks the component of ``"train/inf"`` (``c < 1/2`` -> train); it is ignored otherwise.
        """
        if self.kind == "train":
            return self.train_sigma(z)
        if self.kind == "inf":
            return self.inf_sigma(u)
        return torch.where(c < 0.5, self.train_sigma(z), self.inf_sigma(u))

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """Convenience: ``n`` sigmas from a CPU generator (tests, analysis)."""
        z = torch.randn(n, generator=generator)
        u = torch.rand(n, generator=generator)
        c = torch.rand(n, generator=generator)
        return self.from_noise(z, u, c).to(device)

    # analysis -----------------------------------------------------------------------------------
    def log_density(self, sigma: torch.Tensor) -> torch.Tensor:
        """Log density of ln(sigma) under this distribution (continuous kinds only); for tests."""
        ls = torch.log(sigma)
        lp_train = (-0.5 * ((ls - self.p_mean) / self.p_std) ** 2
                    - math.log(self.p_std * math.sqrt(2 * math.pi)))
        # p_inf: sigma = k(u); density of ln sigma = 1 / |d ln k / du|
        hi, lo, r = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho), self.rho
        s = sigma ** (1 / r)
        inside = (sigma >= self.sigma_min) & (sigma <= self.sigma_max)
        lp_inf = torch.where(inside, torch.log(s / (r * (hi - lo))), torch.full_like(ls, -math.inf))
        if self.kind == "train":
            return lp_train
        if self.kind == "inf":
            return lp_inf
        return torch.logaddexp(lp_train, lp_inf) - math.log(2.0)
