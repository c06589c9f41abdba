"""The weight-free music-feature embedder (``presto eval --embedder music``): feature known answers,
and the known-answer test of issue 11: real clips must score a clearly better FAD than the same clips
with their notes erased, and a steady drone with the old outputs' spectrum must score worst, under
the music embedder, while a pitch-blind variant of it (contrast and onset groups only) must NOT
separate the note-erased clips from the real ones: the pitch groups are what hears the notes."""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from presto_cli.errors import PrestoError
from presto_cli.eval import music_features as F
from presto_cli.eval.embedders import MusicFeatureEmbedder, build_embedder
from presto_cli.eval.metrics import fad_from_embeddings, mmd

sys.path.insert(0, str(Path(__file__).parent))
from music_clips import comb_contrast_db, comb_drone, note_erase, tonal_change  # noqa: E402

SR = 16000
needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth not installed")


def tone(freqs, seconds: float = 2.0, amp: float = 0.3) -> np.ndarray:
    """A sequence of pure tones, each lasting ``seconds / len(freqs)``."""
    n = int(seconds * SR) // len(freqs)
    t = np.arange(n) / SR
    return np.concatenate([amp * np.sin(2 * math.pi * f * t) for f in freqs])


# ------------------------------------------------------------------------------ feature answers

def test_chroma_names_the_pitch_class_and_tonnetz_matches_harte():
    c = F.chroma(F.power_spectrum(tone([440.0])))
    assert (c.argmax(axis=1)[2:-2] == 9).all()  # A (C = 0), every inner frame
    c = F.chroma(F.power_spectrum(tone([261.63])))
    assert (c.argmax(axis=1)[2:-2] == 0).all()  # C4
    # a pure C chroma: tonnetz = the pitch-class-0 column (sin 0, cos 0, ...) with radii 1, 1, 0.5
    onehot = np.zeros((1, 12))
    onehot[0, 0] = 1.0
    assert np.allclose(F.tonnetz(onehot)[0], [0, 1, 0, 1, 0, 0.5])
    # G (7 semitones up): the fifths angle 7 * 7π/6 = 49π/6 ≡ π/6
    onehot = np.roll(onehot, 7, axis=1)
    assert np.allclose(F.tonnetz(onehot)[0][:2], [math.sin(math.pi / 6), math.cos(math.pi / 6)])


def test_chroma_change_is_zero_for_a_held_note_and_large_for_changing_notes():
    held = F.chroma(F.power_spectrum(tone([440.0], seconds=4.0)))
    moving = F.chroma(F.power_spectrum(tone([261.63, 369.99] * 4, seconds=4.0)))  # C, F# every 0.5 s
    assert F.chroma_change(held, 16)[2:-18].max() < 0.01
    # at a 0.25 s lag half the frame pairs straddle a C -> F# change (cosine distance ~1)
    assert 0.35 < F.chroma_change(moving, 8).mean() < 0.65


