"""The Presto-S discriminator head and its least-squares GAN losses (METHOD.md section 3).

The discriminator is not a separate network: it is a small head reading the *fake score's* hidden
states of chosen DiT blocks [paper]. Each chosen block gets its own 1-D conv stack over the latent
frames (tokens), producing one logit per frame; the per-block logits are averaged. Per-frame logits
keep the decision local in time (a patch discriminator along the time axis) [ours].

Least-squares GAN [paper]: the head minimises ``(D(real) - 1)^2 + D(fake)^2`` and the generator
minimises ``(D(fake) - 1)^2`` (means over frames and samples).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from presto_cli.errors import PrestoError


class _BlockHead(nn.Module):
    """Conv1d stack over time: [B, F, width] -> [B, F] logits.

    The input is layer-normalised per frame (the DiT's residual stream has a large, depth-dependent
    scale); the conv layers use GroupNorm with one group (statistics over channels *and* frames of a
    sample). Per-channel group norms would be degenerate: with one latent frame they map every input
    to zero and the head would pass no gradient at all.
    """

    def __init__(self, width: int, hidden: int, layers: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        mods: list[nn.Module] = []
        ch = width
        for _ in range(layers):
            mods += [nn.Conv1d(ch, hidden, kernel, padding=kernel // 2), nn.GroupNorm(1, hidden),
                     nn.SiLU()]
            ch = hidden
        mods.append(nn.Conv1d(ch, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # h: [B, F, width] (token-major as the DiT returns it) -> conv over F
        return self.net(self.norm(h.float()).transpose(1, 2)).squeeze(1)


class DiscriminatorHead(nn.Module):
    """Per-frame realism logits from hidden states of the blocks in ``blocks``.

    ``forward(hidden: {block index: Tensor[B, F, width]}) -> Tensor[B, F]`` (mean over blocks).
    The head always runs in float32 (its inputs are cast), so bf16 autocast of the DiT is safe.
    """

    def __init__(self, width: int, blocks: Sequence[int], hidden: int = 0, layers: int = 2,
                 kernel: int = 3):
        super().__init__()
        if not blocks:
            raise PrestoError("distill.disc_blocks is empty", "name at least one fake-score block, e.g. [1]")
        if kernel % 2 == 0 or kernel < 1:
            raise PrestoError(f"distill.disc_kernel must be odd and positive, got {kernel}")
        if layers < 1:
            raise PrestoError(f"distill.disc_layers must be >= 1, got {layers}")
        self.blocks = [int(b) for b in blocks]
        hidden = hidden or min(width, 256)
        self.heads = nn.ModuleDict({str(b): _BlockHead(width, hidden, layers, kernel)
                                    for b in self.blocks})

    def forward(self, hidden: Mapping[int, torch.Tensor]) -> torch.Tensor:
        missing = [b for b in self.blocks if b not in hidden]
        if missing:
            raise ValueError(f"discriminator head needs hidden states of blocks {missing}")
        logits = [self.heads[str(b)](hidden[b]) for b in self.blocks]
        return torch.stack(logits, 0).mean(0)


def lsgan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Least-squares discriminator loss: ``mean (D(real) - 1)^2 + mean D(fake)^2``."""
    return ((real_logits.float() - 1) ** 2).mean() + (fake_logits.float() ** 2).mean()


def lsgan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Least-squares generator loss: ``mean (D(fake) - 1)^2``."""
    return ((fake_logits.float() - 1) ** 2).mean()
