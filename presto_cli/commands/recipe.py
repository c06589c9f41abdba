"""`presto recipe show STAGE`: every key of a stage's recipe with its type, default and meaning.

Meanings come from the recipe dataclasses themselves: the comment on a field's line (or the comment
block right above it), else the short table below for fields the source leaves uncommented.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from typing import Any, Literal, Union

import typer

app = typer.Typer(help="Recipes: the keys of each training stage.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None)

# "Class.field" -> meaning, for fields whose source comment is missing, too long or not a meaning
# (these win over the comment).
MEANINGS = {
    "TrainConfig.grad_clip": "clip of the gradient norm (0 disables)",
    "DistillConfig.grad_clip": "clip of the gradient norm of each network (0 disables) [DMD2]",
    "CodecLossConfig.kl_weight": "weight of the KL term (on the per-element mean KL)",
    "CodecLossConfig.adversarial_weight": "weight of the discriminator's loss (0 disables the discriminator)",
    "CodecLossConfig.feature_matching_weight": "weight of discriminator feature matching (only with one)",
    "CodecLossConfig.disc_lr": "discriminator learning rate (0 -> train.lr)",
    "ASEConfig.bins": "interior ln(sigma) bin edges, ascending ([] with depths: [] -> the default schedule)",
    "ASEConfig.train_depth": "schedule: train each sample at k(sigma) [ASE]; uniform: at any depth [ours]",
    "BaseRecipe.stage": "which stage this recipe trains (picks the recipe's sections)",
    "BaseRecipe.seed": "seed of every random draw of the run (init, data order, noise)",
    "DataConfig.sample_rate": "rate audio is read at (autoencoder: = model.sample_rate; later stages: the codec's)",
    "DataConfig.clip_seconds": "length of one training clip in seconds (teacher: also the default output length)",
    "DataConfig.num_workers": "data-loader worker processes (not used yet)",
    "TrainConfig.steps": "optimiser steps to train for",
    "TrainConfig.lr": "peak AdamW learning rate (after warm-up)",
    "TrainConfig.weight_decay": "AdamW weight decay",
    "TrainConfig.betas": "AdamW betas",
    "TrainConfig.log_every": "steps between log lines (metrics.jsonl, stderr)",
    "TrainConfig.ckpt_every": "steps between checkpoints in <run>/checkpoints",
    "TrainConfig.keep_ckpts": "most recent checkpoints kept on disk",
    "TrainConfig.device": "auto | cpu | cuda | cuda:N",
    "TrainConfig.compile": "torch.compile the model (not used yet)",
    "EDMConfig.sigma_data": "standard deviation of the (scaled) latents, for EDM's preconditioning",
    "EDMConfig.p_mean": "training noise: ln(sigma) ~ N(p_mean, p_std^2)",
    "EDMConfig.p_std": "training noise: ln(sigma) ~ N(p_mean, p_std^2)",
    "EDMConfig.sigma_min": "lowest noise level of the sampling schedule",
    "EDMConfig.sigma_max": "highest noise level of the sampling schedule (sampling starts here)",
    "EDMConfig.rho": "exponent of the Karras sampling schedule",
    "EDMConfig.sampler": "default inference sampler",
    "DiTConfig.width": "transformer channels",
    "DiTConfig.depth": "transformer blocks",
    "DiTConfig.heads": "attention heads (must divide width)",
    "DiTConfig.mlp_ratio": "MLP hidden size / width",
    "DiTConfig.pos_embed": "positional encoding along time",
    "CodecConfig.kind": "codec architecture (only stft-vae)",
    "CodecConfig.sample_rate": "audio sample rate of the codec (and of every later stage)",
    "CodecConfig.latent_channels": "channels of the latent (a teacher's model.in_channels follows it)",
    "CodecConfig.mlp_ratio": "ConvNeXt MLP hidden size / width",
    "CodecConfig.kernel_size": "ConvNeXt depthwise kernel (odd)",
    "CodecConfig.logvar_min": "lower clamp of the encoder's log-variance",
    "CodecConfig.logvar_max": "upper clamp of the encoder's log-variance",
    "CodecLossConfig.mrstft_weight": "weight of the multi-resolution STFT loss",
    "CodecLossConfig.mel_weight": "weight of the log-mel L1 loss",
    "CodecLossConfig.stft_sizes": "FFT sizes of the multi-resolution STFT loss",
    "CodecLossConfig.adversarial_kind": "GAN loss: hinge or least squares",
    "CodecLossConfig.disc_sizes": "FFT sizes of the spectrogram discriminators",
    "CodecLossConfig.disc_channels": "channels of each discriminator",
    "CodecExportConfig.batch_size": "clips encoded together at export",
    "ClapModelConfig.n_fft": "STFT window of the audio tower's mel spectrogram",
    "ClapModelConfig.hop": "STFT hop of the audio tower's mel spectrogram",
    "ClapModelConfig.n_mels": "mel bands of the audio tower",
    "ClapConfig.temperature_init": "initial softmax temperature of the contrastive loss",
    "ClapConfig.learn_temperature": "learn the temperature (else keep temperature_init)",
    "ClapConfig.max_logit_scale": "cap on 1/temperature",
    "ClapConfig.same_caption_positive": "clips sharing a caption are all positives of each other",
    "DistillConfig.gen_input": "generator input: real latents noised to p_gen, or DMD2's backward simulation",
    "DistillConfig.disc_layers": "conv layers of the discriminator head",
    "DistillConfig.disc_kernel": "kernel size of the head's convs (odd)",
    "ASEConfig.depths": "blocks run per noise bin, low -> high noise ([] with bins: [] -> the default)",
    "ASEConfig.n_bins": "noise bins of the default schedule",
    "ASEConfig.min_fraction": "default schedule: depth at the highest noise, as a fraction of full depth",
    "CombineConfig.mode": "train: step-distil the Presto-L model; apply: put its schedule on a Presto-S model",
    "PrestoLRecipe.toy_size": "points drawn when the teacher was trained on a toy mixture",
}


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _source_comments(cls: type) -> dict[str, str]:
    """field -> its comment in the class source: on its line, else the block right above it."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    block: list[str] = []
    for line in lines:
        s = line.strip()
        if s.startswith("#"):
            block.append(s.lstrip("#").strip())
            continue
        m = re.match(r"([A-Za-z_]\w*)\s*:[^#]*(?:#\s*(.*))?$", s)
        if m and m.group(1) not in out:
            text = m.group(2) or " ".join(block)
            if text:
                out[m.group(1)] = text.strip()
        block = []
    return out


