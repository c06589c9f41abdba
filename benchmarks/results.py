"""Regenerate README's results table from the bundled demo models, in one run on this machine.

    python benchmarks/results.py [--n 240] [--seeds 3] [--jobs 2] [--device cpu] [--out results/]

1. `presto bench` (run last, so nothing of this script runs beside it; batch 1, after warm-up,
   teacher first, timed rounds interleaved across the models): latency, real-time factor, NFE,
   and the ratio to the teacher, all in one process.
2. `presto eval` on the bundled held-out prompts, scored with the bundled in-domain CLAP
   (presto-clap) against the held-out real audio's statistics: FAD, MMD, CLAP score, PRDC and
   prompt adherence; the same clips are scored again with the weight-free music-feature embedder
   (``--embedder music``: chroma, tonnetz, pitch change, contrast, onsets) against the held-out
   audio's music statistics (assets/ref_heldout_music.npz, else <data>-heldout/), so FAD is
   reported under both embedders. MMD is in CMMD's convention (σ = 10, ×1000). Repeated for
   ``--seeds`` fixed seed sets (the prompts' seeds + 1000 k), so
   each score is a mean with its spread across seed sets: two models whose FADs differ by less
   than that spread are not separated by this measurement. Plus real training-split audio as the
   ceiling, Presto-S at 1/2/4/8 steps; adherence on the plain-language paraphrase prompts; tonal
   change and chroma peak share of each model's clips for the 14 canonical style captions.
3. With the training runs present (runs/demo), `benchmarks/layer_diag.py`: per-noise-bin denoising
   error and distance to the full teacher of ASE, Presto-L and the layer-method grid on held-out
   latents; the grid (runs/demo/grid/<cell>/seed<k>: {early exit, keep-last} x {self-teacher on,
   off} and ASE, three training seeds) scored by FAD under both embedders, and FAD against latency
   of the teacher, ASE and Presto-L at 8, 16 and 32 sampler steps.
4. Writes results/*.json, results/report.html and the tables between the README's markers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the notes table imports presto_cli in-process: this checkout's
START, END = "<!-- results:start -->", "<!-- results:end -->"


JOB_ENV: dict[str, str] = {}  # with --jobs > 1: one thread per presto process


def presto(*args: str) -> dict:
    cmd = [sys.executable, "-m", "presto_cli", *args, "--json"]
    print("$ presto " + " ".join(args), file=sys.stderr, flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args and args[0] != "bench":  # timing runs alone, with the machine's default threads
        env.update(JOB_ENV)
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
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
    ap.add_argument("--repeats", type=int, default=20, help="interleaved timing rounds of the bench")
    ap.add_argument("--seeds", type=int, default=3, help="seed sets per quality measurement")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo",
                    help="the demo chain's training runs (for the per-bin layer diagnostics), if present")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "synth",
                    help="the demo corpus (its held-out latents feed the layer diagnostics)")
    ap.add_argument("--grid", type=Path, default=ROOT / "runs" / "demo" / "grid",
                    help="the layer-method comparison's runs (grid/<cell>/seed<k>/model.safetensors), if present")
    ap.add_argument("--grid-n", type=int, default=0,
                    help="clips per grid run for its FAD (0: none; the grid's primary figure is the per-bin error, "
                         "and FAD on fewer than 96 clips cannot separate its cells)")
    ap.add_argument("--latency-n", type=int, default=96, help="clips per FAD-vs-latency point")
    ap.add_argument("--latency-steps", default="8,16,32", help="sampler steps of the FAD-vs-latency comparison")
    ap.add_argument("--teacher-steps", default="6,12,24",
                    help="the teacher's extra (fewer-step) points of the FAD-vs-latency comparison")
    ap.add_argument("--runs-only", action="store_true",
                    help="score only the tables made from training runs (layer grid, per-bin errors, FAD against "
                         "latency) and put them into README.md, keeping every other table as it is")
    ap.add_argument("--tables", default="grid,latency,recipes",
                    help="with --runs-only: which run-scored tables to rescore (grid: the layer grid and "
                         "per-bin errors; latency: FAD against latency; recipes: the distillation recipes "
                         "compared); the others stay as they are in README.md")
    ap.add_argument("--jobs", type=int, default=1,
                    help="quality evaluations run at once (one thread each); the benches always run alone, last")
    ap.add_argument("--render-only", action="store_true",
                    help="re-run only the layer diagnostics and rewrite the tables from results/summary.json")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if a.render_only:
        S = json.loads((a.out / "summary.json").read_text())
        S["layer_diag"] = layer_diag(a)
        (a.out / "summary.json").write_text(json.dumps(S, indent=2))
        write_readme(render(S["bench"], S["eval"], S["real"], {int(k): v for k, v in S["presto_s_steps"].items()},
                            a, S.get("grid"), S["layer_diag"], S.get("music"), S.get("extra")))
        return

    A = ROOT / "presto_cli" / "assets"
    common = ["--prompts", str(A / "heldout_prompts.jsonl"), "--ref", str(A / "ref_heldout_presto-clap.npz"),
              "--embedder", "presto-clap", "--clap-ckpt", str(A / "demo-clap.safetensors"),
              "--styles", str(A / "styles.json"), "--metrics", "fad,mmd,prdc,clap,adherence"]
    if a.runs_only:
        return runs_only(a, common, t0)


    every = [x for m in ("demo-teacher", "demo-s", "demo-ase", "demo-l", "demo-ls") for x in ("--model", m)]
    # the main evaluation also scores latent texture (against the bundled held-out texture reference)
    # and the asked tempo and key (every held-out prompt names its BPM, about half a key)
    every += ["--metrics", "fad,mmd,prdc,clap,adherence,texture,tempo,key"]
    if a.jobs > 1:
        JOB_ENV.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pool = ThreadPoolExecutor(max(1, a.jobs))  # independent evaluations; no task submits another
    later = lambda *args: pool.submit(presto, *args)  # noqa: E731
    ev_f = [later("eval", *every, "--n", str(a.n), "--device", a.device, *prompt_args(a, 0), "--out", str(a.out / "eval.json"),
                  "--report", str(a.out / "report.html"))]
    for k in range(1, a.seeds):
        ev_f.append(later("eval", *every, "--n", str(a.n), "--device", a.device, *prompt_args(a, k),
                          "--audio-dir", str(a.out / f"eval{sfx(k)}_audio"), "--out", str(a.out / f"eval{sfx(k)}.json")))
    real_dir = a.out / "real_train"
    real_f = tk_f = None
    if link_split(a.real, "train", a.n, real_dir):
        real_f = later("eval", "--gen", str(real_dir), *common[2:-2], "--metrics", "fad,mmd,prdc",
                       "--out", str(a.out / "eval_real.json"))
    # the tempo/key estimators on real held-out clips against their labels: the ceiling
    held_dir = a.out / "real_heldout" / "audio"
    if link_split(a.real, "heldout", a.n, held_dir, manifest=held_dir.parent / "manifest.jsonl"):
        tk_f = later("eval", "--gen", str(held_dir), "--metrics", "tempo,key",
                     "--out", str(a.out / "eval_real_tempo_key.json"))
    steps_f = {s: later("eval", "--model", "demo-s", *common, "--steps", str(s), "--n", str(a.n), "--device",
                        a.device, "--out", str(a.out / f"eval_s_{s}steps.json")) for s in (1, 2, 4, 8)}
    n_para = sum(1 for l in (A / "paraphrase_prompts.jsonl").read_text().splitlines() if l.strip())
    para_f = later("eval", *every, "--prompts", str(A / "paraphrase_prompts.jsonl"), "--n", str(n_para),
                   *common[2:-2], "--metrics", "adherence", "--device", a.device,
                   "--audio-dir", str(a.out / "paraphrase_audio"), "--out", str(a.out / "eval_paraphrase.json"))
    # the same prompts as written (no nearest-caption matching: text/caption_bank.py), adherence only
    para_w = later("eval", *every, "--prompts", str(A / "paraphrase_prompts.jsonl"), "--n", str(n_para),
                   *common[2:-2], "--metrics", "adherence", "--device", a.device, "--no-match",
                   "--audio-dir", str(a.out / "paraphrase_written_audio"), "--out", str(a.out / "eval_paraphrase_written.json"))
    # the second paraphrase set (assets/paraphrase_prompts2.jsonl, kept out of every design decision):
    # matched (the default) and as written
    P2 = A / "paraphrase_prompts2.jsonl"
    n_para2 = sum(1 for l in P2.read_text().splitlines() if l.strip())
    para2_f = later("eval", *every, "--prompts", str(P2), "--n", str(n_para2), *common[2:-2], "--metrics", "adherence",
                    "--device", a.device, "--audio-dir", str(a.out / "paraphrase2_audio"),
                    "--out", str(a.out / "eval_paraphrase2.json"))
    para2_w = later("eval", *every, "--prompts", str(P2), "--n", str(n_para2), *common[2:-2], "--metrics", "adherence",
                    "--device", a.device, "--no-match", "--audio-dir", str(a.out / "paraphrase2_written_audio"),
                    "--out", str(a.out / "eval_paraphrase2_written.json"))
    held_w = later("eval", *every, *prompt_args(a, 0), "--n", str(a.n), *common[2:-2], "--metrics", "adherence",
                   "--device", a.device, "--no-match", "--audio-dir", str(a.out / "heldout_written_audio"),
                   "--out", str(a.out / "eval_heldout_written.json"))
    notes_f = pool.submit(notes_eval, a, every, common)
    has_grid = bool(grid_models(a))
    grid_f = pool.submit(grid_eval, a, common)
    lat_f = latency_submit(a, common, pool) if has_grid else {}
    rec_f = pool.submit(recipes_eval, a, common)
    ev = [f.result() for f in ev_f]
    real = real_f.result() if real_f else None
    steps = {s: f.result() for s, f in steps_f.items()}
    extra = {"tempo_key_real": tk_f.result() if tk_f else None, "paraphrase": para_f.result(),
             "notes": notes_f.result(), "paraphrase_written": para_w.result(), "heldout_written": held_w.result(),
             "recipes": rec_f.result(), "paraphrase2": para2_f.result(), "paraphrase2_written": para2_w.result()}
    grid = grid_f.result()
    music = music_eval(a, ev, real_dir if real else None)
    pool.shutdown()
    diag = layer_diag(a)
    if grid is not None and diag:
        grid["per_bin"], grid["per_bin_cfg"] = diag[0], diag[1:]
    # timing last: on a machine with nothing else running by then
    bench = presto("bench", "--device", a.device, "--repeats", str(a.repeats))
    if lat_f:
        extra["fad_latency"] = latency_collect(a, lat_f)
        fad_latency_plot(extra["fad_latency"], ROOT / "docs" / "fad_latency.png")
    (a.out / "bench.json").write_text(json.dumps(bench, indent=2))
    (a.out / "summary.json").write_text(json.dumps({"bench": bench, "eval": ev, "real": real,
                                                    "presto_s_steps": steps, "grid": grid,
                                                    "layer_diag": diag, "music": music, "extra": extra}, indent=2))
    table = render(bench, ev, real, steps, a, grid, diag, music, extra)
    write_readme(table)
    print(table)
    print(f"done in {time.time() - t0:.0f} s", file=sys.stderr)


def prompt_args(a, k: int) -> list[str]:
    """``--prompts`` of seed set ``k``: the bundled held-out prompts, their seeds + 1000 k."""
    A = ROOT / "presto_cli" / "assets"
    if k == 0:
        return ["--prompts", str(A / "heldout_prompts.jsonl")]
    prompts = [json.loads(l) for l in (A / "heldout_prompts.jsonl").read_text().splitlines() if l.strip()]
    f = a.out / f"heldout_prompts_seed{k}.jsonl"
    text = "".join(json.dumps({**r, "seed": int(r["seed"]) + 1000 * k}) + "\n" for r in prompts)
    # called again from another thread while an eval reads the file: write once, atomically
    if not f.is_file() or f.read_text() != text:
        from presto_cli.io import atomic_write_text

        atomic_write_text(f, text)
    return ["--prompts", str(f)]


def sfx(k: int) -> str:
    return "" if k == 0 else f"_seed{k}"


def link_split(corpus: Path, split: str, n: int, folder: Path, manifest: Path | None = None) -> int:
    """Symlink the first ``n`` clips of ``split`` of a synthetic corpus into ``folder`` (an older
    manifest without splits counts as training data); with ``manifest``, also write their rows there
    with paths relative to it, so an eval of the folder finds their labels. Returns how many."""
    if not (corpus.is_dir() and (corpus / "manifest.jsonl").is_file()):
        return 0
    rows = [json.loads(l) for l in (corpus / "manifest.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r.get("split", "train") == split][:n]
    if not rows:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        dst = folder / Path(r["path"]).name
        if not dst.exists():
            os.symlink((corpus / r["path"]).resolve(), dst)
    if manifest is not None:
        rel = os.path.relpath(folder, manifest.parent)
        manifest.write_text("".join(json.dumps({**r, "path": f"{rel}/{Path(r['path']).name}"}) + "\n" for r in rows))
    return len(rows)


def music_reference(a) -> str | None:
    """The held-out audio's statistics under the music embedder (bundled), else the held-out folder."""
    stats = ROOT / "presto_cli" / "assets" / "ref_heldout_music.npz"
    if stats.is_file():
        return str(stats)
    held = a.data.parent / (a.data.name + "-heldout")
    return str(held) if held.is_dir() else None


