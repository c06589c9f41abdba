"""EDM preconditioning, loss weighting, noise-level distributions and CFG (METHOD.md sections 2, 7).

The scalings below are re-derived here from Karras et al. (2022), Table 1, independently of
presto_cli.diffusion.edm, so a wrong c_skip / c_out / c_in / c_noise makes the tests fail.
"""
import math

import pytest
import torch
from torch import nn

from presto_cli.diffusion.edm import (Cond, EDMConfig, EDMDenoiser, drop_condition, edm_loss,
                                      edm_weight, sample_sigma_inf, sample_sigma_train,
                                      sigma_inf_from_uniform)
from presto_cli.diffusion.samplers import get_sigmas
from presto_cli.errors import PrestoError
from presto_cli.models.dit import DiT, DiTConfig

SD = 0.5  # sigma_data
S = 0.8  # the data's std: deliberately != sigma_data so every scaling matters


def paper_scalings(sigma):
    c_skip = SD ** 2 / (sigma ** 2 + SD ** 2)
    c_out = sigma * SD / torch.sqrt(sigma ** 2 + SD ** 2)
    c_in = 1 / torch.sqrt(sigma ** 2 + SD ** 2)
    return c_skip, c_out, c_in


class ExactGaussianF(nn.Module):
    """The network output F that makes D the exact denoiser of N(0, S^2) data, written from the
    paper's scalings: F = (D* - c_skip x) / c_out, with x recovered from the network input."""

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = gain  # != 1 gives a deliberately wrong denoiser

    def forward(self, x_in, c_noise, tokens, mask, pooled, uncond=None, **kw):
        sigma = torch.exp(4 * c_noise).view(-1, *([1] * (x_in.dim() - 1)))  # c_noise = ln(sigma)/4
        c_skip, c_out, c_in = paper_scalings(sigma)
        x = x_in / c_in
        d_star = self.gain * S ** 2 / (S ** 2 + sigma ** 2) * x
        return (d_star - c_skip * x) / c_out


def test_exact_network_gives_closed_form_gaussian_denoiser():
    den = EDMDenoiser(ExactGaussianF(), EDMConfig(sigma_data=SD))
    x = torch.randn(7, 3, 5)
    for s in [0.002, 0.1, 0.5, 1.0, 10.0, 80.0]:
        d = den(x, torch.full((7,), s), None)
        torch.testing.assert_close(d, S ** 2 / (S ** 2 + s ** 2) * x, rtol=1e-4, atol=1e-6)
    # per-sample sigmas
    sig = torch.tensor([0.01, 0.3, 1.0, 3.0, 9.0, 30.0, 80.0])
    d = den(x, sig, None)
    torch.testing.assert_close(d, (S ** 2 / (S ** 2 + sig ** 2)).view(-1, 1, 1) * x, rtol=1e-4, atol=1e-6)


def test_scalings_match_paper_table():
    den = EDMDenoiser(ExactGaussianF(), EDMConfig(sigma_data=SD))
    sig = torch.tensor([0.002, 0.3, 2.0, 80.0])
    c_skip, c_out, c_in, c_noise = den.get_scalings(sig)
    ps = paper_scalings(sig)
    for a, b in zip((c_skip, c_out, c_in), ps):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(c_noise, sig.log() / 4)


def test_edm_loss_expectation_and_minimiser():
    """E[lambda(sigma)|D*(x0+sigma eps) - x0|^2] = lambda(sigma) * posterior variance
    S^2 sigma^2/(S^2+sigma^2) for the exact denoiser; a wrong denoiser scores worse."""
    g = torch.Generator().manual_seed(0)
    n = 40000
    x0 = S * torch.randn(n, 1, 1, generator=g)
    noise = torch.randn(n, 1, 1, generator=g)
    good = EDMDenoiser(ExactGaussianF(), EDMConfig(sigma_data=SD))
    bad = EDMDenoiser(ExactGaussianF(gain=0.5), EDMConfig(sigma_data=SD))
    for s in [0.05, 0.5, 3.0]:
        sigma = torch.full((n,), s)
        loss = edm_loss(good, x0, sigma, noise, None)
        lam = (s ** 2 + SD ** 2) / (s * SD) ** 2
        expect = lam * S ** 2 * s ** 2 / (S ** 2 + s ** 2)
        assert abs(float(loss.mean()) - expect) < 0.03 * expect, (s, float(loss.mean()), expect)
        # a denoiser scaled by 0.5 adds lambda * 0.5^2 * Var(D*) = lambda * 0.25 S^4/(S^2+sigma^2)
        excess = lam * 0.25 * S ** 4 / (S ** 2 + s ** 2)
        bad_loss = float(edm_loss(bad, x0, sigma, noise, None).mean())
        assert abs(bad_loss - float(loss.mean()) - excess) < 0.2 * excess
    torch.testing.assert_close(edm_weight(torch.tensor([2.0]), SD),
                               torch.tensor([(4 + 0.25) / (2 * 0.5) ** 2]))


