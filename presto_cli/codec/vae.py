"""The trainable STFT-domain VAE (codec kind ``"stft-vae"``), METHOD.md section 1.

Encoder: STFT (hann window, ``n_fft``, ``hop_length``, "same" framing so ``T`` samples give
``T / hop_length`` frames) -> per-frame features [log magnitude; real and imaginary parts of the
power-law compressed complex spectrum ``X * |X|^(-0.7)``] -> 1-D ConvNeXt blocks at the STFT frame
rate -> a strided convolution that downsamples time by ``downsample`` -> ConvNeXt blocks at the
latent rate -> ``(mean, logvar)`` of ``latent_channels`` channels. Latent frame rate:
``sample_rate / (hop_length * downsample)``.

Decoder (Vocos-style): ConvNeXt blocks at the latent rate -> transposed-convolution upsampling by
``downsample`` -> ConvNeXt blocks at the STFT frame rate -> a linear head predicting log magnitude
and phase per bin -> inverse STFT (overlap-add with the same window, exact inverse of the analysis
for analysis-derived magnitude and phase; tested).

Deterministic given its weights; the Fourier transforms always run in float32 (autocast-safe).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_cli.codec.base import Codec, register_codec
from presto_cli.errors import PrestoError


@dataclass
class CodecConfig:
    """Recipe section ``model:`` of the autoencoder stage."""

    kind: str = "stft-vae"
    sample_rate: int = 16000
    n_fft: int = 512  # STFT window length (samples)
    hop_length: int = 128  # STFT hop (samples); must divide n_fft
    downsample: int = 4  # STFT frames per latent frame: latent hop = hop_length * downsample
    latent_channels: int = 16
    width: int = 256  # ConvNeXt channels
    depth: int = 4  # ConvNeXt blocks at the latent rate (encoder and decoder each)
    frame_depth: int = 2  # ConvNeXt blocks at the STFT frame rate (encoder and decoder each)
    mlp_ratio: float = 3.0
    kernel_size: int = 7
    logvar_min: float = -30.0
    logvar_max: float = 20.0

    @property
    def hop(self) -> int:
        return self.hop_length * self.downsample

    def validate(self) -> None:
        def bad(msg: str, hint: str | None = None) -> PrestoError:
            return PrestoError(f"codec recipe: {msg}", hint)

        if self.kind != "stft-vae":
            raise bad(f"kind must be 'stft-vae' for this codec, got {self.kind!r}")
        for name in ("sample_rate", "n_fft", "hop_length", "downsample", "latent_channels", "width",
                     "kernel_size"):
            if getattr(self, name) <= 0:
                raise bad(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.depth < 0 or self.frame_depth < 0:
            raise bad("model.depth and model.frame_depth must be >= 0")
        if self.n_fft % self.hop_length or self.n_fft < 2 * self.hop_length:
            raise bad(f"model.hop_length ({self.hop_length}) must divide model.n_fft ({self.n_fft}) "
                      "at least twice", "e.g. n_fft = 4 * hop_length")
        if self.kernel_size % 2 == 0:
            raise bad(f"model.kernel_size must be odd, got {self.kernel_size}")


# ---------------------------------------------------------------------------------------------
# "same"-framed STFT and its exact inverse


def hann_window(n: int, device=None) -> Tensor:
    return torch.hann_window(n, periodic=True, dtype=torch.float32, device=device)


def stft_same(x: Tensor, n_fft: int, hop: int, window: Tensor | None = None) -> Tensor:
    """Complex STFT ``[B, n_fft//2+1, T//hop]`` of ``x [B, T]`` (T a multiple of ``hop``).

    Frame ``k`` is centred on sample ``k*hop + hop/2``: the signal is zero-padded by
    ``(n_fft - hop) / 2`` on both sides, so ``T`` samples give exactly ``T / hop`` frames.
    """
    if x.shape[-1] % hop:
        raise ValueError(f"signal length {x.shape[-1]} is not a multiple of hop {hop}")
    pad = (n_fft - hop) // 2
    w = hann_window(n_fft, x.device) if window is None else window
    xp = F.pad(x.float(), (pad, n_fft - hop - pad))
    return torch.stft(xp, n_fft, hop_length=hop, win_length=n_fft, window=w, center=False,
                      return_complex=True)


def istft_same(spec: Tensor, n_fft: int, hop: int, window: Tensor | None = None) -> Tensor:
    """Inverse of :func:`stft_same`: weighted overlap-add, ``[B, F, N]`` -> ``[B, N * hop]``.

    ``x = sum_k w(t - k*hop) * frame_k(t) / sum_k w(t - k*hop)^2`` (least-squares inverse), which
    returns the analysed signal exactly when ``spec`` is an STFT.
    """
    b, _, n = spec.shape
    w = hann_window(n_fft, spec.device) if window is None else window
    frames = torch.fft.irfft(spec.to(torch.complex64), n=n_fft, dim=1) * w[None, :, None]
    total = (n - 1) * hop + n_fft
    y = F.fold(frames, output_size=(1, total), kernel_size=(1, n_fft), stride=(1, hop))
    env = F.fold((w * w)[None, :, None].expand(1, n_fft, n), output_size=(1, total),
                 kernel_size=(1, n_fft), stride=(1, hop))
    pad = (n_fft - hop) // 2
    y = y.reshape(b, total)[:, pad:pad + n * hop]
    env = env.reshape(total)[pad:pad + n * hop]
    return y / env.clamp_min(1e-11)


# ---------------------------------------------------------------------------------------------
# Blocks


class ConvNeXtBlock1d(nn.Module):
    """Depthwise conv -> LayerNorm -> pointwise MLP (GELU) -> layer scale, residual."""

    def __init__(self, dim: int, mlp_ratio: float, kernel_size: int, layer_scale: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, hidden)
        self.pw2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:  # [B, D, N]
        h = self.dwconv(x).transpose(1, 2)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of ``[B, D, N]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def _stack(cfg: CodecConfig, n: int) -> nn.Sequential:
    ls = 1.0 / max(1, cfg.depth + cfg.frame_depth)
    return nn.Sequential(*[ConvNeXtBlock1d(cfg.width, cfg.mlp_ratio, cfg.kernel_size, ls)
                           for _ in range(n)])


# ---------------------------------------------------------------------------------------------
# The VAE


class STFTVAE(Codec):
    """STFT-domain VAE with a Vocos-style iSTFT decoder (see the module docstring)."""

    def __init__(self, cfg: CodecConfig):
        super().__init__(cfg, channels=cfg.latent_channels, hop=cfg.hop)
        self.hop_length = cfg.hop_length
        nf = cfg.n_fft // 2 + 1
        self.n_freq = nf
        self.register_buffer("window", hann_window(cfg.n_fft), persistent=False)
        d = cfg.downsample
        # encoder
        self.enc_in = nn.Conv1d(3 * nf, cfg.width, 3, padding=1)
        self.enc_in_norm = ChannelNorm(cfg.width)
        self.enc_frame = _stack(cfg, cfg.frame_depth)
        self.enc_down = nn.Conv1d(cfg.width, cfg.width, d, stride=d)
        self.enc_latent = _stack(cfg, cfg.depth)
        self.enc_out_norm = ChannelNorm(cfg.width)
        self.enc_out = nn.Conv1d(cfg.width, 2 * cfg.latent_channels, 1)
        # decoder
        self.dec_in = nn.Conv1d(cfg.latent_channels, cfg.width, cfg.kernel_size,
                                padding=cfg.kernel_size // 2)
        self.dec_in_norm = ChannelNorm(cfg.width)
        self.dec_latent = _stack(cfg, cfg.depth)
        self.dec_up = nn.ConvTranspose1d(cfg.width, cfg.width, d, stride=d)
        self.dec_frame = _stack(cfg, cfg.frame_depth)
        self.dec_out_norm = ChannelNorm(cfg.width)
        self.head = nn.Conv1d(cfg.width, 2 * nf, 1)
        with torch.no_grad():  # start quiet: log magnitude ~ -5 instead of loud white noise
            self.head.weight[:nf].mul_(0.1)
            self.head.bias[:nf].fill_(-5.0)

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    # -- analysis / synthesis ---------------------------------------------------------------------
    def analysis(self, audio: Tensor) -> Tensor:
        """Complex STFT ``[B, n_freq, T / hop_length]`` of ``audio [B, 1, T]``."""
        with torch.autocast(audio.device.type, enabled=False):
            return stft_same(audio[:, 0].float(), self.n_fft, self.hop_length, self.window)

    def synthesize(self, log_mag: Tensor, phase: Tensor) -> Tensor:
        """Audio ``[B, 1, N * hop_length]`` from log magnitude and phase ``[B, n_freq, N]``."""
        with torch.autocast(log_mag.device.type, enabled=False):
            mag = torch.exp(log_mag.float().clamp(max=math.log(1e2)))  # Vocos' magnitude clip
            spec = torch.polar(mag, phase.float())
            return istft_same(spec, self.n_fft, self.hop_length, self.window)[:, None]

    def features(self, audio: Tensor) -> Tensor:
        spec = self.analysis(audio)
        mag = spec.abs()
        comp = spec * (mag + 1e-5).pow(-0.7)  # |comp| ~ |X|^0.3, keeps the phase
        return torch.cat([torch.log(mag.clamp_min(1e-5)), comp.real, comp.imag], dim=1)

    # -- codec ------------------------------------------------------------------------------------
    def encode_dist(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        audio = self.pad_audio(audio)
        feats = self.features(audio).to(self.enc_in.weight.dtype)
        h = self.enc_frame(self.enc_in_norm(self.enc_in(feats)))
        h = self.enc_latent(self.enc_down(h))
        mean, logvar = self.enc_out(self.enc_out_norm(h)).chunk(2, dim=1)
        return mean, logvar.clamp(self.cfg.logvar_min, self.cfg.logvar_max)

    def decode_raw(self, z: Tensor) -> Tensor:
        h = self.dec_latent(self.dec_in_norm(self.dec_in(z.to(self.dec_in.weight.dtype))))
        h = self.dec_frame(self.dec_up(h))
        log_mag, phase = self.head(self.dec_out_norm(h)).chunk(2, dim=1)
        return self.synthesize(log_mag, phase)

    def forward(self, audio: Tensor, noise: Tensor | None = None) -> dict[str, Tensor]:
        """Training pass: ``z = mean + exp(logvar/2) * noise`` (noise given by the caller for
        counter-based randomness; ``None`` -> the posterior mean). Returns recon, mean, logvar."""
        mean, logvar = self.encode_dist(audio)
        z = mean if noise is None else mean + torch.exp(0.5 * logvar) * noise.to(mean.dtype)
        return {"recon": self.decode_raw(z), "mean": mean, "logvar": logvar}


@register_codec("stft-vae", CodecConfig)
def _build_stft_vae(cfg: dict) -> STFTVAE:
    from presto_cli.recipes import dataclass_from_dict

    return STFTVAE(dataclass_from_dict(CodecConfig, cfg, where="model"))
