"""Layer distillation: ASE (the baseline) and Presto-L (METHOD.md section 4).

Both stages fine-tune a copy of the teacher that runs only ``k(sigma)`` of its ``L`` blocks, with
``k`` from a :class:`~presto_cli.diffusion.layer_schedule.LayerSchedule`:

* **ASE** [ASE] (stage ``ase``): keep the *first* k blocks (early exit), final norm + output layer
  always run; ordinary EDM denoising loss, EMA.
* **Presto-L** [paper, our reading] (stage ``presto-l``): keep the *final* ``keep_last`` block(s)
  and drop the blocks right before them; a budget embedding added to the adaLN condition
  (``budget_embed``); an optional learned per-budget rescaling (``budget_rescale``); and the
  self-teacher loss ``alpha * lambda(sigma) ||D_drop(x_sigma) - sg(D_full(x_sigma))||^2`` with the
  frozen full-depth teacher, beside the denoising loss. Each part is one
  recipe key, so ``layers.keep_last=0 layers.budget_embed=false layers.self_teacher=0`` is ASE.

Both draw each sample's sigma so that every depth of the schedule trains (``layers.sigma_dist``:
``bins`` by default, a bin uniformly then ln sigma uniform in it; ``train``/``inf`` as options) and
log the share of samples per bin (``bin{i}_share``, bin 0 the lowest noise).

The stages themselves (recipes, tasks, export) are in :mod:`presto_cli.stages.layers`; the depth-wise
forward and :class:`~presto_cli.diffusion.layered.LayeredDenoiser` in :mod:`presto_cli.diffusion.layered`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from presto_cli.diffusion.edm import Cond, EDMDenoiser, edm_weight
from presto_cli.diffusion.layer_schedule import ASE_MIN_FRACTION, LayerSchedule
from presto_cli.diffusion.layered import forward_at_depths
from presto_cli.errors import PrestoError
from presto_cli.models.dit import DiT
from presto_cli.seeds import seed_for, seeded

__all__ = ["ASEConfig", "PrestoLConfig", "build_schedule", "layer_losses", "student_from_teacher",
           "describe_schedule", "expected_bin_shares", "describe_sigma", "init_budget_embedding"]


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
    # Where each training sample's sigma comes from [ours; METHOD.md section 4]: "bins" = a bin of
    # the schedule uniformly, then ln sigma uniform within it, so every depth gets 1/n_bins of
    # the samples (ASE draws its timestep uniformly: each of its bins gets a fifth); "train" = the
    # teacher's log-normal (under 1% of it reaches the high-noise bins); "inf" = the sampler's p_inf.
    sigma_dist: Literal["bins", "train", "inf"] = "bins"


@dataclass
class PrestoLConfig(ASEConfig):
    """The ``layers:`` section of a Presto-L recipe: ASE's keys plus the four Presto-L parts."""

    keep_last: int = 1  # final blocks always run (0: drop from the end, i.e. ASE's early exit)
    budget_embed: bool = True  # embedding of the number of blocks run, added to adaLN
    budget_rescale: bool = False  # learned per-budget scalar on the residual stream
    # [ours, issue 29] The zero-initialised table moves about lr per AdamW step, so at lr 1e-4 it
    # stays near 0 beside a condition vector of norm ~10: inert. budget_init: std of a seeded normal
    # init of the rows below full depth (the full-depth row stays 0, so the full-depth student is
    # still the teacher; 0 = all zeros, the old behaviour); budget_lr_mult: learning-rate multiplier
    # of the budget embedding and rescale (1 = the old behaviour).
    budget_init: float = 0.0  # std of the seeded normal init of the budget rows below full depth (0: zeros)
    budget_lr_mult: float = 1.0  # learning-rate multiplier of the budget embedding and rescale
    self_teacher: float = 1.0  # alpha of L_st = ||D_drop - sg(D_full teacher)||^2 (0: off)
    # [ours, issue 29] the CFG weight at which L_st compares student and teacher: 1 = unguided
    # outputs (the paper's term); w > 1 = the guided outputs D(null) + w (D(c) - D(null)) the
    # sampler uses at CFG w, so the dropped model is trained for the way it samples
    self_teacher_cfg: float = 1.0
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
# Losses