def test_sigma_train_is_lognormal():
    cfg = EDMConfig(p_mean=-1.2, p_std=1.2)
    s = sample_sigma_train(cfg, 50000, torch.Generator().manual_seed(1))
    ls = s.log()
    assert abs(float(ls.mean()) + 1.2) < 0.03
    assert abs(float(ls.std()) - 1.2) < 0.03
    s2 = sample_sigma_train(cfg, 50000, torch.Generator().manual_seed(1))
    assert torch.equal(s, s2)  # all randomness from the given generator


def test_sigma_inf_continuous_and_discrete():
    cfg = EDMConfig(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    s = sample_sigma_inf(cfg, 20000, torch.Generator().manual_seed(2))
    assert float(s.min()) >= 0.002 - 1e-6 and float(s.max()) <= 80.0 + 1e-3
    # the median of u ~ U(0,1) maps to the Karras point at u = 0.5
    mid = (80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert abs(float(s.median()) - mid) / mid < 0.05
    # N-step schedule: only the N points of the few-step sampler's schedule, each about equally
    # often ([80, 17.5, 2.52, 0.17]: never sigma_min, where a generator step does nothing)
    sched = get_sigmas("fewstep", 4, 0.002, 80.0, 7.0)[:-1]
    torch.testing.assert_close(sched, torch.tensor([80.0, 17.5278, 2.5152, 0.1698]), rtol=1e-3, atol=0)
    sd = sample_sigma_inf(cfg, 8000, torch.Generator().manual_seed(3), N=4)
    d = (sd[:, None] - sched[None]).abs().min(1).values
    assert float(d.max()) < 1e-3 * 80
    counts = torch.stack([(sd - v).abs() < 1e-4 * max(v, 1e-3) for v in sched]).sum(1).float()
    assert float(counts.min()) > 0.2 * 8000
    # u = 0 -> sigma_max, u = 1 -> sigma_min
    ends = sigma_inf_from_uniform(cfg, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(ends, torch.tensor([80.0, 0.002]), rtol=1e-4, atol=1e-6)


def _random_dit(**kw):
    torch.manual_seed(0)
    net = DiT(DiTConfig(in_channels=4, width=32, depth=3, heads=4, max_frames=16, noise_embed_dim=32, **kw))
    with torch.no_grad():  # leave adaLN-zero init so every path matters
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def test_cfg_w1_equals_conditional_and_w0_equals_null():
    den = EDMDenoiser(_random_dit(), EDMConfig())
    x = torch.randn(3, 4, 9)
    sig = torch.tensor([0.3, 2.0, 15.0])
    # token sequences of different lengths: guided() concatenates (and pads) them
    cond = Cond(torch.randn(3, 5, 384), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool(),
                torch.randn(3, 384))
    with torch.no_grad():
        d_c = den(x, sig, cond)
        d_u = den(x, sig, cond.with_uncond(torch.ones(3, dtype=torch.bool)))
        torch.testing.assert_close(den.guided(x, sig, cond, 1.0), d_c, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(den.guided(x, sig, cond, 0.0), d_u, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(den.guided(x, sig, cond, 3.0), d_u + 3.0 * (d_c - d_u),
                                   rtol=1e-4, atol=1e-5)
        w = torch.tensor([1.0, 2.0, 0.5])
        torch.testing.assert_close(den.guided(x, sig, cond, w),
                                   d_u + w.view(-1, 1, 1) * (d_c - d_u), rtol=1e-4, atol=1e-5)
        assert (d_c - d_u).abs().max() > 1e-3  # the condition matters


def test_drop_condition_rate_and_determinism():
    cond = Cond(torch.zeros(10000, 1, 8), torch.ones(10000, 1, dtype=torch.bool), torch.zeros(10000, 8))
    u = torch.rand(10000, generator=torch.Generator().manual_seed(4))
    dropped = drop_condition(cond, 0.1, u).uncond
    assert abs(float(dropped.float().mean()) - 0.1) < 0.01
    assert torch.equal(dropped, u < 0.1)
    assert not drop_condition(cond, 0.0, u).uncond.any()


def test_config_validation():
    with pytest.raises(PrestoError):
        EDMConfig(sigma_min=1.0, sigma_max=0.5).validate()
    with pytest.raises(PrestoError):
        EDMConfig(p_uncond=1.0).validate()
    with pytest.raises(PrestoError):
        EDMConfig(p_pooled_only=1.5).validate()
    EDMConfig().validate()
    assert math.isclose(EDMConfig().sigma_data, 0.5)
