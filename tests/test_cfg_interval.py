"""Guidance in a limited noise interval (``--cfg-interval LO,HI``; Kynkäänniemi et al. 2024; METHOD.md
section 2, "Guidance interval"): CFG only where LO < sigma <= HI, one plain forward elsewhere, and the
NFE count says so. Known answers: a denoiser whose guided and plain outputs differ shows which was
used at each sigma (the interval's ends included or not as stated, per sample in a mixed batch); the
NFE formula equals the network calls a Heun run makes; on the bundled teacher an interval holding
every sigma gives exactly the guided samples and one holding none exactly the unguided ones."""
import pytest
import torch

from presto_cli.diffusion.edm import check_cfg_interval, denoise_fn, parse_cfg_interval
from presto_cli.diffusion.samplers import call_sigmas, get_sigmas, nfe, sample_heun
from presto_cli.errors import PrestoError


class _Fake:
    """plain D = 0, guided D = 1; counts network evaluations (a guided call is a batch of 2)."""

    def __init__(self):
        self.evals = 0

    def __call__(self, x, sigma, cond, **kw):
        self.evals += x.shape[0]
        return torch.zeros_like(x)

    def guided(self, x, sigma, cond, w, **kw):
        self.evals += 2 * x.shape[0]
        return torch.ones_like(x)


def test_guidance_only_inside_the_interval_per_sample():
    den = _Fake()
    fn = denoise_fn(den, cond=object(), w=2.0, interval=(0.5, 2.0))
    x = torch.zeros(4, 1, 2)
    out = fn(x, torch.tensor([0.5, 0.50001, 2.0, 2.00001]))  # lo excluded, hi included
    assert out[:, 0, 0].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert fn(x[:1], torch.tensor([1.0]))[0, 0, 0] == 1.0 and fn(x[:1], torch.tensor([3.0]))[0, 0, 0] == 0.0
    den.evals = 0
    fn(x[:1], torch.tensor([3.0]))
    assert den.evals == 1  # outside: one plain forward, not a guided pair
    assert denoise_fn(_Fake(), object(), 2.0)(x[:1], torch.tensor([50.0]))[0, 0, 0] == 1.0  # no interval
    assert denoise_fn(_Fake(), object(), 1.0, (0.5, 2.0))(x[:1], torch.tensor([1.0]))[0, 0, 0] == 0.0  # w = 1


@pytest.mark.parametrize("interval", [None, (0.0, 2.0), (0.3, 5.0), (100.0, 200.0)])
def test_nfe_counts_the_network_calls_of_a_heun_run(interval):
    sig = get_sigmas("heun", 12, 0.002, 80.0, 7.0)
    den = _Fake()
    sample_heun(denoise_fn(den, object(), 2.0, interval), torch.zeros(1, 1, 2), sig)
    assert den.evals == nfe("heun", 12, True, sig, interval)
    assert len(call_sigmas("heun", sig)) == 2 * 12 - 1


def test_nfe_at_interval_ends_that_fall_on_the_schedule():
    sig = get_sigmas("heun", 12, 0.002, 80.0, 7.0)
    for interval in ((0.0, float(sig[5])), (float(sig[8]), float(sig[3]))):
        den = _Fake()
        sample_heun(denoise_fn(den, object(), 2.0, interval), torch.zeros(1, 1, 2), sig)
        assert den.evals == nfe("heun", 12, True, sig, interval)


def test_parse_and_check():
    assert parse_cfg_interval(None) is None and parse_cfg_interval("all") == ()
    assert parse_cfg_interval("0,2") == (0.0, 2.0)
    for bad in ("2,1", "abc", "1", "-1,2"):
        with pytest.raises(PrestoError):
            parse_cfg_interval(bad)
    with pytest.raises(PrestoError):
        check_cfg_interval([1.0, 1.0])


def test_bundled_teacher_interval_ends():
    from presto_cli.pipeline import bundled_models, load_pipeline

    if "demo-teacher" not in bundled_models():
        pytest.skip("demo-teacher is not bundled in this build")
    pipe = load_pipeline("demo-teacher", "cpu")
    args = (["a calm piano piece"], [0], 3, "heun")
    guided = pipe.sample_latents(*args, cfg=2.0, duration=0.5)
    plain = pipe.sample_latents(*args, cfg=1.0, duration=0.5)
    assert not torch.allclose(guided, plain)
    assert torch.equal(pipe.sample_latents(*args, cfg=2.0, duration=0.5, cfg_interval=(0.0, 1000.0)), guided)
    assert torch.equal(pipe.sample_latents(*args, cfg=2.0, duration=0.5, cfg_interval=(100.0, 200.0)), plain)
    assert pipe.nfe(3, "heun", 2.0, cfg_interval=(100.0, 200.0)) == 5
    assert pipe.nfe(3, "heun", 2.0, cfg_interval=(0.0, 1000.0)) == pipe.nfe(3, "heun", 2.0, cfg_interval=()) == 10


def test_presto_s_real_score_follows_the_interval():
    """distill.cfg_interval: the DMD real score is guided only for the samples whose sigma lies in
    the interval (a student of the teacher sampled with --cfg-interval)."""
    from presto_cli.distill.presto_s import DistillConfig, real_score

    x = torch.zeros(3, 1, 2)
    out = real_score(_Fake(), x, torch.tensor([0.5, 3.0, 2.0]), object(), 2.0, (0.0, 2.0))
    assert out[:, 0, 0].tolist() == [1.0, 0.0, 1.0]
    assert real_score(_Fake(), x, torch.tensor([0.5, 3.0, 2.0]), object(), 2.0)[:, 0, 0].tolist() == [1.0] * 3
    with pytest.raises(PrestoError):
        DistillConfig(cfg_interval=[2.0, 1.0]).validate()
    DistillConfig(cfg_interval=[0.0, 2.0]).validate()
