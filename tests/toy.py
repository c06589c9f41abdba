"""Shared toy helpers for the diffusion and distillation tests (stable API; import from tests).

    from toy import (gmm2d, gmm1d, GMM, mmd_rbf, train_toy_teacher, ToyTeacher,
                     sample_teacher, toy_cond)        # or: from tests.toy import ... (same module)

* ``gmm2d()`` / ``gmm1d()``: captioned Gaussian mixtures (see :mod:`presto_cli.data.toy`) with
  ``.sample(n, generator) -> (x [n, D], labels [n])``, the exact ``.denoiser(x, sigma, labels=None)``
  and ``.posterior_sample(x, sigma, generator)``. As latents, points are ``[n, D, 1]``.
* ``mmd_rbf(x, y, bandwidth=0.1)``: unbiased squared MMD with a Gaussian RBF kernel, float64.
  Reference values on gmm2d with bandwidth 0.1 and 1000 vs 1000 points: two independent samples of
  the mixture ~0 (|.| < 0.005); an untrained DiT teacher > 0.1.
* ``train_toy_teacher(kind="gmm2d", steps=300, seed=0, p_uncond=0.1)``: trains the real ``teacher`` stage
  (TeacherTask, hash text encoder, tiny DiT) on the mixture in ~10-20 s on one core and returns a
  :class:`ToyTeacher` (EMA denoiser, its recipe, the mixture, a text cache). Cached per process.
* ``sample_teacher(teacher, n, seed, steps=18, sampler="heun", cfg=1.0, labels=None)``: samples
  ``[n, D]`` points (captions from ``labels``, or drawn with the mixture's weights) on the
  schedule the pipeline gives ``sampler`` (``schedules.sampler_sigmas``: few-step for fewstep).
* ``toy_cond(teacher, labels)``: the :class:`Cond` for those labels' captions.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from presto_cli.data.toy import GMM, gmm1d, gmm2d, parse_toy_path  # noqa: F401  (re-exported)
from presto_cli.diffusion.edm import Cond, EDMDenoiser, denoise_fn
from presto_cli.diffusion.samplers import SAMPLERS, PerSampleNoise
from presto_cli.diffusion.schedules import sampler_sigmas

__all__ = ["GMM", "gmm1d", "gmm2d", "mmd_rbf", "perturb", "toy_text", "ToyTeacher", "train_toy_teacher", "toy_recipe",
           "sample_teacher", "toy_cond", "sample_gmm"]


def toy_text(b: int, seed: int = 1, dim: int = 8, tokens: int = 3):
    """Random text conditioning for a tiny DiT (``text_dim=dim``): tokens ``[b, tokens, dim]``, an
    all-True mask and a pooled vector ``[b, dim]``, from their own seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, tokens, dim, generator=g), torch.ones(b, tokens, dtype=torch.bool),
            torch.randn(b, dim, generator=g))


@torch.no_grad()
def perturb(net: torch.nn.Module, prefixes: tuple[str, ...], seed: int = 2, scale: float = 0.3) -> None:
    """Move the parameters whose names start with ``prefixes`` off their (zero) initialisation by
    seeded Gaussian noise of std ``scale``, so that adaLN-zero blocks and zero-initialised
    condition layers change the output."""
    g = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        if name.startswith(prefixes):
            p.add_(scale * torch.randn(p.shape, generator=g))


def mmd_rbf(x, y, bandwidth: float = 0.1) -> float:
    """Unbiased squared MMD between samples ``x [n, D]`` and ``y [m, D]`` with kernel
    ``k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2))`` (float64)."""
    x = np.asarray(torch.as_tensor(x).reshape(len(x), -1).double().cpu())
    y = np.asarray(torch.as_tensor(y).reshape(len(y), -1).double().cpu())

    def k(a, b):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
        return np.exp(-np.maximum(d2, 0) / (2 * bandwidth ** 2))

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def sample_gmm(kind: str, n: int, seed: int) -> torch.Tensor:
    """``n`` points ``[n, D]`` of ``toy:<kind>`` with a fixed seed."""
    return parse_toy_path(f"toy:{kind}").sample(n, torch.Generator().manual_seed(seed))[0]


