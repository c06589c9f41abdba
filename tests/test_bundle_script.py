"""benchmarks/bundle.py's model bundling: the last trained phase of a model is the one bundled (so the
demo's demo-s is presto-s-head, the phase onto the 2-D-head teacher), floating weights go to fp16, and
``--only`` leaves every other bundled file alone."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from presto_cli.io import load_artefact, save_artefact

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bundle(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("presto_bundle", ROOT / "benchmarks" / "bundle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "ASSETS", tmp_path / "assets")  # never the package's own assets
    return mod


def _run(runs: Path, name: str, value: float, kind: str) -> None:
    (runs / name).mkdir(parents=True, exist_ok=True)
    save_artefact(runs / name / "model.safetensors",
                  {"w": torch.full((3,), value, dtype=torch.float32), "step": torch.tensor([7])},
                  {"kind": kind, "name": name})


def test_last_phase_wins_and_only_limits_what_is_written(bundle, tmp_path):
    runs = tmp_path / "runs"
    # every Presto-S phase the demo trains, in order, each with its own weight value; presto-s-bass3 last
    phases = ["presto-s", "presto-s-regress", "presto-s-dmd", "presto-s-bsim", "presto-s-bsim2", "presto-s-head",
              "presto-s-tp", "presto-s-bass", "presto-s-bass-reg", "presto-s-bass2", "presto-s-bass3"]
    assert bundle.LATER["presto-s"] == phases[1:]
    for i, ph in enumerate(phases):
        _run(runs, ph, 1.0 + i, "presto-s")
    _run(runs, "teacher", 9.0, "teacher")

    done = bundle.bundle_models(runs, only=["presto-s"])
    assert done == ["demo-s"]
    assets = tmp_path / "assets"
    assert not (assets / "demo-teacher.safetensors").exists()  # --only: the teacher is not touched
    tensors, meta = load_artefact(assets / "demo-s.safetensors")
    assert meta["bundled_as"] == "demo-s"
    assert meta["source_run"] == str(runs / "presto-s-bass3")
    assert tensors["w"].dtype == torch.float16 and torch.all(tensors["w"] == 11.0)
    assert tensors["step"].dtype == torch.int64  # integer buffers keep their type

    # a missing later phase falls back to the one before it
    (runs / "presto-s-bass3" / "model.safetensors").unlink()
    bundle.bundle_models(runs, only=["presto-s"])
    tensors, meta = load_artefact(assets / "demo-s.safetensors")
    assert meta["source_run"] == str(runs / "presto-s-bass2") and torch.all(tensors["w"] == 10.0)

    # without --only every model present is bundled
    assert bundle.bundle_models(runs) == ["demo-teacher", "demo-s"]
    assert torch.all(load_artefact(assets / "demo-teacher.safetensors")[0]["w"] == 9.0)


def test_keep_captions_keeps_the_bundled_bank_and_its_source(bundle, tmp_path):
    """--keep-captions: models fine-tuned on another corpus are bundled without replacing the caption
    bank the chain was trained on (its captions and its recorded source stay); without it the
    bundled teacher's own bank replaces it."""
    from presto_cli.text.caption_bank import CaptionBank

    assets = tmp_path / "assets"
    assets.mkdir()
    g = torch.Generator().manual_seed(0)
    old = CaptionBank(["a calm piano", "a fast techno loop"], torch.randn(2, 8, generator=g), "minilm")
    old.save(assets / "demo-captions.safetensors", source="data/synth")
    new = CaptionBank(["jazz | smoky | fast"], torch.randn(1, 8, generator=g), "minilm")
    t, info = new.to_artefact()
    save_artefact(assets / "demo-teacher.safetensors", {"dit.w": torch.ones(2), **t},
                  {"kind": "teacher", "caption_bank": info})
    bundle.share_captions(assets, tmp_path / "other-corpus", keep=True)
    kept_t, kept_m = load_artefact(assets / "demo-captions.safetensors")
    assert kept_m["caption_bank"]["captions"] == old.captions and kept_m["source"] == "data/synth"
    tt, tm = load_artefact(assets / "demo-teacher.safetensors")
    assert "caption_bank" not in tm and not any(k.startswith("caption_bank.") for k in tt)  # stored once
    # without keep: the bundled teacher's bank (re-add it) replaces the old one
    save_artefact(assets / "demo-teacher.safetensors", {"dit.w": torch.ones(2), **t},
                  {"kind": "teacher", "caption_bank": info})
    bundle.share_captions(assets, tmp_path / "other-corpus")
    m = load_artefact(assets / "demo-captions.safetensors")[1]
    assert m["caption_bank"]["captions"] == new.captions and m["source"] == str(tmp_path / "other-corpus")


