"""Teacher-trajectory regression for Presto-S (presto_cli/distill/regression.py, METHOD.md section 3).

Known answer on the 2-D toy mixture: trained on the regression loss alone (no DMD, no GAN), the
one-step generator must reproduce the teacher's deterministic ODE map z -> x_0 on noises it never
saw, which the teacher-initialised generator (it predicts E[x_0 | x_T], one point per condition)
does not."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy import toy_cond, train_toy_teacher  # noqa: E402

from presto_cli.data.toy import ToyDataset  # noqa: E402
from presto_cli.diffusion.edm import denoise_fn  # noqa: E402
from presto_cli.diffusion.samplers import sample_heun  # noqa: E402
from presto_cli.diffusion.schedules import fewstep_points  # noqa: E402
from presto_cli.distill.presto_s import DistillConfig, OptimConfig, PrestoS  # noqa: E402
from presto_cli.distill.regression import RegressionPairs, teacher_trajectories, trajectory_grid  # noqa: E402
from presto_cli.errors import PrestoError  # noqa: E402
from presto_cli.train.loop import BatchSource, Context  # noqa: E402


@pytest.fixture(scope="module")
def teacher():
    return train_toy_teacher("gmm2d", 300, 0)


def _labels(teacher, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(teacher.gmm.weights.double(), n, replacement=True, generator=g)


def _pairs(teacher, n: int, seed: int, points: torch.Tensor, steps: int = 18):
    labels = _labels(teacher, n, seed)
    cond = toy_cond(teacher, labels)
    noise = torch.randn((n, teacher.dim, 1), generator=torch.Generator().manual_seed(seed + 1))
    states, ends = teacher_trajectories(teacher.denoiser, noise, cond, 1.0, points, steps,
                                        teacher.recipe.edm.rho)
    return noise, cond, states, ends


def _regression_only(teacher, points, states, targets, cond, ema: float) -> PrestoS:
    """A Presto-S with DMD and the GAN off and the regression loss on the given trajectories."""
    ps = PrestoS(teacher.denoiser, DistillConfig(update_ratio=1, dmd_sign=0.0, nu1=0.0, nu2=0.0,
                                                 reg_weight=1.0, disc_blocks=[2]),
                 OptimConfig(lr_gen=2e-3, lr_fake=1e-3, ema=ema), w=1.0, seed=0)
    ps.reg = RegressionPairs(states, points, targets, cond)
    return ps


def _iterate(ps: PrestoS, teacher, iterations: int, batch: int, data_n: int) -> dict:
    """``iterations`` train steps on toy batches; the last step's metrics."""
    ctx = Context(0, torch.device("cpu"), "fp32", batch)
    src = BatchSource(ToyDataset("toy:gmm2d", data_n, 0), 0, ctx)
    for it in range(iterations):
        ctx.step = it
        b = src.batch(it)
        m = ps.train_step(b["latents"], teacher.task.text(b["caption"], "cpu"), ctx)
    return m


def test_trajectories_lie_on_the_few_step_points_and_end_where_heun_does(teacher):
    e = teacher.recipe.edm
    points = fewstep_points(4, e.sigma_min, e.sigma_max, e.rho)
    grid = trajectory_grid(points, 18, e.sigma_min, e.sigma_max, e.rho)
    assert all(bool((grid == p).any()) for p in points)
    assert float(grid[-1]) == 0.0 and bool((grid[:-1] > grid[1:]).all())
    noise, cond, states, ends = _pairs(teacher, 32, 5, points)
    assert states.shape == (32, 4, teacher.dim, 1) and ends.shape == (32, teacher.dim, 1)
    torch.testing.assert_close(states[:, 0], noise * float(points[0]))  # the first state is sigma_max z
    direct = sample_heun(denoise_fn(teacher.denoiser, cond, 1.0), noise * grid[0], grid)
    torch.testing.assert_close(ends, direct)  # the same ODE the Heun sampler integrates
    # the state at sigma_k continued with Heun from sigma_k ends at the same point
    k = 2
    rest = grid[int((grid == points[k]).nonzero()[0, 0]):]
    torch.testing.assert_close(sample_heun(denoise_fn(teacher.denoiser, cond, 1.0), states[:, k], rest), ends)


