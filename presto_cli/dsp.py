"""Signal features shared by the codec's reconstruction measures (:mod:`presto_cli.codec.quality`,
:mod:`presto_cli.codec.losses`) and evaluation (:mod:`presto_cli.eval.music_features`, the embedders,
the report): the one mel filterbank, and the 16 kHz power spectrum, chroma and chroma change that
``presto eval --embedder music`` and the codec's chroma similarity both use. numpy only.
"""
from __future__ import annotations

import functools

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 2048
HOP = 512
CHROMA_FMIN, CHROMA_FMAX = 65.0, 5000.0


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (HTK mel scale, unit peak), float64."""
    fmax = float(fmax if fmax is not None else sample_rate / 2)
    return _mel_filterbank(int(sample_rate), int(n_fft), int(n_mels), float(fmin), fmax).copy()


@functools.lru_cache(maxsize=16)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)  # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)  # noqa: E731
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - freqs[None]) / np.maximum(hi - mid, 1e-9)
    return np.clip(np.minimum(up, down), 0.0, None)


def midi_hz(note) -> np.ndarray:
    """Frequency (Hz) of a (fractional) MIDI note number, A4 = 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69.0) / 12.0)


def note_filterbank(sample_rate: int, n_fft: int, lo_note: float, hi_note: float,
                    per_semitone: int = 1) -> np.ndarray:
    """Triangular filters ``[n, n_fft // 2 + 1]`` centred on equal-tempered pitches from MIDI note
    ``lo_note`` to ``hi_note`` (``per_semitone`` filters per semitone), each reaching the centres of
    its neighbours (unit peak), float64. A filter narrower than the STFT's bin spacing is widened
    to one bin on each side, so every filter sees at least the bins next to its centre."""
    step = 1.0 / per_semitone
    edges = midi_hz(np.arange(lo_note - step, hi_note + 1.5 * step, step))
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    df = freqs[1]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    lo, hi = np.minimum(lo, mid - df), np.maximum(hi, mid + df)
    return np.clip(np.minimum((freqs[None] - lo) / (mid - lo), (hi - freqs[None]) / (hi - mid)), 0.0, None)


def _frames(x: np.ndarray) -> np.ndarray:
    """Centred Hann frames ``[T, N_FFT]`` of a 1-D float64 signal (zero padding)."""
    pad = N_FFT // 2
    x = np.pad(np.asarray(x, dtype=np.float64), (pad, pad))
    if x.shape[0] < N_FFT:
        x = np.pad(x, (0, N_FFT - x.shape[0]))
    return np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP] * np.hanning(N_FFT + 1)[:-1]


def power_spectrum(x: np.ndarray) -> np.ndarray:
    """``[T, N_FFT // 2 + 1]`` power spectrogram."""
    return np.abs(np.fft.rfft(_frames(x), axis=-1)) ** 2


def _freqs() -> np.ndarray:
    return np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)


def chroma(power: np.ndarray) -> np.ndarray:
    """``[T, 12]`` unit-norm pitch-class energy (C = 0) of a power spectrogram."""
    f = _freqs()
    keep = (f >= CHROMA_FMIN) & (f <= CHROMA_FMAX)
    pc = (np.round(12.0 * np.log2(f[keep] / 440.0)).astype(int) + 9) % 12
    proj = np.zeros((keep.sum(), 12))
    proj[np.arange(keep.sum()), pc] = 1.0
    c = power[:, keep] @ proj
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def chroma_change(c: np.ndarray, lag: int) -> np.ndarray:
    """Cosine distance between unit chroma frames ``lag`` frames apart (empty if too short)."""
    if c.shape[0] <= lag:
        return np.zeros(0)
    return 1.0 - np.sum(c[lag:] * c[:-lag], axis=1)
