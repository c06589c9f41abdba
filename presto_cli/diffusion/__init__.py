"""EDM diffusion: preconditioning and loss (edm), samplers, and the teacher stage (teacher).

The teacher stage is imported lazily (``presto_cli.diffusion.teacher``) since it pulls in the
training loop.
"""
from presto_cli.diffusion.edm import Cond, EDMConfig, EDMDenoiser, edm_loss
from presto_cli.diffusion.samplers import SAMPLERS, PerSampleNoise, get_sigmas_karras, nfe

__all__ = ["Cond", "EDMConfig", "EDMDenoiser", "edm_loss", "SAMPLERS", "PerSampleNoise",
           "get_sigmas_karras", "nfe"]
