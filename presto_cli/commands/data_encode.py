"""`presto data encode`: cache a dataset's latents under a codec (keyed by the codec file's hash)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def encode_cmd(
    data_dir: Path = typer.Argument(..., help="Folder dataset (with manifest.jsonl)."),
    codec: Path = typer.Option(..., "--codec", help="Codec artefact (.safetensors)."),
    clip_seconds: float = typer.Option(4.0, "--clip-seconds", help="Window length in seconds."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache folder (default: inside the dataset)."),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Encode a dataset to latents once, so teacher training never re-encodes audio."""
    from presto_cli.data.latents import ensure_latent_cache
    from presto_cli.recipes import DataConfig
    from presto_cli.runtime import resolve_device

    cfg = DataConfig(path=str(data_dir), codec=str(codec), clip_seconds=clip_seconds,
                     latents=str(out) if out else "")
    cache = ensure_latent_cache(str(codec), cfg, resolve_device(device), progress=not as_json)
    typer.echo(json.dumps({"cache": str(cache)}) if as_json else str(cache))