def layer_losses(student: EDMDenoiser, teacher: EDMDenoiser | None, x0: Tensor, sigma: Tensor,
                 noise: Tensor, cond: Cond | None, depths: Tensor, schedule: LayerSchedule, *,
                 denoise: float = 1.0, self_teacher: float = 0.0, self_teacher_cfg: float = 1.0
                 ) -> tuple[Tensor, dict[str, Tensor]]:
    """The layer-distillation objective, per sample, and its parts (METHOD.md section 4).

    ``x_sigma = x0 + sigma noise``; ``D_drop`` = the student at ``depths``;
    ``L_dn = lambda(sigma) mean|D_drop - x0|^2`` (ASE's and Presto-L's denoising loss) and, when
    ``self_teacher > 0``, ``L_st = lambda(sigma) mean|D_drop - sg(D_full teacher)|^2`` [ours: the
    same EDM weighting, so both terms share a scale]. Returns ``(denoise L_dn + alpha L_st)[B]``.

    ``self_teacher_cfg = w != 1`` [ours, issue 29]: the self-teacher term compares *guided* outputs,
    as the sampler uses them at CFG ``w``: ``lambda |G_drop - sg(G_full)|^2`` with
    ``G = D(null) + w (D(c) - D(null))``, the student's two halves at the sample's own depth. Both
    halves come from one 2B forward; the denoising term reuses the half its (possibly dropped)
    condition selects, so it is exactly the ``w = 1`` term.
    """
    b = x0.shape[0]
    shape = (b,) + (1,) * (x0.dim() - 1)
    x_sigma = x0.float() + sigma.view(shape).float() * noise.float()
    guided = self_teacher > 0 and self_teacher_cfg != 1.0 and cond is not None
    if guided:
        dev = x_sigma.device
        halves = Cond.cat([cond.with_uncond(torch.zeros(b, dtype=torch.bool, device=dev)),
                           cond.with_uncond(torch.ones(b, dtype=torch.bool, device=dev))])
        sig = torch.as_tensor(sigma, dtype=torch.float32, device=dev).reshape(-1).expand(b)
        both = forward_at_depths(student, torch.cat([x_sigma, x_sigma]), torch.cat([sig, sig]), halves,
                                 torch.cat([depths, depths]), schedule)
        d_c, d_u = both[:b], both[b:]
        dropped = cond.uncond_flags().to(dev).view(shape)
        d_drop = torch.where(dropped, d_u, d_c)  # the output at the training condition
    else:
        d_drop = forward_at_depths(student, x_sigma, sigma, cond, depths, schedule)
    lam = edm_weight(sigma, student.cfg.sigma_data)
    l_dn = lam * (d_drop - x0.float()).pow(2).flatten(1).mean(1)
    parts = {"loss_denoise": l_dn.detach()}
    total = denoise * l_dn
    if self_teacher > 0:
        if teacher is None:
            raise ValueError("self_teacher > 0 needs the teacher")
        if guided:
            with torch.no_grad():
                target = teacher.guided(x_sigma, sigma, cond, self_teacher_cfg).float()
            ours = d_u + self_teacher_cfg * (d_c - d_u)
        else:
            with torch.no_grad():
                target = teacher(x_sigma, sigma, cond).float()
            ours = d_drop
        l_st = lam * (ours - target).pow(2).flatten(1).mean(1)
        parts["loss_self_teacher"] = l_st.detach()
        total = total + self_teacher * l_st
    return total, parts


# --------------------------------------------------------------------------------------------
# Schedules: facts for --dry-run, and the student


