"""Generated clips on disk: one writer and one sidecar schema for `presto generate`, `presto eval`
and the cold-start benchmark.

Each clip ``x.wav`` has a JSON sidecar ``x.wav.json`` saying how it was made (STYLE.md "outputs
carry their provenance"): ``file``, ``prompt``, ``seed``, then :func:`provenance`'s keys (model,
kind, sampler, steps, cfg, rho, token_shift, x0_clip, cfg_interval, duration, NFE, device, precision, compile, channels, version), plus any extra a caller adds
(eval adds ``style``). A clip is both files or neither.
"""
from __future__ import annotations

from pathlib import Path


def provenance(pipe, settings, model: str, duration: float, normalize: bool = False) -> dict:
    """The sidecar keys shared by every clip of one run of ``pipe`` with ``settings``
    (a :class:`~presto_cli.pipeline.SampleSettings`); ``model`` is the name the user gave."""
    from presto_cli import __version__

    return {"model": model, "model_path": str(pipe.path), "kind": pipe.kind, "steps": settings.steps,
            "sampler": settings.sampler, "cfg": settings.cfg, "rho": settings.rho,
            "token_shift": bool(getattr(settings, "token_shift", False)),
            "x0_clip": bool(getattr(settings, "x0_clip", False)),
            "cfg_interval": list(getattr(settings, "cfg_interval", ())) or None,
            "duration": round(duration, 4), "sample_rate": pipe.sample_rate,
            "nfe": pipe.nfe(settings.steps, settings.sampler, settings.cfg,
                            cfg_interval=getattr(settings, "cfg_interval", ())),
            "normalize": normalize,
            "device": str(pipe.device), "precision": getattr(pipe, "precision", "fp32"),
            "compile": bool(getattr(pipe, "compiled", False)), "channels": getattr(pipe, "audio_channels", 1),
            "presto_version": __version__}


def clip_record(path: Path, prompt: str, seed: int, common: dict, **extra) -> dict:
    """One clip's sidecar: its file, prompt and seed, the run's :func:`provenance`, and extras."""
    return {"file": str(path), "prompt": prompt, "seed": seed, **common, **extra}


def write_clip(path: Path, audio, sample_rate: int, rec: dict) -> None:
    """Audio, then its JSON sidecar; a clip is both or neither (Ctrl-C between the two included)."""
    from presto_cli.audio import write_audio
    from presto_cli.io import atomic_write_json

    path = Path(path)
    side = path.with_suffix(path.suffix + ".json")
    write_audio(path, audio, sample_rate, fmt=path.suffix.lstrip(".") or "wav")
    try:
        atomic_write_json(side, rec)
    except BaseException:
        path.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        raise
