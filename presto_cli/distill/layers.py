"""Layer distillation: ASE (the baseline) and Presto-L (METHOD.md section 4).

Both stages fine-tune a copy of the teacher that runs only ``k(sigma)`` of its ``L`` blocks, with
``k`` from a :class:`~presto_cli.distill.schedule.LayerSchedule`:

* **ASE** [ASE] (stage ``ase``): keep the *first* k blocks (early exit), final norm + output layer
  always run; ordinary EDM denoising loss, EMA.
* **Presto-L** [paper, our reading] (stage ``presto-l``): keep the *final* ``keep_last`` block(s)
  and drop the blocks right before them; a budget embedding added to the adaLN condition
  (``budget_embed``); an optional learned per-budget rescaling (``budget_rescale``); and the
  self-teacher loss ``alpha * lambda(sigma) ||D_drop(x_sigma) - sg(D_full(x_sigma))||^2`` with the
  frozen full-depth teacher, beside the denoising loss, ``sigma ~ p_train``. Each part is one
  recipe key, so ``layers.keep_last=0 layers.budget_embed=false layers.self_teacher=0`` is ASE.

Training runs each sample at its own depth without paying for full depth: the batch is grouped by
depth and each group runs one forward through exactly its blocks (:func:`forward_at_depths`).

For sampling, :class:`LayeredDenoiser` wraps an :class:`~presto_cli.diffusion.edm.EDMDenoiser` and
picks each sample's blocks from its sigma, with the same ``forward``/``guided`` as the wrapped
denoiser, so every sampler (Euler, Heun, DPM++, few-step) runs it unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from presto_cli.diffusion.edm import Cond, EDMDenoiser, edm_weight
from presto_cli.distill.schedule import ASE_MIN_FRACTION, LayerSchedule
from presto_cli.errors import PrestoError

__all__ = ["ASEConfig", "PrestoLConfig", "LayeredDenoiser", "forward_at_depths",
           "layered_model_fn", "layer_losses", "build_schedule"]


# --------------------------------------------------------------------------------------------
# Recipe sections


@dataclass
class ASEConfig:
    """The ``layers:`` section of an ASE recipe (the schedule and how training picks depths)."""

    # Schedule: interior ln(sigma) bin edges (ascending) and one depth per bin, low -> high noise.
    # Both empty: the ASE-style default (n_bins bins, full depth down to min_fraction of it).
    bins: list[float] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    n_bins: int = 5
    min_fraction: float = ASE_MIN_FRACTION
    # How each training sample's depth is chosen: "schedule" = k(sigma) of its own sigma [ASE];
    # "uniform" = any depth of the schedule, so every budget is trained at every noise [ours].
    train_depth: Literal["schedule", "uniform"] = "schedule"
    lr: float = 0.0  # 0: use train.lr


@dataclass
class PrestoLConfig(ASEConfig):
    """The ``layers:`` section of a Presto-L recipe: ASE's keys plus the four Presto-L parts."""

    keep_last: int = 1  # final blocks always run (0: drop from the end, i.e. ASE's early exit)
    budget_embed: bool = True  # embedding of the number of blocks run, added to adaLN
    budget_rescale: bool = False  # learned per-budget scalar on the residual stream
    self_teacher: float = 1.0  # alpha of L_st = ||D_drop - sg(D_full teacher)||^2 (0: off)
    denoise: float = 1.0  # weight of the ordinary denoising loss


def build_schedule(cfg: ASEConfig, depth_total: int, edm_cfg, mode: str,
                   keep_last: int = 0) -> LayerSchedule:
    """The recipe's schedule, or the ASE-style default scaled to ``depth_total``."""
    if cfg.bins or cfg.depths:
        return LayerSchedule(bins=list(cfg.bins), depths=list(cfg.depths), depth_total=depth_total,
                             mode=mode, keep_last=keep_last)
    return LayerSchedule.default(depth_total, mode, n_bins=cfg.n_bins, min_fraction=cfg.min_fraction,
                                 sigma_min=edm_cfg.sigma_min, sigma_max=edm_cfg.sigma_max,
                                 rho=edm_cfg.rho, keep_last=keep_last)


# --------------------------------------------------------------------------------------------
# Running each sample at its own depth


def forward_at_depths(denoiser: EDMDenoiser, x: Tensor, sigma: Tensor, cond: Cond | None,
                      depths: Tensor, schedule: LayerSchedule) -> Tensor:
    """``D(x; sigma, c)`` with sample b running the blocks of depth ``depths[b]``.

    One forward per distinct depth, through exactly that depth's blocks, with the budget (number
    of blocks run) passed for the budget embedding. Differentiable; the result is in batch order.
    """
    b = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(b)
    depths = depths.to(device=x.device, dtype=torch.long).reshape(-1)
    uniq = sorted({int(v) for v in depths.tolist()})
    if len(uniq) == 1:
        k = uniq[0]
        return denoiser(x, sigma, cond, blocks=schedule.blocks_for_depth(k), budget=depths)
    pieces, order = [], []
    for k in uniq:
        idx = (depths == k).nonzero(as_tuple=True)[0]
        sub_cond = None if cond is None else cond.index(idx)
        pieces.append(denoiser(x[idx], sigma[idx], sub_cond, blocks=schedule.blocks_for_depth(k),
                               budget=depths[idx]))
        order.append(idx)
    out = torch.cat(pieces)
    inverse = torch.empty(b, dtype=torch.long, device=x.device)
    inverse[torch.cat(order)] = torch.arange(b, device=x.device)
    return out[inverse]