def music_eval(a, ev: list[dict], real_dir: Path | None) -> list[dict] | None:
    """FAD/MMD of the clips each seed set's presto-clap eval generated, under the music embedder."""
    ref = music_reference(a)
    if ref is None:
        print("no music-feature reference (assets/ref_heldout_music.npz or <data>-heldout): "
              "skipping the music-embedder FAD", file=sys.stderr)
        return None
    docs = []
    for k, doc in enumerate(ev):
        dirs = [s["audio_dir"] for s in doc["systems"] if s.get("audio_dir")]
        if k == 0 and real_dir is not None:
            dirs.append(str(real_dir))
        gens = [x for d in dirs for x in ("--gen", d)]
        docs.append(presto("eval", *gens, "--ref", ref, "--embedder", "music", "--metrics", "fad,mmd",
                           "--out", str(a.out / f"eval_music{'' if k == 0 else f'_seed{k}'}.json")))
    return docs


def _runs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/model.safetensors")) if folder.is_dir() else []


GRID_CELLS = {  # cell -> (block choice, self-teacher, budget embedding)
    "ase": ("early exit", "off", "no"),
    "early-exit-no-st": ("early exit", "off", "yes"),
    "early-exit-st": ("early exit", "on", "yes"),
    "keep-last-no-st": ("keep-last", "off", "yes"),
    "keep-last-st": ("keep-last", "on", "yes"),
}


