"""`make install`'s torch route (.ci/install-torch.sh) and `make install-clap`'s check-then-roll-back
(.ci/install-clap.sh), run offline against a fake pip that records its calls and keeps a fake
environment in a JSON file (issue 32, item 6). Nothing is installed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PIP = f"""#!{sys.executable}
import json, os, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
state = json.load(open(os.environ["FAKE_STATE"]))
fail = set(os.environ.get("FAKE_FAIL", "").split(","))
def save():
    json.dump(state, open(os.environ["FAKE_STATE"], "w"))
if args[0] == "list":
    print("\\n".join(f"{{k}}=={{v}}" for k, v in state.items()))
elif args[0] == "uninstall":
    for n in args[2:]:
        state = {{k: v for k, v in state.items() if norm(k) != norm(n)}}
    save()
elif args[0] == "install" and "--dry-run" in args:
    if "dry-run" in fail:
        print("ERROR: Could not find a version that satisfies the requirement laion-clap", file=sys.stderr)
        sys.exit(1)
    print("Would install " + os.environ.get("FAKE_WOULD", ""))
elif args[0] == "install" and "--no-deps" in args:
    n, v = args[args.index("--no-deps") + 1].split("==")
    if "restore:" + n in fail:
        print("ERROR: No matching distribution found for " + n, file=sys.stderr)
        sys.exit(1)
    state[n] = v
    save()
elif args[0] == "install":
    for spec in os.environ.get("FAKE_APPLY", "").split():
        n, v = spec.split("==")
        state[n] = v
    save()
    if "term" in fail:  # as `timeout` or a Ctrl-C would stop the script while pip runs
        import signal
        os.kill(os.getppid(), signal.SIGTERM)
    sys.exit(1 if "install" in fail else 0)
"""

FAKE_PY = """#!/usr/bin/env bash
case "$*" in
  *"import torchvision"*) [ "${FAKE_TV_RC:-0}" = 0 ] || echo "RuntimeError: operator torchvision::nms does not exist" >&2; exit "${FAKE_TV_RC:-0}" ;;
  *"import laion_clap"*) exit "${FAKE_LC_RC:-0}" ;;
  *"import torch"*) [ -n "${FAKE_TORCH:-}" ] && echo "$FAKE_TORCH" || exit 1 ;;
  *"sys.prefix == sys.base_prefix"*) echo True ;;  # not a virtual environment
  *"print(sys.prefix)"*) echo /usr ;;
