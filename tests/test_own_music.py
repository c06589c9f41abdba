"""Training on your own music (README "Train on your own music"): a folder of audio files with
caption sidecars -> `presto data prepare` -> autoencoder -> teacher -> Presto-S -> `presto generate`,
with the keys that must agree between stages filled in from the upstream artefacts."""
import json
import math

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, presto

TINY = ROOT / "recipes" / "tiny"
SR = 16000
CAPTIONS = {"drone": "a slow low drone", "bells": "bright high bells", "pulse": "a fast bass pulse",
            "chords": "soft mid chords"}


def _own_folder(root, seconds=1.5):
    """Four deterministic 'songs' (tones + a little seeded noise) with .txt caption sidecars; one
    is Ogg Opus."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    for (name, cap), f0 in zip(CAPTIONS.items(), (110.0, 880.0, 55.0, 330.0)):
        x = 0.3 * np.sin(2 * math.pi * f0 * t) * (1 + 0.5 * np.sin(2 * math.pi * 2 * t))
        x = (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
        if name == "chords":
            sf.write(root / f"{name}.opus", x, SR, format="OGG", subtype="OPUS")
        else:
            sf.write(root / f"{name}.wav", x, SR)
        (root / f"{name}.txt").write_text(cap + "\n")
    return root


def test_prepare_reads_opus_and_txt_sidecars(tmp_path):
    from presto_cli.data.folder import prepare_folder, read_manifest

    info = prepare_folder(_own_folder(tmp_path / "music"))
    assert info["kept"] == 4 and info["skipped"] == 0 and info["captions"]["sidecar"] == 4
    rows = {r["path"]: r for r in read_manifest(info["manifest"])}
    assert rows["chords.opus"]["caption"] == "soft mid chords"
    assert rows["chords.opus"]["duration"] == pytest.approx(1.5, abs=0.03)  # decoded, not just listed


def _codec_stub(path, channels=8, sample_rate=16000, hop=256):
    import torch

    from presto_cli.io import save_artefact

    save_artefact(path, {"w": torch.zeros(1)}, {"kind": "codec", "channels": channels,
                                                 "sample_rate": sample_rate, "hop": hop})
    return path


def test_teacher_keys_filled_from_the_codec_and_clip_length(tmp_path):
    from presto_cli.errors import PrestoError
    from presto_cli.recipes import load_recipe

    codec = _codec_stub(tmp_path / "codec.safetensors", channels=8, sample_rate=24000, hop=300)
    base = [f"data.path={tmp_path}", f"data.codec={codec}"]
    r = load_recipe(TINY / "teacher.yaml", base + ["data.clip_seconds=2.0"])
    # 2 s at 24 kHz with a hop of 300 samples: 160 latent frames; channels and rate from the codec
    assert (r.model.in_channels, r.model.max_frames, r.data.sample_rate) == (8, 160, 24000)
    r = load_recipe(TINY / "teacher.yaml", base + ["data.clip_seconds=1.01"])
    assert r.model.max_frames == 81  # 80.8 frames: rounded up, never cut short
    with pytest.raises(PrestoError, match="8 latent channels but model.in_channels=2"):
        load_recipe(TINY / "teacher.yaml", base + ["model.in_channels=2"])
    with pytest.raises(PrestoError, match="160 latent frames, more than model.max_frames=100"):
        load_recipe(TINY / "teacher.yaml", base + ["data.clip_seconds=2.0", "model.max_frames=100"])
    toy = load_recipe(TINY / "teacher.yaml")  # the toy mixture: 2-D points, one frame
    assert (toy.model.in_channels, toy.model.max_frames) == (2, 1)


@pytest.mark.slow
def test_own_music_end_to_end(tmp_path):
    music = _own_folder(tmp_path / "music")
    presto("data", "prepare", music)
    presto("pretrain", TINY / "autoencoder.yaml", f"data.path={music}", "train.steps=10", "--out", tmp_path / "ae")
    codec = tmp_path / "ae" / "model.safetensors"
    # no model.in_channels, no model.max_frames: filled from the codec and data.clip_seconds (1 s)
    presto("pretrain", TINY / "teacher.yaml", f"data.path={music}", f"data.codec={codec}", "train.steps=10",
           "train.batch_size=8", "--out", tmp_path / "teacher")
    teacher = tmp_path / "teacher" / "model.safetensors"
    resolved = (tmp_path / "teacher" / "recipe.yaml").read_text()
    assert "in_channels: 8" in resolved and "max_frames: 63" in resolved  # 16 kHz / hop 256 = 62.5 Hz
    # Presto-S with only data.teacher: the data and clip length come from the teacher artefact
    presto("distill-steps", TINY / "presto-s.yaml", f"data.teacher={teacher}", "train.steps=3",
           "train.batch_size=4", "--out", tmp_path / "s")
    for model, kind in ((teacher, "teacher"), (tmp_path / "s" / "model.safetensors", "presto-s")):
        out = tmp_path / f"{kind}.wav"
        presto("generate", CAPTIONS["drone"], "-o", out, "--model", model, "--seed", 1, "--steps", 2)
        x, sr = sf.read(str(out))
        meta = json.loads(out.with_suffix(".wav.json").read_text())
        # the default length is the training clip's: 63 frames x 256 samples
        assert sr == SR and len(x) == 63 * 256 and meta["kind"] == kind
        assert np.isfinite(x).all() and np.abs(x).max() > 0
