"""Counter-based seeds: a random draw is fixed by the parts that name it, never by RNG state.

``seed_for(seed, step, tag)`` hashes its parts into a 63-bit seed; :func:`seeded` runs a block (e.g.
building modules) on a global RNG seeded that way and restores the RNG afterwards, so initial
weights depend on the seed alone. Used by training (the loop, the tasks) and by the library code
that builds networks.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import torch


def seed_for(*parts: Any) -> int:
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded(*parts: Any):
    """Run a block (e.g. building modules) on a CPU global RNG seeded by ``seed_for(*parts)``,
    restoring the global RNG afterwards: initial weights depend on the seed alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(*parts))
        yield
