"""Presto-LS: layer distillation first, then step distillation (METHOD.md section 5).

Stage ``presto-ls`` (``presto combine``), two modes:

* ``combine.mode: train`` [paper]: Presto-S (:mod:`presto_cli.stages.presto_s`) whose generator is
  initialised from a Presto-L (or ASE) artefact and runs that artefact's layer schedule at every
  call (:class:`~presto_cli.diffusion.layered.LayeredDenoiser`: each sample's blocks from its own
  sigma). The real score stays the full-depth teacher (with its CFG weight) and the fake score is
  a full-depth copy of the teacher, exactly as in Presto-S. The artefact (kind ``presto-ls``)
  carries the schedule and defaults to the few-step sampler with ``distill.gen_steps`` (4) steps.
* ``combine.mode: apply`` [ours, the paper's training-free ablation]: put a Presto-L artefact's
  schedule onto a Presto-S generator and export it, no training (``train.steps: 0``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from presto_cli.diffusion.artefact import LAYER_KINDS, load_layered
from presto_cli.diffusion.edm import EDMDenoiser
from presto_cli.diffusion.layer_schedule import LayerSchedule
from presto_cli.diffusion.layered import LayeredDenoiser
from presto_cli.distill.layers import describe_schedule
from presto_cli.distill.presto_s import PrestoS
from presto_cli.errors import PrestoError
from presto_cli.io import load_artefact, read_artefact_meta, save_artefact
from presto_cli.recipes import recipe_to_dict, register_stage
from presto_cli.stages.presto_s import (PrestoSRecipe, PrestoSTask, load_generator_init, optim_config,
                                        warm_start)
from presto_cli.train.loop import Task, register_task

__all__ = ["CombineConfig", "PrestoLSRecipe", "PrestoLSTask", "apply_schedule"]

_SHAPE_KEYS = ("in_channels", "width", "depth", "heads", "mlp_ratio", "text_dim", "patch",
               "pos_embed", "noise_embed_dim", "qk_norm", "cross_attn", "tempo_cond", "key_cond",
               "tempo_phase", "frame_rate")


@dataclass
class CombineConfig:
    """The ``combine:`` section of a Presto-LS recipe."""

    mode: Literal["train", "apply"] = "train"
    layers: str = ""  # the Presto-L (or ASE) artefact: generator init + schedule
    generator: str = ""  # apply mode: the Presto-S artefact that receives the schedule


@register_stage("presto-ls")
@dataclass
class PrestoLSRecipe(PrestoSRecipe):
    """``presto combine``: Presto-S settings (``distill:``) plus the ``combine:`` section."""

    stage: str = "presto-ls"
    combine: CombineConfig = field(default_factory=CombineConfig)

    def layers_path(self) -> str:
        if not self.combine.layers:
            raise PrestoError("the presto-ls stage needs combine.layers (a Presto-L artefact)",
                              "train one with `presto distill-layers recipes/tiny/presto-l.yaml`")
        return self.combine.layers

    def describe(self) -> dict:
        c = self.combine
        if c.mode == "apply":
            out = {"mode": "apply", "generator": c.generator, "layers": c.layers}
        else:
            out = {"mode": "train", **super().describe(), "layers": c.layers}
        try:
            meta = read_artefact_meta(c.layers) if c.layers else None
        except PrestoError:  # --dry-run before the layer model exists
            meta = None
        if meta and meta.get("schedule"):
            sched = LayerSchedule.from_dict(meta["schedule"])
            out.update(describe_schedule(sched, meta.get("edm") or {}))
        return out


def _check_same_shape(a: dict, b: dict, what_a: str, what_b: str) -> None:
    bad = [k for k in _SHAPE_KEYS if k in a and k in b and a[k] != b[k]]
    if bad:
        k = bad[0]
        raise PrestoError(f"{what_a} and {what_b} are different models ({k}: {a[k]} vs {b[k]})",
                          "use artefacts distilled from the same teacher")


class _ApplyMode(Task):
    """``combine.mode: apply``: the Presto-S generator + the Presto-L schedule, no training."""

    def __init__(self, recipe: PrestoLSRecipe, ctx, run_dir: Path):
        super().__init__(recipe, ctx, run_dir)
        c = recipe.combine
        if recipe.train.steps != 0:
            raise PrestoError("combine.mode=apply is training-free",
                              "set train.steps=0 (it only exports)")
        if not c.generator:
            raise PrestoError("combine.mode=apply needs combine.generator (a Presto-S artefact)",
                              "train one with `presto distill-steps recipes/tiny/presto-s.yaml`")
        self.tensors, self.meta = load_artefact(c.generator)
        if self.meta.get("kind") != "presto-s":
            raise PrestoError(f"{c.generator} is a '{self.meta.get('kind')}' artefact",
                              "combine.generator must be a `presto distill-steps` output")
        lmeta = read_artefact_meta(recipe.layers_path())
        if lmeta.get("kind") not in LAYER_KINDS or not lmeta.get("schedule"):
            raise PrestoError(f"{c.layers} is a '{lmeta.get('kind')}' artefact without a layer "
                              "schedule", "combine.layers must be a `presto distill-layers` output")
        _check_same_shape(self.meta["model"], lmeta["model"], c.generator, c.layers)
        self.schedule = LayerSchedule.from_dict(lmeta["schedule"])

    def make_dataset(self):
        return [{"unused": torch.zeros(1)}]  # the loop needs a dataset; apply mode never draws

    def train_step(self, batch, ctx):  # pragma: no cover - refused in __init__
        raise PrestoError("combine.mode=apply does not train")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass

    def export(self, path: Path) -> None:
        r = self.recipe
        save_artefact(path, self.tensors, apply_schedule(self.meta, self.schedule, r))

    def describe(self) -> dict:
        return self.recipe.describe()


def apply_schedule(presto_s_meta: dict, schedule: LayerSchedule, recipe) -> dict:
    """Metadata of a Presto-S generator that runs ``schedule`` (training-free Presto-LS)."""
    if int(presto_s_meta["model"]["depth"]) != schedule.depth_total:
        raise PrestoError(f"the schedule is for {schedule.depth_total} blocks, the generator has "
                          f"{presto_s_meta['model']['depth']}")
    meta = {k: v for k, v in presto_s_meta.items() if k not in ("version", "created")}
    meta.update(kind="presto-ls", name=recipe.name or "presto-ls-apply", schedule=schedule.to_dict(),
                combine={"mode": "apply", "generator": recipe.combine.generator,
                         "layers": recipe.combine.layers})
    return meta


@register_task("presto-ls")
class PrestoLSTask(PrestoSTask):
    """Presto-S with a layer-dropping generator (train mode) or the training-free export."""

    kind = "presto-ls"

    def __new__(cls, recipe, ctx, run_dir):
        if getattr(getattr(recipe, "combine", None), "mode", "train") == "apply":
            return _ApplyMode(recipe, ctx, run_dir)
        return super().__new__(cls)

    def build_model(self, teacher: EDMDenoiser, w: float) -> PrestoS:
        """G starts from the Presto-L weights and runs its schedule; real and fake scores are the
        full-depth teacher (PrestoS copies the teacher for the fake score)."""
        r: PrestoLSRecipe = self.recipe
        layered, schedule, lmeta = load_layered(r.layers_path(), self.device)
        _check_same_shape(recipe_to_dict(teacher.net.cfg), lmeta["model"], "the teacher",
                          r.combine.layers)
        if lmeta.get("teacher") and Path(lmeta["teacher"]).resolve() != Path(self.teacher_path).resolve():
            from presto_cli.runtime import console

            console.print(f"[yellow]note: {r.combine.layers} was distilled from {lmeta['teacher']}, "
                          f"not {self.teacher_path}[/]")
        self.schedule = schedule
        self.layers_meta = lmeta
        init = LayeredDenoiser(layered, schedule)
        if r.distill.init:  # continue a Presto-LS run: G from its export, on the same schedule
            init = LayeredDenoiser(warm_start(self._init_generator(r.distill.init, schedule), layered,
                                              r.distill.init), schedule)
        return PrestoS(teacher, r.distill, optim_config(r), w, generator_init=init, seed=r.seed)

    def _init_generator(self, path: str, schedule) -> EDMDenoiser:
        """``distill.init``: an exported Presto-LS generator with combine.layers' schedule."""
        gen, meta = load_generator_init(path, "presto-ls", "combine", self.device)
        if meta.get("schedule") != schedule.to_dict():
            raise PrestoError(f"distill.init: {path} runs another layer schedule than {self.recipe.combine.layers}",
                              "continue with the Presto-L model it was trained from")
        return gen

    def export_meta(self) -> dict:
        meta = super().export_meta()
        gen = self.model.export_generator()
        meta.update(model=recipe_to_dict(gen.net.cfg), schedule=self.schedule.to_dict(),
                    combine={"mode": "train", "layers": self.recipe.combine.layers})
        return meta

    def describe(self) -> dict:
        return {**super().describe(), **describe_schedule(self.schedule, self.layers_meta.get("edm") or {})}
