"""Synthetic corpus (presto data synth) and folder datasets (presto data prepare, AudioClipDataset)."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from presto_cli.data import synth
from presto_cli.data.folder import AudioClipDataset, prepare_folder, read_manifest, split_rows
from presto_cli.data.synth import vocab
from presto_cli.errors import PrestoError

SR = 16000
needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth not installed")


# ----------------------------------------------------------------------------------------------
# helpers: simple audio descriptors
# ----------------------------------------------------------------------------------------------
def _frames(x: np.ndarray, n: int = 512, hop: int = 256) -> np.ndarray:
    fr = np.lib.stride_tricks.sliding_window_view(x, n)[::hop] * np.hanning(n)
    return np.abs(np.fft.rfft(fr, axis=1))


def centroid(x: np.ndarray, sr: int) -> float:
    S = _frames(x)
    f = np.fft.rfftfreq(512, 1 / sr)
    return float((S * f).sum() / S.sum())


def percussiveness(x: np.ndarray) -> float:
    """Coefficient of variation of the spectral flux: high for drums, low for sustained pads."""
    L = np.log1p(10 * _frames(x))
    flux = np.maximum(L[1:] - L[:-1], 0).sum(1)
    return float(flux.std() / flux.mean())


# ----------------------------------------------------------------------------------------------
# synth: planning and composition maths (no rendering)
# ----------------------------------------------------------------------------------------------
def test_at_least_twelve_distinct_styles():
    assert len(synth.STYLES) >= 12
    names = [s.name for s in synth.STYLES]
    assert len(set(names)) == len(names)
    sigs = {(s.drums, tuple(p.programs for p in s.parts), s.swing, s.fx) for s in synth.STYLES}
    assert len(sigs) == len(synth.STYLES)  # no two styles share rhythm + instruments + mix
    assert sum(s.drums is None for s in synth.STYLES) >= 2 and sum(s.drums is not None for s in synth.STYLES) >= 8


def test_plan_is_a_function_of_seed_and_index():
    a = synth.plan_clip(3, 17)
    assert a == synth.plan_clip(3, 17)
    assert a != synth.plan_clip(4, 17)
    lab = a["labels"]
    st = synth.STYLE_BY_NAME[lab["style"]]
    assert st.tempo[0] <= lab["tempo"] <= st.tempo[1] and lab["mode"] in st.modes and lab["mood"] in st.moods
    assert set(lab) == {"style", "tempo", "key", "mode", "instruments", "mood"}


def test_chord_and_swing_maths():
    plan = synth.plan_clip(0, 0)  # jazz trio: 8th swing at 0.66
    plan = {**plan, "labels": {**plan["labels"], "key": "C", "mode": "major", "tempo": 120}, "progression": 0}
    c = synth.Composer(plan, 2.0)
    beat = 0.5
    assert c.t(0, 2, jitter=False) == pytest.approx(0.66 * beat)  # the swung offbeat 8th
    assert c.t(0, 4, jitter=False) == pytest.approx(beat)
    assert c.t(1, 0, jitter=False) == pytest.approx(4 * beat)
    assert c.chord(0) == [2, 5, 9, 12]  # ii7 in C major: D F A C (progression (1, 4, 0, 0))
    assert c.chord(1) == [7, 11, 14, 17]  # V7: G B D F
    assert c.chord(2, 3) == [0, 4, 7]
    minor = synth.Composer({**plan, "labels": {**plan["labels"], "mode": "minor"}}, 2.0)
    assert minor.chord(2, 3) == [0, 3, 7]
    pm = c.compose()
    assert max(n.end for i in pm.instruments for n in i.notes) <= 2.0 + 0.25 + 1e-9


def test_heldout_prompts_are_never_seen_in_training():
    n, frac = 280, 0.2
    held = synth.heldout_indices(5, n, frac)
    assert len(held) == round(n * frac)
    plans = [synth.plan_clip(5, i, heldout=i in held, use_heldout=True) for i in range(n)]
    train = [p for p in plans if p["split"] == "train"]
    test = [p for p in plans if p["split"] == "heldout"]
    train_caps = {p["caption"] for p in train}
    assert not any(p["caption"] in train_caps for p in test)
    train_combos = {(p["labels"]["style"], p["labels"]["mood"]) for p in train}
    assert not any((p["labels"]["style"], p["labels"]["mood"]) in train_combos for p in test)
    assert any(p["caption"].startswith("Music for a") for p in test)  # a held-out wording
    assert not any(p["caption"].startswith("Music for a") for p in train)


def test_missing_fluidsynth_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(PrestoError) as e:
        synth.synth_corpus(tmp_path / "c", n=1, seconds=1.0)
    assert "apt-get install fluidsynth fluid-soundfont-gm" in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_arguments(tmp_path):
    for kw in ({"n": 0, "seconds": 1.0}, {"n": 1, "seconds": 0.0}, {"n": 1, "seconds": 1.0, "heldout": 1.0}):
        with pytest.raises(PrestoError):
            synth.synth_corpus(tmp_path / "c", **kw)


# ----------------------------------------------------------------------------------------------
# synth: rendered corpus (one 24 x 4 s corpus shared by the tests below)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("fluidsynth") is None:
        pytest.skip("fluidsynth not installed")
    out = tmp_path_factory.mktemp("synth")
    info = synth.synth_corpus(out, n=24, seconds=4.0, seed=0, sample_rate=SR, workers=1)
    return out, info


@needs_fluidsynth
def test_corpus_clips_are_audible_and_exact(corpus):
    out, info = corpus
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == 24 == info["n"]
    assert {r["labels"]["style"] for r in rows} == {s.name for s in synth.STYLES}
    for r in rows:
        x, sr = sf.read(str(out / r["path"]), dtype="float64")
        assert sr == SR and x.ndim == 1 and len(x) == 4 * SR, r["path"]
        rms = 20 * math.log10(np.sqrt(np.mean(x**2)))
        assert rms > -26.0, (r["path"], rms)  # normalised to about -20 dBFS
        assert np.abs(x).max() < 0.99 and np.mean(np.abs(x) > 0.98) == 0  # not clipped
        assert np.abs(x[: SR // 2]).max() > 0.01  # sound from the start
        st = synth.STYLE_BY_NAME[r["labels"]["style"]]
        cap = r["caption"].lower()
        # the caption names the style (or says it in everyday words) and no other mood of the style
        said = [x.split("{mood}") for x in vocab.NAMES[st.name] + vocab.EVERYDAY[st.name]]
        assert any(all(part.strip(" ,").lower() in cap for part in x) for x in said), r["caption"]
        others = [w for m in st.moods if m != r["labels"]["mood"] for w in vocab.MOOD_WORDS[m]]
        assert not any(re.search(rf"(?<![a-z-]){re.escape(w)}(?![a-z-])", cap) for w in others), r["caption"]
        assert r["split"] == "train" and r["duration"] == 4.0 and isinstance(r["seed"], int)
    styles = json.loads((out / "styles.json").read_text())["styles"]
    assert [s["name"] for s in styles] == [s.name for s in synth.STYLES]
    assert all(len(s["caption"]) > 20 for s in styles)
    assert len({r["caption"] for r in rows}) == 24


@needs_fluidsynth
def test_styles_differ_measurably(corpus):
    out, _ = corpus
    feats: dict[str, list[tuple[float, float]]] = {}
    for r in read_manifest(out / "manifest.jsonl"):
        x, sr = sf.read(str(out / r["path"]), dtype="float64")
        feats.setdefault(r["labels"]["style"], []).append((centroid(x, sr), percussiveness(x)))
    cen = {k: np.mean([f[0] for f in v]) for k, v in feats.items()}
    perc = {k: np.mean([f[1] for f in v]) for k, v in feats.items()}
    # bright bitcrushed squares vs low-passed pads
    assert cen["chiptune"] > 2.0 * cen["ambient"], cen
    assert cen["chiptune"] > 1.5 * cen["lofi_hiphop"], cen
    # drum-driven styles are far more percussive than beatless ones
    for loud in ("techno", "rock", "drum_and_bass", "funk"):
        for soft in ("ambient", "string_quartet"):
            assert perc[loud] > 2.0 * perc[soft], (loud, soft, perc)


@needs_fluidsynth
def test_deterministic_for_a_seed_and_any_worker_count(corpus, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the render scratch goes,
    monkeypatch.setenv("TMPDIR", str(scratch))  # here and in the spawned workers
    out, _ = corpus
    # clip bytes depend on (seed, index) only: a 3-clip run with 2 workers repeats the first 3 clips
    synth.synth_corpus(tmp_path / "a", n=3, seconds=4.0, seed=0, workers=2)
    for i, r in enumerate(read_manifest(out / "manifest.jsonl")[:3]):
        assert (tmp_path / "a" / r["path"]).read_bytes() == (out / r["path"]).read_bytes(), i
    synth.synth_corpus(tmp_path / "b", n=1, seconds=4.0, seed=1, workers=1)
    r0 = read_manifest(out / "manifest.jsonl")[0]
    assert (tmp_path / "b" / r0["path"]).read_bytes() != (out / r0["path"]).read_bytes()
    assert list(scratch.iterdir()) == []  # the workers' MIDI scratch folders are removed


@needs_fluidsynth
def test_cli_synth_heldout_json(tmp_path):
    from presto_cli.commands.data import app

    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "c"), "--n", "4", "--seconds", "1",
                                   "--seed", "2", "--workers", "1", "--split-heldout", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["n"] == 4 and info["heldout"] == 2 and info["clips_per_s"] > 0
    rows = read_manifest(tmp_path / "c" / "manifest.jsonl")
    assert sorted(r["split"] for r in rows) == ["heldout", "heldout", "train", "train"]
    ds = AudioClipDataset(tmp_path / "c", clip_seconds=1.0, split="heldout")
    assert len(ds) == 2 and len(AudioClipDataset(tmp_path / "c", clip_seconds=1.0, split="train")) == 2


# ----------------------------------------------------------------------------------------------
# folder datasets
# ----------------------------------------------------------------------------------------------
def _tone(seconds: float, sr: int = SR, f: float = 330.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * f * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


@pytest.fixture()
def messy(tmp_path):
    root = tmp_path / "ds"
    (root / "sub").mkdir(parents=True)
    sf.write(str(root / "good_one.wav"), _tone(1.0), SR)
    sf.write(str(root / "sub" / "two.flac"), _tone(1.5, 22050), 22050)
    (root / "sub" / "two.txt").write_text("a calm  flute\nmelody\n")
    sf.write(str(root / "three.ogg"), np.stack([_tone(1.0), _tone(1.0)], 1), SR)
    (root / "three.json").write_text(json.dumps({"caption": "stereo organ", "labels": {"style": "x"}}))
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 20)
    (root / "empty.mp3").write_bytes(b"")
    sf.write(str(root / "silent.wav"), np.zeros(SR, np.float32), SR)
    sf.write(str(root / "short.wav"), _tone(0.1), SR)
    nan = _tone(1.0)
    nan[100] = np.nan
    sf.write(str(root / "nan.wav"), nan, SR, subtype="FLOAT")
    (root / "notes.md").write_text("not audio")
    (root / ".hidden.wav").write_bytes(b"junk")
    return root


def test_prepare_skips_bad_files_by_name(messy):
    info = prepare_folder(messy, min_seconds=0.5)
    probs = {p["path"]: p["reason"] for p in info["problems"]}
    assert set(probs) == {"corrupt.wav", "empty.mp3", "silent.wav", "short.wav", "nan.wav"}
    assert probs["corrupt.wav"].startswith("unreadable")
    assert probs["empty.mp3"].startswith("empty")
    assert probs["silent.wav"].startswith("silent")
    assert probs["short.wav"].startswith("too short")
    assert "NaN" in probs["nan.wav"]
    assert info["kept"] == 3 and info["skipped"] == 5
    rows = {r["path"]: r for r in read_manifest(messy / "manifest.jsonl")}
    assert set(rows) == {"good_one.wav", "sub/two.flac", "three.ogg"}
    assert rows["sub/two.flac"]["caption"] == "a calm flute melody"
    assert rows["sub/two.flac"]["sample_rate"] == 22050 and rows["sub/two.flac"]["duration"] == pytest.approx(1.5)
    assert rows["three.ogg"]["caption"] == "stereo organ" and rows["three.ogg"]["labels"] == {"style": "x"}
    assert rows["three.ogg"]["channels"] == 2
    assert rows["good_one.wav"]["caption"] == "good one"  # from the file name
    assert info["captions"] == {"manifest": 0, "sidecar": 2, "filename": 1}


def test_prepare_csv_captions_and_cli(messy, tmp_path):
    from presto_cli.commands.data import app

    csv = tmp_path / "caps.csv"
    csv.write_text('file,text\ngood_one.wav,"a bright, plucky tune"\nmissing.wav,ghost\n')
    out = tmp_path / "m.jsonl"
    res = CliRunner().invoke(app, ["prepare", str(messy), "--captions", str(csv), "--manifest", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["kept"] == 3 and info["manifest"] == str(out)
    assert {"path": "missing.wav", "reason": "listed in the manifest but missing"} in info["problems"]
    rows = {r["path"]: r for r in read_manifest(out)}
    assert rows["good_one.wav"]["caption"] == "a bright, plucky tune"
    assert rows["sub/two.flac"]["caption"] == "a calm flute melody"  # sidecar still used
    assert not (messy / "manifest.jsonl").exists()
    # the human summary names the skipped files on stderr
    res = CliRunner().invoke(app, ["prepare", str(messy)])
    assert res.exit_code == 0
    assert "corrupt.wav" in res.output and "silent.wav" in res.output and "empty.mp3" in res.output


def test_prepare_nothing_usable_is_an_error(tmp_path):
    from presto_cli.commands.data import app

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bad.wav").write_bytes(b"xx")
    res = CliRunner().invoke(app, ["prepare", str(tmp_path / "d")])
    assert res.exit_code != 0
    assert isinstance(res.exception, PrestoError) and "no usable audio" in str(res.exception)


def test_read_manifest_errors(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"path": "a.wav", "caption": "x"}\n{oops\n')
    with pytest.raises(PrestoError, match="line 2"):
        read_manifest(p)
    q = tmp_path / "m.csv"
    q.write_text("name,caption\na.wav,x\n")
    with pytest.raises(PrestoError, match="no 'path' column"):
        read_manifest(q)
    with pytest.raises(PrestoError, match="not found"):
        read_manifest(tmp_path / "nope.jsonl")


def _ramp_dataset(tmp_path, seconds=(2.0, 0.5), sr=SR):
    root = tmp_path / "ramp"
    root.mkdir()
    rows = []
    for i, s in enumerate(seconds):
        n = int(s * sr)
        sf.write(str(root / f"r{i}.wav"), (np.arange(n) / n * 0.9).astype(np.float32), sr, subtype="FLOAT")
        rows.append({"path": f"r{i}.wav", "caption": f"ramp {i}"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_clip_dataset_random_and_centre_crops(tmp_path):
    root = _ramp_dataset(tmp_path)
    ds = AudioClipDataset(root, sample_rate=SR, clip_seconds=1.0, split="all")
    full = ds.load(0)[0]
    T = SR
    starts = []
    for seed in range(6):
        item = ds.getitem(0, torch.Generator().manual_seed(seed))
        x = item["audio"]
        assert x.shape == (1, T) and item["caption"] == "ramp 0" and item["path"] == "r0.wav"
        s = int(torch.argmin((full - x[0, 0]).abs()))
        assert torch.equal(x[0], full[s:s + T])  # a contiguous window of the file
        again = ds.getitem(0, torch.Generator().manual_seed(seed))["audio"]
        assert torch.equal(x, again)  # the crop depends on the generator only
        starts.append(s)
    assert len(set(starts)) > 3
    centre = ds[0]["audio"]
    assert torch.equal(centre[0], full[(len(full) - T) // 2:(len(full) - T) // 2 + T])
    short = ds.getitem(1, torch.Generator().manual_seed(0))["audio"]  # 0.5 s file, zero-padded
    assert short.shape == (1, T) and torch.all(short[0, SR // 2:] == 0) and short[0, SR // 2 - 1] > 0.8


def test_clip_dataset_resamples(tmp_path):
    root = _ramp_dataset(tmp_path, seconds=(1.0,), sr=22050)
    ds = AudioClipDataset(root, sample_rate=SR, clip_seconds=0.5, split="all")
    assert ds.load(0).shape == (1, SR)


def test_splits_are_deterministic_and_disjoint():
    rows = [{"path": f"a{i}.wav", "caption": ""} for i in range(200)]
    rows += [{"path": "h.wav", "caption": "", "split": "heldout"}, {"path": "v.wav", "caption": "", "split": "val"}]
    tr, va = split_rows(rows, "train", 0.25), split_rows(rows, "val", 0.25)
    assert {r["path"] for r in tr}.isdisjoint({r["path"] for r in va})
    assert len(tr) + len(va) == 201 and "v.wav" in {r["path"] for r in va}
    assert 25 <= len(va) <= 80  # about a quarter
    assert split_rows(rows, "val", 0.25) == va
    assert [r["path"] for r in split_rows(rows, "heldout", 0.0)] == ["h.wav"]
    assert len(split_rows(rows, "train", 0.0)) == 200
    with pytest.raises(PrestoError):
        split_rows(rows, "bogus", 0.0)


def test_clip_dataset_errors(tmp_path):
    with pytest.raises(PrestoError, match="prepare"):
        AudioClipDataset(tmp_path)
    root = _ramp_dataset(tmp_path)
    with pytest.raises(PrestoError, match="empty"):
        AudioClipDataset(root, split="heldout")
