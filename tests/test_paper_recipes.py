"""The paper recipes (recipes/paper/) chain together at their real format: codec -> teacher ->
Presto-S / ASE / Presto-L -> Presto-LS -> `presto generate` writes 32 s of 44.1 kHz audio.

Only widths, depths, batch sizes, step counts and paths are overridden (and the teacher's bf16
copy inside Presto-S, which needs CUDA); every shape key (sample rate, channels, n_mels, hop,
clip length, patch, max_frames) is the recipe's own."""
import json
import math

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, presto

PAPER = ROOT / "recipes" / "paper"
# the only keys the chain test may override: sizes, steps, paths, device, the CUDA-only dtype
ALLOWED = {"model.width", "model.depth", "model.heads", "loss.disc_channels", "train.batch_size",
           "train.steps", "train.device", "distill.disc_blocks", "distill.teacher_dtype", "data.path",
           "data.codec", "data.teacher", "combine.layers"}


def _recipe(name):
    import yaml

    return yaml.safe_load((PAPER / name).read_text())


def test_paper_shapes_fit_together():
    """The paper codec keeps notes (mel-vocos) at 44.1 kHz, and the teacher's patching turns its
    frame rate into the paper VAE's ~21.5 tokens/s, with room for a whole 32 s clip."""
    ae, t = _recipe("autoencoder.yaml"), _recipe("teacher.yaml")
    m = ae["model"]
    assert m["kind"] == "mel-vocos" and m["sample_rate"] == 44100 == t["data"]["sample_rate"]
    assert t["model"]["in_channels"] == m["n_mels"] * m.get("audio_channels", 1)
    frame_rate = m["sample_rate"] / m["hop_length"]
    tokens_per_s = frame_rate / t["model"]["patch"]
    assert abs(tokens_per_s - 21.5) < 0.2, tokens_per_s
    frames = math.ceil(t["data"]["clip_seconds"] * frame_rate)
    assert t["data"]["clip_seconds"] == 32.0 and frames <= t["model"]["max_frames"]
    for name in ("presto-s.yaml", "ase.yaml"):
        assert _recipe(name)["data"]["clip_seconds"] == 32.0 and _recipe(name)["data"]["sample_rate"] == 44100
    for name in ("autoencoder.yaml", "teacher.yaml", "presto-s.yaml", "ase.yaml"):
        assert "Hardware:" in (PAPER / name).read_text()  # says what it needs (or that it is unmeasured)


def _tones(folder, n=2, seconds=3.0, sr=44100):
    """``n`` short 44.1 kHz tones with captions (each is zero-padded to the recipes' 32 s clips)."""
    folder.mkdir()
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        sf.write(folder / f"tone_{i}.wav", (0.3 * np.sin(2 * np.pi * 220 * 2 ** (i / 12) * t)).astype(np.float32), sr)
        (folder / f"tone_{i}.txt").write_text(f"a calm sine tone number {i}")
    presto("data", "prepare", folder)


def _stage(cmd, recipe, out, **over):
    assert set(over) <= ALLOWED, set(over) - ALLOWED
    presto(cmd, PAPER / recipe, *(f"{k}={v}" for k, v in over.items()), "--out", out)
    return out / "model.safetensors"


@pytest.mark.slow
def test_paper_chain_runs_end_to_end(tmp_path):
    from presto_cli.io import read_artefact_meta

    data = tmp_path / "tones"
    _tones(data)
    small = {"train.steps": 1, "train.batch_size": 2, "train.device": "cpu"}
    codec = _stage("pretrain", "autoencoder.yaml", tmp_path / "ae", **small, **{
        "data.path": data, "model.width": 8, "model.depth": 1, "loss.disc_channels": 4})
    cm = read_artefact_meta(codec)
    assert cm["model"]["kind"] == "mel-vocos" and cm["sample_rate"] == 44100 and cm["channels"] == 128
    assert {"chroma_similarity", "tonal_ratio", "comb_contrast_db"} <= set(cm["recon"])  # note checks ran

    paths = {"data.path": data, "data.codec": codec}
    teacher = _stage("pretrain", "teacher.yaml", tmp_path / "teacher", **small, **paths,
                     **{"model.width": 32, "model.depth": 2, "model.heads": 2})
    tm = read_artefact_meta(teacher)
    assert (tm["model"]["patch"], tm["model"]["in_channels"], tm["model"]["max_frames"]) == (4, 128, 2760)
    paths["data.teacher"] = teacher
    dist = {"distill.disc_blocks": "[1]", "distill.teacher_dtype": "fp32"}  # a 2-block teacher; bf16 needs CUDA
    s = _stage("distill-steps", "presto-s.yaml", tmp_path / "s", **small, **paths, **dist)
    ase = _stage("distill-layers", "ase.yaml", tmp_path / "ase", **small, **paths)
    layers = _stage("distill-layers", "presto-l.yaml", tmp_path / "l", **small, **paths)
    ls = _stage("combine", "presto-ls.yaml", tmp_path / "ls", **small, **paths, **dist,
                **{"combine.layers": layers})
    for path, kind in ((s, "presto-s"), (ase, "ase"), (layers, "presto-l"), (ls, "presto-ls")):
        assert read_artefact_meta(path)["kind"] == kind

    out = tmp_path / "paper.wav"
    presto("generate", "a calm tone", "--model", ls, "-o", out, "--seed", 1)
    x, sr = sf.read(str(out))
    side = json.loads(out.with_suffix(".wav.json").read_text())
    assert sr == 44100 and x.ndim == 1 and abs(len(x) / sr - 32.0) < 0.05, (sr, x.shape)
    assert np.isfinite(x).all() and np.abs(x).max() > 0
    assert side["kind"] == "presto-ls" and side["steps"] == 4 and side["channels"] == 1
