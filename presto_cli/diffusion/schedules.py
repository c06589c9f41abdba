"""Noise schedules: the one place the Karras rho formula and the few-step schedule live.

METHOD.md sections 2 and 3. Everything in presto that needs a schedule gets it from here: the
ODE samplers (:func:`karras_sigmas`), the exported few-step sampler, Presto-S's backward
simulation, its discrete p_inf option (``distill.inf_steps``) and the tests' sampling helpers
(:func:`fewstep_sigmas`), the continuous p_inf and the layer schedules' bin edges (:func:`karras`).

* ``karras(u)``: ``(sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` for a
  fraction ``u`` in [0, 1] (0 is sigma_max, 1 is sigma_min).
* ``karras_sigmas(n)``: the n-point Karras schedule ``u = i / (n - 1)``, then a final 0.
* ``fewstep_sigmas(n)`` [ours]: **the** few-step schedule, the first n points of an (n+1)-point
  Karras schedule, then 0 ([80, 17.5, 2.52, 0.17] for 4 steps with the EDM defaults). The Karras
  schedule's own last point is sigma_min, where a generator step is the identity (c_skip ~ 1), so
  with it an n-step run would take only n-1 useful steps (2 steps = 1 step); dropping it spends
  every step on real noise, as DMD2's timesteps [999, 749, 499, 249] do. n = 1 is [sigma_max, 0].
"""
from __future__ import annotations

import torch
from torch import Tensor

from presto_cli.errors import PrestoError

__all__ = ["karras", "karras_sigmas", "fewstep_sigmas", "fewstep_points", "sampler_sigmas",
           "inf_sigma"]


def karras(u: Tensor, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """The Karras schedule at fraction ``u`` in [0, 1] (0 -> sigma_max, 1 -> sigma_min)."""
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (a + u * (b - a)) ** rho


def _check(n: int, sigma_min: float, sigma_max: float, rho: float) -> None:
    if n < 1:
        raise PrestoError(f"the number of steps must be >= 1, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise PrestoError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if rho <= 0:
        raise PrestoError(f"rho must be > 0, got {rho}")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  device: str | torch.device = "cpu") -> Tensor:
    """``sigma_i = karras(i / (n - 1))``, i = 0..n-1, then 0: n + 1 float32 values (n = 1 gives
    [sigma_max, 0]); computed in float64."""
    _check(n, sigma_min, sigma_max, rho)
    u = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    sig = karras(u, sigma_min, sigma_max, rho)
    return torch.cat([sig, sig.new_zeros(1)]).float().to(device)


def fewstep_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                   device: str | torch.device = "cpu") -> Tensor:
    """The few-step schedule (module docstring): n noise levels, then 0."""
    _check(n, sigma_min, sigma_max, rho)
    sig = karras_sigmas(n + 1, sigma_min, sigma_max, rho, device)
    return torch.cat([sig[:n], sig.new_zeros(1)])


def fewstep_points(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                   device: str | torch.device = "cpu") -> Tensor:
    """The n noise levels at which an n-step few-step generator is called (no final 0)."""
    return fewstep_sigmas(n, sigma_min, sigma_max, rho, device)[:n]


def sampler_sigmas(sampler: str, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                   device: str | torch.device = "cpu") -> Tensor:
    """The schedule ``sampler`` runs on: the few-step one for ``fewstep``, else Karras."""
    fn = fewstep_sigmas if sampler == "fewstep" else karras_sigmas
    return fn(n, sigma_min, sigma_max, rho, device)


def inf_sigma(u: Tensor, sigma_min: float, sigma_max: float, rho: float, steps: int = 0) -> Tensor:
    """p_inf from ``u ~ U[0, 1)``: continuous Karras (``steps = 0``), or one of the ``steps``
    points of the ``steps``-step few-step schedule, each with probability 1/steps."""
    if steps < 0:
        raise PrestoError(f"the number of schedule points must be >= 0, got {steps}")
    if steps == 0:
        return karras(u.float(), sigma_min, sigma_max, rho)
    pts = fewstep_points(steps, sigma_min, sigma_max, rho).to(u.device)
    i = torch.clamp((u.float() * steps).floor().long(), 0, steps - 1)
    return pts[i]
