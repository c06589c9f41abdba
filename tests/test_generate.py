"""`presto generate` end to end on the tiny chain: durations, determinism, sidecars, bad input."""
import json

import pytest
import soundfile as sf
import torch

from conftest import presto

pytestmark = pytest.mark.slow  # the tiny_chain fixture trains a codec and a teacher through the CLI


def _audio(path):
    x, sr = sf.read(str(path), dtype="float32")
    return x, sr


def test_generate_duration_rate_and_determinism(tiny_chain, tmp_path):
    m = tiny_chain["teacher"]
    a, b, c = tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "c.wav"
    presto("generate", "jazz trio with swing", "-o", a, "--model", m, "--seed", 7, "--duration", 0.5, "--steps", 3)
    presto("generate", "jazz trio with swing", "-o", b, "--model", m, "--seed", 7, "--duration", 0.5, "--steps", 3)
    presto("generate", "jazz trio with swing", "-o", c, "--model", m, "--seed", 8, "--duration", 0.5, "--steps", 3)
    xa, sr = _audio(a)
    xb, _ = _audio(b)
    xc, _ = _audio(c)
    assert sr == 16000
    assert abs(len(xa) / sr - 0.5) < 0.02  # requested duration, to one latent frame
    assert a.read_bytes() == b.read_bytes()  # bit for bit for the same seed
    assert not (len(xa) == len(xc) and (xa == xc).all())
    meta = json.loads((tmp_path / "a.wav.json").read_text())
    assert meta["seed"] == 7 and meta["steps"] == 3 and meta["kind"] == "teacher"
    assert meta["prompt"] == "jazz trio with swing" and meta["presto_version"]


def test_prompt_file_batches_do_not_change_clips(tiny_chain, tmp_path):
    m = tiny_chain["teacher"]
    pf = tmp_path / "p.jsonl"
    pf.write_text('{"prompt": "techno", "seed": 3, "name": "t"}\n{"prompt": "string quartet", "seed": 4, "name": "q"}\n'
                  '{"prompt": "reggae", "seed": 5, "name": "r"}\n')
    r = presto("generate", "--prompts", pf, "-o", tmp_path / "b1", "--model", m, "--batch-size", 1,
               "--duration", 0.3, "--steps", 2, "--json")
    presto("generate", "--prompts", pf, "-o", tmp_path / "b3", "--model", m, "--batch-size", 3,
           "--duration", 0.3, "--steps", 2)
    recs = [json.loads(l) for l in r.stdout.splitlines()]
    assert [x["seed"] for x in recs] == [3, 4, 5]
    for name in ("t", "q", "r"):
        x1, _ = _audio(tmp_path / "b1" / f"{name}.wav")
        x3, _ = _audio(tmp_path / "b3" / f"{name}.wav")
        assert torch.allclose(torch.from_numpy(x1), torch.from_numpy(x3), atol=1e-4)


def test_seed_absent_is_printed(tiny_chain, tmp_path):
    r = presto("generate", "funk", "-o", tmp_path / "f.wav", "--model", tiny_chain["teacher"], "--steps", 2,
               "--duration", 0.3)
    assert "seed:" in r.stderr
    seed = int(r.stderr.split("seed:")[1].split()[0])
    assert json.loads((tmp_path / "f.wav.json").read_text())["seed"] == seed


def _fails(args, needle, tmp_path, code=1):
    r = presto(*args, check=False)
    assert r.returncode == code, (args, r.stderr)
    assert needle in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    return r


def test_bad_input_one_line_nothing_written(tiny_chain, tmp_path):
    m = tiny_chain["teacher"]
    out = tmp_path / "x.wav"
    _fails(["generate", "  ", "-o", out, "--model", m], "empty prompt", tmp_path, code=2)
    _fails(["generate", "jazz", "-o", out, "--model", "demo-nope"], "unknown model", tmp_path, code=2)
    _fails(["generate", "jazz", "-o", out, "--model", m, "--steps", 0], "at least 1", tmp_path, code=2)
    _fails(["generate", "jazz", "-o", out, "--model", m, "--duration", 60], "longer than", tmp_path, code=2)
    _fails(["generate", "jazz", "-o", "/proc/nope/x.wav", "--model", m], "cannot write", tmp_path)
    _fails(["generate", "jazz", "-o", out, "--model", m, "--sampler", "eulr"], "unknown sampler", tmp_path, code=2)
    assert not out.exists() and not list(tmp_path.iterdir())
    # a checkpoint whose recipe does not match its weights
    from presto_cli.io import load_artefact, save_artefact

    t, meta = load_artefact(m)
    meta["model"]["width"] = meta["model"]["width"] * 2
    bad = tmp_path / "bad.safetensors"
    save_artefact(bad, t, meta)
    _fails(["generate", "jazz", "-o", out, "--model", bad], "do not match", tmp_path)
    assert not out.exists()
    # an existing file is kept unless --force
    out.write_bytes(b"keep")
    _fails(["generate", "jazz", "-o", out, "--model", m, "--duration", 0.3, "--steps", 2], "already exists", tmp_path)
    assert out.read_bytes() == b"keep"
    presto("generate", "jazz", "-o", out, "--model", m, "--duration", 0.3, "--steps", 2, "--force")
    assert out.read_bytes() != b"keep"


def test_formats(tiny_chain, tmp_path):
    m = tiny_chain["teacher"]
    for fmt in ("flac", "ogg"):
        presto("generate", "ambient pads", "-o", tmp_path / f"a.{fmt}", "--model", m, "--duration", 0.3,
               "--steps", 2, "--seed", 1)
        x, sr = sf.read(str(tmp_path / f"a.{fmt}"))
        assert sr == 16000 and len(x) > 0
