"""EDM preconditioning, noise-level distributions and the EDM loss (METHOD.md section 2).

The backbone predicts ``F``; :class:`EDMDenoiser` turns it into the denoiser

    D(x; sigma, c) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), c)

with the scalings of Karras et al. (2022) computed in one place, :meth:`EDMDenoiser.get_scalings`.
Classifier-free guidance uses the DiT's learned null condition:
``D_w = D(x; sigma, null) + w (D(x; sigma, c) - D(x; sigma, null))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn

from presto_cli.errors import PrestoError

__all__ = ["EDMConfig", "Cond", "EDMDenoiser", "edm_loss", "edm_weight", "drop_condition", "drop_musical",
           "sigma_train_from_normal", "sigma_inf_from_uniform",
           "sample_sigma_train", "sample_sigma_inf"]


@dataclass
class EDMConfig:
    """EDM settings (the ``edm:`` recipe section). Defaults are EDM's (METHOD.md section 2)."""

    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_uncond: float = 0.1  # probability of the null condition in training (CFG)
    # probability that a training sample's text reaches the DiT through its pooled vector alone
    # (its token stream becomes one zero token; METHOD.md section 2, "Words the captions never use")
    p_pooled_only: float = 0.0
    # probability that a training sample's tempo (and, drawn apart, its key) is dropped to "absent",
    # so a model with model.tempo_cond / model.key_cond also works without them
    p_no_tempo_key: float = 0.2
    cfg: float = 2.0  # inference guidance weight w (1 = no guidance)
    sampler: Literal["euler", "heun", "dpmpp_2m", "fewstep"] = "heun"
    steps: int = 32  # inference steps (sigmas before the final 0)
    token_shift: bool = False  # inference default: shift the token grid by one frame per network call
    # inference default: guide only where lo < sigma <= hi ([lo, hi]; [] = at every sigma; METHOD.md
    # section 2, "Guidance interval")
    cfg_interval: list = field(default_factory=list)

    def validate(self) -> None:
        if not (self.sigma_data > 0 and self.p_std > 0):
            raise PrestoError("edm.sigma_data and edm.p_std must be > 0")
        if not (0 < self.sigma_min < self.sigma_max):
            raise PrestoError("edm needs 0 < sigma_min < sigma_max",
                              f"got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise PrestoError(f"edm.p_uncond must lie in [0, 1), got {self.p_uncond}")
        if not 0.0 <= self.p_pooled_only <= 1.0:
            raise PrestoError(f"edm.p_pooled_only must lie in [0, 1], got {self.p_pooled_only}")
        if not 0.0 <= self.p_no_tempo_key <= 1.0:
            raise PrestoError(f"edm.p_no_tempo_key must lie in [0, 1], got {self.p_no_tempo_key}")
        if self.steps < 1:
            raise PrestoError(f"edm.steps must be >= 1, got {self.steps}")
        if self.rho <= 0:
            raise PrestoError(f"edm.rho must be > 0, got {self.rho}")
        if self.cfg_interval:
            check_cfg_interval(self.cfg_interval, "edm.cfg_interval")


@dataclass
class Cond:
    """Condition of a batch: text token states, key mask, pooled vector, null-condition flags, and
    the optional numeric conditions tempo and key (what a DiT with ``tempo_cond``/``key_cond``
    reads; a DiT without them ignores them).

    ``uncond[b] = True`` makes the DiT use its learned null condition for sample ``b`` (tempo and key
    included). ``tempo[b]``: BPM, NaN (or <= 0) = absent; ``key[b]``: 0..23 (tonic + 12 * minor),
    -1 = absent; ``None`` = absent for the whole batch.
    """

    tokens: Tensor  # [B, N, D]
    mask: Tensor  # [B, N] bool, True = valid token
    pooled: Tensor  # [B, D]
    uncond: Tensor | None = None  # [B] bool
    tempo: Tensor | None = None  # [B] float32 BPM, NaN = absent
    key: Tensor | None = None  # [B] long, -1 = absent

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    def to(self, device) -> "Cond":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Cond(self.tokens.to(device), self.mask.to(device), self.pooled.to(device), mv(self.uncond),
                    mv(self.tempo), mv(self.key))

    def with_uncond(self, uncond: Tensor | None) -> "Cond":
        return replace(self, uncond=uncond)

    def index(self, idx) -> "Cond":
        ix = lambda t: None if t is None else t[idx.to(t.device) if isinstance(idx, Tensor) else idx]  # noqa: E731
        return Cond(self.tokens[idx], self.mask[idx], self.pooled[idx], ix(self.uncond), ix(self.tempo),
                    ix(self.key))

    def uncond_flags(self) -> Tensor:
        if self.uncond is None:
            return torch.zeros(self.batch, dtype=torch.bool, device=self.tokens.device)
        return self.uncond.bool()

    def tempo_values(self) -> Tensor:
        """``tempo`` as [B] float32 (NaN where absent, every sample when None)."""
        if self.tempo is None:
            return torch.full((self.batch,), float("nan"), device=self.tokens.device)
        return self.tempo.float().reshape(-1)

    def key_values(self) -> Tensor:
        """``key`` as [B] long (-1 where absent, every sample when None)."""
        if self.key is None:
            return torch.full((self.batch,), -1, dtype=torch.long, device=self.tokens.device)
        return self.key.long().reshape(-1)

    def musical_kwargs(self) -> dict:
        """The DiT's ``tempo``/``key`` keyword arguments (only those present, so a backbone without
        them is called as before)."""
        out = {}
        if self.tempo is not None:
            out["tempo"] = self.tempo
        if self.key is not None:
            out["key"] = self.key
        return out

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        """Concatenate along the batch, padding token sequences to the longest (tempo/key: absent
        for the samples of a part that has none, None when no part has any)."""
        n = max(c.tokens.shape[1] for c in conds)
        toks, masks = [], []
        for c in conds:
            pad = n - c.tokens.shape[1]
            toks.append(torch.nn.functional.pad(c.tokens, (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(c.mask.bool(), (0, pad), value=False))
        tempo = (torch.cat([c.tempo_values() for c in conds])
                 if any(c.tempo is not None for c in conds) else None)
        key = torch.cat([c.key_values() for c in conds]) if any(c.key is not None for c in conds) else None
        return Cond(torch.cat(toks), torch.cat(masks), torch.cat([c.pooled for c in conds]),
                    torch.cat([c.uncond_flags() for c in conds]), tempo, key)

    @staticmethod
    def unconditional(batch: int, dim: int, device=None) -> "Cond":
        """A condition that is the null condition for every sample (unconditional models)."""
        return Cond(torch.zeros(batch, 1, dim, device=device),
                    torch.ones(batch, 1, dtype=torch.bool, device=device),
                    torch.zeros(batch, dim, device=device),
                    torch.ones(batch, dtype=torch.bool, device=device))


def _as_batch(sigma: Tensor | float, b: int, device) -> Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(-1)
    return s.expand(b) if s.numel() == 1 else s


def cfg_guided(forward, x: Tensor, sigma: Tensor | float, cond: Cond, w: float | Tensor) -> Tensor:
    """Classifier-free guidance ``D(null) + w (D(c) - D(null))`` (METHOD.md section 2), both halves
    as one batch of 2B through ``forward(x, sigma, cond)``; ``w`` is a float or a per-sample [B]."""
    b = x.shape[0]
    sigma = _as_batch(sigma, b, x.device)
    null = cond.with_uncond(torch.ones(b, dtype=torch.bool, device=x.device))
    conditional = cond.with_uncond(torch.zeros(b, dtype=torch.bool, device=x.device))
    d = forward(torch.cat([x, x]), torch.cat([sigma, sigma]), Cond.cat([conditional, null]))
    d_c, d_u = d[:b], d[b:]
    w = torch.as_tensor(w, dtype=d.dtype, device=d.device).reshape(-1)
    w = w.view((-1,) + (1,) * (x.dim() - 1)) if w.numel() > 1 else w
    return d_u + w * (d_c - d_u)


def check_cfg_interval(interval, what: str = "--cfg-interval") -> tuple[float, float]:
    """``(lo, hi)`` from a 2-sequence with 0 <= lo < hi, else one clear error."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise PrestoError(f"{what} must be two noise levels LO,HI, got {interval!r}",
                          "e.g. 0,2: guidance only where 0 < sigma <= 2") from None
    if not (0.0 <= lo < hi):
        raise PrestoError(f"{what} needs 0 <= LO < HI, got {lo:g},{hi:g}", "e.g. 0,2")
    return lo, hi


def parse_cfg_interval(text: str | None) -> tuple | None:
    """``--cfg-interval``'s text: None (unset: the model's default), ``()`` for ``all`` (guidance at
    every sigma), else ``(lo, hi)`` from ``LO,HI``."""
    if text is None:
        return None
    t = str(text).strip().lower()
    if t in ("all", "none", ""):
        return ()
    return check_cfg_interval(t.split(","))


def in_cfg_interval(sigma, interval: tuple[float, float] | None):
    """Where guidance applies: ``lo < sigma <= hi`` (Kynkäänniemi et al. 2024), everywhere for None."""
    if interval is None:
        return torch.ones_like(torch.as_tensor(sigma), dtype=torch.bool)
    s = torch.as_tensor(sigma)
    return (s > interval[0]) & (s <= interval[1])


def denoise_fn(denoiser, cond: Cond | None, w: float = 1.0, interval: tuple[float, float] | None = None):
    """``model_fn(x, sigma) -> D`` for the samplers: guided when ``w != 1`` (and there is a
    condition), else one plain forward. Every sampling path (generate, eval, bench, tests) uses it.
    ``interval`` ``(lo, hi)``: guided only for samples with ``lo < sigma <= hi``, one plain forward
    (half the cost) elsewhere (METHOD.md section 2, "Guidance interval")."""

    def model_fn(x: Tensor, sigma: Tensor, **net_kwargs) -> Tensor:
        if cond is None or w == 1.0:
            return denoiser(x, sigma, cond, **net_kwargs)
        if interval is None:
            return denoiser.guided(x, sigma, cond, w, **net_kwargs)
        inside = in_cfg_interval(_as_batch(sigma, x.shape[0], x.device), interval)
        if bool(inside.all()):
            return denoiser.guided(x, sigma, cond, w, **net_kwargs)
        plain = denoiser(x, sigma, cond, **net_kwargs)
        if not bool(inside.any()):
            return plain
        guided = denoiser.guided(x, sigma, cond, w, **net_kwargs)
        return torch.where(inside.view((-1,) + (1,) * (x.dim() - 1)), guided, plain)

    return model_fn


def token_shifted(model_fn, patch: int, pass_offset: bool = False):
    """``model_fn`` with a token shift that cycles per call (METHOD.md section 2, "Output
    capacity"): call ``k`` pads ``k mod patch`` zero frames in front of ``x`` and drops them from
    the output, so the DiT's token boundaries fall on other frames at every network evaluation and
    whatever the network draws at its token edges does not add up on a fixed grid. Exact for a
    network with no patching (``patch`` 1: the function itself). ``pass_offset``: also tell the
    network (``frame_offset=-k``) that its first frame lies k frames before the clip's, so a DiT
    with beat-phase features keeps each frame's beat phase."""
    if patch <= 1:
        return model_fn
    calls = [0]

    def shifted(x: Tensor, sigma: Tensor) -> Tensor:
        k = calls[0] % patch
        calls[0] += 1
        if k == 0:
            return model_fn(x, sigma)
        kw = {"frame_offset": -k} if pass_offset else {}
        return model_fn(torch.nn.functional.pad(x, (k, 0)), sigma, **kw)[..., k:]

    return shifted


class EDMDenoiser(nn.Module):
    """The EDM-preconditioned denoiser ``D(x; sigma, c)`` around a backbone ``net`` (a DiT)."""

    def __init__(self, net: nn.Module, cfg: EDMConfig):
        super().__init__()
        self.net = net
        self.cfg = cfg

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise) of Karras et al. (2022), Table 1, in float32."""
        sd = self.cfg.sigma_data
        s = sigma.float()
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / (s ** 2 + sd ** 2).sqrt()
        c_in = 1.0 / (s ** 2 + sd ** 2).sqrt()
        c_noise = s.log() / 4.0
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Cond | None, **net_kwargs):
        """``D(x; sigma, c)``; ``net_kwargs`` (blocks, budget, return_hidden) go to the DiT.

        Returns D, or ``(D, hidden)`` when ``return_hidden`` is given. ``cond=None`` means the
        null condition for every sample. D is float32 whatever the autocast dtype.
        """
        b = x.shape[0]
        sigma = _as_batch(sigma, b, x.device)
        c_skip, c_out, c_in, c_noise = self.get_scalings(sigma)
        shape = (b,) + (1,) * (x.dim() - 1)
        x32 = x.float()
        inp = c_in.view(shape) * x32
        if cond is None:
            out = self.net(inp, c_noise, None, None, None, **net_kwargs)
        else:
            out = self.net(inp, c_noise, cond.tokens, cond.mask, cond.pooled, uncond=cond.uncond,
                           **cond.musical_kwargs(), **net_kwargs)
        hidden = None
        if isinstance(out, tuple):
            out, hidden = out
        d = c_skip.view(shape) * x32 + c_out.view(shape) * out.float()
        return (d, hidden) if hidden is not None else d

    def guided(self, x: Tensor, sigma: Tensor | float, cond: Cond, w: float | Tensor,
               **net_kwargs) -> Tensor:
        """Classifier-free guided denoiser (:func:`cfg_guided`); ``net_kwargs`` go to both halves.
        (Callers with w == 1 should call :meth:`forward`: it costs half.)"""
        if net_kwargs.get("return_hidden"):
            raise ValueError("guided() does not return hidden states")
        if net_kwargs.get("budget") is not None:
            b = x.shape[0]
            net_kwargs["budget"] = torch.as_tensor(net_kwargs["budget"]).reshape(-1).expand(b).repeat(2)
        return cfg_guided(lambda x2, s2, c2: self.forward(x2, s2, c2, **net_kwargs), x, sigma, cond, w)

    # -- noise levels (thin wrappers over the module functions, with this config) ------------

    def sample_sigma_train(self, n: int, generator: torch.Generator | None = None,
                           device=None) -> Tensor:
        return sample_sigma_train(self.cfg, n, generator, device)

    def sample_sigma_inf(self, n: int, generator: torch.Generator | None = None,
                         rho: float | None = None, N: int | None = None, device=None) -> Tensor:
        return sample_sigma_inf(self.cfg, n, generator, rho=rho, N=N, device=device)


# ------------------------------------------------------------------------------------------
# Noise-level distributions (METHOD.md sections 2 and 3)


def sigma_train_from_normal(cfg: EDMConfig, z: Tensor) -> Tensor:
    """p_train: ``ln sigma = P_mean + P_std z`` with z ~ N(0, 1) given."""
    return torch.exp(cfg.p_mean + cfg.p_std * z.float())


def sigma_inf_from_uniform(cfg: EDMConfig, u: Tensor, rho: float | None = None,
                           N: int | None = None) -> Tensor:
    """p_inf from u ~ U(0, 1) given: continuous Karras, or one of the N points of the N-step
    few-step schedule when ``N`` is given (:func:`presto_cli.diffusion.schedules.inf_sigma`)."""
    from presto_cli.diffusion.schedules import inf_sigma

    if N is not None and N < 1:
        raise PrestoError(f"N must be >= 1, got {N}")
    rho = cfg.rho if rho is None else rho
    return inf_sigma(u, cfg.sigma_min, cfg.sigma_max, rho, steps=int(N or 0))


def sample_sigma_train(cfg: EDMConfig, n: int, generator: torch.Generator | None = None,
                       device=None) -> Tensor:
    """``n`` draws of p_train from ``generator`` (on its device), moved to ``device``."""
    z = torch.randn(n, generator=generator, device=generator.device if generator else device)
    s = sigma_train_from_normal(cfg, z)
    return s if device is None else s.to(device)


def sample_sigma_inf(cfg: EDMConfig, n: int, generator: torch.Generator | None = None,
                     rho: float | None = None, N: int | None = None, device=None) -> Tensor:
    """``n`` draws of p_inf (continuous, or the N points of an N-step schedule)."""
    u = torch.rand(n, generator=generator, device=generator.device if generator else device)
    s = sigma_inf_from_uniform(cfg, u, rho=rho, N=N)
    return s if device is None else s.to(device)


# ------------------------------------------------------------------------------------------
# Loss


def edm_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``."""
    s = sigma.float()
    return (s ** 2 + sigma_data ** 2) / (s * sigma_data) ** 2


def drop_condition(cond: Cond, p_uncond: float, u: Tensor) -> Cond:
    """CFG condition dropout: sample b gets the null condition where ``u[b] < p_uncond``.

    ``u`` ~ U(0, 1) comes from the caller (``ctx.rand``), so training stays exactly resumable.
    Samples already flagged unconditional stay so.
    """
    drop = u.to(cond.tokens.device).reshape(-1) < p_uncond
    return cond.with_uncond(drop | cond.uncond_flags())


def drop_musical(cond: Cond, p: float, u_tempo: Tensor, u_key: Tensor) -> Cond:
    """Tempo/key condition dropout: sample b's tempo becomes absent where ``u_tempo[b] < p``, its key
    where ``u_key[b] < p`` (independent draws from the caller's ``ctx.rand``), so the model also
    works without them."""
    if p <= 0 or (cond.tempo is None and cond.key is None):
        return cond
    tempo, key = cond.tempo, cond.key
    if tempo is not None:
        drop = u_tempo.to(tempo.device).reshape(-1) < p
        tempo = torch.where(drop, torch.full_like(tempo.float(), float("nan")), tempo.float())
    if key is not None:
        drop = u_key.to(key.device).reshape(-1) < p
        key = torch.where(drop, torch.full_like(key.long(), -1), key.long())
    return replace(cond, tempo=tempo, key=key)


def drop_tokens(cond: Cond, p: float, u: Tensor) -> Cond:
    """Pooled-only dropout: where ``u[b] < p`` sample b's token stream becomes one zero token (the
    form ``DiTConfig.pooled_only`` gives every sample at inference); its pooled vector stays."""
    drop = (u.to(cond.tokens.device).reshape(-1) < p)
    if not bool(drop.any()):
        return cond
    tokens = torch.where(drop[:, None, None], torch.zeros_like(cond.tokens), cond.tokens)
    first = torch.zeros_like(cond.mask, dtype=torch.bool)
    first[:, 0] = True
    mask = torch.where(drop[:, None], first, cond.mask.bool())
    return replace(cond, tokens=tokens, mask=mask)


def edm_loss(denoiser: EDMDenoiser, x0: Tensor, sigma: Tensor, noise: Tensor, cond: Cond | None,
             **net_kwargs) -> Tensor:
    """Per-sample EDM loss ``lambda(sigma) mean(|D(x0 + sigma noise; sigma, c) - x0|^2)`` [B].

    The squared error is averaged over the non-batch dimensions (so the scale does not depend on
    the latent size). ``noise`` ~ N(0, I) and ``sigma`` come from the caller.
    """
    b = x0.shape[0]
    sigma = _as_batch(sigma, b, x0.device)
    shape = (b,) + (1,) * (x0.dim() - 1)
    x = x0.float() + sigma.view(shape) * noise.float()
    d = denoiser(x, sigma, cond, **net_kwargs)
    if isinstance(d, tuple):
        d = d[0]
    err = (d - x0.float()).pow(2).flatten(1).mean(1)
    return edm_weight(sigma, denoiser.cfg.sigma_data) * err
