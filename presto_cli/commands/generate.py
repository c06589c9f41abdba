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

from presto_cli.errors import PrestoError, PrestoUsageError
from presto_cli.validate import check_out_path, check_prompt, check_sampling, check_seed

FORMATS = ("wav", "flac", "mp3", "ogg")


def usage_precision(precision: Optional[str], dev):
    """``--precision`` checked for ``dev`` (a bad value is a usage error, exit 2)."""
    from presto_cli.pipeline import check_precision

    try:
        return check_precision(precision, dev)
    except PrestoError as e:
        raise PrestoUsageError(e.message, e.hint) from None


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


def _row_jobs(row: dict, i: int, k: int, base: int, single: bool, out: Optional[Path], fmt: str) -> list[dict]:
    """The k output files of prompt row ``i`` (seeds from the row, else base + i*k + j)."""
    jobs = []
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
        check_seed(s, "--seed" if "seed" not in row else f"the seed of prompt {i + 1}")
        jobs.append({"prompt": row["prompt"], "seed": s, "path": path})
    return jobs


def _check_args(prompt: Optional[str], prompts_file: Optional[Path], k: int) -> None:
    if prompt is None and prompts_file is None:
        raise PrestoUsageError("no prompt given",
                               "presto generate \"jazz trio\" -o out.wav, or --prompts FILE (- for stdin)")
    if prompt is not None and prompts_file is not None:
        raise PrestoUsageError("give a prompt or --prompts FILE, not both")
    if k < 1:
        raise PrestoUsageError(f"--num-per-prompt must be at least 1, got {k}")
    if prompt is not None and not prompt.strip():
        raise PrestoUsageError("empty prompt", "give a text description such as \"jazz trio\"")


def _resolve_format(fmt: Optional[str], single: bool, out: Optional[Path]) -> str:
    ext = out.suffix.lstrip(".").lower() if (single and out is not None) else ""
    if fmt is not None and ext in FORMATS and fmt != ext:
        raise PrestoUsageError(f"-o {out} is a .{ext} file but --format is {fmt}",
                               f"use -o {out.with_suffix('.' + fmt)}, or leave out --format")
    if fmt is None:
        fmt = out.suffix.lstrip(".") if (single and out is not None) else "wav"
    if fmt not in FORMATS:
        raise PrestoUsageError(f"unknown audio format '{fmt}'", f"choose one of: {', '.join(FORMATS)}")
    return fmt


def plan_jobs(prompt: Optional[str], prompts_file: Optional[Path], out: Optional[Path], k: int,
              seed: Optional[int], fmt: Optional[str]) -> tuple[list[dict], int]:
    """Every output file with its prompt, seed and path; the base seed (picked when absent)."""
    _check_args(prompt, prompts_file, k)
    base = seed if seed is not None else secrets.randbelow(2**31)
    if prompt is not None:
        rows = [{"prompt": check_prompt(prompt)}]
    else:
        from presto_cli.prompts import read_prompts

        rows = read_prompts(prompts_file)
    check_out_path(out, prompt is not None and k == 1, FORMATS)
    single = prompt is not None and k == 1 and (out is None or out.suffix.lstrip(".") in FORMATS)
    fmt = _resolve_format(fmt, single, out)
    jobs = [job for i, row in enumerate(rows) for job in _row_jobs(row, i, k, base, single, out, fmt)]
    return jobs, base


def stream_jobs(lines, out: Optional[Path], k: int, base: int, fmt: Optional[str]):
    """``--prompts -``: one list of k jobs per prompt line, as the lines arrive."""
    from presto_cli.prompts import stream_prompts

    fmt = _resolve_format(fmt, False, out)
    for i, row in enumerate(stream_prompts(lines)):
        yield _row_jobs(row, i, k, base, False, out, fmt)


def _precheck(jobs: list[dict], force: bool) -> None:
    """Before torch is imported: writable folders, and no output that exists (unless force) or that
    a live run holds. No lock is made yet: each clip's path is claimed when its batch starts."""
    from presto_cli.claim import check_free

    for d in dict.fromkeys(j["path"].parent for j in jobs):
        _check_writable(d)
    check_free([j["path"] for j in jobs], force)


def _claim(jobs: list[dict], force: bool):
    """Writable folders, then a claim on every output path (refused if it exists, unless force)."""
    from presto_cli.claim import claim_outputs

    for d in dict.fromkeys(j["path"].parent for j in jobs):
        _check_writable(d)
    return claim_outputs([j["path"] for j in jobs], force).acquire()