def grid_models(a) -> list[Path]:
    return [p for c in GRID_CELLS for p in sorted((a.grid / c).glob("seed*/model.safetensors"))]


def grid_eval(a, common: list[str]) -> dict | None:
    """The layer-method comparison: each training seed of each cell generates --grid-n clips of the
    held-out prompts (first seed set), scored by FAD under presto-clap and the music embedder."""
    runs = grid_models(a)
    if not runs:
        return None
    if a.grid_n <= 0:  # per-bin errors only (layer_diag fills grid["per_bin"])
        return {"n": 0, "eval": {}, "music": None,
                "runs": [f"{r.parent.parent.name}/{r.parent.name}" for r in runs]}
    docs = {}
    for run in runs:
        cell, seed = run.parent.parent.name, run.parent.name
        key = f"{cell}_{seed}"
        docs[key] = presto("eval", "--model", str(run), *common[2:-2], "--metrics", "fad,mmd", "--n", str(a.grid_n),
                           "--device", a.device, "--audio-dir", str(a.out / "grid_audio" / key),
                           "--out", str(a.out / f"grid_{key}.json"))
    ref = music_reference(a)
    music = None
    if ref is not None:
        dirs = [x for k in docs for x in ("--gen", docs[k]["systems"][0]["audio_dir"])]
        music = presto("eval", *dirs, "--ref", ref, "--embedder", "music", "--metrics", "fad",
                       "--out", str(a.out / "grid_music.json"))
    return {"n": a.grid_n, "eval": docs, "music": music,
            "runs": [f"{r.parent.parent.name}/{r.parent.name}" for r in runs]}


def _steps_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


LATENCY_MODELS = ("demo-teacher", "demo-ase", "demo-l")


def latency_models(a) -> list[str]:
    """The bundled teacher, ASE and Presto-L, plus the guided-trained Presto-L run when present."""
    extra = a.runs / "presto-l-cfg" / "model.safetensors"
    return list(LATENCY_MODELS) + ([str(extra)] if extra.is_file() else [])


def latency_points(a) -> dict[int, list[str]]:
    """Sampler steps -> models: every model at --latency-steps, the teacher also at --teacher-steps."""
    pts = {s: latency_models(a) for s in _steps_list(a.latency_steps)}
    for s in _steps_list(a.teacher_steps):
        pts.setdefault(s, ["demo-teacher"])
    return dict(sorted(pts.items()))


def latency_eval(a, common: list[str], s: int, models: list[str]) -> dict:
    """FAD under both embedders of ``models`` at ``s`` sampler steps (--latency-n clips each)."""
    ms = [x for m in models for x in ("--model", m)]
    ev = presto("eval", *ms, *common[2:-2], "--metrics", "fad", "--n", str(a.latency_n), "--steps", str(s),
                "--device", a.device, "--audio-dir", str(a.out / f"latency_{s}steps_audio"),
                "--out", str(a.out / f"eval_latency_{s}steps.json"))
    ref = music_reference(a)
    mus = None
    if ref is not None:
        dirs = [x for sy in ev["systems"] for x in ("--gen", sy["audio_dir"])]
        mus = presto("eval", *dirs, "--ref", ref, "--embedder", "music", "--metrics", "fad",
                     "--out", str(a.out / f"eval_latency_{s}steps_music.json"))
    return {"eval": ev, "music": mus, "n": a.latency_n}


def latency_bench(a, s: int, models: list[str]) -> dict:
    """Batch-1 latency of the same models at ``s`` steps (run alone, after every evaluation)."""
    ms = [x for m in models for x in ("--model", m)]
    return presto("bench", *ms, "--steps", str(s), "--device", a.device, "--repeats", "5", "--no-memory")


def latency_submit(a, common: list[str], pool) -> dict:
    return {s: (models, pool.submit(latency_eval, a, common, s, models)) for s, models in latency_points(a).items()}


def latency_collect(a, lat_f: dict) -> dict:
    """The evaluations' results, then each point's bench (alone, one after another)."""
    done = {s: (models, f.result()) for s, (models, f) in lat_f.items()}
    return {s: {**doc, "bench": latency_bench(a, s, models)} for s, (models, doc) in done.items()}


# Distillation recipes compared [issue 29 items 5, 6]: a run of another recipe (runs/<name>) beside the
# bundled model it is compared with, when the run is on this machine
RECIPE_RUNS = (
    ("presto-s-paper", "demo-s", "Presto-S as the paper trains it (`recipes/demo/presto-s-paper.yaml`: DMD + GAN "
     "from the teacher, r = 5, no regression, 5200 iterations) beside the bundled hybrid demo-s"),
    ("presto-ls-tp", "demo-ls", "demo-ls before demo-s's two backward-simulation phases were added to it "
     "(the bundled demo-ls is presto-ls-bsim2: `recipes/demo/presto-ls-bsim.yaml`, 600 + 600 iterations from "
     "presto-ls-tp), so S and LS are compared on the same phases"),
)


def recipe_runs(a) -> list[dict]:
    return [{"name": name, "path": str(a.runs / name / "model.safetensors"), "base": base, "what": what}
            for name, base, what in RECIPE_RUNS if (a.runs / name / "model.safetensors").is_file()]


def final_d_gap(run_dir: Path, tail: int = 400) -> float | None:
    """Mean d_real − d_fake (``d_gap``) over a run's last ``tail`` iterations (its metrics.jsonl)."""
    f = run_dir / "metrics.jsonl"
    if not f.is_file():
        return None
    rows = []
    for line in f.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r.get("d_gap"), (int, float)) and isinstance(r.get("step"), int):
            rows.append(r)
    if not rows:
        return None
    last = max(r["step"] for r in rows)
    vals = [r["d_gap"] for r in rows if r["step"] > last - tail]
    return statistics.fmean(vals)


