"""The DiT backbone F of the EDM teacher (METHOD.md section 2, "Backbone").

Latent frames are tokens: ``x[B, C, F]`` is (optionally) patched along time into ``F / patch``
tokens of ``C * patch`` values, linearly embedded, given positions (learned or sinusoidal) and run
through pre-norm blocks:

    h = h + gate_sa  * SelfAttn(modulate(LN(h), shift_sa, scale_sa))
    h = h + gate_ca  * CrossAttn(modulate(LN(h), shift_ca, scale_ca), text tokens, key mask)
    h = h + gate_mlp * MLP(modulate(LN(h), shift_mlp, scale_mlp))

with every (shift, scale, gate) produced by a zero-initialised linear map of the condition vector
``c = NoiseEmbed(c_noise) + Proj(pooled text) [+ BudgetEmbed(k)] [+ TempoEmbed(bpm)] [+ KeyEmbed(key)]``
(adaLN-zero, so a fresh block is the identity; the budget, tempo and key terms are zero-initialised). A final LayerNorm + adaLN + zero-initialised linear map returns ``F[B, C, F]``,
optionally plus a frame-rate output refiner (``out_refine``: see :class:`OutputRefiner`).

The network knows nothing about EDM (the wrapper in :mod:`presto_cli.diffusion.edm` does the
preconditioning) nor about distillation; it only offers what distillation needs:
``blocks=`` (run a subset of blocks, in the given order: layer dropping, METHOD.md section 4),
``budget=`` (an embedding of the number of blocks run, zero-initialised so enabling it starts as
the identity) and ``return_hidden=`` (the outputs of chosen blocks, which the Presto-S
discriminator reads, METHOD.md section 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_cli.errors import PrestoError

__all__ = ["DiTConfig", "DiT", "estimate_params", "estimate_flops", "init_compatible"]

N_KEYS = 24  # 12 tonics x major/minor (presto_cli.text.musical: index = tonic + 12 * minor)
TEMPO_FEATURES = 64  # Fourier features of log BPM before the tempo MLP
# Beat-phase harmonics, in cycles per beat: the 4/4 bar, half bar, beat, 8th and 16th note.
BEAT_HARMONICS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _rms_fp32(norm: nn.Module, t: Tensor) -> Tensor:
    """``norm(t)`` computed in float32 whatever the dtype of ``t`` and of the norm's weight."""
    if isinstance(norm, nn.RMSNorm):
        w = None if norm.weight is None else norm.weight.float()
        return F.rms_norm(t.float(), norm.normalized_shape, w, norm.eps)
    return norm(t.float())


