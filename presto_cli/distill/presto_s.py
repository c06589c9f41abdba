"""Presto-S: score-based distribution matching distillation with a GAN (METHOD.md section 3).

Three networks [paper]:

* the frozen **real score** ``mu_real``: the teacher :class:`EDMDenoiser`, guided with CFG weight w
  (no gradients, no optimiser, always under ``torch.no_grad``);
* the **generator** G: a copy of the teacher (same EDM preconditioning, continuous sigma);
* the **fake score** ``mu_fake``: another copy, trained online on the generator's outputs, with a
  least-squares **discriminator head** (:mod:`presto_cli.distill.discriminator`) on its hidden states.

One iteration (:meth:`PrestoS.train_step`), exactly METHOD.md section 3:

1. ``sigma_g ~ p_gen``, ``x_hat = G(x + sigma_g eps; sigma_g, c)`` (noised *real* latents in; DMD2's
   backward simulation is the ``gen_input: backward-sim`` option);
2. every iteration, fake score + head: ``lambda(sigma) |mu_fake(sg(x_hat) + sigma eps) - sg(x_hat)|^2``
   with ``sigma ~ p_DSM``, plus ``nu2 [(Dh(x + sigma' eps) - 1)^2 + Dh(sg(x_hat) + sigma' eps)^2]``
   with ``sigma' ~ p_GAN``;
3. every r-th iteration (iterations r, 2r, ... counting from 1), the generator, with the fake score
   and head frozen but differentiable: ``sigma ~ p_DMD``, ``x_s = x_hat + sigma eps``,
   ``g = (m_f - m_r) / mean|x_hat - m_r|`` per sample [DMD2] with ``m_r = CFG_w(mu_real)(x_s)``,
   ``m_f = mu_fake(x_s)`` (no grad), ``L_DMD = 1/2 |x_hat - sg(x_hat - g)|^2`` (so dL/dx_hat is g),
   ``L_G = L_DMD + nu1 (Dh(x_hat + sigma' eps) - 1)^2``.

Squared norms are *means* over elements, as in DMD2 (whose nu1/nu2 starting values we use). The
``dmd_sign`` recipe key multiplies g: 0 switches DMD off (a regression-only phase, distill/regression.py); -1 must make distillation fail (a test checks it).

All randomness comes from ``rng.randn(tag, shape)`` / ``rng.rand(tag, shape)`` of the training
context (counter-based on (seed, step, tag)), so resume and DDP are exact.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from presto_cli.diffusion.edm import Cond, EDMDenoiser, denoise_fn, drop_tokens, edm_weight
from presto_cli.distill.discriminator import DiscriminatorHead, lsgan_d_loss, lsgan_g_loss
from presto_cli.diffusion.schedules import fewstep_points
from presto_cli.distill.noise import SigmaDist
from presto_cli.distill.regression import RegressionPairs
from presto_cli.errors import PrestoError
from presto_cli.seeds import seeded
from presto_cli.train.loop import EMA, ema_state, optimizer_step, warmup_lr

__all__ = ["DistillConfig", "OptimConfig", "PrestoS", "dmd_gradient",
           "dmd_loss", "real_score", "teacher_cfg_weight"]

NoiseKind = Literal["train", "inf", "train/inf"]


# --------------------------------------------------------------------------------------------
# Recipe section (the stage itself: presto_cli.stages.presto_s)


@dataclass
class DistillConfig:
    """The ``distill:`` recipe section of Presto-S (METHOD.md section 3)."""

    teacher: str = ""  # teacher artefact (.safetensors); "" -> data.teacher
    init: str = ""  # artefact to start the generator from (continue a distillation): Presto-S for distill-steps, Presto-LS for combine; "" -> the teacher (combine: combine.layers)
    cfg: float | None = None  # real-score CFG weight w; None -> the teacher's inference w
    # real-score guidance only where lo < sigma <= hi ([lo, hi]; [] = every sigma), the regression
    # trajectories' too: a student of the teacher sampled with --cfg-interval (METHOD.md section 2)
    cfg_interval: list = field(default_factory=list)
    update_ratio: int = 5  # r: fake-score updates per generator update [paper]
    nu1: float = 3e-3  # GAN weight in the generator loss [DMD2]
    nu2: float = 1e-2  # GAN weight in the fake-score loss [DMD2]
    lr_gen: float | None = None  # generator AdamW LR; None -> train.lr
    lr_fake: float | None = None  # fake score + head AdamW LR; None -> lr_gen
    warmup: int | None = None  # linear LR warm-up, in iterations; None -> train.warmup
    grad_clip: float = 10.0  # [DMD2]; 0 disables
    ema: float | None = None  # generator EMA decay; None -> train.ema; 0 disables (export raw G)
    p_gen: NoiseKind = "inf"  # generator input sigma [paper's choice]
    p_dmd: NoiseKind = "train"  # DMD loss sigma [paper's choice]
    p_dsm: NoiseKind = "train/inf"  # fake-score denoising sigma [paper: train/inf; mixture ours]
    p_gan: NoiseKind = "train"  # GAN noising sigma [paper's choice]
    inf_steps: int = 0  # "inf" draws: 0 continuous, N -> the N points of an N-step schedule
    gen_input: Literal["noised-real", "backward-sim"] = "noised-real"
    gen_steps: int = 4  # backward-sim: schedule length it simulates; also the exported steps
    rho: float | None = None  # rho of the exported few-step schedule; None -> the teacher's rho
    disc_blocks: list[int] = field(default_factory=list)  # fake-score blocks the head reads; [] -> [depth//2]
    disc_hidden: int = 0  # head channels; 0 -> min(width, 256)
    disc_layers: int = 2
    disc_kernel: int = 3
    teacher_dtype: Literal["fp32", "bf16"] = "fp32"  # dtype of the frozen real score
    reg_weight: float = 0.0  # weight of the teacher-trajectory regression loss [DMD1; 0 = off, DMD2]
    reg_pairs: int = 256  # teacher ODE trajectories for the regression (made once per run)
    reg_steps: int = 32  # Heun steps of those trajectories (the few-step points are added)
    reg_prompts: str = ""  # .txt/.jsonl of captions for those trajectories; "" -> the training captions
    dmd_sign: float = 1.0  # multiplies the DMD gradient: 0 = off (a regression-only phase); -1 must break distillation (tests)
    p_pooled_only: float = 0.0  # the generator sees a sample's caption only through its pooled vector with this probability (edm.drop_tokens); the teacher, fake score and head see the full caption [ours]

    def validate(self) -> None:
        if self.update_ratio < 1:
            raise PrestoError(f"distill.update_ratio must be >= 1, got {self.update_ratio}")
        for k in ("nu1", "nu2", "grad_clip"):
            if getattr(self, k) < 0:
                raise PrestoError(f"distill.{k} must be >= 0, got {getattr(self, k)}")
        for k in ("lr_gen", "lr_fake"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise PrestoError(f"distill.{k} must be > 0, got {v}")
        if self.gen_steps < 1:
            raise PrestoError(f"distill.gen_steps must be >= 1, got {self.gen_steps}")
        if self.reg_weight < 0:
            raise PrestoError(f"distill.reg_weight must be >= 0, got {self.reg_weight}")
        if self.reg_weight > 0 and (self.reg_pairs < 1 or self.reg_steps < 2):
            raise PrestoError("distill.reg_weight > 0 needs distill.reg_pairs >= 1 and distill.reg_steps >= 2",
                              "for example reg_pairs=256 reg_steps=32")
        if self.inf_steps < 0:
            raise PrestoError(f"distill.inf_steps must be >= 0, got {self.inf_steps}")
        if self.ema is not None and not 0.0 <= self.ema < 1.0:
            raise PrestoError(f"distill.ema must lie in [0, 1), got {self.ema}")
        if self.cfg is not None and self.cfg < 0:
            raise PrestoError(f"distill.cfg must be >= 0, got {self.cfg}")
        if self.cfg_interval:
            from presto_cli.diffusion.edm import check_cfg_interval

            check_cfg_interval(self.cfg_interval, "distill.cfg_interval")
        if not 0.0 <= self.p_pooled_only <= 1.0:
            raise PrestoError(f"distill.p_pooled_only must lie in [0, 1], got {self.p_pooled_only}")


# --------------------------------------------------------------------------------------------
# The losses (pure functions of the networks)


class Draws(Protocol):
    """What Presto-S needs of the training context (presto_cli.train.loop.Context)."""

    step: int
    device: torch.device

    def randn(self, tag: str, global_shape, dtype=torch.float32) -> Tensor: ...
    def rand(self, tag: str, global_shape, dtype=torch.float32) -> Tensor: ...
    def sync_grads(self, *modules: nn.Module) -> None: ...
    def autocast(self): ...


def _bshape(x: Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.dim() - 1)


@torch.no_grad()
def real_score(teacher: EDMDenoiser, x: Tensor, sigma: Tensor, cond: Cond, w: float,
               interval: tuple[float, float] | None = None) -> Tensor:
    """``CFG_w(mu_real)(x; sigma, c)`` in float32; w == 1 is a plain (half-cost) call; with
    ``interval`` ``(lo, hi)`` guided only for the samples whose sigma lies in (lo, hi]."""
    return denoise_fn(teacher, cond, float(w), interval)(x.float(), sigma).float()


@torch.no_grad()
def dmd_gradient(m_real: Tensor, m_fake: Tensor, x_hat: Tensor, eps: float = 1e-12) -> Tensor:
    """DMD2's normalised distribution-matching gradient (METHOD.md section 3):

    ``g = (m_f - m_r) / mean|x_hat - m_r|`` with the mean taken per sample over all non-batch dims.
    Descending along g moves x_hat toward the real score's denoised estimate and away from the fake's.
    """
    x_hat = x_hat.detach().float()
    norm = (x_hat - m_real).abs().flatten(1).mean(1).clamp_min(eps).view(_bshape(x_hat))
    return torch.nan_to_num((m_fake - m_real) / norm)


def dmd_loss(x_hat: Tensor, g: Tensor) -> Tensor:
    """``L_DMD = 1/2 mean (x_hat - sg(x_hat - g))^2``: its gradient w.r.t. x_hat is g / numel."""
    target = (x_hat - g).detach()
    return 0.5 * (x_hat.float() - target.float()).pow(2).mean()


# --------------------------------------------------------------------------------------------
# Teacher artefact


def teacher_cfg_weight(meta: dict, default: float = 1.0) -> float:
    """The teacher's inference CFG weight w (``sampler.cfg``, else ``edm.cfg``)."""
    s = meta.get("sampler") or {}
    if "cfg" in s:
        return float(s["cfg"])
    e = meta.get("edm") or {}
    return float(e.get("cfg", default))


