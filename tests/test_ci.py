"""`.ci/system-deps.sh` (run by `make test`): no root and no apt when nothing is missing; when
something is missing and neither root nor sudo is available, one line with the exact apt command."""
import os
import shutil
import subprocess

from conftest import ROOT

SCRIPT = ROOT / ".ci" / "system-deps.sh"


def _stub(d, name, body="exit 0"):
    p = d / name
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(0o755)


def _run(tmp_path, present: bool):
    """The script with a PATH of stubs: a non-root `id`, a `sudo` and `apt-get` that log any call."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls.log"
    _stub(bin_, "id", "echo 1000")
    for tool in ("sudo", "apt-get"):
        _stub(bin_, tool, f'echo "{tool} $*" >> {log}; exit 1')
    sf2 = tmp_path / "FluidR3_GM.sf2"
    if present:
        _stub(bin_, "fluidsynth")
        _stub(bin_, "chromium")
        sf2.write_bytes(b"sf2")
    env = {"PATH": str(bin_), "PRESTO_SF2": str(sf2)}
    r = subprocess.run([shutil.which("bash"), str(SCRIPT)], capture_output=True, text=True, env=env,
                       timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return r, calls


def test_nothing_missing_needs_no_root(tmp_path):
    r, calls = _run(tmp_path, present=True)
    assert r.returncode == 0, r.stderr
    assert calls == [] and "nothing to install" in r.stdout
    assert r.stdout.count("present") == 3


def test_missing_without_root_or_sudo_prints_the_command(tmp_path):
    r, calls = _run(tmp_path, present=False)
    assert r.returncode == 1
    assert [c for c in calls if "apt-get" in c and not c.startswith("sudo -n")] == [], calls
    err = r.stderr.strip()
    assert err.count("\n") == 0, err
    assert "apt-get install -y fluidsynth fluid-soundfont-gm chromium" in err
