"""Stage ``clap``: train presto-clap (:mod:`presto_cli.eval.clap_model`) with symmetric InfoNCE on
``AudioClipDataset`` items ``{"audio", "caption"}``; export the EMA weights as a ``clap`` artefact."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from presto_cli.errors import PrestoError
from presto_cli.eval.clap_model import REPORT_NAME, ClapModel, ClapModelConfig, info_nce
from presto_cli.recipes import BaseRecipe, recipe_to_dict, register_stage
from presto_cli.train.loop import (EMA, Task, build_adamw, ema_state, optimizer_step, register_task,
                                   warmup_lr)


@dataclass
class ClapConfig:
    """Contrastive-loss settings (the ``clap:`` section)."""

    temperature_init: float = 0.07
    learn_temperature: bool = True
    max_logit_scale: float = 100.0
    same_caption_positive: bool = True


@register_stage("clap")
@dataclass
class ClapRecipe(BaseRecipe):
    model: ClapModelConfig = field(default_factory=ClapModelConfig)
    clap: ClapConfig = field(default_factory=ClapConfig)


@register_task("clap")
class ClapTask(Task):
    """Trains presto-clap on ``AudioClipDataset`` items ``{"audio", "caption"}``."""

    def __init__(self, recipe: ClapRecipe, ctx, run_dir: Path):
        super().__init__(recipe, ctx, run_dir)
        from presto_cli.text.encoders import build_text_encoder

        if recipe.data.clip_seconds <= 0:
            raise PrestoError("data.clip_seconds must be positive for the clap stage")
        cfg, c = recipe.model, recipe.clap
        if c.temperature_init <= 0:
            raise PrestoError(f"clap.temperature_init must be positive, got {c.temperature_init}")
        self.text = build_text_encoder(cfg.text, device=ctx.device)
        torch.manual_seed(recipe.seed)  # initialisation only; training randomness is counter-based
        self.model = ClapModel(cfg, recipe.data.sample_rate, int(self.text.dim), c.temperature_init,
                               c.max_logit_scale).to(ctx.device)
        self.model.attach_text(self.text)
        self.model.logit_scale.requires_grad_(c.learn_temperature)
        self.ema = EMA(self.model, recipe.train.ema) if recipe.train.ema > 0 else None
        self.opt = build_adamw(self.model.parameters(), recipe.train.lr, recipe.train)

    def make_dataset(self):
        from presto_cli.data.folder import AudioClipDataset

        d = self.recipe.data
        if not d.path:
            raise PrestoError("the clap stage needs data.path (a folder of audio with captions)",
                              "run `presto data prepare DIR` and set data.path")
        return AudioClipDataset(d.path, manifest=d.manifest or None, sample_rate=d.sample_rate,
                                clip_seconds=d.clip_seconds, split="train",
                                val_fraction=d.val_fraction)

    def describe(self) -> dict:
        n = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {"trainable_params": n, "text_encoder": self.recipe.model.text, "reported_as": REPORT_NAME}

    def train_step(self, batch: dict, ctx) -> dict[str, float]:
        tr = self.recipe.train
        audio = batch["audio"].to(ctx.device)
        captions = [str(c) for c in batch["caption"]]
        self.model.train()
        feats = self.model.text_features(captions)
        with ctx.autocast():
            a = self.model.encode_audio(audio)
            t = self.model.encode_text(captions, features=feats)
        loss, acc = info_nce(a, t, self.model.scale(),
                             captions if self.recipe.clap.same_caption_positive else None)
        gnorm = optimizer_step(self.opt, loss, [self.model], ctx, tr.grad_clip,
                               lr=warmup_lr(tr.lr, ctx.step, tr.warmup), ema=self.ema)
        return {"loss": float(loss.detach()), "acc": float(acc), "temp": float(1.0 / self.model.scale().detach()),
                "grad_norm": gnorm}

    def state_dict(self) -> dict:
        sd = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), **ema_state(self.ema)}
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["opt"])
        if self.ema is not None and "ema" in sd:
            self.ema.load_state_dict(sd["ema"])

    def export(self, path: Path) -> None:
        from presto_cli.io import prefixed, save_artefact

        net = self.ema.shadow if self.ema is not None else self.model
        meta = {"kind": "clap", "name": REPORT_NAME, "model": recipe_to_dict(self.recipe.model),
                "clap": recipe_to_dict(self.recipe.clap), "text": self.recipe.model.text,
                "sample_rate": self.recipe.data.sample_rate,
                "clip_seconds": self.recipe.data.clip_seconds, "run": self.recipe.name}
        save_artefact(path, prefixed(net.state_dict(), "clap"), meta)
