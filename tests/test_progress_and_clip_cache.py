"""Progress lines when stderr is not a terminal (--quiet silences them), `presto bench`'s estimate,
and `presto eval` reusing the clips it generated before (issue 32, items 5 and 7)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CLI_ENV, ROOT
from test_eval_cli import _folder, _split, tiny_models  # noqa: F401  (the shared tiny-model fixture)

runner = CliRunner()
LINE = re.compile(r"^\[progress\] (?P<label>.+?): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\)"
                  r".*elapsed \d+:\d\d(?:, ETA (?P<eta>\d+:\d\d|\?))?", re.M)


def _app():
    from presto_cli.cli import app

    return app


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    import numpy as np

    rng = np.random.default_rng(0)
    return _folder(tmp_path_factory.mktemp("pcref") / "ref", 300 + 200 * rng.random(12))


# --------------------------------------------------------------------------------------------
# the progress helper


def test_progress_lines_every_interval_with_rate_and_eta(monkeypatch, capsys):
    """A fake clock: 10 steps of 2 s each, a line every 5 s: lines at steps 3, 6, 9 (the first
    update at least 5 s after the last line), each with the rate (0.5/s) and the ETA from it; a
    final line; nothing under --quiet or with lines=False."""
    from presto_cli import runtime

    monkeypatch.setenv(runtime.PROGRESS_EVERY_ENV, "5")
    now = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])

    def run(**kw):
        with runtime.progress("toy", total=10, **kw) as tick:
            for i in range(10):
                now[0] += 2.0
                tick.update(i + 1)
                tick.note(f"loss={1 / (i + 1):.2f}")
        return capsys.readouterr().err

    err = run()
    lines = [m.groupdict() for m in LINE.finditer(err)]
    assert [(m["done"], m["pct"]) for m in lines] == [("3", "30"), ("6", "60"), ("9", "90"), ("10", "100")]
    # 0.5 steps/s from the start: 7 left at step 3 take 14 s; 4 left at step 6, 8 s; 1 left, 2 s;
    # the final line has no ETA
    assert [m["eta"] for m in lines] == ["0:14", "0:08", "0:02", None]
    assert "2 s each" in err and "loss=0.50" in err  # the rate below 1/s; the note of step 2
    assert "elapsed 0:06" in err and "elapsed 0:20" in err
    runtime.set_quiet(True)
    try:
        assert run() == ""
    finally:
        runtime.set_quiet(False)
    assert run(lines=False) == ""
    # a run resumed at step 6: its rate counts only the steps it made (1 per 2 s), not the 6
    monkeypatch.setenv(runtime.PROGRESS_EVERY_ENV, "0")
    with runtime.progress("resumed", total=10) as tick:
        tick.start_at(6)
        now[0] += 2.0
        tick.update(7)
    first = LINE.search(capsys.readouterr().err)
    assert (first["done"], first["eta"]) == ("7", "0:06")


def test_bad_progress_interval_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("PRESTO_PROGRESS_EVERY", "soon")
    r = CliRunner().invoke(_app(), ["bench", "--model", "nope.safetensors"])
    assert r.exit_code == 2 and "PRESTO_PROGRESS_EVERY='soon'" in r.output


# --------------------------------------------------------------------------------------------
# commands, stderr not a terminal


def _run(*args, env=None, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "presto_cli", *map(str, args)], capture_output=True, text=True,
                          env={**CLI_ENV, **(env or {})}, cwd=cwd or ROOT, timeout=600)


@pytest.mark.slow
def test_synth_and_pretrain_print_progress_lines_when_piped(tmp_path):
    every = {"PRESTO_PROGRESS_EVERY": "0"}
    data = tmp_path / "synth"
    r = _run("data", "synth", "--out", data, "--n", 3, "--seconds", 1, "-j", 1, "--json", env=every)
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # stdout keeps only the JSON document
    synth = [m.groupdict() for m in LINE.finditer(r.stderr) if m["label"] == "synth"]
    assert [m["done"] for m in synth][-1] == "3" and all(m["total"] == "3" for m in synth)
    q = _run("data", "synth", "--out", tmp_path / "q", "--n", 2, "--seconds", 1, "-j", 1, "--quiet", env=every)
    assert q.returncode == 0, q.stderr
    assert "[progress]" not in q.stderr

    args = [ROOT / "recipes/tiny/autoencoder.yaml", f"data.path={data}", "train.steps=4", "train.batch_size=2"]
    r = _run("pretrain", *args, "--out", tmp_path / "ae", "--json", env=every)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stage"] == "autoencoder"
    lines = [m.groupdict() for m in LINE.finditer(r.stderr) if m["label"] == "autoencoder"]
    assert lines and all(m["total"] == "4" for m in lines)
    assert any(m["eta"] not in (None, "?") for m in lines)  # a rate, so an ETA
    assert lines[-1]["done"] == "4" and lines[-1]["eta"] is None  # the final line
    q = _run("pretrain", *args, "--out", tmp_path / "ae_q", "--quiet", env=every)
    assert q.returncode == 0, q.stderr
    assert "[progress]" not in q.stderr and Path(q.stdout.strip()).is_file()


def test_bench_prints_an_estimate_then_progress(models, monkeypatch):
    monkeypatch.setenv("PRESTO_PROGRESS_EVERY", "0")
    r = runner.invoke(_app(), ["bench", "-m", str(models["teacher"]), "-m", str(models["student"]),
                               "--device", "cpu", "--repeats", "3", "--no-memory", "--json"])
    assert r.exit_code == 0, r.output
    doc, text = _split(r.output)
    assert len(doc["rows"]) == 2
    est = text.index("estimate: about")
    assert "6 timed runs" in text[est:].splitlines()[0]
    lines = [m for m in LINE.finditer(text)]
    assert lines and lines[0].start() > est  # the estimate comes first
    assert [m["done"] for m in lines][-1] == "6" and all(m["total"] == "6" for m in lines)
    q = runner.invoke(_app(), ["bench", "-m", str(models["student"]), "--device", "cpu", "--repeats", "2",
                               "--no-memory", "--json", "--quiet"])
    assert q.exit_code == 0, q.output
    assert "[progress]" not in q.output and "estimate" not in q.output


# --------------------------------------------------------------------------------------------
# presto eval: the clip cache


def _eval(models, ref, tmp_path, run: str, *extra, which=("teacher", "student")):
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": f"tune {i}", "name": f"p{i}"}) + "\n" for i in range(3)))
    ms = [x for w in which for x in ("-m", str(models[w]))]
    r = runner.invoke(_app(), ["eval", *ms, "--ref", str(ref),
                               "--prompts", str(prompts), "--steps", "2", "--metrics", "fad,mmd",
                               "--embedder", "mel", "--device", "cpu", "--batch-size", "2", "--json",
                               "--cache", str(tmp_path / "cache"), "--run-dir", str(tmp_path / run), *extra])
    assert r.exit_code == 0, r.output
    doc, text = _split(r.output)
    return doc, text, {s["name"]: (s["clips_generated"], s["clips_reused"]) for s in doc["systems"]}


def test_eval_reuses_its_clips_and_only_for_the_same_settings(models, ref, tmp_path, monkeypatch):
    monkeypatch.setenv("PRESTO_PROGRESS_EVERY", "0")
    d1, t1, c1 = _eval(models, ref, tmp_path, "a", "--n", "3")
    assert c1 == {"teacher": (3, 0), "student": (3, 0)}
    assert "[progress] generating teacher: 3/3 (100%)" in t1
    d2, t2, c2 = _eval(models, ref, tmp_path, "b", "--n", "3")
    assert c2 == {"teacher": (0, 3), "student": (0, 3)}
    assert "teacher: reusing 3 of 3 clips" in t2 and "about 0 s to generate" in t2
    for s1, s2 in zip(d1["systems"], d2["systems"]):
        for a, b in zip(s1["clips"], s2["clips"]):
            assert Path(a["file"]).read_bytes() == Path(b["file"]).read_bytes()
            assert json.loads(Path(a["file"] + ".json").read_text())["prompt"] == \
                json.loads(Path(b["file"] + ".json").read_text())["prompt"]
        # the same clips; the reference's embeddings come from the embedding cache (float32) the
        # second time, so the scores agree to float32 precision
        assert s1["scores"] == pytest.approx(s2["scores"], rel=1e-6)
    assert d2["clip_cache"]["hits"] == 6
    # one more clip (a prompt again, at a new seed): the three made before are reused
    _, _, c3 = _eval(models, ref, tmp_path, "c", "--n", "4")
    assert c3 == {"teacher": (1, 3), "student": (1, 3)}
    # another base seed, other steps, a matching mode, or --no-cache: nothing reused
    for run, flag, value in (("d", "--seed", "7"), ("e", "--steps", "3"), ("f", "--no-match", None),
                             ("g", "--no-cache", None)):
        args = [flag] + ([value] if value else [])
        assert _eval(models, ref, tmp_path, run, "--n", "3", *args, which=("student",))[2] == {"student": (3, 0)}


def test_eval_interrupted_says_what_it_kept_and_how_to_score_it(models, ref, tmp_path, monkeypatch):
    """Ctrl-C during the second batch: the first batch's two clips are kept, and the command the
    message gives scores exactly them."""
    import shlex

    from presto_cli.pipeline import Pipeline

    real = Pipeline.sample_latents
    calls = []

    def sample(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Pipeline, "sample_latents", sample)
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"tune {i}\n" for i in range(4)))
    r = runner.invoke(_app(), ["eval", "-m", str(models["teacher"]), "--ref", str(ref), "--prompts", str(prompts),
                               "--steps", "2", "--metrics", "fad,mmd", "--embedder", "mel", "--device", "cpu",
                               "--batch-size", "2", "--no-cache", "--run-dir", str(tmp_path / "run")])
    assert r.exit_code == 130, r.output
    msg = next(line for line in r.output.splitlines() if line.startswith("interrupted while generating"))
    assert "kept 2 finished clip(s) (teacher 2/4)" in msg
    cmd = shlex.split(msg.split("To score only the kept clips: ")[1])
    assert cmd[:2] == ["presto", "eval"] and cmd[cmd.index("--gen") + 1] == str(tmp_path / "run" / "audio" / "teacher")
    monkeypatch.setattr(Pipeline, "sample_latents", real)
    s = runner.invoke(_app(), [*cmd[1:], "--json", "--no-cache"])
    assert s.exit_code == 0, s.output
    doc, _ = _split(s.output)
    assert doc["systems"][0]["n"] == 2 and doc["metrics"] == ["fad", "mmd"]


def test_table_protocol_note(tmp_path, monkeypatch):
    from presto_cli import pipeline
    from presto_cli.eval.evaluate import EvalConfig, table_protocol_note

    monkeypatch.setattr(pipeline, "ASSETS", tmp_path)
    (tmp_path / "heldout_prompts.jsonl").write_text("{}\n")
    same = dict(models=["demo-s"], prompts=str(tmp_path / "heldout_prompts.jsonl"), n=96, embedder="presto-clap",
                ref=str(tmp_path / "ref_heldout_presto-clap.npz"))
    note = table_protocol_note(EvalConfig(**same))
    assert "first of the 2 seed sets" in note and "make results" in note and "differs" not in note
    note = table_protocol_note(EvalConfig(**{**same, "n": 48}))
    assert "differs" in note and "48 clips per model, not 96" in note and "presto eval -m demo-s --n 96" in note
    assert "--steps 4" in table_protocol_note(EvalConfig(**{**same, "steps": 4}))
    assert "embedder mel" in table_protocol_note(EvalConfig(**{**same, "embedder": "mel"}))
    assert table_protocol_note(EvalConfig(**{**same, "prompts": str(tmp_path / "other.jsonl")})) is None


def test_eval_reuses_clips_for_texture_only_with_their_latents(models, tmp_path):
    """--metrics texture scores each clip's latents: a reused clip brings them from the cache (the
    same arrays), and a cached clip without them is generated again."""
    import numpy as np

    from presto_cli.eval.clip_cache import ClipCache
    from presto_cli.eval.evaluate import EvalConfig, generate_system

    cfg = EvalConfig(metrics=["texture"], steps=2, device="cpu", batch_size=2)
    rows = [{"prompt": f"tune {i}", "seed": i, "name": f"p{i}"} for i in range(3)]
    cache = ClipCache(tmp_path / "clips")
    a = generate_system(str(models["student"]), rows, cfg, tmp_path / "a", print, clips=cache)
    b = generate_system(str(models["student"]), rows, cfg, tmp_path / "b", print, clips=cache)
    assert (a.info["clips_generated"], b.info["clips_reused"]) == (3, 3)
    for x, y in zip(a.latent_db, b.latent_db):
        assert x.shape[0] > 0 and np.array_equal(x, y)
    for f in (tmp_path / "clips").rglob("*.db.npy"):
        f.unlink()
    c = generate_system(str(models["student"]), rows, cfg, tmp_path / "c", print, clips=cache)
    assert c.info["clips_generated"] == 3 and all(x is not None for x in c.latent_db)
