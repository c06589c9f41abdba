"""Stage ``autoencoder`` (``presto pretrain``): train the codec, then export it with its latent scale.

Loss (METHOD.md section 1, [ours]; :func:`~presto_cli.codec.losses.reconstruction_losses`):
``mrstft_weight · MR-STFT + mel_weight · mel-L1 + kl_weight · KL`` on ``decode(mean + σ·ε)``
against the input clip, ε drawn counter-based (``ctx.randn``), plus an optional adversarial term
(``adversarial_weight`` > 0: a multi-resolution spectrogram discriminator trained with a hinge or
least-squares objective, and feature matching).

Export (:func:`~presto_cli.codec.export.export_codec`) with the EMA weights: latent statistics on a
deterministic sample of the training set, reconstruction quality on clips training never saw: the
corpus's held-out split if it has one, else the validation split when ``data.val_fraction`` > 0
(else other crops of training clips, said so in ``recon.json``).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from presto_cli.codec.base import build_codec, codec_config, codec_config_class
from presto_cli.codec.export import export_codec, format_recon
from presto_cli.codec.losses import (CodecLossConfig, MultiResolutionDiscriminator, discriminator_loss,
                                     feature_matching_loss, generator_adv_loss, reconstruction_losses)
from presto_cli.codec.mel import MelCodecConfig
from presto_cli.errors import PrestoError
from presto_cli.io import atomic_write_json
from presto_cli.recipes import BaseRecipe, register_stage
from presto_cli.seeds import seed_for, seeded
from presto_cli.train.loop import (EMA, Task, build_adamw, ema_state, optimizer_step, register_task,
                                   warmup_lr)


@dataclass
class CodecExportConfig:
    """Recipe section ``export:``: latent statistics and held-out quality at export time."""

    sigma_data: float = 0.5  # scaled latents get this standard deviation
    stats_clips: int = 64  # training clips encoded to measure the latent statistics
    eval_clips: int = 16  # held-out clips for the reconstruction report
    eval_seconds: float = 4.0  # their length (long enough for chroma and comb measures)
    png_clips: int = 4  # clips in recon.png (original above reconstruction)
    batch_size: int = 8


@register_stage("autoencoder")
@dataclass
class AutoencoderRecipe(BaseRecipe):
    # the codec's recipe section; its keys depend on model.kind (mel-vocos | stft-vae)
    model: dict = field(default_factory=lambda: asdict(MelCodecConfig()))
    loss: CodecLossConfig = field(default_factory=CodecLossConfig)
    export: CodecExportConfig = field(default_factory=CodecExportConfig)

    @staticmethod
    def section_class(name: str, value: dict) -> type | None:
        """The dataclass that describes a dict-typed section (for `presto recipe show`)."""
        return codec_config_class(value.get("kind")) if name == "model" else None

    def validate(self) -> None:
        """Called by load_recipe: refuse an inconsistent recipe before anything runs."""
        self.model = asdict(codec_config(self.model))  # refuses unknown keys, fills defaults
        if self.data.sample_rate != self.model["sample_rate"]:
            raise PrestoError(f"data.sample_rate ({self.data.sample_rate}) differs from "
                              f"model.sample_rate ({self.model['sample_rate']})",
                              "set both to the codec's sample rate")
        if self.export.sigma_data <= 0:
            raise PrestoError(f"export.sigma_data must be positive, got {self.export.sigma_data}")


# ---------------------------------------------------------------------------------------------
# Export


class ClipSample:
    """A deterministic sample of ``n`` clips of a dataset, loaded lazily (``clips[j] -> [1, T]``):
    evenly spaced indices, random crops seeded by ``(seed, tag, index)``."""

    def __init__(self, dataset, n: int, seed: int, tag: str):
        self.dataset = dataset
        total = len(dataset)
        n = min(n, total)
        self.indices = sorted({int(i * total / n) for i in range(n)}) if n > 0 else []
        self.seed, self.tag = seed, tag

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> Tensor:
        i = self.indices[j]
        getitem = getattr(self.dataset, "getitem", None)
        if getitem is not None:
            g = torch.Generator()
            g.manual_seed(seed_for(self.seed, self.tag, i))
            return getitem(i, g)["audio"].float()
        return self.dataset[i]["audio"].float()


# ---------------------------------------------------------------------------------------------
# The task


@register_task("autoencoder")
class AutoencoderTask(Task):
    def __init__(self, recipe: AutoencoderRecipe, ctx, run_dir: Path):
        super().__init__(recipe, ctx, run_dir)
        with seeded(recipe.seed, "init", "codec"):  # initial weights from the seed alone
            self.codec = build_codec(recipe.model).to(ctx.device)
        self.codec.train()
        t = recipe.train
        self.opt = build_adamw(self.codec.parameters(), t.lr, t)
        self.ema = EMA(self.codec, t.ema) if t.ema > 0 else None
        lc = recipe.loss
        self.disc = None
        self.opt_d = None
        if lc.adversarial_weight > 0:
            with seeded(recipe.seed, "init", "disc"):
                self.disc = MultiResolutionDiscriminator(lc.disc_sizes, lc.disc_channels).to(ctx.device)
            self.opt_d = build_adamw(self.disc.parameters(), lc.disc_lr or t.lr, t)

    def describe(self) -> dict:
        n = sum(p.numel() for p in self.codec.parameters())
        c = self.codec
        return {"codec_params": n, "latent_channels": c.channels, "latent_hz": round(c.frame_rate, 3),
                "hop": c.hop}

    def make_dataset(self):
        return self._dataset("train")

    def _dataset(self, split: str, seconds: float | None = None):
        from presto_cli.data.folder import AudioClipDataset

        d = self.recipe.data
        if not d.path:
            raise PrestoError("the autoencoder recipe has no data.path", "pass data.path=FOLDER")
        return AudioClipDataset(d.path, manifest=d.manifest or None, sample_rate=self.codec.sample_rate,
                                clip_seconds=seconds or d.clip_seconds, split=split, val_fraction=d.val_fraction,
                                channels=self.codec.audio_channels)

    def train_step(self, batch: dict, ctx) -> dict[str, float]:
        r = self.recipe
        lc = r.loss
        audio = self.codec.pad_audio(batch["audio"].to(ctx.device).float())
        frames = self.codec.num_frames(audio.shape[-1])
        noise = ctx.randn("posterior", (ctx.global_batch, self.codec.channels, frames))
        lr = warmup_lr(r.train.lr, ctx.step, r.train.warmup)
        metrics: dict[str, float] = {}
        adv_on = self.disc is not None and ctx.step >= lc.adversarial_start
        with ctx.autocast():
            loss, parts, recon = reconstruction_losses(self.codec, audio, noise, lc)
        if adv_on:
            # discriminator step on the detached reconstruction
            with ctx.autocast():
                d_loss = discriminator_loss(self.disc(audio), self.disc(recon.detach()),
                                            lc.adversarial_kind)
            optimizer_step(self.opt_d, d_loss, [self.disc], ctx, r.train.grad_clip, lr=lc.disc_lr or lr)
            metrics["d_loss"] = float(d_loss.detach())
            with ctx.autocast():
                real = self.disc(audio)
                fake = self.disc(recon)
                g_adv = generator_adv_loss(fake, lc.adversarial_kind)
                fm = feature_matching_loss(real, fake)
            loss = loss + lc.adversarial_weight * g_adv + lc.feature_matching_weight * fm
            metrics.update(g_adv=float(g_adv.detach()), fm=float(fm.detach()))
        gnorm = optimizer_step(self.opt, loss, [self.codec], ctx, r.train.grad_clip, lr=lr,
                               ema=self.ema)
        if self.disc is not None:
            self.disc.zero_grad(set_to_none=True)  # the generator pass must not leave D gradients
        parts_f = {k: float(v.detach()) for k, v in parts.items()}
        return {"loss": float(loss.detach()), **parts_f, **metrics, "grad_norm": gnorm, "lr": lr}

    def state_dict(self) -> dict:
        sd: dict[str, Any] = {"codec": self.codec.state_dict(), "opt": self.opt.state_dict(),
                              **ema_state(self.ema)}
        if self.disc is not None:
            sd["disc"] = self.disc.state_dict()
            sd["opt_d"] = self.opt_d.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.codec.load_state_dict(sd["codec"])
        self.opt.load_state_dict(sd["opt"])
        if self.ema is not None:
            self.ema.load_state_dict(sd.get("ema", sd["codec"]))
        if self.disc is not None:
            if "disc" not in sd:
                raise PrestoError("the checkpoint has no discriminator but the recipe enables one",
                                  "resume with the recipe the run started with")
            self.disc.load_state_dict(sd["disc"])
            self.opt_d.load_state_dict(sd["opt_d"])

    def export(self, path: Path) -> None:
        r = self.recipe
        ex = r.export
        codec = copy.deepcopy(self.ema.shadow if self.ema is not None else self.codec).eval()
        train = self.make_dataset()
        stats = ClipSample(train, ex.stats_clips, r.seed, "export-stats")
        split, held = "", []
        # never-trained clips first: the corpus's held-out split, then the validation split;
        # with neither, other crops of training clips (recon.json says which)
        for name in ("heldout", "val", "train"):
            if name == "val" and not r.data.val_fraction > 0:
                continue
            try:
                held = ClipSample(self._dataset(name, ex.eval_seconds), ex.eval_clips, r.seed,
                                  "export-eval")
            except PrestoError:  # an empty split
                continue
            split = name
            break
        report = export_codec(codec, path, stats, held, ex.sigma_data, split, ex.batch_size,
                              png_clips=ex.png_clips,
                              extra_meta={"name": r.name, "seed": r.seed,
                                          "train": {"steps": r.train.steps,
                                                    "batch_size": r.train.batch_size}})
        if Path(path).parent.resolve() != Path(self.run_dir).resolve():
            atomic_write_json(Path(self.run_dir) / "recon.json", report)
            png = Path(path).parent / "recon.png"
            if png.is_file():
                (Path(self.run_dir) / "recon.png").write_bytes(png.read_bytes())
        from presto_cli.runtime import console

        console.print(format_recon(report["recon"]))