@dataclass
class DiTConfig:
    """Shape of the DiT (the ``model:`` section of teacher-family recipes)."""

    in_channels: int = 64  # latent channels C (teacher recipes: 0 = the codec's)
    width: int = 256
    depth: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384  # the text encoder's dim (MiniLM / hash: 384, CLAP: 512)
    patch: int = 1  # latent frames per token (patching along time)
    max_frames: int = 1024  # longest latent sequence (teacher recipes: 0 = one training clip's)
    pos_embed: Literal["sinusoidal", "learned"] = "sinusoidal"
    noise_embed_dim: int = 256  # Fourier features of c_noise before the MLP
    qk_norm: bool = True  # RMS-normalise queries and keys (stable under bf16)
    cross_attn: bool = True  # cross-attention to the text tokens (else pooled text only)
    # The text reaches the DiT through its pooled vector alone: the token stream is one zero token
    # (the form edm.p_pooled_only trains; METHOD.md section 2, "Words the captions never use").
    pooled_only: bool = False
    budget_embed: bool = False  # layer-budget embedding added to the adaLN condition (Presto-L)
    budget_rescale: bool = False  # learned per-budget scalar on the residual stream (Presto-L)
    tempo_cond: bool = False  # tempo (BPM) condition: Fourier features of log BPM -> MLP, added to the adaLN condition
    key_cond: bool = False  # key condition: an embedding of the 24 keys + "unknown", added to the adaLN condition
    # Beat-phase features (METHOD.md section 2, "Tempo and key"): with a tempo, each token also gets
    # cos/sin of the beat phase of its frames at BEAT_HARMONICS (bar .. 16th note), counted from the
    # clip's first frame, through a zero-initialised linear map added to its input. Needs tempo_cond
    # and frame_rate.
    tempo_phase: bool = False
    frame_rate: float = 0.0  # latent frames per second (teacher recipes: 0 = the codec's, with tempo_phase)
    # Channels of the frame-rate output refiner (0 = none). With patching, the final linear map
    # gives each token's C*patch outputs from only `width` features: when C*patch > width the
    # network cannot remove per-element noise outside that subspace (METHOD.md section 2).
    out_refine: int = 0
    # The 2-D output head (METHOD.md section 2, "Output capacity"): hidden channels of a small
    # convolutional refiner over (mel bin, frame) fed by an overlapping un-patching of the last
    # hidden states, the DiT's output and its input; zero-initialised, so adding it to a trained
    # teacher starts exactly at that teacher (0 = none).
    head2d: int = 0
    head2d_maps: int = 8  # feature maps the un-patching gives per frame
    head2d_bands: int = 16  # mel positions per map (stretched over the latent channels)
    head2d_layers: int = 2  # 3x3 convolutions before the zero-initialised 1x1 projection
    head2d_mel_stride: int = 1  # 2: the convolutions run at half the mel resolution
    head2d_separable: bool = False  # depthwise 3x3 + pointwise 1x1 after the first layer

    def validate(self) -> None:
        checks = [
            (self.in_channels >= 1, "model.in_channels must be >= 1"),
            (self.depth >= 1, "model.depth must be >= 1"),
            (self.patch >= 1, "model.patch must be >= 1"),
            (self.heads >= 1 and self.width % self.heads == 0,
             f"model.width ({self.width}) must be divisible by model.heads ({self.heads})"),
            (self.noise_embed_dim % 2 == 0, "model.noise_embed_dim must be even"),
            (self.max_frames >= 1, "model.max_frames must be >= 1"),
            (self.mlp_ratio > 0, "model.mlp_ratio must be > 0"),
            (self.text_dim >= 1, "model.text_dim must be >= 1"),
            (self.out_refine >= 0, "model.out_refine must be >= 0 (0 = no refiner)"),
            (self.head2d >= 0, "model.head2d must be >= 0 (0 = no 2-D head)"),
            (self.head2d_maps >= 1 and self.head2d_bands >= 1 and self.head2d_layers >= 1,
             "model.head2d_maps, head2d_bands and head2d_layers must be >= 1"),
            (self.head2d_mel_stride in (1, 2, 4), "model.head2d_mel_stride must be 1, 2 or 4"),
            (not self.tempo_phase or self.tempo_cond, "model.tempo_phase needs model.tempo_cond: true"),
            (self.frame_rate >= 0, "model.frame_rate must be >= 0 (0 = the codec's)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise PrestoError(msg, "fix the model section of the recipe")
        if self.pos_embed not in ("sinusoidal", "learned"):
            raise PrestoError(f"model.pos_embed must be sinusoidal or learned, got {self.pos_embed!r}")

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.width * self.mlp_ratio))

    @property
    def max_tokens(self) -> int:
        return math.ceil(self.max_frames / self.patch)


