"""The log-mel codec (kind "mel-vocos") and the music-keeping measures of codec/quality.py."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from presto_cli.codec import build_codec
from presto_cli.codec.quality import (chroma_peak_share, chroma_similarity, comb_contrast_db, music_report,
                                      tonal_change)
from presto_cli.codec.export import export_codec
from presto_cli.codec.losses import CodecLossConfig, reconstruction_losses

SR = 16000
TINY_MEL = dict(kind="mel-vocos", sample_rate=SR, n_fft=512, hop_length=128, n_mels=64, width=48,
                depth=2, mlp_ratio=2.0)


def mel_codec(seed: int = 0, **over):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_codec({**TINY_MEL, **over})


def note_sequence(pitches_hz, note_seconds: float = 0.25, harmonics: int = 4) -> np.ndarray:
    """Consecutive notes with a few harmonics and a decaying envelope (float32 [T])."""
    n = int(note_seconds * SR)
    t = np.arange(n) / SR
    env = np.exp(-3.0 * t)
    out = [env * sum(0.2 / h * np.sin(2 * np.pi * f * h * t) for h in range(1, harmonics + 1))
           for f in pitches_hz]
    return np.concatenate(out).astype(np.float32)


C_MAJOR = [261.63, 329.63, 392.0, 523.25]
F_SHARP = [369.99, 466.16, 554.37, 739.99]


# ---------------------------------------------------------------------------------------------
# The encoder is a fixed, pitch-keeping transform


def test_mel_latents_put_a_tone_in_its_mel_bin_and_fit_normalisation_centres_them():
    codec = mel_codec()
    t = torch.arange(SR) / SR
    x = (0.3 * torch.sin(2 * math.pi * 1000.0 * t))[None, None]
    logmel = codec.log_mel(x)
    assert logmel.shape == (1, 64, SR // 128)
    # the loudest bin is the filter whose centre is nearest 1000 Hz
    fb = codec.mel_fb
    freqs = torch.linspace(0, SR / 2, fb.shape[1])
    centres = (fb * freqs).sum(1) / fb.sum(1).clamp_min(1e-9)
    expected = int(torch.argmin((centres - 1000.0).abs()))
    assert abs(int(logmel[0, :, 10:-10].mean(-1).argmax()) - expected) <= 1
    # before fitting, encode is the raw log-mel; after, each bin is centred on the fitting clips
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(4, 1, SR // 2, generator=g) * torch.linspace(0.01, 0.5, 4)[:, None, None]
    codec.fit_normalization([clips[:2], clips[2:]])
    z = codec.encode_dist(clips)[0]
    assert z.mean(dim=(0, 2)).abs().max() < 1e-4
    assert torch.allclose(codec.mel_mean, codec.log_mel(clips).mean(dim=(0, 2)), atol=1e-5)
    # decode adds the mean back: decoding the centred latents equals vocoding the raw log-mel
    with torch.no_grad():
        assert torch.allclose(codec.decode_raw(z), codec.vocode(codec.log_mel(clips)), atol=1e-5)


def test_mel_codec_has_no_posterior_and_no_kl_term():
    codec = mel_codec()
    x = torch.from_numpy(note_sequence(C_MAJOR))[None, None]
    loss, parts, recon = reconstruction_losses(codec, x, None, CodecLossConfig(kl_weight=1.0))
    assert "kl" not in parts and recon.shape[-1] == codec.pad_audio(x).shape[-1]
    assert torch.isclose(loss, parts["mrstft"] + parts["mel"])


def test_untrained_vocoder_with_the_steady_phase_prior_plays_a_tone_not_a_buzz():
    """With the head's residuals at zero, the vocoder is the filterbank pseudo-inverse plus the
    steady-sinusoid phase: a tone at a bin centre must come back at its frequency with no
    frame-rate comb; without the phase prior (zero phase every frame) it is a click train."""
    k = 21  # bin centre 21 * 16000 / 512 = 656.25 Hz: 5.25 frame rates, on no comb tooth
    f = k * SR / 512
    x = torch.sin(2 * math.pi * f * torch.arange(SR) / SR)[None, None] * 0.3
    out = {}
    for prior in (True, False):
        codec = mel_codec(phase_prior=prior)
        with torch.no_grad():
            codec.head.weight.zero_()
            codec.head.bias.zero_()
            y = codec.decode(codec.encode(x))[0, 0].numpy()
        spec = np.abs(np.fft.rfft(y[2000:-2000] * np.hanning(len(y) - 4000)))
        freqs = np.fft.rfftfreq(len(y) - 4000, 1 / SR)
        near = np.abs(freqs - f) < 50.0  # the tone's own bin and its neighbours
        out[prior] = (float((spec[near] ** 2).sum() / (spec ** 2).sum()),
                      comb_contrast_db(y, SR, codec.frame_rate))
    # measured: 91% of the energy within 50 Hz of the tone, comb +1.5 dB; without the prior +100 dB
    assert out[True][0] > 0.85, out
    assert out[True][1] < 3.0 and out[False][1] > 15.0, out


def test_vocoder_learns_the_notes_of_a_melody():
    """80 Adam steps on an 8-note melody move the reconstruction's chroma toward the original's
    (measured: 0.655 -> 0.73) and keep the frame-rate comb low (measured 1.8 -> 3-7 dB)."""
    x_np = np.concatenate([note_sequence(C_MAJOR), note_sequence(F_SHARP)])
    x = torch.from_numpy(x_np)[None, None]
    codec = mel_codec(phase_prior=True)
    cfg = CodecLossConfig(stft_sizes=[512, 256, 128], mel_sizes=[512])

    def measure():
        with torch.no_grad():
            y = codec.decode(codec.encode(x))[0, 0, :len(x_np)].numpy()
        return chroma_similarity(x_np, y, SR), comb_contrast_db(y, SR, codec.frame_rate)

    sim0, _ = measure()
    opt = torch.optim.Adam(codec.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        loss, _, _ = reconstruction_losses(codec, x, None, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    sim1, comb1 = measure()
    assert sim1 > sim0 + 0.04, (sim0, sim1)
    assert comb1 < 9.0, comb1
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


# ---------------------------------------------------------------------------------------------
# The measures, on signals whose answer is known


def test_comb_contrast_flags_a_frame_rate_buzz_and_not_noise():
    rate = 62.5
    buzz = np.zeros(4 * SR, np.float32)
    buzz[::int(SR / rate)] = 1.0  # a click every frame: harmonics on every multiple of 62.5 Hz
    noise = np.random.default_rng(0).standard_normal(4 * SR).astype(np.float32)
    assert comb_contrast_db(buzz, SR, rate) > 20.0
    assert abs(comb_contrast_db(noise, SR, rate)) < 1.0
    melody = np.concatenate([note_sequence(C_MAJOR), note_sequence(F_SHARP)] * 2)
    assert abs(comb_contrast_db(melody, SR, rate)) < 6.0


def test_chroma_and_tonal_change_tell_a_melody_from_a_drone():
    melody = np.concatenate([note_sequence(C_MAJOR, 0.5), note_sequence(F_SHARP, 0.5)])
    t = np.arange(len(melody)) / SR
    drone = (0.2 * np.sin(2 * np.pi * 261.63 * t) + 0.1 * np.sin(2 * np.pi * 392.0 * t)).astype(np.float32)
    assert chroma_similarity(melody, melody, SR) == pytest.approx(1.0, abs=1e-6)
    assert tonal_change(drone, SR) < 0.05
    assert tonal_change(melody, SR) > 0.3
    rep = music_report([melody, melody[::-1].copy()], [drone, drone], SR, 62.5)
    assert rep["tonal_ratio"] < 0.15
    assert rep["chroma_similarity"] < 0.9
    same = music_report([melody, drone], [melody, drone], SR, 62.5)
    assert same["chroma_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert same["tonal_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert same["chroma_similarity_unrelated"] < 0.9  # melody vs drone


def test_decoding_diverged_latents_gives_finite_audio_not_nan(monkeypatch):
    """A sampler run with too few steps can return latents in the hundreds (Heun, 2 steps from
    sigma 80); exp() of such a log-mel overflowed into NaN audio. Clipped, the audio stays finite,
    and real audio (its log-mel below the clip) decodes exactly as without the clip."""
    import presto_cli.codec.mel as mel

    codec = mel_codec().eval()
    with torch.no_grad():
        huge = 200.0 * torch.randn(1, codec.channels, 20, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(codec.decode(huge)).all()
        lm = codec.log_mel(torch.tensor(note_sequence(C_MAJOR, 0.25))[None, None])
        assert float(lm.max()) < mel.LOG_MEL_MAX - 1
        clipped = codec.vocode(lm)
        monkeypatch.setattr(mel, "LOG_MEL_MAX", float("inf"))
        assert torch.equal(codec.vocode(lm), clipped)
        assert not torch.isfinite(codec.decode(huge)).all()  # the failure the clip prevents


def test_chroma_peak_share_tells_pitches_from_noise():
    t = np.arange(SR * 2) / SR
    tone = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)  # one pitch class
    triad = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (261.63, 329.63, 392.0)).astype(np.float32)
    noise = (0.1 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    assert chroma_peak_share(tone, SR) > 0.9
    assert 0.25 < chroma_peak_share(triad, SR) < 0.45  # three equal pitch classes: about 1/3
    assert chroma_peak_share(noise, SR) < 0.16  # spread over all twelve (1/12 at the least)


def test_export_reports_music_measures_and_draws_the_png(tmp_path):
    codec = mel_codec()
    x = torch.from_numpy(np.concatenate([note_sequence(C_MAJOR), note_sequence(F_SHARP)]))
    clips = torch.stack([x, x.flip(0)])[:, None]
    report = export_codec(codec, tmp_path / "codec.safetensors", clips, clips, eval_split="train",
                          png_clips=2)
    rec = json.loads((tmp_path / "recon.json").read_text())["recon"]
    for key in ("chroma_similarity", "chroma_similarity_unrelated", "tonal_ratio",
                "comb_contrast_db", "comb_contrast_db_original", "log_mel_l1", "mrstft"):
        assert math.isfinite(rec[key]), key
    assert rec["chroma_similarity"] == pytest.approx(report["recon"]["chroma_similarity"])
    png = (tmp_path / "recon.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the fitted per-bin mean travels with the artefact
    from presto_cli.codec import load_codec

    loaded = load_codec(tmp_path / "codec.safetensors")
    assert torch.allclose(loaded.mel_mean, codec.mel_mean)
    with torch.no_grad():
        assert torch.allclose(loaded.encode(clips), codec.encode(clips), atol=1e-5)


def test_spectrogram_grid_draws_notes_that_change_and_a_drone_that_does_not(tmp_path):
    import matplotlib.pyplot as plt

    from presto_cli.codec.quality import spectrogram_grid

    melody = np.concatenate([note_sequence(C_MAJOR, 0.5), note_sequence(F_SHARP, 0.5)])
    t = np.arange(len(melody)) / SR
    drone = (0.2 * np.sin(2 * np.pi * 261.63 * t)).astype(np.float32)
    spectrogram_grid(tmp_path / "g.png", [("melody", melody, SR), ("drone", drone, SR)], "x", cols=1)
    img = plt.imread(tmp_path / "g.png")[..., :3].mean(-1)  # rows, columns (grey)
    top, bottom = img[: img.shape[0] // 2], img[img.shape[0] // 2:]

    def change_over_time(panel):  # mean absolute difference between neighbouring columns
        return float(np.abs(np.diff(panel, axis=1)).mean())

    assert change_over_time(top) > 2 * change_over_time(bottom)


# ---------------------------------------------------------------------------------------------
# The bass band (issue 30 item 4): bass notes a semitone apart reach different channels

BASS = dict(kind="mel-vocos", sample_rate=SR, n_fft=1024, hop_length=256, n_mels=40, width=32, depth=1,
            mlp_ratio=2.0, bass_n_fft=4096, bass_notes=[28, 72])


def _tone(hz: float, seconds: float = 2.0, amp: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amp * torch.sin(2 * math.pi * hz * t)).float()[None, None]


def test_bass_band_puts_bass_notes_a_semitone_apart_in_their_own_channels():
    from presto_cli.dsp import midi_hz

    codec = mel_codec(**BASS)
    assert codec.channels == 45 + 40 and codec.cfg.n_bass == 45
    peaks = {}
    for note in (33, 34, 40, 41, 52, 53, 71):  # A1 55 Hz .. B4 494 Hz
        lm = codec.log_mel(_tone(float(midi_hz(note))))[0, :, 20:-20].mean(-1)
        peaks[note] = int(lm.argmax())
        assert peaks[note] == note - 28, (note, peaks[note])  # channel k = MIDI note 28 + k
        # the bass STFT is scaled to the synthesis window: a sinusoid peaks near A·sum(w)/2 of the
        # 1024-point window (log 0.3·512/2 = 4.34; wide filters sum a few bins: measured 4.4-5.0), not 4x
        # higher (+1.39) as the raw 4096 STFT gives
        assert abs(float(lm.max()) - math.log(0.3 * 512 / 2)) < 0.8, (note, float(lm.max()))
    # the plain 128-bin mel at n_fft 1024 cannot tell these semitones apart
    plain = mel_codec(**{**BASS, "bass_n_fft": 0, "n_mels": 128})
    same = [int(plain.log_mel(_tone(float(midi_hz(n))))[0, :, 20:-20].mean(-1).argmax()) for n in (40, 41)]
    assert same[0] == same[1], same
    # a tone above the band lands in the mel part, after the band's channels
    lm = codec.log_mel(_tone(2000.0))[0, :, 20:-20].mean(-1)
    assert int(lm.argmax()) >= 45


def test_bass_band_codec_decodes_and_its_artefact_keeps_the_band(tmp_path):
    from presto_cli.codec import load_codec

    codec = mel_codec(**BASS)
    x = torch.from_numpy(note_sequence([55.0, 82.41, 110.0, 164.81]))[None, None]
    loss, _, recon = reconstruction_losses(codec, x, None, CodecLossConfig(stft_sizes=[512, 256],
                                                                        mel_sizes=[512]))
    assert torch.isfinite(loss) and recon.shape[-1] == codec.pad_audio(x).shape[-1]
    export_codec(codec, tmp_path / "bass.safetensors", x, x, eval_split="train", png_clips=1)
    loaded = load_codec(tmp_path / "bass.safetensors")
    assert loaded.cfg.bass_n_fft == 4096 and list(loaded.cfg.bass_notes) == [28, 72]
    with torch.no_grad():
        z = loaded.encode(x)
        assert z.shape[1] == 85 and torch.allclose(z, codec.encode(x), atol=1e-5)
        assert torch.isfinite(loaded.decode(z)).all()


@pytest.mark.parametrize("over, needle", [
    (dict(bass_n_fft=512), "bass_n_fft"),          # shorter than n_fft
    (dict(bass_n_fft=4000), "bass_n_fft"),         # not a multiple of the hop
    (dict(bass_notes=[60, 40]), "bass_notes"),     # highest first
    (dict(bass_notes=[28]), "bass_notes"),         # one note
    (dict(f_min=30.0), "f_min"),                   # the mel part starts where the band ends
    (dict(bass_notes=[28, 120]), "f_max"),         # top note above Nyquist
])
def test_bad_bass_band_settings_are_refused_with_the_key_named(over, needle):
    from presto_cli.errors import PrestoError

    with pytest.raises(PrestoError, match=needle):
        mel_codec(**{**BASS, **over})


def _peak_offset_semitones(y: np.ndarray, f0: float) -> float:
    """Where the strongest peak within half an octave of ``f0`` lies, in semitones from ``f0``."""
    seg = y[4000:-4000]
    n = 1 << 18
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    band = (freqs > f0 / 1.5) & (freqs < f0 * 1.5)
    return float(12 * np.log2(freqs[band][np.argmax(spec[band])] / f0))


def test_bass_phase_prior_plays_a_bass_note_at_its_pitch_not_on_the_stft_grid():
    """With the head's residuals at zero, a steady phase prior makes every synthesis bin advance at
    its own centre, so a bass note comes back on the 1024-point grid (15.6 Hz steps: G2 98 Hz and
    C3 130.8 Hz come back at 93.75 and 125 Hz, -0.77 and -0.79 semitone; measured). The bass phase
    prior advances the bins the band covers at the loudest band filter's pitch (measured: -0.07)."""
    for hz in (98.0, 130.81):
        off = {}
        for bass_phase in (True, False):
            codec = mel_codec(**{**BASS, "n_fft": 1024, "bass_n_fft": 2048, "bass_phase_prior": bass_phase})
            with torch.no_grad():
                codec.head.weight.zero_()
                codec.head.bias.zero_()
                off[bass_phase] = _peak_offset_semitones(codec.decode(codec.encode(_tone(hz)))[0, 0].numpy(), hz)
        assert abs(off[True]) < 0.2 and off[False] < -0.6, (hz, off)


def test_bass_phase_prior_is_the_steady_prior_where_the_band_is_silent():
    codec = mel_codec(**BASS)
    silent = torch.full((2, codec.cfg.n_bass, 30), math.log(codec.cfg.log_floor))
    assert torch.allclose(codec.pitch_phase(silent), codec.steady_phase(30, "cpu")[None].expand(2, -1, -1),
                          atol=1e-4)
    # a loud note moves only the bins its filter lies on, to its own pitch
    loud = silent.clone()
    loud[:, 40 - 28] = 2.0  # E2, 82.4 Hz
    f = codec.bin_frequencies(loud)
    centre = torch.arange(f.shape[1]) * SR / codec.n_fft
    moved = (f[0, :, 5] - centre).abs() > 1e-3
    assert moved.any() and torch.allclose(f[0, moved, 5], torch.tensor(82.41), atol=0.05)
    assert int(moved.nonzero().max()) * SR / codec.n_fft < 82.41 + 2 * SR / codec.n_fft
