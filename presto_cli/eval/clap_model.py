"""presto-clap: a small in-domain contrastive audio-text model (trained by the ``clap`` stage,
:mod:`presto_cli.stages.clap`).

LAION-CLAP is the paper's embedding space (METHOD.md §6) but it is trained on general audio and
needs a large checkpoint; a model trained on *your* music gives an in-domain space for FAD, MMD,
PRDC, CLAP score and prompt adherence. It is always reported as "presto-clap", never as LAION-CLAP:
its numbers are not comparable with published ones. [ours]

* audio tower: fixed log-mel front end -> 1-D conv stack over time (stride 2 per block) ->
  mean+max pooling -> linear projection -> L2-normalised embedding;
* text tower: a frozen text encoder (MiniLM, or the weightless ``hash`` encoder for tests) whose
  pooled vector goes through a trainable 2-layer projection -> L2-normalised embedding;
* learnable temperature ``logit_scale = log(1/τ)`` (clamped at ``log(max_logit_scale)``);
* symmetric InfoNCE (CLIP): cross-entropy over audio->text and text->audio similarities; with
  ``same_caption_positive`` the pairs that share a caption are all positives (soft targets), so a
  small caption vocabulary does not turn true matches into negatives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_cli.errors import PrestoError
from presto_cli.recipes import dataclass_from_dict

REPORT_NAME = "presto-clap"


@dataclass
class ClapModelConfig:
    """Architecture of presto-clap (the ``model:`` section of a ``stage: clap`` recipe)."""

    text: Literal["minilm", "hash"] = "minilm"  # frozen text tower
    n_fft: int = 1024
    hop: int = 256
    n_mels: int = 64
    width: int = 128  # conv channels
    depth: int = 4  # conv blocks, each halves the frame rate
    embed_dim: int = 128  # joint embedding size
    text_hidden: int = 256  # hidden size of the trainable text projection


# --------------------------------------------------------------------------------------------
# Model


class LogMel(nn.Module):
    """Log-mel power spectrogram ``[B, 1, T] -> [B, n_mels, frames]`` (fixed, no weights saved)."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int):
        super().__init__()
        from presto_cli.dsp import mel_filterbank

        self.n_fft, self.hop = n_fft, hop
        fb = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels).astype(np.float32))
        self.register_buffer("fb", fb, persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        x = audio.reshape(audio.shape[0], -1).float()
        if x.shape[-1] < self.n_fft:
            x = F.pad(x, (0, self.n_fft - x.shape[-1]))
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True,
                              return_complex=True).abs().pow(2)
            mel = torch.einsum("mf,bft->bmt", self.fb, spec)
            return torch.log(mel + 1e-6)


class AudioTower(nn.Module):
    def __init__(self, cfg: ClapModelConfig, sample_rate: int):
        super().__init__()
        self.mel = LogMel(sample_rate, cfg.n_fft, cfg.hop, cfg.n_mels)
        self.inp = nn.Conv1d(cfg.n_mels, cfg.width, 5, padding=2)
        groups = math.gcd(8, cfg.width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(groups, cfg.width), nn.GELU(),
                          nn.Conv1d(cfg.width, cfg.width, 3, stride=2, padding=1))
            for _ in range(cfg.depth))
        self.out = nn.Sequential(nn.GroupNorm(groups, cfg.width), nn.GELU())
        self.proj = nn.Linear(2 * cfg.width, cfg.embed_dim)

    def forward(self, audio: Tensor) -> Tensor:
        m = self.mel(audio)
        m = (m - m.mean(dim=(1, 2), keepdim=True)) / 4.0  # level-invariant, roughly unit scale
        h = self.inp(m)
        for blk in self.blocks:
            h = blk(h)
        h = self.out(h)
        pooled = torch.cat([h.mean(-1), h.amax(-1)], dim=-1)
        return F.normalize(self.proj(pooled).float(), dim=-1)


