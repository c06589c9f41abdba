"""EDM diffusion: preconditioning, CFG and loss (edm), noise schedules (schedules), samplers
(samplers), layer schedules and the depth-wise denoiser (layer_schedule, layered), and loading a
denoiser artefact (artefact). The ``teacher`` training stage is :mod:`presto_cli.stages.teacher`.
"""
from presto_cli.diffusion.edm import Cond, EDMConfig, EDMDenoiser, edm_loss
from presto_cli.diffusion.samplers import SAMPLERS, PerSampleNoise, get_sigmas_karras, nfe

__all__ = ["Cond", "EDMConfig", "EDMDenoiser", "edm_loss", "SAMPLERS", "PerSampleNoise",
           "get_sigmas_karras", "nfe"]
