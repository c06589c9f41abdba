"""presto_cli.audio: round trips per format, resampling, mix-down, errors, atomic writes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from presto_cli.audio import (AUDIO_EXTS, audio_info, load_audio, peak_normalize, resample,
                              write_audio)
from presto_cli.errors import PrestoError

SR = 16000


def rms_db(audio: torch.Tensor | np.ndarray, eps: float = 1e-10) -> float:
    """(test helper) RMS level in dBFS (a full-scale sine is about -3 dB; digital silence about -200 dB)."""
    x = audio.detach().double().cpu().numpy() if isinstance(audio, torch.Tensor) \
        else np.asarray(audio, dtype=np.float64)
    rms = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
    return 20.0 * math.log10(max(rms, eps))


def tone(freq: float = 440.0, seconds: float = 1.0, sr: int = SR, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).float()[None]


def peak_freq(x: torch.Tensor, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x.numpy().ravel()))
    return float(np.fft.rfftfreq(x.shape[-1], 1 / sr)[spec.argmax()])


@pytest.mark.parametrize("fmt,tol", [("wav", 1e-4), ("flac", 1e-4), ("aiff", 1e-4), ("mp3", None), ("ogg", None)])
def test_round_trip(tmp_path, fmt, tol):
    x = tone()
    path = write_audio(tmp_path / f"x.{fmt}", x, SR)
    y = load_audio(path, SR)
    assert y.dtype == torch.float32 and y.shape == x.shape  # mp3 gapless trimming keeps the length
    if tol is not None:
        assert (y - x).abs().max().item() < tol
    else:  # lossy: the waveform is close and the tone is where it was
        corr = float(torch.nn.functional.cosine_similarity(x, y).item())
        assert corr > 0.98, corr
        assert abs(peak_freq(y, SR) - 440.0) < 2.0
    info = audio_info(path)
    assert info["sample_rate"] == SR and info["channels"] == 1 and info["frames"] == x.shape[-1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_audio_exts():
    assert ".wav" in AUDIO_EXTS and ".mp3" in AUDIO_EXTS and ".aif" in AUDIO_EXTS


def test_fmt_argument(tmp_path):
    p = write_audio(tmp_path / "x.bin", tone(), SR, fmt="flac")
    assert sf.info(str(p)).format == "FLAC"


def test_resample_keeps_pitch_and_length(tmp_path):
    x = tone(440.0, seconds=1.0, sr=44100)
    p = write_audio(tmp_path / "x.wav", x, 44100)
    y = load_audio(p, SR)
    assert y.shape[-1] == round(44100 * SR / 44100)
    assert abs(peak_freq(y, SR) - 440.0) < 1.5
    # a 7 kHz tone survives 44.1k -> 16k (below Nyquist); a 12 kHz one is filtered out
    hi = resample(tone(12000.0, sr=44100).numpy(), 44100, SR)
    ok = resample(tone(7000.0, sr=44100).numpy(), 44100, SR)
    assert rms_db(hi) < rms_db(ok) - 30


def test_stereo_mixdown(tmp_path):
    s = tone().numpy().ravel()
    sf.write(str(tmp_path / "same.wav"), np.stack([s, s], 1), SR, subtype="FLOAT")
    sf.write(str(tmp_path / "anti.wav"), np.stack([s, -s], 1), SR, subtype="FLOAT")
    assert torch.allclose(load_audio(tmp_path / "same.wav", SR)[0], torch.from_numpy(s), atol=1e-6)
    assert load_audio(tmp_path / "anti.wav", SR).abs().max().item() < 1e-6


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(PrestoError, match="broken.wav"):
        load_audio(bad, SR)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(PrestoError, match="empty.wav"):
        load_audio(empty, SR)
    sf.write(str(tmp_path / "zero.wav"), np.zeros((0, 1)), SR)
    with pytest.raises(PrestoError, match="zero.wav"):
        load_audio(tmp_path / "zero.wav", SR)
    with pytest.raises(PrestoError, match="not found"):
        load_audio(tmp_path / "missing.wav", SR)
    with pytest.raises(PrestoError, match="format 'xyz'"):
        write_audio(tmp_path / "x.xyz", tone(), SR)


def test_nan_write_is_refused_and_leaves_nothing(tmp_path):
    x = tone()
    x[0, 10] = float("nan")
    with pytest.raises(PrestoError, match="NaN"):
        write_audio(tmp_path / "x.wav", x, SR)
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_over_existing(tmp_path, monkeypatch):
    p = write_audio(tmp_path / "x.wav", tone(amp=0.25), SR)
    before = p.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sf, "write", boom)
    with pytest.raises(PrestoError, match="disk full"):
        write_audio(p, tone(amp=0.5), SR)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["x.wav"]


def test_levels():
    full = tone(amp=1.0)
    assert abs(rms_db(full) - (-3.0103)) < 0.01
    assert abs(rms_db(tone(amp=0.1)) - (-23.0103)) < 0.01
    assert rms_db(torch.zeros(1, 100)) < -150
    y = peak_normalize(tone(amp=0.1), 0.9)
    assert abs(y.abs().max().item() - 0.9) < 1e-6
    z = torch.zeros(1, 10)
    assert torch.equal(peak_normalize(z), z)
