"""Every distillation subcommand end to end through the real CLI on the tiny audio chain, then
`presto generate` with each artefact (Presto-S at 1, 2 and 4 steps)."""
import json

import pytest
import soundfile as sf
import torch

from conftest import ROOT, presto

pytestmark = pytest.mark.slow  # the tiny_chain fixture trains a codec and a teacher through the CLI

TINY = ROOT / "recipes" / "tiny"


def _common(chain):
    return [f"data.path={chain['data']}", f"data.codec={chain['codec']}", f"data.teacher={chain['teacher']}",
            "data.clip_seconds=1.0", "train.batch_size=4", "train.log_every=1"]


def _gen(model, out, steps=None):
    args = ["generate", "a lively funk groove", "-o", out, "--model", model, "--seed", 3, "--duration", 0.5]
    if steps is not None:
        args += ["--steps", steps]
    presto(*args)
    x, sr = sf.read(str(out))
    meta = json.loads(out.with_suffix(out.suffix + ".json").read_text())
    assert sr == 16000 and abs(len(x) / sr - 0.5) < 0.05 and abs(x).max() > 0
    assert meta["x0_clip"] is True  # every artefact of the chain knows its training latents' range
    return meta


def _same_caption_bank(student, teacher):
    """A student artefact carries its teacher's caption bank (text/caption_bank.py), tensors included."""
    from presto_cli.io import load_artefact
    from presto_cli.text.caption_bank import CaptionBank

    a, b = (CaptionBank.from_artefact(*load_artefact(p)) for p in (student, teacher))
    return a is not None and b is not None and a.captions == b.captions and bool((a.pooled == b.pooled).all())


def _same_latent_range(student, teacher):
    """A student artefact carries its teacher's training-latent range (diffusion/latent_range.py)."""
    from presto_cli.diffusion.latent_range import LatentRange
    from presto_cli.io import load_artefact

    a, b = (LatentRange.from_artefact(*load_artefact(p)) for p in (student, teacher))
    return a is not None and b is not None and torch.equal(a.hi, b.hi) and torch.equal(a.lo, b.lo)


