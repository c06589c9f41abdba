"""Layer distillation: ASE (the baseline) and Presto-L (METHOD.md section 4).

Both stages fine-tune a copy of the teacher that runs only ``k(sigma)`` of its ``L`` blocks, with
``k`` from a :class:`~presto_cli.distill.schedule.LayerSchedule`:

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

Training runs each sample at its own depth without paying for full depth: the batch is grouped by
depth and each group runs one forward through exactly its blocks (:func:`forward_at_depths`).

For sampling, :class:`LayeredDenoiser` wraps an :class:`~presto_cli.diffusion.edm.EDMDenoiser` and
picks each sample's blocks from its sigma, with the same ``forward``/``guided`` as the wrapped
denoiser, so every sampler (Euler, Heun, DPM++, few-step) runs it unchanged.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from presto_cli.diffusion.edm import (Cond, EDMDenoiser, drop_condition, edm_weight,
                                      sigma_inf_from_uniform, sigma_train_from_normal)
from presto_cli.distill.schedule import ASE_MIN_FRACTION, LayerSchedule
from presto_cli.errors import PrestoError
from presto_cli.io import load_state_strict, prefixed, save_artefact
from presto_cli.models.dit import DiT
from presto_cli.recipes import BaseRecipe, recipe_to_dict, register_stage
from presto_cli.train.loop import (EMA, Task, build_adamw, clip_and_norm, register_task, seeded,
                                   set_lr, warmup_lr)

__all__ = ["ASEConfig", "PrestoLConfig", "ASERecipe", "PrestoLRecipe", "ASETask", "PrestoLTask",
           "LayeredDenoiser", "forward_at_depths", "layered_model_fn", "layer_losses",
           "build_schedule", "student_from_teacher", "layer_meta"]


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
    self_teacher: float = 1.0  # alpha of L_st = ||D_drop - sg(D_full teacher)||^2 (0: off)
    # guidance weight of L_st [ours]: > 1 matches the CFG-guided outputs the sampler uses,
    # D_null + w (D_c - D_null), student and teacher alike (one more student forward per step)
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
                 denoise: float = 1.0, self_teacher: float = 0.0, self_teacher_cfg: float = 1.0
                 ) -> tuple[Tensor, dict[str, Tensor]]:
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
        w = float(self_teacher_cfg)
        if w != 1.0 and cond is not None:
            # guided outputs, divided by w so the term keeps the unguided one's scale. Samples
            # whose caption was dropped (CFG training) compare null outputs: weight 0.
            dropped = cond.uncond_flags().to(x0.device)
            w_vec = torch.where(dropped, torch.zeros(b, device=x0.device), torch.full((b,), w, device=x0.device))
            with torch.no_grad():
                d_full = teacher.guided(x_sigma, sigma, cond, w_vec).float()
            null = cond.with_uncond(torch.ones(b, dtype=torch.bool, device=x0.device))
            d_null = forward_at_depths(student, x_sigma, sigma, null, depths, schedule)
            wv = w_vec.view(shape)
            d_drop_g = d_null + wv * (d_drop - d_null)
            scale = torch.where(dropped, torch.ones_like(w_vec), w_vec).view(shape)
            l_st = lam * ((d_drop_g - d_full) / scale).pow(2).flatten(1).mean(1)
        else:
            with torch.no_grad():
                d_full = teacher(x_sigma, sigma, cond).float()
            l_st = lam * (d_drop - d_full).pow(2).flatten(1).mean(1)
        parts["loss_self_teacher"] = l_st.detach()
        total = total + self_teacher * l_st
    return total, parts


# --------------------------------------------------------------------------------------------
# Stages: recipes, tasks, export


def artefact_meta(path: str) -> dict | None:
    """The presto metadata of an artefact without reading its tensors (None if unreadable)."""
    import json

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("presto", "null"))
    except Exception:  # noqa: BLE001 - only used for --dry-run facts
        return None


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
    import math

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


def _teacher_path(recipe) -> str:
    if not recipe.data.teacher:
        raise PrestoError(f"the {recipe.stage} stage needs data.teacher (a teacher artefact)",
                          "train one with `presto pretrain recipes/tiny/teacher.yaml`, then set "
                          "data.teacher=runs/tiny-teacher/model.safetensors")
    return recipe.data.teacher


class _LayerRecipeMixin:
    def schedule_for(self, depth_total: int, edm_cfg) -> LayerSchedule:
        keep = getattr(self.layers, "keep_last", 0)
        mode = "keep-last" if self.stage in ("presto-l", "presto-ls") else "first-k"
        return build_schedule(self.layers, depth_total, edm_cfg, mode, keep_last=keep)

    def describe(self) -> dict:
        """For ``--dry-run``: the schedule and mean compute per step (needs the teacher file)."""
        from types import SimpleNamespace

        meta = artefact_meta(self.data.teacher) if self.data.teacher else None
        if not meta or "model" not in meta:
            return {"schedule": "depends on the teacher's depth (data.teacher not readable yet)"}
        edm = meta.get("edm") or {}
        e = SimpleNamespace(**{k: float(edm.get(k, d)) for k, d in (
            ("sigma_min", 0.002), ("sigma_max", 80.0), ("rho", 7.0), ("p_mean", -1.2), ("p_std", 1.2))})
        sched = self.schedule_for(int(meta["model"]["depth"]), e)
        return {"teacher": self.data.teacher, **describe_schedule(sched, edm),
                **describe_sigma(sched, self.layers.sigma_dist, e)}


@register_stage("ase")
@dataclass
class ASERecipe(_LayerRecipeMixin, BaseRecipe):
    """``presto distill-layers`` with ``stage: ase``: the model comes from data.teacher."""

    stage: str = "ase"
    layers: ASEConfig = field(default_factory=ASEConfig)
    toy_size: int = 4096  # points drawn when the teacher was trained on a toy mixture


@register_stage("presto-l")
@dataclass
class PrestoLRecipe(_LayerRecipeMixin, BaseRecipe):
    """``presto distill-layers`` with ``stage: presto-l``."""

    stage: str = "presto-l"
    layers: PrestoLConfig = field(default_factory=PrestoLConfig)
    toy_size: int = 4096


def student_from_teacher(teacher: EDMDenoiser, budget_embed: bool, budget_rescale: bool
                         ) -> EDMDenoiser:
    """A trainable copy of the teacher, with the budget modules added (identity at init)."""
    cfg = copy.deepcopy(teacher.net.cfg)
    cfg.budget_embed, cfg.budget_rescale = bool(budget_embed), bool(budget_rescale)
    with seeded("student-from-teacher"):  # every weight is then loaded or set: no global RNG
        net = DiT(cfg).to(next(teacher.parameters()).device)
    missing, unexpected = net.load_state_dict(teacher.net.state_dict(), strict=False)
    bad = [k for k in missing if not k.startswith("budget_")] + list(unexpected)
    if bad:
        raise PrestoError(f"cannot initialise the student from the teacher: {bad[0]}")
    return EDMDenoiser(net, copy.deepcopy(teacher.cfg)).train().requires_grad_(True)


class LayerTask(Task):
    """ASE (``self.mode = first-k``, denoising loss only) and Presto-L (``keep-last`` + parts)."""

    kind = "ase"

    def __init__(self, recipe, ctx, run_dir: Path):
        super().__init__(recipe, ctx, run_dir)
        from presto_cli.data.latents import file_sha256
        from presto_cli.diffusion.teacher import TextCache, load_teacher
        from presto_cli.text.encoders import build_text_encoder

        self.device = ctx.device
        path = _teacher_path(recipe)
        self.teacher_path, self.teacher_sha256 = str(path), file_sha256(path)
        teacher, meta, tensors = load_teacher(path, self.device)
        if meta.get("kind") != "teacher":
            raise PrestoError(f"{path} is a '{meta.get('kind')}' artefact; layer distillation "
                              "starts from a full-depth teacher", "point data.teacher at a "
                              "`presto pretrain` output")
        self.teacher_meta = meta
        self.codec_tensors = {k: v for k, v in tensors.items() if k.startswith("codec.")}
        lc = recipe.layers
        self.alpha = float(getattr(lc, "self_teacher", 0.0))
        self.w_denoise = float(getattr(lc, "denoise", 1.0))
        if self.alpha < 0 or self.w_denoise < 0:
            raise PrestoError("layers.self_teacher and layers.denoise must be >= 0")
        if self.alpha == 0 and self.w_denoise == 0:
            raise PrestoError("layers.self_teacher and layers.denoise are both 0: nothing to train",
                              "set layers.denoise: 1.0")
        self.student = student_from_teacher(teacher, getattr(lc, "budget_embed", False),
                                            getattr(lc, "budget_rescale", False))
        self.teacher = teacher.eval().requires_grad_(False) if self.alpha > 0 else None
        self.edm = self.student.cfg
        self.schedule = recipe.schedule_for(self.student.net.cfg.depth, self.edm)
        self.ema = EMA(self.student, recipe.train.ema) if recipe.train.ema > 0 else None
        self.opt = build_adamw(self.student.parameters(), recipe.train.lr, recipe.train)
        self.text = TextCache(build_text_encoder(meta.get("text", "minilm"), device=self.device))
        self._dataset = None

    # -- data --------------------------------------------------------------------------------
    def make_dataset(self):
        if self._dataset is not None:
            return self._dataset
        from presto_cli.diffusion.teacher import distillation_dataset

        self._dataset = distillation_dataset(self.recipe, self.teacher_meta, self.device)
        return self._dataset

    # -- training ----------------------------------------------------------------------------
    def train_depths(self, sigma: Tensor, ctx) -> Tensor:
        """Each sample's depth: ``k(sigma)`` [ASE], or uniform over the schedule's depths."""
        if self.recipe.layers.train_depth == "schedule":
            return self.schedule.depths_for(sigma)
        choices = torch.tensor(sorted(set(self.schedule.depths)), device=sigma.device)
        u = ctx.rand("layers.depth", (ctx.global_batch,)).to(sigma.device)
        idx = torch.clamp((u * len(choices)).long(), max=len(choices) - 1)
        return choices[idx]

    def train_sigmas(self, ctx) -> Tensor:
        """Each sample's sigma under ``layers.sigma_dist`` (all draws counter-based)."""
        kind, e, G = self.recipe.layers.sigma_dist, self.edm, ctx.global_batch
        if kind == "train":
            return sigma_train_from_normal(e, ctx.randn("layers.sigma", (G,)))
        if kind == "inf":
            return sigma_inf_from_uniform(e, ctx.rand("layers.sigma_u", (G,)))
        return self.schedule.sigma_in_bins(ctx.rand("layers.sigma_bin", (G,)),
                                           ctx.rand("layers.sigma_u", (G,)), e.sigma_min, e.sigma_max)

    def train_step(self, batch: dict, ctx) -> dict[str, float]:
        r = self.recipe
        x0 = batch["latents"].to(self.device).float()
        G = ctx.global_batch
        sigma = self.train_sigmas(ctx).to(self.device)
        noise = ctx.randn("layers.noise", (G, *x0.shape[1:]))
        cond = self.text(list(batch["caption"]), self.device)
        cond = drop_condition(cond, self.edm.p_uncond, ctx.rand("layers.cfg_drop", (G,)))
        depths = self.train_depths(sigma, ctx)
        lr = warmup_lr(r.train.lr, ctx.step, r.train.warmup)
        set_lr(self.opt, lr)
        self.student.train()
        with ctx.autocast():
            total, parts = layer_losses(self.student, self.teacher, x0, sigma, noise, cond, depths,
                                        self.schedule, denoise=self.w_denoise,
                                        self_teacher=self.alpha,
                                        self_teacher_cfg=float(getattr(r.layers, "self_teacher_cfg", 1.0)))
        loss = total.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.sync_grads(self.student)
        gnorm = clip_and_norm(self.student.parameters(), r.train.grad_clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.student, ctx.step)
        out = {"loss": float(loss.detach()), "grad_norm": gnorm, "lr": lr,
               "depth": float(depths.float().mean()) / self.schedule.depth_total,
               **self.schedule.bin_shares(sigma)}
        out.update({k: float(v.mean()) for k, v in parts.items()})
        return out

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = {"student": self.student.state_dict(), "opt": self.opt.state_dict(),
              "schedule": self.schedule.to_dict(), "teacher_sha256": self.teacher_sha256}
        if self.ema is not None:
            sd["ema"] = self.ema.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        from presto_cli.diffusion.teacher import check_same_teacher

        check_same_teacher(sd, self.teacher_path, self.teacher_sha256)
        if LayerSchedule.from_dict(sd["schedule"]) != self.schedule:
            raise PrestoError("the checkpoint was trained with another layer schedule",
                              "resume with the recipe the run started with")
        load_state_strict(self.student, sd["student"], f"{self.kind} checkpoint")
        self.opt.load_state_dict(sd["opt"])
        if self.ema is not None:
            if "ema" not in sd:
                raise PrestoError("the checkpoint has no EMA but the recipe enables one")
            self.ema.load_state_dict(sd["ema"])

    def export_denoiser(self) -> EDMDenoiser:
        return self.ema.shadow if self.ema is not None else self.student

    def export(self, path: Path) -> None:
        den = self.export_denoiser()
        tensors = prefixed({k: v.float() for k, v in den.net.state_dict().items()}, "dit")
        tensors.update(self.codec_tensors)
        save_artefact(path, tensors, layer_meta(self.teacher_meta, self.kind, den.net.cfg,
                                                self.schedule, self.recipe))

    def describe(self) -> dict:
        return {"params": self.student.net.num_params(),
                **describe_schedule(self.schedule, recipe_to_dict(self.edm)),
                **describe_sigma(self.schedule, self.recipe.layers.sigma_dist, self.edm)}


def layer_meta(teacher_meta: dict, kind: str, model_cfg, schedule: LayerSchedule, recipe,
               sampler: dict | None = None) -> dict:
    """Artefact metadata: the teacher's, with the kind, model, schedule and provenance updated."""
    meta = {k: v for k, v in teacher_meta.items() if k not in ("version", "created")}
    meta.update(kind=kind, name=recipe.name or kind, model=recipe_to_dict(model_cfg),
                schedule=schedule.to_dict(), teacher=recipe.data.teacher,
                recipe=recipe_to_dict(recipe))
    if sampler is not None:
        meta["sampler"] = sampler
    return meta


@register_task("ase")
class ASETask(LayerTask):
    kind = "ase"


@register_task("presto-l")
class PrestoLTask(LayerTask):
    kind = "presto-l"