class LayeredDenoiser(nn.Module):
    """An EDM denoiser that runs ``schedule.blocks(sigma)`` for each sample (METHOD.md section 4).

    Same interface as :class:`EDMDenoiser`: ``forward(x, sigma, cond)`` and
    ``guided(x, sigma, cond, w)``; ``net``/``cfg`` are the wrapped denoiser's.
    """

    def __init__(self, denoiser: EDMDenoiser, schedule: LayerSchedule):
        super().__init__()
        depth = getattr(getattr(denoiser.net, "cfg", None), "depth", schedule.depth_total)
        if depth != schedule.depth_total:
            raise PrestoError(f"layer schedule is for {schedule.depth_total} blocks, the model has "
                              f"{depth}", "the artefact's schedule does not match its model")
        self.denoiser = denoiser
        self.schedule = schedule

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    @property
    def cfg(self):
        return self.denoiser.cfg

    def get_scalings(self, sigma: Tensor):
        return self.denoiser.get_scalings(sigma)

    def depths(self, sigma: Tensor | float, b: int, device=None) -> Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(-1).expand(b)
        return self.schedule.depths_for(s)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Cond | None, **net_kwargs) -> Tensor:
        if net_kwargs.get("blocks") is not None or net_kwargs.get("return_hidden"):
            raise ValueError("LayeredDenoiser chooses the blocks itself; call .denoiser directly")
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(b)
        return forward_at_depths(self.denoiser, x, sigma, cond, self.depths(sigma, b, x.device),
                                 self.schedule)

    def guided(self, x: Tensor, sigma: Tensor | float, cond: Cond, w: float | Tensor) -> Tensor:
        """Classifier-free guidance as one batch of 2B, each half at the schedule's depth."""
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(b)
        null = cond.with_uncond(torch.ones(b, dtype=torch.bool, device=x.device))
        conditional = cond.with_uncond(torch.zeros(b, dtype=torch.bool, device=x.device))
        d = self.forward(torch.cat([x, x]), torch.cat([sigma, sigma]), Cond.cat([conditional, null]))
        d_c, d_u = d[:b], d[b:]
        w = torch.as_tensor(w, dtype=d.dtype, device=d.device).reshape(-1)
        w = w.view((-1,) + (1,) * (x.dim() - 1)) if w.numel() > 1 else w
        return d_u + w * (d_c - d_u)


def layered_model_fn(denoiser: EDMDenoiser, schedule: LayerSchedule, cond: Cond | None,
                     cfg: float = 1.0):
    """``model_fn(x, sigma_batch) -> denoised`` for the samplers, at the schedule's depths."""
    layered = denoiser if isinstance(denoiser, LayeredDenoiser) else LayeredDenoiser(denoiser, schedule)

    def model_fn(x: Tensor, sigma: Tensor) -> Tensor:
        if cond is not None and cfg != 1.0:
            return layered.guided(x, sigma, cond, cfg)
        return layered(x, sigma, cond)

    return model_fn


# --------------------------------------------------------------------------------------------
# Losses


def layer_losses(student: EDMDenoiser, teacher: EDMDenoiser | None, x0: Tensor, sigma: Tensor,
                 noise: Tensor, cond: Cond | None, depths: Tensor, schedule: LayerSchedule, *,
                 denoise: float = 1.0, self_teacher: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """The layer-distillation objective, per sample, and its parts (METHOD.md section 4).

    ``x_sigma = x0 + sigma noise``; ``D_drop`` = the student at ``depths``;
    ``L_dn = lambda(sigma) mean|D_drop - x0|^2`` (ASE's and Presto-L's denoising loss) and, when
    ``self_teacher > 0``, ``L_st = lambda(sigma) mean|D_drop - sg(D_full teacher)|^2`` [ours: the
    same EDM weighting, so both terms share a scale]. Returns ``(denoise L_dn + alpha L_st)[B]``.
    """
    b = x0.shape[0]
    shape = (b,) + (1,) * (x0.dim() - 1)
    x_sigma = x0.float() + sigma.view(shape).float() * noise.float()
    d_drop = forward_at_depths(student, x_sigma, sigma, cond, depths, schedule)
    lam = edm_weight(sigma, student.cfg.sigma_data)
    l_dn = lam * (d_drop - x0.float()).pow(2).flatten(1).mean(1)
    parts = {"loss_denoise": l_dn.detach()}
    total = denoise * l_dn
    if self_teacher > 0:
        if teacher is None:
            raise ValueError("self_teacher > 0 needs the teacher")
        with torch.no_grad():
            d_full = teacher(x_sigma, sigma, cond).float()
        l_st = lam * (d_drop - d_full).pow(2).flatten(1).mean(1)
        parts["loss_self_teacher"] = l_st.detach()
        total = total + self_teacher * l_st
    return total, parts
