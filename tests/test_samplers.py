"""Samplers against known answers (METHOD.md sections 2, 3, 7).

* With the exact denoiser of N(0, s^2) data, the probability-flow ODE has the closed-form solution
  x(sigma) = x(sigma_0) sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)): every ODE sampler must land on it
  (and so reproduce the variance), Heun and DPM-Solver++(2M) with second-order convergence.
* With the closed-form mixture denoiser, the ODE samplers must reproduce a 1-D mixture.
* The few-step sampler with an ideal generator (a posterior sample of x0 | x_sigma) reproduces the
  data at any step count, which only holds if fresh noise is re-injected at sigma_{i+1}.
"""
import math

import pytest
import torch

from presto_cli.data.toy import gmm1d
from presto_cli.diffusion.samplers import (SAMPLERS, PerSampleNoise, get_sigmas_karras, nfe,
                                           run_sampler, sample_fewstep, sample_heun)
from presto_cli.errors import PrestoError

S = 0.5
SMIN, SMAX = 0.002, 80.0


def gauss_den(x, sigma):
    sig = sigma.view(-1, *([1] * (x.dim() - 1)))
    return S ** 2 / (S ** 2 + sig ** 2) * x


def ode_solution(x_start, s0, s1):
    return x_start * math.sqrt((S ** 2 + s1 ** 2) / (S ** 2 + s0 ** 2))


def test_karras_schedule():
    s = get_sigmas_karras(5, SMIN, SMAX, 7.0)
    assert s.shape == (6,) and float(s[-1]) == 0.0
    torch.testing.assert_close(s[[0, 4]], torch.tensor([SMAX, SMIN]))
    assert bool((s[:-1][1:] < s[:-1][:-1]).all())
    mid = (SMAX ** (1 / 7) + 0.5 * (SMIN ** (1 / 7) - SMAX ** (1 / 7))) ** 7
    assert abs(float(s[2]) - mid) < 1e-4 * mid
    assert get_sigmas_karras(1, SMIN, SMAX).tolist() == [SMAX, 0.0]
    with pytest.raises(PrestoError):
        get_sigmas_karras(0, SMIN, SMAX)


@pytest.mark.parametrize("name,steps,tol", [("euler", 200, 0.02), ("heun", 36, 0.02),
                                            ("dpmpp_2m", 36, 0.02)])
def test_ode_samplers_follow_gaussian_flow_and_variance(name, steps, tol):
    g = torch.Generator().manual_seed(0)
    n = 20000
    x_t = torch.randn(n, 1, 1, generator=g) * SMAX
    sig = get_sigmas_karras(steps, SMIN, SMAX, 7.0)
    out = SAMPLERS[name](gauss_den, x_t, sig)
    # exact map down to sigma_min, then the final denoising step D(x; sigma_min)
    exact = ode_solution(x_t, SMAX, SMIN) * S ** 2 / (S ** 2 + SMIN ** 2)
    rel = float((out - exact).abs().max() / exact.abs().max())
    assert rel < tol, rel
    var = float(out.var())
    assert abs(var - S ** 2) < 0.04 * S ** 2, var


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_convergence_order_on_known_ode(name, order):
    """Halving the step divides the error by ~2^order (log-spaced sigmas, no final 0)."""
    x0 = torch.tensor([[[1.0]], [[-2.0]]]) * 10
    s_hi, s_lo = 10.0, 0.1
    exact = ode_solution(x0, s_hi, s_lo)
    errs = []
    for n in (16, 32, 64):
        sig = torch.exp(torch.linspace(math.log(s_hi), math.log(s_lo), n + 1))
        out = SAMPLERS[name](gauss_den, x0.double(), sig.double())
        errs.append(float((out - exact.double()).abs().max()))
    r1, r2 = errs[0] / errs[1], errs[1] / errs[2]
    target = 2 ** order
    assert 0.7 * target < r2 < 1.3 * target, (errs, r1, r2)
    assert errs[2] < 0.02 * float(exact.abs().max())


def test_heun_nfe_is_2n_minus_1():
    calls = []

    def den(x, s):
        calls.append(float(s[0]))
        return gauss_den(x, s)

    sample_heun(den, torch.randn(2, 1, 1) * SMAX, get_sigmas_karras(7, SMIN, SMAX))
    assert len(calls) == 13 == nfe("heun", 7, cfg=False)
    assert nfe("heun", 7, cfg=True) == 26
    assert nfe("euler", 5, False) == 5 and nfe("dpmpp_2m", 5, True) == 10 and nfe("fewstep", 4, False) == 4
    with pytest.raises(PrestoError):
        nfe("ddim", 4, False)


