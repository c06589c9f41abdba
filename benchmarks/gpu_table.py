"""benchmarks/gpu_check.py's JSON -> a markdown table for README.md's performance section.

    python benchmarks/gpu_table.py runs/gpu_check/gpu_check.json > table.md

One line per row (system, batch, precision, eager/compiled): sampling, decode and total ms, NFE,
peak memory, and the speed-up over the teacher at the same batch, precision and compilation. The
heading names the card (or says it was a CPU dry run) and what was skipped or failed."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _ms(v) -> str:
    return "-" if v is None else f"{v * 1e3:.1f}"


def table(doc: dict) -> str:
    where = doc["device_name"] if doc["device"].startswith("cuda") else f"CPU ({doc['device_name']})"
    kind = "CPU dry run, tiny shapes" if doc.get("dry_run") else "paper shapes (recipes/paper/), random weights"
    lines = [f"**{where}**, {kind}: {doc['audio_seconds']:g} s of {doc['sample_rate'] / 1000:g} kHz audio "
             f"({doc['frames']} latent frames), torch {doc['torch']}, median of up to {doc['repeats']} runs, "
             f"{doc['created']}.", "",
             "| system | batch | precision | compiled | sampler, steps | NFE | sampling ms | decode ms | total ms "
             "| vs teacher | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    teacher = {(r["batch"], r["precision"], r["compile"]): r["total_s"] for r in doc["rows"] if r["system"] == "teacher"}
    for r in doc["rows"]:
        t = teacher.get((r["batch"], r["precision"], r["compile"]))
        speed = f"{t / r['total_s']:.1f}x" if t and r["system"] != "teacher" else "-"
        mem = "-" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"
        lines.append(f"| {r['system']} | {r['batch']} | {r['precision']} | {'yes' if r['compile'] else 'no'} | "
                     f"{r['sampler']}, {r['steps']} | {r['nfe']} | {_ms(r['model_s'])} | {_ms(r['decode_s'])} | "
                     f"{_ms(r['total_s'])} | {speed} | {mem} |")
    if doc.get("skipped"):
        lines += ["", f"Skipped by the time budget ({doc['budget_s']:g} s): " + "; ".join(
            f"{s['system']} {s['precision']} batch {s['batch']}{' compiled' if s['compile'] else ''}"
            for s in doc["skipped"]) + "."]
    if doc.get("errors"):
        lines += ["", "Errors: " + "; ".join(f"{e['what']}: {e['error']}" for e in doc["errors"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/gpu_table.py GPU_CHECK.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if path.is_dir():
        path = path / "gpu_check.json"
    sys.stdout.write(table(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
