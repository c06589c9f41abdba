"""Latency, real-time factor, network evaluations and peak memory (METHOD.md §6, "Latency / RTF").

Each model (and sampler) generates one clip at batch 1. All models are loaded and warmed up first
(``warmup`` untimed runs absorb lazy initialisation and ``torch.compile``); then ``repeats`` timed
rounds run every model once each, in a rotated order, so that load from elsewhere on the machine
falls on all models alike. Each run is bracketed by a device synchronisation and split into the
model part (text encoding + sampling) and the autoencoder decode. Latency is the median total wall
time (the inter-quartile range is kept); the real-time factor is audio seconds per wall second
(> 1 is faster than real time). Peak memory: on CUDA the model's own weights plus the rise of
``max_memory_allocated`` over one run (all rows' models are resident together); on CPU
the peak resident memory of a fresh process that loads the model and generates one clip (an
in-process figure reads 0 once an earlier model has left freed memory mapped). Teacher rows come
first and every row carries its speed-up over the teacher measured in the same run, since absolute
numbers only compare on the same machine.
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


def module_bytes(*modules) -> int:
    """Bytes of the parameters and buffers of ``modules`` (each tensor counted once)."""
    seen, n = set(), 0
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                n += t.numel() * t.element_size()
    return n


class PeakMemory:
    """CUDA: how far allocated memory rose above its level at entry during the enclosed work
    (``max_memory_allocated`` after a reset, minus the allocation at entry)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.rise_bytes: int | None = None

    def __enter__(self):
        _sync(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.rise_bytes = max(0, int(torch.cuda.max_memory_allocated(self.device)) - self.base)
        return False


@dataclass
class BenchSettings:
    steps: int | None = None
    samplers: tuple[str | None, ...] = (None,)
    duration: float | None = None
    repeats: int = 5
    warmup: int = 1
    compile: bool = False
    precision: str = "fp32"  # the DiT's dtype (fp32 | bf16 | fp16)
    prompt: str = "an upbeat jazz trio with walking bass"
    seed: int = 0
    memory: bool = True  # on CPU: peak RSS of a fresh process per model (a few seconds each)


def _entry(pipe, settings: BenchSettings, sampler: str | None) -> dict:
    """What one (model, sampler) row generates: its sampler settings and audio length."""
    s = pipe.settings(settings.steps, sampler, None)
    frames = pipe.frames_for(settings.duration)
    return {"pipe": pipe, "s": s, "dur": frames / pipe.frame_rate, "model_t": [], "dec_t": []}


def _time_once(e: dict, prompt: str, seed: int) -> tuple[float, float]:
    """One batch-1 generation: (text encoding + sampling, decode) wall seconds, synchronised."""
    pipe, s, dev = e["pipe"], e["s"], e["pipe"].device
    _sync(dev)
    t0 = time.perf_counter()
    lat = pipe.sample_latents([prompt], [seed], s.steps, s.sampler, s.cfg, e["dur"], s.rho)
    _sync(dev)
    t1 = time.perf_counter()
    if getattr(pipe, "codec", None) is not None:
        pipe.decode(lat)
        _sync(dev)
    return t1 - t0, time.perf_counter() - t1


_MEM_SCRIPT = """
import json, resource, sys
from presto_cli.eval.bench import _proc_kib
from presto_cli.pipeline import load_pipeline
path, steps, sampler, duration, prompt, precision = json.loads(sys.argv[1])
pipe = load_pipeline(path, "cpu", precision, False)
s = pipe.settings(steps, sampler, None)
load = _proc_kib("VmRSS")
lat = pipe.sample_latents([prompt], [0], s.steps, s.sampler, s.cfg, duration, s.rho)
if pipe.codec is not None:
    pipe.decode(lat)
peak = _proc_kib("VmHWM")
if peak is None:  # no /proc: ru_maxrss (KiB on Linux, bytes on macOS)
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = r // 1024 if sys.platform == "darwin" else r
print(json.dumps({"peak_kib": peak, "load_kib": load}))
"""


def cpu_peak_memory(path: str, steps: int, sampler: str, duration: float, prompt: str,
                    precision: str = "fp32") -> dict:
    """Peak resident memory of a fresh process that loads ``path`` and generates one clip.

    In-process measures cannot be trusted on CPU: memory freed by an earlier model stays mapped
    (the allocator keeps it), so a later model's rise reads 0. A fresh process per model gives
    the absolute figure a user's process needs (Python, torch, text encoder and model included).
    """
    import json
    import subprocess
    import sys

    arg = json.dumps([str(path), steps, sampler, duration, prompt, precision])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    r = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, arg], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise PrestoError(f"memory measurement of {path} failed: {tail}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return {"peak_mem_mb": d["peak_kib"] / 1024,
            "load_mem_mb": None if d["load_kib"] is None else d["load_kib"] / 1024}


