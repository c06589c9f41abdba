"""Autoencoder losses and reconstruction metrics (METHOD.md section 1, [ours]).

- Multi-resolution STFT loss: per resolution, spectral convergence ``‖|Y| − |X|‖_F / ‖|Y|‖_F`` plus
  log-magnitude L1 ``mean |log|Y| − log|X||``, averaged over resolutions (Yamamoto et al. 2020).
- Mel L1: ``mean |log mel(Y) − log mel(X)|`` (HTK mel scale, triangular filters).
- KL of the diagonal Gaussian posterior to N(0, I): ``½ mean(μ² + σ² − 1 − log σ²)`` (0 when the
  posterior is standard normal).
- Optional adversarial term: a multi-resolution spectrogram discriminator (2-D convolutions on
  log magnitudes), hinge or least-squares objective, plus feature matching.

Everything spectral runs in float32 (autocast-safe). ``x`` is the reconstruction, ``y`` the target;
audio is ``[B, 1, T]`` or ``[B, T]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_cli import dsp

if TYPE_CHECKING:
    from presto_cli.codec.base import Codec

EPS = 1e-5


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1]).float()


def stft_mag(x: Tensor, n_fft: int, hop: int | None = None) -> Tensor:
    """Magnitude STFT ``[B, n_fft//2+1, frames]`` (centred, hann window) of ``x [B, (1,) T]``."""
    hop = hop or n_fft // 4
    with torch.autocast(x.device.type, enabled=False):
        w = torch.hann_window(n_fft, device=x.device)
        spec = torch.stft(_flat(x), n_fft, hop_length=hop, win_length=n_fft, window=w, center=True,
                          pad_mode="constant", return_complex=True)
        return spec.abs()


def spectral_convergence(x_mag: Tensor, y_mag: Tensor) -> Tensor:
    num = torch.linalg.vector_norm(y_mag - x_mag, dim=(-2, -1))
    den = torch.linalg.vector_norm(y_mag, dim=(-2, -1)).clamp_min(EPS)
    return (num / den).mean()


def log_mag_l1(x_mag: Tensor, y_mag: Tensor) -> Tensor:
    return (torch.log(x_mag.clamp_min(EPS)) - torch.log(y_mag.clamp_min(EPS))).abs().mean()


def mrstft_loss(x: Tensor, y: Tensor, sizes: Sequence[int] = (2048, 1024, 512, 256, 128)) -> Tensor:
    """Multi-resolution STFT loss (spectral convergence + log magnitude), hop = n_fft / 4."""
    total = x.new_zeros((), dtype=torch.float32)
    for n in sizes:
        xm, ym = stft_mag(x, n), stft_mag(y, n)
        total = total + spectral_convergence(xm, ym) + log_mag_l1(xm, ym)
    return total / len(sizes)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None, device=None) -> Tensor:
    """Triangular HTK-mel filters ``[n_mels, n_fft//2+1]`` (:func:`presto_cli.dsp.mel_filterbank`)."""
    fb = dsp.mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
    return torch.from_numpy(fb).float().to(device)


def _mel_params(sample_rate: int) -> tuple[int, int, int]:
    """(n_fft, hop, n_mels) giving ~64 ms windows and ~16 ms hops at any sample rate."""
    n_fft = 1 << max(8, round(math.log2(sample_rate * 0.064)))
    n_mels = 64 if sample_rate <= 24000 else 128
    return n_fft, n_fft // 4, n_mels


def log_mel(x: Tensor, sample_rate: int, n_fft: int | None = None, n_mels: int | None = None) -> Tensor:
    """Log mel-filtered magnitude, ``log(max(mel(|X|), 1e-5))``, ``[B, n_mels, frames]``."""
    d_fft, _, d_mels = _mel_params(sample_rate)
    n_fft, n_mels = n_fft or d_fft, n_mels or d_mels
    mag = stft_mag(x, n_fft)
    fb = mel_filterbank(sample_rate, n_fft, n_mels, device=x.device)
    return torch.log(torch.einsum("mf,bft->bmt", fb, mag).clamp_min(EPS))


