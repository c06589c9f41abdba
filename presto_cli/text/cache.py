"""Caption conditioning with a cache: each distinct caption is encoded once."""
from __future__ import annotations

import torch
from torch import Tensor

from presto_cli.diffusion.edm import Cond
from presto_cli.text.encoders import TextEncoder


class TextCache:
    """Encodes captions with a frozen text encoder, caching each distinct caption on the CPU
    (training captions repeat: this saves a MiniLM forward per step)."""

    def __init__(self, encoder: TextEncoder, max_entries: int = 100_000):
        self.encoder = encoder
        self.max_entries = max_entries
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    def __call__(self, captions: list[str], device, tempo=None, key=None) -> Cond:
        """The condition of ``captions``; ``tempo`` [B] (BPM, NaN = absent) and ``key`` [B] (0..23,
        -1 = absent) ride along unchanged (None: absent)."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if missing:
            tokens, mask, pooled = self.encoder(missing)
            if len(self._cache) + len(missing) > self.max_entries:
                self._cache.clear()
            for i, c in enumerate(missing):
                n = int(mask[i].sum())
                self._cache[c] = (tokens[i, :max(n, 1)].cpu(), pooled[i].cpu())
        items = [self._cache[c] for c in captions]
        n = max(t.shape[0] for t, _ in items)
        dim = items[0][0].shape[-1]
        tokens = torch.zeros(len(items), n, dim)
        mask = torch.zeros(len(items), n, dtype=torch.bool)
        for i, (t, _) in enumerate(items):
            tokens[i, :t.shape[0]] = t
            mask[i, :t.shape[0]] = True
        pooled = torch.stack([p for _, p in items])
        as_t = lambda v, dt: None if v is None else torch.as_tensor(v, dtype=dt).reshape(-1).to(device)  # noqa: E731
        return Cond(tokens.to(device), mask.to(device), pooled.to(device), None,
                    as_t(tempo, torch.float32), as_t(key, torch.long))

    def batch(self, batch: dict, device) -> Cond:
        """The condition of a training batch: its captions, and its ``tempo``/``key`` when the
        dataset gives them (:class:`presto_cli.data.latents.LatentDataset`)."""
        return self(list(batch["caption"]), device, batch.get("tempo"), batch.get("key"))
