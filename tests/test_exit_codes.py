"""README's exit codes (0 success, 1 known error, 2 usage error, 130 Ctrl-C) and `--prompts -`
streaming: each clip is on disk and its path on stdout before the next prompt is even read."""
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import CLI_ENV, ROOT, presto


def test_exit_0_1_2():
    assert presto("--version").returncode == 0
    assert presto("generate", "jazz", "--model", "/nonexistent.safetensors", check=False).returncode == 1
    for args, needle in [(("generate",), "no prompt given"),
                         (("generate", "jazz", "--steps", "0"), "--steps"),
                         (("generate", "jazz", "--num-per-prompt", "0"), "--num-per-prompt"),
                         (("generate", "jazz", "--format", "aac"), "unknown audio format"),
                         (("generate", "jazz", "--duration", "-1"), "--duration"),
                         (("generate", "jazz", "--steps", "many"), "--steps"),  # click's own type check
                         (("generate", "jazz", "--no-such-option"), "no-such-option")]:
        r = presto(*args, check=False)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def _default_sigint():
    # a suite started in the background by a non-interactive shell inherits SIGINT ignored, and so
    # would the child (Python keeps an ignored SIGINT ignored): give it the default disposition
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(tmp_path, *args):
    return subprocess.Popen([sys.executable, "-m", "presto_cli", "generate", "--prompts", "-", "-o",
                             str(tmp_path), "--seed", "5", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV, cwd=ROOT,
                            preexec_fn=_default_sigint)


def _readline(p, timeout=120.0) -> str:
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "no clip path printed in time"
    return p.stdout.readline().strip()


def test_stdin_prompts_write_each_clip_as_it_comes(tmp_path):
    p = _start(tmp_path, "--json", "--steps", "2", "--duration", "0.5")
    try:
        p.stdin.write("jazz trio\n")
        p.stdin.flush()
        first = json.loads(_readline(p))  # printed while stdin is still open: written, not batched
        assert os.path.isfile(first["file"]) and os.path.isfile(first["file"] + ".json")
        assert first["prompt"] == "jazz trio" and first["seed"] == 5
        p.stdin.write('{"prompt": "techno", "seed": 9, "name": "t"}\n')
        p.stdin.close()
        second = json.loads(_readline(p))
        assert second["file"] == str(tmp_path / "t.wav") and second["seed"] == 9
        assert p.wait(120) == 0
    finally:
        p.kill()
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        [os.path.basename(first["file"]), os.path.basename(first["file"]) + ".json", "t.wav", "t.wav.json"])


def test_ctrl_c_exits_130_keeps_finished_clips(tmp_path):
    p = _start(tmp_path, "--steps", "200", "--duration", "0.5", "--force")  # --force: 50x its steps
    try:
        p.stdin.write("jazz trio\n")
        p.stdin.flush()
        done = _readline(p, timeout=300)
        p.stdin.write("heavy metal\n")  # a long clip: interrupted while it is sampled (or read)
        p.stdin.flush()
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        rc = p.wait(120)
        err = p.stderr.read()
    finally:
        p.kill()
    assert rc == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: 1 finished clip(s) kept"), err
    assert "Traceback" not in err
    names = sorted(f.name for f in tmp_path.iterdir())  # the finished clip only, no temporary files
    assert names == [os.path.basename(done), os.path.basename(done) + ".json"], names


def test_clip_and_sidecar_are_written_together(tmp_path, monkeypatch):
    """Ctrl-C between the audio and its sidecar removes the audio too (no clip without a sidecar)."""
    import torch

    import presto_cli.io as pio
    from presto_cli.outputs import write_clip as _write_clip

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pio, "atomic_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write_clip(tmp_path / "a.wav", torch.zeros(1, 1600), 16000, {"file": "a.wav"})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    _write_clip(tmp_path / "a.wav", torch.zeros(1, 1600), 16000, {"file": "a.wav"})
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.wav", "a.wav.json"]