def _summarise(e: dict, settings: BenchSettings) -> dict:
    pipe, s, dur = e["pipe"], e["s"], e["dur"]
    has_codec = getattr(pipe, "codec", None) is not None
    total = [a + b for a, b in zip(e["model_t"], e["dec_t"])]
    lat = statistics.median(total)
    q = statistics.quantiles(total, n=4) if len(total) >= 2 else [lat, lat, lat]
    return {"kind": pipe.kind, "sampler": s.sampler, "steps": s.steps, "cfg": s.cfg,
            "nfe": int(pipe.nfe(s.steps, s.sampler, s.cfg, cfg_interval=s.cfg_interval)), "audio_seconds": round(dur, 4),
            "latency_s": lat, "latency_mean_s": statistics.fmean(total), "latency_min_s": min(total),
            "latency_iqr_s": [q[0], q[2]],
            "model_s": statistics.median(e["model_t"]),
            "decode_s": statistics.median(e["dec_t"]) if has_codec else None,
            "rtf": dur / lat if lat > 0 else None, "warmup_s": round(e.get("warm", 0.0), 4),
            "peak_mem_mb": e.get("peak_mem_mb"), "load_mem_mb": e.get("load_mem_mb"),
            "memory_method": e.get("memory_method", ""), "repeats": len(total)}


# a fresh process that imports torch, loads a model and generates one clip: 6.0 s (demo-s) and 8.6 s
# (demo-teacher) measured on 2 shared CPU cores
MEMORY_RUN_S = 8.0


def bench_estimate(entries: list[dict], settings: BenchSettings, memory: bool) -> str | None:
    """One line: how long the timed rounds (and the memory processes) will take, from the fastest
    warm-up run of each row (None without warm-up runs)."""
    if any(e.get("warm_min") is None for e in entries):
        return None
    timed = settings.repeats * sum(e["warm_min"] for e in entries)
    mem = MEMORY_RUN_S * len(entries) if memory else 0.0
    d = lambda s: f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"  # noqa: E731
    return (f"estimate: about {d(timed + mem)} more: {settings.repeats * len(entries)} timed runs "
            f"(~{d(timed)}, from the warm-up)" + (f" + {len(entries)} fresh processes for memory "
                                                 f"(~{d(mem)})" if memory else ""))