@pytest.mark.slow
def test_regression_alone_learns_the_teachers_ode_map(teacher):
    """Measured (mean squared distance to the teacher's ODE end, 512 unseen noises, one step from
    sigma_max): teacher-initialised generator 0.258 (it predicts each condition's mean); after 150
    iterations of regression on 1024 trajectories 0.0020, far inside the 0.25x bound; with the
    targets shuffled across trajectories (pairs that do not match) 0.488, above 0.5x."""
    e = teacher.recipe.edm
    points = fewstep_points(1, e.sigma_min, e.sigma_max, e.rho)  # one-step: [sigma_max]
    _, cond, states, ends = _pairs(teacher, 1024, 11, points)
    test_noise, test_cond, _, test_ends = _pairs(teacher, 512, 99, points)

    def err(gen) -> float:
        with torch.no_grad():
            s = torch.full((512,), float(points[0]))
            out = gen(test_noise * float(points[0]), s, test_cond)
        return float((out - test_ends).pow(2).sum(1).mean())

    def train(targets: torch.Tensor) -> float:
        ps = _regression_only(teacher, points, states, targets, cond, ema=0.0)
        m = _iterate(ps, teacher, 150, 64, 4096)
        assert "reg_loss" in m
        return err(ps.export_generator())

    initial = err(teacher.denoiser)
    trained = train(ends)
    wrong = train(ends[torch.randperm(len(ends), generator=torch.Generator().manual_seed(3))])
    print(f"regression toy: initial {initial:.4f} trained {trained:.4f} shuffled targets {wrong:.4f}")
    assert trained < 0.25 * initial, (trained, initial)
    assert wrong > 0.5 * initial, (wrong, initial)  # pairs that do not match: nothing to learn


def test_regression_weight_without_pairs_is_refused(teacher):
    with pytest.raises(PrestoError):
        DistillConfig(reg_weight=-1.0).validate()
    with pytest.raises(PrestoError):
        DistillConfig(reg_weight=1.0, reg_steps=1).validate()
    ps = PrestoS(teacher.denoiser, DistillConfig(update_ratio=1, reg_weight=1.0, disc_blocks=[2]),
                 OptimConfig(lr_gen=1e-3, lr_fake=1e-3), w=1.0, seed=0)
    ctx = Context(0, torch.device("cpu"), "fp32", 8)
    b = BatchSource(ToyDataset("toy:gmm2d", 64, 0), 0, ctx).batch(0)
    with pytest.raises(PrestoError, match="no teacher trajectories"):
        ps.train_step(b["latents"], teacher.task.text(b["caption"], "cpu"), ctx)


def test_regression_only_iterations_skip_the_fake_score_and_give_the_same_generator(teacher):
    """With DMD and the GAN off, an iteration is the generator's regression update alone: the fast
    path leaves the fake score untouched and ends at the generator the full iteration reaches
    (whose DMD and GAN terms contribute exactly zero gradient)."""
    e = teacher.recipe.edm
    points = fewstep_points(2, e.sigma_min, e.sigma_max, e.rho)
    _, cond, states, ends = _pairs(teacher, 64, 21, points, steps=8)

    def run(fast: bool):
        ps = _regression_only(teacher, points, states, ends, cond, ema=0.9)
        ps.fast_regression = fast
        fake0 = {k: v.clone() for k, v in ps.fake.state_dict().items()}
        m = _iterate(ps, teacher, 6, 16, 256)
        fake_moved = any(not torch.equal(fake0[k], v) for k, v in ps.fake.state_dict().items())
        return ps.export_generator().state_dict(), m, fake_moved, ps.gen_updates

    g_fast, m_fast, moved_fast, n_fast = run(True)
    g_full, m_full, moved_full, n_full = run(False)
    assert n_fast == n_full == 6 and not moved_fast and moved_full
    assert "fake_dsm" in m_full and "fake_dsm" not in m_fast
    assert m_fast["reg_loss"] == pytest.approx(m_full["reg_loss"], rel=1e-5)
    for k in g_full:
        torch.testing.assert_close(g_fast[k], g_full[k], rtol=1e-5, atol=1e-6)


