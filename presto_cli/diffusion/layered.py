"""Running a denoiser at a layer schedule's depths (METHOD.md section 4): the inference side of
layer distillation, shared by training (Presto-L, ASE, Presto-LS), the pipeline and the benchmarks.

:func:`forward_at_depths` runs each sample through the blocks of its own depth, one forward per
distinct depth; :class:`LayeredDenoiser` wraps an :class:`~presto_cli.diffusion.edm.EDMDenoiser` and
picks each sample's depth from its sigma, with the same ``forward``/``guided`` as the wrapped
denoiser, so every sampler (Euler, Heun, DPM++, few-step) runs it unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from presto_cli.diffusion.edm import Cond, EDMDenoiser, cfg_guided
from presto_cli.diffusion.layer_schedule import LayerSchedule
from presto_cli.errors import PrestoError


def forward_at_depths(denoiser: EDMDenoiser, x: Tensor, sigma: Tensor, cond: Cond | None,
                      depths: Tensor, schedule: LayerSchedule, **net_kwargs) -> Tensor:
    """``D(x; sigma, c)`` with sample b running the blocks of depth ``depths[b]``.

    One forward per distinct depth, through exactly that depth's blocks, with the budget (number
    of blocks run) passed for the budget embedding. Differentiable; the result is in batch order.
    """
    b = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(b)
    depths = depths.to(device=x.device, dtype=torch.long).reshape(-1)
    uniq = sorted({int(v) for v in depths.tolist()})
    if len(uniq) == 1:
        k = uniq[0]
        return denoiser(x, sigma, cond, blocks=schedule.blocks_for_depth(k), budget=depths, **net_kwargs)
    pieces, order = [], []
    for k in uniq:
        idx = (depths == k).nonzero(as_tuple=True)[0]
        sub_cond = None if cond is None else cond.index(idx)
        pieces.append(denoiser(x[idx], sigma[idx], sub_cond, blocks=schedule.blocks_for_depth(k),
                               budget=depths[idx], **net_kwargs))
        order.append(idx)
    out = torch.cat(pieces)
    inverse = torch.empty(b, dtype=torch.long, device=x.device)
    inverse[torch.cat(order)] = torch.arange(b, device=x.device)
    return out[inverse]


class LayeredDenoiser(nn.Module):
    """An EDM denoiser that runs ``schedule.blocks(sigma)`` for each sample (METHOD.md section 4).

    Same interface as :class:`EDMDenoiser`: ``forward(x, sigma, cond)`` and
    ``guided(x, sigma, cond, w)``; ``net``/``cfg`` are the wrapped denoiser's.
    """

    def __init__(self, denoiser: EDMDenoiser, schedule: LayerSchedule):
        super().__init__()
        depth = getattr(getattr(denoiser.net, "cfg", None), "depth", schedule.depth_total)
        if depth != schedule.depth_total:
            raise PrestoError(f"layer schedule is for {schedule.depth_total} blocks, the model has "
                              f"{depth}", "the artefact's schedule does not match its model")
        self.denoiser = denoiser
        self.schedule = schedule

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    @property
    def cfg(self):
        return self.denoiser.cfg

    def get_scalings(self, sigma: Tensor):
        return self.denoiser.get_scalings(sigma)

    def depths(self, sigma: Tensor | float, b: int, device=None) -> Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(-1).expand(b)
        return self.schedule.depths_for(s)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Cond | None, **net_kwargs) -> Tensor:
        if net_kwargs.get("blocks") is not None or net_kwargs.get("return_hidden"):
            raise ValueError("LayeredDenoiser chooses the blocks itself; call .denoiser directly")
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(b)
        return forward_at_depths(self.denoiser, x, sigma, cond, self.depths(sigma, b, x.device),
                                 self.schedule, **net_kwargs)

    def guided(self, x: Tensor, sigma: Tensor | float, cond: Cond, w: float | Tensor,
               **net_kwargs) -> Tensor:
        """Classifier-free guidance as one batch of 2B, each half at the schedule's depth."""
        return cfg_guided(lambda x2, s2, c2: self.forward(x2, s2, c2, **net_kwargs), x, sigma, cond, w)