def recipes_eval(a, common: list[str]) -> dict | None:
    """Each recipe run, the bundled model it is compared with and the teacher: FAD under both
    embedders, adherence and latent texture on every seed set of the held-out prompts."""
    runs = recipe_runs(a)
    if not runs:
        return None
    models = list(dict.fromkeys(["demo-teacher"] + [m for r in runs for m in (r["base"], r["path"])]))
    ms = [x for m in models for x in ("--model", m)]
    ref = music_reference(a)
    docs, music = [], []
    for k in range(a.seeds):
        ev = presto("eval", *ms, *common[2:-2], "--metrics", "fad,adherence,texture", "--n", str(a.n),
                    "--device", a.device, *prompt_args(a, k), "--audio-dir", str(a.out / f"recipes{sfx(k)}_audio"),
                    "--out", str(a.out / f"eval_recipes{sfx(k)}.json"))
        docs.append(ev)
        if ref is not None:
            dirs = [x for sy in ev["systems"] for x in ("--gen", sy["audio_dir"])]
            music.append(presto("eval", *dirs, "--ref", ref, "--embedder", "music", "--metrics", "fad",
                                "--out", str(a.out / f"eval_recipes_music{sfx(k)}.json")))
    for r in runs:
        r["d_gap"] = final_d_gap(Path(r["path"]).parent)
    return {"eval": docs, "music": music or None, "runs": runs, "n": a.n}


def recipes_table(rec: dict) -> list[str]:
    """Each recipe run under the bundled model it is compared with: FAD under both embedders (mean ±
    sd over seed sets, and the means' ratio to the teacher's), adherence, latent frame change and
    median level against real, and the discriminator's final d_real − d_fake."""
    from presto_cli.eval.evaluate import system_name

    ev, music = rec["eval"], rec.get("music") or []
    teacher = _agg(ev, "demo-teacher")
    tmus = _agg(music, "demo-teacher") if music else {}

    def ratio(v, t):
        return f"{v[0] / t[0]:.2f}x" if v and t and t[0] else "–"

    lines = ["", f"Distillation recipes compared [issue 29]: each run of another recipe under the bundled model it is "
             f"compared with ({rec['n']} clips of the held-out prompts per model and seed set, {len(ev)} seed sets, "
             f"mean ± sd; 4 steps, x0 clipping as each model's default; {time.strftime('%Y-%m-%d')}). FAD ratios are of the means to the "
             "teacher's on the same clips; frame change is the latent texture ratio to real (1 = real) and p50 "
             "the median level's difference from real in dB; d_gap is the run's discriminator d_real − d_fake "
             "over its last 400 iterations (near 0: the head sits at chance). " + match_note(ev[:1]), "",
             "| model | FAD (presto-clap) ↓ | × teacher | FAD (music) ↓ | × teacher | adherence | frame change × | "
             "p50 dB ± | d_gap |", "|---|---|---|---|---|---|---|---|---|"]
    order = ["demo-teacher"]
    for r in rec["runs"]:
        order += [r["base"], system_name(r["path"])]
    gaps = {system_name(r["path"]): r.get("d_gap") for r in rec["runs"]}
    whats = {system_name(r["path"]): r["what"] for r in rec["runs"]}
    for name in dict.fromkeys(order):
        sc = _agg(ev, name)
        if not sc:
            continue
        mu = _agg(music, name).get("fad") if music else None
        tx = _texture_agg(ev, name)
        lines.append(f"| {name} | {_pm(sc.get('fad'))} | {ratio(sc.get('fad'), teacher.get('fad'))} | {_pm(mu)} | "
                     f"{ratio(mu, tmus.get('fad'))} | {_pm(sc.get('adherence'))} | {_pm(tx.get('frame_change_ratio'))} "
                     f"| {_pm(tx.get('level_p50_diff_db'), 2)} | {_f(gaps.get(name))} |")
    lines += [""] + [f"- {n}: {w}." for n, w in whats.items()]
    return lines


def notes_eval(a, every: list[str], common: list[str]) -> dict:
    """Do the notes move? Each model generates the 14 canonical style captions (seeds 0-13); the
    tonal change (mean chroma distance over 0.5 s) and the chroma peak share (the strongest pitch
    class's share of a frame's chroma: a noise floor spreads it, 1/12 = 0.083) of those clips,
    against one training clip per style of the corpus."""
    import numpy as np
    import soundfile as sf

    from presto_cli.codec.quality import chroma_peak_share, tonal_change

    styles = json.loads((ROOT / "presto_cli" / "assets" / "styles.json").read_text())["styles"]
    f = a.out / "styles14.jsonl"
    f.write_text("".join(json.dumps({"prompt": st["caption"], "seed": i, "name": st["name"], "style": st["name"]}) + "\n"
                         for i, st in enumerate(styles)))
    ev = presto("eval", *every, "--prompts", str(f), "--n", str(len(styles)), *common[2:-2], "--metrics", "adherence",
                "--device", a.device,
                "--audio-dir", str(a.out / "styles14_audio"), "--out", str(a.out / "eval_styles14.json"))

    def score(files: list[Path]) -> dict:
        tc, ps = [], []
        for p in files:
            x, sr = sf.read(str(p), dtype="float32", always_2d=True)
            tc.append(tonal_change(x.mean(1), sr))
            ps.append(chroma_peak_share(x.mean(1), sr))
        return {"tonal_change": float(np.mean(tc)), "peak_share": float(np.mean(ps)), "n": len(files)}

    res = {sy["name"]: {**score(sorted(Path(sy["audio_dir"]).glob("*.wav"))), "adherence": sy["scores"].get("adherence")}
           for sy in ev["systems"]}
    if (a.real / "manifest.jsonl").is_file():
        rows = [json.loads(l) for l in (a.real / "manifest.jsonl").read_text().splitlines() if l.strip()]
        first = {}
        for r in rows:
            st = (r.get("labels") or {}).get("style")
            if r.get("split", "train") == "train" and st and st not in first:
                first[st] = a.real / r["path"]
        res["corpus (one clip per style)"] = score([first[st["name"]] for st in styles if st["name"] in first])
    return res


def layer_diag(a) -> list[dict] | None:
    """benchmarks/layer_diag.py on the demo chain's layer runs, when the runs and data are here."""
    # the teacher the layer runs were distilled from: its last training phase present
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bundle import LATER  # benchmarks/bundle.py: the teacher's phases in order

    phases = [a.runs / n / "model.safetensors" for n in ("teacher", *LATER["teacher"])]
    teacher_run = next((p for p in reversed(phases) if p.is_file()), phases[0])
    layer_runs = [a.runs / n / "model.safetensors" for n in ("ase", "presto-l")]
    if not (teacher_run.is_file() and all(p.is_file() for p in layer_runs)
            and (a.data / "manifest.jsonl").is_file()):
        return None
    guided = a.runs / "presto-l-cfg" / "model.safetensors"  # Presto-L trained on guided outputs
    layer_runs += ([guided] if guided.is_file() else []) + grid_models(a)
    docs = []
    for cfg in (1.0, 2.0):  # unguided (what the layer stages train) and the teacher's CFG (what sampling sees)
        out = a.out / ("layer_diag.json" if cfg == 1.0 else f"layer_diag_cfg{cfg:g}.json")
        print(f"$ python benchmarks/layer_diag.py --cfg {cfg:g} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "layer_diag.py"), "--teacher", str(teacher_run),
                        "--data", str(a.data), "--n", str(min(a.n, 120)), "--per-bin", "2", "--cfg", str(cfg),
                        "--out", str(out), "--cache", str(a.out / "layer_diag_cache"), *map(str, layer_runs)],
                       cwd=ROOT, check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        docs.append(json.loads(out.read_text()))
    return docs


