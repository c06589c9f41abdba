"""A learned text adapter over the frozen text encoder (METHOD.md section 2, "Prompts as written").

A DiT only knows the wordings it was trained on: a prompt in a person's words lands where its
cross-attention and adaLN condition have never been. The adapter sits between the frozen encoder
and every network of a chain and moves such a prompt's encoding to where the networks respond as
they do to a training caption of the same music, while a training caption passes through nearly
unchanged:

    tokens' = tokens + mask * W_t(h[1:]),  pooled' = pooled + W_p(h[0]),
    h = TransformerEncoder([in(pooled); in(tokens)])      (pre-norm, key-padding mask)

``W_t`` and ``W_p`` start at zero, so an untrained adapter is the identity. It is trained by the
``text-adapter`` stage (:mod:`presto_cli.stages.text_adapter`) through a frozen teacher: for a clip
with caption ``c`` and a plain-language description ``p`` of its music, the teacher's denoised
output under ``adapter(p)`` is pulled to its output under ``c`` (and under ``adapter(c)`` too).

Stored as an artefact of kind ``text-adapter``: tensors ``text_adapter.*`` and ``meta["text_adapter"]``
= the :class:`TextAdapterConfig` fields plus ``text`` (the encoder it was trained on); ``presto
generate/eval --text-adapter FILE`` puts it in front of any model of the chain.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from presto_cli.errors import PrestoError

__all__ = ["TextAdapterConfig", "TextAdapter", "PREFIX", "adapter_from_artefact", "adapter_to_artefact"]

PREFIX = "text_adapter."


@dataclass
class TextAdapterConfig:
    dim: int = 384  # the text encoder's feature dim
    width: int = 256  # the adapter's own width
    depth: int = 2  # transformer layers over [pooled; tokens]
    heads: int = 4  # attention heads per layer
    mlp_ratio: float = 2.0  # feed-forward width / width

    def validate(self) -> None:
        if self.dim < 1 or self.width < 1 or self.depth < 1 or self.heads < 1 or self.mlp_ratio <= 0:
            raise PrestoError(f"text adapter sizes must be positive: {asdict(self)}")
        if self.width % self.heads:
            raise PrestoError(f"adapter.width ({self.width}) must be a multiple of adapter.heads ({self.heads})")


class TextAdapter(nn.Module):
    """Residual adapter on ``(tokens [B,N,dim], mask [B,N] bool, pooled [B,dim])``; identity at init."""

    def __init__(self, cfg: TextAdapterConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.dim, cfg.width)
        self.kind = nn.Parameter(torch.zeros(2, cfg.width))  # 0: the pooled slot, 1: a token
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, int(cfg.width * cfg.mlp_ratio), dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.out_tokens = nn.Linear(cfg.width, cfg.dim)
        self.out_pooled = nn.Linear(cfg.width, cfg.dim)
        for lin in (self.out_tokens, self.out_pooled):  # identity at init
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, tokens: Tensor, mask: Tensor, pooled: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if tokens.shape[-1] != self.cfg.dim or pooled.shape[-1] != self.cfg.dim:
            raise PrestoError(f"the text adapter takes {self.cfg.dim}-d text features, got {tokens.shape[-1]}-d",
                              "use the adapter trained with this model's text encoder")
        mask = mask.bool()
        x = torch.cat([self.inp(pooled)[:, None] + self.kind[0], self.inp(tokens) + self.kind[1]], dim=1)
        valid = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        h = self.norm(self.blocks(x, src_key_padding_mask=~valid))
        tokens = tokens + self.out_tokens(h[:, 1:]) * mask[..., None].to(tokens.dtype)
        pooled = pooled + self.out_pooled(h[:, 0])
        return tokens, mask, pooled


def adapter_to_artefact(adapter: TextAdapter, text: str) -> tuple[dict[str, Tensor], dict]:
    """``(tensors under text_adapter., meta entry)`` for an artefact."""
    tensors = {PREFIX + k: v.detach().float().cpu().clone() for k, v in adapter.state_dict().items()}
    return tensors, {**asdict(adapter.cfg), "text": text}


def adapter_from_artefact(tensors: dict[str, Tensor], meta: dict, text: str | None = None,
                          where: str = "the model") -> TextAdapter | None:
    """The artefact's adapter in eval mode (None when it has none). ``text``: the encoder the model
    uses; an adapter trained on another one is refused."""
    info = meta.get("text_adapter")
    state = {k[len(PREFIX):]: v.float() for k, v in tensors.items() if k.startswith(PREFIX)}
    if not info or not state:
        return None
    info = dict(info)
    trained_on = info.pop("text", None)
    if text is not None and trained_on and trained_on != text:
        raise PrestoError(f"{where}: its text adapter was trained on the '{trained_on}' text encoder, the "
                          f"model uses '{text}'", "train the adapter on the model's encoder, or use --no-adapter")
    known = set(TextAdapterConfig.__dataclass_fields__)
    adapter = TextAdapter(TextAdapterConfig(**{k: v for k, v in info.items() if k in known}))
    missing, unexpected = adapter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PrestoError(f"{where}: its text adapter does not match its own configuration "
                          f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})",
                          "re-export it with `presto pretrain` (stage text-adapter)")
    return adapter.eval().requires_grad_(False)
