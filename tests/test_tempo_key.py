"""Known-answer tests of the tempo and key estimators and of their scoring (presto_cli/eval/tempo_key.py),
and `presto eval --metrics tempo,key` end to end on a tiny labelled folder."""
from __future__ import annotations

import json

import numpy as np
import pytest

from presto_cli.eval import tempo_key as TK

SR = TK.SAMPLE_RATE


def click_track(bpm: float, seconds: float = 8.0, seed: int = 0) -> np.ndarray:
    """A 10 ms decaying noise burst on every beat, over faint noise."""
    rng = np.random.default_rng(seed)
    x = 0.001 * rng.standard_normal(int(seconds * SR))
    n = int(0.01 * SR)
    burst = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.002 * SR))
    for t in np.arange(0.1, seconds - 0.02, 60.0 / bpm):
        i = int(round(t * SR))
        x[i:i + n] += 0.5 * burst[: len(x) - i]
    return x


def tone(midi: float, seconds: float, partials: int = 6) -> np.ndarray:
    """A harmonic tone (partial k at amplitude 1/k) with a short attack and an exponential decay."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, partials + 1) if k * f0 < SR / 2)
    env = np.minimum(t / 0.01, 1.0) * np.exp(-t / (0.8 * seconds))
    return x * env


def chord(midis, seconds: float) -> np.ndarray:
    return sum(tone(m, seconds) for m in midis) / len(midis)


def major_scale(tonic_midi: int) -> np.ndarray:
    """The major scale up an octave and back down, tonic notes held twice as long."""
    steps = [0, 2, 4, 5, 7, 9, 11, 12, 11, 9, 7, 5, 4, 2, 0]
    notes = [tone(tonic_midi + s, 0.8 if s in (0, 12) else 0.4) for s in steps]
    return 0.3 * np.concatenate(notes)


def minor_cadence(tonic_midi: int) -> np.ndarray:
    """i - iv - V - i in the harmonic minor (the V has the leading tone), bass an octave below."""
    t = tonic_midi
    chords = [(t - 12, t, t + 3, t + 7), (t - 7, t + 5, t + 8, t + 12), (t - 5, t + 7, t + 11, t + 14),
              (t - 12, t, t + 3, t + 7)]
    return 0.5 * np.concatenate([chord(c, 1.0) for c in chords])


# --------------------------------------------------------------------------------------------
# Tempo


@pytest.mark.parametrize("bpm", [90.0, 120.0, 150.0])
def test_click_track_tempo_within_4_percent(bpm):
    est = TK.estimate_tempo(click_track(bpm))
    assert est is not None and abs(est - bpm) <= 0.04 * bpm, (bpm, est)
    assert TK.tempo_match(est, bpm) == (True, True)


@pytest.mark.parametrize("bpm", [97.0, 133.0])
def test_tempo_between_whole_lags_is_interpolated(bpm):
    """At 125 frames/s these beats fall between whole lags (77.3, 56.4 frames): the parabolic peak
    refinement brings the estimate within 0.3 % (a whole lag alone is 0.4-0.7 % off)."""
    est = TK.estimate_tempo(click_track(bpm, 12.0))
    assert abs(est - bpm) <= 0.003 * bpm, est


def test_tempo_of_a_drum_pattern_is_the_beat_not_the_eighths():
    """Kick on beats, hi-hat on eighths at 110 BPM: the estimate is the beat (110), not 220."""
    rng = np.random.default_rng(1)
    x = 0.001 * rng.standard_normal(8 * SR)
    beat = 60.0 / 110
    kick = tone(36, 0.15, partials=2)
    hat = rng.standard_normal(int(0.02 * SR)) * np.exp(-np.arange(int(0.02 * SR)) / 60.0) * 0.2
    for i, t in enumerate(np.arange(0.05, 7.8, beat / 2)):
        j = int(t * SR)
        x[j:j + hat.size] += hat
        if i % 2 == 0:
            x[j:j + kick.size] += kick
    est = TK.estimate_tempo(x)
    assert abs(est - 110) <= 0.04 * 110, est


def test_tempo_resamples_other_rates():
    x = click_track(120.0)
    from presto_cli.audio import resample

    y = np.asarray(resample(x.astype(np.float32), SR, 22050))
    assert abs(TK.estimate_tempo(y, 22050) - 120) <= 0.04 * 120


def test_silence_has_no_tempo_or_key():
    z = np.zeros(4 * SR)
    assert TK.estimate_tempo(z) is None
    assert TK.estimate_key(z) is None


# --------------------------------------------------------------------------------------------
# Key


@pytest.mark.parametrize("tonic", [60, 63, 55])  # C4, Eb4, G3
def test_major_scale_key(tonic):
    assert TK.estimate_key(major_scale(tonic)) == (tonic % 12, "major")


@pytest.mark.parametrize("tonic", [57, 64])  # A3, E4
def test_minor_cadence_key(tonic):
    assert TK.estimate_key(minor_cadence(tonic)) == (tonic % 12, "minor")


def test_bass_only_key():
    """A bass line (41-200 Hz) in D minor alone: the long window resolves its notes."""
    notes = [38, 41, 45, 43, 38, 40, 41, 37, 38]  # D2 F2 A2 G2 D2 E2 F2 C#2 D2
    x = 0.3 * np.concatenate([tone(m, 0.5 if i not in (0, 8) else 1.0) for i, m in enumerate(notes)])
    assert TK.estimate_key(x) == (2, "minor")


def test_pitch_class_weights_put_a440_on_a():
    w = TK.pitch_class_weights(TK.KEY_N_FFT, TK.KEY_FMIN, TK.KEY_FMAX)
    f = np.fft.rfftfreq(TK.KEY_N_FFT, 1 / SR)
    for hz, pc in ((440.0, 9), (261.63, 0), (55.0, 9), (98.0, 7)):
        k = int(np.argmin(np.abs(f - hz)))
        assert np.argmax(w[k]) == pc and w[k, pc] > 0.75


def test_key_scores_of_a_profile_itself():
    """The K-K profile rotated to each tonic is its own best key."""
    for t in range(12):
        assert np.unravel_index(np.argmax(TK.key_scores(np.roll(TK.KK_MINOR, t))), (2, 12)) == (1, t)
        assert np.unravel_index(np.argmax(TK.key_scores(np.roll(TK.KK_MAJOR, t))), (2, 12)) == (0, t)


# --------------------------------------------------------------------------------------------
# Scoring and what was asked


def test_tempo_match_tolerance_and_octaves():
    assert TK.tempo_match(124.0, 120) == (True, True)  # 3.3 %
    assert TK.tempo_match(125.0, 120) == (False, False)  # 4.2 %
    assert TK.tempo_match(240.0, 120) == (False, True)
    assert TK.tempo_match(61.0, 120) == (False, True)
    assert TK.tempo_match(180.0, 120) == (False, False)  # 3/2 is not an octave
    assert TK.tempo_match(None, 120) == (False, False)


@pytest.mark.parametrize("est,asked,rel", [
    ((0, "major"), (0, "major"), "exact"),
    ((9, "minor"), (0, "major"), "relative"),   # A minor for C major
    ((0, "major"), (9, "minor"), "relative"),   # C major for A minor
    ((4, "minor"), (7, "major"), "relative"),   # E minor for G major
    ((4, "major"), (1, "minor"), "relative"),   # E major for C# minor
    ((0, "minor"), (0, "major"), "parallel"),
    ((9, "major"), (9, "minor"), "parallel"),
    ((7, "major"), (0, "major"), "fifth"),      # G for C: dominant
    ((5, "major"), (0, "major"), "fifth"),      # F for C: subdominant
    ((4, "minor"), (9, "minor"), "fifth"),
    ((2, "major"), (0, "major"), "other"),
    ((4, "major"), (0, "major"), "other"),      # +4 semitones, the codec's error
    ((4, "minor"), (0, "major"), "other"),
    ((3, "minor"), (0, "major"), "other"),      # a relative the wrong way round
    ((7, "minor"), (0, "major"), "other"),
    (None, (0, "major"), "other"),
])
def test_key_relation(est, asked, rel):
    assert TK.key_relation(est, asked) == rel


@pytest.mark.parametrize("text,key", [
    ("Music for a dark moment: techno at 127 BPM in E minor, played on synth bass", (4, "minor")),
    ("Cinematic piece in B flat major at 80 BPM.", (10, "major")),
    ("D flat major, 72 BPM, calm", (1, "major")),
    ("funk in F# minor", (6, "minor")),
    ("a tune in Eb maj", (3, "major")),
    ("a ballad in a minor", (9, "minor")),
    ("key of a major", (9, "major")),
    ("a major hit with a minor role", None),  # English "a", not a key
    ("ambient pads, no key named", None),
    ("G-minor waltz", (7, "minor")),
])
def test_parse_key(text, key):
    assert TK.parse_key(text) == key


def test_parse_bpm_and_asked_values():
    assert TK.parse_bpm("genre: house. tempo: 124 BPM.") == 124.0
    assert TK.parse_bpm("71 bpm D minor string quartet") == 71.0
    assert TK.parse_bpm("a slow drone") is None
    assert TK.parse_bpm("9000 BPM") is None
    # labels win over the prompt's words; the prompt fills what labels lack
    a = TK.asked_values({"tempo": 140, "key": "Ab", "mode": "minor"}, "Jazz at 90 BPM in C major")
    assert a == {"tempo": 140.0, "key": (8, "minor")}
    assert TK.asked_values({"bpm": 104, "key": "E minor"}, None) == {"tempo": 104.0, "key": (4, "minor")}
    assert TK.asked_values(None, "Jazz at 90 BPM in C major") == {"tempo": 90.0, "key": (0, "major")}
    assert TK.asked_values({}, "calm piano") == {"tempo": None, "key": None}


def test_score_clips_fractions():
    """Hand-made clips with known answers and asked values: the fractions count each category."""
    clips = [click_track(120.0, 6.0), click_track(90.0, 6.0), major_scale(60), minor_cadence(57), major_scale(60)]
    asked = [{"tempo": 120.0, "key": None}, {"tempo": 45.0, "key": None},
             {"tempo": None, "key": (0, "major")}, {"tempo": None, "key": (0, "major")},
             {"tempo": None, "key": (0, "minor")}]
    sc, per = TK.score_clips(lambda i: clips[i], asked, ["tempo", "key"])
    assert sc["tempo_n"] == 2 and sc["tempo_acc1"] == 0.5 and sc["tempo_acc2"] == 1.0
    assert sc["key_n"] == 3
    assert sc["key_exact"] == pytest.approx(1 / 3) and sc["key_relative"] == pytest.approx(1 / 3)
    assert sc["key_parallel"] == pytest.approx(1 / 3) and sc["key_fifth"] == 0.0
    assert sc["key_mirex"] == pytest.approx((1 + 0.3 + 0.2) / 3)
    assert per[3]["key_est"] == "A minor" and per[3]["key_relation"] == "relative"
    assert per[0]["tempo_asked"] == 120.0 and per[2].get("tempo_est") is None


# --------------------------------------------------------------------------------------------
# presto eval --metrics tempo,key


def _write_folder(root, items):
    from presto_cli.audio import write_audio

    (root / "audio").mkdir(parents=True)
    rows = []
    for name, x, labels, caption in items:
        write_audio(root / "audio" / f"{name}.wav", np.asarray(x, np.float32)[None], SR)
        rows.append({"path": f"audio/{name}.wav", "caption": caption, "labels": labels})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_eval_cli_tempo_key_with_ceiling(tmp_path):
    import subprocess
    import sys

    pad = lambda x: np.concatenate([x, np.zeros(max(0, 6 * SR - len(x)))])[: 6 * SR]  # noqa: E731
    mix = lambda a, b: 0.5 * pad(a) + 0.5 * pad(b)  # noqa: E731
    real = [("r0", mix(click_track(120.0, 6.0), major_scale(60)), {"tempo": 120, "key": "C", "mode": "major"}, "x"),
            ("r1", mix(click_track(90.0, 6.0), minor_cadence(57)), {"tempo": 90, "key": "A", "mode": "minor"}, "y")]
    _write_folder(tmp_path / "real", real)
    # generated: asked by the prompt's words only (a sidecar-less folder with captions)
    gen = [("g0", mix(click_track(150.0, 6.0), major_scale(60)), {}, "house at 150 BPM in C major"),
           ("g1", mix(click_track(120.0, 6.0), minor_cadence(57)), {}, "funk at 60 BPM in C major"),
           ("g2", pad(major_scale(60)), {}, "calm piano")]
    _write_folder(tmp_path / "gen", gen)
    out = tmp_path / "ev.json"
    r = subprocess.run([sys.executable, "-m", "presto_cli", "eval", "--gen", str(tmp_path / "gen"),
                        "--ref", str(tmp_path / "real"), "--metrics", "tempo,key", "--embedder", "mel",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    sc = doc["systems"][0]["scores"]
    assert sc["tempo_n"] == 2 and sc["tempo_acc1"] == 0.5 and sc["tempo_acc2"] == 1.0
    assert sc["key_n"] == 2 and sc["key_exact"] == 0.5 and sc["key_relative"] == 0.5
    ceil = doc["tempo_key_ceiling"]
    assert ceil["n"] == 2 and ceil["scores"]["tempo_acc1"] == 1.0 and ceil["scores"]["key_exact"] == 1.0
    clips = {c["file"].rsplit("/", 1)[-1]: c for c in doc["systems"][0]["clips"]}
    assert clips["g1.wav"]["key_est"] == "A minor" and "tempo_est" not in clips["g2.wav"]
    assert "real (real)" in r.stdout and "tempo ±4%" in r.stdout