def _ignored_tempo_key(conds: list[dict]) -> list[str]:
    """"tempo" / "key" where some clip asked for one that did not reach the model."""
    out = []
    for name, field in (("tempo", "bpm"), ("key", "key")):
        if any(c["asked"][field] is not None and (c["used"] or {}).get(field) is None for c in conds):
            out.append(name)
    return out


def _batches(jobs: list[dict], size: int):
    for i in range(0, len(jobs), size):
        yield jobs[i:i + size]


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
    token_shift: Optional[bool] = typer.Option(None, "--token-shift/--no-token-shift", help="Shift the DiT's token "
                                               "grid by one frame per network call (default: the model's)."),
    cfg_interval: Optional[str] = typer.Option(None, "--cfg-interval", help="Guide only where LO < sigma <= HI "
                                               "(\"0,2\"; \"all\": every sigma; default: the model's)."),
    x0_clip: Optional[bool] = typer.Option(None, "--x0-clip/--no-x0-clip", help="Clamp the denoiser's x0 predictions "
                                           "into the training latents' range (default: on for models that store it)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Base seed (picked and printed when absent)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds (default: the model's clip length)."),
    num_per_prompt: int = typer.Option(1, "--num-per-prompt", "-k", help="Clips per prompt."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt file: .txt (one per line) or .jsonl; - reads prompts from stdin as they come."),
    fmt: Optional[str] = typer.Option(None, "--format", help="wav | flac | mp3 | ogg."),
    normalize: bool = typer.Option(False, "--normalize", help="Peak-normalise each clip to -1 dBFS."),
    batch_size: int = typer.Option(8, "--batch-size", help="Clips generated together."),
    match: Optional[bool] = typer.Option(None, "--match/--no-match", help="--match: condition on the training caption "
                                         "nearest to each prompt; --no-match: on the prompt as written. Default: the "
                                         "nearest caption when the prompt is unlike every training wording (models "
                                         "with a caption bank). The sidecar records the choice."),
    text_adapter: Optional[str] = typer.Option(None, "--text-adapter", help="The text adapter between the text "
                                               "encoder and the DiT: a file made by the text-adapter stage (default: "
                                               "none). The sidecar records it."),
    bpm: Optional[float] = typer.Option(None, "--bpm", help="Tempo in BPM (20-400) for models with a tempo "
                                        "condition; overrides a BPM written in the prompt."),
    key: Optional[str] = typer.Option(None, "--key", help="Key, e.g. \"E minor\", \"F# major\", \"Bb minor\", for "
                                      "models with a key condition; overrides a key written in the prompt."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 | fp16: the DiT's dtype "
                                            "(default: fp32 on CPU, bf16 on CUDA; fp16 is refused on CPU)."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the DiT (costs "
                                            "seconds to a minute on the first batch; default off)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per file on stdout."),
):
    """Generate music from text with a presto model. Each clip is written, with a JSON sidecar, and
    its path printed as soon as it is done; `--prompts -` reads prompts from stdin as they come."""
    check_sampling(steps, cfg, rho, duration, force)
    check_seed(seed)
    from presto_cli.text.musical import check_bpm, check_key

    try:  # refused before any work, like every other bad option
        check_bpm(bpm)
        check_key(key)
    except PrestoError as e:
        raise PrestoUsageError(e.message, e.hint) from None
    if batch_size < 1:
        raise PrestoUsageError(f"--batch-size must be at least 1, got {batch_size}")
    streaming = prompts is not None and str(prompts) == "-"
    if streaming:
        _check_args(None, prompts, num_per_prompt)
        base = seed if seed is not None else secrets.randbelow(2**31)
        batches = stream_jobs(sys.stdin, out, num_per_prompt, base, fmt)
        total = None
    else:
        jobs, base = plan_jobs(prompt, prompts, out, num_per_prompt, seed, fmt)
        batches, total = _batches(jobs, batch_size), len(jobs)
    from presto_cli.names import check_model_arg

    check_model_arg(model)  # an unknown name or a missing file, before torch is imported
    if not streaming:
        _precheck(jobs, force)
    from presto_cli.audio import peak_normalize
    from presto_cli.outputs import clip_record, provenance, write_clip
    from presto_cli.pipeline import load_pipeline, resolve_model
    from presto_cli.runtime import console, progress, resolve_device, set_cpu_threads_for
    from presto_cli.validate import check_steps_for_model, model_default_steps

    model_path = resolve_model(model)
    check_steps_for_model(steps, model_default_steps(model_path), force,
                          lambda s: console.print(s, markup=False, soft_wrap=True))
    dev = resolve_device(device)
    precision = usage_precision(precision, dev)
    set_cpu_threads_for(model_path, dev)
    pipe = load_pipeline(str(model_path), dev, precision, compile_)
    try:  # option values the model rejects (sampler, steps, cfg, duration) are usage errors
        from presto_cli.diffusion.edm import parse_cfg_interval

        pipe.set_text_adapter(text_adapter)

        s = pipe.settings(steps, sampler, cfg, rho, token_shift, x0_clip, parse_cfg_interval(cfg_interval))
        dur = pipe.frames_for(duration) / pipe.frame_rate
    except PrestoError as e:
        raise PrestoUsageError(e.message, e.hint) from None
    if pipe.codec is None:
        raise PrestoError(f"{model_path} makes latents only (no codec embedded)", "use a model trained on audio")
    if seed is None:
        console.print(f"seed: {base}")
    common = provenance(pipe, s, str(model.strip() if model else model_path.stem), dur, normalize)
    if match and pipe.bank is None:  # refused before any work
        raise PrestoUsageError(f"{model_path} carries no caption bank to match prompts against",
                               "leave out --match (its prompts are used as written)")
    done, said = 0, set()
    try:
        with progress("generating", total=total, quiet=as_json) as tick:
            for chunk in batches:
                claim = _claim(chunk, force)  # claimed when its clips start, released once written
                at = done

                def on_step(info, n=len(chunk), at=at):
                    tick.update(at + n * min(1.0, (info["i"] + 1) / s.steps))

                conds: list[dict] = []
                audio = pipe.generate([j["prompt"] for j in chunk], [j["seed"] for j in chunk], s.steps,
                                      s.sampler, s.cfg, dur, s.rho, callback=on_step, match=match, conditions=conds,
                                      token_shift=s.token_shift, bpm=bpm, key=key, x0_clip=s.x0_clip,
                                      cfg_interval=s.cfg_interval)
                ignored = _ignored_tempo_key(conds)
                if ignored and not as_json and "tempo/key" not in said:
                    said.add("tempo/key")
                    console.print(f"{model_path.name} has no {' or '.join(ignored)} condition: the asked "
                                  f"{' and '.join(ignored)} {'are' if len(ignored) > 1 else 'is'} ignored "
                                  "(recorded in the sidecar as asked, not used)", markup=False, highlight=False,
                                  soft_wrap=True)
                floor = pipe.bank.floor if pipe.bank is not None else 0.0
                for c, j in zip(conds, chunk):
                    sim = c.get("match_similarity")
                    if (sim is not None and sim < floor and match is not False and not as_json
                            and ("far", j["prompt"]) not in said):
                        said.add(("far", j["prompt"]))
                        console.print(f"{j['prompt']!r}: no training caption is near it (cosine {sim:.2f} < "
                                      f"{floor:.2f}), so it is used as written; the model may not know it",
                                      markup=False, highlight=False, soft_wrap=True)
                    if c["condition"] != j["prompt"] and not as_json and c["condition"] not in said:
                        said.add(c["condition"])
                        console.print(f"{j['prompt']!r} -> nearest training caption {c['condition']!r} "
                                      f"(cosine {c['match_similarity']:.2f}; --no-match keeps your words)",
                                      markup=False, highlight=False, soft_wrap=True)
                for j, a, c in zip(chunk, audio, conds):
                    a = a.float()
                    if normalize:
                        a = peak_normalize(a, 10 ** (-1 / 20))
                    rec = clip_record(j["path"], j["prompt"], j["seed"], common, **c)
                    write_clip(j["path"], a, pipe.sample_rate, rec)
                    done += 1
                    tick.update(done)
                    sys.stdout.write((json.dumps(rec) if as_json else rec["file"]) + "\n")
                    sys.stdout.flush()
                claim.release()
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP
        from presto_cli.errors import interrupt_code

        why = f" ({e.name})" if getattr(e, "name", None) else ""
        console.print(f"interrupted{why}: {done} finished clip(s) kept, the clip in progress discarded",
                      markup=False, highlight=False)
        raise typer.Exit(interrupt_code(e)) from None
