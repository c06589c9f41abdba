"""`presto eval`: FAD / MMD / PRDC / CLAP score / prompt adherence of generated audio (METHOD.md §6)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from presto_cli.errors import PrestoError


def bundled_eval_defaults(opts: dict) -> dict:
    """No models and no folders: the bundled demo models on the bundled held-out prompts, scored
    against the bundled reference statistics with the bundled in-domain CLAP (presto-clap)."""
    from presto_cli.pipeline import ASSETS, bundled_models

    models = [m for m in ("demo-teacher", "demo-s", "demo-ase", "demo-l", "demo-ls") if m in bundled_models()]
    if not models:
        raise PrestoError("nothing to evaluate and no bundled demo models are installed",
                          "pass --model M and/or --gen DIR")
    out = dict(opts)
    out["models"] = models
    emb = out.get("embedder") or "presto-clap"
    out["embedder"] = emb
    if emb == "presto-clap" and not out.get("clap_ckpt"):
        out["clap_ckpt"] = str(ASSETS / "demo-clap.safetensors")
    defaults = {"prompts": ASSETS / "heldout_prompts.jsonl", "ref": ASSETS / f"ref_heldout_{emb}.npz",
                "styles": ASSETS / "styles.json"}
    for key, path in defaults.items():
        if not out.get(key):
            if not path.is_file():
                raise PrestoError(f"the bundled {path.name} is missing", f"pass --{key}")
            out[key] = str(path)
    if not out.get("metrics"):
        out["metrics"] = ["fad", "mmd", "prdc", "clap", "adherence"] if emb != "mel" else ["fad", "mmd", "prdc"]
    return out


def eval_cmd(
    config: Optional[Path] = typer.Argument(None, help="Optional eval YAML whose keys are the options below "
                                            "(metrics, models, gen, ref, prompts, embedder, ...); flags override it."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma list: fad,mmd,prdc,clap,adherence (or all)."),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m",
                                              help="Model to generate with (repeatable): bundled name or .safetensors."),
    gen: Optional[List[Path]] = typer.Option(None, "--gen", help="Folder of generated audio (repeatable)."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Reference: folder of audio or statistics .npz."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts: .txt or .jsonl (prompt, seed, name, style)."),
    styles: Optional[Path] = typer.Option(None, "--styles", help="styles.json for prompt adherence."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="mel | music | clap | clap-audio | presto-clap."),
    clap_ckpt: Optional[str] = typer.Option(None, "--clap-ckpt",
                                            help="LAION-CLAP .pt (or PRESTO_CLAP_CKPT) / presto-clap .safetensors."),
    n: Optional[int] = typer.Option(None, "--n", help="Clips per system (default: all prompts / files)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampler steps (default: the model's)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="euler | heun | dpmpp_2m | fewstep."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="Guidance weight (default: the model's)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds per generated clip."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Base seed for prompts without one (default 0)."),
    k: Optional[int] = typer.Option(None, "--k", help="PRDC nearest neighbours (default 5)."),
    bandwidth: Optional[str] = typer.Option(None, "--mmd-bandwidth", "--bandwidth",
                                            help="MMD RBF σ: cmmd (σ = 10, ×1000; default) | median | a number."),
    audio_dir: Optional[Path] = typer.Option(None, "--audio-dir", help="Where generated clips are written."),
    save_ref_stats: Optional[Path] = typer.Option(None, "--save-ref-stats", help="Write reference statistics (.npz)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Embedding cache folder (default ~/.cache/presto/embeddings)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write cached embeddings."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results JSON here."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML listening report here."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Clips generated together (default 8)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
):
    """Score generated audio against a reference (FAD, MMD, PRDC, CLAP score, adherence)."""
    from presto_cli.eval.evaluate import EvalConfig, evaluate, parse_metrics, results_table
    from presto_cli.recipes import dataclass_from_dict
    from presto_cli.runtime import console

    base: dict = {}
    if config is not None:
        import yaml

        if not config.is_file():
            raise PrestoError(f"eval config not found: {config}")
        from presto_cli.recipes import load_yaml
        from presto_cli.validate import read_utf8

        try:
            base = load_yaml(read_utf8(config, "eval config"), str(config)) or {}
        except yaml.YAMLError:
            raise PrestoError(f"{config} is not valid YAML") from None
        if not isinstance(base, dict):
            raise PrestoError(f"{config} must be a mapping of option names to values")
        base = {k.replace("-", "_"): v for k, v in base.items()}
        for key in ("metrics", "models", "gen"):
            if isinstance(base.get(key), str):
                base[key] = [s for s in base[key].split(",") if s.strip()]
    flags = {"metrics": parse_metrics(metrics) if metrics else None,
             "models": list(model) if model else None, "gen": [str(g) for g in gen] if gen else None,
             "ref": ref, "prompts": str(prompts) if prompts else None,
             "styles": str(styles) if styles else None, "embedder": embedder, "clap_ckpt": clap_ckpt,
             "n": n, "steps": steps, "sampler": sampler, "cfg": cfg, "duration": duration, "seed": seed,
             "k": k, "bandwidth": bandwidth, "audio_dir": str(audio_dir) if audio_dir else None,
             "save_ref_stats": str(save_ref_stats) if save_ref_stats else None,
             "cache": str(cache) if cache else None, "no_cache": no_cache or None,
             "out": str(out) if out else None, "report": str(report) if report else None,
             "batch_size": batch_size, "device": device}
    merged = {**base, **{k_: v for k_, v in flags.items() if v is not None}}
    ecfg = dataclass_from_dict(EvalConfig, merged, "eval")  # refuses unknown keys first
    if not ecfg.models and not ecfg.gen:
        ecfg = dataclass_from_dict(EvalConfig, bundled_eval_defaults(merged), "eval")
    doc = evaluate(ecfg, log=lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True))
    for s in doc["systems"]:
        for note in s.get("notes", []):
            console.print(f"note ({s['name']}): {note}", markup=False, highlight=False)
    if ecfg.out:
        console.print(f"wrote {ecfg.out}", markup=False, highlight=False)
    if ecfg.report:
        console.print(f"wrote {ecfg.report}", markup=False, highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    else:
        from rich.console import Console

        Console(file=sys.stdout, width=160).print(results_table(doc))
