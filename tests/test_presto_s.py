"""Presto-S (METHOD.md section 3): known-answer toy distillation and the mechanics of one iteration.

The toy: the shared tiny DiT teacher (tests/toy.py) on the captioned 2-D Gaussian mixture
(2-channel, 1-frame latents). Its one-step output collapses each caption's mode to a point; a
correct Presto-S run must bring one- and two-step samples close to the data (MMD, bandwidth 0.1),
and the same run with the DMD gradient's sign flipped must not.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from toy import mmd_rbf, sample_gmm, sample_teacher, train_toy_teacher  # noqa: E402

from presto_cli.data.toy import ToyDataset  # noqa: E402
from presto_cli.diffusion.edm import EDMConfig, sigma_inf_from_uniform, sigma_train_from_normal  # noqa: E402
from presto_cli.distill.discriminator import DiscriminatorHead, lsgan_d_loss, lsgan_g_loss  # noqa: E402
from presto_cli.diffusion.samplers import get_sigmas  # noqa: E402
from presto_cli.distill.noise import SigmaDist  # noqa: E402
from presto_cli.distill.presto_s import (DistillConfig, OptimConfig, PrestoS, dmd_gradient,  # noqa: E402
                                         dmd_loss)
from presto_cli.errors import PrestoError  # noqa: E402
from presto_cli.train.loop import BatchSource, Context, seeded  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOISE_FLOOR = 0.005  # |MMD| of two independent 1000-point samples of gmm2d is below this


@pytest.fixture(scope="module")
def teacher():
    return train_toy_teacher("gmm2d", 300, 0)


@pytest.fixture(scope="module")
def ref():
    return sample_gmm("gmm2d", 1000, 7)


def make(teacher, ocfg: OptimConfig | None = None, batch: int = 64, **distill) -> tuple:
    distill.setdefault("disc_blocks", [2])
    ps = PrestoS(teacher.denoiser, DistillConfig(**distill),
                 ocfg or OptimConfig(lr_gen=5e-4, lr_fake=2e-3, ema=0.9), w=1.0)
    ctx = Context(0, torch.device("cpu"), "fp32", batch)
    src = BatchSource(ToyDataset("toy:gmm2d", 4096, 0), 0, ctx)
    return ps, ctx, src


def run(teacher, ps, ctx, src, iters: int, start: int = 0) -> list[dict]:
    out = []
    for it in range(start, start + iters):
        ctx.step = it
        b = src.batch(it)
        out.append(ps.train_step(b["latents"], teacher.task.text(b["caption"], "cpu"), ctx))
    return out


# ---------------------------------------------------------------------------------------------
# (a) the known answer


@pytest.mark.slow
def test_toy_distillation_reaches_the_data_and_a_flipped_dmd_sign_does_not(teacher, ref):
    """One- and (really) two-step samples of the distilled generator land near the data; the same
    run with the DMD gradient's sign flipped does not. Deterministic: every draw and the head's
    initial weights come from seeds, so the figures below repeat exactly in any test order on one
    machine; across CPUs (AVX2 vs AVX-512 matmul kernels) the float rounding differs and a short
    GAN/DMD run lands elsewhere in its spread, so the bounds hold over that spread.

    Measured (MMD, bandwidth 0.1, 1000 vs 1000): teacher Heun-18 0.0018, undistilled one step
    0.094, flipped sign after 60 iterations about 0.18. After 200 iterations the spread over
    three draw seeds was wide (one step 0.013-0.028, two steps 0.020-0.042: a 2026-12-02 CPU failed
    the old 200-iteration bounds); after 400 (used here): one step 0.016-0.020, two steps (p_gen on
    the 2-step schedule's points, distill.inf_steps=2, sigma [80, 2.52]) 0.022-0.035. Bounds: one
    step below 0.025 (5x the teacher's), two steps below half the undistilled model's, and the
    2-step generator's two steps no worse than its own one step (0.033 vs 0.054).
    Not asserted, because it does not hold (issue 29, measured with the settings here): the 2-step
    generator's two steps are 2.4x worse than the 1-step generator's one (0.033 vs 0.014); a
    generator trained on the continuous p_gen gets worse with steps (1/2/4: 0.014/0.042/0.095), and
    one trained on the 4-step points too (inf_steps=4: 0.009/0.041/0.033)."""
    m_teacher = mmd_rbf(sample_teacher(teacher, 1000, 1, steps=18, sampler="heun"), ref)
    m_undistilled = mmd_rbf(sample_teacher(teacher, 1000, 1, steps=1, sampler="fewstep"), ref)
    assert m_teacher < NOISE_FLOOR and m_undistilled > 0.05  # the toy is what we think it is
    bound = 5 * max(m_teacher, NOISE_FLOOR)  # 0.025: within 5x of the teacher's samples
    far_below = 0.25 * m_undistilled  # 0.024: at least 4x better than the undistilled model

    two = get_sigmas("fewstep", 2, 0.002, 80.0, 7.0)
    assert float(two[1]) > 1000 * 0.002  # the 2-step check really takes two steps ([80, 2.52])
    ms = []
    for steps, extra in ((1, {}), (2, {"inf_steps": 2})):
        ps, ctx, src = make(teacher, update_ratio=3, **extra)
        run(teacher, ps, ctx, src, 400)
        G = ps.export_generator()
        ms.append(mmd_rbf(sample_teacher(teacher, 1000, 1, steps=steps, sampler="fewstep",
                                         denoiser=G), ref))
    # the generator trained for 2 steps, sampled in 1 (issue 29: N steps must be no worse than one)
    one_of_two = mmd_rbf(sample_teacher(teacher, 1000, 1, steps=1, sampler="fewstep", denoiser=G), ref)
    assert ms[0] < bound and ms[0] < far_below, (ms, m_teacher, m_undistilled)
    assert ms[1] < 0.5 * m_undistilled, (ms, m_teacher, m_undistilled)
    assert ms[1] <= one_of_two, (ms, one_of_two)  # measured 0.033 vs 0.054

    bad, ctx, src = make(teacher, update_ratio=3, dmd_sign=-1.0)
    run(teacher, bad, ctx, src, 60)
    mb = mmd_rbf(sample_teacher(teacher, 1000, 1, steps=1, sampler="fewstep",
                                denoiser=bad.export_generator()), ref)
    print(f"presto-s toy: teacher {m_teacher:.5f} undistilled {m_undistilled:.5f} "
          f"1-step {ms[0]:.5f} 2-step {ms[1]:.5f} flipped {mb:.5f}")
    assert mb > bound and mb > 0.5 * m_undistilled, (mb, bound)


# ---------------------------------------------------------------------------------------------
# (b) the GAN term reaches G through the frozen fake score and head


def test_gan_term_moves_generator_and_generator_step_leaves_fake_score_alone(teacher):
    def one_gen_iteration(nu1: float):
        # lr_fake = 0: the fake score stays the teacher, so m_f = m_r and the DMD gradient is 0
        ocfg = OptimConfig(lr_gen=1e-3, lr_fake=0.0, weight_decay=0.0, ema=0.0)
        ps, ctx, src = make(teacher, ocfg, batch=16, update_ratio=1, nu1=nu1)
        g0 = [p.detach().clone() for p in ps.generator.parameters()]
        f0 = [p.detach().clone() for p in list(ps.fake.parameters()) + list(ps.head.parameters())]
        m = run(teacher, ps, ctx, src, 1)[0]
        moved = max(float((a - p.detach()).abs().max()) for a, p in zip(g0, ps.generator.parameters()))
        fake_same = all(torch.equal(a, p) for a, p in
                        zip(f0, list(ps.fake.parameters()) + list(ps.head.parameters())))
        return m, moved, fake_same, ps

    m, moved, fake_same, ps = one_gen_iteration(nu1=1.0)
    assert m["gen_step"] == 1.0 and m["dmd_grad_norm"] == 0.0  # DMD contributes nothing here
    assert moved > 1e-5  # ... so the generator moved because of the GAN term alone
    assert fake_same  # and the generator step did not touch the fake score or the head
    assert all(p.requires_grad for p in ps.fake.parameters())  # unfrozen again afterwards
    _, moved0, _, _ = one_gen_iteration(nu1=0.0)
    assert moved0 == 0.0

    # directly: the generator loss gives gradients to G only
    ps, ctx, src = make(teacher, batch=8, nu1=1.0)
    b = src.batch(0)
    cond = teacher.task.text(b["caption"], "cpu")
    x_hat, _ = ps.generate(b["latents"], cond, ctx, 8, grad=True)
    ps.fake.requires_grad_(False)
    ps.head.requires_grad_(False)
    _, l_gan, _ = ps.generator_loss(x_hat, cond, ctx, 8)
    l_gan.backward()
    assert sum(float(p.grad.abs().sum()) for p in ps.generator.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in list(ps.fake.parameters()) + list(ps.head.parameters()))


# ---------------------------------------------------------------------------------------------
# (c) the update ratio


def test_generator_updates_exactly_every_rth_iteration(teacher):
    ps, ctx, src = make(teacher, batch=8, update_ratio=3)
    changed_g, changed_f = [], []
    for it in range(7):
        g0 = [p.detach().clone() for p in ps.generator.parameters()]
        f0 = [p.detach().clone() for p in ps.fake.parameters()]
        m = run(teacher, ps, ctx, src, 1, start=it)[0]
        changed_g.append(any(not torch.equal(a, p) for a, p in zip(g0, ps.generator.parameters())))
        changed_f.append(any(not torch.equal(a, p) for a, p in zip(f0, ps.fake.parameters())))
        assert m["gen_step"] == float(it in (2, 5))
    assert changed_g == [False, False, True, False, False, True, False]
    assert all(changed_f)
    assert ps.gen_updates == 2 and ps.fake_updates == 7


# ---------------------------------------------------------------------------------------------
# (d) the teacher is frozen


def test_teacher_gets_no_gradient_and_no_update(teacher):
    before = {k: v.clone() for k, v in teacher.denoiser.state_dict().items()}
    ps, ctx, src = make(teacher, batch=8, update_ratio=1)
    run(teacher, ps, ctx, src, 2)
    assert ps.teacher is teacher.denoiser
    for k, v in teacher.denoiser.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in teacher.denoiser.parameters())
    opt_params = {id(p) for o in (ps.opt_gen, ps.opt_fake) for g in o.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in teacher.denoiser.parameters()}
    # the generator and fake score are copies, not views of the teacher
    assert not {id(p) for p in ps.generator.parameters()} & {id(p) for p in teacher.denoiser.parameters()}


# ---------------------------------------------------------------------------------------------
# the losses and distributions on their own


def test_dmd_gradient_and_loss_known_values():
    x_hat = torch.tensor([[[1.0], [3.0]], [[0.0], [0.0]]], requires_grad=True)  # [2, 2, 1]
    m_r = torch.tensor([[[0.0], [1.0]], [[1.0], [-1.0]]])
    m_f = torch.tensor([[[2.0], [1.0]], [[1.0], [1.0]]])
    g = dmd_gradient(m_r, m_f, x_hat)
    # sample 0: mean|x - m_r| = (1 + 2)/2 = 1.5; sample 1: (1 + 1)/2 = 1
    assert torch.allclose(g, torch.tensor([[[2 / 1.5], [0.0]], [[0.0], [2.0]]]))
    loss = dmd_loss(x_hat, g)
    loss.backward()
    assert torch.allclose(x_hat.grad, g / x_hat.numel())  # d L_DMD / d x_hat = g (mean reduction)
    # a gradient step on L_DMD moves x_hat toward the real score's estimate, away from the fake's
    assert float(((x_hat - 0.1 * g - m_r).abs()).sum().detach()) < float((x_hat - m_r).abs().sum().detach())


def test_discriminator_separates_a_shifted_generator_and_not_the_data_itself(teacher):
    """Known answer for the GAN's discriminator (fake score + head, trained by ``fake_loss``): against a
    "generator" whose samples are the data moved by 1.0 it learns d_real -> 1, d_fake -> 0; against
    one that returns the data itself it cannot do better than 0.5 for both (the LSGAN optimum)."""
    from presto_cli.distill.presto_s import optimizer_step

    out = {}
    for shift, blocks in ((0.0, [2]), (1.0, [2]), ("multi", [0, 1, 3])):
        ps, ctx, src = make(teacher, disc_blocks=blocks)
        assert sorted(int(k) for k in ps.head.heads) == blocks  # one conv head per block read
        d = []
        for it in range(100):
            ctx.step = it
            b = src.batch(it)
            x = b["latents"].float()
            l, m = ps.fake_loss(x + (1.0 if shift == "multi" else shift), x,
                                teacher.task.text(b["caption"], "cpu"), ctx, x.shape[0])
            optimizer_step(ps.opt_fake, l, [ps.fake, ps.head], ctx, 10.0, lr=2e-3)
            assert m["d_gap"] == m["d_real"] - m["d_fake"] and next(iter(m)) == "d_gap"
            d.append((m["d_real"], m["d_fake"]))
        out[shift] = [sum(v) / 20 for v in zip(*d[-20:])]
    assert out[1.0][0] - out[1.0][1] > 0.4, out  # measured: 0.87 vs 0.14 (0.50 vs 0.50 at shift 0)
    assert abs(out[0.0][0] - out[0.0][1]) < 0.05 and abs(out[0.0][0] - 0.5) < 0.1, out
    # the DMD2-style head on several of the fake score's blocks (per-block conv stacks, logits
    # averaged) separates the shifted generator too
    assert out["multi"][0] - out["multi"][1] > 0.4, out


def test_lsgan_losses_and_head_shapes():
    with seeded(0, "test-head"):
        head = DiscriminatorHead(width=16, blocks=[0, 3], hidden=8)
    g = torch.Generator().manual_seed(0)
    h = {0: torch.randn(4, 5, 16, generator=g), 3: torch.randn(4, 5, 16, generator=g)}
    assert head(h).shape == (4, 5)  # per-frame logits
    one, zero = torch.ones(3), torch.zeros(3)
    assert float(lsgan_d_loss(one, zero)) == 0.0 and float(lsgan_d_loss(zero, one)) == 2.0
    assert float(lsgan_g_loss(one)) == 0.0 and float(lsgan_g_loss(zero)) == 1.0
    # with one latent frame the head still depends on its input (a per-channel norm would not)
    h1 = {0: torch.randn(4, 1, 16, generator=g), 3: torch.randn(4, 1, 16, generator=g)}
    assert float(head(h1).detach().std()) > 0
    with pytest.raises(PrestoError):
        DiscriminatorHead(width=16, blocks=[])


def test_noise_distributions_match_their_definitions():
    edm = EDMConfig()
    g = torch.Generator().manual_seed(0)
    z, u, c = torch.randn(20000, generator=g), torch.rand(20000, generator=g), torch.rand(20000, generator=g)
    train = SigmaDist.from_edm("train", edm).from_noise(z, u, c)
    inf = SigmaDist.from_edm("inf", edm).from_noise(z, u, c)
    assert torch.allclose(train, sigma_train_from_normal(edm, z))
    assert torch.allclose(inf, sigma_inf_from_uniform(edm, u))
    mix = SigmaDist.from_edm("train/inf", edm).from_noise(z, u, c)
    assert torch.equal(mix, torch.where(c < 0.5, train, inf))
    # histogram of ln(sigma) of the mixture against its analytic density
    d = SigmaDist.from_edm("train/inf", edm)
    edges = torch.linspace(math.log(0.01), math.log(50.0), 13)
    ls = mix.log()
    for lo, hi in zip(edges[:-1], edges[1:]):
        frac = float(((ls >= lo) & (ls < hi)).float().mean())
        mid = torch.exp((lo + hi) / 2).reshape(1)
        expected = float(d.log_density(mid).exp()) * float(hi - lo)
        assert abs(frac - expected) < 0.02, (float(lo), frac, expected)
    # the discrete variant: exactly the points of the 4-step few-step sampler's schedule
    pts = SigmaDist.from_edm("inf", edm, steps=4).from_noise(z, u, c)
    want = get_sigmas("fewstep", 4, edm.sigma_min, edm.sigma_max, edm.rho)[:-1]
    assert torch.equal(torch.unique(pts), torch.sort(want).values)
    with pytest.raises(PrestoError):
        SigmaDist(kind="nope")


def test_bad_distill_settings_are_refused():
    with pytest.raises(PrestoError):
        DistillConfig(update_ratio=0).validate()
    with pytest.raises(PrestoError):
        DistillConfig(nu1=-1).validate()
    with pytest.raises(PrestoError, match="p_pooled_only"):
        DistillConfig(p_pooled_only=1.5).validate()


def test_pooled_only_dropout_reaches_the_generator_alone(teacher):
    """distill.p_pooled_only: at p = 1 the generator sees every caption as its pooled vector alone
    (edm.drop_tokens), so its output equals the output on the token-dropped condition, while the
    fake score and the teacher keep the full caption; at p = 0 nothing is drawn or changed."""
    from presto_cli.diffusion.edm import drop_tokens

    b = 8
    ps0, ctx, src = make(teacher, batch=b, update_ratio=1)
    ps1, _, _ = make(teacher, batch=b, update_ratio=1, p_pooled_only=1.0)
    batch = src.batch(0)
    cond = teacher.task.text(batch["caption"], "cpu")
    ctx.step = 0
    assert ps0.generator_cond(cond, ctx, "gen", b) is cond
    c1 = ps1.generator_cond(cond, ctx, "gen", b)
    assert torch.equal(c1.pooled, cond.pooled) and not bool(c1.tokens.abs().sum())
    assert c1.mask[:, 0].all() and not c1.mask[:, 1:].any()
    x = batch["latents"].float()
    x1, sig1 = ps1.generate(x, cond, ctx, b, grad=False)
    x0, sig0 = ps0.generate(x, drop_tokens(cond, 1.0, torch.zeros(b)), ctx, b, grad=False)
    xf, _ = ps0.generate(x, cond, ctx, b, grad=False)
    assert torch.equal(sig0, sig1) and torch.allclose(x1, x0, atol=1e-6)
    assert (x1 - xf).abs().max() > 1e-4  # the tokens matter to this generator, so the drop shows
    # the fake score's loss is computed on the full caption: same draws, same x_hat -> same loss
    l1, _ = ps1.fake_loss(x1, x, cond, ctx, b)
    l0, _ = ps0.fake_loss(x1, x, cond, ctx, b)
    assert torch.equal(l1, l0)
    # the regression term (teacher trajectories made with the full caption) feeds the generator the
    # same dropped condition: p = 1 on full-caption pairs equals p = 0 on token-dropped pairs
    from presto_cli.distill.regression import RegressionPairs

    g = torch.Generator().manual_seed(3)
    states = x.unsqueeze(1) + torch.randn((b, 2) + tuple(x.shape[1:]), generator=g)
    sigmas = torch.tensor([2.0, 0.5])
    ps1.reg = RegressionPairs(states, sigmas, x, cond)
    ps0.reg = RegressionPairs(states, sigmas, x, drop_tokens(cond, 1.0, torch.zeros(b)))
    with torch.no_grad():
        r1, r0 = ps1.regression_loss(ctx, b), ps0.regression_loss(ctx, b)
        ps0.reg = RegressionPairs(states, sigmas, x, cond)
        rf = ps0.regression_loss(ctx, b)
    torch.testing.assert_close(r1, r0, atol=1e-6, rtol=1e-6)
    assert (r1 - rf).abs() > 1e-6  # and the full caption gives another loss


# ---------------------------------------------------------------------------------------------
# (e) end to end through the Trainer with the tiny recipe, export, exact resume


def test_tiny_recipe_end_to_end_with_exact_resume(teacher, tmp_path):
    from presto_cli.io import load_artefact
    from presto_cli.pipeline import load_pipeline
    from presto_cli.recipes import load_recipe
    from presto_cli.train.loop import run_stage

    tpath = tmp_path / "teacher.safetensors"
    teacher.task.export(tpath)
    common = [f"data.teacher={tpath}", "train.batch_size=16", "train.log_every=1",
              "distill.update_ratio=2"]

    full = load_recipe(REPO / "recipes/tiny/presto-s.yaml", common + ["train.steps=4"])
    art = run_stage(full, tmp_path / "full", progress=False)
    tensors, meta = load_artefact(art)
    assert meta["kind"] == "presto-s" and meta["sampler"]["name"] == "fewstep"
    assert meta["sampler"]["cfg"] == 1.0 and meta["sampler"]["steps"] == 4
    assert any(k.startswith("dit.") for k in tensors)

    # kill after step 2 (the checkpoint), then resume to step 4: identical metrics and weights
    part = load_recipe(REPO / "recipes/tiny/presto-s.yaml", common + ["train.steps=2"])
    run_stage(part, tmp_path / "resumed", progress=False)
    (tmp_path / "resumed" / "model.safetensors").unlink()
    run_stage(full, tmp_path / "resumed", resume=True, progress=False)

    def lines(d):
        out = []
        for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            rec.pop("time")
            out.append(rec)
        return out

    assert lines("full") == lines("resumed")
    t2, _ = load_artefact(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(tensors[k], t2[k]) for k in tensors)
    m = lines("full")[-1]
    for key in ("fake_dsm", "disc_loss", "d_real", "d_fake", "d_gap", "dmd_grad_norm", "dmd_gap", "gen_gan"):
        assert key in m  # the diagnostics users need to read DMD curves
    # d_real - d_fake is in metrics.jsonl and the run's log.txt at every log step (log_every=1)
    recs = lines("full")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert r["d_gap"] == pytest.approx(r["d_real"] - r["d_fake"], abs=2e-6)
    logged = [json.loads(s) for s in (tmp_path / "full" / "log.txt").read_text().splitlines()
              if s.startswith("{")]
    assert [r["d_gap"] for r in logged] == [r["d_gap"] for r in recs]

    # the artefact generates through the pipeline with any step count, one evaluation per step
    pipe = load_pipeline(str(art), device="cpu")
    assert pipe.nfe() == 4 and pipe.nfe(steps=2) == 2


def test_backward_simulation_inputs_lie_on_the_generators_schedule(teacher):
    """Backward simulation trains G on exactly the sigmas the exported sampler calls it at."""
    from presto_cli.diffusion.samplers import get_sigmas

    ps, ctx, src = make(teacher, batch=64, gen_input="backward-sim", gen_steps=3)
    b = src.batch(0)
    cond = teacher.task.text(b["caption"], "cpu")
    x_in, sig = ps._backward_sim(b["latents"], cond, ctx, 64)
    sched = get_sigmas("fewstep", 3, 0.002, 80.0, 7.0)[:-1]  # what `generate` runs for 3 steps
    assert torch.equal(torch.unique(sig), torch.sort(sched).values)  # all 3, and nothing else
    assert float(sched[-1]) > 50 * 0.002  # never sigma_min, where a generator step does nothing
    first = torch.isclose(sig, sched[0])
    assert 60 < float(x_in[first].std()) < 100  # k = 0: pure noise at sigma_max
    late = torch.isclose(sig, sched[-1])
    assert float(x_in[late].abs().max()) < 3  # k = N-1: the simulated near-clean state
    m = run(teacher, ps, ctx, src, 1, start=0)[0]
    assert math.isfinite(m["fake_loss"])


def test_bf16_teacher_and_autocast_run_and_keep_the_generator_fp32(teacher):
    import copy

    t16 = copy.deepcopy(teacher.denoiser)
    ps = PrestoS(t16, DistillConfig(update_ratio=1, teacher_dtype="bf16"),
                 OptimConfig(lr_gen=1e-4, lr_fake=1e-4, ema=0.0), w=1.5)
    assert all(p.dtype == torch.bfloat16 for p in t16.parameters())
    assert all(p.dtype == torch.float32 for p in ps.generator.parameters())
    ctx = Context(0, torch.device("cpu"), "bf16", 8)
    src = BatchSource(ToyDataset("toy:gmm2d", 64, 0), 0, ctx)
    b = src.batch(0)
    m = ps.train_step(b["latents"], teacher.task.text(b["caption"], "cpu"), ctx)
    assert m["gen_step"] == 1.0 and all(math.isfinite(v) for v in m.values())


def _perturb(module, seed: int, scale: float = 0.05) -> None:
    """Move every weight of ``module`` by seeded noise (so it differs from the teacher)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_backward_simulation_rolls_out_the_generator_with_fresh_noise(teacher):
    """Backward simulation (issue 29): with the same seeded draws, the inputs it returns are exactly
    those of rolling out the *generator* (not the teacher) k_i steps of its own few-step sampler from
    sigma_max z, with fresh noise at every re-noising (not the initial noise again)."""
    from presto_cli.diffusion.samplers import get_sigmas

    n, b = 3, 32
    ps, ctx, src = make(teacher, batch=b, gen_input="backward-sim", gen_steps=n)
    _perturb(ps.generator, 11)  # the generator is no longer the teacher
    batch = src.batch(0)
    cond = teacher.task.text(batch["caption"], "cpu")
    ctx.step = 5
    x_in, sig = ps._backward_sim(batch["latents"], cond, ctx, b)

    sched = get_sigmas("fewstep", n, 0.002, 80.0, 7.0)[:-1]
    k = torch.clamp((ctx.rand("gen/k", (b,)) * n).floor().long(), max=n - 1)
    assert set(k.tolist()) == {0, 1, 2}
    z = ctx.randn("gen/eps0", (b, 2, 1))

    def rollout(net, fresh: bool) -> torch.Tensor:
        out = torch.empty(b, 2, 1)
        with torch.no_grad():
            for i in range(b):
                cur = sched[0] * z[i:i + 1]
                for j in range(int(k[i])):
                    den = net(cur, sched[j].view(1), cond.index(slice(i, i + 1))).float()
                    eps = ctx.randn(f"gen/eps{j + 1}", (b, 2, 1))[i:i + 1] if fresh else z[i:i + 1]
                    cur = den + sched[j + 1] * eps
                out[i] = cur[0]
        return out

    want = rollout(ps.generator, fresh=True)
    torch.testing.assert_close(sig, sched[k])
    torch.testing.assert_close(x_in, want, rtol=1e-5, atol=1e-5)
    late = k > 0
    # the alternatives are measurably different inputs, so the check above can tell them apart
    assert (rollout(teacher.denoiser, fresh=True) - want)[late].abs().max() > 1e-2
    assert (rollout(ps.generator, fresh=False) - want)[late].abs().max() > 1e-2


def test_generator_step_uses_the_normalised_dmd_gradient_per_sample(teacher):
    """The DMD term of the generator loss (issue 29): with the same draws, dL_DMD/dx_hat equals
    (m_f - m_r) / mean|x_hat - m_r| per sample (times 1/numel of the mean), computed here from the
    teacher and a fake score that differs from it; and the normalised update is scale invariant."""
    b = 16
    ps, ctx, src = make(teacher, batch=b, nu1=0.0)
    _perturb(ps.fake, 12)  # m_f != m_r
    batch = src.batch(0)
    cond = teacher.task.text(batch["caption"], "cpu")
    ctx.step = 4
    g = torch.Generator().manual_seed(5)
    x_hat = (batch["latents"].float() + 0.3 * torch.randn(batch["latents"].shape, generator=g))
    x_hat[:4] *= 10.0  # samples far from the real score's estimate: a large normaliser
    x_hat.requires_grad_(True)
    ps.fake.requires_grad_(False)
    l_dmd, _, m = ps.generator_loss(x_hat, cond, ctx, b)
    l_dmd.backward()
    sigma = ps.sigma(ps.p_dmd, ctx, "gen/dmd_sigma", b)
    with torch.no_grad():
        x_s = x_hat.detach() + sigma.view(-1, 1, 1) * ctx.randn("gen/dmd_eps", (b, 2, 1))
        m_r = teacher.denoiser(x_s, sigma, cond).float()  # w = 1
        m_f = ps.fake(x_s, sigma, cond).float()
    norm = (x_hat.detach() - m_r).abs().mean(dim=(1, 2), keepdim=True)
    assert float(norm.max() / norm.min()) > 5 and float((norm - 1).abs().max()) > 0.5  # per sample, not 1
    want = (m_f - m_r) / norm
    assert float(want.abs().max()) > 1e-3
    torch.testing.assert_close(x_hat.grad * x_hat.numel(), want, rtol=1e-4, atol=1e-6)
    # scale invariance: scaling a sample's x_hat - m_r and m_f - m_r by c leaves its g unchanged
    c = torch.tensor([3.0] * 8 + [0.2] * 8).view(-1, 1, 1)
    g1 = dmd_gradient(m_r, m_f, x_hat.detach())
    g2 = dmd_gradient(m_r, m_r + c * (m_f - m_r), m_r + c * (x_hat.detach() - m_r))
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