class _Shared:
    """Holds a reference that ``copy.deepcopy`` (EMA) shares instead of copying."""

    def __init__(self, obj):
        self.obj = obj

    def __deepcopy__(self, memo):
        return self


class ClapModel(nn.Module):
    """The trainable part of presto-clap. The frozen text encoder is a plain attribute (not saved)."""

    def __init__(self, cfg: ClapModelConfig, sample_rate: int, text_dim: int,
                 temperature_init: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.max_logit_scale = max_logit_scale
        self.audio = AudioTower(cfg, sample_rate)
        self.text_proj = nn.Sequential(nn.Linear(text_dim, cfg.text_hidden), nn.GELU(),
                                       nn.Linear(cfg.text_hidden, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature_init)))
        self._text = _Shared(None)  # set by attach_text()

    @property
    def text_encoder(self):
        return self._text.obj

    def attach_text(self, encoder) -> "ClapModel":
        self._text = _Shared(encoder)  # not a submodule: frozen, not saved, shared by EMA copies
        return self

    def encode_audio(self, audio: Tensor) -> Tensor:
        """``[B, 1, T]`` (at ``sample_rate``) -> unit vectors ``[B, embed_dim]``."""
        return self.audio(audio)

    def text_features(self, texts: list[str]) -> Tensor:
        if self.text_encoder is None:
            raise RuntimeError("ClapModel has no text encoder attached")
        _, _, pooled = self.text_encoder(list(texts))
        return pooled.to(self.logit_scale.device)

    def encode_text(self, texts: list[str], features: Tensor | None = None) -> Tensor:
        f = self.text_features(texts) if features is None else features
        return F.normalize(self.text_proj(f.to(self.text_proj[0].weight.dtype)).float(), dim=-1)

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()


def info_nce(audio_emb: Tensor, text_emb: Tensor, scale: Tensor,
             captions: list[str] | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE over a batch of aligned pairs; returns (loss, top-1 retrieval accuracy).

    With ``captions``, every pair sharing a caption is a positive (uniform soft targets).
    """
    logits = scale * audio_emb.float() @ text_emb.float().T  # [B(audio), B(text)]
    B = logits.shape[0]
    if captions is not None:
        ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        lab = torch.tensor([ids[c] for c in captions], device=logits.device)
        pos = (lab[:, None] == lab[None, :]).float()
    else:
        pos = torch.eye(B, device=logits.device)
    tgt = pos / pos.sum(1, keepdim=True)
    loss_a = -(tgt * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(tgt.T * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    acc = pos.gather(1, logits.argmax(1, keepdim=True)).mean()
    return 0.5 * (loss_a + loss_t), acc


# --------------------------------------------------------------------------------------------
# Loading


def _text_dim(name: str) -> int:
    from presto_cli.text.encoders import text_encoder_dim

    return int(text_encoder_dim(name))


def load_clap(path: str | Path, device: str | torch.device = "cpu") -> tuple[ClapModel, dict]:
    """Load a presto-clap artefact (kind ``clap``) with its frozen text encoder attached."""
    from presto_cli.io import load_artefact, load_state_strict, sub_state
    from presto_cli.text.encoders import build_text_encoder

    tensors, meta = load_artefact(path)
    if meta.get("kind") != "clap":
        raise PrestoError(f"{path} is a '{meta.get('kind')}' model, not a presto-clap model",
                          "train one with a `stage: clap` recipe (recipes/tiny/clap.yaml)")
    cfg = dataclass_from_dict(ClapModelConfig, meta.get("model", {}), "model")
    clap = meta.get("clap", {})
    model = ClapModel(cfg, int(meta["sample_rate"]), _text_dim(cfg.text),
                      float(clap.get("temperature_init", 0.07)),
                      float(clap.get("max_logit_scale", 100.0)))
    load_state_strict(model, sub_state(tensors, "clap"), "presto-clap")
    model.to(device).eval()
    model.attach_text(build_text_encoder(cfg.text, device=device))
    return model, meta
