"""Stage ``autoencoder``: train the STFT VAE, then export it with its latent scale.

Loss (METHOD.md section 1, [ours]): ``mrstft_weight · MR-STFT + mel_weight · mel-L1 + kl_weight · KL``
on ``decode(mean + σ·ε)`` against the input clip, ε drawn counter-based (``ctx.randn``), plus an
optional adversarial term (``adversarial_weight`` > 0: a multi-resolution spectrogram discriminator
trained with a hinge or least-squares objective, and feature matching).

Export (:func:`export_codec`): with the EMA weights, encode a deterministic sample of the training
set, measure the raw latents' mean and standard deviation, set ``latent_scale = sigma_data / std``
so the scaled latents have std ≈ σ_data, measure held-out reconstruction quality (log-mel L1 and
MR-STFT distance; the validation split when ``data.val_fraction`` > 0), write the ``codec``
artefact and ``recon.json`` beside it.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from presto_cli.codec.base import Codec, build_codec, codec_config, codec_config_class, save_codec
from presto_cli.codec.mel import MelCodecConfig
from presto_cli.codec.losses import (MultiResolutionDiscriminator, discriminator_loss,
                                     feature_matching_loss, generator_adv_loss, kl_divergence,
                                     log_mel_l1, mrstft_distance, spectral_losses)
from presto_cli.errors import PrestoError
from presto_cli.io import atomic_write_json
from presto_cli.recipes import BaseRecipe, register_stage
from presto_cli.train.loop import (EMA, Task, build_adamw, clip_and_norm, register_task,
                                   seed_for, set_lr, warmup_lr)


@dataclass
class CodecLossConfig:
    """Recipe section ``loss:`` of the autoencoder stage."""

    mrstft_weight: float = 1.0
    mel_weight: float = 1.0
    kl_weight: float = 1e-3  # on the per-element mean KL
    stft_sizes: list[int] = field(default_factory=lambda: [2048, 1024, 512, 256, 128])
    mel_sizes: list[int] = field(default_factory=list)  # log-mel window sizes; [] -> ~64 ms
    adversarial_weight: float = 0.0  # 0 disables the discriminator
    feature_matching_weight: float = 2.0  # used only with the discriminator
    adversarial_kind: Literal["hinge", "ls"] = "hinge"
    adversarial_start: int = 0  # step at which the discriminator starts
    disc_sizes: list[int] = field(default_factory=lambda: [2048, 1024, 512])
    disc_channels: int = 32
    disc_lr: float = 0.0  # 0 -> train.lr


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
# Losses of one batch


def reconstruction_losses(codec: Codec, audio: Tensor, noise: Tensor | None, cfg: CodecLossConfig
                          ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Weighted VAE loss (no adversarial part) of ``audio [B, 1, T]``; returns (loss, parts, recon)."""
    audio = codec.pad_audio(audio)
    out = codec(audio, noise)
    recon = out["recon"]
    spec = spectral_losses(recon, audio, codec.sample_rate,
                           cfg.stft_sizes if cfg.mrstft_weight else [], cfg.mel_sizes or None)
    parts: dict[str, Tensor] = {}
    loss = audio.new_zeros((), dtype=torch.float32)
    if cfg.mrstft_weight:
        parts["mrstft"] = spec["mrstft"]
        loss = loss + cfg.mrstft_weight * parts["mrstft"]
    if cfg.mel_weight:
        parts["mel"] = spec["mel"]
        loss = loss + cfg.mel_weight * parts["mel"]
    if out["logvar"] is not None:  # a deterministic encoder (mel codec) has no posterior
        parts["kl"] = kl_divergence(out["mean"], out["logvar"])
        loss = loss + cfg.kl_weight * parts["kl"]
    return loss, parts, recon


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


def _batches(clips, batch_size: int):
    """``[b, 1, T]`` batches of a ``[N, 1, T]`` tensor or a sequence of ``[1, T]`` clips."""
    for i in range(0, len(clips), batch_size):
        if isinstance(clips, Tensor):
            yield clips[i:i + batch_size]
        else:
            yield torch.stack([clips[j] for j in range(i, min(i + batch_size, len(clips)))])


