"""Regenerate README's results table from the bundled demo models, in one run on this machine.

    python benchmarks/results.py [--n 240] [--device cpu] [--out results/]

1. `presto bench` (batch 1, after warm-up, teacher first): latency, real-time factor, NFE, and the
   ratio to the teacher, all in the same process and run.
2. `presto eval` on the bundled held-out prompts (fixed seeds), scored with the bundled in-domain
   CLAP (presto-clap) against the held-out real audio's statistics: FAD, MMD, CLAP score, PRDC and
   prompt adherence; plus real training-split audio as the ceiling, and Presto-S at 1/2/4/8 steps.
3. Writes results/*.json, results/report.html and the table between the README's markers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def presto(*args: str) -> dict:
    cmd = [sys.executable, "-m", "presto_cli", *args, "--json"]
    print("$ presto " + " ".join(args), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode != 0:
        raise SystemExit(f"presto {' '.join(args)} failed ({r.returncode})")
    return json.loads(r.stdout)


def _f(x, nd=3):
    if x is None:
        return "–"
    if isinstance(x, (int,)) or (isinstance(x, float) and x.is_integer() and abs(x) > 10):
        return str(int(x))
    return f"{x:.{nd}g}" if abs(x) < 1e4 else f"{x:.3e}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--real", type=Path, default=ROOT / "data" / "synth",
                    help="corpus whose training-split audio is the real-audio ceiling")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ablation", type=Path, default=ROOT / "runs" / "demo" / "ablation",
                    help="folder of Presto-L ablation runs (each */model.safetensors), if present")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    A = ROOT / "presto_cli" / "assets"
    common = ["--prompts", str(A / "heldout_prompts.jsonl"), "--ref", str(A / "ref_heldout_presto-clap.npz"),
              "--embedder", "presto-clap", "--clap-ckpt", str(A / "demo-clap.safetensors"),
              "--styles", str(A / "styles.json"), "--metrics", "fad,mmd,prdc,clap,adherence"]
    bench = presto("bench", "--device", a.device, "--repeats", str(a.repeats))
    (a.out / "bench.json").write_text(json.dumps(bench, indent=2))

    ev = presto("eval", "--n", str(a.n), "--device", a.device, "--out", str(a.out / "eval.json"),
                "--report", str(a.out / "report.html"))
    real_dir = a.out / "real_train"
    if a.real.is_dir() and (a.real / "manifest.jsonl").is_file():
        rows = [json.loads(l) for l in (a.real / "manifest.jsonl").read_text().splitlines() if l.strip()]
        rows = [r for r in rows if r.get("split", "train") == "train"][: a.n]
        real_dir.mkdir(exist_ok=True)
        for r in rows:
            dst = real_dir / Path(r["path"]).name
            if not dst.exists():
                os.symlink((a.real / r["path"]).resolve(), dst)
        real = presto("eval", "--gen", str(real_dir), *common[2:-2], "--metrics", "fad,mmd,prdc",
                      "--out", str(a.out / "eval_real.json"))
    else:
        real = None
    steps = {}
    for s in (1, 2, 4, 8):
        steps[s] = presto("eval", "--model", "demo-s", *common, "--steps", str(s), "--n", str(a.n), "--device",
                          a.device, "--out", str(a.out / f"eval_s_{s}steps.json"))
    ablation = {}
    for run in sorted(a.ablation.glob("*/model.safetensors")) if a.ablation.is_dir() else []:
        ablation[run.parent.name] = presto("eval", "--model", str(run), *common, "--n", str(a.n), "--device", a.device,
                                           "--out", str(a.out / f"eval_{run.parent.name}.json"))
    (a.out / "summary.json").write_text(json.dumps({"bench": bench, "eval": ev, "real": real,
                                                    "presto_s_steps": steps, "ablation": ablation}, indent=2))
    table = render(bench, ev, real, steps, a, ablation)
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(head + START + "\n" + table + "\n" + END + tail)
    print(table)
    print(f"done in {time.time() - t0:.0f} s", file=sys.stderr)


def _bench_rows(bench: dict) -> dict:
    rows = bench.get("rows") or bench.get("results") or []
    return {r.get("model"): r for r in rows}


def _sys(ev: dict) -> dict:
    return {s["name"]: s for s in ev.get("systems", [])}


def render(bench, ev, real, steps, a, ablation=None) -> str:
    b = _bench_rows(bench)
    e = _sys(ev)
    emb = ev.get("embedder", {})
    lines = [
        f"Measured by `python benchmarks/results.py --n {a.n} --device {a.device}` on "
        f"{bench.get('device_name', bench.get('device', a.device))}, {time.strftime('%Y-%m-%d')}. "
        f"Latency: batch 1, after warm-up, median of {a.repeats}; ratios are to the teacher in the same run. "
        f"Quality: {a.n} clips per model on the bundled held-out prompts (fixed seeds), embedder "
        f"{emb.get('name', '?')} ({emb.get('version', '')}), reference: held-out real audio statistics.",
        "",
        "| model | sampler | steps | NFE | latency (s) | RTF | speed-up | FAD ↓ | MMD ↓ | CLAP ↑ | precision | recall | density | coverage | adherence |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = list(b) or list(e)
    for name in names:
        br = b.get(name, {})
        sc = e.get(name, {}).get("scores", {})
        lines.append("| " + " | ".join([
            str(name), str(br.get("sampler", "")), _f(br.get("steps")), _f(br.get("nfe")),
            _f(br.get("latency_s")), _f(br.get("rtf")), _f(br.get("speedup_vs_base")),
            _f(sc.get("fad")), _f(sc.get("mmd2")), _f(sc.get("clap_score")), _f(sc.get("precision")),
            _f(sc.get("recall")), _f(sc.get("density")), _f(sc.get("coverage")), _f(sc.get("adherence")),
        ]) + " |")
    if real:
        sc = real["systems"][0]["scores"]
        lines.append("| real audio (training split) | – | – | – | – | – | – | " + " | ".join(
            _f(sc.get(k)) for k in ("fad", "mmd2")) + " | – | " + " | ".join(
            _f(sc.get(k)) for k in ("precision", "recall", "density", "coverage")) + " | – |")
    lines += ["", "Presto-S (demo-s) at other step counts:", "",
              "| steps | FAD ↓ | MMD ↓ | CLAP ↑ | recall | adherence |", "|---|---|---|---|---|---|"]
    for s, doc in steps.items():
        sc = doc["systems"][0]["scores"]
        lines.append(f"| {s} | {_f(sc.get('fad'))} | {_f(sc.get('mmd2'))} | {_f(sc.get('clap_score'))} | "
                     f"{_f(sc.get('recall'))} | {_f(sc.get('adherence'))} |")
    if ablation:
        base = {n: e[n]["scores"] for n in ("demo-l", "demo-ase") if n in e}
        lines += ["", "Presto-L ablation (same schedule, data and steps; one part switched off each):", "",
                  "| model | FAD ↓ | MMD ↓ | CLAP ↑ | recall | adherence |", "|---|---|---|---|---|---|"]
        rows = [(n, sc) for n, sc in base.items()]
        rows += [(n, doc["systems"][0]["scores"]) for n, doc in ablation.items()]
        for n, sc in rows:
            lines.append(f"| {n} | {_f(sc.get('fad'))} | {_f(sc.get('mmd2'))} | {_f(sc.get('clap_score'))} | "
                         f"{_f(sc.get('recall'))} | {_f(sc.get('adherence'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