def meaning(cls: type, name: str) -> str:
    for klass in cls.__mro__:  # the class that declares the field comes first
        if dataclasses.is_dataclass(klass) and name in getattr(klass, "__annotations__", {}):
            text = MEANINGS.get(f"{klass.__name__}.{name}") or _source_comments(klass).get(name)
            if text:
                return text
    return MEANINGS.get(f"{cls.__name__}.{name}", "")


def recipe_keys(cls: type, default: Any = None, prefix: str = "") -> list[dict]:
    """One row per leaf key: ``{"key", "type", "default", "meaning"}`` (sections flattened)."""
    default = cls() if default is None else default
    hints = typing.get_type_hints(cls)
    rows: list[dict] = []
    for f in dataclasses.fields(cls):
        tp, value, key = hints[f.name], getattr(default, f.name), prefix + f.name
        section = getattr(cls, "section_class", lambda *_: None)(f.name, value) \
            if isinstance(value, dict) else None
        if dataclasses.is_dataclass(tp):
            rows += recipe_keys(tp, value, key + ".")
        elif section is not None:  # a dict section whose keys a dataclass describes (codec kinds)
            rows += recipe_keys(section, section(**value), key + ".")
        else:
            rows.append({"key": key, "type": type_name(tp), "default": value, "meaning": meaning(cls, f.name)})
    return rows


@app.command("show")
def show_cmd(stage: str = typer.Argument(..., help="Stage: autoencoder, teacher, clap, presto-s, ase, "
                                         "presto-l or presto-ls."),
             as_json: bool = typer.Option(False, "--json", help="Print a JSON list on stdout.")):
    """List every key of STAGE's recipe with its type, default and meaning."""
    from presto_cli.recipes import recipe_class

    rows = recipe_keys(recipe_class(stage))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    w_key = max(len(r["key"]) for r in rows)
    w_type = min(28, max(len(r["type"]) for r in rows))
    w_def = min(20, max(len(json.dumps(r["default"])) for r in rows))
    for r in rows:
        typer.echo(f"{r['key']:<{w_key}}  {r['type']:<{w_type}}  {json.dumps(r['default']):<{w_def}}  {r['meaning']}")