def describe_schedule(schedule: LayerSchedule, edm: dict) -> dict:
    """Facts for ``--dry-run``: the schedule and its mean compute per sampler step."""
    kw = {k: float(edm.get(k, d)) for k, d in
          (("sigma_min", 0.002), ("sigma_max", 80.0), ("rho", 7.0))}
    out = {"schedule": schedule.describe()}
    steps = int(edm.get("steps", 32))
    for sampler, n in (("heun", steps), ("dpmpp_2m", steps), ("euler", steps), ("fewstep", 4)):
        out[f"compute_{sampler}_{n}"] = round(schedule.sampler_compute(sampler, n, **kw), 4)
    return out


def expected_bin_shares(schedule: LayerSchedule, kind: str, edm) -> list[float]:
    """The share of training samples each bin (low -> high noise) gets under ``layers.sigma_dist``
    ``kind`` (``edm``: anything with EDMConfig's sigma_min/max, rho, p_mean, p_std)."""
    n = len(schedule.depths)
    if kind == "bins":
        return [1.0 / n] * n
    if kind == "train":  # log-normal mass between the (unclipped) edges
        cdf = lambda v: 0.5 * (1 + math.erf((v - edm.p_mean) / (edm.p_std * math.sqrt(2))))  # noqa: E731
        edges = [-math.inf] + list(schedule.bins) + [math.inf]
        return [cdf(b) - cdf(a) for a, b in zip(edges[:-1], edges[1:])]
    a, b = edm.sigma_max ** (1 / edm.rho), edm.sigma_min ** (1 / edm.rho)  # "inf": u-mass
    u = lambda ln_s: (math.exp(ln_s / edm.rho) - a) / (b - a)  # noqa: E731
    return [u(lo) - u(hi) for lo, hi in schedule.bin_ranges(edm.sigma_min, edm.sigma_max)]


def describe_sigma(schedule: LayerSchedule, kind: str, edm) -> dict:
    """For ``--dry-run``: layers.sigma_dist and the share of samples each bin will get."""
    return {"sigma_dist": kind,
            "bin_share": [round(v, 5) for v in expected_bin_shares(schedule, kind, edm)]}


def student_from_teacher(teacher: EDMDenoiser, budget_embed: bool, budget_rescale: bool,
                         budget_init: float = 0.0, seed: int = 0) -> EDMDenoiser:
    """A trainable copy of the teacher, with the budget modules added (identity at init, or the
    embedding's rows below full depth drawn with std ``budget_init``, see
    :func:`init_budget_embedding`)."""
    cfg = copy.deepcopy(teacher.net.cfg)
    cfg.budget_embed, cfg.budget_rescale = bool(budget_embed), bool(budget_rescale)
    with seeded("student-from-teacher"):  # every weight is then loaded or set: no global RNG
        net = DiT(cfg).to(next(teacher.parameters()).device)
    missing, unexpected = net.load_state_dict(teacher.net.state_dict(), strict=False)
    bad = [k for k in missing if not k.startswith("budget_")] + list(unexpected)
    if bad:
        raise PrestoError(f"cannot initialise the student from the teacher: {bad[0]}")
    if budget_init > 0:
        init_budget_embedding(net, budget_init, seed)
    return EDMDenoiser(net, copy.deepcopy(teacher.cfg)).train().requires_grad_(True)


@torch.no_grad()
def init_budget_embedding(net: DiT, std: float, seed: int) -> None:
    """Rows 0..depth-1 of ``net.budget_embed`` ~ N(0, std^2) from ``seed``; the full-depth row stays
    zero, so running every block is unchanged [ours, issue 29]."""
    if not getattr(net.cfg, "budget_embed", False):
        raise PrestoError("layers.budget_init > 0 needs layers.budget_embed: true")
    w = net.budget_embed.weight
    g = torch.Generator().manual_seed(seed_for(seed, "init", "budget-embed"))
    rows = torch.randn((w.shape[0] - 1, w.shape[1]), generator=g) * float(std)
    w[:-1].copy_(rows.to(w.device, w.dtype))
    w[-1].zero_()