def toy_recipe(kind: str = "gmm2d", steps: int = 300, seed: int = 0, p_uncond: float = 0.1,
               p_pooled_only: float = 0.0, **model_kw):
    """The teacher recipe used by :func:`train_toy_teacher` (a TeacherRecipe); ``p_uncond`` is
    the share of null-condition training samples (CFG)."""
    from presto_cli.stages.teacher import TeacherRecipe
    from presto_cli.diffusion.edm import EDMConfig
    from presto_cli.models.dit import DiTConfig
    from presto_cli.recipes import DataConfig, TrainConfig

    dim = parse_toy_path(f"toy:{kind}").dim
    model = dict(in_channels=dim, width=64, depth=4, heads=4, mlp_ratio=2.0, max_frames=1,
                 noise_embed_dim=64)
    model.update(model_kw)
    return TeacherRecipe(
        stage="teacher", seed=seed, name=f"toy-{kind}", text="hash", toy_size=4096,
        data=DataConfig(path=f"toy:{kind}"),
        model=DiTConfig(**model),
        edm=EDMConfig(cfg=1.0, sampler="heun", steps=18, p_uncond=p_uncond, p_pooled_only=p_pooled_only),
        train=TrainConfig(steps=steps, batch_size=128, lr=2e-3, warmup=20, weight_decay=0.0,
                          ema=0.99, grad_clip=1.0, device="cpu"))


@dataclass
class ToyTeacher:
    denoiser: EDMDenoiser  # the EMA weights, eval mode, no grad
    recipe: object  # TeacherRecipe
    gmm: GMM
    task: object  # the TeacherTask (its .text is a TextCache; .net the raw weights)

    @property
    def dim(self) -> int:
        return self.gmm.dim


def train_toy_teacher(kind: str = "gmm2d", steps: int = 300, seed: int = 0,
                      p_uncond: float = 0.1, p_pooled_only: float = 0.0) -> ToyTeacher:
    """Train the real teacher stage on ``toy:<kind>`` in-process (no files). Cached per process
    (however it is called: positional or keyword arguments, ``toy`` or ``tests.toy``).
    Deterministic: the initial weights come from the recipe seed, not the global RNG.
    With the default ``p_uncond`` the null branch is too little trained for guided sampling to
    follow the mixture's guided score (tests/test_presto_s_cfg.py uses 0.3 and 600 steps)."""
    return _train_toy_teacher(str(kind), int(steps), int(seed), float(p_uncond), float(p_pooled_only))


@functools.lru_cache(maxsize=4)
def _train_toy_teacher(kind: str, steps: int, seed: int, p_uncond: float, p_pooled_only: float) -> ToyTeacher:
    from presto_cli.train.loop import BatchSource, Context, task_class

    torch.set_num_threads(1)
    recipe = toy_recipe(kind, steps, seed, p_uncond, p_pooled_only)
    ctx = Context(recipe.seed, torch.device("cpu"), "fp32", recipe.train.batch_size)
    task = task_class("teacher")(recipe, ctx, run_dir=".")
    source = BatchSource(task.make_dataset(), recipe.seed, ctx)
    for step in range(steps):
        ctx.step = step
        task.train_step(source.batch(step), ctx)
    den = EDMDenoiser(task.export_net(), recipe.edm).eval().requires_grad_(False)
    return ToyTeacher(den, recipe, task.make_dataset().gmm, task)


def toy_cond(teacher: ToyTeacher, labels: torch.Tensor) -> Cond:
    caps = [teacher.gmm.captions[int(i)] for i in labels]
    return teacher.task.text(caps, "cpu")


@torch.no_grad()
def sample_teacher(teacher: ToyTeacher, n: int, seed: int = 0, steps: int = 18, sampler: str = "heun",
                   cfg: float = 1.0, labels: torch.Tensor | None = None,
                   denoiser: EDMDenoiser | None = None) -> torch.Tensor:
    """Sample ``n`` points ``[n, D]`` from the (toy) teacher, conditioned on mixture captions."""
    den = denoiser or teacher.denoiser
    if labels is None:
        g = torch.Generator().manual_seed(seed + 12345)
        labels = torch.multinomial(teacher.gmm.weights.double(), n, replacement=True, generator=g)
    cond = toy_cond(teacher, labels)
    e = teacher.recipe.edm
    sigmas = sampler_sigmas(sampler, steps, e.sigma_min, e.sigma_max, e.rho)  # the pipeline's
    noise = PerSampleNoise(range(seed * 100_000, seed * 100_000 + n))
    x = noise.randn((teacher.dim, 1)) * sigmas[0]
    out = SAMPLERS[sampler](denoise_fn(den, cond, cfg), x, sigmas, noise=noise)
    return out[:, :, 0]


# One module object whether imported as ``toy`` (tests/ on sys.path) or ``tests.toy`` (repo root
# on sys.path), so the trained-teacher cache is shared by every test file of a session.
import sys as _sys  # noqa: E402

_sys.modules.setdefault("toy", _sys.modules[__name__])
_sys.modules.setdefault("tests.toy", _sys.modules[__name__])
