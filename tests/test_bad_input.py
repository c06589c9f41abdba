"""Bad input, broken files and concurrent runs through the real CLI (issue 14): each gives one
line naming the problem, exit code 1 (2 for a bad option value), and leaves no partial file;
nothing hangs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from presto_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny" / "teacher.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
runner = CliRunner()


def _cli(*args, code=1):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == code, (args, r.output)
    assert "Traceback" not in r.output and "unexpected" not in r.output and "please report" not in r.output
    return r


def _refused(*args, needle: str, code: int = 1) -> str:
    """Exit ``code`` with exactly one stderr line, starting 'error:' and containing ``needle``."""
    r = _cli(*args, code=code)
    err = r.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and needle in err, err
    return err


def _sub(*args, timeout=120, cwd=None):
    return subprocess.run([sys.executable, "-m", "presto_cli", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=timeout, cwd=cwd or ROOT)


def _tone(path: Path, seconds: float, sr: int = 16000, seed: int = 0, fmt=None, subtype=None) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t) + 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), sr, format=fmt, subtype=subtype)
    return path


def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


# --------------------------------------------------------------------------------------------
# Recipes


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["stage: teacher", "l0: &l0 [" + ",".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines + [f"name: *l{levels - 1}"]) + "\n"


def test_alias_bomb_is_refused_at_once(tmp_path):
    (tmp_path / "bomb.yaml").write_text(_alias_bomb())
    t0 = time.time()
    r = _sub("pretrain", "bomb.yaml", timeout=60, cwd=tmp_path)  # hung with growing memory before
    assert time.time() - t0 < 30
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "expands to more than 100000 values through its aliases" in r.stderr
    assert _listing(tmp_path) == ["bomb.yaml"]


def test_recursive_alias_and_non_scalar_values(tmp_path):
    rec = tmp_path / "rec.yaml"
    rec.write_text("stage: teacher\nname: &a [1, *a]\n")
    _refused("pretrain", rec, "--dry-run", needle="alias that refers to itself")
    big = tmp_path / "big.yaml"
    big.write_text("stage: teacher\nname: [" + ", ".join(str(i) for i in range(5000)) + "]\n")
    err = _refused("pretrain", big, "--dry-run", needle="'name' must be a string, got a list of 5000 items")
    assert len(err) < 200  # described, never rendered
    _refused("pretrain", TINY, "train.lr={a: 1}", "--dry-run", needle="'train.lr' must be a number, got a mapping")


@pytest.mark.parametrize("override,needle", [
    ("train.lr=-1", "'train.lr' must not be negative"),
    ("train.lr=0", "'train.lr' must be greater than 0"),
    ("train.lr=.nan", "'train.lr' must be a finite number"),
    ("edm.sigma_data=.inf", "'edm.sigma_data' must be a finite number"),
    ("train.batch_size=0", "'train.batch_size' must be at least 1"),
    ("train.ema=1.5", "'train.ema' must be below 1"),
    ("train.betas=[0.9, 1.5]", "'train.betas' must be two numbers in [0, 1)"),
])
def test_bad_recipe_values_leave_no_run_directory(tmp_path, monkeypatch, override, needle):
    monkeypatch.chdir(tmp_path)
    _refused("pretrain", TINY, override, needle=needle)
    assert not (tmp_path / "runs").exists()


def test_lr_minus_one_in_the_recipe_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(f"base: {TINY}\nname: lr-neg\ntrain:\n  lr: -1\n")
    _refused("pretrain", "r.yaml", needle="'train.lr' must not be negative, got -1")
    assert not (tmp_path / "runs").exists()  # no runs/lr-neg/recipe.yaml left behind


def test_invalid_utf8_files(tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"jazz trio\nsolo \xff\xfe piano\n")
    _refused("generate", "--prompts", bad, "-o", tmp_path / "out", needle="p.txt is not valid UTF-8 (byte 0xff")
    rec = tmp_path / "r.yaml"
    rec.write_bytes(b"stage: teacher\nname: caf\xe9\n")
    _refused("pretrain", rec, "--dry-run", needle="recipe " + str(rec) + " is not valid UTF-8")
    assert _listing(tmp_path) == ["p.txt", "r.yaml"]


# --------------------------------------------------------------------------------------------
# generate: every value is checked before the model is loaded (a missing model file would be
# reported otherwise)


@pytest.mark.parametrize("args,needle", [
    (["--cfg", "nan"], "--cfg must be a finite number, got nan"),
    (["--cfg", "-2"], "--cfg must be at least 0"),
    (["--rho", "0"], "--rho must be greater than 0"),
    (["--duration", "inf"], "--duration must be a finite number"),
    (["--steps", "10000"], "--steps 10000 is above the cap of 1000"),
    (["-o", "OUT/clip.xyz"], "unknown audio extension '.xyz'"),
    (["-k", "2", "-o", "OUT/clip.wav"], "names one audio file but several clips are made"),
])
def test_generate_values_refused_before_loading(tmp_path, args, needle):
    args = [str(a).replace("OUT", str(tmp_path)) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "x.wav")]
    _refused("generate", "jazz trio", "--model", tmp_path / "missing.safetensors", *args, needle=needle, code=2)
    assert _listing(tmp_path) == []


def test_steps_far_above_the_model(tmp_path):
    _refused("generate", "jazz", "-m", "demo-s", "--steps", "100", "-o", tmp_path / "x.wav",
             needle="--steps 100 is more than 16x the 4 steps this model was made for", code=2)
    assert _listing(tmp_path) == []
    from presto_cli.validate import check_steps_for_model

    said = []
    check_steps_for_model(20, 4, False, said.append)  # 5x: warned, allowed
    assert len(said) == 1 and "far above the 4 steps" in said[0]
    check_steps_for_model(64, 4, True, said.append)  # forced: silent
    check_steps_for_model(16, 4, False, said.append)  # 4x: silent
    assert len(said) == 1


def test_absurd_prompts(tmp_path):
    _refused("generate", "a" * 100_000, "-o", tmp_path / "x.wav",
             needle="prompt is 100000 characters long, more than the 2000 allowed")
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "jazz"}) + "\n" + json.dumps({"prompt": "b" * 5000}) + "\n")
    _refused("generate", "--prompts", p, "-o", tmp_path / "out",
             needle=f"the prompt at {p}:2 is 5000 characters long")
    assert _listing(tmp_path) == ["p.jsonl"]


# --------------------------------------------------------------------------------------------
# Output claims


def test_a_path_claimed_by_a_live_run_is_refused(tmp_path):
    out = tmp_path / "x.wav"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".x.wav.presto-lock").write_text(f"{owner.pid}\n")
        _refused("generate", "jazz", "-m", "demo-s", "-o", out,
                 needle=f"{out} is taken: another presto run (pid {owner.pid}) is writing it")
        assert not out.exists() and (tmp_path / ".x.wav.presto-lock").read_text() == f"{owner.pid}\n"
    finally:
        owner.kill()
        owner.wait()


def test_claims_stale_locks_existing_files_and_force(tmp_path):
    from presto_cli.claim import claim_outputs, lock_path
    from presto_cli.errors import PrestoError

    out = tmp_path / "a.wav"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text(f"{dead.pid}\n")  # left by a SIGKILLed run
    with claim_outputs([out]):
        assert lock_path(out).read_text() == f"{os.getpid()}\n"
    assert _listing(tmp_path) == []
    out.write_bytes(b"keep")
    with pytest.raises(PrestoError, match="already exists"):
        claim_outputs([tmp_path / "b.wav", out]).acquire()
    assert _listing(tmp_path) == ["a.wav"]  # all or nothing: b.wav's claim was released
    with claim_outputs([out], force=True):
        pass
    assert _listing(tmp_path) == ["a.wav"]


def test_a_signal_just_after_a_lock_is_made_does_not_leave_it_behind(tmp_path, monkeypatch):
    """SIGTERM arriving between creating a lock file and recording it (seen under load: a
    `presto generate` killed mid-run left `.0001_....wav.presto-lock`): the signal is held back
    until the lock is recorded, so the interrupted claim is released like any other (also when the
    process has other threads, as pytest-xdist's workers and torch do)."""
    import presto_cli.claim as C

    class Stop(Exception):
        pass

    def on_term(signum, frame):
        raise Stop

    made = C._create

    def create_then_signal(lock):
        ok = made(lock)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered at once unless held back
        for _ in range(1000):  # bytecode boundaries where a pending Python handler would run
            pass
        return ok

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        monkeypatch.setattr(C, "_create", create_then_signal)
        with pytest.raises(Stop):
            C.claim_outputs([tmp_path / "a.wav", tmp_path / "b.wav"]).acquire()
    finally:
        signal.signal(signal.SIGTERM, old)
    assert _listing(tmp_path) == []  # no lock left: neither a.wav's nor a half-made one
    assert C._HELD == []


@pytest.mark.slow
def test_two_runs_aimed_at_one_path(tmp_path):
    out = tmp_path / "same.wav"
    cmd = [sys.executable, "-m", "presto_cli", "generate", "jazz trio", "-m", "demo-s", "--duration", "1",
           "--device", "cpu", "-o", str(out)]
    procs = [subprocess.Popen(cmd + ["--seed", str(s)], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 1], results
    loser = next(e for c, e in results if c == 1).strip()
    assert loser.count("\n") == 0 and ("is taken" in loser or "already exists" in loser), loser
    winner_seed = json.loads((tmp_path / "same.wav.json").read_text())["seed"]
    assert winner_seed == (1 if results[0][0] == 0 else 2)
    assert sf.info(str(out)).duration == pytest.approx(1.0, abs=0.05)
    assert _listing(tmp_path) == ["same.wav", "same.wav.json"]


def test_two_trainings_aimed_at_one_run_directory(tmp_path):
    """While one training run lives, a second one into the same --out is refused in one line and
    writes nothing there; once the first is gone its stale claim is taken over."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "presto_cli", "pretrain", str(TINY), "train.steps=100000",
           "train.ckpt_every=100000", "--out", str(run)]
    first = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = tmp_path / ".run.presto-lock"
        deadline = time.time() + 120
        while not lock.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert lock.exists(), first.stderr.read() if first.poll() is not None else "no lock in 120 s"
        r = _sub("pretrain", TINY, "train.steps=2", "--out", run, timeout=120)
        assert r.returncode == 1 and "is taken" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0
        assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
    finally:
        first.kill()
        first.wait(timeout=60)
    assert _sub("pretrain", TINY, "train.steps=2", "--out", tmp_path / "run", "--resume",
                timeout=300).returncode == 0  # the killed run's claim is stale and taken over


# --------------------------------------------------------------------------------------------
# Corrupt checkpoints: export and --resume fall back to the newest intact one


@pytest.mark.slow
@pytest.mark.slow  # two training runs through the CLI (about 30 s on 2 cores)
def test_corrupt_latest_checkpoint_falls_back(tmp_path):
    common = ["train.batch_size=8", "train.ckpt_every=2", "train.keep_ckpts=3", "train.log_every=1"]
    run, ref = tmp_path / "run", tmp_path / "ref"
    assert _sub("pretrain", TINY, "train.steps=6", *common, "--out", run, timeout=300).returncode == 0
    assert _sub("pretrain", TINY, "train.steps=8", *common, "--out", ref, timeout=300).returncode == 0
    ck = run / "checkpoints"
    data = (ck / "step_0000006.pt").read_bytes()
    (ck / "step_0000006.pt").write_bytes(data[: len(data) // 2])  # truncated
    (ck / "step_0000004.pt").write_bytes(b"")  # empty

    r = _sub("export", run, "-o", tmp_path / "a.safetensors", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "step_0000006.pt is corrupt or truncated" in r.stderr and "step_0000004.pt is empty" in r.stderr
    assert "using step_0000002.pt (step 2), the newest intact checkpoint" in r.stderr
    assert _sub("export", run, "--step", 2, "-o", tmp_path / "b.safetensors").returncode == 0
    from presto_cli.io import load_artefact

    a, _ = load_artefact(tmp_path / "a.safetensors")
    b, _ = load_artefact(tmp_path / "b.safetensors")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    r = _sub("export", run, "--step", 4, "-o", tmp_path / "c.safetensors")
    assert r.returncode == 1 and r.stderr.strip() == f"error: checkpoint {ck / 'step_0000004.pt'} is empty (0 bytes)"
    assert not (tmp_path / "c.safetensors").exists()

    r = _sub("pretrain", TINY, "train.steps=8", *common, "--out", run, "--resume", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "using step_0000002.pt (step 2)" in r.stderr and "resuming" in r.stderr
    resumed, _ = load_artefact(run / "model.safetensors")
    straight, _ = load_artefact(ref / "model.safetensors")
    assert all(np.array_equal(resumed[k].numpy(), straight[k].numpy()) for k in straight)  # exact resume


# --------------------------------------------------------------------------------------------
# eval


def _eval_json(*args) -> dict:
    r = _cli("eval", *args, "--metrics", "fad", "--embedder", "mel", "--no-cache", "--json", code=0)
    return json.loads(r.stdout)


def test_eval_skips_truncated_and_short_clips_and_warns_on_the_reference(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    for i in range(4):
        _tone(gen / f"g{i}.wav", 1.0, seed=i)
        _tone(ref / f"r{i}.wav", 2.5, seed=10 + i)
    data = _tone(gen / "cut.wav", 1.0, seed=7).read_bytes()
    (gen / "cut.wav").write_bytes(data[: len(data) // 3])  # header intact, data truncated
    _tone(gen / "tiny.wav", 0.1, seed=8)
    doc = _eval_json("--gen", gen, "--ref", ref)
    s = doc["systems"][0]
    assert s["n"] == 4 and s["n_files"] == 6
    why = {Path(k["file"]).name: k["error"] for k in s["skipped"]}
    assert "is truncated: its header declares 32000 bytes of audio" in why["cut.wav"]
    assert "too short to score (0.10 s < 0.5 s)" in why["tiny.wav"]
    notes = " | ".join(s["notes"])
    assert "the reference has 4 clips, fewer than the embedding dimension 128" in notes
    assert "differ in length by 2.5x" in notes


def test_eval_refuses_a_set_of_short_clips(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    for i in range(3):
        _tone(gen / f"g{i}.wav", 0.1, seed=i)
        _tone(ref / f"r{i}.wav", 1.0, seed=10 + i)
    r = _cli("eval", "--gen", gen, "--ref", ref, "--metrics", "fad", "--embedder", "mel", "--no-cache",
             "-o", tmp_path / "res.json")
    last = r.stderr.strip().splitlines()[-1]
    assert last == f"error: all 3 readable clips in {gen} are too short to score (under 0.5 s) " \
                   "(evaluate clips of at least 0.5 s)"
    assert not (tmp_path / "res.json").exists()


def test_eval_values_refused(tmp_path):
    _refused("eval", "--gen", tmp_path, "--ref", tmp_path, "--cfg", "nan", needle="--cfg must be a finite number",
             code=2)


# --------------------------------------------------------------------------------------------
# data prepare


def test_prepare_accepts_opus(tmp_path):
    import soundfile

    assert "OPUS" in soundfile.available_subtypes("OGG")
    for i in range(3):
        _tone(tmp_path / f"c{i}.opus", 1.0, sr=48000, seed=i, fmt="OGG", subtype="OPUS")
    r = _cli("data", "prepare", tmp_path, "--json", code=0)
    info = json.loads(r.stdout)
    assert info["kept"] == 3 and info["skipped"] == 0
    rows = [json.loads(l) for l in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [x["path"] for x in rows] == ["c0.opus", "c1.opus", "c2.opus"] and rows[0]["sample_rate"] == 48000


def test_prepare_says_what_it_found_and_skipped(tmp_path):
    for i in range(3):
        (tmp_path / f"t{i}.xyz").write_bytes(b"\0" * 100)
    data = _tone(tmp_path / "cut.wav", 1.0).read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:1000])
    r = _cli("data", "prepare", tmp_path)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no usable audio files in {tmp_path}: 1 audio files found and skipped "
                           "(1 unreadable); 3 files of unsupported formats ignored (3 .xyz)"), last
    assert not (tmp_path / "manifest.jsonl").exists()


# --------------------------------------------------------------------------------------------
# Issue 32: environment problems named with their fix, no silent acceptance, honest messages


@pytest.mark.parametrize("var,value", [("PRESTO_THREADS", "abc"), ("OMP_NUM_THREADS", "0"),
                                       ("OMP_NUM_THREADS", "-2")])
def test_thread_counts_from_the_environment(tmp_path, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    _refused("generate", "jazz", "-o", tmp_path / "x.wav",
             needle=f"{var}={value} is not a thread count (set {var} to a whole number such as 1 or 4")
    assert _listing(tmp_path) == []


def test_unwritable_output_folders_are_named(tmp_path, monkeypatch):
    """pretrain --out / export -o into a folder without write permission: the folder is named, not
    the hidden lock file, and not as an "unexpected PermissionError". (Faked: tests may run as root.)"""
    import errno

    from presto_cli import claim

    def denied(lock):
        raise PermissionError(errno.EACCES, "Permission denied", str(lock))

    monkeypatch.setattr(claim, "_create", denied)
    ro = tmp_path / "ro"
    _refused("pretrain", TINY, "train.steps=1", "--out", ro / "run",
             needle=f"cannot write to {ro}: Permission denied (choose an output folder you can write)")
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(TINY.read_text())
    _refused("export", run, "-o", ro / "m.safetensors", needle=f"cannot write to {ro}: Permission denied")


def test_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    """ENOSPC wherever presto writes: said as a full disk, the partial file removed, even when the
    writer hides the reason (libsndfile's "System error", torch's "unexpected pos")."""
    import errno

    import soundfile

    import presto_cli.io as pio

    def full_sf(path, *a, **k):
        Path(path).write_bytes(b"RIFF....")  # a partial file, then libsndfile's own words
        raise RuntimeError("Error opening file: System error.")

    monkeypatch.setattr(soundfile, "write", full_sf)
    monkeypatch.setattr(pio, "_free_bytes", lambda p: 4096)
    err = _refused("generate", "jazz", "-m", "demo-s", "--seed", 1, "--duration", 0.5, "-o", tmp_path / "x.wav",
                   needle=f"the disk is full: no space left on the device writing {tmp_path / 'x.wav'}")
    assert "try wav or flac" not in err and "System error" not in err
    assert _listing(tmp_path) == []

    def torch_full(obj, f):
        Path(f).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    monkeypatch.setattr(pio.torch, "save", torch_full)
    from presto_cli.errors import PrestoError

    with pytest.raises(PrestoError, match="the disk is full"):
        pio.atomic_torch_save({}, tmp_path / "ck.pt")
    monkeypatch.setattr(pio, "_free_bytes", lambda p: 10 << 30)  # plenty left: not a full disk
    with pytest.raises(RuntimeError, match="unexpected pos"):
        pio.atomic_torch_save({}, tmp_path / "ck.pt")

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pio.os, "fsync", enospc)
    with pytest.raises(PrestoError, match=f"the disk is full: no space left on the device writing {tmp_path / 'a.json'}"):
        pio.atomic_write_json(tmp_path / "a.json", {"a": 1})
    assert _listing(tmp_path) == []


def test_a_broken_laion_clap_install_is_named(tmp_path, monkeypatch):
    """laion_clap importing a torchvision built for another torch ("operator torchvision::nms does not
    exist"): one line blaming the install, with the fix, not "unexpected RuntimeError"."""
    import sys as _sys

    fake = tmp_path / "site" / "laion_clap"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(_sys.modules, "laion_clap", raising=False)
    gen, ckpt = tmp_path / "gen", tmp_path / "clap.pt"
    for i in range(2):
        _tone(gen / f"g{i}.wav", 1.0, seed=i)
    ckpt.write_bytes(b"\0")
    err = _refused("eval", "--gen", gen, "--ref", gen, "--embedder", "clap", "--clap-ckpt", ckpt, "--metrics", "fad",
                   "--no-cache", needle="the LAION-CLAP install is broken: importing laion_clap failed in torchvision")
    assert "operator torchvision::nms does not exist" in err and "make install-clap" in err


def test_unusable_caption_sidecars_are_named(tmp_path):
    for n in "abcde":
        _tone(tmp_path / f"{n}.wav", 1.0)
    (tmp_path / "a.txt").write_bytes(b"solo \xff\xfe piano")
    (tmp_path / "b.json").write_text('{"caption": "x",\n')
    (tmp_path / "c.txt").write_text("  \n")
    (tmp_path / "d.json").write_text('{"caption": "funk groove"}')
    (tmp_path / "e.txt").write_text("slow blues\n")
    r = _cli("data", "prepare", tmp_path, code=0)
    warned = [l for l in r.stderr.splitlines() if l.startswith("warning: ")]
    assert warned == [f"warning: {tmp_path / 'a.txt'}: not valid UTF-8; its caption was not used (fix or remove the file)",
                      f"warning: {tmp_path / 'b.json'}: malformed JSON (Expecting property name enclosed in double "
                      "quotes at line 2); its caption was not used (fix or remove the file)",
                      f"warning: {tmp_path / 'c.txt'}: blank; its caption was not used (fix or remove the file)"], warned
    caps = {json.loads(l)["path"]: json.loads(l)["caption"] for l in (tmp_path / "manifest.jsonl").read_text().splitlines()}
    assert caps == {"a.wav": "a", "b.wav": "b", "c.wav": "c", "d.wav": "funk groove", "e.wav": "slow blues"}


def test_duplicate_recipe_keys_and_absurd_step_counts(tmp_path):
    rec = tmp_path / "dup.yaml"
    rec.write_text(f"base: {TINY}\ntrain:\n  lr: 1.0e-4\n  steps: 3\n  lr: 2.0e-4\n")
    _refused("pretrain", rec, "--dry-run", needle=f"{rec}: key 'lr' appears twice (lines 3 and 5)")
    _refused("pretrain", TINY, "train.steps=" + "1" + "0" * 30, "--dry-run",
             needle="recipe key 'train.steps' is 1e+30, more than the 1e+09 steps any run could finish")
    assert _cli("pretrain", TINY, "train.steps=1000000000", "--dry-run", code=0)


def test_eval_warns_about_a_clip_far_above_full_scale(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    for i in range(3):
        _tone(ref / f"r{i}.wav", 1.0, seed=10 + i, subtype="FLOAT")
        _tone(gen / f"g{i}.wav", 1.0, seed=i, subtype="FLOAT")
    x, sr = sf.read(str(gen / "g1.wav"))
    sf.write(str(gen / "g1.wav"), (x * 1e6).astype(np.float32), sr, subtype="FLOAT")
    doc = _eval_json("--gen", gen, "--ref", ref)
    notes = [n for n in doc["systems"][0]["notes"] if "far above full scale" in n]
    assert len(notes) == 1 and notes[0].startswith(f"{gen / 'g1.wav'} peaks at 3."), notes  # 0.3 x 1e6


def test_a_model_with_nan_weights_is_blamed_before_sampling(tmp_path):
    import torch

    from presto_cli.io import load_artefact, save_artefact
    from presto_cli.pipeline import ASSETS

    tensors, meta = load_artefact(ASSETS / "demo-s.safetensors")
    key = sorted(k for k in tensors if k.startswith("dit."))[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    save_artefact(tmp_path / "nan.safetensors", tensors, meta)
    _refused("generate", "jazz", "-m", tmp_path / "nan.safetensors", "-o", tmp_path / "x.wav",
             needle=f"{tmp_path / 'nan.safetensors'} is broken: its weights hold NaN or Inf values (first in '{key}')")
    assert not (tmp_path / "x.wav").exists() and torch.isfinite(load_artefact(ASSETS / "demo-s.safetensors")[0][key]).all()


@pytest.mark.parametrize("args,code,needle", [
    (["eval", "--embedder", "foo"], 2, "unknown embedder 'foo' (known: mel, music, clap, clap-audio, presto-clap)"),
    (["eval", "--embedder", "prestoclap"], 2, "unknown embedder 'prestoclap' (did you mean 'presto-clap'?"),
    (["eval", "--k", "0", "--gen", "TMP", "--ref", "TMP"], 2, "--k must be at least 1, got 0"),
    (["eval", "-m", "demo-sx", "--embedder", "mel"], 2, "unknown model 'demo-sx' (did you mean 'demo-s'?"),
    (["data", "prepare", "TMP/f.wav"], 1, "TMP/f.wav is a file, expected a folder of audio files"),
    (["export", "TMP/f.wav", "-o", "TMP/m.safetensors"], 1, "TMP/f.wav is a file, expected a run folder"),
    (["export", "TMP", "-o", "TMP/m.safetensors"], 1, "TMP is not a run folder (no recipe.yaml in it)"),
])
def test_names_and_values_refused_with_their_own_message(tmp_path, args, code, needle):
    _tone(tmp_path / "f.wav", 1.0)
    _refused(*[a.replace("TMP", str(tmp_path)) for a in args], needle=needle.replace("TMP", str(tmp_path)), code=code)
    assert _listing(tmp_path) == ["f.wav"]