@torch.no_grad()
def latent_statistics(codec: Codec, clips: Tensor, batch_size: int = 8) -> dict[str, float]:
    """Mean and std of the raw (unscaled) posterior means over ``clips`` (``[N, 1, T]`` or a
    sequence of ``[1, T]``)."""
    device = next(codec.parameters()).device
    s1 = s2 = 0.0
    n = 0
    for x in _batches(clips, batch_size):
        mean, _ = codec.encode_dist(x.to(device))
        m = mean.double()
        s1 += float(m.sum())
        s2 += float(m.pow(2).sum())
        n += m.numel()
    if n == 0:
        raise PrestoError("no clips to measure the latent statistics on", "check data.path")
    mu = s1 / n
    std = math.sqrt(max(s2 / n - mu * mu, 0.0))
    return {"mean": mu, "std": std, "count": n}


@torch.no_grad()
def reconstruction_report(codec: Codec, clips: Tensor, batch_size: int = 8,
                          png: str | Path | None = None, png_clips: int = 4) -> dict[str, float]:
    """Quality of ``decode(encode(x))`` over ``clips``: log-mel L1 and MR-STFT distance, plus the
    music measures of :mod:`presto_cli.codec.quality` (chroma similarity with its unrelated-clip
    baseline, tonal ratio, frame-rate comb contrast). ``png``: also draw the first ``png_clips``
    originals above their reconstructions."""
    from presto_cli.codec.quality import music_report, spectrogram_png

    device = next(codec.parameters()).device
    mel, mr, n = 0.0, 0.0, 0
    originals, recons = [], []
    for x in _batches(clips, batch_size):
        x = codec.pad_audio(x.to(device))
        y = codec.decode(codec.encode(x))
        b = x.shape[0]
        mel += log_mel_l1(y, x, codec.sample_rate) * b
        mr += mrstft_distance(y, x) * b
        n += b
        originals += list(x[:, 0].float().cpu().numpy())
        recons += list(y[:, 0, :x.shape[-1]].float().cpu().numpy())
    out = {"log_mel_l1": mel / max(n, 1), "mrstft": mr / max(n, 1), "clips": n}
    if n:
        out.update(music_report(originals, recons, codec.sample_rate, codec.frame_rate))
    if png is not None and n:
        pairs = list(zip(originals, recons))[:max(1, png_clips)]
        spectrogram_png(png, pairs, codec.sample_rate)
    return out


def export_codec(codec: Codec, path: str | Path, stats_clips, eval_clips,
                 sigma_data: float = 0.5, eval_split: str = "val", batch_size: int = 8,
                 extra_meta: dict | None = None, png_clips: int = 4) -> dict:
    """Set ``latent_scale`` from ``stats_clips``, report quality on ``eval_clips`` (each ``[N, 1, T]``
    or a sequence of ``[1, T]`` clips), save the artefact at ``path`` and ``recon.json`` beside it.
    ``codec`` is modified (its scale); returns the report."""
    if sigma_data <= 0:
        raise PrestoError(f"export.sigma_data must be positive, got {sigma_data}")
    codec.eval()
    fit = getattr(codec, "fit_normalization", None)
    if fit is not None:  # e.g. the mel codec's per-bin mean
        fit(_batches(stats_clips, batch_size))
    stats = latent_statistics(codec, stats_clips, batch_size)
    if not stats["std"] > 1e-8:
        raise PrestoError("the codec's latents are constant (std 0); cannot scale them",
                          "train the autoencoder longer or lower loss.kl_weight")
    codec.set_latent_scale(sigma_data / stats["std"])
    recon = reconstruction_report(codec, eval_clips, batch_size, Path(path).parent / "recon.png",
                                  png_clips) if len(eval_clips) else {}
    if recon:
        recon["split"] = eval_split
        recon["clip_seconds"] = round(eval_clips[0].shape[-1] / codec.sample_rate, 4)
    latent = {"mean": stats["mean"], "std": stats["std"], "sigma_data": sigma_data,
              "stats_clips": len(stats_clips)}
    save_codec(path, codec, latent=latent, recon=recon, extra=extra_meta)
    report = {"latent": {"scale": float(codec.latent_scale), **latent}, "recon": recon,
              "frame_rate": codec.frame_rate, "channels": codec.channels}
    atomic_write_json(Path(path).parent / "recon.json", report)
    return report