def mel_l1_loss(x: Tensor, y: Tensor, sample_rate: int,
                sizes: Sequence[int] | None = None) -> Tensor:
    """L1 between log-mel spectrograms (averaged over the window sizes in ``sizes``)."""
    sizes = list(sizes) if sizes else [_mel_params(sample_rate)[0]]
    total = x.new_zeros((), dtype=torch.float32)
    for n in sizes:
        n_mels = min(_mel_params(sample_rate)[2], n // 4)
        total = total + (log_mel(x, sample_rate, n, n_mels) - log_mel(y, sample_rate, n, n_mels)).abs().mean()
    return total / len(sizes)


def spectral_losses(x: Tensor, y: Tensor, sample_rate: int, stft_sizes: Sequence[int],
                    mel_sizes: Sequence[int] | None = None) -> dict[str, Tensor]:
    """``{"mrstft": mrstft_loss(x, y, stft_sizes), "mel": mel_l1_loss(x, y, sample_rate, mel_sizes)}``
    computed with one STFT per window size (the training loss; the same values as the two calls)."""
    mags: dict[int, tuple[Tensor, Tensor]] = {}

    def mag(n: int) -> tuple[Tensor, Tensor]:
        if n not in mags:
            mags[n] = (stft_mag(x, n), stft_mag(y, n))
        return mags[n]

    out: dict[str, Tensor] = {}
    if stft_sizes:
        total = x.new_zeros((), dtype=torch.float32)
        for n in stft_sizes:
            xm, ym = mag(n)
            total = total + spectral_convergence(xm, ym) + log_mag_l1(xm, ym)
        out["mrstft"] = total / len(stft_sizes)
    sizes = list(mel_sizes) if mel_sizes else [_mel_params(sample_rate)[0]]
    total = x.new_zeros((), dtype=torch.float32)
    for n in sizes:
        n_mels = min(_mel_params(sample_rate)[2], n // 4)
        fb = mel_filterbank(sample_rate, n, n_mels, device=x.device)
        xm, ym = mag(n)
        lx = torch.log(torch.einsum("mf,bft->bmt", fb, xm).clamp_min(EPS))
        ly = torch.log(torch.einsum("mf,bft->bmt", fb, ym).clamp_min(EPS))
        total = total + (lx - ly).abs().mean()
    out["mel"] = total / len(sizes)
    return out


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, 1)), averaged over every latent element."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


# ---------------------------------------------------------------------------------------------
# Reconstruction metrics (reported by export)


@torch.no_grad()
def log_mel_l1(x: Tensor, y: Tensor, sr: int) -> float:
    """Reconstruction quality: mean |log-mel(x) − log-mel(y)| (64 ms windows). Lower is better."""
    n = min(x.shape[-1], y.shape[-1])
    return float(mel_l1_loss(x[..., :n], y[..., :n], sr))


@torch.no_grad()
def mrstft_distance(x: Tensor, y: Tensor, sizes: Sequence[int] = (2048, 1024, 512, 256, 128)) -> float:
    """Reconstruction quality: the multi-resolution STFT loss value. Lower is better."""
    n = min(x.shape[-1], y.shape[-1])
    return float(mrstft_loss(x[..., :n], y[..., :n], sizes))


# ---------------------------------------------------------------------------------------------
# Adversarial term


class SpecDiscriminator(nn.Module):
    """2-D conv discriminator on the log magnitude of one STFT resolution."""

    def __init__(self, n_fft: int, channels: int = 32):
        super().__init__()
        self.n_fft = n_fft
        c = channels
        self.convs = nn.ModuleList([
            nn.Conv2d(1, c, (3, 9), padding=(1, 4)),
            nn.Conv2d(c, c, (3, 9), stride=(2, 1), padding=(1, 4)),
            nn.Conv2d(c, c, (3, 9), stride=(2, 1), padding=(1, 4)),
            nn.Conv2d(c, c, (3, 3), padding=(1, 1)),
        ])
        self.out = nn.Conv2d(c, 1, (3, 3), padding=(1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = torch.log(stft_mag(x, self.n_fft).clamp_min(EPS))[:, None]  # [B, 1, F, T]
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
            feats.append(h)
        return self.out(h), feats


class MultiResolutionDiscriminator(nn.Module):
    def __init__(self, sizes: Sequence[int] = (2048, 1024, 512), channels: int = 32):
        super().__init__()
        self.discs = nn.ModuleList([SpecDiscriminator(n, channels) for n in sizes])

    def forward(self, x: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        return [d(x) for d in self.discs]


def discriminator_loss(real: list, fake: list, kind: str = "hinge") -> Tensor:
    """Discriminator objective on outputs of :class:`MultiResolutionDiscriminator` (fake detached)."""
    loss = 0.0
    for (lr, _), (lf, _) in zip(real, fake):
        if kind == "hinge":
            loss = loss + F.relu(1 - lr).mean() + F.relu(1 + lf).mean()
        else:  # least squares
            loss = loss + (lr - 1).pow(2).mean() + lf.pow(2).mean()
    return loss / len(real)


def generator_adv_loss(fake: list, kind: str = "hinge") -> Tensor:
    loss = 0.0
    for lf, _ in fake:
        loss = loss + (-lf.mean() if kind == "hinge" else (lf - 1).pow(2).mean())
    return loss / len(fake)


def feature_matching_loss(real: list, fake: list) -> Tensor:
    loss, n = 0.0, 0
    for (_, fr), (_, ff) in zip(real, fake):
        for a, b in zip(fr, ff):
            loss = loss + (a.detach() - b).abs().mean() / (a.detach().abs().mean() + EPS)
            n += 1
    return loss / max(n, 1)


# ---------------------------------------------------------------------------------------------
# The autoencoder's objective


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
