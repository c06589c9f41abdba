"""The command line through its real entry point: help, version, env, error lines and exit codes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from presto_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_help_lists_every_command():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("pretrain", "distill-steps", "distill-layers", "combine", "generate", "eval",
                "data", "bench", "env"):
        assert cmd in r.output
    assert "unavailable" not in r.output


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("presto ")


def test_env_json():
    r = runner.invoke(app, ["env", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["torch"] and "cuda_available" in info and info["torch_threads"] >= 1


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "presto_cli", *args], capture_output=True, text=True,
                          cwd=kw.get("cwd", ROOT), timeout=kw.get("timeout", 120))


def test_missing_recipe_one_line_exit1(tmp_path):
    r = _run("pretrain", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_usage_error_exit2():
    r = _run("pretrain")
    assert r.returncode == 2


def test_debug_shows_traceback(tmp_path):
    r = _run("--debug", "pretrain", str(tmp_path / "nope.yaml"))
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.parametrize("stage", ["autoencoder", "teacher", "clap", "presto-s", "ase", "presto-l",
                                   "presto-ls"])
def test_tiny_recipes_dry_run(stage):
    path = ROOT / "recipes" / "tiny" / f"{stage}.yaml"
    cmd = {"autoencoder": "pretrain", "teacher": "pretrain", "clap": "pretrain",
           "presto-s": "distill-steps", "ase": "distill-layers", "presto-l": "distill-layers",
           "presto-ls": "combine"}[stage]
    r = runner.invoke(app, [cmd, str(path), "--dry-run", "train.steps=3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["recipe"]["stage"] == stage and out["recipe"]["train"]["steps"] == 3


def test_dry_run_errors_are_one_line():
    path = ROOT / "recipes" / "tiny" / "teacher.yaml"
    for bad, needle in (("train.stepz=3", "did you mean 'steps'"), ("train.steps=many", "integer")):
        r = _run("pretrain", str(path), "--dry-run", bad)
        assert r.returncode == 1, r.stderr
        assert needle in r.stderr and r.stderr.strip().count("\n") == 0


def test_wrong_command_for_stage():
    r = _run("distill-steps", str(ROOT / "recipes" / "tiny" / "teacher.yaml"), "--dry-run")
    assert r.returncode == 1 and "presto pretrain" in r.stderr


def test_paper_teacher_dry_run_prints_param_count():
    r = runner.invoke(app, ["pretrain", str(ROOT / "recipes/paper/teacher.yaml"), "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)["info"]
    n = [v for k, v in info.items() if "param" in k]
    assert n and 0.5e9 < float(n[0]) < 2e9, info


@pytest.mark.parametrize("cmd", [["env"], ["data", "synth"], ["data", "prepare"], ["data", "encode"],
                                 ["generate"], ["pretrain"], ["eval"], ["bench"]])
def test_subcommand_help_exits_0(cmd):
    r = runner.invoke(app, [*cmd, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output and "error" not in r.output.lower().split("usage")[0]


def _env_json(monkeypatch, tmp_path, laion_body: str | None, ckpt: bool) -> dict:
    """`presto env --json` with a stand-in laion_clap package (or none) and checkpoint."""
    import importlib

    if laion_body is not None:
        (tmp_path / "laion_clap").mkdir()
        (tmp_path / "laion_clap" / "__init__.py").write_text(laion_body)
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
    monkeypatch.delitem(sys.modules, "laion_clap", raising=False)
    if ckpt:
        (tmp_path / "ck.pt").write_bytes(b"x")
        monkeypatch.setenv("PRESTO_CLAP_CKPT", str(tmp_path / "ck.pt"))
    else:
        monkeypatch.delenv("PRESTO_CLAP_CKPT", raising=False)
    r = runner.invoke(app, ["env", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_env_names_default_model_and_the_clap_route(monkeypatch, tmp_path):
    from presto_cli.pipeline import default_model_name

    broken = _env_json(monkeypatch, tmp_path, "raise RuntimeError('operator torchvision::nms does not exist')",
                       ckpt=True)
    assert broken["default_model"] == default_model_name()
    assert "fails to import: operator torchvision::nms" in broken["clap"]["laion_clap_package"]
    assert broken["clap"]["laion_clap"].startswith("unavailable")
    monkeypatch.undo()
    (tmp_path / "ok").mkdir()
    ok = _env_json(monkeypatch, tmp_path / "ok", "", ckpt=True)
    assert ok["clap"]["laion_clap_package"] == "importable" and ok["clap"]["laion_clap"].startswith("works")
    assert ok["clap"]["presto_clap"].startswith("works")
