"""Networks: the DiT backbone (what a network is; no training or sampling logic here)."""
from presto_cli.models.dit import DiT, DiTConfig, estimate_flops, estimate_params

__all__ = ["DiT", "DiTConfig", "estimate_flops", "estimate_params"]
