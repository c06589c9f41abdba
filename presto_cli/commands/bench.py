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
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the DiT (compile time goes into warm-up)."),
    repeats: int = typer.Option(10, "--repeats", help="Timed rounds; each runs every row once (the median is reported)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed runs first."),
    prompt: str = typer.Option("an upbeat jazz trio with walking bass", "--prompt", help="The prompt generated."),
    memory: bool = typer.Option(True, "--memory/--no-memory",
                                help="On CPU, measure each model's peak memory in a fresh process (a few seconds each)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
):
    """Benchmark generation speed at batch 1 (teacher first, ratios to it in the same run)."""
    from presto_cli.eval.bench import BenchSettings, bench_table, run_bench
    from presto_cli.runtime import console

    from presto_cli.validate import check_sampling

    check_sampling(steps, duration=duration)
    settings = BenchSettings(steps=steps, samplers=tuple(sampler) if sampler else (None,), duration=duration,
                             repeats=repeats, warmup=warmup, compile=compile_, prompt=prompt,
                             memory=memory)
    doc = run_bench(list(model) if model else None, settings, device,
                    log=lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True))
    for s in doc["skipped"]:
        console.print(f"note: skipped {s['model']}: {s['reason']}", markup=False, highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    else:
        from rich.console import Console

        Console(file=sys.stdout, width=200).print(bench_table(doc))