# Tables scored from training runs (runs/demo: the grid, per-bin diagnostics) or from them with
# the FAD-against-latency points: when this machine cannot produce one, the previous one is kept.
RUN_SECTIONS = ("Layer methods compared", "FAD against latency at other sampler budgets",
                "Layer dropping per noise bin", "Distillation recipes compared")
CARRIED = ("The tables below were not rescored by this run (it was given none of the training runs they "
           "are scored from: `--grid`, the layer runs, the compared recipes); they are carried over from "
           "the previous `make results`, whose models they describe.")
OLD_NOTES = (CARRIED, "The tables below were not rescored by this run (the training runs they are scored from, "
             "`runs/demo/grid/` and the layer runs, were not on its machine); they are carried over from "
             "the previous `make results`.", "The tables below were not rescored by this run (its machine had no training runs in "
             "`runs/demo`); they are carried over from the previous `make results`.")


def _sections(block: str) -> dict[str, str]:
    """The run-scored sections of a results block, by their opening words (each runs to the next)."""
    starts = sorted((i, key) for key in RUN_SECTIONS for i in _find_all(block, "\n" + key))
    out: dict[str, str] = {}
    for n, (i, key) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(block)
        out.setdefault(key, "")
        out[key] += block[i:end].rstrip("\n") + "\n"
    return out


def _find_all(text: str, sub: str) -> list[int]:
    i, found = text.find(sub), []
    while i >= 0:
        found.append(i)
        i = text.find(sub, i + 1)
    return found


def carry_over(old_block: str, table: str) -> str:
    """``table`` plus each run-scored section the old block had and ``table`` lacks, under a note."""
    have, old = _sections("\n" + table), _sections("\n" + old_block)
    missing = [old[k] for k in RUN_SECTIONS if k in old and k not in have]
    if not missing:
        return table
    return table.rstrip("\n") + "\n\n" + CARRIED + "\n" + "".join(missing).rstrip("\n")


def write_readme(table: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        old, tail = rest.split(END, 1)
        for note in OLD_NOTES:  # carry the old tables, not the old note
            old = old.replace(note, "")
        readme.write_text(head + START + "\n" + carry_over(old, table) + "\n" + END + tail)


def _meta(path: Path) -> str:
    """The JSON metadata string of a .safetensors artefact (without loading its tensors)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        m = f.metadata() or {}
    return m.get("presto", "{}")


def _bench_rows(bench: dict) -> dict:
    rows = bench.get("rows") or bench.get("results") or []
    return {r.get("model"): r for r in rows}


def _sys(ev: dict) -> dict:
    return {s["name"]: s for s in ev.get("systems", [])}


def _agg(docs: list[dict], name: str | None = None) -> dict:
    """Per score: (mean, sd over seed sets) of one system across the seed sets' eval documents."""
    per = []
    for d in docs:
        sy = _sys(d).get(name) if name else d["systems"][0]
        if sy:
            per.append(sy["scores"])
    out = {}
    for key in (per[0] if per else {}):
        vals = [p[key] for p in per if isinstance(p.get(key), (int, float))]
        if vals:
            out[key] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None)
    return out


def _rewrites(sy: dict) -> int | None:
    """Prompts the eval conditioned on another text (the nearest training caption) than the prompt,
    counted from the clips' sidecars (``<clip>.json``: ``prompt``, ``condition``); None when any
    sidecar is missing or older than the ``condition`` field."""
    n = 0
    for c in sy.get("clips") or []:
        try:
            rec = json.loads(Path(str(c["file"]) + ".json").read_text())
        except (OSError, ValueError, KeyError):
            return None
        if "condition" not in rec:
            return None
        n += rec["condition"] != rec.get("prompt", c.get("prompt"))
    return n if sy.get("clips") else None


def _points(h, q) -> str:
    """The gap between two adherences in points, "–" when either is missing."""
    return f"{100 * (h - q):.0f}" if h is not None and q is not None else "–"


def match_note(docs) -> str:
    """One sentence for a table's header: whether nearest-caption matching was on (the systems'
    ``prompt_match``) and how many prompts it rewrote per model, from the eval documents ``docs``
    (one or a list) [issue 29]."""
    docs = [docs] if isinstance(docs, dict) else [d for d in docs if d]
    systems = [sy for d in docs for sy in d.get("systems", []) if sy.get("source", "model") == "model"]
    if not systems:
        return "Nearest-caption matching: not recorded."
    modes = sorted({str(sy.get("prompt_match", "?")) for sy in systems})
    if modes == ["off"]:
        return "Nearest-caption matching: off (every model conditions on the prompts as written)."
    how = {"auto": "auto (a prompt unlike every training wording is replaced by the nearest training caption)",
           "on": "on (every prompt is replaced by the nearest training caption)"}
    mode = "; ".join(how.get(m, m) for m in modes)
    counts = {(sy["name"], _rewrites(sy), len(sy.get("clips") or [])) for sy in systems}
    if any(r is None for _, r, _ in counts):
        return f"Nearest-caption matching: {mode}; how many prompts it rewrote is not recorded (no clip sidecars)."
    per = {(r, n) for _, r, n in counts}
    if len(per) == 1:
        r, n = next(iter(per))
        return f"Nearest-caption matching: {mode}; it rewrote {r} of {n} prompts for every model."
    lst = ", ".join(f"{name} {r}/{n}" for name, r, n in sorted(counts))
    return f"Nearest-caption matching: {mode}; prompts it rewrote per model: {lst}."


def _pm(v, nd=3) -> str:
    if not v:
        return "–"
    m, sd = v
    return _f(m, nd) if sd is None else f"{_f(m, nd)} ± {float(f'{sd:.2g}'):g}"  # sd: 2 significant digits


