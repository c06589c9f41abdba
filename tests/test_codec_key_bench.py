"""benchmarks/codec_key.py's Griffin-Lim: from an exact STFT magnitude it rebuilds a signal with
that magnitude (small spectral convergence), the magnitude that measures how much the mel loses."""
from __future__ import annotations

import numpy as np
import torch

from conftest import load_script


def _bench():
    return load_script("benchmarks/codec_key.py", "presto_codec_key")


def _spectral_convergence(x: torch.Tensor, y: torch.Tensor, n_fft: int, B) -> float:
    w = B.hann_window(n_fft)
    a, b = B.stft_same(x, n_fft, B.HOP, w).abs(), B.stft_same(y, n_fft, B.HOP, w).abs()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(a))


def test_griffin_lim_rebuilds_the_magnitude_of_a_chord():
    B = _bench()
    t = torch.arange(B.HOP * 64, dtype=torch.float64) / B.SR
    x = sum(torch.sin(2 * torch.pi * f * t) / (k + 1) for k, f in enumerate((110.0, 220.0, 330.0, 523.25)))
    x = (x * torch.exp(-t)).float()[None]
    w = B.hann_window(1024)
    y = B.griffin_lim(B.stft_same(x, 1024, B.HOP, w).abs(), 1024)
    assert _spectral_convergence(x, y, 1024, B) < 0.1  # random phases alone: about 1.0
    # the chord's bass note is where it was (within half a semitone): the long-FFT peak of the rebuilt audio
    spec = np.abs(np.fft.rfft(y[0].numpy() * np.hanning(y.shape[1]), 1 << 16))
    f = np.fft.rfftfreq(1 << 16, 1 / B.SR)
    assert abs(f[np.argmax(spec * (f < 160))] - 110.0) < 3.0


def test_griffin_lim_from_a_mel_loses_more_than_from_the_linear_magnitude():
    B = _bench()
    t = torch.arange(B.HOP * 64, dtype=torch.float64) / B.SR
    x = sum(torch.sin(2 * torch.pi * 440 * 2 ** (m / 12) * t) for m in (-33, -29, -26)).float()[None]  # A1 C#2 E2
    lin = B.gl_from_mel(x, 1024, 0.0, linear=True)
    mel = B.gl_from_mel(x, 1024, 0.0)
    assert _spectral_convergence(x, lin, 1024, B) < 0.1 < _spectral_convergence(x, mel, 1024, B)