def run_bench(models: list[str] | None, settings: BenchSettings, device: str = "auto",
              log: Callable[[str], None] = lambda s: None, tick=None) -> dict:
    """Benchmark each model x sampler; teacher rows first, ratios to the (first) teacher.
    ``tick(done, total)`` (optional) is told of each timed run; ``log`` gets a time estimate
    after the warm-up.

    All models are loaded and warmed up first; then the timed runs are interleaved, round by
    round (each round in a rotated order), so a slow spell of the machine (another process, a
    frequency change) lands on every model alike instead of on whichever ran then.
    """
    from presto_cli import __version__
    from presto_cli.io import load_artefact
    from presto_cli.pipeline import Pipeline, resolve_model
    from presto_cli.runtime import resolve_device

    if settings.repeats < 1 or settings.warmup < 0:
        raise PrestoError("--repeats must be >= 1 and the warm-up >= 0")
    dev = resolve_device(device)
    names = list(models) if models else list(DEMO_MODELS)
    skipped: list[dict] = []
    entries: list[dict] = []
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
        tensors, meta = load_artefact(path)
        pipe = Pipeline(tensors, meta, dev, path, settings.precision, settings.compile)
        for sampler in settings.samplers:
            try:
                e = _entry(pipe, settings, sampler)
                log(f"warming up {name} (sampler {e['s'].sampler})")
                t0 = time.perf_counter()
                runs = []
                for w in range(settings.warmup):
                    t1 = time.perf_counter()
                    _time_once(e, settings.prompt, settings.seed + 1000 + w)
                    runs.append(time.perf_counter() - t1)
                e["warm"] = time.perf_counter() - t0
                e["warm_min"] = min(runs) if runs else None
            except PrestoError as err:
                first_error = first_error or err
                skipped.append({"model": name, "sampler": sampler, "reason": str(err)})
                log(f"skipping {name} with {sampler}: {err}")
                continue
            e.update(model=name, path=str(path))
            entries.append(e)
    if not entries:
        if first_error is not None:
            raise first_error
        raise PrestoError("no model to benchmark", "pass --model PATH (bundled demo models are not installed)")
    log(f"timing {len(entries)} row(s), {settings.repeats} interleaved round(s)")
    est = bench_estimate(entries, settings, memory=settings.memory and dev.type != "cuda")
    if est:
        log(est)
    total, done = settings.repeats * len(entries), 0
    if hasattr(tick, "start_at"):
        tick.start_at(0)  # the rate and ETA count from here, not from the loading and warm-up
    for r in range(settings.repeats):
        k = r % len(entries)
        for e in entries[k:] + entries[:k]:
            a, b = _time_once(e, settings.prompt, settings.seed + r)
            e["model_t"].append(a)
            e["dec_t"].append(b)
            done += 1
            if tick is not None:
                tick(done, total)
    for e in entries:  # memory: one measured run per row, after the timing
        if dev.type == "cuda":
            # every row's model is resident at once, so the absolute peak would count the others:
            # this model's own weights plus the rise of allocated memory over one run
            pipe = e["pipe"]
            with PeakMemory(dev) as mem:
                _time_once(e, settings.prompt, settings.seed)
            own = module_bytes(pipe.denoiser, getattr(pipe, "codec", None), getattr(pipe, "text", None))
            e["load_mem_mb"] = own / 2**20
            e["peak_mem_mb"] = (own + mem.rise_bytes) / 2**20
            e["memory_method"] = "cuda: the model's weights (DiT, codec, text encoder) + max_memory_allocated rise over one run"
        elif settings.memory:
            log(f"measuring the memory of {e['model']} in a fresh process")
            e.update(cpu_peak_memory(e["path"], e["s"].steps, e["s"].sampler, e["dur"], settings.prompt,
                                     settings.precision))
            e["memory_method"] = "peak RSS of a fresh process loading the model and generating one clip"
    rows = [{"model": e["model"], "path": e["path"], **_summarise(e, settings)} for e in entries]
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
            "precision": settings.precision, "interleaved": True, "prompt": settings.prompt,
            "base": {"model": base["model"], "sampler": base["sampler"], "steps": base["steps"],
                     "is_teacher": base["kind"] == "teacher"},
            "rows": rows, "skipped": skipped}


def bench_table(doc: dict):
    from rich.table import Table

    b = doc["base"]
    what = "teacher" if b["is_teacher"] else f"{b['model']} (no teacher benchmarked)"
    t = Table(title=f"presto bench on {doc['device']} ({doc['device_name']}), {doc.get('precision', 'fp32')}"
                    f"{', compiled' if doc.get('compile') else ''}, batch 1, median of "
                    f"{doc['repeats']} interleaved rounds", caption=f"ratios relative to {what}; RTF = audio seconds per second")
    for h in ("model", "kind", "sampler", "steps", "NFE", "audio s", "latency ms", "IQR ms", "model ms",
              "decode ms", "RTF", "peak MB", "speed-up", "NFE ratio"):
        t.add_column(h, justify="left" if h in ("model", "kind", "sampler") else "right")
    f = lambda v, p="{:.3g}": "-" if v is None else p.format(v)  # noqa: E731
    for r in doc["rows"]:
        t.add_row(r["model"], r["kind"], r["sampler"], str(r["steps"]), str(r["nfe"]), f(r["audio_seconds"]),
                  f(r["latency_s"] * 1e3, "{:.1f}"),
                  "{:.1f}-{:.1f}".format(*(v * 1e3 for v in r["latency_iqr_s"])), f(r["model_s"] * 1e3, "{:.1f}"),
                  f(None if r["decode_s"] is None else r["decode_s"] * 1e3, "{:.1f}"), f(r["rtf"], "{:.1f}"),
                  f(r["peak_mem_mb"], "{:.1f}"), f(r["speedup_vs_base"], "{:.2f}x"),
                  f(r["nfe_ratio_vs_base"], "{:.2f}x"))
    return t
