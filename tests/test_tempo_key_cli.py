"""Tempo and key end to end on the tiny audio chain: an older teacher continued with
``model.tempo_cond/key_cond`` learns from the synthetic corpus's labels, every distillation stage
carries them, and ``presto generate --bpm/--key`` (or a BPM/key in the prompt) records what was
asked and what reached the model."""
import json

import pytest
import torch

from conftest import ROOT, presto

pytestmark = pytest.mark.slow  # the tiny_chain fixture trains a codec and a teacher through the CLI

TINY = ROOT / "recipes" / "tiny"
ON = ["model.tempo_cond=true", "model.key_cond=true"]


def _dit(path):
    from presto_cli.io import load_artefact

    t, meta = load_artefact(path)
    return {k[4:]: v.float() for k, v in t.items() if k.startswith("dit.")}, meta


def _gen(model, out, *extra):
    r = presto("generate", *extra, "-o", out, "--model", model, "--seed", 3, "--duration", 0.5, "--steps", 2)
    return json.loads(out.with_suffix(".wav.json").read_text()), r


def _one_line_error(args, needle, code=2):
    r = presto(*args, check=False)
    assert r.returncode == code and needle in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr


def test_tempo_key_teacher_from_an_older_one_and_generate(tiny_chain, tmp_path):
    d = tiny_chain
    common = [f"data.path={d['data']}", f"data.codec={d['codec']}", "data.clip_seconds=1.0",
              "model.in_channels=8", "model.max_frames=64", "train.batch_size=4"]
    # the latent cache carries each clip's labels (tempo and key index of the manifest row)
    rows = {json.loads(l)["path"]: json.loads(l) for l in (d["data"] / "manifest.jsonl").read_text().splitlines()}
    index = [json.loads(l) for f in (d["data"] / ".presto-latents").glob("*/index.jsonl")
             for l in f.read_text().splitlines()]
    assert index and all(it["tempo"] == rows[it["path"]]["labels"]["tempo"] for it in index)
    from presto_cli.text.musical import check_key

    assert all(it["key"] == check_key(f"{rows[it['path']]['labels']['key']} {rows[it['path']]['labels']['mode']}")
               for it in index)

    # an older teacher (no tempo/key) continued with them: its weights load, the new layers start at
    # zero, so with a negligible learning rate the export is the init plus zero-output new layers
    teacher = tmp_path / "tk"
    presto("pretrain", TINY / "teacher.yaml", *common, *ON, f"init={d['teacher']}", "train.lr=1e-12",
           "train.steps=1", "--out", tmp_path / "frozen")
    old, _ = _dit(d["teacher"])
    frozen, meta = _dit(tmp_path / "frozen" / "model.safetensors")
    assert meta["model"]["tempo_cond"] and meta["model"]["key_cond"]
    assert all(float((old[k] - frozen[k]).abs().max()) < 1e-6 for k in old)
    assert float(frozen["tempo_embed.mlp.2.weight"].abs().max()) < 1e-9 and float(frozen["key_embed.weight"].abs().max()) < 1e-9
    # trained for real: the labels reach the model (the tempo MLP's output layer only gets a
    # gradient from samples whose tempo is present; the embedding rows of the corpus's keys move)
    presto("pretrain", TINY / "teacher.yaml", *common, *ON, f"init={d['teacher']}", "train.lr=1e-3",
           "train.warmup=0", "train.steps=3", "train.ema=0", "--out", teacher)
    net, _ = _dit(teacher / "model.safetensors")
    assert float(net["tempo_embed.mlp.2.weight"].abs().max()) > 0
    moved = {i for i in range(25) if float(net["key_embed.weight"][i].abs().max()) > 0}
    assert {it["key"] for it in index} <= moved and len(moved) < 25
    # dropping a condition the init has is refused
    r = presto("pretrain", TINY / "teacher.yaml", *common, "model.key_cond=true", f"init={teacher / 'model.safetensors'}",
               "train.steps=1", "--out", tmp_path / "bad", check=False)
    assert r.returncode == 1 and "not the network" in r.stderr

    tk = teacher / "model.safetensors"
    side, _ = _gen(tk, tmp_path / "a.wav", "funk groove", "--bpm", 104, "--key", "E minor")
    assert side["asked"] == {"bpm": 104.0, "key": "E minor"} and side["used"] == side["asked"]
    # written in the prompt; a flag overrides the prompt's value (same prompt and seed: another clip)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "funk groove at 90 BPM in F# major", "name": "b", "seed": 3}\n'
                       '{"prompt": "funk groove", "name": "d", "seed": 3}\n')
    # --no-x0-clip: this one-step teacher's x0 predictions lie outside its data's range nearly
    # everywhere, so clipped clips would sit on the bounds whatever the tempo (METHOD.md section 2)
    presto("generate", "--prompts", prompts, "-o", tmp_path / "p", "--model", tk, "--duration", 0.5, "--steps", 2,
           "--no-x0-clip")
    presto("generate", "--prompts", prompts, "-o", tmp_path / "q", "--model", tk, "--duration", 0.5, "--steps", 2,
           "--bpm", 120, "--no-x0-clip")
    side = lambda run, name: json.loads((tmp_path / run / f"{name}.wav.json").read_text())  # noqa: E731
    assert side("p", "b")["asked"] == side("p", "b")["used"] == {"bpm": 90.0, "key": "F# major"}
    assert side("p", "d")["asked"] == side("p", "d")["used"] == {"bpm": None, "key": None}
    assert side("q", "b")["used"] == {"bpm": 120.0, "key": "F# major"} and side("q", "d")["used"]["bpm"] == 120.0
    import soundfile as sf

    a, _ = sf.read(str(tmp_path / "p" / "b.wav"))
    b, _ = sf.read(str(tmp_path / "q" / "b.wav"))
    assert float(abs(a - b).max()) > 0  # the asked tempo reaches the clip

    # a model without the conditions: asked recorded, used null, one line says so
    side, r = _gen(d["teacher"], tmp_path / "e.wav", "funk groove", "--bpm", 104, "--key", "E minor")
    assert side["asked"] == {"bpm": 104.0, "key": "E minor"} and side["used"] is None
    assert "no tempo or key condition" in r.stderr and r.stderr.count("ignored") == 1
    # bad values: one line, exit 2, nothing written
    out = tmp_path / "bad.wav"
    _one_line_error(["generate", "jazz", "--bpm", 500, "-o", out, "--model", tk], "outside 20-400")
    _one_line_error(["generate", "jazz", "--key", "H minor", "-o", out, "--model", tk], "unknown key")
    assert not out.exists()

    # every distillation stage keeps them: Presto-S (with regression trajectories), Presto-L, Presto-LS
    dist = [f"data.path={d['data']}", f"data.codec={d['codec']}", f"data.teacher={tk}", "data.clip_seconds=1.0",
            "train.batch_size=4"]
    presto("distill-steps", TINY / "presto-s.yaml", *dist, "train.steps=1", "distill.reg_weight=1",
           "distill.reg_pairs=4", "distill.reg_steps=2", "--out", tmp_path / "s")
    presto("distill-layers", TINY / "presto-l.yaml", *dist, "train.steps=1", "--out", tmp_path / "l")
    presto("combine", TINY / "presto-ls.yaml", *dist, f"combine.layers={tmp_path / 'l' / 'model.safetensors'}",
           "train.steps=1", "--out", tmp_path / "ls")
    for run in ("s", "l", "ls"):
        side, _ = _gen(tmp_path / run / "model.safetensors", tmp_path / f"{run}.wav", "techno", "--bpm", 130,
                       "--key", "Bb minor")
        assert side["used"] == {"bpm": 130.0, "key": "Bb minor"}, run
        _, meta = _dit(tmp_path / run / "model.safetensors")
        assert meta["model"]["tempo_cond"] and meta["model"]["key_cond"]
    assert torch.isfinite(_dit(tmp_path / "s" / "model.safetensors")[0]["tempo_embed.mlp.2.weight"]).all()