# ---------------------------------------------------------------------------------------------
# The task


@register_task("autoencoder")
class AutoencoderTask(Task):
    def __init__(self, recipe: AutoencoderRecipe, ctx, run_dir: Path):
        super().__init__(recipe, ctx, run_dir)
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, global RNG untouched
            torch.manual_seed(seed_for(recipe.seed, "init", "codec"))
            self.codec = build_codec(recipe.model).to(ctx.device)
        self.codec.train()
        t = recipe.train
        self.opt = build_adamw(self.codec.parameters(), t.lr, t)
        self.ema = EMA(self.codec, t.ema) if t.ema > 0 else None
        lc = recipe.loss
        self.disc = None
        self.opt_d = None
        if lc.adversarial_weight > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(recipe.seed, "init", "disc"))
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
                                clip_seconds=seconds or d.clip_seconds, split=split, val_fraction=d.val_fraction)

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
            set_lr(self.opt_d, lc.disc_lr or lr)
            self.opt_d.zero_grad(set_to_none=True)
            with ctx.autocast():
                d_loss = discriminator_loss(self.disc(audio), self.disc(recon.detach()),
                                            lc.adversarial_kind)
            d_loss.backward()
            ctx.sync_grads(self.disc)
            clip_and_norm(self.disc.parameters(), r.train.grad_clip)
            self.opt_d.step()
            metrics["d_loss"] = float(d_loss.detach())
            with ctx.autocast():
                real = self.disc(audio)
                fake = self.disc(recon)
                g_adv = generator_adv_loss(fake, lc.adversarial_kind)
                fm = feature_matching_loss(real, fake)
            loss = loss + lc.adversarial_weight * g_adv + lc.feature_matching_weight * fm
            metrics.update(g_adv=float(g_adv.detach()), fm=float(fm.detach()))
        set_lr(self.opt, lr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.disc is not None:
            self.disc.zero_grad(set_to_none=True)  # generator pass must not leave D gradients
        ctx.sync_grads(self.codec)
        gnorm = clip_and_norm(self.codec.parameters(), r.train.grad_clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.codec, ctx.step)
        parts_f = {k: float(v.detach()) for k, v in parts.items()}
        return {"loss": float(loss.detach()), **parts_f, **metrics, "grad_norm": gnorm, "lr": lr}

    def state_dict(self) -> dict:
        sd: dict[str, Any] = {"codec": self.codec.state_dict(), "opt": self.opt.state_dict()}
        if self.ema is not None:
            sd["ema"] = self.ema.state_dict()
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
        split = "val"
        held: ClipSample | list = []
        if r.data.val_fraction > 0:
            try:
                held = ClipSample(self._dataset("val", ex.eval_seconds), ex.eval_clips, r.seed,
                                  "export-eval")
            except PrestoError:  # an empty validation split
                held = []
        if not len(held):  # no held-out split: report on (other crops of) training clips, say so
            split = "train"
            held = ClipSample(self._dataset("train", ex.eval_seconds), ex.eval_clips, r.seed,
                              "export-eval")
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


def format_recon(rec: dict) -> str:
    """One paragraph of the held-out reconstruction measures (what `pretrain` prints at export)."""
    if not rec:
        return "reconstruction: no clips to measure"
    return (f"reconstruction of {rec['clips']} {rec.get('split', '')} clips of {rec['clip_seconds']} s: "
            f"log-mel L1 {rec['log_mel_l1']:.3f}, MR-STFT {rec['mrstft']:.3f}, chroma similarity "
            f"{rec['chroma_similarity']:.3f} (min {rec['chroma_similarity_min']:.3f}; unrelated clips "
            f"{rec['chroma_similarity_unrelated']:.3f}), tonal ratio {rec['tonal_ratio']:.2f}, "
            f"comb contrast at {rec['frame_rate']:g} Hz {rec['comb_contrast_db']:+.1f} dB "
            f"(original {rec['comb_contrast_db_original']:+.1f} dB)")
