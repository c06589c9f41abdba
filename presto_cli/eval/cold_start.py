"""`presto bench --cold`: where the time of one fresh `presto generate` process goes.

Each round starts a new Python process that times, in order: the imports generate needs, building
the text encoder, reading the model, the first text encoding, sampling, decoding and writing the
clip with its sidecar. The parent times the whole child too, so interpreter start-up and exit are
the difference. A second measurement runs the real command line (`python -m presto_cli generate`)
end to end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

STAGES = ("import", "text encoder", "model load", "text encoding", "sampling", "decode", "write")


def child(model: str | None, steps: int | None, prompt: str, out: str) -> dict:
    """Run in the fresh process: seconds per stage (the text encoder is built first, then cached)."""
    times: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[name] = now - t
        t = now

    import torch

    from presto_cli.outputs import write_clip
    from presto_cli.pipeline import load_pipeline, resolve_model
    from presto_cli.runtime import resolve_device, set_cpu_threads_for
    from presto_cli.text.encoders import build_text_encoder

    lap("import")
    path = resolve_model(model)
    dev = resolve_device("auto")
    set_cpu_threads_for(path, dev)  # as `presto generate` does
    build_text_encoder(_text_encoder_of(path), device=dev)
    lap("text encoder")
    pipe = load_pipeline(str(path), dev)
    lap("model load")
    pipe.encode_text([prompt])
    lap("text encoding")
    with torch.no_grad():
        lat = pipe.sample_latents([prompt], [0], steps)
    lap("sampling")
    audio = pipe.decode(lat)
    lap("decode")
    write_clip(Path(out), audio[0], pipe.sample_rate, {"file": out, "prompt": prompt})
    lap("write")
    return times


def _text_encoder_of(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("presto", "{}"))
    return meta.get("text", "minilm")


def _env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # run this checkout's code in the child
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _one_child(model: str | None, steps: int | None, prompt: str, d: str) -> dict:
    code = ("import json, sys; from presto_cli.eval.cold_start import child; "
            "print(json.dumps(child(*json.loads(sys.argv[1]))))")
    args = json.dumps([model, steps, prompt, os.path.join(d, "cold.wav")])
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - t
    if r.returncode != 0:
        from presto_cli.errors import PrestoError

        raise PrestoError(f"the cold-start child failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    times = json.loads(r.stdout.strip().splitlines()[-1])
    times["interpreter start + exit"] = wall - sum(times.values())
    times["total"] = wall
    return times


def _one_cli(model: str | None, steps: int | None, prompt: str, d: str) -> float:
    cmd = [sys.executable, "-m", "presto_cli", "generate", prompt, "-o", os.path.join(d, "cli.wav"),
           "--seed", "0", "--force"] + (["--model", model] if model else []) + \
          (["--steps", str(steps)] if steps else [])
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - t
    if r.returncode != 0:
        from presto_cli.errors import PrestoError

        raise PrestoError(f"`presto generate` failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return wall


def cold_start(model: str | None = None, steps: int | None = None, rounds: int = 3,
               prompt: str = "jazz trio", tick=None) -> dict:
    """Per-stage seconds (median over ``rounds`` fresh processes) and the end-to-end CLI call
    (median and best); ``tick(done, total)`` reports progress."""
    runs, cli = [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(rounds):
            runs.append(_one_child(model, steps, prompt, d))
            cli.append(_one_cli(model, steps, prompt, d))
            if tick is not None:
                tick(i + 1, rounds)
    keys = list(runs[0])
    return {"model": model or "default", "steps": steps, "rounds": rounds, "cpu_count": os.cpu_count(),
            "stages_s": {k: round(median(r[k] for r in runs), 3) for k in keys},
            "cli_generate_s": {"median": round(median(cli), 3), "best": round(min(cli), 3)}}


def cold_table(doc: dict):
    from rich.table import Table

    t = Table(title=f"cold start, {doc['model']} model, median of {doc['rounds']} fresh processes")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for k, v in doc["stages_s"].items():
        t.add_row(k, f"{v:.3f}")
    c = doc["cli_generate_s"]
    t.add_row("`presto generate` end to end", f"{c['median']:.3f} (best {c['best']:.3f})")
    return t
