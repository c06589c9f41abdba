"""The ``teacher`` stage: train the EDM DiT on cached latents or a toy mixture (METHOD.md section 2).

One step: ``sigma ~ p_train`` (log-normal), ``x = x0 + sigma eps``, condition dropped to the learned
null condition with probability ``edm.p_uncond`` (classifier-free guidance), loss
``lambda(sigma) |D(x; sigma, c) - x0|^2``. All randomness comes from the trainer's counter-based
``ctx.randn`` / ``ctx.rand``, so resume and torchrun are exact. The exported artefact (kind
``teacher``) holds the EMA weights under ``dit.``, the codec under ``codec.`` (when training on
audio latents), and metadata: ``model``, ``edm``, ``text``, ``sampler``, ``frames``, ``max_frames``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from presto_cli.data.toy import ToyDataset, is_toy_path
from presto_cli.diffusion.edm import (EDMConfig, EDMDenoiser, drop_condition, drop_musical, drop_tokens,
                                      edm_loss, sigma_train_from_normal)
from presto_cli.errors import PrestoError
from presto_cli.io import load_artefact, load_state_strict, prefixed, save_artefact
from presto_cli.models.dit import DiT, DiTConfig, estimate_flops, estimate_params, init_compatible
from presto_cli.recipes import BaseRecipe, recipe_to_dict, register_stage
from presto_cli.seeds import seeded
from presto_cli.text.cache import TextCache
from presto_cli.text.encoders import build_text_encoder, text_encoder_dim
from presto_cli.train.loop import (EMA, Task, build_adamw, ema_state, optimizer_step, register_task,
                                   warmup_lr)

__all__ = ["TeacherRecipe", "TeacherTask", "teacher_meta", "init_dit"]


@register_stage("teacher")
@dataclass
class TeacherRecipe(BaseRecipe):
    model: DiTConfig = field(default_factory=DiTConfig)
    edm: EDMConfig = field(default_factory=EDMConfig)
    text: str = "minilm"  # minilm | clap | hash (hash: no weights, for toys and tiny recipes)
    toy_size: int = 4096  # number of points drawn when data.path is toy:gmm2d / toy:gmm1d
    init: str = ""  # exported teacher to continue training from (weights and EMA; optimiser fresh)
    caption_bank: int = 4096  # training captions kept in the artefact for nearest-caption prompt matching (0: none)
    head_lr_mult: float = 1.0  # learning-rate multiplier of the 2-D output head (model.head2d)
    # learning-rate multiplier of the tempo/key condition layers (model.tempo_cond/key_cond): they
    # start at zero and move about one learning rate per AdamW step (METHOD.md section 2)
    cond_lr_mult: float = 1.0
    # share of training samples whose ln(sigma) ~ N(-1.2, 1.2^2) (EDM's own p_train) instead of
    # N(edm.p_mean, edm.p_std^2): a shifted teacher phase keeps training the low noise levels
    sigma_mix_edm: float = 0.0

    def validate(self) -> None:
        self.fill_from_inputs()
        self.model.validate()
        self.edm.validate()
        if not 0.0 <= self.sigma_mix_edm <= 1.0:
            raise PrestoError(f"sigma_mix_edm must lie in [0, 1], got {self.sigma_mix_edm}")
        if self.head_lr_mult <= 0 or self.cond_lr_mult <= 0:
            raise PrestoError(f"head_lr_mult and cond_lr_mult must be > 0, got {self.head_lr_mult}, "
                              f"{self.cond_lr_mult}")
        dim = text_encoder_dim(self.text)
        if dim != self.model.text_dim:
            raise PrestoError(f"model.text_dim={self.model.text_dim} but the '{self.text}' text "
                              f"encoder gives {dim}", f"set model.text_dim: {dim}")

    def fill_from_inputs(self) -> None:
        """Fill in the keys that must agree with the data and the codec when left at 0:
        ``model.in_channels`` (the codec's latent channels, or the toy data's dimension) and
        ``model.max_frames`` (the latent frames of one ``data.clip_seconds`` clip, or 1 for toy
        data); ``data.sample_rate`` always follows the codec. A non-zero value that disagrees is
        refused here, before any training."""
        m = self.model
        if is_toy_path(self.data.path):
            from presto_cli.data.toy import parse_toy_path

            m.in_channels = m.in_channels or parse_toy_path(self.data.path).dim
            m.max_frames = m.max_frames or 1
            return
        if not self.data.codec:
            raise PrestoError("the teacher stage needs data.codec (a codec artefact) to encode audio to "
                              "latents", "train one with the autoencoder stage, or use data.path: toy:gmm2d")
        if not Path(self.data.codec).is_file():
            if m.in_channels and m.max_frames:
                return  # a --dry-run before the codec exists: nothing to fill
            raise PrestoError(f"model.in_channels and model.max_frames come from data.codec, and "
                              f"{self.data.codec} does not exist yet",
                              "train the autoencoder first (presto pretrain .../autoencoder.yaml)")
        from presto_cli.io import read_artefact_meta

        meta = read_artefact_meta(self.data.codec)
        ch, sr, hop = (int(meta.get(k) or 0) for k in ("channels", "sample_rate", "hop"))
        if not (ch and sr and hop):
            raise PrestoError(f"data.codec {self.data.codec} is a '{meta.get('kind')}' artefact, not a codec",
                              "point data.codec at the autoencoder's model.safetensors")
        if m.in_channels not in (0, ch):
            raise PrestoError(f"the codec has {ch} latent channels but model.in_channels={m.in_channels}",
                              f"set model.in_channels: 0 (take it from the codec) or {ch}")
        m.in_channels = ch
        self.data.sample_rate = sr
        frames = math.ceil(self.data.clip_seconds * sr / hop - 1e-9)
        if m.max_frames and frames > m.max_frames:
            raise PrestoError(f"data.clip_seconds={self.data.clip_seconds:g} is {frames} latent frames, "
                              f"more than model.max_frames={m.max_frames}",
                              "set model.max_frames: 0 (from the clip length) or shorten data.clip_seconds")
        m.max_frames = m.max_frames or frames
        if m.tempo_phase and not m.frame_rate:
            m.frame_rate = sr / hop

    def frames(self) -> int:
        """Latent frames per clip: 1 for toy data, else model.max_frames (an upper bound)."""
        if is_toy_path(self.data.path):
            return 1
        return self.model.max_frames

    def describe(self) -> dict:
        """Parameter count, tokens per clip and forward GFLOPs, without building the model
        (validates the model/edm/text sections first, so `--dry-run` catches mistakes)."""
        self.validate()
        frames = self.frames()
        tokens = -(-frames // self.model.patch)
        return {"dit_params": estimate_params(self.model),
                "dit_params_M": round(estimate_params(self.model) / 1e6, 2),
                "tokens_max": tokens,
                "gflops_per_eval": round(estimate_flops(self.model, frames) / 1e9, 3),
                "text_encoder": self.text}


@register_task("teacher")
class TeacherTask(Task):
    """Trains ``EDMDenoiser(DiT)`` with the EDM loss, CFG dropout and an EMA of the weights."""

    def __init__(self, recipe: TeacherRecipe, ctx, run_dir: Path):
        super().__init__(recipe, ctx, run_dir)
        recipe.validate()
        self.device = ctx.device
        self.toy = is_toy_path(recipe.data.path)
        self.codec = None
        self.codec_path = ""
        if self.toy:
            self._dataset = ToyDataset(recipe.data.path, n=recipe.toy_size, seed=recipe.seed)
            if self._dataset.gmm.dim != recipe.model.in_channels:
                raise PrestoError(f"{recipe.data.path} has dimension {self._dataset.gmm.dim} but "
                                  f"model.in_channels={recipe.model.in_channels}",
                                  f"set model.in_channels: {self._dataset.gmm.dim}")
        else:
            self._dataset = None
            if not recipe.data.codec:
                raise PrestoError("the teacher stage needs data.codec (a codec artefact) to encode "
                                  "audio to latents", "train one with the autoencoder stage, or use "
                                  "data.path: toy:gmm2d")
            from presto_cli.codec import load_codec

            self.codec_path = recipe.data.codec
            self.codec = load_codec(recipe.data.codec, device="cpu")
            if self.codec.channels != recipe.model.in_channels:
                raise PrestoError(f"the codec has {self.codec.channels} latent channels but "
                                  f"model.in_channels={recipe.model.in_channels}",
                                  f"set model.in_channels: {self.codec.channels}")
        self.net = init_dit(recipe.model, recipe.seed, "teacher.init").to(self.device)
        if recipe.init:
            self.load_init(recipe.init)
        self.denoiser = EDMDenoiser(self.net, recipe.edm)
        self.ema = EMA(self.net, recipe.train.ema) if recipe.train.ema > 0 else None
        self.opt = build_adamw(self.net.parameters(), recipe.train.lr, recipe.train,
                               lr_mult={"head2d.": recipe.head_lr_mult, "tempo_embed.": recipe.cond_lr_mult,
                                        "key_embed.": recipe.cond_lr_mult, "beat_phase.": recipe.cond_lr_mult},
                               named=dict(self.net.named_parameters()))
        self.text = TextCache(build_text_encoder(recipe.text, device=self.device))
        self.frames_seen = 0

    def load_init(self, path: str) -> None:
        """``init``: start from an exported teacher's (EMA) weights instead of a fresh network, to
        continue training with another recipe (noise distribution, steps); the optimiser, the EMA's
        count and the data order start afresh. A resumed run's checkpoint overrides this."""
        if not Path(path).is_file():
            raise PrestoError(f"init: no file {path}", "give an exported teacher (model.safetensors "
                              "of a pretrain run, or a bundled demo-teacher)")
        tensors, meta = load_artefact(path)
        if meta.get("kind") != "teacher":
            raise PrestoError(f"init: {path} is a '{meta.get('kind')}' artefact",
                              "give a teacher (a `presto pretrain` teacher run's model.safetensors)")
        # pooled_only is how the text is fed, not the network's shape: a phase may switch it; a
        # phase may also add zero-initialised parts (the 2-D output head, tempo/key conditions),
        # which start at zero
        bad, new_parts = init_compatible(meta.get("model") or {}, self.recipe.model)
        if bad:
            raise PrestoError(f"init: {path} is not the network of this recipe's model section "
                              f"({'; '.join(bad[:3])})", "copy its model section into the recipe")
        if meta.get("text") != self.recipe.text:
            raise PrestoError(f"init: {path} was trained with text '{meta.get('text')}', "
                              f"this recipe uses '{self.recipe.text}'", f"set text: {meta.get('text')}")
        sd = {k[len("dit."):]: v.float() for k, v in tensors.items() if k.startswith("dit.")}
        load_state_strict(self.net, sd, f"init {path}", allow_missing=new_parts)

    # -- data ------------------------------------------------------------------------------

    def make_dataset(self):
        if self._dataset is not None:
            return self._dataset
        from presto_cli.data.latents import LatentDataset, ensure_latent_cache

        cache = ensure_latent_cache(self.recipe.data.codec, self.recipe.data, self.device)
        self._dataset = LatentDataset(cache)
        return self._dataset

    # -- training --------------------------------------------------------------------------

    def train_step(self, batch: dict, ctx) -> dict[str, float]:
        r: TeacherRecipe = self.recipe
        x0 = batch["latents"].to(self.device).float()
        if x0.dim() != 3 or x0.shape[1] != r.model.in_channels:
            raise PrestoError(f"latents of shape {tuple(x0.shape[1:])} do not match "
                              f"model.in_channels={r.model.in_channels}")
        self.frames_seen = max(self.frames_seen, x0.shape[-1])
        G = ctx.global_batch
        z = ctx.randn("teacher.sigma", (G,))
        sigma = sigma_train_from_normal(r.edm, z)
        if r.sigma_mix_edm > 0:
            edm_default = torch.exp(-1.2 + 1.2 * z)
            sigma = torch.where(ctx.rand("teacher.sigma_mix", (G,)) < r.sigma_mix_edm, edm_default, sigma)
        noise = ctx.randn("teacher.noise", (G, *x0.shape[1:]))
        cond = self.text.batch(batch, self.device)
        if r.edm.p_pooled_only > 0:
            cond = drop_tokens(cond, r.edm.p_pooled_only, ctx.rand("teacher.token_drop", (G,)))
        if (r.model.tempo_cond or r.model.key_cond) and r.edm.p_no_tempo_key > 0:
            cond = drop_musical(cond, r.edm.p_no_tempo_key, ctx.rand("teacher.tempo_drop", (G,)),
                                ctx.rand("teacher.key_drop", (G,)))
        cond = drop_condition(cond, r.edm.p_uncond, ctx.rand("teacher.cfg_drop", (G,)))

        lr = warmup_lr(r.train.lr, ctx.step, r.train.warmup)
        self.net.train()
        with ctx.autocast():
            per_sample = edm_loss(self.denoiser, x0, sigma, noise, cond)
        loss = per_sample.mean()
        gnorm = optimizer_step(self.opt, loss, [self.net], ctx, r.train.grad_clip, lr=lr, ema=self.ema)
        with torch.no_grad():  # loss split by noise level: low (< sigma_data), high
            low = sigma < r.edm.sigma_data
            out = {"loss": float(loss), "grad_norm": gnorm, "lr": lr}
            if bool(low.any()):
                out["loss_low_sigma"] = float(per_sample[low].mean())
            if bool((~low).any()):
                out["loss_high_sigma"] = float(per_sample[~low].mean())
        return out

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        sd = {"net": self.net.state_dict(), "opt": self.opt.state_dict(),
              "frames_seen": self.frames_seen, **ema_state(self.ema)}
        return sd

    def load_state_dict(self, sd: dict) -> None:
        load_state_strict(self.net, sd["net"], "teacher checkpoint")
        self.opt.load_state_dict(sd["opt"])
        if self.ema is not None and "ema" in sd:
            self.ema.load_state_dict(sd["ema"])
        self.frames_seen = int(sd.get("frames_seen", 0))

    def export_net(self) -> DiT:
        return self.ema.shadow if self.ema is not None else self.net

    def export(self, path: Path) -> None:
        r: TeacherRecipe = self.recipe
        tensors = prefixed({k: v.float() for k, v in self.export_net().state_dict().items()}, "dit")
        frames = self.frames_seen or r.frames()
        meta = teacher_meta(r, frames=frames)
        if self.codec is not None:
            from presto_cli.codec import codec_state_for_embedding

            _, codec_file_meta = load_artefact(self.codec_path)
            ct, cm = codec_state_for_embedding(self.codec, codec_file_meta.get("latent"))
            tensors.update(ct)
            meta["codec"] = cm
            meta["codec_source"] = str(self.codec_path)
            d = r.data  # what distillation stages train on when their data.path is left empty
            meta["data"] = {"path": d.path, "manifest": d.manifest, "clip_seconds": d.clip_seconds}
            bank = self.caption_bank()
            if bank is not None:
                bt, meta["caption_bank"] = bank.to_artefact()
                tensors.update(bt)
            rt, meta["latent_range"] = self.latent_range().to_artefact()
            tensors.update(rt)
        save_artefact(path, tensors, meta)

    def latent_range(self):
        """The training split's per-channel latent range (diffusion/latent_range.py), measured once
        per run: what sampling clips the denoiser's x0 predictions to."""
        if not hasattr(self, "_range"):
            from presto_cli.diffusion.latent_range import LatentRange

            ds = self.make_dataset()
            self._range = LatentRange.measure((ds[i]["latents"] for i in range(len(ds))),
                                              source=str(self.recipe.data.path))
        return self._range

    def caption_bank(self):
        """The training split's captions for nearest-caption matching (text/caption_bank.py), built
        once per run on the teacher's text encoder; None with ``caption_bank: 0``."""
        if not hasattr(self, "_bank"):
            from presto_cli.text.caption_bank import CaptionBank

            ds = self.make_dataset()
            self._bank = CaptionBank.build([it.get("caption", "") for it in ds.items], self.text.encoder,
                                           self.recipe.caption_bank, seed=self.recipe.seed)
        return self._bank

    def describe(self) -> dict:
        return {**self.recipe.describe(), "dit_params": self.net.num_params()}


def init_dit(cfg: DiTConfig, seed: int, tag: str) -> DiT:
    """A freshly initialised DiT whose weights depend only on ``(seed, tag)``: identical on every
    rank under torchrun and on every device, and untouched by the global RNG's state."""
    with seeded(seed, tag):
        return DiT(cfg)


def teacher_meta(recipe: TeacherRecipe, frames: int, kind: str = "teacher") -> dict:
    """Artefact metadata of a teacher-family model (ARCHITECTURE.md "Artefacts")."""
    e = recipe.edm
    meta = {"kind": kind, "name": recipe.name, "model": recipe_to_dict(recipe.model),
            "edm": recipe_to_dict(e), "text": recipe.text,
            "sampler": {"name": e.sampler, "steps": e.steps, "cfg": e.cfg, "rho": e.rho,
                        "token_shift": e.token_shift, "cfg_interval": list(e.cfg_interval)},
            "frames": int(frames), "max_frames": int(recipe.model.max_frames)}
    if is_toy_path(recipe.data.path):
        meta["toy"] = recipe.data.path
        meta["max_frames"] = int(frames)
    return meta