# ------------------------------------------------------------------------------------------
# Pieces


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sinusoidal_positions(n: int, dim: int, device=None, dtype=torch.float32) -> Tensor:
    """Transformer sinusoidal positions, ``(n, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
    ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * freqs[None]
    emb = torch.cat([ang.cos(), ang.sin()], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.to(dtype)


class NoiseEmbedding(nn.Module):
    """Fixed Fourier features of c_noise (= ln(sigma)/4) followed by a 2-layer MLP."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        # Frequencies 1 .. 1000 (geometric): c_noise spans about [-1.6, 1.1] for sigma in
        # [0.002, 80], so the lowest frequency sees the whole range and the highest resolves 1e-3.
        freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c_noise: Tensor) -> Tensor:
        ang = c_noise.float()[:, None] * self.freqs[None]
        feats = torch.cat([ang.cos(), ang.sin()], dim=1)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class TempoEmbedding(nn.Module):
    """A BPM -> the adaLN condition: Fourier features of ``u = ln(bpm / 20) / ln(20)`` (0 at 20 BPM,
    1 at 400), a 2-layer MLP whose output layer is zero-initialised, and a learned "absent" vector
    (zero-initialised too), used where the tempo is NaN or <= 0 (so a fresh one adds nothing)."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        # angular frequencies pi .. 64 pi: the lowest spans 20-400 BPM once (no wrap-around), at the
        # highest 1% of tempo turns the phase by 0.7 rad (a tempo is judged within 4%); higher ones
        # would let neighbouring tempos (80 vs 81 BPM) land far apart at initialisation
        freqs = math.pi * torch.exp(torch.linspace(0.0, math.log(64.0), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, width))
        self.null = nn.Parameter(torch.zeros(width))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, bpm: Tensor, absent: Tensor) -> Tensor:
        u = torch.log(bpm.float().clamp(min=1.0) / 20.0) / math.log(20.0)
        u = torch.where(absent, torch.zeros_like(u), u)
        ang = u[:, None] * self.freqs[None]
        e = self.mlp(torch.cat([ang.cos(), ang.sin()], dim=1).to(self.mlp[0].weight.dtype))
        return torch.where(absent[:, None], self.null.to(e.dtype)[None].expand_as(e), e)


def _tempo_or_absent(b: int, tempo: Tensor | None, null: Tensor, device) -> tuple[Tensor, Tensor]:
    """``(bpm [B] with absent entries 0, absent [B] bool)``: NaN, <= 0, a missing tempo and CFG's
    null condition (``null[b]``) are all "absent"."""
    t = (torch.full((b,), float("nan"), device=device) if tempo is None
         else tempo.to(device=device, dtype=torch.float32).reshape(-1).expand(b))
    absent = null | ~torch.isfinite(t) | (t <= 0)
    return torch.nan_to_num(t, nan=0.0), absent


def beat_phase_features(bpm: Tensor, frames: int, frame_rate: float, frame_offset: int = 0) -> Tensor:
    """cos/sin of the beat phase of every frame: ``[B, frames, 2 * len(BEAT_HARMONICS)]``.

    Frame ``f`` (counted from the clip's first frame, ``frame_offset`` added) lies
    ``(f + frame_offset) / frame_rate * bpm / 60`` beats into the clip; harmonic ``m`` turns
    ``2 pi m`` per beat, so frames one beat apart get the same features at every harmonic of 1 and
    above and frames one 4/4 bar apart at all of them."""
    f = torch.arange(frames, device=bpm.device, dtype=torch.float64) + float(frame_offset)
    beats = (f[None] / float(frame_rate)) * (bpm.double()[:, None] / 60.0)
    harm = torch.tensor(BEAT_HARMONICS, device=bpm.device, dtype=torch.float64)
    # the phase modulo one cycle before the float32 cast keeps long clips exact
    cyc = torch.remainder(beats[..., None] * harm, 1.0)
    ang = (2.0 * math.pi * cyc).float()
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


class BeatPhase(nn.Module):
    """Beat-phase features of a token's ``patch`` frames -> a vector added to that token's input
    (zero-initialised, so adding it to a trained network changes nothing; zero where the tempo is
    absent or CFG's null condition is used)."""

    def __init__(self, patch: int, width: int, frame_rate: float):
        super().__init__()
        self.patch = patch
        self.frame_rate = float(frame_rate)
        self.proj = nn.Linear(2 * len(BEAT_HARMONICS) * patch, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, bpm: Tensor, absent: Tensor, n_tokens: int, frame_offset: int = 0) -> Tensor:
        b = bpm.shape[0]
        feats = beat_phase_features(bpm, n_tokens * self.patch, self.frame_rate, frame_offset)
        feats = feats.reshape(b, n_tokens, self.patch * feats.shape[-1])
        out = self.proj(feats.to(self.proj.weight.dtype))
        return torch.where(absent[:, None, None], torch.zeros_like(out), out)


class Attention(nn.Module):
    """Multi-head attention through ``F.scaled_dot_product_attention`` (self or cross)."""

    def __init__(self, width: int, heads: int, qk_norm: bool, cross: bool):
        super().__init__()
        self.heads = heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(width, width)
            self.kv = nn.Linear(width, 2 * width)
        else:
            self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        hd = width // heads
        self.q_norm = nn.RMSNorm(hd, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(hd, eps=1e-6) if qk_norm else nn.Identity()

    def _split(self, t: Tensor) -> Tensor:  # (B, N, W) -> (B, H, N, W/H)
        b, n, w = t.shape
        return t.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, ctx: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        if self.cross:
            q = self.q(x)
            k, v = self.kv(ctx).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        # normalise in float32 (weights too: a bf16-cast teacher has bf16 ones), attend in v's dtype
        q, k = _rms_fp32(self.q_norm, q).to(v.dtype), _rms_fp32(self.k_norm, k).to(v.dtype)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        b, h, n, d = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, h * d))


class DiTBlock(nn.Module):
    """Pre-norm block with adaLN-zero modulation: self-attn, cross-attn, MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        w = cfg.width
        self.has_cross = cfg.cross_attn
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(w, cfg.heads, cfg.qk_norm, cross=False)
        if self.has_cross:
            self.norm2 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
            self.cross = Attention(w, cfg.heads, cfg.qk_norm, cross=True)
        self.norm3 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(w, cfg.mlp_hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_hidden, w))
        self.n_mod = 9 if self.has_cross else 6
        self.ada = nn.Linear(w, self.n_mod * w)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: Tensor, c: Tensor, text: Tensor | None, text_mask: Tensor | None) -> Tensor:
        mods = self.ada(F.silu(c)).chunk(self.n_mod, dim=-1)
        h = h + mods[2].unsqueeze(1) * self.attn(_modulate(self.norm1(h), mods[0], mods[1]))
        if self.has_cross:
            y = self.cross(_modulate(self.norm2(h), mods[6], mods[7]), text, text_mask)
            h = h + mods[8].unsqueeze(1) * y
        h = h + mods[5].unsqueeze(1) * self.mlp(_modulate(self.norm3(h), mods[3], mods[4]))
        return h


# ------------------------------------------------------------------------------------------
# The network


class OutputRefiner(nn.Module):
    """A small frame-rate residual on the DiT's output: ``r(y, x, c)`` from the unpatched output
    ``y[B,C,F]`` and the (preconditioned) input ``x[B,C,F]``, two kernel-3 convolutions FiLM-ed
    by the condition vector, a zero-initialised 1x1 projection (so it starts as the identity).
    It gives every latent element its own degrees of freedom, which the token bottleneck lacks."""

    def __init__(self, channels: int, hidden: int, cond_dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(2 * channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv1d(hidden, hidden, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * hidden)
        self.proj = nn.Conv1d(hidden, channels, 1)
        for mod in (self.film, self.proj):
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)

    def forward(self, y: Tensor, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale = self.film(F.silu(cond)).to(y.dtype).chunk(2, dim=-1)
        h = self.conv1(torch.cat([y, x], dim=1))
        h = F.gelu(h * (1 + scale[:, :, None]) + shift[:, :, None])
        h = F.gelu(self.conv2(h))
        return self.proj(h)


class Head2D(nn.Module):
    """The 2-D output head: every latent element gets its own degrees of freedom.

    1. Overlapping un-patching: a transposed convolution over tokens (kernel ``2 * patch``,
       stride ``patch``) turns each token's last hidden state into ``maps x bands`` values per
       frame, spread over the token's frames and its neighbours' (no hard seam at token edges);
       the ``bands`` axis is stretched (linear interpolation) over the ``C`` mel bins.
    2. A convolutional refiner over (mel bin, frame): ``[maps, y, x] -> hidden`` (3x3, FiLM from
       the condition, GELU) -> ``layers - 1`` more 3x3 convolutions (GELU; depthwise-separable if
       asked) -> a zero-initialised 1x1 projection to one channel, added to the DiT's output ``y``.
    With ``mel_stride`` > 1 the convolutions run on mel bins averaged in groups of ``mel_stride``
    and their output is stretched back (cheaper, coarser along frequency; full time resolution).
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        p, w, hid = cfg.patch, cfg.width, cfg.head2d
        self.patch, self.maps, self.bands, self.stride = p, cfg.head2d_maps, cfg.head2d_bands, cfg.head2d_mel_stride
        self.unpatch = nn.ConvTranspose1d(w, self.maps * self.bands, 2 * p, stride=p, padding=p // 2)
        self.conv_in = nn.Conv2d(self.maps + 2, hid, 3, padding=1)
        self.film = nn.Linear(w, 2 * hid)
        layers: list[nn.Module] = []
        for _ in range(cfg.head2d_layers - 1):
            if cfg.head2d_separable:
                layers += [nn.Conv2d(hid, hid, 3, padding=1, groups=hid), nn.Conv2d(hid, hid, 1), nn.GELU()]
            else:
                layers += [nn.Conv2d(hid, hid, 3, padding=1), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hid, 1, 1)
        for mod in (self.film, self.proj):
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)

    def forward(self, hidden: Tensor, y: Tensor, x: Tensor, cond: Tensor) -> Tensor:
        """``hidden[B, n, W]`` (the modulated last hidden states), ``y, x [B, C, F]`` -> ``[B, C, F]``."""
        b, c, frames = y.shape
        u = self.unpatch(hidden.transpose(1, 2).to(self.unpatch.weight.dtype))  # [B, maps*bands, >= n*p]
        if u.shape[-1] < frames:
            u = F.pad(u, (0, frames - u.shape[-1]))
        u = u[:, :, :frames].reshape(b, self.maps, self.bands, frames)
        rows = c // self.stride if c % self.stride == 0 else c
        stride = c // rows
        u = F.interpolate(u, size=(rows, frames), mode="bilinear", align_corners=False)
        yx = torch.stack([y, x.to(y.dtype)], dim=1)  # [B, 2, C, F]
        if stride > 1:
            yx = F.avg_pool2d(yx, (stride, 1))
        h = self.conv_in(torch.cat([u.to(yx.dtype), yx], dim=1))
        shift, scale = self.film(F.silu(cond)).to(h.dtype).chunk(2, dim=-1)
        h = F.gelu(h * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        r = self.proj(self.body(h))  # [B, 1, rows, F]
        if stride > 1:
            r = F.interpolate(r, size=(c, frames), mode="bilinear", align_corners=False)
        return r[:, 0]


class DiT(nn.Module):
    """Diffusion transformer over latent frames; predicts the EDM network output F.

    ``forward(x[B,C,F], c_noise[B], text_tokens[B,N,text_dim], text_mask[B,N] bool,
    text_pooled[B,text_dim], *, blocks=None, budget=None, return_hidden=(), uncond=None)``.
    ``text_*`` may be None for an unconditional call (every sample then uses the null condition).
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        w = cfg.width
        self.x_in = nn.Linear(cfg.in_channels * cfg.patch, w)
        if cfg.pos_embed == "learned":
            self.pos = nn.Parameter(torch.randn(cfg.max_tokens, w) * 0.02)
        else:
            self.register_parameter("pos", None)
        self.noise_embed = NoiseEmbedding(cfg.noise_embed_dim, w)
        self.pooled_proj = nn.Sequential(nn.Linear(cfg.text_dim, w), nn.SiLU(), nn.Linear(w, w))
        if cfg.cross_attn:
            self.text_norm = nn.LayerNorm(cfg.text_dim, eps=1e-6)
            self.text_proj = nn.Linear(cfg.text_dim, w)
        # The learned null condition for classifier-free guidance (METHOD.md section 2).
        self.null_tokens = nn.Parameter(torch.randn(1, cfg.text_dim) * 0.02)
        self.null_pooled = nn.Parameter(torch.zeros(cfg.text_dim))
        if cfg.budget_embed:
            self.budget_embed = nn.Embedding(cfg.depth + 1, w)
            nn.init.zeros_(self.budget_embed.weight)  # identity at initialisation
        if cfg.budget_rescale:
            self.budget_scale = nn.Parameter(torch.ones(cfg.depth + 1))
        # Tempo and key conditions (zero-initialised: a teacher trained without them continues
        # from its weights unchanged, METHOD.md section 2 "Tempo and key").
        if cfg.tempo_cond:
            self.tempo_embed = TempoEmbedding(TEMPO_FEATURES, w)
        if cfg.key_cond:
            self.key_embed = nn.Embedding(N_KEYS + 1, w)  # index N_KEYS: unknown
            nn.init.zeros_(self.key_embed.weight)
        if cfg.tempo_phase:
            if cfg.frame_rate <= 0:
                raise PrestoError("model.tempo_phase needs model.frame_rate (latent frames per second)",
                                  "set model.frame_rate, or leave it 0 in a teacher recipe to take the codec's")
            self.beat_phase = BeatPhase(cfg.patch, w, cfg.frame_rate)
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(w, 2 * w)
        self.out = nn.Linear(w, cfg.in_channels * cfg.patch)
        for lin in (self.final_ada, self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        if cfg.out_refine:
            self.refine = OutputRefiner(cfg.in_channels, cfg.out_refine, w)
        if cfg.head2d:
            self.head2d = Head2D(cfg)

    # -- helpers ---------------------------------------------------------------------------

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _condition_text(self, b: int, tokens: Tensor | None, mask: Tensor | None,
                        pooled: Tensor | None, uncond: Tensor | None, device, dtype):
        """Swap in the learned null condition where ``uncond`` is True."""
        td = self.cfg.text_dim
        if tokens is None or pooled is None:
            tokens = self.null_tokens.to(dtype)[None].expand(b, 1, td)
            mask = torch.ones(b, 1, dtype=torch.bool, device=device)
            return tokens, mask, self.null_pooled.to(dtype)[None].expand(b, td)
        if tokens.shape[-1] != td or pooled.shape[-1] != td:
            raise PrestoError(f"text features have dim {tokens.shape[-1]}, the DiT expects {td}",
                              "model.text_dim must match the text encoder")
        tokens = tokens.to(dtype)
        pooled = pooled.to(dtype)
        if self.cfg.pooled_only:
            tokens = torch.zeros(b, 1, td, dtype=dtype, device=tokens.device)
            mask = torch.ones(b, 1, dtype=torch.bool, device=tokens.device)
        n = tokens.shape[1]
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=device)
        mask = mask.bool()
        if uncond is not None:
            u = uncond.to(device=device, dtype=torch.bool).view(b)
            null_tok = torch.zeros_like(tokens)
            null_tok[:, 0] = self.null_tokens[0].to(dtype)
            null_mask = torch.zeros_like(mask)
            null_mask[:, 0] = True
            tokens = torch.where(u[:, None, None], null_tok, tokens)
            mask = torch.where(u[:, None], null_mask, mask)
            pooled = torch.where(u[:, None], self.null_pooled.to(dtype)[None].expand_as(pooled), pooled)
        # A sample with no valid key would give NaN attention: let it see its first token.
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            mask = mask.clone()
            mask[empty, 0] = True
        return tokens, mask, pooled

    def _musical(self, b: int, tempo: Tensor | None, key: Tensor | None, null: Tensor, device,
                 dtype) -> Tensor | None:
        """The tempo/key part of the condition vector (None when the model has neither): NaN or
        <= 0 tempo, key -1 (or None) and CFG's null condition (``null[b]``) are "absent"."""
        cfg = self.cfg
        if not (cfg.tempo_cond or cfg.key_cond):
            return None
        out = torch.zeros(b, cfg.width, device=device, dtype=dtype)
        if cfg.tempo_cond:
            t, absent = _tempo_or_absent(b, tempo, null, device)
            out = out + self.tempo_embed(t, absent).to(dtype)
        if cfg.key_cond:
            k = (torch.full((b,), -1, dtype=torch.long, device=device) if key is None
                 else key.to(device=device, dtype=torch.long).reshape(-1).expand(b))
            if bool(((k < -1) | (k >= N_KEYS)).any()):
                raise PrestoError(f"key indices must lie in -1..{N_KEYS - 1} (-1: absent)")
            k = torch.where(null | (k < 0), torch.full_like(k, N_KEYS), k)
            out = out + self.key_embed(k).to(dtype)
        return out

    # -- forward ---------------------------------------------------------------------------

    def forward(self, x: Tensor, c_noise: Tensor, text_tokens: Tensor | None = None,
                text_mask: Tensor | None = None, text_pooled: Tensor | None = None, *,
                blocks: Sequence[int] | None = None, budget: Tensor | None = None,
                return_hidden: Sequence[int] = (), uncond: Tensor | None = None,
                tempo: Tensor | None = None, key: Tensor | None = None, frame_offset: int = 0):
        cfg = self.cfg
        if x.dim() != 3 or x.shape[1] != cfg.in_channels:
            raise PrestoError(f"DiT expects latents of shape [B, {cfg.in_channels}, frames], got "
                              f"{tuple(x.shape)}", "model.in_channels must match the codec")
        b, c, frames = x.shape
        dtype = self.x_in.weight.dtype
        p = cfg.patch
        pad = (-frames) % p
        if pad:
            x = F.pad(x, (0, pad))
        n = (frames + pad) // p
        if n > cfg.max_tokens and cfg.pos_embed == "learned":
            raise PrestoError(f"{frames} latent frames exceed model.max_frames={cfg.max_frames}",
                              "generate a shorter clip or train with a larger max_frames")
        # (B, C, n*p) -> (B, n, C*p): each token holds p consecutive frames of all channels
        tok = x.reshape(b, c, n, p).permute(0, 2, 1, 3).reshape(b, n, c * p).to(dtype)
        h = self.x_in(tok)
        if self.pos is not None:
            h = h + self.pos[:n].to(h.dtype)[None]
        else:
            h = h + sinusoidal_positions(n, cfg.width, h.device, h.dtype)[None]

        c_noise = c_noise.reshape(-1).to(x.device)
        if c_noise.numel() == 1:
            c_noise = c_noise.expand(b)
        tokens, mask, pooled = self._condition_text(b, text_tokens, text_mask, text_pooled,
                                                    uncond, x.device, dtype)
        cond = self.noise_embed(c_noise) + self.pooled_proj(pooled)
        null = (torch.ones(b, dtype=torch.bool, device=x.device) if text_tokens is None or text_pooled is None
                else torch.zeros(b, dtype=torch.bool, device=x.device) if uncond is None
                else uncond.to(device=x.device, dtype=torch.bool).reshape(-1).expand(b))
        musical = self._musical(b, tempo, key, null, x.device, cond.dtype)
        if musical is not None:
            cond = cond + musical
        if cfg.tempo_phase:
            t, absent = _tempo_or_absent(b, tempo, null, x.device)
            h = h + self.beat_phase(t, absent, n, frame_offset).to(h.dtype)
        text = self.text_proj(self.text_norm(tokens)) if cfg.cross_attn else None

        order = list(range(cfg.depth)) if blocks is None else [int(i) for i in blocks]
        for i in order:
            if not 0 <= i < cfg.depth:
                raise PrestoError(f"block index {i} out of range for a DiT of depth {cfg.depth}")
        want = {int(i) for i in return_hidden}
        missing = want - set(order)
        if missing:
            raise PrestoError(f"return_hidden asks for blocks {sorted(missing)} that are not run",
                              f"blocks run: {order}")
        if (cfg.budget_embed or cfg.budget_rescale):
            if budget is None:
                budget = torch.full((b,), len(order), dtype=torch.long, device=x.device)
            budget = budget.to(device=x.device, dtype=torch.long).reshape(-1).expand(b)
            if bool((budget < 0).any()) or bool((budget > cfg.depth).any()):
                raise PrestoError(f"budget must lie in 0..{cfg.depth}")
        if cfg.budget_embed:
            cond = cond + self.budget_embed(budget).to(cond.dtype)

        hidden: dict[int, Tensor] = {}
        prev, rescaled = -1, False
        for i in order:
            if cfg.budget_rescale and not rescaled and i != prev + 1:
                # the first block after skipped ones sees a residual stream of another scale
                # (METHOD section 4: Presto-L preserves hidden-state variance): rescale it here,
                # per budget. (After the last block a rescale would be cancelled by final_norm.)
                h = h * self.budget_scale[budget].to(h.dtype)[:, None, None]
                rescaled = True
            h = self.blocks[i](h, cond, text, mask)
            prev = i
            if i in want:
                hidden[i] = h
        shift, scale = self.final_ada(F.silu(cond)).chunk(2, dim=-1)
        hf = _modulate(self.final_norm(h), shift, scale)
        y = self.out(hf)  # (B, n, C*p)
        y = y.reshape(b, n, c, p).permute(0, 2, 1, 3).reshape(b, c, n * p)[:, :, :frames]
        if cfg.out_refine:
            y = y + self.refine(y, x[:, :, :frames].to(y.dtype), cond)
        if cfg.head2d:
            y = y + self.head2d(hf, y, x[:, :, :frames], cond)
        if return_hidden:
            return y, hidden
        return y


# ------------------------------------------------------------------------------------------
# Continuing a trained network with new zero-initialised parts

# model keys that only ADD zero-initialised modules when switched on (a trained network plus them
# computes exactly what it computed before), with the state-dict prefix of what they add
_ADDITIVE = {"head2d": "head2d.", "tempo_cond": "tempo_embed.", "key_cond": "key_embed.",
             "tempo_phase": "beat_phase."}
_ADDITIVE_DETAIL = {"head2d": ("head2d_maps", "head2d_bands", "head2d_layers", "head2d_mel_stride",
                               "head2d_separable"), "tempo_phase": ("frame_rate",)}
_FEEDING = ("pooled_only",)  # how the text is fed, not the network's shape


def init_compatible(source: dict, target: "DiTConfig") -> tuple[list[str], tuple[str, ...]]:
    """Can a network saved with model section ``source`` initialise one of config ``target``?

    Returns ``(differences that forbid it, state-dict prefixes the source may lack)``: the target
    may switch on additive parts (``_ADDITIVE``, off in the source) and choose their shape keys;
    every other key must agree (keys absent from an older file take their defaults)."""
    from dataclasses import asdict

    src = {**asdict(DiTConfig()), **(source or {})}
    dst = asdict(target)
    allowed: list[str] = []
    ok_keys = set(_FEEDING)
    for key, prefix in _ADDITIVE.items():
        if not src.get(key) and dst.get(key):
            allowed.append(prefix)
            ok_keys |= {key, *_ADDITIVE_DETAIL.get(key, ())}
    bad = [f"{k}: {src.get(k)!r} -> {dst[k]!r}" for k in dst if k not in ok_keys and src.get(k) != dst[k]]
    return bad, tuple(allowed)


# ------------------------------------------------------------------------------------------
# Size estimates (no allocation: used by `presto ... --dry-run`)


def estimate_params(cfg: DiTConfig) -> int:
    """Exact parameter count of ``DiT(cfg)`` computed from the config alone."""
    w, td, hid = cfg.width, cfg.text_dim, cfg.mlp_hidden
    hd = w // cfg.heads
    lin = lambda i, o: i * o + o  # noqa: E731
    qkn = 2 * hd if cfg.qk_norm else 0
    n = lin(cfg.in_channels * cfg.patch, w)
    n += cfg.max_tokens * w if cfg.pos_embed == "learned" else 0
    n += lin(cfg.noise_embed_dim, w) + lin(w, w)
    n += lin(td, w) + lin(w, w)
    if cfg.cross_attn:
        n += 2 * td + lin(td, w)
    n += td + td  # null_tokens, null_pooled
    n += (cfg.depth + 1) * w if cfg.budget_embed else 0
    n += (cfg.depth + 1) if cfg.budget_rescale else 0
    n += lin(TEMPO_FEATURES, w) + lin(w, w) + w if cfg.tempo_cond else 0
    n += (N_KEYS + 1) * w if cfg.key_cond else 0
    n += lin(2 * len(BEAT_HARMONICS) * cfg.patch, w) if cfg.tempo_phase else 0
    block = lin(w, 3 * w) + lin(w, w) + qkn
    if cfg.cross_attn:
        block += lin(w, w) + lin(w, 2 * w) + lin(w, w) + qkn
    block += lin(w, hid) + lin(hid, w)
    block += lin(w, (9 if cfg.cross_attn else 6) * w)
    n += cfg.depth * block
    n += lin(w, 2 * w) + lin(w, cfg.in_channels * cfg.patch)
    if cfg.out_refine:
        c, r = cfg.in_channels, cfg.out_refine
        n += (2 * c * r * 3 + r) + (r * r * 3 + r) + lin(w, 2 * r) + lin(r, c)
    if cfg.head2d:
        hid, maps = cfg.head2d, cfg.head2d_maps
        n += w * maps * cfg.head2d_bands * 2 * cfg.patch + maps * cfg.head2d_bands  # un-patching
        n += (maps + 2) * hid * 9 + hid + lin(w, 2 * hid)
        per = (hid * 9 + hid + hid * hid + hid) if cfg.head2d_separable else (hid * hid * 9 + hid)
        n += (cfg.head2d_layers - 1) * per + lin(hid, 1)
    return n


def estimate_flops(cfg: DiTConfig, frames: int, text_tokens: int = 64,
                   blocks: int | None = None) -> int:
    """Approximate forward FLOPs (2 per multiply-add) for one sample, ``blocks`` blocks run."""
    w, hid = cfg.width, cfg.mlp_hidden
    n = math.ceil(frames / cfg.patch)
    k = cfg.depth if blocks is None else blocks
    per_block = 2 * n * (4 * w * w) + 2 * 2 * n * n * w  # qkv + out, QK^T and AV
    if cfg.cross_attn:
        per_block += 2 * n * 2 * w * w + 2 * text_tokens * 2 * w * w + 2 * 2 * n * text_tokens * w
    per_block += 2 * n * 2 * w * hid
    io = 2 * n * w * cfg.in_channels * cfg.patch * 2
    if cfg.out_refine:
        c, r = cfg.in_channels, cfg.out_refine
        io += 2 * frames * (2 * c * r * 3 + r * r * 3 + r * c)
    io += head2d_flops(cfg, frames)
    return int(k * per_block + io)


def head2d_flops(cfg: DiTConfig, frames: int) -> int:
    """Forward FLOPs of the 2-D head for one sample (0 without one): un-patching + convolutions."""
    if not cfg.head2d:
        return 0
    n = math.ceil(frames / cfg.patch)
    hid, maps = cfg.head2d, cfg.head2d_maps
    unpatch = 2 * n * cfg.width * maps * cfg.head2d_bands * 2 * cfg.patch
    pix = (cfg.in_channels // cfg.head2d_mel_stride) * frames
    per = (hid * 9 + hid * hid) if cfg.head2d_separable else hid * hid * 9
    conv = 2 * pix * ((maps + 2) * hid * 9 + (cfg.head2d_layers - 1) * per + hid)
    return int(unpatch + conv)