# --------------------------------------------------------------------------------------------
# The algorithm


@dataclass
class OptimConfig:
    """Optimiser settings resolved from ``train:`` and ``distill:``."""

    lr_gen: float = 1e-4
    lr_fake: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup: int = 0
    grad_clip: float = 10.0
    ema: float = 0.0


class PrestoS:
    """The three networks, their optimisers and one Presto-S iteration.

    ``teacher`` is frozen in place (``requires_grad_(False)``, ``eval()``); the generator and the
    fake score are deep copies of it, or of ``generator_init`` for the generator (Presto-LS starts
    the generator from a Presto-L model). Subclasses may override :meth:`generator_kwargs` to pass
    ``blocks=``/``budget=`` to the generator's DiT (layer-dropping generators). ``seed`` (the
    recipe's) fixes the discriminator head's initial weights.
    """

    def __init__(self, teacher: EDMDenoiser, dcfg: DistillConfig, ocfg: OptimConfig, w: float,
                 generator_init: EDMDenoiser | None = None, seed: int = 0):
        dcfg.validate()
        self.dcfg = dcfg
        self.ocfg = ocfg
        self.w = float(w)
        self.cfg_interval = tuple(float(v) for v in dcfg.cfg_interval) if dcfg.cfg_interval else None
        device = next(teacher.parameters()).device
        self.device = device
        # real score: frozen. Copies are made before any dtype change.
        self.generator = copy.deepcopy(generator_init if generator_init is not None else teacher)
        self.fake = copy.deepcopy(teacher)
        self.generator.train().requires_grad_(True)
        self.fake.train().requires_grad_(True)
        self.teacher = teacher.eval().requires_grad_(False)
        if dcfg.teacher_dtype == "bf16":
            self.teacher.to(torch.bfloat16)
        net_cfg = teacher.net.cfg
        blocks = list(dcfg.disc_blocks) or [net_cfg.depth // 2]
        bad = [b for b in blocks if not 0 <= b < net_cfg.depth]
        if bad:
            raise PrestoError(f"distill.disc_blocks {bad} out of range for a DiT of depth "
                              f"{net_cfg.depth}", f"use block indices 0..{net_cfg.depth - 1}")
        # the head's initial weights come from the recipe seed alone, never the global RNG
        with seeded(seed, "init", "disc-head"):
            self.head = DiscriminatorHead(net_cfg.width, blocks, dcfg.disc_hidden,
                                          dcfg.disc_layers, dcfg.disc_kernel).to(device)
        # Run only the blocks the head reads (unless a budget embedding makes depth matter).
        self._disc_run = (None if (net_cfg.budget_embed or net_cfg.budget_rescale)
                          else list(range(max(blocks) + 1)))
        edm = teacher.cfg
        self.sigma_data = float(edm.sigma_data)
        # p_inf (continuous, or inf_steps points) uses the exported few-step sampler's rho
        self.rho = float(dcfg.rho if dcfg.rho is not None else edm.rho)
        mk = lambda kind: SigmaDist.from_edm(kind, edm, dcfg.inf_steps, self.rho)  # noqa: E731
        self.p_gen, self.p_dmd = mk(dcfg.p_gen), mk(dcfg.p_dmd)
        self.p_dsm, self.p_gan = mk(dcfg.p_dsm), mk(dcfg.p_gan)
        self.opt_gen = torch.optim.AdamW(self.generator.parameters(), lr=ocfg.lr_gen,
                                         betas=ocfg.betas, weight_decay=ocfg.weight_decay)
        self.opt_fake = torch.optim.AdamW(list(self.fake.parameters()) + list(self.head.parameters()),
                                          lr=ocfg.lr_fake, betas=ocfg.betas,
                                          weight_decay=ocfg.weight_decay)
        self.ema = EMA(self.generator, ocfg.ema) if ocfg.ema > 0 else None
        self.gen_updates = 0
        self.fake_updates = 0
        # a regression-only configuration skips the fake score and the teacher (_regression_step);
        # False runs the full iteration (tests compare the two)
        self.fast_regression = True
        # teacher ODE pairs for the regression loss (distill.reg_weight > 0): set by the caller
        self.reg: RegressionPairs | None = None

    # -- hooks -------------------------------------------------------------------------------
    def generator_kwargs(self, sigma: Tensor) -> dict[str, Any]:
        """Extra DiT kwargs of the generator at ``sigma`` (none for Presto-S)."""
        return {}

    def is_generator_step(self, step: int) -> bool:
        """The generator updates on iterations r, 2r, 3r, ... (1-based) [paper: r = 5]."""
        return (step + 1) % self.dcfg.update_ratio == 0

    # -- noise -------------------------------------------------------------------------------
    def sigma(self, dist: SigmaDist, rng: Draws, tag: str, b: int) -> Tensor:
        z = rng.randn(f"{tag}/z", (b,))
        u = rng.rand(f"{tag}/u", (b,))
        c = rng.rand(f"{tag}/c", (b,))
        return dist.from_noise(z, u, c).to(self.device)

    def generator_cond(self, cond: Cond | None, rng: Draws, tag: str, b: int) -> Cond | None:
        """The condition the generator sees: ``cond`` with each sample's token stream dropped to
        its pooled vector with probability ``distill.p_pooled_only`` (nothing drawn when 0, so
        runs without it keep their draws)."""
        p = self.dcfg.p_pooled_only
        if p <= 0 or cond is None:
            return cond
        return drop_tokens(cond, p, rng.rand(f"{tag}/token_drop", (b,)))

    # -- the pieces of one iteration ---------------------------------------------------------
    def generate(self, x: Tensor, cond: Cond, rng: Draws, b: int, grad: bool) -> tuple[Tensor, Tensor]:
        """Step 1: ``(x_hat, sigma_g)``. ``b`` is the *global* batch (the draws' first dim)."""
        shape = (b,) + tuple(x.shape[1:])
        cond = self.generator_cond(cond, rng, "gen", b)
        if self.dcfg.gen_input == "noised-real":
            sigma_g = self.sigma(self.p_gen, rng, "gen/sigma", b)
            x_in = x.float() + sigma_g.view(_bshape(x)) * rng.randn("gen/eps", shape)
        else:
            x_in, sigma_g = self._backward_sim(x, cond, rng, b)
        with torch.set_grad_enabled(grad):
            x_hat = self.generator(x_in, sigma_g, cond, **self.generator_kwargs(sigma_g))
        return x_hat.float(), sigma_g

    @torch.no_grad()
    def _backward_sim(self, x: Tensor, cond: Cond, rng: Draws, b: int) -> tuple[Tensor, Tensor]:
        """DMD2's backward simulation [ours as an option]: run the generator's own few-step
        sampler from pure noise for k steps (k uniform in 0..N-1 per sample) and return the noisy
        state at step k with its sigma, so G trains on the inputs it meets at inference: the
        sigmas are those of the exported N-step sampler (``schedules.fewstep_points``)."""
        n = self.dcfg.gen_steps
        edm = self.teacher.cfg
        sig = fewstep_points(n, edm.sigma_min, edm.sigma_max, self.rho, self.device)
        shape = (b,) + tuple(x.shape[1:])
        k = torch.clamp((rng.rand("gen/k", (b,)) * n).floor().long(), max=n - 1).to(self.device)
        cur = sig[0] * rng.randn("gen/eps0", shape)
        for j in range(int(k.max()) if k.numel() else 0):
            s = sig[j].expand(cur.shape[0])
            den = self.generator(cur, s, cond, **self.generator_kwargs(s)).float()
            nxt = den + sig[j + 1] * rng.randn(f"gen/eps{j + 1}", shape)
            cur = torch.where((k > j).view(_bshape(cur)), nxt, cur)
        return cur, sig[k]

    def _disc(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """Discriminator logits ``Dh(x; sigma)`` [B, F] through the fake score's hidden states."""
        kw: dict[str, Any] = {"return_hidden": self.head.blocks}
        if self._disc_run is not None:
            kw["blocks"] = self._disc_run
        _, hidden = self.fake(x, sigma, cond, **kw)
        return self.head(hidden)

    def fake_loss(self, x_hat: Tensor, x: Tensor, cond: Cond, rng: Draws, b: int
                  ) -> tuple[Tensor, dict[str, float]]:
        """Step 2: denoising loss of the fake score on sg(x_hat) + nu2 * LSGAN head loss."""
        x_hat = x_hat.detach()
        shape = (b,) + tuple(x.shape[1:])
        sigma = self.sigma(self.p_dsm, rng, "fake/sigma", b)
        noisy = x_hat + sigma.view(_bshape(x_hat)) * rng.randn("fake/eps", shape)
        den = self.fake(noisy, sigma, cond).float()
        l_dsm = (edm_weight(sigma, self.sigma_data) * (den - x_hat).pow(2).flatten(1).mean(1)).mean()
        out = {"fake_dsm": float(l_dsm.detach())}
        loss = l_dsm
        if self.dcfg.nu2 > 0:
            s_gan = self.sigma(self.p_gan, rng, "fake/gan_sigma", b).view(_bshape(x))
            real_in = x.float() + s_gan * rng.randn("fake/gan_eps_real", shape)
            fake_in = x_hat + s_gan * rng.randn("fake/gan_eps_fake", shape)
            both = self._disc(torch.cat([real_in, fake_in]), torch.cat([s_gan.flatten()] * 2),
                              Cond.cat([cond, cond]))
            d_real, d_fake = both[: x.shape[0]], both[x.shape[0]:]
            l_d = lsgan_d_loss(d_real, d_fake)
            loss = loss + self.dcfg.nu2 * l_d
            dr, df = float(d_real.detach().mean()), float(d_fake.detach().mean())
            # d_gap = d_real - d_fake first, so the training log's progress line shows it [issue 29]:
            # ~0 means the head sits at chance (LSGAN optimum on indistinguishable inputs: both 0.5)
            out = {"d_gap": dr - df, **out, "disc_loss": float(l_d.detach()), "d_real": dr, "d_fake": df}
        out["fake_loss"] = float(loss.detach())
        return loss, out

    def generator_loss(self, x_hat: Tensor, cond: Cond, rng: Draws, b: int
                       ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Step 3: ``(L_DMD, L_GAN_G, metrics)``; the fake score and head must be frozen
        (``requires_grad`` False) by the caller so only G receives gradients."""
        shape = (b,) + tuple(x_hat.shape[1:])
        sigma = self.sigma(self.p_dmd, rng, "gen/dmd_sigma", b)
        with torch.no_grad():
            x_s = x_hat.detach() + sigma.view(_bshape(x_hat)) * rng.randn("gen/dmd_eps", shape)
            m_r = real_score(self.teacher, x_s, sigma, cond, self.w, self.cfg_interval)
            m_f = self.fake(x_s, sigma, cond).float()
            g = self.dcfg.dmd_sign * dmd_gradient(m_r, m_f, x_hat)
        l_dmd = dmd_loss(x_hat, g)
        out = {
            "dmd_loss": float(l_dmd.detach()),
            "dmd_grad_norm": float(g.flatten(1).norm(dim=1).mean()),
            "dmd_gap": float((m_r - m_f).abs().mean()),  # mean |m_r - m_f|
            "dmd_real_err": float((x_hat.detach() - m_r).abs().mean()),  # the normaliser
        }
        l_gan = x_hat.new_zeros(())
        if self.dcfg.nu1 > 0:
            s_gan = self.sigma(self.p_gan, rng, "gen/gan_sigma", b)
            noisy = x_hat + s_gan.view(_bshape(x_hat)) * rng.randn("gen/gan_eps", shape)
            d = self._disc(noisy, s_gan, cond)
            l_gan = lsgan_g_loss(d)
            out.update(gen_gan=float(l_gan.detach()), d_gen=float(d.detach().mean()))
        return l_dmd, l_gan, out

    def regression_loss(self, rng: Draws, b: int) -> Tensor:
        """Mean squared error of G at teacher ODE states against the trajectories' ends
        (distill/regression.py); needs ``self.reg``."""
        if self.reg is None:
            raise PrestoError("distill.reg_weight > 0 but no teacher trajectories were made",
                              "the presto-s stage makes them; in code, set PrestoS.reg")
        x_in, sigma, y, cond = self.reg.draw(rng, b, self.device)
        cond = self.generator_cond(cond, rng, "reg", b)
        pred = self.generator(x_in, sigma, cond, **self.generator_kwargs(sigma)).float()
        return (pred - y).pow(2).mean()

    # -- one iteration -----------------------------------------------------------------------
    def train_step(self, x: Tensor, cond: Cond, rng: Draws, global_batch: int | None = None
                   ) -> dict[str, float]:
        """One Presto-S iteration on real latents ``x`` [B, C, F] (this rank's rows)."""
        b = global_batch or x.shape[0]
        step = int(rng.step)
        gen_step = self.is_generator_step(step)
        o = self.ocfg
        if self.regression_only and self.fast_regression:
            return self._regression_step(rng, b, step, gen_step)
        x = x.to(self.device).float()
        metrics: dict[str, float] = {}
        with rng.autocast():
            # 1. generator output (with graph only when the generator updates this iteration)
            x_hat, sigma_g = self.generate(x, cond, rng, b, grad=gen_step)
            # 2. fake score + head, every iteration
            l_fake, m = self.fake_loss(x_hat, x, cond, rng, b)
        metrics.update(m)  # d_gap (when the GAN is on) leads: the progress line shows the first keys
        metrics["fake_gnorm"] = optimizer_step(self.opt_fake, l_fake, [self.fake, self.head], rng,
                                               o.grad_clip, lr=warmup_lr(o.lr_fake, step, o.warmup))
        self.fake_updates += 1
        metrics["gen_step"] = float(gen_step)
        # 3. generator, every r-th iteration, through the frozen fake score and head
        if gen_step:
            self.fake.requires_grad_(False)  # the graph then holds no fake-score or head weights
            self.head.requires_grad_(False)
            try:
                with rng.autocast():
                    l_dmd, l_gan, m = self.generator_loss(x_hat, cond, rng, b)
                    l_gen = l_dmd + self.dcfg.nu1 * l_gan
                    if self.dcfg.reg_weight > 0:
                        l_reg = self.regression_loss(rng, b)
                        l_gen = l_gen + self.dcfg.reg_weight * l_reg
                        m["reg_loss"] = float(l_reg.detach())
            finally:
                self.fake.requires_grad_(True)
                self.head.requires_grad_(True)
            metrics["gen_gnorm"] = optimizer_step(self.opt_gen, l_gen, [self.generator], rng, o.grad_clip,
                                                  lr=warmup_lr(o.lr_gen, step, o.warmup), ema=self.ema,
                                                  ema_step=self.gen_updates)
            self.gen_updates += 1
            metrics.update(m)
            metrics["gen_loss"] = float(l_gen.detach())
        metrics["sigma_gen"] = float(sigma_g.float().log().mean().exp())  # geometric mean
        schedule = getattr(self.generator, "schedule", None)  # Presto-LS: which depths G trained
        if schedule is not None:
            metrics.update(schedule.bin_shares(sigma_g))
        return metrics

    @property
    def regression_only(self) -> bool:
        """DMD off (``dmd_sign`` 0), no GAN term (``nu1`` = ``nu2`` = 0), regression on: G's loss is
        the regression loss alone, so nothing depends on the fake score, the head or x_hat."""
        d = self.dcfg
        return d.reg_weight > 0 and d.dmd_sign == 0 and d.nu1 == 0 and d.nu2 == 0

    def _regression_step(self, rng: Draws, b: int, step: int, gen_step: bool) -> dict[str, float]:
        """A regression-only iteration: the generator update alone. The full iteration would also
        run G on the batch, update the fake score and query the teacher, none of which reaches G's
        gradient here; skipping them gives the same generator at about half the time (a test
        compares the two paths)."""
        metrics: dict[str, float] = {"gen_step": float(gen_step)}
        if not gen_step:
            return metrics
        o = self.ocfg
        with rng.autocast():
            l_reg = self.regression_loss(rng, b)
            l_gen = self.dcfg.reg_weight * l_reg
        metrics["gen_gnorm"] = optimizer_step(self.opt_gen, l_gen, [self.generator], rng, o.grad_clip,
                                              lr=warmup_lr(o.lr_gen, step, o.warmup), ema=self.ema,
                                              ema_step=self.gen_updates)
        self.gen_updates += 1
        metrics.update(reg_loss=float(l_reg.detach()), gen_loss=float(l_gen.detach()))
        return metrics

    # -- state -------------------------------------------------------------------------------
    def export_generator(self) -> EDMDenoiser:
        """The generator to export: its EMA when enabled, else the raw weights."""
        return self.ema.shadow if self.ema is not None else self.generator

    def state_dict(self) -> dict:
        sd = {"generator": self.generator.state_dict(), "fake": self.fake.state_dict(),
              "head": self.head.state_dict(), "opt_gen": self.opt_gen.state_dict(),
              "opt_fake": self.opt_fake.state_dict(), "gen_updates": self.gen_updates,
              "fake_updates": self.fake_updates, **ema_state(self.ema)}
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.generator.load_state_dict(sd["generator"])
        self.fake.load_state_dict(sd["fake"])
        self.head.load_state_dict(sd["head"])
        self.opt_gen.load_state_dict(sd["opt_gen"])
        self.opt_fake.load_state_dict(sd["opt_fake"])
        self.gen_updates = int(sd["gen_updates"])
        self.fake_updates = int(sd["fake_updates"])
        if self.ema is not None:
            if "ema" not in sd:
                raise PrestoError("the checkpoint has no generator EMA but the recipe enables one",
                                  "resume with the recipe the run started with")
            self.ema.load_state_dict(sd["ema"])
