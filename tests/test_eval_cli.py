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
    try:
        from presto_cli.cli import app

        return app
    except ImportError:  # the lead's cli.py not there yet: a local app wrapping the commands
        import typer

        from presto_cli.commands.bench import bench_cmd
        from presto_cli.commands.eval import eval_cmd

        app = typer.Typer()
        app.command("eval")(eval_cmd)
        app.command("bench")(bench_cmd)
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
    r = runner.invoke(_app(), ["eval", "--gen", str(ref), "--ref", str(ref), "--metrics", "fad,mmd,prdc",
                               "--json", "--no-cache", "--save-ref-stats", str(stats)])
    assert r.exit_code == 0, r.output
    sc = _split(r.output)[0]["systems"][0]["scores"]
    assert sc["fad"] == pytest.approx(0.0, abs=1e-6)
    assert sc["precision"] == 1.0 and sc["recall"] == 1.0 and sc["coverage"] == 1.0
    r1 = runner.invoke(_app(), ["eval", "--gen", str(near), "--ref", str(ref), "--metrics", "fad",
                                "--json", "--no-cache"])
    r2 = runner.invoke(_app(), ["eval", "--gen", str(near), "--ref", str(stats), "--metrics", "fad,mmd",
                                "--json", "--no-cache"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r2.output
    d1, d2 = _split(r1.output)[0], _split(r2.output)[0]
    assert d2["systems"][0]["scores"]["fad"] == pytest.approx(d1["systems"][0]["scores"]["fad"], rel=1e-9)
    assert d2["reference"]["kind"] == "stats"


def test_eval_table_and_errors(folders):
    base, ref, near, _ = folders
    r = runner.invoke(_app(), ["eval", "--gen", str(near), "--ref", str(ref), "--metrics", "fad",
                               "--no-cache"])
    assert r.exit_code == 0, r.output
    assert "FAD" in r.output and "near" in r.output and "mel" in r.output
    from presto_cli.cli import app as real_app  # error lines need the real app's error handling

    bad = runner.invoke(real_app, ["eval", "--gen", str(near), "--ref", str(ref), "--metrics", "fid"])
    assert bad.exit_code == 1 and "unknown metric 'fid'" in bad.output
    noref = runner.invoke(real_app, ["eval", "--gen", str(near), "--metrics", "fad"])
    assert noref.exit_code == 1 and "--ref" in noref.output
    notext = runner.invoke(real_app, ["eval", "--gen", str(near), "--metrics", "clap"])
    assert notext.exit_code == 1 and "text tower" in notext.output


def test_eval_yaml_config(folders, tmp_path):
    base, ref, near, _ = folders
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"metrics: fad,prdc\ngen: [{near}]\nref: {ref}\nk: 3\nno_cache: true\n")
    r = runner.invoke(_app(), ["eval", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    doc = _split(r.output)[0]
    assert doc["metrics"] == ["fad", "prdc"] and doc["conditions"]["k"] == 3
    (tmp_path / "bad.yaml").write_text("metrix: fad\n")
    from presto_cli.cli import app as real_app

    r = runner.invoke(real_app, ["eval", str(tmp_path / "bad.yaml")])
    assert r.exit_code == 1 and "did you mean 'metrics'" in r.output