esac
"""

BEFORE = {"torch": "2.13.0+cpu", "numpy": "2.4.6", "presto-music": "0.1.0"}
CLAP = "numpy==1.26.4 torchvision==0.28.0+cpu laion-clap==1.1.7 librosa==0.11.0"
WOULD = "laion-clap-1.1.7 librosa-0.11.0 numpy-1.26.4 torchvision-0.28.0+cpu"


@pytest.fixture
def fake(tmp_path):
    pip = tmp_path / "pip"
    pip.write_text(FAKE_PIP)
    py = tmp_path / "python"
    py.write_text(FAKE_PY)
    for f in (pip, py):
        f.chmod(0o755)
    state, log = tmp_path / "state.json", tmp_path / "log.jsonl"
    state.write_text(json.dumps(BEFORE))

    def run(script: str, **env):
        e = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "TORCH")}
        e.update(PIP=str(pip), PY=str(py), FAKE_STATE=str(state), FAKE_LOG=str(log), **env)
        r = subprocess.run(["bash", str(ROOT / ".ci" / script)], cwd=tmp_path, env=e, capture_output=True,
                           text=True, timeout=60)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return r, calls, json.loads(state.read_text())

    return run


def _kinds(calls):
    """Each pip call in short: list, dry-run, install, uninstall NAMES, restore SPEC."""
    out = []
    for c in calls:
        if c[0] == "install" and "--dry-run" in c:
            out.append("dry-run")
        elif c[0] == "install" and "--no-deps" in c:
            out.append("restore " + c[c.index("--no-deps") + 1])
        elif c[0] == "uninstall":
            out.append("uninstall " + " ".join(c[2:]))
        else:
            out.append(c[0])
    return out


def test_install_clap_failed_install_is_rolled_back_in_order(fake):
    """pip changes numpy and adds four packages, then fails: the added ones are uninstalled, numpy
    goes back to the recorded version, and the environment equals the one before."""
    r, calls, state = fake("install-clap.sh", FAKE_APPLY=CLAP, FAKE_WOULD=WOULD, FAKE_FAIL="install")
    assert r.returncode == 1
    assert _kinds(calls) == ["list", "dry-run", "install", "list",
                             "uninstall laion-clap librosa torchvision", "restore numpy==2.4.6", "list"]
    install = calls[2]
    assert install[:3] == ["install", "-e", ".[clap]"] and "torch==2.13.0" in install
    assert install[install.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert state == BEFORE
    assert "before: numpy 2.4.6" in r.stderr and "could not get the [clap] extra" in r.stderr
    assert "back as it was" in r.stderr


def test_install_clap_rolls_back_when_torchvision_does_not_import(fake):
    r, calls, state = fake("install-clap.sh", FAKE_APPLY=CLAP, FAKE_WOULD=WOULD, FAKE_TV_RC="1")
    assert r.returncode == 1 and state == BEFORE
    assert "torchvision does not import: RuntimeError: operator torchvision::nms" in r.stderr
    assert _kinds(calls)[-3:] == ["uninstall laion-clap librosa torchvision", "restore numpy==2.4.6", "list"]


def test_install_clap_rolls_back_when_stopped_during_the_install(fake):
    r, calls, state = fake("install-clap.sh", FAKE_APPLY=CLAP, FAKE_WOULD=WOULD, FAKE_FAIL="term")
    assert r.returncode == 130 and "interrupted" in r.stderr and state == BEFORE
    assert _kinds(calls)[-3:] == ["uninstall laion-clap librosa torchvision", "restore numpy==2.4.6", "list"]


def test_install_clap_says_what_it_could_not_restore(fake):
    r, _, state = fake("install-clap.sh", FAKE_APPLY=CLAP, FAKE_WOULD=WOULD, FAKE_FAIL="install,restore:numpy")
    assert r.returncode == 1 and state["numpy"] == "1.26.4" and "laion-clap" not in state
    assert "could NOT restore: numpy==2.4.6" in r.stderr and "numpy (now 1.26.4, was 2.4.6)" in r.stderr


@pytest.mark.parametrize("env, says", [
    ({"FAKE_FAIL": "dry-run"}, "pip cannot resolve the [clap] extra here: ERROR: Could not find a version"),
    ({"FAKE_WOULD": "torch-2.14.0 torchvision-0.29.0 laion-clap-1.1.7"}, "pip would replace torch 2.13.0+cpu (torch-2.14.0)"),
    ({"FAKE_WOULD": "torchvision-0.28.0 laion-clap-1.1.7"}, "needs torchvision's CPU build"),
])
def test_install_clap_checks_before_it_changes_anything(fake, env, says):
    r, calls, state = fake("install-clap.sh", FAKE_APPLY=CLAP, **env)
    assert r.returncode == 1 and says in r.stderr and "nothing was changed" in r.stderr
    assert _kinds(calls) == ["list", "dry-run"] and state == BEFORE


def test_install_clap_success_keeps_the_new_packages(fake):
    r, calls, state = fake("install-clap.sh", FAKE_APPLY=CLAP, FAKE_WOULD=WOULD)
    assert r.returncode == 0, r.stderr
    assert _kinds(calls) == ["list", "dry-run", "install", "list"]
    assert state["laion-clap"] == "1.1.7" and state["torch"] == "2.13.0+cpu"
    assert "numpy 2.4.6 -> 1.26.4" in r.stderr


@pytest.mark.parametrize("env, route, pip", [
    ({"TORCH": "cpu", "FAKE_TORCH": ""}, "CPU-only build",
     ["install", "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]),
    ({"TORCH": "cuda", "FAKE_TORCH": ""}, "CUDA build", ["install", "torch==2.13.0"]),
    ({"FAKE_TORCH": "2.13.0+cpu"}, "keep the installed torch 2.13.0+cpu", None),  # auto: already there
    ({"FAKE_TORCH": "", "PATH": "/usr/bin:/bin"}, "CPU-only build",  # auto, no nvidia-smi
     ["install", "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]),
])
def test_install_torch_says_its_route(fake, env, route, pip):
    r, calls, _ = fake("install-torch.sh", **env)
    assert r.returncode == 0, r.stderr
    assert f"torch route: {route}" in r.stderr
    assert "not in a virtual environment: packages go into /usr" in r.stderr and "python3 -m venv .venv" in r.stderr
    assert calls == ([pip] if pip else [])


def test_install_torch_auto_takes_cuda_when_a_gpu_answers(fake, tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'GPU 0: NVIDIA H100'\n")
    (bin_ / "nvidia-smi").chmod(0o755)
    r, calls, _ = fake("install-torch.sh", FAKE_TORCH="", PATH=f"{bin_}:/usr/bin:/bin")
    assert r.returncode == 0 and "torch route: CUDA build" in r.stderr and calls == [["install", "torch==2.13.0"]]
