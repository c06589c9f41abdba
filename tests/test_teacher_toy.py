"""The teacher stage end to end on a 2-D Gaussian mixture (METHOD.md sections 2 and 7).

A tiny DiT teacher trained by the real TeacherTask must sample the mixture within a stated MMD
(RBF, bandwidth 0.1, 1000 vs 1000 points: < 0.01; two true samples give ~0.0003) where an
untrained one does not (> 0.05), and must follow its text condition.
"""
from pathlib import Path

import pytest
import torch

from presto_cli.diffusion.edm import EDMDenoiser
from presto_cli.diffusion.artefact import load_teacher
from presto_cli.stages.teacher import TeacherTask
from presto_cli.errors import PrestoError
from presto_cli.models.dit import DiT
from presto_cli.recipes import load_recipe
from presto_cli.train.loop import build_task, run_stage
from toy import mmd_rbf, sample_gmm, sample_teacher, train_toy_teacher

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny" / "teacher.yaml"


def test_trained_toy_teacher_samples_the_mixture():
    teacher = train_toy_teacher("gmm2d")
    ref = sample_gmm("gmm2d", 1000, seed=1)
    assert mmd_rbf(ref, sample_gmm("gmm2d", 1000, seed=2)) < 0.003  # the yardstick
    x = sample_teacher(teacher, 1000, seed=0, steps=18, sampler="heun")
    trained = mmd_rbf(x, ref)
    torch.manual_seed(0)
    fresh = EDMDenoiser(DiT(teacher.recipe.model), teacher.recipe.edm).eval()
    untrained = mmd_rbf(sample_teacher(teacher, 1000, seed=0, denoiser=fresh), ref)
    assert trained < 0.01, trained
    assert untrained > 0.05, untrained


def test_toy_teacher_follows_text_and_cfg():
    teacher = train_toy_teacher("gmm2d")
    means = teacher.gmm.means
    for lab in (1, 2):
        labels = torch.full((300,), lab)
        near = lambda x: float(((x - means[lab]).norm(dim=1) < 0.3).float().mean())  # noqa: E731
        plain = near(sample_teacher(teacher, 300, seed=3, steps=12, labels=labels))
        guided = near(sample_teacher(teacher, 300, seed=3, steps=12, labels=labels, cfg=3.0))
        assert plain > 0.8, (lab, plain)
        assert guided >= max(plain - 0.02, 0.9), (lab, plain, guided)


def test_pooled_only_training_teaches_the_pooled_path():
    """edm.p_pooled_only (METHOD.md section 2): a teacher trained with half its samples seeing only
    the pooled text vector follows its condition when sampled pooled-only (DiTConfig.pooled_only);
    the same teacher trained without it does not (its style comes through the tokens)."""
    import copy

    means = None
    near_po = {}
    for p in (0.0, 0.5):
        teacher = train_toy_teacher("gmm2d", p_pooled_only=p)
        means = teacher.gmm.means
        den = copy.deepcopy(teacher.denoiser)
        den.net.cfg.pooled_only = True
        for lab in (1, 2):
            labels = torch.full((300,), lab)
            x = sample_teacher(teacher, 300, seed=3, steps=12, labels=labels, denoiser=den)
            near_po[p, lab] = float(((x - means[lab]).norm(dim=1) < 0.3).float().mean())
    assert near_po[0.5, 1] > 0.8 and near_po[0.5, 2] > 0.8, near_po
    assert near_po[0.0, 1] < 0.5 and near_po[0.0, 2] < 0.5, near_po


def _tiny(tmp_path, *over):
    return load_recipe(TINY, ["train.steps=6", "train.ckpt_every=3", "train.log_every=1",
                              "train.batch_size=32", *over])


