"""README's exit codes (0 success, 1 known error, 2 usage error, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)
and `--prompts -` streaming: each clip is on disk and its path on stdout before the next prompt is
even read."""
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


def _default_signals():
    # a runner started under nohup (SIGHUP ignored) or in the background (SIGINT ignored) would pass
    # the ignored dispositions on: give the child the defaults presto expects to replace
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_sighup_keep_finished_clips_and_release_every_claim(tmp_path, sig, code):
    """kill / timeout / docker / systemd (SIGTERM) and a closed terminal (SIGHUP) take Ctrl-C's path:
    finished clips kept as audio + sidecar pairs, the clip in progress discarded, no lock file left,
    one "interrupted" line, exit 128 + the signal. Paths are claimed as their clips start: while the
    run goes, only the current batch's lock exists, not one per prompt."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"jazz trio number {i}\n" for i in range(20)))
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "presto_cli", "generate", "--prompts", str(prompts), "-o", str(out),
                          "--seed", "1", "--steps", "32", "--force", "--duration", "0.5", "--batch-size", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV, cwd=ROOT,
                         preexec_fn=_default_signals)
    try:
        printed = [_readline(p, timeout=300)]  # a clip is done (32 steps each: the 19 others take seconds)
        locks = sorted(f.name for f in out.iterdir() if f.name.endswith(".presto-lock"))
        p.send_signal(sig)
        rc = p.wait(120)
        printed += [line.strip() for line in p.stdout.read().splitlines() if line.strip()]
        err = p.stderr.read()
    finally:
        p.kill()
    assert rc == code, err
    assert len(locks) <= 1, locks  # claimed clip by clip, never all 20 up front
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({signal.Signals(sig).name}): {len(printed)} finished clip(s) kept"), err
    assert "Traceback" not in err
    names = sorted(f.name for f in out.iterdir())  # hidden files included: no lock, no temporary file
    wavs = [n for n in names if n.endswith(".wav")]
    assert 1 <= len(wavs) < 20 and names == sorted(wavs + [w + ".json" for w in wavs]), names
    assert sorted(os.path.basename(f) for f in printed) == wavs
    for w in wavs:
        assert json.loads((out / (w + ".json")).read_text())["file"] == str(out / w)


PROBE = """
import contextlib, io, json, sys
from presto_cli.cli import app
rows = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            app(args)
        except SystemExit as e:
            code = e.code
    rows.append([code, err.getvalue().strip(), "torch" in sys.modules])
print(json.dumps(rows))
"""


def test_cheap_checks_come_before_torch_is_imported(tmp_path):
    """Unknown model names (exit 2, with a "did you mean"), missing model files (not an "unknown
    model"), existing outputs, seeds beyond 64 bits, -o/--format that disagree and missing run folders
    are refused without importing torch (a second or more), in one line each."""
    (tmp_path / "old.wav").write_bytes(b"RIFF")
    x = str(tmp_path / "x.wav")
    cases = [(["generate", "jazz", "-m", "demo-ss", "-o", x], 2, "unknown model 'demo-ss' (did you mean 'demo-s'?"),
             (["generate", "jazz", "-m", str(tmp_path / "gone.safetensors"), "-o", x], 1,
              f"model file not found: {tmp_path / 'gone.safetensors'}"),
             (["generate", "jazz", "-o", str(tmp_path / "old.wav")], 1, "old.wav already exists"),
             (["generate", "jazz", "--seed", str(2**64), "-o", x], 2, f"--seed {2**64} does not fit in 64 bits"),
             (["generate", "jazz", "-o", x, "--format", "flac"], 2, "x.wav is a .wav file but --format is flac"),
             (["export", str(tmp_path / "nope"), "-o", str(tmp_path / "m.safetensors")], 1,
              f"run folder not found: {tmp_path / 'nope'}")]
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps([c[0] for c in cases])], capture_output=True,
                       text=True, env=CLI_ENV, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    for (args, code, needle), (got, err, torch_loaded) in zip(cases, json.loads(r.stdout.splitlines()[-1])):
        assert got == code and err.startswith("error: ") and needle in err and "\n" not in err, (args, got, err)
        assert not torch_loaded, args
    assert sorted(f.name for f in tmp_path.iterdir()) == ["old.wav"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_device():
    for args in (["--version"], ["pretrain", "recipes/tiny/teacher.yaml", "--dry-run"]):
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "presto_cli", *args], stdout=full, stderr=subprocess.PIPE,
                               text=True, env=CLI_ENV, cwd=ROOT, timeout=120)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip() == "error: cannot write to stdout: no space left on the device it goes to " \
                                   "(redirect stdout to a file on a disk with free space)", r.stderr
