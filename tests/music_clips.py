"""Deterministic stand-ins for the old codec's failure, made from real clips (numpy only).

* :func:`note_erase`: keeps each frame's spectral envelope and removes the notes, the way the old
  STFT-VAE did: every 32 ms frame's smoothed spectral envelope (cepstral liftering, 20 coefficients
  of a 1024-point STFT: detail finer than about 400 Hz is gone) re-imposed on a fixed comb of
  harmonics of 31.25 Hz (the old codec's frame rate, where its outputs put their energy). Drums
  and loudness contours survive; melody, bass line and chords do not.
* :func:`comb_drone`: the same comb under the clip's average envelope, constant over time: the
  steady drone the old bundled models made.
* :func:`comb_contrast_db`: energy on multiples of 31.25 Hz against halfway between (dB), the
  issue's measure of that drone (about -1 dB on real audio, +19.5 dB through the old codec).
* :func:`tonal_change`: mean chroma cosine distance over 0.5 s (shared/tools/tonal_change.py).
"""
from __future__ import annotations

import numpy as np

SR = 16000
F0 = 31.25
N_FFT, HOP, LIFTER = 1024, 256, 20


def stft(x: np.ndarray) -> np.ndarray:
    w = np.hanning(N_FFT + 1)[:-1]
    xp = np.pad(np.asarray(x, dtype=np.float64), (N_FFT // 2, N_FFT // 2))
    return np.fft.rfft(np.lib.stride_tricks.sliding_window_view(xp, N_FFT)[::HOP] * w, axis=1)


def istft(S: np.ndarray, length: int) -> np.ndarray:
    """Weighted overlap-add inverse of :func:`stft` (exact for an unmodified STFT)."""
    w = np.hanning(N_FFT + 1)[:-1]
    frames = np.fft.irfft(S, n=N_FFT, axis=1) * w
    out = np.zeros(HOP * (len(frames) - 1) + N_FFT)
    norm = np.zeros_like(out)
    for i, f in enumerate(frames):
        out[i * HOP:i * HOP + N_FFT] += f
        norm[i * HOP:i * HOP + N_FFT] += w ** 2
    return (out / np.maximum(norm, 1e-8))[N_FFT // 2:N_FFT // 2 + length]


def envelope(mag: np.ndarray) -> np.ndarray:
    """Smoothed spectral envelope of each frame: the first LIFTER cepstral coefficients kept."""
    cep = np.fft.irfft(np.log(mag + 1e-7), axis=-1)
    cep[..., LIFTER:-LIFTER + 1] = 0.0
    return np.exp(np.fft.rfft(cep, axis=-1).real)


def comb(length: int, seed: int) -> np.ndarray:
    """Unit harmonics of 31.25 Hz up to 8 kHz with seeded random phases (exactly periodic)."""
    spec = np.zeros(length // 2 + 1, dtype=complex)
    step = int(round(F0 * length / SR))
    ks = np.arange(step, int(8000 * length / SR), step)
    spec[ks] = np.exp(1j * np.random.default_rng(seed).uniform(0, 2 * np.pi, len(ks)))
    return np.fft.irfft(spec, n=length)


def _same_rms(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return y * np.sqrt(np.mean(x ** 2) / max(float(np.mean(y ** 2)), 1e-20))


def _recolour(x: np.ndarray, seed: int, steady: bool) -> np.ndarray:
    sx, se = stft(x), stft(comb(len(x), seed))
    env = envelope(np.abs(sx))
    if steady:
        env = env.mean(axis=0, keepdims=True)
    return _same_rms(istft(se * env / envelope(np.abs(se)), len(x)), x)


def note_erase(x: np.ndarray, seed: int) -> np.ndarray:
    return _recolour(x, seed, steady=False)


def comb_drone(x: np.ndarray, seed: int) -> np.ndarray:
    return _recolour(x, seed, steady=True)


def comb_contrast_db(x: np.ndarray) -> float:
    n = len(x)
    p = np.abs(np.fft.rfft(x)) ** 2
    step = F0 * n / SR  # bins per 31.25 Hz
    k = np.arange(2, int(8000 / F0))
    on = p[np.round(k * step).astype(int)]
    half = p[np.round((k + 0.5) * step).astype(int)]
    return float(10 * np.log10(on.mean() / half.mean()))


def tonal_change(x: np.ndarray) -> float:
    """Mean chroma cosine distance over 0.5 s (the embedder's chroma; as shared/tools/tonal_change.py)."""
    from presto_cli.eval import music_features as F

    return float(F.chroma_change(F.chroma(F.power_spectrum(x)), 16).mean())