def render(bench, ev, real, steps, a, grid=None, diag=None, music=None, extra=None) -> str:
    b = _bench_rows(bench)
    emb = ev[0].get("embedder", {})
    memb = (music[0].get("embedder", {}) if music else {})
    mmd_conv = (ev[0].get("conditions") or {}).get("mmd") or "unbiased MMD², median-heuristic bandwidth, unscaled"
    fad_music = (f" FAD (music) is the same clips under the weight-free music-feature embedder "
                 f"({memb.get('version', '')}) against the held-out audio." if music else "")
    seeds = len(ev)
    spread = (f" Quality scores are the mean ± standard deviation over {seeds} seed sets of {a.n} clips "
              "(the held-out prompts' seeds + 0, 1000, 2000, ...)." if seeds > 1 else "")
    lines = [
        f"Measured by `python benchmarks/results.py --n {a.n} --seeds {a.seeds} --jobs {getattr(a, 'jobs', 1)} "
        f"--latency-n {getattr(a, 'latency_n', 96)} --device {a.device}` on "
        f"{bench.get('device_name', bench.get('device', a.device))} ({bench.get('threads', '?')} threads), "
        f"{time.strftime('%Y-%m-%d')}. "
        f"Latency: batch 1, after warm-up, median of {a.repeats} rounds interleaved across the models; "
        f"speed-ups are to the teacher in the same run. "
        f"Quality: {a.n} clips per model on the bundled held-out prompts, embedder "
        f"{emb.get('name', '?')} ({emb.get('version', '')}), reference: held-out real audio statistics."
        + fad_music + f" MMD: {mmd_conv}." + spread + " " + match_note(ev[:1]) + " (first seed set)",
        "",
        f"| model | sampler | steps | NFE | latency (s) | RTF | speed-up | FAD ({emb.get('name', '?')}) ↓ | "
        "FAD (music) ↓ | MMD ↓ | CLAP ↑ | precision | recall | density | coverage | adherence |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = list(b) or list(_sys(ev[0]))
    for name in names:
        br = b.get(name, {})
        sc = _agg(ev, name)
        lines.append("| " + " | ".join([
            str(name), str(br.get("sampler", "")), _f(br.get("steps")), _f(br.get("nfe")),
            _f(br.get("latency_s")), _f(br.get("rtf")), _f(br.get("speedup_vs_base")),
            _pm(sc.get("fad")), _pm(_agg(music, name).get("fad") if music else None), _pm(sc.get("mmd2")), _pm(sc.get("clap_score")), _pm(sc.get("precision")),
            _pm(sc.get("recall")), _pm(sc.get("density")), _pm(sc.get("coverage")), _pm(sc.get("adherence")),
        ]) + " |")
    if real:
        sc = real["systems"][0]["scores"]
        real_music = _agg(music[:1], "real_train").get("fad") if music else None
        lines.append("| real audio (training split) | – | – | – | – | – | – | " + " | ".join(
            [_f(sc.get("fad")), _pm(real_music), _f(sc.get("mmd2"))]) + " | – | " + " | ".join(
            _f(sc.get(k)) for k in ("precision", "recall", "density", "coverage")) + " | – |")
    lines += texture_tempo_key_table(ev, names, (extra or {}).get("tempo_key_real"))
    lines += ["", f"Presto-S (demo-s) at other step counts (first seed set). {match_note(list(steps.values()))}", "",
              "| steps | FAD ↓ | MMD ↓ | CLAP ↑ | recall | adherence |", "|---|---|---|---|---|---|"]
    for s, doc in steps.items():
        sc = doc["systems"][0]["scores"]
        lines.append(f"| {s} | {_f(sc.get('fad'))} | {_f(sc.get('mmd2'))} | {_f(sc.get('clap_score'))} | "
                     f"{_f(sc.get('recall'))} | {_f(sc.get('adherence'))} |")
    extra = extra or {}
    if extra.get("paraphrase"):
        para = _sys(extra["paraphrase"])
        lines += ["", f"Prompt adherence in a person's words: `assets/paraphrase_prompts.jsonl` ({len(next(iter(para.values()))['files']) if para and next(iter(para.values())).get('files') else 84} "
                  "plain-language descriptions, 6 per style, in words the caption templates never use) beside the held-out "
                  "captions (first seed set); adherence = the share of clips presto-clap assigns to the prompt's style. "
                  f"Paraphrases: {match_note(extra['paraphrase'])} Held-out: {match_note(ev[:1])} (caption bank: "
                  "METHOD.md section 2); \"as written\" is the same prompts with `--no-match`.", "",
                  "| model | held-out adherence | paraphrase adherence | gap (points) | held-out, as written | "
                  "paraphrases, as written | gap as written |", "|---|---|---|---|---|---|---|"]
        pw = _sys(extra["paraphrase_written"]) if extra.get("paraphrase_written") else {}
        hw = _sys(extra["heldout_written"]) if extra.get("heldout_written") else {}

        for name in names:
            h = (_sys(ev[0]).get(name) or {}).get("scores", {}).get("adherence")
            q = (para.get(name) or {}).get("scores", {}).get("adherence")
            h2 = (hw.get(name) or {}).get("scores", {}).get("adherence")
            q2 = (pw.get(name) or {}).get("scores", {}).get("adherence")
            lines.append(f"| {name} | {_f(h)} | {_f(q)} | {_points(h, q)} | {_f(h2)} | {_f(q2)} | {_points(h2, q2)} |")
    if extra.get("paraphrase2"):
        p2 = _sys(extra["paraphrase2"])
        p2w = _sys(extra["paraphrase2_written"]) if extra.get("paraphrase2_written") else {}
        lines += ["", "The second paraphrase set, `assets/paraphrase_prompts2.jsonl` (84 descriptions, 6 per style, "
                  "written for this and kept out of every design decision; issue 30): adherence with nearest-caption "
                  f"matching as by default ({match_note(extra['paraphrase2'])}) and as written (`--no-match`), "
                  "gaps to the held-out adherence of the table above.", "",
                  "| model | held-out adherence | set 2, default | gap (points) | set 2, as written | gap as written |",
                  "|---|---|---|---|---|---|"]
        for name in names:
            h = (_sys(ev[0]).get(name) or {}).get("scores", {}).get("adherence")
            q = (p2.get(name) or {}).get("scores", {}).get("adherence")
            q2 = (p2w.get(name) or {}).get("scores", {}).get("adherence")
            lines.append(f"| {name} | {_f(h)} | {_f(q)} | {_points(h, q)} | {_f(q2)} | {_points(h, q2)} |")
    if extra.get("notes"):
        lines += ["", "Do the notes move? The 14 canonical style captions (seeds 0-13) per model: tonal change "
                  "(mean chroma cosine distance over 0.5 s; a drone scores below 0.07) and chroma peak share "
                  "(the strongest pitch class's share of a frame's chroma: white noise 0.12, 1/12 at the least), "
                  "against one training clip per style.", "",
                  "| audio | tonal change | ratio to corpus | chroma peak share |", "|---|---|---|---|"]
        notes = extra["notes"]
        corpus = notes.get("corpus (one clip per style)", {}).get("tonal_change")
        for name, v in notes.items():
            ratio = f"{v['tonal_change'] / corpus:.2f}" if corpus else "–"
            lines.append(f"| {name} | {v['tonal_change']:.3f} | {ratio} | {v['peak_share']:.3f} |")
    lines += render_runs(a, grid, diag, extra)
    return "\n".join(lines)


def render_runs(a, grid=None, diag=None, extra=None) -> list[str]:
    """The tables scored from training runs (RUN_SECTIONS): the layer grid, FAD against latency and
    the per-bin errors."""
    lines: list[str] = []
    extra = extra or {}
    if grid:
        lines += grid_table(grid)
    if extra.get("fad_latency"):
        lines += latency_table(extra["fad_latency"])
    if extra.get("recipes"):
        lines += recipes_table(extra["recipes"])
    if isinstance(diag, dict):  # one document (older summaries)
        diag = [diag]
    for dg in diag or []:
        d = dg["depths_low_to_high_noise"]
        cfg = dg.get("cfg", 1.0)
        how = "no CFG" if cfg == 1.0 else f"guided outputs at CFG {cfg:g}, as the sampler uses them"
        lines += ["", f"Layer dropping per noise bin (`benchmarks/layer_diag.py --cfg {cfg:g}`, {dg['n']} held-out "
                  f"latents, {dg['per_bin']} noise levels per bin, {how}): EDM-weighted denoising error "
                  "λ(σ)‖D−x0‖² and, in brackets, distance to the full-depth teacher λ(σ)‖D−D_full‖². Lower is "
                  "better; 'untuned' is the teacher's weights run with the schedule before any fine-tuning.", "",
                  "| model | " + " | ".join(f"k={k}" for k in d) + " | mean |",
                  "|---|" + "---|" * (len(d) + 1)]
        for n, v in dg["results"].items():
            if "/seed" in n:  # the grid's runs: summarised over training seeds in its own table
                continue
            dn, st = v["dn"], v["st"]
            cells = [f"{x:.3f}" + ("" if n.startswith("teacher") else f" ({y:.3f})") for x, y in zip(dn, st)]
            mean = f"{statistics.fmean(dn):.3f}" + ("" if n.startswith("teacher") else f" ({statistics.fmean(st):.3f})")
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def latency_table(fl: dict) -> list[str]:
    """FAD against latency: every point's models, with the bench's latency (rows matched by the
    evaluation's system name, so run paths work too)."""
    from presto_cli.eval.evaluate import system_name

    docs = sorted(fl.items(), key=lambda kv: int(kv[0]))
    n = next((d.get("n") for _, d in docs if d.get("n")), None) or len(next(iter(_sys(docs[0][1]["eval"]).values()))
                                                                      .get("files", []) or [None])
    lines = ["", f"FAD against latency at other sampler budgets ({n} clips of the held-out prompts per point, first "
             "seed set; Heun with the teacher's CFG; latency: batch 1, median of 5 interleaved rounds; the teacher "
             "also at fewer steps, so each model can be compared with the teacher at equal latency). The paper's "
             "claim: Presto-L improves standard sampling at every budget. "
             + match_note([d.get("eval") for _, d in docs]) + " Plotted in `docs/fad_latency.png`.", "",
             "| model | steps | NFE | latency (s) | FAD (presto-clap) ↓ | FAD (music) ↓ |", "|---|---|---|---|---|---|"]
    rows = []
    for s_, doc in docs:
        br = {system_name(str(k)): v for k, v in _bench_rows(doc["bench"]).items()}
        mus = _sys(doc["music"]) if doc.get("music") else {}
        for name, sy in _sys(doc["eval"]).items():
            m = mus.get(name, {}).get("scores", {}).get("fad") if mus else None
            rows.append((name, int(s_), br.get(name, {}), sy["scores"].get("fad"), m))
    order = {m: i for i, m in enumerate(dict.fromkeys(r[0] for r in rows))}
    for name, s_, b, f, m in sorted(rows, key=lambda r: (order[r[0]], r[1])):
        lines.append(f"| {name} | {s_} | {_f(b.get('nfe'))} | {_f(b.get('latency_s'))} | {_f(f)} | {_f(m)} |")
    return lines


def fad_latency_plot(fl: dict, path: Path) -> Path:
    """docs/fad_latency.png: FAD under both embedders against batch-1 latency, one line per model
    (the teacher's fewer-step points on its line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from presto_cli.eval.evaluate import system_name

    pts: dict[str, list] = {}
    for s_, doc in fl.items():
        br = {system_name(str(k)): v for k, v in _bench_rows(doc["bench"]).items()}
        mus = _sys(doc["music"]) if doc.get("music") else {}
        for name, sy in _sys(doc["eval"]).items():
            lat = br.get(name, {}).get("latency_s")
            if lat is not None:
                pts.setdefault(name, []).append((lat, int(s_), sy["scores"].get("fad"),
                                                 mus.get(name, {}).get("scores", {}).get("fad")))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, col, title in ((axes[0], 2, "FAD (presto-clap)"), (axes[1], 3, "FAD (music features)")):
        for name, v in pts.items():
            v = sorted(x for x in v if x[col] is not None)
            if not v:
                continue
            ax.plot([x[0] for x in v], [x[col] for x in v], "o-", label=name)
            for x in v:
                ax.annotate(str(x[1]), (x[0], x[col]), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xlabel("latency, batch 1 (s)")
        ax.set_title(title + " ↓ (labels: sampler steps)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def splice_runs(old_block: str, runs_table: str) -> str:
    """``old_block`` with each run-scored section that ``runs_table`` has put in place of the old one
    (at the old one's first place; every other piece of it dropped); the others are kept as they are."""
    new = _sections("\n" + runs_table)
    text = "\n" + old_block.strip("\n") + "\n"
    for key in RUN_SECTIONS:
        if key not in new:
            continue
        seg = "\n" + new[key].strip("\n") + "\n"
        starts = sorted((i, k) for k in RUN_SECTIONS for i in _find_all(text, "\n" + k))
        spans = [(i, starts[n + 1][0] if n + 1 < len(starts) else len(text))
                 for n, (i, k) in enumerate(starts) if k == key]
        if not spans:
            text = text.rstrip("\n") + "\n" + seg
            continue
        for i, end in reversed(spans[1:]):
            text = text[:i] + text[end:]
        i, end = spans[0]
        text = text[:i] + seg + text[end:]
    return text.strip("\n")


def runs_only(a, common: list[str], t0: float) -> None:
    """--runs-only: the grid's per-bin errors (and FAD with --grid-n), the per-bin tables, FAD
    against latency and the distillation recipes compared (those --tables names), spliced into
    README.md in place of the old ones."""
    tables = {t.strip() for t in a.tables.split(",") if t.strip()}
    unknown = tables - {"grid", "latency", "recipes"}
    if unknown:
        raise SystemExit(f"--tables: unknown {', '.join(sorted(unknown))} (grid, latency, recipes)")
    pool = ThreadPoolExecutor(max(1, a.jobs))
    if a.jobs > 1:
        JOB_ENV.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    grid_f = pool.submit(grid_eval, a, common) if "grid" in tables else None
    lat_f = latency_submit(a, common, pool) if "latency" in tables else {}
    rec_f = pool.submit(recipes_eval, a, common) if "recipes" in tables else None
    grid = grid_f.result() if grid_f else None
    diag = layer_diag(a) if "grid" in tables else None
    pool.shutdown(wait=True)
    if grid is not None and diag:
        grid["per_bin"] = diag[0]
        grid["per_bin_cfg"] = diag[1:]
    extra = {"fad_latency": latency_collect(a, lat_f) if lat_f else None,
             "recipes": rec_f.result() if rec_f else None}
    (a.out / "runs_summary.json").write_text(json.dumps({"grid": grid, "layer_diag": diag, "extra": extra}, indent=2))
    if extra["fad_latency"]:
        fad_latency_plot(extra["fad_latency"], ROOT / "docs" / "fad_latency.png")
    table = "\n".join(render_runs(a, grid, diag, extra))
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        old, tail = rest.split(END, 1)
        for note in OLD_NOTES:  # these tables are rescored now
            old = old.replace("\n" + note + "\n", "\n")
        readme.write_text(head + START + "\n" + splice_runs(old, table) + "\n" + END + tail)
    print(table)
    print(f"done in {time.time() - t0:.0f} s", file=sys.stderr)


TEXTURE_COLS = (("frame_change_ratio", "frame change ×"), ("speckle_ratio", "speckle ×"),
                ("boundary_ratio", "token grid"), ("peaks_per_frame_ratio", "peaks/frame ×"),
                ("peak_persistence_ratio", "persistence ×"), ("level_p5_diff_db", "p5 dB ±"),
                ("level_p50_diff_db", "p50 dB ±"), ("level_p95_diff_db", "p95 dB ±"))
TEMPO_KEY_COLS = (("tempo_acc1", "tempo ±4%"), ("tempo_acc2", "tempo ±4% ×2/½"), ("key_exact", "key exact"),
                  ("key_relative", "key relative"), ("key_parallel", "key parallel"))


def _texture_agg(ev: list[dict], name: str) -> dict:
    """The nested texture scores of ``name``, mean ± sd over the seed sets as _agg does."""
    return _agg([{"systems": [{"name": name, "scores": ((_sys(d).get(name) or {}).get("scores") or {})
                               .get("texture") or {}}]} for d in ev], name)


def texture_tempo_key_table(ev: list[dict], names: list[str], real_tk: dict | None) -> list[str]:
    """Latent texture (ratios to the real held-out latents; the token grid is the boundary ratio
    itself, real 0.97) and tempo/key accuracy against the asked values, with the estimators' own
    accuracy on real held-out clips (their labels) as the ceiling."""
    if not any(((_sys(ev[0]).get(n) or {}).get("scores") or {}).get("texture") for n in names):
        return []
    tref = ev[0].get("texture_reference") or {}
    real_sys = ((real_tk or {}).get("systems") or [{}])[0]
    ceil = real_sys.get("scores") or {}
    lines = ["", "Texture, tempo and key (the same clips; mean ± sd over the seed sets). Texture is measured on "
             f"the model's own latents against {tref.get('n', '?')} real held-out latents "
             f"({tref.get('data', 'assets/ref_heldout_texture.json')}; METHOD.md section 6): ratios to real "
             "(1 = real), the token grid as the boundary ratio itself (real "
             f"{_f(tref.get('boundary_ratio'), 2)}), levels as dB differences from real. Tempo and key: the "
             "estimated tempo (within 4%, and allowing double/half) and key of each clip against the BPM and "
             "key its prompt names (presto_cli/eval/tempo_key.py); the real row is the estimators' accuracy on "
             f"{real_sys.get('n', '?')} real held-out clips "
             "against their labels, the ceiling a model is read against.", "",
             "| model | " + " | ".join(h for _, h in TEXTURE_COLS + TEMPO_KEY_COLS) + " |",
             "|---|" + "---|" * (len(TEXTURE_COLS) + len(TEMPO_KEY_COLS))]
    for name in names:
        t, sc = _texture_agg(ev, name), _agg(ev, name)
        lines.append(f"| {name} | " + " | ".join(_pm(t.get(k)) for k, _ in TEXTURE_COLS) + " | "
                     + " | ".join(_pm(sc.get(k)) for k, _ in TEMPO_KEY_COLS) + " |")
    if ceil:
        lines.append("| real audio (held-out; ceiling) | " + " | ".join("–" for _ in TEXTURE_COLS) + " | "
                     + " | ".join(_f(ceil.get(k)) for k, _ in TEMPO_KEY_COLS) + " |")
    return lines


def grid_table(grid: dict) -> list[str]:
    """The 2x2 + ASE table: per cell, mean ± sd over training seeds of the per-bin denoising error
    (benchmarks/layer_diag.py; the primary figure), unguided and at the sampler's CFG, and of FAD
    (both embedders) when the grid's runs were also sampled (--grid-n)."""
    def stat(vals):
        vals = [v for v in vals if isinstance(v, (int, float))]
        if not vals:
            return None
        return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None)

    mus = _sys(grid["music"]) if grid.get("music") else {}
    pb = (grid.get("per_bin") or {}).get("results", {})
    guided = (grid.get("per_bin_cfg") or [{}])[0] or {}
    pbg, gcfg = guided.get("results", {}), guided.get("cfg")
    depths = (grid.get("per_bin") or {}).get("depths_low_to_high_noise", [])
    runs = list(grid.get("runs") or [k.replace("_seed", "/seed") for k in grid["eval"]])
    has_fad = bool(grid.get("eval"))
    fad_txt = (f"FAD: {grid['n']} clips per run (held-out prompts, first seed set). " + match_note(list(grid["eval"].values()))
               if has_fad else "No FAD: on the clip counts this machine affords it cannot separate the cells (issue 29).")
    lines = ["", "Layer methods compared: every cell distilled from the bundled teacher by the recipes "
             "(`recipes/demo/ase.yaml`, `presto-l.yaml` with one override per cell: 300 steps at batch 32, warm-up "
             "finished) with training seeds 0, 1, 2. Per-bin error = EDM-weighted denoising error on held-out "
             "latents per noise bin, low noise first, with the depth each bin runs at; mean ± standard deviation "
             "over the training seeds" + (f"; 'at CFG {gcfg:g}' = the same on guided outputs, as the sampler "
                                         "uses them" if pbg else "") + ". " + fad_txt, "",
             "| cell | blocks kept | self-teacher | budget embedding | seeds | "
             + ("FAD (presto-clap) ↓ | FAD (music) ↓ | " if has_fad else "")
             + "per-bin error, mean ↓ | " + (f"at CFG {gcfg:g}, mean ↓ | " if pbg else "")
             + " | ".join(f"k={d}" for d in depths) + " |",
             "|---|---|---|---|---|" + ("---|---|" if has_fad else "") + "---|" + ("---|" if pbg else "")
             + "---|" * len(depths)]
    for cell, (blocks, st, be) in GRID_CELLS.items():
        keys = sorted(k for k in runs if k.split("/")[0] == cell)
        if not keys:
            continue
        row = [cell, blocks, st, be, str(len(keys))]
        if has_fad:
            evs = [grid["eval"].get(k.replace("/", "_")) for k in keys]
            evs = [e for e in evs if e]
            row += [_pm(stat([e["systems"][0]["scores"].get("fad") for e in evs])),
                    _pm(stat([mus.get(e["systems"][0]["name"], {}).get("scores", {}).get("fad") for e in evs]))]
        got = [pb[k] for k in keys if k in pb]
        row.append(_pm(stat([statistics.fmean(r["dn"]) for r in got])))
        if pbg:
            row.append(_pm(stat([statistics.fmean(pbg[k]["dn"]) for k in keys if k in pbg])))
        row += [_pm(stat([r["dn"][b] for r in got])) for b in range(len(depths))]
        lines.append("| " + " | ".join(row) + " |")
    return lines


if __name__ == "__main__":
    main()