def _model_with_range(path: Path, hi, kind: str = "teacher"):
    """A bundled model file carrying a training-latent range (hi ``hi``, lo [-1, 0.5], 12 clips);
    returns the range."""
    from presto_cli.diffusion.latent_range import LatentRange

    rng = LatentRange(torch.tensor(hi), torch.tensor([-1.0, 0.5]), 12, "data/synth")
    t, info = rng.to_artefact()
    save_artefact(path, {"dit.w": torch.ones(2), **t}, {"kind": kind, "latent_range": info})
    return rng


def test_latent_range_is_stored_once_from_the_bundled_teacher(bundle, tmp_path):
    """share_latent_range: the bundled teacher's training-latent range goes to
    demo-latent-range.safetensors and every bundled model is rewritten without its copy."""
    from presto_cli.diffusion.latent_range import LatentRange

    assets = tmp_path / "assets"
    assets.mkdir()
    rng = _model_with_range(assets / "demo-teacher.safetensors", [1.0, 2.0])
    _model_with_range(assets / "demo-s.safetensors", [1.0, 2.0], "presto-s")
    bundle.share_latent_range(assets, tmp_path / "unused-corpus")
    shared = LatentRange.load(assets / "demo-latent-range.safetensors")
    assert torch.equal(shared.hi, rng.hi) and torch.equal(shared.lo, rng.lo) and shared.n == 12
    for f in ("demo-teacher.safetensors", "demo-s.safetensors"):
        tt, tm = load_artefact(assets / f)
        assert "latent_range" not in tm and not any(k.startswith("latent_range.") for k in tt)
        assert torch.equal(tt["dit.w"], torch.ones(2))


def test_rebundling_leaves_unchanged_shared_files_as_they_were(bundle, tmp_path):
    """The caption bank and the latent range are rewritten only when their content changes: a second
    bundling with the same content keeps the file's bytes (no new ``created`` stamp in git)."""
    from presto_cli.diffusion.latent_range import LatentRange

    assets = tmp_path / "assets"
    assets.mkdir()
    _model_with_range(assets / "demo-teacher.safetensors", [1.0, 2.0])
    bundle.share_latent_range(assets, tmp_path / "unused-corpus")
    f = assets / "demo-latent-range.safetensors"
    meta = load_artefact(f)[1]
    meta["created"] = "2000-01-01T00:00:00Z"  # an old stamp: any rewrite would replace it
    save_artefact(f, load_artefact(f)[0], meta)
    before = f.read_bytes()
    _model_with_range(assets / "demo-teacher.safetensors", [1.0, 2.0])  # the same range again
    bundle.share_latent_range(assets, tmp_path / "unused-corpus")
    assert f.read_bytes() == before and not list(assets.glob("*.new.*"))
    # a changed range is written
    _model_with_range(assets / "demo-teacher.safetensors", [1.0, 3.0])
    bundle.share_latent_range(assets, tmp_path / "unused-corpus")
    assert torch.equal(LatentRange.load(f).hi, torch.tensor([1.0, 3.0]))
    assert load_artefact(f)[1]["created"] != "2000-01-01T00:00:00Z"