def test_ode_samplers_reproduce_mixture():
    gmm = gmm1d()
    n = 6000
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(n, 1, 1, generator=g) * SMAX
    sig = get_sigmas_karras(32, SMIN, SMAX, 7.0)

    def mass(x):
        lab = (x.view(-1, 1) - gmm.means.view(1, -1)).abs().argmin(1)
        return torch.bincount(lab, minlength=3).float() / len(x)

    for name in ("heun", "dpmpp_2m", "euler"):
        steps = sig if name != "euler" else get_sigmas_karras(128, SMIN, SMAX, 7.0)
        out = SAMPLERS[name](lambda x, s: gmm.denoiser(x, s), x_t, steps).view(-1)
        m = mass(out)
        assert (m - gmm.weights).abs().max() < 0.03, (name, m)
        within = (out - gmm.means.view(-1)[(out.view(-1, 1) - gmm.means.view(1, -1)).abs().argmin(1)]).std()
        assert abs(float(within) - 0.08) < 0.015, (name, float(within))
    # the test has power: a single Gaussian's denoiser with the mixture's variance gives one blob
    var = gmm.std() ** 2
    wrong = sample_heun(lambda x, s: var / (var + s.view(-1, 1, 1) ** 2) * x, x_t, sig).view(-1)
    assert (mass(wrong) - gmm.weights).abs().max() > 0.05 or \
        abs(float((wrong - gmm.means.view(-1)[(wrong.view(-1, 1) - gmm.means.view(1, -1)).abs().argmin(1)]).std()) - 0.08) > 0.05


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_fewstep_with_ideal_generator_reproduces_data(steps):
    gmm = gmm1d()
    n = 6000
    noise = PerSampleNoise(range(n))
    sig = get_sigmas_karras(steps, SMIN, SMAX, 7.0)
    x = noise.randn((1, 1)) * sig[0]
    g = torch.Generator().manual_seed(5)
    calls = []

    def G(x, s):  # ideal generator: a sample of x0 | x_sigma
        calls.append(float(s[0]))
        return gmm.posterior_sample(x, s, g)

    out = sample_fewstep(G, x, sig, noise=noise).view(-1)
    assert calls == pytest.approx(sig[:-1].tolist(), rel=1e-5)
    ref = gmm.sample(n, torch.Generator().manual_seed(6))[0].view(-1)
    assert abs(float(out.std()) - float(ref.std())) < 0.02
    lab = (out.view(-1, 1) - gmm.means.view(1, -1)).abs().argmin(1)
    m = torch.bincount(lab, minlength=3).float() / n
    assert (m - gmm.weights).abs().max() < 0.03


def test_fewstep_renoise_level_matters():
    """Gaussian data, ideal generator: output variance is s^2 only if x = x_hat + sigma_{i+1} eps.
    The same sampler fed a schedule whose noise level disagrees with what G assumes fails."""
    n = 20000
    noise = PerSampleNoise(range(n))
    sig = torch.tensor([SMAX, 1.0, 0.3, 0.0])
    g = torch.Generator().manual_seed(7)

    def G(x, s, assumed=None):
        s = (s if assumed is None else assumed).view(-1, 1, 1)
        m = S ** 2 / (S ** 2 + s ** 2) * x
        sd = (S ** 2 * s ** 2 / (S ** 2 + s ** 2)).sqrt()
        return m + sd * torch.randn(x.shape, generator=g)

    x = noise.randn((1, 1)) * sig[0]
    out = sample_fewstep(G, x, sig, noise=noise)
    assert abs(float(out.var()) - S ** 2) < 0.04 * S ** 2
    # a generator that believes the noise is 2x what was injected: variance off
    out_bad = sample_fewstep(lambda x, s: G(x, s, assumed=2 * s), x, sig, noise=noise)
    assert abs(float(out_bad.var()) - S ** 2) > 0.1 * S ** 2


def test_per_sample_noise_depends_only_on_seed():
    a = PerSampleNoise([3, 7, 11]).randn((2, 5))
    b = PerSampleNoise([7]).randn((2, 5))
    assert torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[1])
    # a full few-step run: a clip depends on its seed, not on its batch-mates
    sig = get_sigmas_karras(3, SMIN, SMAX)

    def G(x, s):
        return 0.5 * x / (1 + s.view(-1, 1, 1))

    n1 = PerSampleNoise([1, 2, 3])
    o1 = sample_fewstep(G, n1.randn((1, 4)) * sig[0], sig, noise=n1)
    n2 = PerSampleNoise([2])
    o2 = sample_fewstep(G, n2.randn((1, 4)) * sig[0], sig, noise=n2)
    torch.testing.assert_close(o1[1], o2[0])


def test_registry_and_unknown_name():
    assert set(SAMPLERS) == {"euler", "heun", "dpmpp_2m", "fewstep"}
    with pytest.raises(PrestoError, match="unknown sampler"):
        run_sampler("heunn", gauss_den, torch.zeros(1, 1, 1), get_sigmas_karras(2, SMIN, SMAX))


def test_fewstep_schedule_spends_every_step_on_noise():
    """The few-step schedule never ends on sigma_min (where a generator step is the identity), so
    n steps are n useful steps; the ODE samplers keep the Karras schedule."""
    from presto_cli.diffusion.samplers import get_sigmas, get_sigmas_karras

    for n in (1, 2, 4, 8):
        s = get_sigmas("fewstep", n, 0.002, 80.0, 7.0)
        assert len(s) == n + 1 and float(s[-1]) == 0.0 and float(s[0]) == 80.0
        assert (s[:-1] > 0.01).all() and (s[:-2] > s[1:-1]).all()
        k = get_sigmas_karras(n + 1, 0.002, 80.0, 7.0)
        torch.testing.assert_close(s[:-1], k[:n])
    torch.testing.assert_close(get_sigmas("heun", 4, 0.002, 80.0, 7.0), get_sigmas_karras(4, 0.002, 80.0, 7.0))
