"""The training latents' range and x0 clipping (presto_cli/diffusion/latent_range.py; METHOD.md
section 2, "x0 clipping"): known answers for the range (per channel, over clips and frames), the clamp
(per channel, identity on real latents), and a toy sampler whose guided denoiser overshoots: with the
clip every sample lies inside the data's range, and with an exact unguided denoiser the clip changes
nothing, so it acts on x0 predictions, never on the noisy state."""
import pytest
import torch

from presto_cli.diffusion.latent_range import LatentRange, x0_clipped
from presto_cli.diffusion.samplers import get_sigmas, sample_heun


def _data(seed: int = 0) -> torch.Tensor:
    """Six 2-channel, 3-frame latents; channel 0 lies in [0, 1], channel 1 in [-3, -2]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 2, 3, generator=g)
    x[:, 1] = x[:, 1] - 3.0
    return x


def test_range_is_per_channel_over_clips_and_frames():
    x = _data()
    rng = LatentRange.measure(iter(x))  # one [C, F] latent at a time
    assert torch.equal(rng.hi, torch.stack([x[:, 0].max(), x[:, 1].max()]))
    assert torch.equal(rng.lo, torch.stack([x[:, 0].min(), x[:, 1].min()]))
    assert rng.n == 6 and rng.channels == 2
    again = LatentRange.measure([x[:4], x[4:]])  # batches give the same range
    assert torch.equal(again.hi, rng.hi) and torch.equal(again.lo, rng.lo) and again.n == 6
    # the two channels' ranges do not overlap, so a range over the wrong axis cannot pass
    assert rng.hi[1] < rng.lo[0]


def test_clip_is_identity_on_real_latents_and_clamps_per_channel():
    x = _data()
    rng = LatentRange.measure(x)
    assert torch.equal(rng.clip(x), x)
    y = torch.tensor([[[5.0, -5.0, 0.5]], [[5.0, -5.0, -2.5]]]).reshape(1, 2, 3)
    want = torch.stack([torch.stack([rng.hi[0], rng.lo[0], torch.tensor(0.5)]),
                        torch.stack([rng.hi[1], rng.lo[1], torch.tensor(-2.5)])])[None]
    assert torch.allclose(rng.clip(y), want)
    with pytest.raises(ValueError):
        rng.clip(torch.zeros(1, 3, 3))  # wrong channel count


def test_artefact_round_trip(tmp_path):
    rng = LatentRange.measure(_data(), source="data/x")
    rng.save(tmp_path / "r.safetensors")
    back = LatentRange.load(tmp_path / "r.safetensors")
    assert torch.equal(back.hi, rng.hi) and torch.equal(back.lo, rng.lo) and back.n == 6 and back.source == "data/x"
    assert LatentRange.from_artefact({}, {}) is None
    with pytest.raises(ValueError):
        LatentRange(torch.zeros(2), torch.ones(2))  # lo > hi


def _exact_denoiser(points: torch.Tensor, blur: float = 0.0):
    """The exact denoiser of the uniform mixture of ``points`` [N, C, F] (its posterior mean);
    ``blur`` > 0: an underfit one, the posterior mean at noise sqrt(sigma^2 + blur^2) (a blurred
    prediction, as a network's unconditional branch is)."""
    def d(x, sigma, **kw):
        s = (sigma.reshape(-1, 1) ** 2 + blur ** 2).sqrt()
        d2 = ((x[:, None] - points[None]) ** 2).flatten(2).sum(-1)  # [B, N]
        w = torch.softmax(-d2 / (2 * s ** 2), dim=1)
        return torch.einsum("bn,ncf->bcf", w, points)
    return d


def _sample(fn, n=64, seed=1, steps=24):
    sig = get_sigmas("heun", steps, 0.002, 80.0, 7.0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 3, generator=g) * sig[0]
    return sample_heun(fn, x, sig, disable=True)


def test_toy_guided_overshoot_is_clipped_and_exact_sampling_is_unchanged():
    pts = _data()
    rng = LatentRange.measure(pts)
    cond, uncond, blurred = _exact_denoiser(pts[:2]), _exact_denoiser(pts), _exact_denoiser(pts, blur=0.5)
    w = 3.0

    def guided(x, sigma, **kw):  # CFG against a blurred unconditional prediction overshoots the data
        u = blurred(x, sigma)
        return u + w * (cond(x, sigma) - u)

    raw = _sample(guided)
    hi, lo = rng.hi[None, :, None], rng.lo[None, :, None]
    outside = ((raw > hi + 1e-4) | (raw < lo - 1e-4)).float().mean()
    assert outside > 0.05  # CFG's extrapolation leaves the data's range: the case the clip is for
    clipped = _sample(x0_clipped(guided, rng))
    assert bool(((clipped <= hi + 1e-5) & (clipped >= lo - 1e-5)).all())
    # the clip only moves what lay outside: clipped samples are the raw ones clamped, element by element
    assert (clipped - torch.minimum(torch.maximum(raw, lo), hi)).abs().max() < 0.05
    # an exact denoiser's x0 is a mean of data points, inside the range: the clip is a no-op there;
    # a clip of the noisy state instead (x starts at sigma 80) would wreck these samples
    a, b = _sample(uncond), _sample(x0_clipped(uncond, rng))
    assert torch.allclose(a, b, atol=1e-5)
    nearest = ((a[:, None] - pts[None]) ** 2).flatten(2).sum(-1).min(dim=1).values
    assert nearest.max() < 1e-3


def test_x0_clipped_passes_keyword_arguments():
    rng = LatentRange.measure(_data())
    seen = {}

    def fn(x, sigma, **kw):
        seen.update(kw)
        return x

    out = x0_clipped(fn, rng)(torch.full((1, 2, 3), 9.0), torch.ones(1), frame_offset=-2)
    assert seen == {"frame_offset": -2} and torch.allclose(out[0, :, 0], rng.hi)
