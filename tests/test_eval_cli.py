"""`presto eval` and `presto bench` through the real typer app (CliRunner)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from presto_cli.audio import write_audio

SR = 16000
runner = CliRunner()


def _app():
    from presto_cli.cli import app

    return app


def _tone(freq: float, seconds: float = 0.5, amp: float = 0.4) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amp * torch.sin(2 * math.pi * freq * t)).float()[None]


def _folder(root: Path, freqs, prompts=None, corrupt: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(freqs):
        p = root / f"clip{i:03d}.wav"
        write_audio(p, _tone(f), SR)
        if prompts:
            (root / f"clip{i:03d}.wav.json").write_text(json.dumps({"prompt": prompts[i], "seed": i}))
    if corrupt:
        (root / "zz_broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    return root


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """`presto eval` keeps a run directory under ./runs/eval: run each test in its own folder."""
    monkeypatch.chdir(tmp_path)


def _split(output: str):
    """CliRunner mixes stderr into output in some typer versions: return (json doc, rest)."""
    for line in output.splitlines():
        if line.startswith("{"):
            return json.loads(line), output
    raise AssertionError(f"no JSON document in output:\n{output}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("evalcli")
    rng = np.random.default_rng(0)
    ref = _folder(base / "ref", 300 + 200 * rng.random(16))
    near = _folder(base / "near", 300 + 200 * rng.random(12), corrupt=True)
    far = _folder(base / "far", 2500 + 200 * rng.random(12))
    return base, ref, near, far


def test_eval_two_folders_corrupt_file_reported_and_skipped(folders):
    base, ref, near, far = folders
    cache = base / "cache"
    r = runner.invoke(_app(), ["eval", "--gen", str(near), "--gen", str(far), "--ref", str(ref),
                               "--metrics", "fad,mmd,prdc", "--embedder", "mel", "--json",
                               "--cache", str(cache), "--out", str(base / "res.json")])
    assert r.exit_code == 0, r.output
    doc, text = _split(r.output)
    assert "zz_broken.wav" in text  # reported on stderr
    s_near, s_far = doc["systems"]
    assert s_near["n"] == 12 and s_near["n_files"] == 13
    assert [Path(x["file"]).name for x in s_near["skipped"]] == ["zz_broken.wav"]
    assert s_far["skipped"] == []
    # the set drawn like the reference scores better on every metric than the far one
    assert s_near["scores"]["fad"] < s_far["scores"]["fad"]
    assert s_near["scores"]["mmd2"] < s_far["scores"]["mmd2"]
    assert s_near["scores"]["coverage"] > s_far["scores"]["coverage"] == 0.0
    # conditions are recorded
    assert doc["embedder"]["name"] == "mel" and doc["embedder"]["version"].startswith("mel-v1")
    assert doc["reference"]["n"] == 16 and doc["reference"]["path"] == str(ref)
    assert s_near["clip_seconds"]["mean"] == pytest.approx(0.5)
    assert s_near["scores"]["mmd_bandwidth"] > 0
    assert json.loads((base / "res.json").read_text())["systems"][0]["scores"] == s_near["scores"]


def test_eval_set_against_itself_and_stats_roundtrip(folders):
    base, ref, near, _ = folders
    stats = base / "ref_stats.npz"
    r = runner.invoke(_app(), ["eval", "--gen", str(ref), "--ref", str(ref), "--metrics", "fad,mmd,prdc", "--embedder", "mel",
                               "--json", "--no-cache", "--save-ref-stats", str(stats)])
    assert r.exit_code == 0, r.output
    sc = _split(r.output)[0]["systems"][0]["scores"]
    assert sc["fad"] == pytest.approx(0.0, abs=1e-6)
    assert sc["precision"] == 1.0 and sc["recall"] == 1.0 and sc["coverage"] == 1.0
    r1 = runner.invoke(_app(), ["eval", "--gen", str(near), "--ref", str(ref), "--metrics", "fad", "--embedder", "mel",
                                "--json", "--no-cache"])
    r2 = runner.invoke(_app(), ["eval", "--gen", str(near), "--ref", str(stats), "--metrics", "fad,mmd", "--embedder", "mel",
                                "--json", "--no-cache"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r2.output
    d1, d2 = _split(r1.output)[0], _split(r2.output)[0]
    assert d2["systems"][0]["scores"]["fad"] == pytest.approx(d1["systems"][0]["scores"]["fad"], rel=1e-9)
    assert d2["reference"]["kind"] == "stats"


def test_eval_table_and_errors(folders):
    base, ref, near, _ = folders
    r = runner.invoke(_app(), ["eval", "--gen", str(near), "--ref", str(ref), "--metrics", "fad",
                               "--embedder", "mel", "--no-cache", "--out", str(base / "t.json")])
    assert r.exit_code == 0, r.output
    assert "FAD" in r.output and "near" in r.output and "mel" in r.output
    from presto_cli.cli import app as real_app  # error lines need the real app's error handling

    bad = runner.invoke(real_app, ["eval", "--gen", str(near), "--ref", str(ref), "--metrics", "fid"])
    assert bad.exit_code == 1 and "unknown metric 'fid'" in bad.output
    noref = runner.invoke(real_app, ["eval", "--gen", str(near), "--metrics", "fad", "--embedder", "clap-audio"])
    assert noref.exit_code == 1 and "--ref" in noref.output
    notext = runner.invoke(real_app, ["eval", "--gen", str(near), "--metrics", "clap", "--embedder", "mel"])
    assert notext.exit_code == 1 and "text tower" in notext.output


def test_eval_yaml_config(folders, tmp_path):
    base, ref, near, _ = folders
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"metrics: fad,prdc\ngen: [{near}]\nref: {ref}\nk: 3\nno_cache: true\nembedder: mel\n")
    r = runner.invoke(_app(), ["eval", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    doc = _split(r.output)[0]
    assert doc["metrics"] == ["fad", "prdc"] and doc["conditions"]["k"] == 3
    (tmp_path / "bad.yaml").write_text("metrix: fad\n")
    from presto_cli.cli import app as real_app

    r = runner.invoke(real_app, ["eval", str(tmp_path / "bad.yaml")])
    assert r.exit_code == 1 and "did you mean 'metrics'" in r.output


# ------------------------------------------------------------------------------------------ models

def _tiny_model(path: Path, kind: str, sampler: str, steps: int) -> Path:
    """A randomly initialised generator artefact (tiny DiT + tiny codec, hash text encoder)."""
    import dataclasses

    from presto_cli.codec import build_codec, codec_state_for_embedding
    from presto_cli.diffusion.edm import EDMConfig
    from presto_cli.io import prefixed, save_artefact
    from presto_cli.models.dit import DiT, DiTConfig

    torch.manual_seed(0)
    codec = build_codec({"kind": "stft-vae", "sample_rate": 8000, "n_fft": 128, "hop_length": 32,
                         "downsample": 2, "latent_channels": 4, "width": 16, "depth": 1, "frame_depth": 1})
    dcfg = DiTConfig(in_channels=4, width=64, depth=4, heads=2, text_dim=384, max_frames=64)
    tensors = prefixed(DiT(dcfg).state_dict(), "dit")
    ct, cm = codec_state_for_embedding(codec)
    tensors.update(ct)
    meta = {"kind": kind, "model": dataclasses.asdict(dcfg), "edm": dataclasses.asdict(EDMConfig()),
            "text": "hash", "sampler": {"name": sampler, "steps": steps, "cfg": 1.0, "rho": 7.0},
            "frames": 64, "max_frames": 64, "codec": cm}
    save_artefact(path, tensors, meta)
    return path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"teacher": _tiny_model(d / "teacher.safetensors", "teacher", "heun", 8),
            "student": _tiny_model(d / "student.safetensors", "presto-s", "fewstep", 1)}


def test_bench_teacher_first_and_ratios(tiny_models):
    r = runner.invoke(_app(), ["bench", "--model", str(tiny_models["student"]), "--model",
                               str(tiny_models["teacher"]), "--device", "cpu", "--repeats", "3", "--json"])
    assert r.exit_code == 0, r.output
    doc, _ = _split(r.output)
    teacher, student = doc["rows"]
    assert teacher["kind"] == "teacher" and student["kind"] == "presto-s" and doc["base"]["is_teacher"]
    assert teacher["nfe"] == 15 and student["nfe"] == 1  # Heun 2N-1 at 8 steps; one-step generator
    assert student["nfe_ratio_vs_base"] == pytest.approx(15.0) and teacher["speedup_vs_base"] == 1.0
    assert student["speedup_vs_base"] == pytest.approx(teacher["latency_s"] / student["latency_s"])
    assert doc["interleaved"] and teacher["repeats"] == student["repeats"] == 3
    for row in (teacher, student):
        assert row["audio_seconds"] == pytest.approx(64 * 64 / 8000)
        assert row["rtf"] == pytest.approx(row["audio_seconds"] / row["latency_s"])
        assert row["latency_min_s"] <= row["latency_s"] and row["decode_s"] > 0
        # a fresh process holding torch and a model: tens of MB at least, never the 0 an
        # in-process RSS rise reads once memory freed by an earlier model is reused
        assert row["peak_mem_mb"] > 50 and row["load_mem_mb"] <= row["peak_mem_mb"]
        lo, hi = row["latency_iqr_s"]
        assert lo <= row["latency_s"] <= hi
    t = runner.invoke(_app(), ["bench", "--model", str(tiny_models["teacher"]), "--device", "cpu",
                               "--repeats", "1", "--steps", "2", "--sampler", "euler", "--sampler", "heun"])
    assert t.exit_code == 0, t.output
    assert "euler" in t.output and "heun" in t.output and "speed-up" in t.output


def test_bench_default_skips_missing_demo_models(monkeypatch):
    from presto_cli import pipeline
    from presto_cli.cli import app as real_app

    monkeypatch.setattr(pipeline, "ASSETS", Path("/nonexistent-presto-assets"))
    r = runner.invoke(real_app, ["bench", "--device", "cpu"])
    assert r.exit_code == 1 and "no model to benchmark" in r.output and "skipping demo-teacher" in r.output


def test_eval_generates_with_models(tiny_models, folders, tmp_path):
    _, ref, _, _ = folders
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"tune {i}", "seed": 10 + i, "name": f"p{i}"})
                                 for i in range(3)) + "\n")
    audio = tmp_path / "gen"
    r = runner.invoke(_app(), ["eval", "--model", str(tiny_models["teacher"]), "--model",
                               str(tiny_models["student"]), "--ref", str(ref), "--prompts", str(prompts),
                               "--n", "4", "--steps", "2", "--metrics", "fad,mmd", "--device", "cpu",
                               "--audio-dir", str(audio), "--no-cache", "--json"])
    assert r.exit_code == 0, r.output
    doc, _ = _split(r.output)
    t, s = doc["systems"]
    assert t["source"] == "model" and t["kind"] == "teacher" and s["kind"] == "presto-s"
    assert t["steps"] == 2 and t["sampler"] == "heun" and t["nfe"] == 3 and s["nfe"] == 2
    assert t["n"] == 4 and t["seeds"] == [10, 11, 12, 13]  # N > prompts: cycled, seeds stay distinct
    assert sorted(p.name for p in (audio / "teacher").glob("*.wav")) == ["p0.wav", "p0_r1.wav", "p1.wav", "p2.wav"]
    side = json.loads((audio / "teacher" / "p1.wav.json").read_text())
    assert side["prompt"] == "tune 1" and side["seed"] == 11
    assert math.isfinite(t["scores"]["fad"]) and math.isfinite(s["scores"]["mmd2"])


def test_module_bytes_counts_shared_tensors_once():
    import torch

    from presto_cli.eval.bench import module_bytes

    a = torch.nn.Linear(10, 4)  # 44 fp32 values
    b = torch.nn.Sequential(a, torch.nn.BatchNorm1d(4))  # + 8 parameters, 2 x 4 buffers + counter
    assert module_bytes(a) == 44 * 4
    assert module_bytes(a, b) == module_bytes(b) == (44 + 8 + 8) * 4 + 8  # a inside b once; int64 counter
    assert module_bytes(None) == 0


# ------------------------------------------------------------------------------ bundled defaults

@pytest.fixture()
def fake_assets(tiny_models, folders, tmp_path, monkeypatch):
    """A bundled-assets folder holding the tiny models under the demo names, 60 held-out prompts in
    4 styles (15 each, grouped as in a real file), and mel reference statistics."""
    import shutil

    from presto_cli import pipeline
    from presto_cli.eval.embedders import build_embedder
    from presto_cli.eval.evaluate import load_reference, save_reference_stats

    a = tmp_path / "assets"
    a.mkdir()
    shutil.copy(tiny_models["teacher"], a / "demo-teacher.safetensors")
    shutil.copy(tiny_models["student"], a / "demo-s.safetensors")
    (a / "default.txt").write_text("demo-s\n")
    styles = ["funk", "jazz", "rock", "ambient"]
    rows = [{"prompt": f"{st} tune {i}", "seed": 100 * j + i, "name": f"heldout_{15 * j + i:04d}", "style": st}
            for j, st in enumerate(styles) for i in range(15)]
    (a / "heldout_prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    emb = build_embedder("mel")
    save_reference_stats(a / "ref_heldout_mel.npz", load_reference(str(folders[1]), emb, None, print), emb)
    monkeypatch.setattr(pipeline, "ASSETS", a)
    monkeypatch.chdir(tmp_path)
    return a


def test_eval_default_is_default_model_vs_teacher_in_a_run_dir(fake_assets, tmp_path):
    """No models, folders, prompts or reference named: the default model and the teacher on 48
    bundled prompts taken in turn from each style, an estimate first, everything kept in a run dir."""
    r = runner.invoke(_app(), ["eval", "--embedder", "mel", "--steps", "2", "--device", "cpu", "--no-cache", "--json"])
    assert r.exit_code == 0, r.output
    doc, text = _split(r.output)
    assert [s["name"] for s in doc["systems"]] == ["demo-s", "demo-teacher"]
    assert "estimate: about" in text and "demo-teacher" in text.split("estimate:")[1]
    run = Path(text.split("run directory: ")[1].split()[0])
    assert run.parent == Path("runs/eval") and (tmp_path / run / "report.html").is_file()
    assert json.loads((tmp_path / run / "results.json").read_text())["systems"][0]["n"] == 48
    for s in doc["systems"]:
        styles = [c["style"] for c in s["clips"]]
        assert s["n"] == 48 and sorted(styles.count(x) for x in set(styles)) == [12, 12, 12, 12]
        assert len(list((tmp_path / run / "audio" / s["name"]).glob("*.wav"))) == 48  # the audio is kept
    assert doc["reference"]["path"] == str(fake_assets / "ref_heldout_mel.npz")


def test_eval_model_flag_replaces_only_the_models(fake_assets, tmp_path):
    r = runner.invoke(_app(), ["eval", "-m", "demo-teacher", "--embedder", "mel", "--n", "3", "--steps", "1", "--metrics", "fad,mmd",
                               "--device", "cpu", "--no-cache", "--json", "--out", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    doc, _ = _split(r.output)
    assert [s["name"] for s in doc["systems"]] == ["demo-teacher"]  # not demo-s
    assert doc["prompts"] == str(fake_assets / "heldout_prompts.jsonl")  # bundled prompts and reference kept
    assert doc["reference"]["path"] == str(fake_assets / "ref_heldout_mel.npz")
    assert [c["style"] for c in doc["systems"][0]["clips"]] == ["funk", "jazz", "rock"]


def test_eval_reports_every_missing_input_at_once(fake_assets, tmp_path):
    from presto_cli.cli import app as real_app

    r = runner.invoke(real_app, ["eval", "-m", str(tmp_path / "nope.safetensors"), "--gen", str(tmp_path / "nodir"),
                                 "--prompts", str(tmp_path / "p.jsonl"), "--embedder", "clap-audio",
                                 "--metrics", "fad"])
    assert r.exit_code == 1
    line = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "missing 4 inputs" in line[0]
    for part in ("nope.safetensors", "nodir", "p.jsonl", "pass --ref"):
        assert part in line[0]


def test_eval_help_names_every_default_path():
    from presto_cli.cli import app as real_app

    r = runner.invoke(real_app, ["eval", "--help"], terminal_width=400)
    text = " ".join(r.output.split())
    for name in ("heldout_prompts.jsonl", "ref_heldout_EMBEDDER.npz", "styles.json", "demo-clap.safetensors",
                 "default.txt", "runs/eval/"):
        assert name in text, name