def test_distill_steps_layers_and_combine(tiny_chain, tmp_path):
    common = _common(tiny_chain)
    r = presto("distill-steps", TINY / "presto-s.yaml", *common, "train.steps=6", "--out", tmp_path / "s", "--json")
    s = json.loads(r.stdout)["artefact"]
    for steps in (1, 2, 4):
        meta = _gen(s, tmp_path / f"s{steps}.wav", steps)
        assert meta["kind"] == "presto-s" and meta["sampler"] == "fewstep" and meta["nfe"] == steps
    assert _gen(s, tmp_path / "s_default.wav")["steps"] == 4  # the artefact's default
    metrics = [json.loads(l) for l in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert {"dmd_grad_norm", "d_real", "d_fake", "fake_dsm"} <= set().union(*metrics)

    presto("distill-layers", TINY / "ase.yaml", *common, "train.steps=4", "--out", tmp_path / "ase")
    presto("distill-layers", TINY / "presto-l.yaml", *common, "train.steps=4", "--out", tmp_path / "l")
    for kind, run in (("ase", "ase"), ("presto-l", "l")):
        meta = _gen(tmp_path / run / "model.safetensors", tmp_path / f"{run}.wav", 3)
        assert meta["kind"] == kind and meta["sampler"] == "heun"

    presto("combine", TINY / "presto-ls.yaml", *common, f"combine.layers={tmp_path / 'l' / 'model.safetensors'}",
           "train.steps=6", "--out", tmp_path / "ls")
    meta = _gen(tmp_path / "ls" / "model.safetensors", tmp_path / "ls.wav", 2)
    assert meta["kind"] == "presto-ls" and meta["nfe"] == 2
    for student in (s, tmp_path / "ase" / "model.safetensors", tmp_path / "l" / "model.safetensors",
                    tmp_path / "ls" / "model.safetensors"):
        assert _same_caption_bank(student, tiny_chain["teacher"]), student
        assert _same_latent_range(student, tiny_chain["teacher"]), student


def test_resume_refuses_a_changed_teacher(tiny_chain, tmp_path):
    """A distillation run resumed against a teacher file that changed since it started is refused
    with one line (and the run's checkpoint is left as it was)."""
    import shutil

    from presto_cli.io import load_artefact, save_artefact

    teacher = tmp_path / "teacher.safetensors"
    shutil.copy(tiny_chain["teacher"], teacher)
    common = _common({**tiny_chain, "teacher": teacher}) + ["train.ckpt_every=2"]
    presto("distill-steps", TINY / "presto-s.yaml", *common, "train.steps=2", "--out", tmp_path / "s")
    presto("distill-layers", TINY / "ase.yaml", *common, "train.steps=2", "--out", tmp_path / "ase")
    # same resume, same teacher: accepted
    presto("distill-layers", TINY / "ase.yaml", *common, "train.steps=3", "--out", tmp_path / "ase", "--resume")
    tensors, meta = load_artefact(teacher)
    k = next(n for n in tensors if n.startswith("dit."))
    tensors[k] = tensors[k] + 0.01  # another teacher under the same name
    save_artefact(teacher, tensors, meta)
    for cmd, recipe, run in (("distill-steps", "presto-s.yaml", "s"), ("distill-layers", "ase.yaml", "ase")):
        before = (tmp_path / run / "latest").read_text() if (tmp_path / run / "latest").exists() else None
        r = presto(cmd, TINY / recipe, *common, "train.steps=4", "--out", tmp_path / run, "--resume", check=False)
        assert r.returncode == 1, r.stderr
        assert "not the file this run started with" in r.stderr and "Traceback" not in r.stderr
        after = (tmp_path / run / "latest").read_text() if (tmp_path / run / "latest").exists() else None
        assert before == after


def test_distill_steps_continues_from_an_exported_generator(tiny_chain, tmp_path):
    """``distill.init`` starts the generator from an exported Presto-S model, not the teacher: one
    iteration with no generator update (r = 5) and no EMA exports exactly the init's weights; a
    teacher (or a missing file) as init is refused with one line."""
    import torch

    from presto_cli.io import load_artefact

    common = _common(tiny_chain)
    presto("distill-steps", TINY / "presto-s.yaml", *common, "train.steps=4", "distill.update_ratio=1",
           "--out", tmp_path / "s1")
    s1 = tmp_path / "s1" / "model.safetensors"
    no_update = ["train.steps=1", "distill.update_ratio=5", "distill.ema=0"]
    presto("distill-steps", TINY / "presto-s.yaml", *common, *no_update, f"distill.init={s1}",
           "--out", tmp_path / "s2")
    presto("distill-steps", TINY / "presto-s.yaml", *common, *no_update, "--out", tmp_path / "s0")

    def dit(path):
        t, _ = load_artefact(path)
        return {k: v.float() for k, v in t.items() if k.startswith("dit.")}

    init, cont, fresh, teacher = dit(s1), dit(tmp_path / "s2" / "model.safetensors"), \
        dit(tmp_path / "s0" / "model.safetensors"), dit(tiny_chain["teacher"])
    assert all(torch.equal(init[k], cont[k]) for k in init)
    assert all(torch.equal(teacher[k], fresh[k]) for k in teacher)
    assert max(float((init[k] - teacher[k]).abs().max()) for k in init) > 1e-4  # s1 did train
    for bad, words in ((tiny_chain["teacher"], "'teacher' artefact"), (tmp_path / "nope.safetensors", "no file")):
        r = presto("distill-steps", TINY / "presto-s.yaml", *common, *no_update, f"distill.init={bad}",
                   "--out", tmp_path / "bad", check=False)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_distill_steps_regression_makes_its_trajectories_once(tiny_chain, tmp_path):
    """``distill.reg_weight``: the run makes its teacher trajectories (one file, a state per
    few-step point), logs the regression loss, and a resumed run reuses the file instead of
    integrating the ODE again."""
    import torch
    from safetensors import safe_open

    common = _common(tiny_chain) + ["distill.reg_weight=1", "distill.reg_pairs=4", "distill.reg_steps=3",
                                    "distill.update_ratio=1", "train.ckpt_every=2"]
    r0 = presto("distill-steps", TINY / "presto-s.yaml", *common, "train.steps=2", "--out", tmp_path / "s")
    assert "teacher trajectories" in r0.stdout + r0.stderr
    pairs = tmp_path / "s" / "reg_pairs.safetensors"
    with safe_open(str(pairs), framework="pt") as f:
        states, ends = f.get_tensor("states"), f.get_tensor("ends")
    assert states.shape[:2] == (4, 4) and ends.shape[0] == 4 and bool(torch.isfinite(states.float()).all())
    metrics = [json.loads(l) for l in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["reg_loss"] > 0 for m in metrics)
    before = pairs.stat().st_mtime_ns
    r = presto("distill-steps", TINY / "presto-s.yaml", *common, "train.steps=3", "--out", tmp_path / "s", "--resume")
    assert pairs.stat().st_mtime_ns == before and "teacher trajectories" not in r.stdout + r.stderr


def test_distill_steps_regression_captions_from_a_prompt_file(tiny_chain, tmp_path):
    """``distill.reg_prompts``: the trajectories are made with the file's captions (each used once
    before any repeats, recorded beside the pairs), not the corpus's, from the same noises; a
    missing file is refused in one line."""
    import torch
    from safetensors import safe_open

    common = _common(tiny_chain) + ["distill.reg_weight=1", "distill.reg_pairs=4", "distill.reg_steps=3",
                                    "distill.update_ratio=1", "train.steps=1"]
    caps = tmp_path / "caps.txt"
    caps.write_text("# two wordings\na slow waltz for a rainy afternoon\nfast drums and a buzzing synth bass\n")
    presto("distill-steps", TINY / "presto-s.yaml", *common, f"distill.reg_prompts={caps}", "--out", tmp_path / "f")
    presto("distill-steps", TINY / "presto-s.yaml", *common, "--out", tmp_path / "c")

    def read(run):
        with safe_open(str(run / "reg_pairs.safetensors"), framework="pt") as f:
            return f.get_tensor("states").float(), json.loads(f.metadata()["captions"])

    (sf, cf), (sc, cc) = read(tmp_path / "f"), read(tmp_path / "c")
    assert sorted(cf[:2]) == sorted(cf[2:]) == sorted(["a slow waltz for a rainy afternoon",
                                                       "fast drums and a buzzing synth bass"])
    assert not set(cc) & set(cf)
    # the same noise at sigma_max, then trajectories that depend on the captions
    assert torch.equal(sf[:, 0], sc[:, 0])
    assert (sf[:, -1] - sc[:, -1]).abs().max() > 1e-2
    r = presto("distill-steps", TINY / "presto-s.yaml", *common, f"distill.reg_prompts={tmp_path / 'none.txt'}",
               "--out", tmp_path / "m", check=False)
    assert r.returncode == 1 and "prompt file not found" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_pretrain_teacher_continues_from_an_exported_teacher(tiny_chain, tmp_path):
    """``init`` starts a teacher run from an exported teacher's weights: with a negligible learning
    rate the export is the init, a fresh run is not, one step at a real learning rate moves
    away from it; a Presto-S artefact, a missing file or another network is refused in one line."""
    import torch

    from presto_cli.io import load_artefact

    d = tiny_chain
    common = [f"data.path={d['data']}", f"data.codec={d['codec']}", "data.clip_seconds=1.0",
              "model.in_channels=8", "model.max_frames=64", "train.batch_size=4", "train.steps=2"]

    def dit(path):
        t, _ = load_artefact(path)
        return {k: v.float() for k, v in t.items() if k.startswith("dit.")}

    def run(name, *extra, check=True):
        return presto("pretrain", TINY / "teacher.yaml", *common, *extra, "--out", tmp_path / name, check=check)

    run("frozen", f"init={d['teacher']}", "train.lr=1e-12")
    run("moved", f"init={d['teacher']}", "train.lr=1e-3", "train.warmup=0")
    run("fresh", "train.lr=1e-12")
    init = dit(d["teacher"])
    frozen, moved, fresh = (dit(tmp_path / n / "model.safetensors") for n in ("frozen", "moved", "fresh"))
    assert max(float((init[k] - frozen[k]).abs().max()) for k in init) < 1e-6
    assert max(float((init[k] - fresh[k]).abs().max()) for k in init) > 1e-3
    assert 0 < max(float((init[k] - moved[k]).abs().max()) for k in init) < 0.1
    presto("distill-steps", TINY / "presto-s.yaml", *_common(d), "train.steps=1", "--out", tmp_path / "s")
    for bad, words in (([f"init={tmp_path / 's' / 'model.safetensors'}"], "'presto-s' artefact"),
                       ([f"init={tmp_path / 'nope.safetensors'}"], "no file"),
                       ([f"init={d['teacher']}", "model.depth=3"], "not the network")):
        r = run("bad", *bad, check=False)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_combine_continues_from_an_exported_presto_ls(tiny_chain, tmp_path):
    """``distill.init`` in `presto combine` starts G from an exported Presto-LS model on the same
    layer schedule: an iteration with no generator update exports exactly the init's weights; a
    Presto-S artefact as init is refused in one line."""
    import torch

    from presto_cli.io import load_artefact

    common = _common(tiny_chain)
    presto("distill-layers", TINY / "presto-l.yaml", *common, "train.steps=2", "--out", tmp_path / "l")
    layers = f"combine.layers={tmp_path / 'l' / 'model.safetensors'}"
    presto("combine", TINY / "presto-ls.yaml", *common, layers, "train.steps=4", "distill.update_ratio=1",
           "--out", tmp_path / "ls1")
    ls1 = tmp_path / "ls1" / "model.safetensors"
    no_update = ["train.steps=1", "distill.update_ratio=5", "distill.ema=0"]
    presto("combine", TINY / "presto-ls.yaml", *common, layers, *no_update, f"distill.init={ls1}",
           "--out", tmp_path / "ls2")

    def dit(path):
        t, _ = load_artefact(path)
        return {k: v.float() for k, v in t.items() if k.startswith("dit.")}

    init, cont, lay = dit(ls1), dit(tmp_path / "ls2" / "model.safetensors"), dit(tmp_path / "l" / "model.safetensors")
    assert all(torch.equal(init[k], cont[k]) for k in init)
    assert max(float((init[k] - lay[k]).abs().max()) for k in init) > 1e-4  # ls1 did train
    presto("distill-steps", TINY / "presto-s.yaml", *common, "train.steps=1", "--out", tmp_path / "s")
    r = presto("combine", TINY / "presto-ls.yaml", *common, layers, *no_update,
               f"distill.init={tmp_path / 's' / 'model.safetensors'}", "--out", tmp_path / "bad", check=False)
    assert r.returncode == 1 and "'presto-s' artefact" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_teacher_stores_its_training_latents_range_and_generate_can_turn_the_clip_off(tiny_chain, tmp_path):
    """`presto pretrain` stores the per-channel range of its training split's latents; `presto
    generate` clips x0 predictions to it by default and records the choice; --no-x0-clip turns it off."""
    from presto_cli.data.latents import LatentDataset, ensure_latent_cache
    from presto_cli.diffusion.latent_range import LatentRange
    from presto_cli.io import load_artefact

    tensors, meta = load_artefact(tiny_chain["teacher"])
    stored = LatentRange.from_artefact(tensors, meta)
    ds = LatentDataset(ensure_latent_cache(tiny_chain["codec"], {"path": str(tiny_chain["data"]),
                                                                 "clip_seconds": 1.0}))
    want = LatentRange.measure(ds[i]["latents"] for i in range(len(ds)))
    assert stored is not None and stored.n == len(ds) == meta["latent_range"]["n"]
    assert torch.allclose(stored.hi, want.hi) and torch.allclose(stored.lo, want.lo)
    on = _gen(tiny_chain["teacher"], tmp_path / "on.wav", 3)
    presto("generate", "a lively funk groove", "-o", tmp_path / "off.wav", "--model", tiny_chain["teacher"],
           "--seed", 3, "--duration", 0.5, "--steps", 3, "--no-x0-clip")
    off = json.loads((tmp_path / "off.wav.json").read_text())
    assert on["x0_clip"] is True and off["x0_clip"] is False


def test_distill_steps_with_a_guidance_interval(tiny_chain, tmp_path):
    """distill.cfg_interval from the command line: the run trains (DMD and the regression
    trajectories guided only in the interval) and the artefact records it."""
    from presto_cli.io import read_artefact_meta

    common = _common(tiny_chain)
    presto("distill-steps", TINY / "presto-s.yaml", *common, "train.steps=2", "distill.cfg=2",
           "distill.cfg_interval=[0,2]", "distill.reg_weight=1", "distill.reg_pairs=4", "distill.reg_steps=4",
           "--out", tmp_path / "s")
    meta = read_artefact_meta(tmp_path / "s" / "model.safetensors")
    assert meta["distill"]["cfg_interval"] == [0, 2] and meta["real_score_cfg"] == 2.0
    r = presto("distill-steps", TINY / "presto-s.yaml", *common, "train.steps=2", "distill.cfg_interval=[2,1]",
               "--out", tmp_path / "bad", check=False)
    assert r.returncode != 0 and "distill.cfg_interval needs 0 <= LO < HI" in r.stderr


def test_a_student_of_a_bundled_teacher_carries_the_shared_caption_bank_and_latent_range(tiny_chain, tmp_path,
                                                                                          monkeypatch):
    """The bundled models' files lack the caption bank and the latent range, which bundle.py stores
    once in assets/ for all of them. A model distilled from the bundled teacher (through a symlink
    too) must still carry both, or it loses nearest-caption matching and x0 clipping; a copy of the
    same file outside assets/ is not a bundled model and gets neither."""
    from typer.testing import CliRunner

    from presto_cli import names
    from presto_cli.cli import app
    from presto_cli.diffusion.latent_range import LatentRange
    from presto_cli.io import load_artefact, save_artefact
    from presto_cli.text.caption_bank import CaptionBank

    tensors, meta = load_artefact(tiny_chain["teacher"])
    assets = tmp_path / "assets"
    assets.mkdir()
    CaptionBank.from_artefact(tensors, meta).save(assets / names.BUNDLED_CAPTIONS)
    LatentRange.from_artefact(tensors, meta).save(assets / names.BUNDLED_RANGE)
    bare = ({k: v for k, v in tensors.items() if not k.startswith(("caption_bank.", "latent_range."))},
            {k: v for k, v in meta.items() if k not in ("caption_bank", "latent_range")})
    save_artefact(assets / "demo-teacher.safetensors", *bare)
    save_artefact(tmp_path / "copy.safetensors", *bare)
    (tmp_path / "link.safetensors").symlink_to(assets / "demo-teacher.safetensors")
    monkeypatch.setattr(names, "ASSETS", assets)

    def distil(teacher, out):
        common = [a for a in _common(tiny_chain) if not a.startswith("data.teacher=")]
        r = CliRunner().invoke(app, ["distill-steps", str(TINY / "presto-s.yaml"), *common, f"data.teacher={teacher}",
                                     "train.steps=2", "--out", str(out), "--quiet"])
        assert r.exit_code == 0, r.output
        return out / "model.safetensors"

    student = distil(tmp_path / "link.safetensors", tmp_path / "s")
    assert _same_caption_bank(student, assets / names.BUNDLED_CAPTIONS)  # the shared files, as stored (fp16)
    assert _same_latent_range(student, assets / names.BUNDLED_RANGE)
    other = load_artefact(distil(tmp_path / "copy.safetensors", tmp_path / "s_copy"))
    assert CaptionBank.from_artefact(*other) is None and LatentRange.from_artefact(*other) is None


def test_a_codec_other_than_the_teachers_is_refused(tiny_chain, tmp_path):
    """data.codec must be the codec the teacher was trained on (the student is exported with the
    teacher's codec, so latents of another would be decoded wrongly): a codec whose weights differ
    is refused by every distillation stage with one line naming data.codec, before any training;
    the same codec stored as fp16 (a bundled copy) is accepted."""
    from presto_cli.errors import PrestoError
    from presto_cli.io import load_artefact, save_artefact
    from presto_cli.stages.common import check_same_codec

    tensors, meta = load_artefact(tiny_chain["codec"])
    k = next(n for n, v in tensors.items() if v.is_floating_point() and v.ndim >= 2)
    other = dict(tensors)
    other[k] = tensors[k] + 0.05 * torch.randn(tensors[k].shape, generator=torch.Generator().manual_seed(0))
    save_artefact(tmp_path / "other.safetensors", other, meta)
    save_artefact(tmp_path / "half.safetensors", {n: v.half() if v.is_floating_point() else v
                                                   for n, v in tensors.items()}, meta)
    teacher_tensors, _ = load_artefact(tiny_chain["teacher"])
    check_same_codec(tiny_chain["codec"], teacher_tensors)  # its own codec: accepted
    check_same_codec(tmp_path / "half.safetensors", teacher_tensors)  # fp16 copy: accepted
    with pytest.raises(PrestoError, match="teacher's codec_source .* changed since the teacher was trained"):
        check_same_codec(tmp_path / "other.safetensors", teacher_tensors, "codec_source")  # rewritten in place

    presto("distill-layers", TINY / "presto-l.yaml", *_common(tiny_chain), "train.steps=1", "--out", tmp_path / "l")
    common = [a for a in _common(tiny_chain) if not a.startswith("data.codec=")]
    for cmd, recipe, extra in (("distill-steps", "presto-s.yaml", []), ("distill-layers", "ase.yaml", []),
                               ("combine", "presto-ls.yaml", [f"combine.layers={tmp_path / 'l' / 'model.safetensors'}"])):
        run = tmp_path / cmd
        r = presto(cmd, TINY / recipe, *common, f"data.codec={tmp_path / 'other.safetensors'}", *extra,
                   "train.steps=2", "--out", run, check=False)
        assert r.returncode == 1, (cmd, r.stderr)
        err = r.stderr.strip()
        assert "not the codec the teacher was trained on" in err and "data.codec" in err, (cmd, err)
        assert "Traceback" not in err and err.count("\n") <= 1, (cmd, err)
        assert not (run / "model.safetensors").exists()
