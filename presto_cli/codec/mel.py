"""The log-mel codec with a learned Vocos-style vocoder (codec kind ``"mel-vocos"``), METHOD.md §1.

Encoder (no weights): a "same"-framed STFT (hann, ``n_fft``, ``hop_length``: ``T`` samples give
``T / hop_length`` frames) -> ``n_mels`` triangular HTK-mel filters of the magnitude up to ``f_max``
-> ``log(max(·, floor))`` -> minus a per-bin mean fitted on training clips at export. The latents
are the centred log-mel spectrogram itself (``C = n_mels`` channels at ``sample_rate / hop_length``
frames per second), times the codec's ``latent_scale``. A 128-bin log-mel at 62.5 frames/s keeps
the notes (measured: chroma similarity 0.98 after Griffin-Lim; ../CODEC_NOTES.md), so every pitch
the diffusion model writes reaches the decoder; nothing about pitch has to be learned by a
compressing encoder, which is where the STFT-VAE failed.

Decoder (Vocos, Siuzdenko et al. 2023): the log-mel -> a 1-D convolution -> ConvNeXt blocks at the
frame rate -> a linear head predicting the log magnitude and the phase of every STFT bin -> inverse
STFT with the analysis window (an exact inverse, tested in ``vae.py``). The head's log magnitude is
a residual on the filterbank's non-negative pseudo-inverse applied to the mel magnitudes, so the
network starts from the right spectral envelope and spends its training on phase and detail. It runs at the frame rate, so
decoding is cheap on a CPU (no upsampling stack as in HiFi-GAN).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from presto_cli.codec.base import Codec, register_codec
from presto_cli.codec.losses import mel_filterbank
from presto_cli.codec.vae import ChannelNorm, ConvNeXtBlock1d, hann_window, istft_same, stft_same
from presto_cli.errors import PrestoError

LOG_MEL_MAX = 8.0  # natural-log mel power; a full-scale square wave or noise reaches about 6


@dataclass
class MelCodecConfig:
    """Recipe section ``model:`` of the autoencoder stage for ``kind: mel-vocos``."""

    kind: str = "mel-vocos"  # codec kind: mel-vocos | stft-vae (each has its own keys)
    sample_rate: int = 16000  # audio sample rate (Hz)
    n_fft: int = 1024  # STFT window (samples), analysis and synthesis
    hop_length: int = 256  # samples per latent frame (62.5 frames/s at 16 kHz)
    n_mels: int = 128  # latent channels
    f_min: float = 0.0  # lowest mel filter edge (Hz)
    f_max: float = 0.0  # 0 -> sample_rate / 2
    log_floor: float = 1e-5  # log(max(mel, floor))
    width: int = 256  # vocoder ConvNeXt channels
    depth: int = 8  # vocoder ConvNeXt blocks
    mlp_ratio: float = 3.0  # ConvNeXt MLP width over block width
    kernel_size: int = 7  # depthwise convolution kernel (frames, odd)
    # phase head predicts a residual on a steady sinusoid per bin (no frame-rate clicks untrained)
    phase_prior: bool = True
    # 1: mono; 2: stereo, each channel its own log-mel (left's n_mels latent channels, then
    # right's): the latents have audio_channels * n_mels channels, one shared vocoder decodes both
    audio_channels: int = 1

    @property
    def hop(self) -> int:
        return self.hop_length

    def validate(self) -> None:
        def bad(msg: str, hint: str | None = None) -> PrestoError:
            return PrestoError(f"codec recipe: {msg}", hint)

        if self.kind != "mel-vocos":
            raise bad(f"kind must be 'mel-vocos' for this codec, got {self.kind!r}")
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "width", "kernel_size"):
            if getattr(self, name) <= 0:
                raise bad(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.depth < 0:
            raise bad("model.depth must be >= 0")
        if self.n_fft % self.hop_length or self.n_fft < 2 * self.hop_length:
            raise bad(f"model.hop_length ({self.hop_length}) must divide model.n_fft ({self.n_fft}) "
                      "at least twice", "e.g. n_fft = 4 * hop_length")
        if self.n_mels > self.n_fft // 2 + 1:
            raise bad(f"model.n_mels ({self.n_mels}) exceeds the STFT's {self.n_fft // 2 + 1} bins",
                      "lower n_mels or raise n_fft")
        f_max = self.f_max or self.sample_rate / 2
        if not 0 <= self.f_min < f_max <= self.sample_rate / 2:
            raise bad(f"need 0 <= model.f_min < model.f_max <= sample_rate/2, got {self.f_min}, "
                      f"{self.f_max}")
        if not self.log_floor > 0:
            raise bad(f"model.log_floor must be positive, got {self.log_floor}")
        if self.kernel_size % 2 == 0:
            raise bad(f"model.kernel_size must be odd, got {self.kernel_size}")
        if self.audio_channels not in (1, 2):
            raise bad(f"model.audio_channels must be 1 (mono) or 2 (stereo), got {self.audio_channels}")


class MelVocosCodec(Codec):
    """Centred log-mel latents, decoded by a Vocos-style vocoder (see the module docstring)."""

    stochastic = False  # encode is a fixed transform: no posterior, no KL term

    def __init__(self, cfg: MelCodecConfig):
        super().__init__(cfg, channels=cfg.n_mels * cfg.audio_channels, hop=cfg.hop_length,
                         audio_channels=cfg.audio_channels)
        nf = cfg.n_fft // 2 + 1
        self.register_buffer("window", hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels,
                                                      cfg.f_min, cfg.f_max or None),
                             persistent=False)
        # a fixed first guess of the linear magnitude: the filterbank's non-negative pseudo-inverse
        self.register_buffer("mel_pinv", torch.linalg.pinv(self.mel_fb).clamp_min(0.0),
                             persistent=False)
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))  # fitted at export
        self.inp = nn.Conv1d(cfg.n_mels, cfg.width, cfg.kernel_size, padding=cfg.kernel_size // 2)
        self.inp_norm = ChannelNorm(cfg.width)
        ls = 1.0 / max(1, cfg.depth)
        self.blocks = nn.Sequential(*[ConvNeXtBlock1d(cfg.width, cfg.mlp_ratio, cfg.kernel_size, ls)
                                      for _ in range(cfg.depth)])
        self.out_norm = ChannelNorm(cfg.width)
        self.head = nn.Conv1d(cfg.width, 2 * nf, 1)
        with torch.no_grad():  # start at the pseudo-inverse magnitude (a residual of ~0)
            self.head.weight[:nf].mul_(0.1)
            self.head.bias[:nf].zero_()

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    # -- the fixed analysis ------------------------------------------------------------------------
    def log_mel(self, audio: Tensor) -> Tensor:
        """``log(max(mel(|STFT|), floor))``, ``[B, A * n_mels, T / hop]`` of ``audio [B, A, T]``
        (``A = audio_channels``; stereo: the left channel's bins, then the right's)."""
        audio = self.pad_audio(audio)
        b, a, t = audio.shape
        with torch.autocast(audio.device.type, enabled=False):
            mag = stft_same(audio.reshape(b * a, t).float(), self.n_fft, self.hop, self.window).abs()
            mel = torch.einsum("mf,bft->bmt", self.mel_fb, mag)
            out = torch.log(mel.clamp_min(self.cfg.log_floor))
            return out.reshape(b, a * out.shape[1], out.shape[2])

    @torch.no_grad()
    def fit_normalization(self, batches: Iterable[Tensor]) -> dict[str, float]:
        """Set ``mel_mean`` to the per-bin mean log-mel of ``batches`` (``[b, A, T]`` audio; one
        mean per bin shared by both channels of a stereo codec)."""
        total, n = None, 0
        for x in batches:
            m = self.log_mel(x.to(self.mel_fb.device)).double()
            m = m.reshape(m.shape[0] * self.audio_channels, self.cfg.n_mels, m.shape[-1])
            s = m.sum(dim=(0, 2))
            total = s if total is None else total + s
            n += m.shape[0] * m.shape[2]
        if not n:
            raise PrestoError("no clips to fit the mel codec's normalisation on", "check data.path")
        self.mel_mean.copy_((total / n).float())
        return {"mel_mean_min": float(self.mel_mean.min()), "mel_mean_max": float(self.mel_mean.max())}

    # -- codec --------------------------------------------------------------------------------------
    def _bin_mean(self) -> Tensor:
        return self.mel_mean.repeat(self.audio_channels)[:, None]  # [A * n_mels, 1]

    def encode_dist(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.log_mel(audio) - self._bin_mean()
        return mean, torch.full_like(mean, -30.0)  # a point mass

    def vocode(self, log_mel: Tensor) -> Tensor:
        """Audio ``[B, A, N * hop]`` from an (uncentred) log-mel ``[B, A * n_mels, N]``: each
        channel's ``n_mels`` rows go through the one vocoder."""
        b, a = log_mel.shape[0], self.audio_channels
        if a > 1:
            return self._vocode(log_mel.reshape(b * a, self.cfg.n_mels, -1)).reshape(b, a, -1)
        return self._vocode(log_mel)

    def _vocode(self, log_mel: Tensor) -> Tensor:
        """Audio ``[B, 1, N * hop]`` from an (uncentred) log-mel ``[B, n_mels, N]``."""
        # A full-scale signal's log-mel peaks near 6; far larger values (a diverged sampler) would
        # overflow exp() below into inf - inf = NaN audio. Clip them 2 nats above full scale.
        log_mel = log_mel.clamp(max=LOG_MEL_MAX)
        h = self.inp_norm(self.inp(log_mel.to(self.inp.weight.dtype)))
        log_mag, phase = self.head(self.out_norm(self.blocks(h))).chunk(2, dim=1)
        with torch.autocast(log_mag.device.type, enabled=False):
            prior = torch.einsum("fm,bmt->bft", self.mel_pinv, torch.exp(log_mel.float()))
            log_mag = log_mag.float() + torch.log(prior.clamp_min(self.cfg.log_floor))
            mag = torch.exp(log_mag.clamp(max=4.6))  # |X| <= 100, as Vocos clips it
            phase = phase.float()
            if self.cfg.phase_prior:
                phase = phase + self.steady_phase(phase.shape[-1], phase.device)
            spec = torch.polar(mag, phase)
            return istft_same(spec, self.n_fft, self.hop, self.window)[:, None]

    def steady_phase(self, frames: int, device) -> Tensor:
        """``[n_freq, frames]`` phase of a steady sinusoid at each bin's centre frequency,
        wrapped to [0, 2π): bin k advances by 2π·k·hop/n_fft per frame."""
        k = torch.arange(self.n_fft // 2 + 1, device=device, dtype=torch.float64)
        t = torch.arange(frames, device=device, dtype=torch.float64)
        cycles = torch.remainder(torch.outer(k, t) * (self.hop / self.n_fft), 1.0)
        return (2 * torch.pi * cycles).float()

    def decode_raw(self, z: Tensor) -> Tensor:
        return self.vocode(z.float() + self._bin_mean())

    def forward(self, audio: Tensor, noise: Tensor | None = None) -> dict[str, Tensor]:
        """Training pass (``noise`` is ignored: the encoder is deterministic)."""
        mean = self.log_mel(audio)
        return {"recon": self.vocode(mean), "mean": mean, "logvar": None}


@register_codec("mel-vocos", MelCodecConfig)
def _build_mel_vocos(cfg: dict) -> MelVocosCodec:
    from presto_cli.recipes import dataclass_from_dict

    return MelVocosCodec(dataclass_from_dict(MelCodecConfig, cfg, where="model"))
