"""Layer budget schedules: how many (and which) DiT blocks run at each noise level.

METHOD.md section 4. A schedule splits the noise axis (in ln sigma) into bins and gives each bin a
depth k (number of blocks run, out of ``depth_total``). Two ways of choosing *which* k blocks run:

- ``first-k`` (ASE, Moon et al. 2024): run blocks ``0..k-1`` and exit early; the final norm and
  output layer read the shallow hidden state.
- ``keep-last`` (Presto-L, our reading of the paper): always run the final ``keep_last`` blocks and
  drop the ``L - k`` blocks right before them, so the output layers see a state produced by the
  layers that were trained to feed them.

Pure logic: no torch dependence except for the optional tensor helpers.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from presto_cli.diffusion.schedules import karras, sampler_sigmas
from presto_cli.errors import PrestoError

MODES = ("first-k", "keep-last")

# DiT-XL/2 under ASE runs 28/24/20/16/12 of its 28 blocks over five noise bins [ASE]: the
# shallowest bin keeps 12/28 of the depth. Our default scales that to any depth.
ASE_MIN_FRACTION = 12.0 / 28.0


def eval_sigmas(sampler: str, sigmas: Sequence[float]) -> list[float]:
    """The noise levels at which ``sampler`` calls the network for the schedule ``sigmas``.

    Euler, DPM++(2M) and the few-step sampler evaluate once per step at ``sigmas[i]``; EDM Heun
    adds a correction at ``sigmas[i+1]`` on every step but the last one into 0 (2N-1 calls).
    """
    s = [float(v) for v in sigmas]
    if sampler in ("euler", "dpmpp_2m", "fewstep"):
        return s[:-1]
    if sampler == "heun":
        out = []
        for i in range(len(s) - 1):
            out.append(s[i])
            if s[i + 1] > 0:
                out.append(s[i + 1])
        return out
    raise PrestoError(f"unknown sampler '{sampler}'", "use euler, heun, dpmpp_2m or fewstep")


@dataclass
class LayerSchedule:
    """Depth per noise bin.

    ``bins`` are the interior bin edges in ln(sigma), ascending; ``depths[i]`` is the number of
    blocks run for ``bins[i-1] <= ln sigma < bins[i]`` (so ``depths[0]`` is the lowest-noise bin
    and ``len(depths) == len(bins) + 1``).
    """

    bins: list[float]
    depths: list[int]
    depth_total: int
    mode: str = "keep-last"
    keep_last: int = 1
    _edges: list[float] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        self.bins = [float(b) for b in self.bins]
        self.depths = [int(d) for d in self.depths]
        self.depth_total = int(self.depth_total)
        self.keep_last = int(self.keep_last)
        L = self.depth_total
        if self.mode not in MODES:
            raise PrestoError(f"unknown layer schedule mode '{self.mode}'", f"use one of {MODES}")
        if L < 1:
            raise PrestoError(f"layer schedule depth_total must be >= 1, got {L}")
        if len(self.depths) != len(self.bins) + 1:
            raise PrestoError(
                f"layer schedule has {len(self.depths)} depths for {len(self.bins)} bin edges",
                "give one more depth than there are edges (depths run from low to high noise)")
        if any(b2 <= b1 for b1, b2 in zip(self.bins, self.bins[1:])):
            raise PrestoError(f"layer schedule bin edges must increase, got {self.bins}",
                              "edges are ln(sigma) values in ascending order")
        if any(math.isnan(b) for b in self.bins):
            raise PrestoError("layer schedule bin edges contain NaN")
        for d in self.depths:
            if not 1 <= d <= L:
                raise PrestoError(f"layer schedule depth {d} is outside 1..{L}",
                                  "each depth is a number of blocks of the model")
        if self.mode == "keep-last":
            if not 0 <= self.keep_last <= L:
                raise PrestoError(f"layers.keep_last={self.keep_last} must lie in 0..{L}")
            low = min(self.depths)
            if low < self.keep_last:
                raise PrestoError(
                    f"layer schedule depth {low} is smaller than keep_last={self.keep_last}",
                    "raise the depths or lower layers.keep_last")
        self._edges = list(self.bins)

    # ---------------------------------------------------------------- construction

    @classmethod
    def default(cls, depth_total: int, mode: str = "keep-last", *, n_bins: int = 5,
                min_fraction: float = ASE_MIN_FRACTION, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0, keep_last: int = 1) -> "LayerSchedule":
        """ASE-style default: full depth at the lowest noise, ``min_fraction`` at the highest.

        Depths fall linearly over ``n_bins`` bins (28 -> 28/24/20/16/12 for DiT-XL/2). The edges
        split the Karras schedule's rho-space into equal parts, so each bin holds about the same
        number of sampler steps whatever the step count [ours].
        """
        if n_bins < 1:
            raise PrestoError(f"layers.n_bins must be >= 1, got {n_bins}")
        if not 0.0 < min_fraction <= 1.0:
            raise PrestoError(f"layers.min_fraction must lie in (0, 1], got {min_fraction}")
        L = int(depth_total)
        half_up = lambda v: int(math.floor(v + 0.5))  # noqa: E731  (not banker's rounding)
        lo = max(1, keep_last if mode == "keep-last" else 1, half_up(L * min_fraction))
        if n_bins == 1:
            depths = [lo]
        else:
            depths = [half_up(L - i * (L - lo) / (n_bins - 1)) for i in range(n_bins)]
        # u = 1 is sigma_min (low noise): edges ascending in ln sigma means u descending.
        edges = [math.log(karras(1.0 - j / n_bins, sigma_min, sigma_max, rho))
                 for j in range(1, n_bins)]
        return cls(bins=edges, depths=depths, depth_total=L, mode=mode, keep_last=keep_last)

    @classmethod
    def constant(cls, depth: int, depth_total: int, mode: str = "keep-last",
                 keep_last: int = 1) -> "LayerSchedule":
        """The same depth at every noise level (a fixed compute budget)."""
        return cls(bins=[], depths=[depth], depth_total=depth_total, mode=mode, keep_last=keep_last)

    def to_dict(self) -> dict:
        return {"bins": list(self.bins), "depths": list(self.depths),
                "depth_total": self.depth_total, "mode": self.mode, "keep_last": self.keep_last}

    @classmethod
    def from_dict(cls, d: dict) -> "LayerSchedule":
        if not isinstance(d, dict):
            raise PrestoError("layer schedule metadata must be a mapping",
                              "the artefact was not exported by presto distill-layers")
        known = {"bins", "depths", "depth_total", "mode", "keep_last"}
        unknown = set(d) - known
        if unknown or not {"bins", "depths", "depth_total"} <= set(d):
            raise PrestoError(f"layer schedule metadata has keys {sorted(d)}",
                              f"expected {sorted(known)}")
        return cls(bins=list(d["bins"]), depths=list(d["depths"]), depth_total=int(d["depth_total"]),
                   mode=str(d.get("mode", "keep-last")), keep_last=int(d.get("keep_last", 1)))

    # ---------------------------------------------------------------- queries

    def bin_index(self, sigma: float) -> int:
        ln = math.log(sigma) if sigma > 0 else -math.inf
        return bisect.bisect_right(self._edges, ln)

    def depth(self, sigma: float) -> int:
        """Number of blocks run at noise level ``sigma``."""
        return self.depths[self.bin_index(float(sigma))]

    def blocks_for_depth(self, k: int) -> list[int]:
        """Indices (ascending) of the ``k`` blocks run at depth ``k``."""
        L = self.depth_total
        k = int(k)
        if not 1 <= k <= L:
            raise PrestoError(f"depth {k} is outside 1..{L}")
        if self.mode == "first-k":
            return list(range(k))
        keep = min(self.keep_last, k)
        head = k - keep  # blocks kept from the start; the dropped ones sit right before the tail
        return list(range(head)) + list(range(L - keep, L))

    def blocks(self, sigma: float) -> list[int]:
        """Indices of the blocks run at noise level ``sigma``."""
        return self.blocks_for_depth(self.depth(sigma))

    def depths_for(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample depths (long tensor on ``sigma``'s device) for a batch of noise levels."""
        s = sigma.detach().reshape(-1).double()
        ln = torch.where(s > 0, s.clamp_min(1e-300).log(), torch.full_like(s, -math.inf))
        edges = torch.tensor(self._edges, dtype=torch.float64, device=s.device)
        idx = torch.bucketize(ln, edges, right=True) if len(self._edges) else torch.zeros_like(
            s, dtype=torch.long)
        table = torch.tensor(self.depths, dtype=torch.long, device=s.device)
        return table[idx]

    def bin_ranges(self, sigma_min: float, sigma_max: float) -> list[tuple[float, float]]:
        """Each bin's ``(lo, hi)`` in ln sigma, clipped to [sigma_min, sigma_max] (low -> high)."""
        lo_all, hi_all = math.log(sigma_min), math.log(sigma_max)
        edges = [lo_all] + [min(max(b, lo_all), hi_all) for b in self.bins] + [hi_all]
        return list(zip(edges[:-1], edges[1:]))

    def sigma_in_bins(self, u_bin: torch.Tensor, u_in: torch.Tensor, sigma_min: float,
                      sigma_max: float) -> torch.Tensor:
        """σ that trains every depth [ours; ASE draws its timestep uniformly]: bin
        ``floor(u_bin * n_bins)`` (each bin of the schedule with probability 1/n_bins), then
        ln σ uniform over that bin's range (clipped to [sigma_min, sigma_max]) from ``u_in``.
        ``u_bin``, ``u_in`` ~ U[0, 1) of shape [B], drawn by the caller (counter-based)."""
        ranges = torch.tensor(self.bin_ranges(sigma_min, sigma_max), dtype=torch.float64)
        n = len(self.depths)
        i = torch.clamp((u_bin.double() * n).floor().long(), 0, n - 1).cpu()
        lo, hi = ranges[i, 0], ranges[i, 1]
        return torch.exp(lo + u_in.double().cpu() * (hi - lo)).float().to(u_bin.device)

    def bin_shares(self, sigma: torch.Tensor) -> dict[str, float]:
        """The share of ``sigma``'s samples in each bin, as metrics ``bin{i}_share`` (i = 0 is the
        lowest-noise bin), so a log shows whether every depth is being trained."""
        s = sigma.detach().reshape(-1).double().cpu()
        edges = torch.tensor(self._edges, dtype=torch.float64)
        idx = (torch.bucketize(s.clamp_min(1e-300).log(), edges, right=True) if len(self._edges)
               else torch.zeros_like(s, dtype=torch.long))
        counts = torch.bincount(idx, minlength=len(self.depths)).double()
        return {f"bin{i}_share": float(c) / max(len(s), 1) for i, c in enumerate(counts.tolist())}

    def mean_compute(self, sigmas: Iterable[float]) -> float:
        """Mean fraction of full depth over the network calls at ``sigmas``."""
        s = [float(v) for v in sigmas]
        if not s:
            return 1.0
        return sum(self.depth(v) for v in s) / (len(s) * self.depth_total)

    def sampler_compute(self, sampler: str, steps: int, sigma_min: float = 0.002,
                        sigma_max: float = 80.0, rho: float = 7.0) -> float:
        """Mean fraction of full depth per network call for ``sampler`` with ``steps`` steps."""
        return self.mean_compute(eval_sigmas(sampler, sampler_sigmas(sampler, steps, sigma_min,
                                                                     sigma_max, rho).tolist()))

    def describe(self) -> str:
        """One human line, e.g. for ``--dry-run``."""
        parts = []
        edges = [-math.inf] + self.bins + [math.inf]
        for i, d in enumerate(self.depths):
            lo, hi = edges[i], edges[i + 1]
            lo_s = "0" if lo == -math.inf else f"{math.exp(lo):.3g}"
            hi_s = "inf" if hi == math.inf else f"{math.exp(hi):.3g}"
            parts.append(f"sigma[{lo_s},{hi_s}):{d}")
        tail = f", keep_last={self.keep_last}" if self.mode == "keep-last" else ""
        return f"{self.mode}{tail}, {self.depth_total} blocks: " + " ".join(parts)
