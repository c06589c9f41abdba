"""`presto bench`: latency, real-time factor, network evaluations and peak memory per model."""
from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer


def bench_cmd(
    model: Optional[List[str]] = typer.Option(None, "--model", "-m",
                                              help="Model (repeatable): bundled name or .safetensors. "
                                                   "Default: the bundled demo models that are installed."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampler steps (default: each model's)."),
    sampler: Optional[List[str]] = typer.Option(None, "--sampler", help="Sampler (repeatable; default: each model's)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds of audio per clip (default: the model's)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                            help="torch.compile the DiT (compile time goes into warm-up; default off)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 | fp16: the DiT's dtype "
                                            "(default: fp32 on CPU, bf16 on CUDA; fp16 is refused on CPU)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed rounds; each runs every row once (the median is reported). "
                                                                  "Default 10 (3 with --cold)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed runs first."),
    prompt: str = typer.Option("an upbeat jazz trio with walking bass", "--prompt", help="The prompt generated."),
    memory: bool = typer.Option(True, "--memory/--no-memory",
                                help="On CPU, measure each model's peak memory in a fresh process (a few seconds each)."),
    cold: bool = typer.Option(False, "--cold",
                              help="Time one fresh `presto generate` process instead, stage by stage "
                                   "(import, text encoder, model load, text encoding, sampling, decode, "
                                   "write); --repeats fresh processes (default 3), one model."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No estimate, progress bar or progress lines on stderr."),
):
    """Benchmark generation speed at batch 1 (teacher first, ratios to it in the same run)."""
    from presto_cli.errors import PrestoUsageError
    from presto_cli.runtime import console, progress, progress_every, set_quiet
    from presto_cli.validate import check_sampling

    set_quiet(quiet)
    progress_every()  # a bad PRESTO_PROGRESS_EVERY fails before any work
    check_sampling(steps, duration=duration)
    if repeats is not None and repeats < 1:
        raise PrestoUsageError(f"--repeats must be at least 1, got {repeats}")
    if cold:
        return _cold(model, steps, repeats, as_json)
    from presto_cli.commands.generate import usage_precision
    from presto_cli.eval.bench import BenchSettings, bench_table, run_bench
    from presto_cli.pipeline import inference_defaults
    from presto_cli.runtime import resolve_device

    dev = resolve_device(device)
    precision = usage_precision(precision, dev)
    compile_ = inference_defaults(dev)[1] if compile_ is None else compile_
    settings = BenchSettings(steps=steps, samplers=tuple(sampler) if sampler else (None,), duration=duration,
                             repeats=repeats or 10, warmup=warmup, compile=compile_, prompt=prompt,
                             memory=memory, precision=precision)
    with progress("bench", quiet=as_json) as tick:
        doc = run_bench(list(model) if model else None, settings, device,
                        log=(lambda s: None) if quiet else (lambda s: _log(console, tick, s)), tick=tick)
    for s in doc["skipped"]:
        console.print(f"note: skipped {s['model']}: {s['reason']}", markup=False, highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    else:
        from rich.console import Console

        Console(file=sys.stdout, width=200).print(bench_table(doc))


def _log(console, tick, line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)
    if not line.startswith("estimate"):
        tick.label(line if len(line) < 60 else line[:57] + "...")


def _cold(model: Optional[List[str]], steps: Optional[int], repeats: Optional[int], as_json: bool) -> None:
    from presto_cli.errors import PrestoUsageError
    from presto_cli.eval.cold_start import cold_start, cold_table
    from presto_cli.runtime import progress

    if model and len(model) > 1:
        raise PrestoUsageError("--cold times one model", "give at most one --model")
    rounds = repeats or 3
    with progress("cold start (fresh processes)", total=rounds, quiet=as_json) as tick:
        doc = cold_start(model[0] if model else None, steps, rounds, tick=tick)
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        from rich.console import Console

        Console(file=sys.stdout, width=200).print(cold_table(doc))
