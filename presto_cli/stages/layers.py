"""Stages ``ase`` and ``presto-l`` (``presto distill-layers``, METHOD.md section 4): fine-tune a copy of
the teacher that runs only ``k(sigma)`` of its blocks (:mod:`presto_cli.distill.layers` has the
losses and the schedule construction, :mod:`presto_cli.diffusion.layered` the depth-wise forward)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from presto_cli.diffusion.edm import (EDMDenoiser, drop_condition, sigma_inf_from_uniform,
                                      sigma_train_from_normal)
from presto_cli.diffusion.layer_schedule import LayerSchedule
from presto_cli.distill.layers import (ASEConfig, PrestoLConfig, build_schedule, describe_schedule,
                                       describe_sigma, layer_losses, student_from_teacher)
from presto_cli.errors import PrestoError
from presto_cli.io import load_state_strict, prefixed, read_artefact_meta, save_artefact
from presto_cli.recipes import BaseRecipe, recipe_to_dict, register_stage
from presto_cli.stages.common import DistillTask
from presto_cli.train.loop import EMA, ema_state, build_adamw, optimizer_step, register_task, warmup_lr

__all__ = ["ASERecipe", "PrestoLRecipe", "ASETask", "PrestoLTask", "layer_meta"]


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

        try:
            meta = read_artefact_meta(self.data.teacher) if self.data.teacher else None
        except PrestoError:
            meta = None
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


class LayerTask(DistillTask):
    """ASE (``self.mode = first-k``, denoising loss only) and Presto-L (``keep-last`` + parts)."""

    kind = "ase"

    def __init__(self, recipe, ctx, run_dir: Path):
        super().__init__(recipe, ctx, run_dir, _teacher_path(recipe),
                         "layer distillation starts from a full-depth teacher", "data.teacher")
        teacher = self.frozen
        lc = recipe.layers
        self.alpha = float(getattr(lc, "self_teacher", 0.0))
        self.w_denoise = float(getattr(lc, "denoise", 1.0))
        self.st_cfg = float(getattr(lc, "self_teacher_cfg", 1.0))
        if self.st_cfg <= 0:
            raise PrestoError(f"layers.self_teacher_cfg must be > 0 (got {self.st_cfg:g})",
                              "1 for the unguided self-teacher term, the sampler's CFG (e.g. 2) for guided")
        if self.st_cfg != 1.0 and self.alpha == 0:
            raise PrestoError("layers.self_teacher_cfg needs the self-teacher term (layers.self_teacher > 0)")
        if self.alpha < 0 or self.w_denoise < 0:
            raise PrestoError("layers.self_teacher and layers.denoise must be >= 0")
        if self.alpha == 0 and self.w_denoise == 0:
            raise PrestoError("layers.self_teacher and layers.denoise are both 0: nothing to train",
                              "set layers.denoise: 1.0")
        b_init, b_mult = float(getattr(lc, "budget_init", 0.0)), float(getattr(lc, "budget_lr_mult", 1.0))
        if b_init < 0 or b_mult <= 0:
            raise PrestoError("layers.budget_init must be >= 0 and layers.budget_lr_mult > 0",
                              "for example budget_init=0.5 budget_lr_mult=10")
        if b_init > 0 and not getattr(lc, "budget_embed", False):
            raise PrestoError("layers.budget_init > 0 needs layers.budget_embed: true")
        self.student = student_from_teacher(teacher, getattr(lc, "budget_embed", False),
                                            getattr(lc, "budget_rescale", False), b_init, recipe.seed)
        self.teacher = teacher.eval().requires_grad_(False) if self.alpha > 0 else None
        del self.frozen  # held only as self.teacher, when the self-teacher loss needs it
        self.edm = self.student.cfg
        self.schedule = recipe.schedule_for(self.student.net.cfg.depth, self.edm)
        self.ema = EMA(self.student, recipe.train.ema) if recipe.train.ema > 0 else None
        # the budget modules' own group at lr * layers.budget_lr_mult (one group when it is 1)
        self.opt = build_adamw(self.student.parameters(), recipe.train.lr, recipe.train,
                               lr_mult={"budget_": b_mult} if b_mult != 1.0 else None,
                               named=dict(self.student.net.named_parameters()))

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
        cond = self.text.batch(batch, self.device)
        cond = drop_condition(cond, self.edm.p_uncond, ctx.rand("layers.cfg_drop", (G,)))
        depths = self.train_depths(sigma, ctx)
        lr = warmup_lr(r.train.lr, ctx.step, r.train.warmup)
        self.student.train()
        with ctx.autocast():
            total, parts = layer_losses(self.student, self.teacher, x0, sigma, noise, cond, depths,
                                        self.schedule, denoise=self.w_denoise,
                                        self_teacher=self.alpha, self_teacher_cfg=self.st_cfg)
        loss = total.mean()
        gnorm = optimizer_step(self.opt, loss, [self.student], ctx, r.train.grad_clip, lr=lr, ema=self.ema)
        out = {"loss": float(loss.detach()), "grad_norm": gnorm, "lr": lr,
               "depth": float(depths.float().mean()) / self.schedule.depth_total,
               **self.schedule.bin_shares(sigma)}
        out.update({k: float(v.mean()) for k, v in parts.items()})
        return out

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = {"student": self.student.state_dict(), "opt": self.opt.state_dict(),
              "schedule": self.schedule.to_dict(), "teacher_sha256": self.teacher_sha256,
              **ema_state(self.ema)}
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.check_teacher(sd)
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