def test_each_drawn_state_comes_with_its_own_noise_level_and_its_own_trajectory_end():
    """RegressionPairs.draw over a 4-point schedule (issue 29): every drawn input is the state of
    one trajectory at one level k, and it must come with sigma_k (not a neighbour's level) and with
    that trajectory's end. Each state holds a value that names (i, k), so any mis-pairing shows."""
    n_pairs, pts = 16, torch.tensor([80.0, 9.7, 1.1, 0.06])  # a multi-point few-step schedule
    i = torch.arange(n_pairs).view(-1, 1, 1, 1).float()
    k = torch.arange(len(pts)).view(1, -1, 1, 1).float()
    states = (100 * i + k).expand(n_pairs, len(pts), 2, 3).clone()  # [N, n, C, F]: value 100 i + k
    targets = -torch.arange(n_pairs).view(-1, 1, 1).float().expand(n_pairs, 2, 3).clone()
    pairs = RegressionPairs(states, pts, targets, None)
    ctx = Context(3, torch.device("cpu"), "fp32", 256)
    seen = set()
    for step in range(3):
        ctx.step = step
        x_in, sigma, y, cond = pairs.draw(ctx, 256, "cpu")
        assert cond is None and x_in.shape == (256, 2, 3) and sigma.shape == (256,)
        v = x_in[:, 0, 0]
        ii, kk = (v // 100).long(), (v % 100).long()
        assert torch.equal(sigma, pts[kk]), "a state drawn with another level's sigma"
        assert torch.equal(y[:, 0, 0], -ii.float()), "a state drawn with another trajectory's end"
        seen |= set(kk.tolist())
    assert seen == {0, 1, 2, 3}  # every level is drawn


def test_regression_pairs_from_teacher_trajectories_sit_at_their_sigma(teacher):
    """On the teacher's own 4-step trajectories: the state paired with sigma_k, continued with the
    teacher's Heun ODE from sigma_k, ends at its target, and it does not from the next level's
    sigma (so a pairing shifted by one level gives inputs off the trajectory)."""
    e = teacher.recipe.edm
    points = fewstep_points(4, e.sigma_min, e.sigma_max, e.rho)
    _, cond, states, ends = _pairs(teacher, 48, 31, points, steps=12)
    pairs = RegressionPairs(states, points, ends, cond)
    ctx = Context(0, torch.device("cpu"), "fp32", 48)
    x_in, sigma, y, c = pairs.draw(ctx, 48, "cpu")
    grid = trajectory_grid(points, 12, e.sigma_min, e.sigma_max, e.rho)
    errs = {"own": [], "next": []}
    for p in range(1, len(points) - 1):  # interior levels: a next level exists and is not the end
        rows = torch.isclose(sigma, points[p]).nonzero().flatten()
        assert len(rows) > 0
        sub = c.index(rows)
        for name, start in (("own", points[p]), ("next", points[p + 1])):
            rest = grid[int((grid == start).nonzero()[0, 0]):]
            end = sample_heun(denoise_fn(teacher.denoiser, sub, 1.0), x_in[rows], rest)
            errs[name].append(float((end - y[rows]).pow(2).mean()))
    assert max(errs["own"]) < 1e-8, errs
    assert min(errs["next"]) > 1e-4, errs
