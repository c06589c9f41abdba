"""Latency, real-time factor, network evaluations and peak memory (METHOD.md §6, "Latency / RTF").

For each model (and sampler) one clip is generated at batch 1: first ``warmup`` untimed runs
(they absorb lazy initialisation and ``torch.compile``), then ``repeats`` timed runs, each
bracketed by a device synchronisation, split into the model part (text encoding + sampling) and
the autoencoder decode. Latency is the median total wall time; the real-time factor is audio
seconds per wall second (higher is faster; > 1 is faster than real time). Peak memory is CUDA's
max allocated bytes during the timed runs, or on CPU the rise of the resident set's high-water
mark (Linux ``/proc/self/clear_refs`` reset, else ``ru_maxrss``, a lower bound). Teacher rows
come first and every row carries its speed-up over the teacher measured in the same run, since
absolute numbers only compare on the same machine.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from presto_cli.errors import PrestoError

DEMO_MODELS = ("demo-teacher", "demo-s", "demo-l", "demo-ase", "demo-ls")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Context manager measuring the peak memory of the enclosed work (bytes) and how."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self.method = ""

    def __enter__(self):
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated (absolute)"
            return self
        self.base = _proc_kib("VmRSS")
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.reset = True
            self.method = "RSS high-water rise (VmHWM after reset)"
        except OSError:
            import resource

            self.base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "ru_maxrss rise (lower bound)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return False
        if self.reset and self.base is not None:
            hwm = _proc_kib("VmHWM")
            self.peak_bytes = max(0, (hwm or 0) - self.base) * 1024
        else:
            import resource

            now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            scale = 1 if platform.system() == "Darwin" else 1024  # bytes on macOS, KiB on Linux
            self.peak_bytes = max(0, now - self.base_max) * scale
        return False


@dataclass
class BenchSettings:
    steps: int | None = None
    samplers: tuple[str | None, ...] = (None,)
    duration: float | None = None
    repeats: int = 5
    warmup: int = 1
    compile: bool = False
    prompt: str = "an upbeat jazz trio with walking bass"
    seed: int = 0


def bench_pipeline(pipe, settings: BenchSettings, sampler: str | None) -> dict:
    """Time one (model, sampler) at batch 1. ``pipe`` follows ARCHITECTURE.md's Pipeline."""
    s = pipe.settings(settings.steps, sampler, None)
    frames = pipe.frames_for(settings.duration)
    dur = frames / pipe.frame_rate
    dev = pipe.device
    has_codec = getattr(pipe, "codec", None) is not None

    def once(seed: int) -> tuple[float, float]:
        _sync(dev)
        t0 = time.perf_counter()
        lat = pipe.sample_latents([settings.prompt], [seed], s.steps, s.sampler, s.cfg, dur, s.rho)
        _sync(dev)
        t1 = time.perf_counter()
        if has_codec:
            pipe.decode(lat)
            _sync(dev)
        return t1 - t0, time.perf_counter() - t1

    t0 = time.perf_counter()
    for w in range(settings.warmup):
        once(settings.seed + 1000 + w)
    warm = time.perf_counter() - t0
    model_t, dec_t = [], []
    with PeakMemory(dev) as mem:
        for r in range(settings.repeats):
            a, b = once(settings.seed + r)
            model_t.append(a)
            dec_t.append(b)
    total = [a + b for a, b in zip(model_t, dec_t)]
    lat = statistics.median(total)
    return {"kind": pipe.kind, "sampler": s.sampler, "steps": s.steps, "cfg": s.cfg,
            "nfe": int(pipe.nfe(s.steps, s.sampler, s.cfg)), "audio_seconds": round(dur, 4),
            "latency_s": lat, "latency_mean_s": statistics.fmean(total), "latency_min_s": min(total),
            "model_s": statistics.median(model_t), "decode_s": statistics.median(dec_t) if has_codec else None,
            "rtf": dur / lat if lat > 0 else None, "warmup_s": round(warm, 4),
            "peak_mem_mb": None if mem.peak_bytes is None else mem.peak_bytes / 2**20,
            "memory_method": mem.method, "repeats": settings.repeats}


