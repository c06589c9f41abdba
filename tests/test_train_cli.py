"""Resume after SIGKILL and torchrun (gloo) equivalence, through the real command line."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # training runs in subprocesses (SIGKILL/resume, torchrun)

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "recipes" / "tiny" / "teacher.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
COMMON = ["train.log_every=1", "train.ckpt_every=10", "train.keep_ckpts=2"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _steps(run: Path) -> int:
    try:
        return max((m["step"] for m in _metrics(run)), default=0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _strip(ms):
    return [{k: v for k, v in m.items() if k != "time"} for m in ms]


def _kill_midway_then_resume(cmd: list[str], run: Path, kill_after: int, total: int) -> None:
    """Start ``presto *cmd --out run``, SIGKILL it once ``kill_after`` steps are logged, check a
    plain rerun refuses the existing run, then finish it with --resume."""
    base = [sys.executable, "-m", "presto_cli", *cmd, "--out", str(run)]
    p = subprocess.Popen(base, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while _steps(run) < kill_after and p.poll() is None and time.time() - t0 < 240:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = _steps(run)
    assert kill_after <= killed_at < total, f"the run was not killed mid-way ({killed_at})"
    r = subprocess.run(base, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "--resume" in r.stderr  # never silently overwrites a run
    subprocess.run(base + ["--resume"], check=True, env=ENV, capture_output=True, timeout=300)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    steps = ["train.steps=60", *COMMON]
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "presto_cli", "pretrain", TINY, *steps, "--out", str(full)],
                   check=True, env=ENV, capture_output=True, timeout=300)
    run = tmp_path / "killed"
    _kill_midway_then_resume(["pretrain", TINY, *steps], run, 25, 60)
    a, b = _strip(_metrics(full)), _strip(_metrics(run))
    assert [m["step"] for m in b] == list(range(1, 61))
    assert a == b
    assert (run / "model.safetensors").is_file()
    assert not list(run.rglob("*.tmp*"))


@pytest.mark.skipif(sys.platform != "linux", reason="gloo test runs on linux")
def test_torchrun_two_processes_match_one(tmp_path):
    steps = ["train.steps=12", *COMMON]
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "presto_cli", "pretrain", TINY, *steps, "--out", str(one)],
                   check=True, env=ENV, capture_output=True, timeout=300)
    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "presto_cli", "pretrain", TINY, *steps, "--out", str(two)],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _metrics(one), _metrics(two)
    assert len(a) == len(b) == 12
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-3)
    import torch
    from presto_cli.io import load_artefact

    w1, _ = load_artefact(one / "model.safetensors")
    w2, _ = load_artefact(two / "model.safetensors")
    for k in w1:
        assert torch.allclose(w1[k].float(), w2[k].float(), atol=1e-4), k


def test_export_from_checkpoint(tmp_path):
    import torch
    from presto_cli.io import load_artefact

    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "presto_cli", "pretrain", TINY, "train.steps=20", *COMMON,
                    "--out", str(run)], check=True, env=ENV, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "presto_cli", "export", str(run), "-o", str(tmp_path / "last.safetensors")],
                   check=True, env=ENV, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "presto_cli", "export", str(run), "--step", "10", "-o",
                    str(tmp_path / "s10.safetensors")], check=True, env=ENV, capture_output=True, timeout=300)
    final, meta = load_artefact(run / "model.safetensors")
    last, meta2 = load_artefact(tmp_path / "last.safetensors")
    s10, _ = load_artefact(tmp_path / "s10.safetensors")
    assert meta["kind"] == meta2["kind"] == "teacher"
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert any(not torch.equal(final[k], s10[k]) for k in final)
    r = subprocess.run([sys.executable, "-m", "presto_cli", "export", str(run), "--step", "7", "-o",
                        str(tmp_path / "x.safetensors")], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "no checkpoint" in r.stderr and not (tmp_path / "x.safetensors").exists()


def test_presto_s_sigkill_then_resume_matches(tmp_path):
    """Presto-S (three networks, two optimisers, update ratio) resumes exactly after SIGKILL."""
    teacher = tmp_path / "teacher"
    subprocess.run([sys.executable, "-m", "presto_cli", "pretrain", TINY, "train.steps=60", "--out", str(teacher)],
                   check=True, env=ENV, capture_output=True, timeout=300)
    rec = str(ROOT / "recipes" / "tiny" / "presto-s.yaml")
    args = [f"data.teacher={teacher / 'model.safetensors'}", "train.steps=30", "train.batch_size=32", *COMMON]
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "presto_cli", "distill-steps", rec, *args, "--out", str(full)],
                   check=True, env=ENV, capture_output=True, timeout=300)
    run = tmp_path / "killed"
    _kill_midway_then_resume(["distill-steps", rec, *args], run, 13, 30)
    assert _strip(_metrics(full)) == _strip(_metrics(run))
