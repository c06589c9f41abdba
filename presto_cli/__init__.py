"""presto: distil text-to-music diffusion models in steps and layers (Presto!, ICLR 2025)."""

__version__ = "0.1.0"
