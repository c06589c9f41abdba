"""Samplers with one signature (METHOD.md sections 2 and 3).

``sample(model_fn, x, sigmas, noise=None, callback=None, disable=True) -> x0`` where
``model_fn(x, sigma_batch) -> denoised`` (an EDM denoiser, possibly guided, or a few-step
generator), ``x`` is the starting point already at ``sigmas[0]`` (``sigmas[0] * eps``) and
``sigmas`` is a decreasing 1-D tensor ending with 0 (:mod:`presto_cli.diffusion.schedules`).

* ``euler``: first-order probability-flow ODE steps (N evaluations for N steps).
* ``heun``: EDM's second-order Heun (Karras et al. 2022, Alg. 1 without churn), 2N - 1 evaluations.
* ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022), N evaluations.
* ``fewstep``: the Presto-S sampler: ``x_hat = G(x; sigma_i)``, then, unless last,
  ``x = x_hat + sigma_{i+1} eps'`` with fresh per-sample noise (N evaluations).

Per-sample noise (:class:`PerSampleNoise`) makes a clip depend only on its seed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from presto_cli.diffusion.schedules import fewstep_sigmas, karras_sigmas, sampler_sigmas
from presto_cli.errors import PrestoError

__all__ = ["PerSampleNoise", "get_sigmas_karras", "sample_euler", "sample_heun",
           "sample_dpmpp_2m", "sample_fewstep", "SAMPLERS", "get_sigmas_fewstep", "get_sigmas", "nfe", "get_sampler", "run_sampler"]

ModelFn = Callable[[Tensor, Tensor], Tensor]


class PerSampleNoise:
    """One ``torch.Generator`` per sample, seeded with the sample's seed (EDM's
    StackedRandomGenerator idea): the noise of sample b depends only on ``seeds[b]``."""

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape_per_sample: Sequence[int], dtype=torch.float32) -> Tensor:
        """Standard normal noise of shape ``(B, *shape_per_sample)``."""
        return torch.stack([torch.randn(tuple(shape_per_sample), generator=g, device=self.device,
                                        dtype=dtype) for g in self.generators])

    def randn_like(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self):
            raise PrestoError(f"noise has {len(self)} seeds for a batch of {x.shape[0]}")
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)


# The schedules live in presto_cli.diffusion.schedules (one formula); these are their names here.
get_sigmas_karras = karras_sigmas
get_sigmas_fewstep = fewstep_sigmas
get_sigmas = sampler_sigmas


def _sig(s: Tensor, x: Tensor) -> Tensor:
    return s.to(device=x.device, dtype=torch.float32).expand(x.shape[0])


def _start(sigmas: Tensor, x: Tensor) -> Tensor:
    """Check the schedule; the state the sampler updates (float32)."""
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise PrestoError("sigmas must be a 1-D tensor with at least two values (ending with 0)")
    return x.float()


def _denoise(model_fn: ModelFn, x: Tensor, sigmas: Tensor, i: int, callback) -> tuple[Tensor, Tensor, Tensor]:
    """Step ``i``'s ``(sigma_i, sigma_{i+1}, D(x; sigma_i))``, reported to ``callback``."""
    s, s_next = sigmas[i], sigmas[i + 1]
    with torch.no_grad():  # the samplers' only network calls: no graph anywhere in sampling
        den = model_fn(x, _sig(s, x)).float()
    if callback is not None:
        callback({"i": i, "x": x, "sigma": s, "denoised": den})
    return s, s_next, den


def _steps(n: int, disable: bool):
    if disable:
        yield from range(n)
        return
    from presto_cli.runtime import progress

    with progress("sampling", n) as tick:
        for i in range(n):
            yield i
            tick.advance()


def sample_euler(model_fn: ModelFn, x: Tensor, sigmas: Tensor, noise: PerSampleNoise | None = None,
                 callback=None, disable: bool = True) -> Tensor:
    """Euler steps of the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma``."""
    x = _start(sigmas, x)
    for i in _steps(len(sigmas) - 1, disable):
        s, s_next, den = _denoise(model_fn, x, sigmas, i, callback)
        x = den if float(s_next) == 0.0 else x + (s_next - s) * (x - den) / s
    return x


