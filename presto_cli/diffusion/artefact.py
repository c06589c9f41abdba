"""Loading a denoiser artefact (teacher, ASE, Presto-L, Presto-S, Presto-LS): the DiT under ``dit.``
wrapped in its EDM preconditioning, with the metadata and the other tensors (the embedded codec)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from presto_cli.diffusion.edm import EDMConfig, EDMDenoiser
from presto_cli.diffusion.layer_schedule import LayerSchedule
from presto_cli.errors import PrestoError
from presto_cli.io import load_artefact, load_state_strict, sub_state
from presto_cli.models.dit import DiT, DiTConfig
from presto_cli.recipes import dataclass_from_dict

LAYER_KINDS = ("presto-l", "ase")  # the artefacts that carry a layer schedule to distil from


def load_teacher(path: str | Path, device: str | torch.device = "cpu",
                 ) -> tuple[EDMDenoiser, dict, dict[str, Tensor]]:
    """Load a teacher-family artefact: ``(EDMDenoiser in eval mode, meta, all tensors)``.

    Distillation stages start from this (the tensors hold the embedded codec, if any).
    """
    tensors, meta = with_bundled_shared(path, *load_artefact(path))
    if "model" not in meta or not any(k.startswith("dit.") for k in tensors):
        raise PrestoError(f"{path} is a '{meta.get('kind')}' artefact without DiT weights",
                          "pass a teacher made by `presto pretrain`")
    net = DiT(dataclass_from_dict(DiTConfig, meta["model"], "model"))
    load_state_strict(net, sub_state(tensors, "dit"), f"DiT in {path}")
    edm = dataclass_from_dict(EDMConfig, meta.get("edm", {}), "edm")
    den = EDMDenoiser(net, edm).to(device).eval()
    return den, meta, tensors


def with_bundled_shared(path, tensors: dict[str, Tensor], meta: dict, assets=None
                        ) -> tuple[dict[str, Tensor], dict]:
    """A bundled model's file lacks the caption bank and the latent range, which benchmarks/bundle.py
    stores once in ``assets`` (default: the package's assets/) for all of them: fold them back in,
    so a model distilled from a bundled teacher carries both (nearest-caption matching and x0
    clipping) as one distilled from a run's teacher does, and the pipeline finds them where every
    other model keeps them. Any other file, or one that has them, is returned as it is."""
    from presto_cli import names

    assets = Path(assets or names.ASSETS)
    if not names.is_bundled_file(path, assets):
        return tensors, meta
    tensors, meta = dict(tensors), dict(meta)
    for name, prefix, key in ((names.BUNDLED_CAPTIONS, "caption_bank.", "caption_bank"),
                              (names.BUNDLED_RANGE, "latent_range.", "latent_range")):
        if any(k.startswith(prefix) for k in tensors) or not (assets / name).is_file():
            continue
        shared, shared_meta = load_artefact(assets / name)
        tensors.update({k: v for k, v in shared.items() if k.startswith(prefix)})
        if key in shared_meta:
            meta[key] = shared_meta[key]
    return tensors, meta


def load_layered(path: str | Path, device: torch.device | str = "cpu"
                 ) -> tuple[EDMDenoiser, LayerSchedule, dict]:
    """A Presto-L/ASE artefact as ``(denoiser, schedule, meta)``."""
    den, meta, _ = load_teacher(path, device)
    if meta.get("kind") not in LAYER_KINDS or not meta.get("schedule"):
        raise PrestoError(f"{path} is a '{meta.get('kind')}' artefact without a layer schedule",
                          "combine.layers must be a `presto distill-layers` output")
    return den, LayerSchedule.from_dict(meta["schedule"]), meta