def _compile(pipe) -> None:
    try:
        pipe.denoiser.net = torch.compile(pipe.denoiser.net)
    except Exception as e:  # torch.compile raises many kinds of errors on unsupported setups
        raise PrestoError(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                          "run without --compile") from None


def run_bench(models: list[str] | None, settings: BenchSettings, device: str = "auto",
              log: Callable[[str], None] = lambda s: None) -> dict:
    """Benchmark each model x sampler; teacher rows first, ratios to the (first) teacher."""
    from presto_cli import __version__
    from presto_cli.pipeline import load_pipeline, resolve_model
    from presto_cli.runtime import resolve_device

    if settings.repeats < 1 or settings.warmup < 0:
        raise PrestoError("--repeats must be >= 1 and the warm-up >= 0")
    dev = resolve_device(device)
    names = list(models) if models else list(DEMO_MODELS)
    skipped: list[dict] = []
    rows: list[dict] = []
    first_error: PrestoError | None = None
    for name in names:
        try:
            path = resolve_model(name)
        except PrestoError as e:
            if models:  # asked for explicitly: an error
                raise
            skipped.append({"model": name, "reason": str(e)})
            log(f"skipping {name}: {e}")
            continue
        pipe = load_pipeline(str(path), dev)
        if settings.compile:
            _compile(pipe)
        for sampler in settings.samplers:
            log(f"benchmarking {name} (sampler {sampler or pipe.default_sampler})")
            try:
                r = bench_pipeline(pipe, settings, sampler)
            except PrestoError as e:
                first_error = first_error or e
                skipped.append({"model": name, "sampler": sampler, "reason": str(e)})
                log(f"skipping {name} with {sampler}: {e}")
                continue
            rows.append({"model": name, "path": str(path), **r})
    if not rows:
        if first_error is not None:
            raise first_error
        raise PrestoError("no model to benchmark", "pass --model PATH (bundled demo models are not installed)")
    rows.sort(key=lambda r: r["kind"] != "teacher")  # stable: teacher rows first
    base = rows[0]
    for r in rows:
        r["speedup_vs_base"] = base["latency_s"] / r["latency_s"] if r["latency_s"] > 0 else None
        r["nfe_ratio_vs_base"] = base["nfe"] / r["nfe"] if r["nfe"] else None
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {"presto_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": str(dev), "device_name": dev_name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "batch": 1,
            "repeats": settings.repeats, "warmup": settings.warmup, "compile": settings.compile,
            "prompt": settings.prompt,
            "base": {"model": base["model"], "sampler": base["sampler"], "steps": base["steps"],
                     "is_teacher": base["kind"] == "teacher"},
            "rows": rows, "skipped": skipped}


def bench_table(doc: dict):
    from rich.table import Table

    b = doc["base"]
    what = "teacher" if b["is_teacher"] else f"{b['model']} (no teacher benchmarked)"
    t = Table(title=f"presto bench on {doc['device']} ({doc['device_name']}), batch 1, median of "
                    f"{doc['repeats']}", caption=f"ratios relative to {what}; RTF = audio seconds per second")
    for h in ("model", "kind", "sampler", "steps", "NFE", "audio s", "latency ms", "model ms",
              "decode ms", "RTF", "peak MB", "speed-up", "NFE ratio"):
        t.add_column(h, justify="left" if h in ("model", "kind", "sampler") else "right")
    f = lambda v, p="{:.3g}": "-" if v is None else p.format(v)  # noqa: E731
    for r in doc["rows"]:
        t.add_row(r["model"], r["kind"], r["sampler"], str(r["steps"]), str(r["nfe"]), f(r["audio_seconds"]),
                  f(r["latency_s"] * 1e3, "{:.1f}"), f(r["model_s"] * 1e3, "{:.1f}"),
                  f(None if r["decode_s"] is None else r["decode_s"] * 1e3, "{:.1f}"), f(r["rtf"], "{:.1f}"),
                  f(r["peak_mem_mb"], "{:.1f}"), f(r["speedup_vs_base"], "{:.2f}x"),
                  f(r["nfe_ratio_vs_base"], "{:.2f}x"))
    return t
