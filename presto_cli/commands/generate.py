"""`presto generate`: prompts -> audio files, each with a JSON sidecar saying how it was made."""
from __future__ import annotations

import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Optional

import typer

from presto_cli.errors import PrestoError
from presto_cli.validate import check_out_path, check_prompt, check_sampling

FORMATS = ("wav", "flac", "mp3", "ogg")


def _slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^a-zA-Z0-9]+", "-", text.lower()).strip("-")
    return (s[:n].rstrip("-")) or "clip"


def _check_writable(directory: Path) -> None:
    import tempfile

    d = directory.resolve()
    while not d.exists():
        d = d.parent
    ok = d.is_dir() and os.access(d, os.W_OK)
    if ok:  # permissions can lie (root, /proc, read-only mounts): try a real file, then remove it
        try:
            with tempfile.TemporaryFile(dir=d):
                pass
        except OSError:
            ok = False
    if not ok:
        raise PrestoError(f"cannot write to {directory}", "choose an output path you can write")


def plan_jobs(prompt: Optional[str], prompts_file: Optional[Path], out: Optional[Path], k: int,
              seed: Optional[int], fmt: Optional[str]) -> tuple[list[dict], int]:
    """Every output file with its prompt, seed and path; the base seed (picked when absent)."""
    if prompt is None and prompts_file is None:
        raise PrestoError("no prompt given", "presto generate \"jazz trio\" -o out.wav, or --prompts FILE")
    if prompt is not None and prompts_file is not None:
        raise PrestoError("give a prompt or --prompts FILE, not both")
    if k < 1:
        raise PrestoError(f"--num-per-prompt must be at least 1, got {k}")
    base = seed if seed is not None else secrets.randbelow(2**31)
    if prompt is not None:
        if not prompt.strip():
            raise PrestoError("empty prompt", "give a text description such as \"jazz trio\"")
        rows = [{"prompt": check_prompt(prompt)}]
    else:
        from presto_cli.prompts import read_prompts

        rows = read_prompts(prompts_file)
    check_out_path(out, prompt is not None and k == 1, FORMATS)
    single = prompt is not None and k == 1 and (out is None or out.suffix.lstrip(".") in FORMATS)
    if fmt is None:
        fmt = out.suffix.lstrip(".") if (single and out is not None) else "wav"
    if fmt not in FORMATS:
        raise PrestoError(f"unknown audio format '{fmt}'", f"choose one of: {', '.join(FORMATS)}")
    jobs = []
    for i, row in enumerate(rows):
        for j in range(k):
            s = int(row["seed"]) + j if "seed" in row else base + i * k + j
            if single:
                path = out or Path(f"out.{fmt}")
                if path.suffix.lstrip(".") != fmt:
                    path = path.with_suffix("." + fmt)
            else:
                d = out or Path("outputs")
                name = row.get("name") or f"{i:04d}_{_slug(row['prompt'])}"
                path = d / f"{name}_seed{s}.{fmt}" if k > 1 or "name" not in row else d / f"{name}.{fmt}"
            jobs.append({"prompt": row["prompt"], "seed": s, "path": path})
    return jobs, base


def generate_cmd(
    prompt: Optional[str] = typer.Argument(None, help="Text prompt, e.g. \"jazz trio\"."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Output file (one clip) or directory (several; default outputs/)."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Model artefact path or bundled name (demo-ls, demo-s, demo-l, demo-ase, demo-teacher)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampler steps (default: the model's)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="euler | heun | dpmpp_2m | fewstep."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="Classifier-free guidance weight (multi-step kinds)."),
    rho: Optional[float] = typer.Option(None, "--rho", help="Karras schedule rho (default: the model's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Base seed (picked and printed when absent)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds (default: the model's clip length)."),
    num_per_prompt: int = typer.Option(1, "--num-per-prompt", "-k", help="Clips per prompt."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt file: .txt (one per line) or .jsonl."),
    fmt: Optional[str] = typer.Option(None, "--format", help="wav | flac | mp3 | ogg."),
    normalize: bool = typer.Option(False, "--normalize", help="Peak-normalise each clip to -1 dBFS."),
    batch_size: int = typer.Option(8, "--batch-size", help="Clips generated together."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per file on stdout."),
):
    """Generate music from text with a presto model."""
    from presto_cli import __version__
    from presto_cli.audio import write_audio
    from presto_cli.io import atomic_write_json
    from presto_cli.pipeline import load_pipeline, resolve_model
    from presto_cli.runtime import console

    check_sampling(steps, cfg, rho, duration, force)
    if batch_size < 1:
        raise PrestoError(f"--batch-size must be at least 1, got {batch_size}")
    jobs, base = plan_jobs(prompt, prompts, out, num_per_prompt, seed, fmt)
    for j in jobs:
        _check_writable(j["path"].parent)
    model_path = resolve_model(model)
    from presto_cli.claim import claim_outputs
    from presto_cli.validate import check_steps_for_model, model_default_steps

    check_steps_for_model(steps, model_default_steps(model_path), force,
                          lambda s: console.print(s, markup=False, soft_wrap=True))
    claim_outputs([j["path"] for j in jobs], force).acquire()  # released when the command ends
    pipe = load_pipeline(str(model_path), device)
    s = pipe.settings(steps, sampler, cfg, rho)
    frames = pipe.frames_for(duration)
    dur = frames / pipe.frame_rate
    if pipe.codec is None:
        raise PrestoError(f"{model_path} makes latents only (no codec embedded)", "use a model trained on audio")
    if seed is None:
        console.print(f"seed: {base}")
    from rich.progress import Progress

    records = []
    with Progress(console=console, disable=len(jobs) <= 1, transient=True) as bar:
        tid = bar.add_task("generating", total=len(jobs))
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i:i + batch_size]
            audio = pipe.generate([j["prompt"] for j in chunk], [j["seed"] for j in chunk], s.steps,
                                  s.sampler, s.cfg, dur, s.rho, progress=False)
            for j, a in zip(chunk, audio):
                a = a.float()
                if normalize:
                    peak = a.abs().max().clamp_min(1e-8)
                    a = a / peak * (10 ** (-1 / 20))
                write_audio(j["path"], a, pipe.sample_rate, fmt=j["path"].suffix.lstrip("."))
                rec = {"file": str(j["path"]), "prompt": j["prompt"], "seed": j["seed"],
                       "model": str(model.strip() if model else model_path.stem), "model_path": str(model_path),
                       "kind": pipe.kind, "steps": s.steps, "sampler": s.sampler, "cfg": s.cfg, "rho": s.rho,
                       "duration": round(dur, 4), "sample_rate": pipe.sample_rate,
                       "nfe": pipe.nfe(s.steps, s.sampler, s.cfg), "normalize": normalize,
                       "device": str(pipe.device), "presto_version": __version__}
                atomic_write_json(j["path"].with_suffix(j["path"].suffix + ".json"), rec)
                records.append(rec)
                if as_json:
                    sys.stdout.write(json.dumps(rec) + "\n")
                    sys.stdout.flush()
            bar.advance(tid, len(chunk))
    if not as_json:
        for r in records:
            typer.echo(r["file"])
