"""`presto eval`: FAD / MMD / PRDC / CLAP score / prompt adherence of generated audio (METHOD.md §6)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer



_ASSETS = Path(__file__).resolve().parents[1] / "assets"  # = presto_cli.pipeline.ASSETS (no torch import)


def _default_model() -> str:
    f = _ASSETS / "default.txt"
    return f.read_text().strip() if f.is_file() else "demo-s"


def _bundled_refs() -> str:
    return ", ".join(sorted(p.stem[len("ref_heldout_"):] for p in _ASSETS.glob("ref_heldout_*.npz"))) or "none"


def _rows(tick):
    """callback(system, done, total): one bar per model, rows of the shared progress helper."""
    rows: dict = {}

    def cb(name: str, done: int, total: int) -> None:
        if name not in rows:
            rows[name] = tick.row(f"generating {name}", total)
        rows[name].update(done, total)

    return cb


def _new_run_dir() -> Path:
    import time

    base = Path("runs") / "eval" / time.strftime("%Y%m%d-%H%M%S")
    d, i = base, 1
    while d.exists():
        d, i = base.with_name(f"{base.name}-{i}"), i + 1
    return d


def eval_cmd(
    config: Optional[Path] = typer.Argument(None, help="Optional eval YAML whose keys are the options below "
                                            "(metrics, models, gen, ref, prompts, embedder, ...); flags override it."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma list: fad,mmd,prdc,clap,adherence,texture,tempo,key (or all). Default: the first five; fad,mmd,prdc with --embedder mel. texture: latent texture against real latents (METHOD.md section 6). tempo,key: estimated tempo/key against the asked ones (labels or the prompt), beside the --ref DIR real clips' ceiling."),
    model: Optional[List[str]] = typer.Option(
        None, "--model", "-m", help=f"Model to generate with (repeatable): bundled name or .safetensors. Default, "
        f"when neither -m nor --gen is given: {_default_model()} (assets/default.txt) and demo-teacher."),
    gen: Optional[List[Path]] = typer.Option(None, "--gen", help="Folder of generated audio (repeatable)."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Reference: folder of audio or statistics .npz. Default: "
                                      f"{_ASSETS / 'ref_heldout_EMBEDDER.npz'} (bundled for: {_bundled_refs()})."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts: .txt or .jsonl (prompt, seed, name, "
                                           f"style). Default: {_ASSETS / 'heldout_prompts.jsonl'}."),
    styles: Optional[Path] = typer.Option(None, "--styles", help="styles.json for prompt adherence. Default: "
                                          f"{_ASSETS / 'styles.json'}."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="mel | music | clap | clap-audio | presto-clap "
                                           "(default presto-clap)."),
    clap_ckpt: Optional[str] = typer.Option(None, "--clap-ckpt", help="LAION-CLAP .pt (or PRESTO_CLAP_CKPT) / "
                                            f"presto-clap .safetensors. Default: {_ASSETS / 'demo-clap.safetensors'}."),
    n: Optional[int] = typer.Option(None, "--n", help="Clips per system (default: 48 of the bundled prompts, "
                                    "taken in turn from each style; else all prompts / files)."),
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
    texture_ref: Optional[str] = typer.Option(None, "--texture-ref", help="Real clips for --metrics texture: a folder of "
                                              f"audio or a texture .json. Default: --ref DIR, else {_ASSETS / 'ref_heldout_texture.json'}."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Embedding cache folder (default ~/.cache/presto/embeddings)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write cached embeddings."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results JSON here."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML listening report here."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Folder for results.json, report.html and "
                                           "audio/ (default when generating: runs/eval/<date-time>/, unless "
                                           "--out, --report or --audio-dir is given)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Clips generated together (default 8)."),
    match: Optional[bool] = typer.Option(None, "--match/--no-match", help="--match: condition on each prompt's "
                                         "nearest training caption; --no-match: on the prompt as written. Default: "
                                         "the nearest caption for prompts unlike every training wording."),
    text_adapter: Optional[str] = typer.Option(None, "--text-adapter", help="The text adapter between the text "
                                               "encoder and the DiT: a file made by the text-adapter stage "
                                               "(default: none)."),
    x0_clip: Optional[bool] = typer.Option(None, "--x0-clip/--no-x0-clip", help="Clamp the denoiser's x0 "
                                           "predictions into the training latents' range (default: on for "
                                           "models that store it; METHOD.md section 2)."),
    cfg_interval: Optional[str] = typer.Option(None, "--cfg-interval", help="Guide only where LO < sigma <= HI "
                                               "(\"0,2\"; \"all\": every sigma; default: the model's; METHOD.md "
                                               "section 2)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 | fp16: the DiT's dtype when "
                                            "generating (default: fp32 on CPU, bf16 on CUDA)."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the DiT when "
                                            "generating (default off)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or progress lines on stderr."),
):
    """Score generated audio against a reference (FAD, MMD, PRDC, CLAP score, adherence)."""
    from presto_cli.eval.evaluate import (EvalConfig, evaluate, in_run_dir, parse_metrics, results_table,
                                          with_defaults)
    from presto_cli.recipes import dataclass_from_dict
    from presto_cli.runtime import console, progress, progress_every, set_quiet

    set_quiet(quiet)
    progress_every()  # a bad PRESTO_PROGRESS_EVERY fails before any work

    base: dict = {}
    if config is not None:
        from presto_cli.recipes import read_yaml_with_base

        base = read_yaml_with_base(config, what="eval config")
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
             "texture_ref": texture_ref,
             "cache": str(cache) if cache else None, "no_cache": no_cache or None,
             "out": str(out) if out else None, "report": str(report) if report else None,
             "run_dir": str(run_dir) if run_dir else None, "batch_size": batch_size, "device": device,
             "precision": precision, "compile": compile_,
             "match": None if match is None else ("on" if match else "off"), "text_adapter": text_adapter,
             "x0_clip": None if x0_clip is None else ("on" if x0_clip else "off"), "cfg_interval": cfg_interval}
    merged = with_defaults({**base, **{k_: v for k_, v in flags.items() if v is not None}})
    if merged.get("models") and not any(merged.get(k_) for k_ in ("out", "report", "audio_dir", "run_dir")):
        merged["run_dir"] = str(_new_run_dir())  # generated clips are kept, with the results and report
    ecfg = dataclass_from_dict(EvalConfig, merged, "eval")
    say = lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    with progress(None, quiet=as_json, transient=False) as tick:  # a bar, lines, or nothing (--quiet)
        doc = evaluate(ecfg, log=say, progress=_rows(tick), estimate=True)
    for s in doc["systems"]:
        for note in s.get("notes", []):
            say(f"note ({s['name']}): {note}")
    ecfg = in_run_dir(ecfg)
    for what in (ecfg.out, ecfg.report):
        if what:
            say(f"wrote {what}")
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    else:
        from rich.console import Console

        Console(file=sys.stdout, width=160).print(results_table(doc))
