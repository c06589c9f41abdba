"""Does the bundled codec keep the notes of a melody? A bass line (41-200 Hz) and the same line three
octaves up go through encode/decode; each note's pitch is measured by a harmonic sum on a long,
zero-padded FFT of the note's middle. Issue 30 item 4: the codec bundled before the chain moved onto
the bass band (128 HTK-mel bins at n_fft 1024) kept 3 of the 16 bass notes; the bundled demo-codec
(recipes/demo/autoencoder-bass.yaml) keeps them through its bass band and bass phase prior."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SR = 16000
NOTE_S = 0.5
BASS_LINE = [28, 31, 33, 36, 40, 43, 45, 48, 52, 55, 50, 47, 43, 38, 35, 29]  # E1 (41 Hz) .. G3 (196 Hz)
HIGH_LINE = [n + 36 for n in BASS_LINE[:7] + BASS_LINE[11:]]  # E4 .. A5 (330-880 Hz)
CODEC = Path(__file__).resolve().parents[1] / "presto_cli" / "assets" / "demo-codec.safetensors"


def bass_tone(midi: int, seconds: float) -> np.ndarray:
    """Six partials decaying by 0.7 each, a 10 ms attack and a 1 s decay (a plucked bass)."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    x = sum(np.sin(2 * np.pi * k * f0 * t) * 0.7 ** (k - 1) for k in range(1, 7))
    return x * np.minimum(t / 0.01, 1.0) * np.exp(-t / 1.0)


def melody(notes) -> np.ndarray:
    x = 0.3 * np.concatenate([bass_tone(m, NOTE_S) for m in notes])
    return x[: len(x) // 256 * 256]


def note_pitch(seg: np.ndarray, fmin: float, fmax: float) -> float:
    """The fractional MIDI pitch of one note: the f0 in [fmin, fmax] (5-cent grid) whose first four
    harmonics (weighted 1/k) hold the most magnitude of a 65536-point zero-padded FFT."""
    n = 1 << 16
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n))
    f = np.fft.rfftfreq(n, 1 / SR)
    cands = fmin * 2 ** (np.arange(0, 1200 * np.log2(fmax / fmin), 5) / 1200)
    score = sum(np.interp(k * cands, f, spec) / k for k in range(1, 5))
    return 69 + 12 * np.log2(cands[int(np.argmax(score))] / 440)


def melody_pitches(x: np.ndarray, n_notes: int, fmin: float, fmax: float) -> np.ndarray:
    """Each note's pitch, from 0.1 s to 0.45 s after its onset."""
    return np.array([note_pitch(x[int((i * NOTE_S + 0.1) * SR): int((i * NOTE_S + 0.45) * SR)], fmin, fmax)
                     for i in range(n_notes)])


def note_accuracy(x: np.ndarray, notes, fmin: float, fmax: float) -> tuple[float, np.ndarray]:
    """Fraction of notes measured within half a semitone, and the errors (semitones)."""
    err = melody_pitches(x, len(notes), fmin, fmax) - np.asarray(notes)
    return float(np.mean(np.abs(err) < 0.5)), err


def through_codec(x: np.ndarray, path: Path = CODEC, **cfg) -> np.ndarray:
    """``x`` through encode/decode of the codec at ``path`` (``cfg``: config fields to override)."""
    from presto_cli.codec.base import load_codec

    codec = load_codec(path)
    for k, v in cfg.items():
        setattr(codec.cfg, k, v)
    with torch.no_grad():
        return codec.decode(codec.encode(torch.tensor(x, dtype=torch.float32)[None, None]))[0, 0].numpy()


def test_note_pitch_measures_the_clean_melodies():
    """The measure itself: every note of both clean melodies within 5 cents; a line shifted by a
    semitone is read as shifted."""
    acc, err = note_accuracy(melody(BASS_LINE), BASS_LINE, 35.0, 250.0)
    assert acc == 1.0 and np.abs(err).max() < 0.05, err
    acc, err = note_accuracy(melody(HIGH_LINE), HIGH_LINE, 250.0, 1000.0)
    assert acc == 1.0 and np.abs(err).max() < 0.05, err
    acc, err = note_accuracy(melody([n + 1 for n in BASS_LINE]), BASS_LINE, 35.0, 250.0)
    assert acc == 0.0 and np.allclose(err, 1.0, atol=0.05)


@pytest.mark.skipif(not CODEC.is_file(), reason="bundled codec not installed")
def test_codec_keeps_the_notes_of_a_melody_above_250_hz():
    """The control: the same line three octaves up (330-880 Hz) keeps its notes through the codec
    (measured: all 12 within 0.3 semitone)."""
    acc, err = note_accuracy(through_codec(melody(HIGH_LINE)), HIGH_LINE, 250.0, 1000.0)
    assert acc >= 0.9, np.round(err, 2)


@pytest.mark.skipif(not CODEC.is_file(), reason="bundled codec not installed")
def test_codec_keeps_the_notes_of_a_bass_line_through_its_phase_prior():
    """demo-codec (recipes/demo/autoencoder-bass.yaml: semitone filters E1-C5 from a 2048-point STFT,
    trained with the bass phase prior) keeps the bass line (measured: 16 of 16 notes, within 0.17
    semitone). With its bass phase prior off the same weights play the notes on the 15.6 Hz grid of
    the synthesis STFT or an octave off (measured: 3 of 16), as the codec before it did."""
    acc, err = note_accuracy(through_codec(melody(BASS_LINE)), BASS_LINE, 35.0, 250.0)
    assert acc >= 0.9, np.round(err, 2)
    acc, err = note_accuracy(through_codec(melody(BASS_LINE), bass_phase_prior=False), BASS_LINE, 35.0, 250.0)
    assert acc <= 0.5, np.round(err, 2)