def test_onset_strength_and_rhythm_see_a_click_train():
    x = np.zeros(4 * SR)
    x[:: SR // 4] = 1.0  # a click every 0.25 s
    noise = np.random.default_rng(0).normal(scale=0.01, size=4 * SR)
    env_c, env_n = F.onset_strength(F.power_spectrum(x + noise)), F.onset_strength(F.power_spectrum(noise))
    assert env_c[3:].max() > 10 * env_n[3:].max()  # frames 0-2: the rise from the zero padding before
    # the clip, an onset in both
    acf_c, acf_n = F.onset_acf_bands(env_c), F.onset_acf_bands(env_n)
    assert acf_c[:2].max() > 0.3 and abs(acf_n).max() < 0.15  # periodic at 0.25 s vs none


def test_windows_and_embedder_interface():
    assert F.frame_windows(40) == [(0, 40)]
    assert F.frame_windows(126) == [(0, 62), (31, 93), (62, 124), (64, 126)]  # 4 s: last window at the end
    e = build_embedder("music")
    assert e.name == "music-features" and e.dim == sum(F.GROUPS.values()) == 59
    clips = [torch.from_numpy(tone([440.0, 330.0])).float()[None], torch.from_numpy(tone([220.0])).float()[None]]
    a, b = e.embed_audio(clips), MusicFeatureEmbedder().embed_audio(clips)
    assert a.shape == (2, 59) and np.array_equal(a, b)  # deterministic
    blind = MusicFeatureEmbedder(["contrast", "onset"])
    assert blind.dim == 18 and blind.version != e.version and "contrast" in blind.name
    with pytest.raises(PrestoError):
        MusicFeatureEmbedder(["chroma", "pitch"])


# ------------------------------------------------------------------------------ known answer

@pytest.fixture(scope="module")
def clip_sets(tmp_path_factory):
    """48 clips of the synthetic corpus (seed 0, 4 s; the first 24 are test_data's corpus): the
    first 24 are the evaluated real set, the last 24 the reference; plus the 24 evaluated clips
    note-erased and as steady drones."""
    if shutil.which("fluidsynth") is None:
        pytest.skip("fluidsynth not installed")
    from presto_cli.data import synth
    from presto_cli.data.folder import read_manifest

    out = tmp_path_factory.mktemp("music_synth")
    synth.synth_corpus(out, n=48, seconds=4.0, seed=0, sample_rate=SR, workers=1)
    clips = [sf.read(str(out / r["path"]), dtype="float64")[0] for r in read_manifest(out / "manifest.jsonl")]
    real, ref = clips[:24], clips[24:]
    return {"real": real, "ref": ref, "erased": [note_erase(x, i) for i, x in enumerate(real)],
            "drone": [comb_drone(x, i) for i, x in enumerate(real)]}


def _embed(embedder, clips):
    return embedder.embed_audio([torch.from_numpy(x).float()[None] for x in clips])


@needs_fluidsynth
def test_the_stand_ins_reproduce_the_old_codec_failure(clip_sets):
    """Measured: comb contrast real 0.6 dB, erased 38 dB, drone 56 dB (the old codec: +19.5 dB);
    tonal change real 0.35, erased 0.035, drone 0.002 (the old models' outputs: 0.087)."""
    comb = {k: np.mean([comb_contrast_db(x) for x in v]) for k, v in clip_sets.items()}
    change = {k: np.mean([tonal_change(x) for x in v]) for k, v in clip_sets.items()}
    assert comb["real"] < 3 and comb["erased"] > 15 and comb["drone"] > 15, comb
    assert change["real"] > 0.2 and change["erased"] < 0.1 and change["drone"] < 0.02, change


@pytest.mark.slow
@needs_fluidsynth
@pytest.mark.parametrize("groups, hears_notes", [(None, True), (("contrast", "onset"), False)],
                         ids=["music-features", "pitch-blind"])
def test_music_fad_orders_real_erased_drone(clip_sets, groups, hears_notes):
    """FAD against 24 other real clips. Measured (music-features): real 40.0, note-erased 191.1,
    drone 615.2, so erased/real = 4.8, drone/erased = 3.2 and the note-erased set sits 26 % of the
    way from real to drone. Pitch-blind (contrast + onset): 2.6, 7.0, 389.8: erased/real = 2.65 and
    1 % of the way: it hears the drone (no onsets, a fixed spectrum) but not the missing notes.
    Margins: erased/real >= 3 and >= 15 % of the way for an embedder that hears notes; < 5 % for
    the pitch-blind one. Under the pitch-blind variant the first branch fails on both counts."""
    e = MusicFeatureEmbedder(groups)
    ref = _embed(e, clip_sets["ref"])
    fad = {k: fad_from_embeddings(_embed(e, clip_sets[k]), ref) for k in ("real", "erased", "drone")}
    assert fad["drone"] > 2 * fad["erased"] and fad["erased"] > fad["real"], fad  # drone worst under both
    way = (fad["erased"] - fad["real"]) / (fad["drone"] - fad["real"])
    if hears_notes:
        assert fad["erased"] > 3 * fad["real"] and way > 0.15, (fad, way)
        c = {k: mmd(_embed(e, clip_sets[k]), ref)["mmd"] for k in ("real", "erased", "drone")}
        assert c["real"] < 0.1 * c["erased"] and c["erased"] < 0.6 * c["drone"], c  # CMMD: -19.6, 575.6, 1249.1
    else:
        assert way < 0.05, (fad, way)


@pytest.mark.slow
@needs_fluidsynth
def test_presto_clap_hears_the_drone_but_barely_the_missing_notes(clip_sets):
    """The bundled in-domain CLAP (demo-clap), same sets. Measured: FAD real 0.443, note-erased
    0.529 (1.19x), drone 1.153 (2.6x). It separates the drone; the note-erased clips sit only 12 %
    of the way to it (the issue's finding: the in-domain CLAP did not notice the missing notes).
    Asserted: the drone at least 1.5x real; erased not asserted beyond being reported here."""
    ckpt = Path(__file__).resolve().parents[1] / "presto_cli" / "assets" / "demo-clap.safetensors"
    if not ckpt.is_file():
        pytest.skip("the bundled demo-clap is not installed")
    e = build_embedder("presto-clap", clap_ckpt=str(ckpt), device="cpu")
    ref = _embed(e, clip_sets["ref"])
    real, drone = (fad_from_embeddings(_embed(e, clip_sets[k]), ref) for k in ("real", "drone"))
    assert drone > 1.5 * real, (real, drone)


# ------------------------------------------------------------------------------ through the CLI

def test_eval_cli_music_embedder_and_mmd_conventions(tmp_path):
    """`presto eval --embedder music`: the embedder and the MMD convention are named in the JSON
    and in the printed table; `--mmd-bandwidth median` switches the convention and says so; a bad
    bandwidth is one clear line, exit 1."""
    import json

    import typer
    from typer.testing import CliRunner

    from presto_cli.audio import write_audio
    from presto_cli.commands.eval import eval_cmd

    app = typer.Typer()
    app.command("eval")(eval_cmd)
    app.command("noop")(lambda: None)  # two commands, so typer keeps the "eval" name
    for name, base in (("ref", 220.0), ("gen", 233.0)):
        (tmp_path / name).mkdir()
        for i in range(6):
            x = tone([base * 2 ** (k / 12) for k in (0, 4, 7, 12 - i % 3)], seconds=3.0)
            write_audio(tmp_path / name / f"{i}.wav", torch.from_numpy(x).float()[None], SR)
    args = ["eval", "--gen", str(tmp_path / "gen"), "--ref", str(tmp_path / "ref"), "--embedder", "music",
            "--metrics", "fad,mmd", "--no-cache"]
    r = CliRunner().invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(next(line for line in r.output.splitlines() if line.startswith("{")))
    assert doc["embedder"]["name"] == "music-features" and doc["embedder"]["dim"] == 59
    assert doc["conditions"]["mmd"].startswith("CMMD convention") and "σ = 10" in doc["conditions"]["mmd"]
    sc = doc["systems"][0]["scores"]
    assert sc["mmd_bandwidth"] == 10.0 and sc["mmd_scale"] == 1000.0 and sc["fad"] > 0
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0 and "CMMD convention" in table.output and "music-features" in table.output
    med = CliRunner().invoke(app, args + ["--mmd-bandwidth", "median", "--json"])
    doc_m = json.loads(next(line for line in med.output.splitlines() if line.startswith("{")))
    assert "median" in doc_m["conditions"]["mmd"] and doc_m["systems"][0]["scores"]["mmd_bandwidth"] != 10.0
    bad = CliRunner().invoke(app, args + ["--mmd-bandwidth", "wide"])
    assert bad.exit_code == 1 and "unknown MMD bandwidth 'wide'" in str(bad.exception or bad.output)
