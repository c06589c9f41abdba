"""Inference speed of the paper-scale models on one GPU, random weights, in one bounded run.

    python benchmarks/gpu_check.py --out DIR            # one GPU, stops itself within --budget-s
    python benchmarks/gpu_check.py --dry-run --out DIR  # tiny shapes on the CPU, seconds (tested)

Shapes come from recipes/paper/ (read with presto's recipe loader): the teacher's DiT (its default
sampler, steps and CFG weight), Presto-S (the teacher's shape, the few-step sampler at
``distill.gen_steps``), Presto-L (the teacher's shape with the budget embedding, the teacher's sampler at
the keep-last layer schedule built from presto-l.yaml) and Presto-LS (Presto-L's shape and schedule, the
few-step sampler), and the paper codec (recipes/paper/autoencoder.yaml); 32 s of 44.1 kHz audio per
clip (the teacher recipe's clip length at the codec's frame rate). Weights are random: speed does
not depend on them. The sampling path is presto's own (EDMDenoiser / LayeredDenoiser, denoise_fn,
the samplers), as in ``presto generate`` with ``--precision`` and ``--compile``; text conditioning
is the weightless ``hash`` encoder's output (the text encoder's time is not part of a row).

Rows: system x batch (1, 8) x precision (bf16, fp32) x eager/compiled, in priority order (batch 1
eager, then compiled, then batch 8; within each, Presto-S first so the expensive teacher rows have
an estimate). Each row: one untimed warm-up (compilation included, reported as ``warmup_s``), then
``--repeats`` timed runs (fewer when they would pass ``--row-cap-s``); model (sampling) and decode times separately, each
bracketed by a device synchronisation; peak memory (``max_memory_allocated`` over a timed run). A
time budget guard skips every row that its estimate says would not finish before
``--budget-s`` (default 420 s, under the 8 minutes the script is given) and writes the JSON after
every row, so a run cut short still leaves what it measured (``complete: false``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYSTEMS = ("teacher", "presto-s", "presto-l", "presto-ls")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _recipe(name: str, overrides: list[str] | None = None):
    from presto_cli.recipes import load_recipe

    return load_recipe(ROOT / "recipes" / "paper" / name, overrides or [])


def shapes(dry_run: bool) -> dict:
    """The DiT configs, samplers, layer schedule and codec config of the paper recipes
    (``dry_run``: the same recipes with tiny widths and depths, for a CPU test)."""
    from presto_cli.codec.base import codec_config
    from presto_cli.diffusion.samplers import nfe
    from presto_cli.distill.layers import build_schedule

    tiny_dit = ["model.width=32", "model.depth=4", "model.heads=2"] if dry_run else []
    teacher = _recipe("teacher.yaml", tiny_dit)
    s_rec = _recipe("presto-s.yaml")
    l_rec = _recipe("presto-l.yaml")
    ae = _recipe("autoencoder.yaml", ["model.width=8", "model.depth=1"] if dry_run else [])
    codec_cfg = codec_config(ae.model)
    edm = teacher.edm
    dit = teacher.model
    dit_l = dataclasses.replace(dit, budget_embed=bool(l_rec.layers.budget_embed),
                                budget_rescale=bool(l_rec.layers.budget_rescale))
    sched = build_schedule(l_rec.layers, dit.depth, edm, "keep-last", keep_last=l_rec.layers.keep_last)
    seconds = teacher.data.clip_seconds
    frames = -(-int(round(seconds * codec_cfg.sample_rate)) // codec_cfg.hop_length)
    if dry_run:
        frames = min(frames, 64)  # tiny: ~0.7 s of audio
    gen_steps = int(s_rec.distill.gen_steps)
    rows = {
        "teacher": {"dit": dit, "sampler": edm.sampler, "steps": edm.steps, "cfg": edm.cfg, "schedule": None},
        "presto-s": {"dit": dit, "sampler": "fewstep", "steps": gen_steps, "cfg": 1.0, "schedule": None},
        "presto-l": {"dit": dit_l, "sampler": edm.sampler, "steps": edm.steps, "cfg": edm.cfg, "schedule": sched},
        "presto-ls": {"dit": dit_l, "sampler": "fewstep", "steps": gen_steps, "cfg": 1.0, "schedule": sched},
    }
    for r in rows.values():
        r["nfe"] = nfe(r["sampler"], r["steps"], r["cfg"] != 1.0)
    return {"systems": rows, "edm": edm, "codec": codec_cfg, "frames": frames,
            "audio_seconds": frames * codec_cfg.hop_length / codec_cfg.sample_rate,
            "schedule": sched.to_dict()}


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), float(seconds)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _denoiser(dit_cfg, edm, dev, seed: int):
    from presto_cli.diffusion.edm import EDMDenoiser
    from presto_cli.models.dit import DiT

    g = torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [])
    with g:
        torch.manual_seed(seed)
        with torch.device(dev):
            net = DiT(dit_cfg)
    return EDMDenoiser(net, edm).to(dev).eval().requires_grad_(False)


def _cond(batch: int, text_dim: int, dev):
    from presto_cli.diffusion.edm import Cond
    from presto_cli.text.encoders import build_text_encoder

    enc = build_text_encoder("hash", device="cpu")
    tokens, mask, pooled = enc(["an upbeat jazz trio with walking bass"] * batch)
    if tokens.shape[-1] != text_dim:
        raise SystemExit(f"hash text encoder gives {tokens.shape[-1]} dims, the DiT wants {text_dim}")
    return Cond(tokens=tokens.to(dev), mask=mask.to(dev), pooled=pooled.to(dev))


def _sample(den, sys_row, edm, cond, batch, frames, dev):
    from presto_cli.diffusion.edm import denoise_fn
    from presto_cli.diffusion.layered import LayeredDenoiser
    from presto_cli.diffusion.layer_schedule import LayerSchedule
    from presto_cli.diffusion.samplers import SAMPLERS, PerSampleNoise, get_sigmas

    model = den if sys_row["schedule"] is None else LayeredDenoiser(den, LayerSchedule.from_dict(
        sys_row["schedule"].to_dict()))
    noise = PerSampleNoise(list(range(batch)), dev)
    sigmas = get_sigmas(sys_row["sampler"], sys_row["steps"], edm.sigma_min, edm.sigma_max, edm.rho, device=dev)
    x = noise.randn((sys_row["dit"].in_channels, frames)) * sigmas[0]
    return SAMPLERS[sys_row["sampler"]](denoise_fn(model, cond, sys_row["cfg"]), x, sigmas, noise=noise,
                                        disable=True)


def _peak_reset(dev):
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def _peak(dev):
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None


def row_plan(batches, precisions, compile_: bool) -> list[tuple[bool, str, int]]:
    """(compile, precision, batch) groups in priority order: eager batch 1 (each precision), then
    compiled batch 1, then eager and compiled at the larger batches, bf16 before fp32 in each."""
    prec = sorted(precisions, key=lambda p: p != "bf16")
    plan = []
    for b in batches:
        plan += [(False, p, b) for p in prec]
        if compile_:
            plan += [(True, p, b) for p in prec]
    return plan


def run(args) -> dict:
    from presto_cli.codec import build_codec

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    budget = Budget(args.budget_s)
    sh = shapes(args.dry_run)
    out_dir = Path(args.out or os.environ.get("OUT") or "runs/gpu_check")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "gpu_check.json"
    doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": args.dry_run,
           "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
           else (platform.processor() or platform.machine()), "torch": torch.__version__,
           "cuda": torch.version.cuda, "budget_s": args.budget_s, "repeats": args.repeats,
           "audio_seconds": round(sh["audio_seconds"], 4), "frames": sh["frames"],
           "sample_rate": sh["codec"].sample_rate, "weights": "random",
           "text": "hash encoder output (text encoding not timed)",
           "systems": {k: {"sampler": v["sampler"], "steps": v["steps"], "cfg": v["cfg"], "nfe": v["nfe"],
                           "dit": dataclasses.asdict(v["dit"])} for k, v in sh["systems"].items()},
           "schedule": sh["schedule"], "rows": [], "decode": [], "skipped": [], "errors": [], "complete": False}

    def save():
        doc["elapsed_s"] = round(args.budget_s - budget.left(), 2)
        tmp = out_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, out_path)

    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (torch's default)
    save()
    # the codec: decode time per batch (fp32, eager: the codec decodes in fp32 in presto)
    torch.manual_seed(0)
    codec = build_codec(dataclasses.asdict(sh["codec"])).to(dev).eval()
    for batch in args.batches:
        try:
            z = torch.randn(batch, codec.channels, sh["frames"], device=dev) * 0.5
            with torch.no_grad():
                codec.decode(z)
                _sync(dev)
                ts = []
                _peak_reset(dev)
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    codec.decode(z)
                    _sync(dev)
                    ts.append(time.perf_counter() - t0)
            doc["decode"].append({"batch": batch, "decode_s": statistics.median(ts), "peak_mem_mb": _peak(dev)})
        except Exception as e:  # out of memory and the like: record and go on
            doc["errors"].append({"what": f"decode batch {batch}", "error": f"{type(e).__name__}: {str(e)[:300]}"})
        save()
    decode_s = {d["batch"]: d["decode_s"] for d in doc["decode"]}
    compiled_done: list = []

    plan = row_plan(args.batches, args.precisions, args.compile)
    order = [n for n in ("presto-s", "presto-ls", "presto-l", "teacher") if n in args.systems]
    per_eval: dict = {}  # (precision, batch, compile) -> seconds per network evaluation (the cheapest rows first)
    cache: dict = {}
    for comp, prec, batch in plan:
        for name in order:
            row = sh["systems"][name]
            left = budget.left()
            pe = per_eval.get((prec, batch, comp)) or per_eval.get((prec, batch, False))
            run_est = row["nfe"] * pe if pe else None
            reps = args.repeats if run_est is None else max(1, min(args.repeats, int(args.row_cap_s / max(run_est, 1e-9))))
            est = None if run_est is None else (reps + 1) * run_est
            if comp and (name, prec) not in {(n2, p2) for n2, p2, *_ in compiled_done}:
                est = (est or 0) + args.compile_guess_s
            if left < 5 or (est is not None and est > left):
                doc["skipped"].append({"system": name, "precision": prec, "batch": batch, "compile": comp,
                                       "reason": f"time budget: {left:.0f} s left, estimate {est or 0:.0f} s"})
                save()
                continue
            try:
                dkey = ("l" if row["schedule"] is not None else "t", prec, comp)
                if dkey not in cache:
                    for k in [k for k in cache if k[1:] != dkey[1:]]:  # keep the other shape at this setting
                        del cache[k]
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    den = _denoiser(row["dit"], sh["edm"], dev, seed=0)
                    den.net.to(DTYPES[prec])
                    if comp:
                        den.net = torch.compile(den.net)
                    cache[dkey] = den
                den = cache[dkey]
                cond = _cond(batch, row["dit"].text_dim, dev)
                with torch.no_grad():
                    t0 = time.perf_counter()
                    _sample(den, row, sh["edm"], cond, batch, sh["frames"], dev)
                    _sync(dev)
                    warm = time.perf_counter() - t0
                    ts = []
                    _peak_reset(dev)
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        _sample(den, row, sh["edm"], cond, batch, sh["frames"], dev)
                        _sync(dev)
                        ts.append(time.perf_counter() - t0)
                model_s = statistics.median(ts)
                per_eval.setdefault((prec, batch, comp), model_s / max(1, row["nfe"]))
                if comp:
                    compiled_done.append((name, prec, batch))
                dec = decode_s.get(batch)
                doc["rows"].append({"system": name, "precision": prec, "batch": batch, "compile": comp,
                                    "sampler": row["sampler"], "steps": row["steps"], "nfe": row["nfe"],
                                    "model_s": model_s, "model_min_s": min(ts), "decode_s": dec,
                                    "total_s": model_s + (dec or 0.0), "warmup_s": round(warm, 3),
                                    "peak_mem_mb": _peak(dev), "repeats": len(ts)})
            except Exception as e:
                doc["errors"].append({"what": f"{name} {prec} batch {batch} compile {comp}",
                                      "error": f"{type(e).__name__}: {str(e)[:300]}"})
                cache.clear()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            save()
    doc["complete"] = not doc["skipped"] and not doc["errors"]
    save()
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else runs/gpu_check)")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes: a CPU smoke test in seconds")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting rows after this many seconds")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row (the median is reported)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled rows")
    p.add_argument("--row-cap-s", type=float, default=20.0,
                   help="fewer timed runs for a row whose runs would take longer than this in all")
    p.add_argument("--compile-guess-s", type=float, default=90.0,
                   help="compile time assumed by the budget guard for a compiled row")
    args = p.parse_args(argv)
    if args.dry_run:
        torch.set_num_threads(1)
        args.repeats = min(args.repeats, 2)
    doc = run(args)
    print(json.dumps({"rows": len(doc["rows"]), "skipped": len(doc["skipped"]), "errors": len(doc["errors"]),
                      "elapsed_s": doc["elapsed_s"], "json": str(Path(args.out or os.environ.get("OUT")
                                                                           or "runs/gpu_check") / "gpu_check.json")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