def sample_heun(model_fn: ModelFn, x: Tensor, sigmas: Tensor, noise: PerSampleNoise | None = None,
                callback=None, disable: bool = True) -> Tensor:
    """EDM Heun: Euler predictor, trapezoidal corrector except on the last step to sigma = 0."""
    x = _start(sigmas, x)
    for i in _steps(len(sigmas) - 1, disable):
        s, s_next, den = _denoise(model_fn, x, sigmas, i, callback)
        d = (x - den) / s
        x_pred = x + (s_next - s) * d
        if float(s_next) == 0.0:
            x = x_pred
        else:
            with torch.no_grad():
                den2 = model_fn(x_pred, _sig(s_next, x)).float()
            d2 = (x_pred - den2) / s_next
            x = x + (s_next - s) * 0.5 * (d + d2)
    return x


def sample_dpmpp_2m(model_fn: ModelFn, x: Tensor, sigmas: Tensor,
                    noise: PerSampleNoise | None = None, callback=None,
                    disable: bool = True) -> Tensor:
    """DPM-Solver++(2M) in log-SNR time ``t = -ln sigma`` with a second-order multistep
    correction of the data prediction; first and last steps are first order."""
    x = _start(sigmas, x)
    prev_den: Tensor | None = None
    h_prev: Tensor | None = None
    for i in _steps(len(sigmas) - 1, disable):
        s, s_next, den = _denoise(model_fn, x, sigmas, i, callback)
        if float(s_next) == 0.0:
            x = den
            break
        h = torch.log(s) - torch.log(s_next)  # t_next - t
        if prev_den is None:
            d_hat = den
        else:
            r = h_prev / h
            d_hat = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * prev_den
        # exact integration of the linear part: x_next = (s_next/s) x + (1 - e^{-h}) d_hat
        x = (s_next / s) * x - torch.expm1(-h) * d_hat
        prev_den, h_prev = den, h
    return x


def sample_fewstep(model_fn: ModelFn, x: Tensor, sigmas: Tensor, noise: PerSampleNoise | None = None,
                   callback=None, disable: bool = True) -> Tensor:
    """Presto-S few-step sampling (METHOD.md section 3): ``x_hat = G(x; sigma_i)``; unless last,
    ``x = x_hat + sigma_{i+1} eps'`` with fresh noise from ``noise`` (per sample)."""
    x = _start(sigmas, x)
    n = len(sigmas) - 1
    x_hat = x
    for i in _steps(n, disable):
        s, s_next, x_hat = _denoise(model_fn, x, sigmas, i, callback)
        if i == n - 1 or float(s_next) == 0.0:
            break
        if noise is None:  # never the global RNG: a clip must depend on its seed only
            raise PrestoError("the few-step sampler needs per-sample noise for more than one step",
                              "pass noise=PerSampleNoise(seeds)")
        eps = noise.randn_like(x_hat)
        x = x_hat + s_next * eps
    return x_hat


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "fewstep": sample_fewstep,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    if name not in SAMPLERS:
        import difflib

        m = difflib.get_close_matches(name, list(SAMPLERS), n=1)
        hint = f"did you mean '{m[0]}'?" if m else f"choose one of {', '.join(SAMPLERS)}"
        raise PrestoError(f"unknown sampler '{name}'", hint)
    return SAMPLERS[name]


def run_sampler(name: str, model_fn: ModelFn, x: Tensor, sigmas: Tensor,
           noise: PerSampleNoise | None = None, callback=None, disable: bool = True) -> Tensor:
    """Run the sampler called ``name`` (convenience over ``SAMPLERS[name](...)``)."""
    return get_sampler(name)(model_fn, x, sigmas, noise=noise, callback=callback, disable=disable)


def call_sigmas(sampler: str, sigmas: Tensor) -> list[float]:
    """The noise level of every network call the sampler makes on schedule ``sigmas``, in order:
    one per step at sigma_i, and Heun's corrector at sigma_{i+1} wherever sigma_{i+1} > 0."""
    get_sampler(sampler)
    s = [float(v) for v in sigmas]
    calls = []
    for i in range(len(s) - 1):
        calls.append(s[i])
        if sampler == "heun" and s[i + 1] > 0:
            calls.append(s[i + 1])
    return calls


def nfe(sampler: str, steps: int, cfg: bool, sigmas: Tensor | None = None,
        interval: tuple[float, float] | None = None) -> int:
    """Network evaluations per clip: Heun 2N - 1, the others N; CFG doubles (a batch of 2), only
    at the calls inside ``interval`` (``lo < sigma <= hi`` on schedule ``sigmas``) when one is given."""
    get_sampler(sampler)
    if steps < 1:
        raise PrestoError(f"steps must be >= 1, got {steps}")
    n = 2 * steps - 1 if sampler == "heun" else steps
    if not cfg:
        return n
    if interval is None or sigmas is None:
        return 2 * n
    calls = call_sigmas(sampler, sigmas)
    return len(calls) + sum(interval[0] < c <= interval[1] for c in calls)
