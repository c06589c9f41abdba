"""Teacher-trajectory regression for the few-step generator (METHOD.md section 3, "regression
warm start"; DMD's regression loss [Yin et al. 2024, DMD1], which DMD2 drops).

Why: a generator initialised from the teacher maps pure noise at sigma_max to the teacher's
denoised mean, which does not depend on the noise. At that point the expected DMD gradient
E_eps[D_real(x + sigma eps) - D_fake(x + sigma eps)] is close to zero (the real score hallucinates
structure from eps, uncorrelated with G's input), so distribution matching escapes the mean only as
fast as G's output already varies with its input. Regression onto the teacher's deterministic ODE
solutions gives G that dependence at once: ``L_reg = mean (G(x_k; sigma_k) - y)^2`` where
``x_k`` is the teacher's probability-flow ODE state at the few-step sampler's k-th noise level on a
trajectory from ``sigma_max z`` and ``y`` the trajectory's end.

:func:`teacher_trajectories` integrates the ODE (EDM Heun, the teacher's Karras grid with the
few-step points inserted, so the states lie exactly on those levels); :class:`RegressionPairs`
holds the pairs and draws a batch from the run's counter-based draws (exact under resume and DDP).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from presto_cli.diffusion.edm import Cond, EDMDenoiser, denoise_fn
from presto_cli.diffusion.samplers import sample_heun
from presto_cli.diffusion.schedules import karras_sigmas

__all__ = ["RegressionPairs", "trajectory_grid", "teacher_trajectories"]


def trajectory_grid(points: Tensor, steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """The teacher's ``steps``-point Karras grid with ``points`` inserted, descending, then 0."""
    grid = karras_sigmas(steps, sigma_min, sigma_max, rho)[:-1]
    allp = torch.cat([grid, points.float().cpu()]).unique().flip(0)  # unique sorts ascending
    return torch.cat([allp, allp.new_zeros(1)])


@torch.no_grad()
def teacher_trajectories(teacher: EDMDenoiser, noise: Tensor, cond: Cond | None, w: float,
                         points: Tensor, steps: int, rho: float,
                         interval: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """``(states [B, n, ...], ends [B, ...])``: the guided (``w``) teacher's ODE from
    ``points[0] * noise`` (``points[0]`` must be the grid's sigma_max) and its state at each of the
    ``n`` few-step ``points`` (``interval``: guided only where lo < sigma <= hi)."""
    cfg = teacher.cfg
    pts = points.float().cpu()
    if abs(float(pts[0]) - float(cfg.sigma_max)) > 1e-3 * float(cfg.sigma_max):
        raise ValueError("the trajectories start at the teacher's sigma_max")
    grid = trajectory_grid(pts, steps, cfg.sigma_min, cfg.sigma_max, rho)
    want = {round(float(p), 6): k for k, p in enumerate(pts)}
    states: list[Tensor | None] = [None] * len(pts)

    def grab(info: dict) -> None:
        k = want.get(round(float(info["sigma"]), 6))
        if k is not None:
            states[k] = info["x"].clone()

    dev = next(teacher.parameters()).device
    end = sample_heun(denoise_fn(teacher, cond, w, interval), noise.to(dev).float() * grid[0], grid.to(dev),
                      callback=grab)
    if any(s is None for s in states):
        raise RuntimeError("a few-step point fell off the trajectory grid")
    return torch.stack(states, 1), end


@dataclass
class RegressionPairs:
    """Teacher ODE pairs: ``states [N, n, ...]`` at noise levels ``sigmas [n]``, their ends
    ``targets [N, ...]`` and the condition each was generated with (``cond``, N rows)."""

    states: Tensor
    sigmas: Tensor
    targets: Tensor
    cond: Cond | None

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def draw(self, rng, b: int, device) -> tuple[Tensor, Tensor, Tensor, Cond | None]:
        """``(x_in, sigma, target, cond)`` of ``b`` pairs (global batch; this rank's rows), each
        at one of the n levels, uniformly."""
        n_pairs, n_pts = self.states.shape[0], self.states.shape[1]
        i = torch.clamp((rng.rand("reg/i", (b,)) * n_pairs).floor().long(), max=n_pairs - 1).cpu()
        k = torch.clamp((rng.rand("reg/k", (b,)) * n_pts).floor().long(), max=n_pts - 1).cpu()
        x_in = self.states[i, k].to(device).float()
        cond = self.cond.index(i.to(self.cond.pooled.device)).to(device) if self.cond is not None else None
        return x_in, self.sigmas[k].to(device).float(), self.targets[i].to(device).float(), cond
