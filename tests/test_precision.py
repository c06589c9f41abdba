"""The fast inference path (`--precision`, `--compile`): bf16 samples agree with fp32 within a
stated tolerance for the bundled teacher and every bundled student; a compiled DiT gives the eager
one's samples; the sidecar records both; fp16 on the CPU is refused in one line.

Tolerance (relative L2 distance of the latents, ||z_bf16 - z_fp32|| / ||z_fp32||), from runs of
these exact settings (2 prompts, 2 s): demo-s 0.015, demo-ls 0.019 (4 few-step steps); demo-teacher
0.061, demo-l 0.072 (3 guided Heun steps: bf16 keeps 8 bits of mantissa, ~0.4% per weight, and
guidance amplifies the difference of two evaluations). Tolerances: 0.05 for the few-step students,
0.15 for the guided Heun samplers. The test also checks that the DiT's weights are bf16 and the
distance is not 0, so a cast that never happens fails."""
import dataclasses
import json

import pytest
import torch

from conftest import presto

PROMPTS, SEEDS, SECONDS = ["an upbeat jazz trio", "dark techno with a heavy kick"], [0, 1], 2.0
CASES = [("demo-teacher", 3, "heun", 0.15), ("demo-s", 4, None, 0.05), ("demo-l", 3, "heun", 0.15),
         ("demo-ls", 4, None, 0.05)]


def _pipes(name, precisions):
    from presto_cli.io import load_artefact
    from presto_cli.pipeline import Pipeline, resolve_model

    path = resolve_model(name)
    tensors, meta = load_artefact(path)
    return [Pipeline(tensors, meta, torch.device("cpu"), path, p) for p in precisions]


@pytest.mark.parametrize("name,steps,sampler,tol", CASES)
def test_bf16_agrees_with_fp32(name, steps, sampler, tol):
    fp32, bf16 = _pipes(name, ("fp32", "bf16"))
    assert fp32.denoiser.net.x_in.weight.dtype == torch.float32
    assert bf16.denoiser.net.x_in.weight.dtype == torch.bfloat16  # the DiT really runs in bf16
    z = [p.sample_latents(PROMPTS, SEEDS, steps, sampler, None, SECONDS, match=False) for p in (fp32, bf16)]
    assert z[1].dtype == torch.float32 and torch.isfinite(z[1]).all()
    rel = float((z[1] - z[0]).norm() / z[0].norm())
    assert 0 < rel < tol, (name, rel)
    a = [p.decode(x) for p, x in zip((fp32, bf16), z)]  # the codec decodes in fp32 either way
    assert a[0].shape == a[1].shape and torch.isfinite(a[1]).all()


def _tiny_pipeline(compile_):
    """A latent-only Presto-S-like model on a tiny random DiT (hash text: no weights to load)."""
    from presto_cli.io import prefixed
    from presto_cli.models.dit import DiT, DiTConfig
    from presto_cli.pipeline import Pipeline
    from presto_cli.seeds import seeded

    cfg = DiTConfig(in_channels=4, width=32, depth=2, heads=2, text_dim=384, patch=2, max_frames=16,
                    noise_embed_dim=16)
    with seeded(0, "test", "tiny-dit"):
        net = DiT(cfg)
    meta = {"kind": "presto-s", "model": dataclasses.asdict(cfg), "edm": {}, "text": "hash",
            "sampler": {"name": "fewstep", "steps": 2, "cfg": 1.0}}
    return Pipeline(prefixed(net.state_dict(), "dit"), meta, torch.device("cpu"), None, "fp32", compile_)


@pytest.mark.slow  # compiling takes 30 s or more on a busy CPU
def test_compiled_agrees_with_eager():
    eager, comp = _tiny_pipeline(False), _tiny_pipeline(True)
    assert comp.compiled and type(comp.denoiser.net).__name__ == "OptimizedModule"
    z = [p.sample_latents(PROMPTS, SEEDS, 2, None, None, None, match=False) for p in (eager, comp)]
    assert z[0].shape == (2, 4, 16)
    assert torch.allclose(z[0], z[1], rtol=1e-4, atol=1e-5), float((z[0] - z[1]).abs().max())


def test_sidecar_records_precision_and_fp16_is_refused_on_cpu(tmp_path):
    out = tmp_path / "x.wav"
    presto("generate", "jazz trio", "--model", "demo-s", "-o", out, "--seed", 0, "--duration", 0.5,
           "--precision", "bf16", "--device", "cpu")
    side = json.loads(out.with_suffix(".wav.json").read_text())
    assert side["precision"] == "bf16" and side["compile"] is False and side["channels"] == 1
    for bad, words in (("fp16", "not supported on the CPU"), ("fp8", "unknown precision")):
        r = presto("generate", "jazz trio", "--model", "demo-s", "-o", tmp_path / "y.wav", "--precision", bad,
                   "--device", "cpu", check=False)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "y.wav").exists()


def test_defaults_per_device():
    from presto_cli.pipeline import check_precision, inference_defaults

    assert inference_defaults(torch.device("cpu")) == ("fp32", False)
    assert inference_defaults(torch.device("cuda")) == ("bf16", False)
    assert check_precision(None, torch.device("cpu")) == "fp32"
    assert check_precision("fp16", torch.device("cuda")) == "fp16"
