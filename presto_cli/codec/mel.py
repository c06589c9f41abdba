"""The log-mel codec with a learned Vocos-style vocoder (codec kind ``"mel-vocos"``), METHOD.md §1.

Encoder (no weights): a "same"-framed STFT (hann, ``n_fft``, ``hop_length``: ``T`` samples give
``T / hop_length`` frames) -> ``n_mels`` triangular HTK-mel filters of the magnitude up to ``f_max``
-> ``log(max(·, floor))`` -> minus a per-bin mean fitted on training clips at export. The latents
are the centred log-mel spectrogram itself (``C = n_mels`` channels at ``sample_rate / hop_length``
frames per second), times the codec's ``latent_scale``. Optionally (``bass_n_fft``) a bass band comes
first: filters on the semitones of the bass (E1-C5 by default) from a longer STFT, so that bass notes a
semitone apart reach different channels (issue 30 item 4). A 128-bin log-mel at 62.5 frames/s keeps
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

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from presto_cli.codec.base import Codec, register_codec
from presto_cli.codec.losses import mel_filterbank
from presto_cli.codec.vae import ChannelNorm, ConvNeXtBlock1d, hann_window, istft_same, stft_same
from presto_cli.dsp import midi_hz, note_filterbank
from presto_cli.errors import PrestoError

LOG_MEL_MAX = 8.0  # natural-log mel power; a full-scale square wave or noise reaches about 6


@dataclass
class MelCodecConfig:
    """Recipe section ``model:`` of the autoencoder stage for ``kind: mel-vocos``."""

    kind: str = "mel-vocos"  # codec kind: mel-vocos | stft-vae (each has its own keys)
    sample_rate: int = 16000  # audio sample rate (Hz)
    n_fft: int = 1024  # STFT window (samples), analysis and synthesis
    hop_length: int = 256  # samples per latent frame (62.5 frames/s at 16 kHz)
    n_mels: int = 128  # mel filters: the latent channels (with a bass band, after its channels)
    f_min: float = 0.0  # lowest mel filter edge (Hz)
    f_max: float = 0.0  # 0 -> sample_rate / 2
    log_floor: float = 1e-5  # log(max(mel, floor))
    width: int = 256  # vocoder ConvNeXt channels
    depth: int = 8  # vocoder ConvNeXt blocks
    mlp_ratio: float = 3.0  # ConvNeXt MLP width over block width
    kernel_size: int = 7  # depthwise convolution kernel (frames, odd)
    # phase head predicts a residual on a steady sinusoid per bin (no frame-rate clicks untrained)
    phase_prior: bool = True
    # 1: mono; 2: stereo, each channel its own log-mel (left's n_bins latent channels, then
    # right's): the latents have audio_channels * n_bins channels, one shared vocoder decodes both
    audio_channels: int = 1
    # The bass band (issue 30 item 4): 0 = none. Otherwise the latent's lowest channels are filters
    # centred on equal-tempered pitches from MIDI bass_notes[0] to bass_notes[1]
    # (bass_bins_per_semitone per semitone), taken from a bass_n_fft-point STFT (same hop) so that
    # bass notes a semitone apart fall in different channels; the n_mels mel filters (n_fft STFT)
    # start where the band ends. A 128-bin mel at n_fft 1024 has filters about 14 Hz apart at the
    # bottom, wider than a semitone below about 250 Hz.
    bass_n_fft: int = 0  # bass band's STFT window (samples, a multiple of hop_length); 0 = no bass band
    bass_notes: tuple[float, float] = (28.0, 72.0)  # bass band's lowest and highest MIDI note (E1 41 Hz, C5 523 Hz)
    bass_bins_per_semitone: int = 1  # bass-band filters per semitone
    # with a bass band and phase_prior: the synthesis bins the band covers advance their phase at the
    # pitch of the loudest band filter on them, not at their centre (else a bass note comes back on
    # the n_fft grid: 15.6 Hz steps at 1024 points, measured to 0.02 semitone)
    bass_phase_prior: bool = True

    @property
    def hop(self) -> int:
        return self.hop_length

    @property
    def n_bass(self) -> int:
        """Channels of the bass band (0 without one)."""
        if not self.bass_n_fft:
            return 0
        lo, hi = self.bass_notes
        return int(round((hi - lo) * self.bass_bins_per_semitone)) + 1

    @property
    def n_bins(self) -> int:
        """Latent channels per audio channel: the bass band's, then the mel filters'."""
        return self.n_bass + self.n_mels

    def mel_f_min(self) -> float:
        """Lower edge of the first mel filter: ``f_min``, or with a bass band, a step below its top
        note (the first mel filter rises from there, as the band's filters do)."""
        if not self.bass_n_fft:
            return self.f_min
        return float(midi_hz(self.bass_notes[1] - 1.0 / self.bass_bins_per_semitone))

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
        if self.bass_n_fft:
            if self.bass_n_fft < self.n_fft or self.bass_n_fft % self.hop_length:
                raise bad(f"model.bass_n_fft ({self.bass_n_fft}) must be at least n_fft ({self.n_fft}) "
                          f"and a multiple of hop_length ({self.hop_length})", "e.g. bass_n_fft: 2048; "
                          "0 turns the bass band off")
            if len(self.bass_notes) != 2 or not 0 < self.bass_notes[0] < self.bass_notes[1]:
                raise bad(f"model.bass_notes must be [lowest, highest] MIDI notes, lowest first, got "
                          f"{list(self.bass_notes)}", "e.g. [28, 72]: E1 (41 Hz) to C5 (523 Hz)")
            if self.bass_bins_per_semitone < 1:
                raise bad(f"model.bass_bins_per_semitone must be >= 1, got {self.bass_bins_per_semitone}")
            if self.f_min:
                raise bad(f"model.f_min ({self.f_min}) must be 0 with a bass band: the mel filters "
                          "start where the band ends", "remove f_min or set bass_n_fft: 0")
            if float(midi_hz(self.bass_notes[1])) >= f_max:
                raise bad(f"model.bass_notes' top note ({self.bass_notes[1]}) lies above f_max ({f_max} Hz)")


class MelVocosCodec(Codec):
    """Centred log-mel latents, decoded by a Vocos-style vocoder (see the module docstring)."""

    stochastic = False  # encode is a fixed transform: no posterior, no KL term

    def __init__(self, cfg: MelCodecConfig):
        super().__init__(cfg, channels=cfg.n_bins * cfg.audio_channels, hop=cfg.hop_length,
                         audio_channels=cfg.audio_channels)
        nf = cfg.n_fft // 2 + 1
        self.n_bins = cfg.n_bins
        self.register_buffer("window", hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels,
                                                      cfg.mel_f_min(), cfg.f_max or None),
                             persistent=False)
        synth_fb = self.mel_fb  # every channel's filter on the synthesis STFT's bins
        if cfg.bass_n_fft:
            lo, hi = cfg.bass_notes
            note_fb = lambda n: torch.from_numpy(  # noqa: E731
                note_filterbank(cfg.sample_rate, n, lo, hi, cfg.bass_bins_per_semitone)).float()
            self.register_buffer("bass_window", hann_window(cfg.bass_n_fft), persistent=False)
            self.register_buffer("bass_fb", note_fb(cfg.bass_n_fft), persistent=False)
            # the band's filters on the synthesis bins, and each filter's centre frequency
            self.register_buffer("bass_synth_fb", note_fb(cfg.n_fft), persistent=False)
            synth_fb = torch.cat([self.bass_synth_fb, self.mel_fb])
            # the synthesis bins the band's filters touch are 0 .. bass_bins - 1; which filters touch each
            self.bass_bins = int((self.bass_synth_fb > 0).any(0).nonzero().max()) + 1
            self.register_buffer("bass_on_bin", (self.bass_synth_fb[:, : self.bass_bins] > 0)[None, :, :, None],
                                 persistent=False)
            notes = torch.arange(cfg.n_bass, dtype=torch.float64) / cfg.bass_bins_per_semitone + lo
            self.register_buffer("bass_hz", torch.from_numpy(midi_hz(notes.numpy())).float(), persistent=False)
        # a fixed first guess of the linear magnitude: the filterbank's non-negative pseudo-inverse
        self.register_buffer("mel_pinv", torch.linalg.pinv(synth_fb).clamp_min(0.0),
                             persistent=False)
        self.register_buffer("mel_mean", torch.zeros(cfg.n_bins))  # fitted at export
        self.inp = nn.Conv1d(cfg.n_bins, cfg.width, cfg.kernel_size, padding=cfg.kernel_size // 2)
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
        """``log(max(mel(|STFT|), floor))``, ``[B, A * n_bins, T / hop]`` of ``audio [B, A, T]``
        (``A = audio_channels``; stereo: the left channel's bins, then the right's). With a bass
        band its channels come first, from the ``bass_n_fft``-point STFT scaled by
        ``n_fft / bass_n_fft`` (a sinusoid then peaks at the same level in both STFTs)."""
        audio = self.pad_audio(audio)
        b, a, t = audio.shape
        with torch.autocast(audio.device.type, enabled=False):
            x = audio.reshape(b * a, t).float()
            mag = stft_same(x, self.n_fft, self.hop, self.window).abs()
            mel = torch.einsum("mf,bft->bmt", self.mel_fb, mag)
            if self.cfg.bass_n_fft:
                bass_mag = stft_same(x, self.cfg.bass_n_fft, self.hop, self.bass_window).abs()
                bass = torch.einsum("mf,bft->bmt", self.bass_fb, bass_mag) * (self.n_fft / self.cfg.bass_n_fft)
                mel = torch.cat([bass, mel], dim=1)
            out = torch.log(mel.clamp_min(self.cfg.log_floor))
            return out.reshape(b, a * out.shape[1], out.shape[2])

    @torch.no_grad()
    def fit_normalization(self, batches: Iterable[Tensor]) -> dict[str, float]:
        """Set ``mel_mean`` to the per-bin mean log-mel of ``batches`` (``[b, A, T]`` audio; one
        mean per bin shared by both channels of a stereo codec)."""
        total, n = None, 0
        for x in batches:
            m = self.log_mel(x.to(self.mel_fb.device)).double()
            m = m.reshape(m.shape[0] * self.audio_channels, self.n_bins, m.shape[-1])
            s = m.sum(dim=(0, 2))
            total = s if total is None else total + s
            n += m.shape[0] * m.shape[2]
        if not n:
            raise PrestoError("no clips to fit the mel codec's normalisation on", "check data.path")
        self.mel_mean.copy_((total / n).float())
        return {"mel_mean_min": float(self.mel_mean.min()), "mel_mean_max": float(self.mel_mean.max())}

    # -- codec --------------------------------------------------------------------------------------
    def _bin_mean(self) -> Tensor:
        return self.mel_mean.repeat(self.audio_channels)[:, None]  # [A * n_bins, 1]

    def encode_dist(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.log_mel(audio) - self._bin_mean()
        return mean, torch.full_like(mean, -30.0)  # a point mass

    def vocode(self, log_mel: Tensor) -> Tensor:
        """Audio ``[B, A, N * hop]`` from an (uncentred) log-mel ``[B, A * n_bins, N]``: each
        channel's ``n_bins`` rows go through the one vocoder."""
        b, a = log_mel.shape[0], self.audio_channels
        if a > 1:
            return self._vocode(log_mel.reshape(b * a, self.n_bins, -1)).reshape(b, a, -1)
        return self._vocode(log_mel)

    def _vocode(self, log_mel: Tensor) -> Tensor:
        """Audio ``[B, 1, N * hop]`` from an (uncentred) log-mel ``[B, n_bins, N]``."""
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
            if self.cfg.phase_prior and self.cfg.bass_n_fft and self.cfg.bass_phase_prior:
                phase = phase + self.pitch_phase(log_mel[:, : self.cfg.n_bass].float())
            elif self.cfg.phase_prior:
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

    def bin_frequencies(self, bass_log_mel: Tensor) -> Tensor:
        """``[B, n_freq, frames]`` frequency (Hz) at which each synthesis bin's phase advances: for
        a bin the bass band covers, the pitch of the loudest of the band's filters on that bin,
        refined by a parabola through its log magnitude and its neighbours' (a bass note between
        two bins gives both its own frequency); for the other bins, and where the band is silent,
        the bin's centre."""
        b, _, t = bass_log_mel.shape
        n_freq, covered = self.n_fft // 2 + 1, self.bass_bins
        centre = torch.arange(n_freq, device=bass_log_mel.device, dtype=torch.float32) * (self.sample_rate / self.n_fft)
        out = centre[None, :, None].expand(b, n_freq, t).clone()
        # parabolic peak offset of every filter, in filter steps, from its neighbours' log magnitudes
        lm = bass_log_mel
        left = torch.cat([lm[:, :1], lm[:, :-1]], dim=1)
        right = torch.cat([lm[:, 1:], lm[:, -1:]], dim=1)
        curve = left - 2 * lm + right
        delta = torch.where(curve < 0, 0.5 * (left - right) / curve.clamp(max=-1e-6), torch.zeros_like(lm))
        pitch = self.bass_hz[None, :, None] * torch.pow(2.0, delta.clamp(-0.5, 0.5) /
                                                       (12.0 * self.cfg.bass_bins_per_semitone))
        score = torch.where(self.bass_on_bin, lm[:, :, None, :], torch.full_like(lm[:, :, None, :], -torch.inf))
        best, idx = score.max(dim=1)  # [B, covered, frames]
        f = torch.gather(pitch, 1, idx)  # f[b, k, t] = pitch[b, idx[b, k, t], t]
        audible = best > math.log(self.cfg.log_floor) + 2.0
        out[:, :covered] = torch.where(audible, f, out[:, :covered])
        return out

    def pitch_phase(self, bass_log_mel: Tensor) -> Tensor:
        """``[B, n_freq, frames]`` phase prior advancing each bin at :meth:`bin_frequencies` per frame,
        wrapped to [0, 2π); equal to :meth:`steady_phase` where every bin runs at its centre."""
        f = self.bin_frequencies(bass_log_mel).double()
        step = f * (self.hop / self.sample_rate)  # cycles per frame
        cycles = torch.remainder(torch.cumsum(step, dim=-1) - step, 1.0)  # 0 at the first frame
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