def test_stage_export_load_pipeline_and_exact_resume(tmp_path):
    straight = run_stage(_tiny(tmp_path), tmp_path / "a", progress=False)
    # the same run killed after step 3 and resumed
    run_stage(_tiny(tmp_path, "train.steps=3"), tmp_path / "b", progress=False)
    resumed = run_stage(_tiny(tmp_path), tmp_path / "b", resume=True, progress=False)
    a = torch.load(tmp_path / "a" / "checkpoints" / "step_0000006.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "step_0000006.pt", weights_only=True)
    for k, v in a["task"]["net"].items():
        torch.testing.assert_close(b["task"]["net"][k], v, rtol=0, atol=0)

    den, meta, tensors = load_teacher(straight)
    assert meta["kind"] == "teacher" and meta["text"] == "hash" and meta["frames"] == 1
    assert meta["sampler"] == {"name": "heun", "steps": 18, "cfg": 1.0, "rho": 7.0, "token_shift": False,
                               "cfg_interval": []}
    assert not any(k.startswith("codec.") for k in tensors)  # toy data: no codec
    ema = {k: v for k, v in a["task"]["ema"].items()}
    for k, v in den.net.state_dict().items():
        torch.testing.assert_close(v, ema[k])
    den2, _, _ = load_teacher(resumed)
    for k, v in den.net.state_dict().items():
        torch.testing.assert_close(den2.net.state_dict()[k], v, rtol=0, atol=0)

    from presto_cli.pipeline import load_pipeline

    pipe = load_pipeline(str(straight), device="cpu")
    z = pipe.sample_latents(["top left", "bottom right"], [0, 1], steps=3)
    assert z.shape == (2, 2, 1) and torch.isfinite(z).all()
    assert pipe.nfe() == 35


def test_recipe_errors(tmp_path):
    with pytest.raises(PrestoError, match="in_channels"):
        build_task(_tiny(tmp_path, "model.in_channels=3"), tmp_path, torch.device("cpu"))
    with pytest.raises(PrestoError, match="text_dim"):
        build_task(_tiny(tmp_path, "model.text_dim=512"), tmp_path, torch.device("cpu"))
    with pytest.raises(PrestoError, match="codec"):
        build_task(_tiny(tmp_path, "data.path=some/folder"), tmp_path, torch.device("cpu"))
    with pytest.raises(PrestoError, match="toy"):
        build_task(_tiny(tmp_path, "data.path=toy:spiral"), tmp_path, torch.device("cpu"))


def test_paper_recipe_size_without_allocation():
    info = load_recipe(ROOT / "recipes" / "paper" / "teacher.yaml").describe()
    assert 0.9e9 < info["dit_params"] < 1.2e9
    assert info["tokens_max"] >= 688  # 32 s at 21.5 Hz
    demo = load_recipe(ROOT / "recipes" / "demo" / "teacher.yaml")
    assert demo.describe()["dit_params"] < 50e6
    assert isinstance(build_task(_tiny(None), Path("."), torch.device("cpu")), TeacherTask)


def test_initial_weights_depend_only_on_seed(tmp_path):
    torch.manual_seed(1)
    a = build_task(_tiny(tmp_path), tmp_path, torch.device("cpu"))
    torch.manual_seed(2)
    b = build_task(_tiny(tmp_path), tmp_path, torch.device("cpu"))
    c = build_task(_tiny(tmp_path, "seed=5"), tmp_path, torch.device("cpu"))
    for k, v in a.net.state_dict().items():
        torch.testing.assert_close(b.net.state_dict()[k], v, rtol=0, atol=0)
    assert any(not torch.equal(c.net.state_dict()[k], v) for k, v in a.net.state_dict().items())


def test_paper_recipe_forward_pass_with_shrunk_override():
    """recipes/paper/teacher.yaml builds and runs one forward pass on CPU once shrunk by overrides
    (the 128-channel mel latents, patching and text width stay the paper's)."""
    from presto_cli.diffusion.edm import Cond, EDMDenoiser
    from presto_cli.models.dit import DiT

    r = load_recipe(ROOT / "recipes" / "paper" / "teacher.yaml",
                    ["model.width=64", "model.depth=2", "model.heads=4"])
    assert r.model.in_channels == 128
    den = EDMDenoiser(DiT(r.model), r.edm).eval()
    x = torch.randn(2, 128, 43)
    cond = Cond(tokens=torch.randn(2, 5, r.model.text_dim), mask=torch.ones(2, 5, dtype=torch.bool),
                pooled=torch.randn(2, r.model.text_dim))
    with torch.no_grad():
        d = den(x, torch.tensor([0.5, 10.0]), cond)
    assert d.shape == x.shape and torch.isfinite(d).all()
