"""Devices, distributed setup, seeding, and the stderr console."""
from __future__ import annotations

import os

import torch
from rich.console import Console

from presto_cli.errors import PrestoError

console = Console(stderr=True)  # logs and progress go to stderr; data goes to stdout


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device(f"cuda:{local % torch.cuda.device_count()}")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PrestoError(f"device '{name}' asked for but CUDA is not available",
                              "use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise PrestoError("device 'mps' asked for but MPS is not available", "use --device cpu")
        return torch.device("mps")
    raise PrestoError(f"unknown device '{name}'", "use auto, cpu, cuda or cuda:N")


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment (0, 1 when not distributed)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_rank0() -> bool:
    return dist_info()[0] == 0
