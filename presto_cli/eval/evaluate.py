"""The engine behind ``presto eval`` (METHOD.md §6).

Generated audio comes from models (``presto_cli.pipeline.load_pipeline(...).generate``; the clips
are written to disk so they can be listened to and cached) or from folders (``--gen DIR``). The
reference is a folder of audio or a statistics ``.npz`` (``mu``, ``sigma``, optionally
``embeddings`` and ``embedder``). Every metric is computed on the same embeddings, which are cached
on disk; unreadable files are reported and skipped. The results document records every condition a
score depends on (embedder and its version/checkpoint, N, clip length, reference set, seeds, model,
steps, sampler), because FAD-like numbers are not comparable across any of them.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from presto_cli.errors import PrestoError, PrestoUsageError
from presto_cli.prompts import read_prompts  # noqa: F401  (re-exported)
from presto_cli.eval import metrics as M
from presto_cli.eval.embedders import Embedder, EmbeddingCache, build_embedder
from presto_cli import validate as V
from presto_cli.validate import drop_short, set_warnings

METRICS = ("fad", "mmd", "prdc", "clap", "adherence", "texture", "tempo", "key")
TEXT_METRICS = ("clap", "adherence")
REF_METRICS = ("fad", "mmd", "prdc")
LATENT_METRICS = ("texture",)  # measured on the model's latents, not on audio embeddings
TEXTURE_REF = "ref_heldout_texture.json"  # bundled: real held-out latents of the demo codec
SIGNAL_METRICS = ("tempo", "key")  # on the audio itself (presto_cli.eval.tempo_key), no embeddings


def check_eval_options(cfg) -> None:
    """`presto eval`'s numbers (an EvalConfig), before any model or embedder is loaded."""
    V.number("--cfg", cfg.cfg)  # negative means the model's default; NaN must not pass as one
    V.number("--duration", cfg.duration, at_least=0)
    M.parse_bandwidth(cfg.bandwidth)  # cmmd | median | a positive finite number
    V.check_sampling(cfg.steps or None)
    V.check_seed(cfg.seed)
    from presto_cli.eval.embedders import EMBEDDER_ALIASES, EMBEDDERS
    from presto_cli.names import unknown_name

    if (cfg.embedder or "").strip().lower() not in EMBEDDERS + EMBEDDER_ALIASES:
        raise unknown_name("embedder", cfg.embedder, EMBEDDERS)
    if cfg.k < 1:
        raise V.PrestoUsageError(f"--k must be at least 1, got {cfg.k}",
                                 "PRDC counts each clip's k nearest neighbours; the usual k is 5")
    if cfg.n < 0:
        raise V.PrestoUsageError(f"--n must be at least 0, got {cfg.n}", "0 takes every prompt or file")
    if cfg.batch_size < 1:
        raise V.PrestoUsageError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    try:
        parse_cfg_interval(cfg.cfg_interval or None)
        x0_clip_setting(cfg)
    except PrestoError as e:
        raise PrestoUsageError(e.message, e.hint) from None


@dataclass
class EvalConfig:
    """Everything ``presto eval`` can be told (also the keys of an eval YAML file)."""

    metrics: list[str] = field(default_factory=lambda: ["fad", "mmd", "prdc"])
    models: list[str] = field(default_factory=list)
    gen: list[str] = field(default_factory=list)
    ref: str = ""
    prompts: str = ""
    styles: str = ""  # styles.json for prompt adherence (default: <ref>/styles.json or synth styles)
    embedder: str = "mel"
    clap_ckpt: str = ""
    n: int = 0  # clips per system (0: all prompts / all files)
    steps: int = 0  # 0: the model's default
    sampler: str = ""
    cfg: float = -1.0  # < 0: the model's default
    duration: float = 0.0  # 0: the model's default
    seed: int = 0  # base seed for prompts without one
    k: int = 5  # PRDC neighbours
    bandwidth: float | str = "cmmd"  # MMD RBF σ: cmmd (σ = 10, ×1000; CMMD's convention), median, or a number
    batch_size: int = 8
    match: str = "auto"  # condition on the nearest training caption: auto (prompts unlike every training wording) | on | off
    text_adapter: str = ""  # a text adapter between the text encoder and the DiT (a text-adapter file; "" or none: none)
    x0_clip: str = "auto"  # clamp x0 predictions into the training latents' range: auto (the model's default) | on | off
    cfg_interval: str = ""  # guide only where LO < sigma <= HI: "LO,HI", "all" (every sigma), "" (the model's default)
    device: str = "auto"
    precision: str = ""  # the DiT's dtype when generating: fp32 | bf16 | fp16 ("" = the device's default)
    compile: bool = False  # torch.compile the DiT when generating
    cache: str = ""  # embedding cache folder (default ~/.cache/presto/embeddings)
    no_cache: bool = False
    audio_dir: str = ""  # where generated clips are written (default: beside --out/--report)
    save_ref_stats: str = ""  # write the reference statistics (.npz) here
    out: str = ""
    report: str = ""
    report_rows: int = 12
    run_dir: str = ""  # results.json, report.html and audio/ go here unless out/report/audio_dir say
    texture_ref: str = ""  # real clips for the texture reference: a folder of audio, or a texture .json (default: --ref DIR, else the bundled one)


DEFAULT_N = 48  # clips per model when generating from the bundled prompts
DEFAULT_METRICS = ["fad", "mmd", "prdc", "clap", "adherence"]


def assets_dir() -> Path:
    """The bundled assets folder (read through the pipeline module, so tests can point it elsewhere)."""
    from presto_cli import pipeline

    return pipeline.ASSETS


def default_models() -> list[str]:
    """The default fast model (assets/default.txt) and the teacher it is measured against."""
    from presto_cli.pipeline import bundled_models, default_model_name

    have = bundled_models()
    try:
        fast = default_model_name()
    except PrestoError:
        return []
    return [m for m in dict.fromkeys([fast, "demo-teacher"]) if m in have]


def with_defaults(opts: dict) -> dict:
    """Fill what ``opts`` leaves unset with the bundled defaults; each option replaces only itself.

    No models and no folders: the default model and the teacher, on DEFAULT_N bundled held-out
    prompts (stratified over styles). The reference statistics, prompts, styles and in-domain CLAP
    are the bundled ones unless named; inputs that are still missing are reported by
    :func:`missing_inputs`, all in one message.
    """
    out = {k: v for k, v in opts.items() if v is not None}
    a = assets_dir()
    if not out.get("models") and not out.get("gen"):
        out["models"] = default_models()
    if out.get("models") and not out.get("prompts"):
        out["prompts"] = str(a / "heldout_prompts.jsonl")
        out.setdefault("n", DEFAULT_N)
    emb = out.setdefault("embedder", "presto-clap")
    if emb == "presto-clap" and not out.get("clap_ckpt"):
        out["clap_ckpt"] = str(a / "demo-clap.safetensors")
    if not out.get("ref") and (a / f"ref_heldout_{emb}.npz").is_file():
        out["ref"] = str(a / f"ref_heldout_{emb}.npz")
    if not out.get("styles") and (a / "styles.json").is_file():
        out["styles"] = str(a / "styles.json")
    if not out.get("metrics"):
        out["metrics"] = list(DEFAULT_METRICS) if emb != "mel" else list(REF_METRICS)
    return out


def missing_inputs(cfg: EvalConfig, metrics: list[str]) -> list[str]:
    """Every input the evaluation needs and cannot find (empty when all is there)."""
    from presto_cli.pipeline import resolve_model

    miss = []
    if not cfg.models and not cfg.gen:
        miss.append("something to evaluate (no bundled demo models installed): pass --model M or --gen DIR")
    for m in cfg.models:
        try:
            resolve_model(m)
        except PrestoUsageError:  # an unknown model name: a bad option value, with its "did you mean"
            raise
        except PrestoError as e:
            miss.append(f"--model {m}: {e}")
    miss += [f"--gen {g}: no such folder" for g in cfg.gen if not Path(g).is_dir()]
    need_ref = [m for m in metrics if m in REF_METRICS]
    if need_ref and not cfg.ref:
        miss.append(f"a reference for {', '.join(need_ref)} (no bundled statistics for the {cfg.embedder} "
                    "embedder): pass --ref DIR or --ref STATS.npz")
    elif cfg.ref and not Path(cfg.ref).exists():
        miss.append(f"--ref {cfg.ref}: not found")
    ref_dir = Path(cfg.ref) if cfg.ref and Path(cfg.ref).is_dir() else None
    if cfg.models and not cfg.prompts and not (ref_dir and (ref_dir / "manifest.jsonl").is_file()):
        miss.append("prompts to generate from: pass --prompts FILE (.txt or .jsonl)")
    for key in ("prompts", "styles"):
        if getattr(cfg, key) and not Path(getattr(cfg, key)).is_file():
            miss.append(f"--{key} {getattr(cfg, key)}: not found")
    if cfg.embedder == "presto-clap" and cfg.clap_ckpt and not Path(cfg.clap_ckpt).is_file():
        miss.append(f"--clap-ckpt {cfg.clap_ckpt}: not found")
    return miss


def stratified(rows: list[dict], n: int) -> list[dict]:
    """The first ``n`` rows taken in turn from each style (in order of first appearance), so a
    short prompt set covers every style; rows without styles are taken in file order."""
    if n >= len(rows) or not any(r.get("style") for r in rows):
        return rows[:n]
    groups: dict = {}
    for r in rows:
        groups.setdefault(r.get("style"), []).append(r)
    deepest = max(map(len, groups.values()))
    turns = [g[d] for d in range(deepest) for g in groups.values() if d < len(g)]
    keep = {id(r) for r in turns[:n]}
    return [r for r in rows if id(r) in keep]  # file order, so names and seeds read naturally


# --------------------------------------------------------------------------------------------
# Inputs


def parse_metrics(text: str | list[str]) -> list[str]:
    items = text if isinstance(text, list) else str(text).split(",")
    out = []
    for m in (s.strip().lower() for s in items):
        if not m:
            continue
        if m == "all":
            out.extend(METRICS)
            continue
        if m in ("clap_score", "clap-score"):
            m = "clap"
        if m not in METRICS:
            import difflib

            near = difflib.get_close_matches(m, METRICS, n=1, cutoff=0.5)
            raise PrestoError(f"unknown metric '{m}'" + (f"; did you mean '{near[0]}'?" if near else ""),
                              f"choose from {','.join(METRICS)}")
        out.append(m)
    out = list(dict.fromkeys(out))
    if not out:
        raise PrestoError("no metrics asked for", f"--metrics {','.join(METRICS)}")
    return out


def audio_files(folder: str | Path) -> list[Path]:
    from presto_cli.audio import AUDIO_EXTS

    d = Path(folder)
    if not d.is_dir():
        raise PrestoError(f"audio folder not found: {d}")
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTS
                   and not any(part.startswith(".") for part in p.relative_to(d).parts))
    if not files:
        raise PrestoError(f"no audio files in {d}", "expected .wav/.flac/.mp3/.ogg/.aiff files")
    return files


def _folder_labels(folder: Path) -> dict[str, dict]:
    """Per-file prompt/style from ``manifest.jsonl`` in ``folder`` (keys: resolved path)."""
    out: dict[str, dict] = {}
    man = folder / "manifest.jsonl"
    if man.is_file():
        for line in man.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("path"):
                labels = rec.get("labels") or {}
                out[str((folder / rec["path"]).resolve())] = {
                    "prompt": rec.get("caption") or rec.get("prompt"),
                    "style": rec.get("style") or (labels.get("style") if isinstance(labels, dict) else None),
                    "labels": labels if isinstance(labels, dict) else None}
    return out


def _asked_labels(rec: dict) -> dict | None:
    """The tempo/key a sidecar or prompt row records as asked (``bpm``/``tempo``, ``key``, ``mode``,
    at the top level or under ``asked``), for ``--metrics tempo,key``."""
    src = rec.get("asked") if isinstance(rec.get("asked"), dict) else rec
    out = {k: src[k] for k in ("bpm", "tempo", "key", "mode") if src.get(k) is not None}
    return out or None


def file_labels(folder: Path, files: list[Path]) -> list[dict]:
    """Prompt and style of each file: its JSON sidecar (``x.wav.json``), else the folder manifest."""
    man = _folder_labels(folder)
    if not man and (folder.parent / "manifest.jsonl").is_file():  # e.g. --gen corpus/audio
        man = _folder_labels(folder.parent)
    out = []
    for f in files:
        rec: dict = {}
        side = f.with_suffix(f.suffix + ".json")
        if side.is_file():
            try:
                s = json.loads(side.read_text(encoding="utf-8"))
                if isinstance(s, dict):
                    rec = {"prompt": s.get("prompt"), "style": s.get("style"), "seed": s.get("seed"),
                           "model": s.get("model"), "steps": s.get("steps"), "sampler": s.get("sampler"),
                           "labels": _asked_labels(s)}
            except (OSError, json.JSONDecodeError):
                pass
        if not rec.get("prompt"):
            rec.update({k: v for k, v in man.get(str(f.resolve()), {}).items() if v})
        out.append(rec)
    return out


def style_texts(styles_file: str, ref: str, needed: list[str]) -> dict[str, str]:
    """Style name -> the text used for zero-shot classification."""
    cands = [Path(styles_file)] if styles_file else []
    if ref and Path(ref).is_dir():
        cands.append(Path(ref) / "styles.json")
    for c in cands:
        if c.is_file():
            try:
                data = json.loads(c.read_text(encoding="utf-8"))
                rows = data.get("styles", data) if isinstance(data, dict) else data
                table = {str(r["name"]): str(r.get("caption") or r.get("title") or r["name"]) for r in rows}
            except (OSError, json.JSONDecodeError, KeyError, TypeError):
                raise PrestoError(f"{c} is not a styles file",
                                  "expected {\"styles\": [{\"name\", \"caption\"}, ...]}") from None
            missing = [s for s in needed if s not in table]
            if missing:
                raise PrestoError(f"style '{missing[0]}' is not listed in {c}")
            return table
        if styles_file and c == Path(styles_file):
            raise PrestoError(f"styles file not found: {c}")
    from presto_cli.data.synth import style_captions

    table = style_captions()
    return table if all(s in table for s in needed) else {s: s for s in needed}


# --------------------------------------------------------------------------------------------
# Reference


@dataclass
class Reference:
    description: dict
    embeddings: np.ndarray | None
    mu: np.ndarray
    sigma: np.ndarray


def loud_notes(embedder: Embedder) -> list[str]:
    """One line for the files of the last ``embed_files`` call that peak far above full scale (they
    are scored as they are, but their embeddings say more about the scaling than the music)."""
    loud = getattr(embedder, "loud", [])
    if not loud:
        return []
    f, peak = max(loud, key=lambda x: x[1])
    who = f"{f} peaks at" if len(loud) == 1 else f"{f} and {len(loud) - 1} more files peak at up to"
    return [f"{who} {peak:.3g}, far above full scale (1.0): scored as is, which measures the scaling more "
            "than the music (normalise the audio, e.g. divide by its peak)"]


def load_reference(ref: str, embedder: Embedder, cache: EmbeddingCache | None,
                   log: Callable[[str], None]) -> Reference:
    p = Path(ref)
    if p.is_dir():
        files = audio_files(p)
        emb, idx, errors = drop_short(files, *embedder.embed_files(files, cache))
        for f, e in errors:
            log(f"skipped reference file {f}: {e}")
        for line in loud_notes(embedder):
            log(f"warning: {line}")
        if emb.shape[0] < 2:
            raise PrestoError(f"the reference folder {p} has fewer than 2 readable clips")
        mu, sigma = M.gaussian_stats(emb)
        durs = _durations([files[i] for i in idx])
        desc = {"kind": "folder", "path": str(p), "n": int(emb.shape[0]), "n_files": len(files),
                "clip_seconds": _summary(durs), "skipped": [{"file": f, "error": e} for f, e in errors]}
        return Reference(desc, emb, mu, sigma)
    if p.is_file() and p.suffix == ".npz":
        try:
            z = np.load(p, allow_pickle=False)
            data = {k: z[k] for k in z.files}
        except Exception as e:
            raise PrestoError(f"cannot read reference statistics {p}: {type(e).__name__}") from None
        if "mu" not in data or "sigma" not in data:
            raise PrestoError(f"{p} has no mu/sigma arrays", "write it with --save-ref-stats")
        ver = str(data["embedder"]) if "embedder" in data else None
        if ver is not None and ver != embedder.version:
            raise PrestoError(f"{p} was computed with embedder '{ver}', not '{embedder.version}'",
                              "scores are only comparable in the same embedding space: recompute the stats")
        emb = np.asarray(data["embeddings"], dtype=np.float64) if "embeddings" in data else None
        mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
        if mu.shape != (embedder.dim,):
            raise PrestoError(f"{p} holds {mu.shape[0] if mu.ndim else 0}-d statistics but the "
                              f"{embedder.name} embedder makes {embedder.dim}-d embeddings")
        n = int(data["n"]) if "n" in data else (int(emb.shape[0]) if emb is not None else None)
        desc = {"kind": "stats", "path": str(p), "n": n, "embedder": ver,
                "has_embeddings": emb is not None}
        if "clip_seconds" in data:
            desc["clip_seconds"] = float(data["clip_seconds"])
        return Reference(desc, emb, mu, sigma)
    raise PrestoError(f"reference not found: {p}", "--ref takes a folder of audio or a .npz of statistics")


def reference_notes(ref: Reference, dim: int, gen_seconds: float | None) -> list[str]:
    """Warnings on the reference set: fewer clips than dimensions, or clips of another length."""
    cs = ref.description.get("clip_seconds")
    ref_seconds = cs.get("mean") if isinstance(cs, dict) else cs
    return set_warnings(ref.description.get("n"), dim, gen_seconds, ref_seconds)


def save_reference_stats(path: str | Path, ref: Reference, embedder: Embedder) -> None:
    import io as _io

    from presto_cli.io import atomic_write_bytes

    arrays = {"mu": ref.mu, "sigma": ref.sigma, "embedder": np.array(embedder.version),
              "n": np.array(ref.description.get("n") or 0)}
    if ref.embeddings is not None:
        arrays["embeddings"] = ref.embeddings
    cs = ref.description.get("clip_seconds")
    if isinstance(cs, dict) and cs.get("mean") is not None:
        arrays["clip_seconds"] = np.array(cs["mean"])
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _durations(files: list[Path]) -> list[float]:
    from presto_cli.audio import audio_info

    out = []
    for f in files:
        try:
            out.append(float(audio_info(f)["duration"]))
        except PrestoError:
            pass
    return out


def _multichannel(files: list[Path]) -> int:
    """How many of ``files`` have more than one channel (embedders hear their mono downmix)."""
    from presto_cli.audio import audio_info

    n = 0
    for f in files:
        try:
            n += int(audio_info(f)["channels"]) > 1
        except PrestoError:
            pass
    return n


def _summary(durs: list[float]) -> dict:
    if not durs:
        return {"mean": None, "min": None, "max": None}
    return {"mean": round(float(np.mean(durs)), 4), "min": round(float(np.min(durs)), 4),
            "max": round(float(np.max(durs)), 4)}


# --------------------------------------------------------------------------------------------
# Systems (what is evaluated)


@dataclass
class System:
    name: str
    source: str  # "model" | "folder"
    files: list[Path]
    prompts: list[str | None]
    styles: list[str | None]
    seeds: list[int | None]
    info: dict = field(default_factory=dict)
    latent_db: list | None = None  # [C, F] dB latents of the clips (texture), when kept
    labels: list[dict | None] = field(default_factory=list)  # asked tempo/key per clip, if known


def _plan_prompts(cfg: EvalConfig, ref_dir: Path | None) -> list[dict]:
    if cfg.prompts:
        rows = read_prompts(cfg.prompts)
    elif ref_dir is not None and (ref_dir / "manifest.jsonl").is_file():
        rows = [{"prompt": r["prompt"], "style": r.get("style")}
                for r in _folder_labels(ref_dir).values() if r.get("prompt")]
        if not rows:
            raise PrestoError(f"{ref_dir}/manifest.jsonl has no captions", "pass --prompts FILE")
    else:
        raise PrestoError("evaluating a model needs prompts", "pass --prompts FILE (.txt or .jsonl)")
    if cfg.n and cfg.n < len(rows):
        rows = stratified(rows, cfg.n)
    n = cfg.n or len(rows)
    out = []
    used: set[int] = set()
    for i in range(n):  # cycle through the prompts when N exceeds them; seeds stay distinct
        r = dict(rows[i % len(rows)])
        rep = i // len(rows)
        seed = int(r["seed"]) + rep * len(rows) if "seed" in r else cfg.seed + i
        while seed in used:
            seed += 1
        used.add(seed)
        r["seed"] = seed
        base = r.get("name") or f"{i:04d}"
        r["name"] = f"{base}_r{rep}" if rep and r.get("name") else base
        out.append(r)
    return out


def system_name(model: str) -> str:
    """A readable, file-safe name: a bundled name as is; for a run's model.safetensors the run
    folder's name (runs/demo/ase/model.safetensors -> ase), else the file's stem."""
    p = Path(model)
    if not p.suffix:
        base = model
    elif p.stem == "model" and p.parent.name:
        base = p.parent.name
        if re.fullmatch(r"seed\d+", base) and p.parent.parent.name:  # runs/demo/grid/ase/seed1
            base = f"{p.parent.parent.name}_{base}"
    else:
        base = p.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base)


def _clip_keys(path: Path, pipe, s, frames: int, rows: list[dict], cfg: EvalConfig) -> list[str]:
    """The clip cache's key of each row's clip (presto_cli/eval/clip_cache.py)."""
    from presto_cli.eval.clip_cache import ClipCache, model_digest

    digest = model_digest(path)
    settings = {"sampler": s.sampler, "steps": s.steps, "cfg": s.cfg, "rho": s.rho, "frames": int(frames),
                "match": cfg.match, "token_shift": getattr(s, "token_shift", None)}
    if pipe.adapter is not None:  # only with one: clips made before adapters keep their keys
        settings["text_adapter"] = pipe.adapter_digest()
    if getattr(s, "x0_clip", False):  # only when on: clips made before the option keep their keys
        settings["x0_clip"] = True
    if getattr(s, "cfg_interval", None):  # likewise only when set
        settings["cfg_interval"] = list(s.cfg_interval)
    return [ClipCache.key(digest, r["prompt"], r["seed"], settings) for r in rows]


def parse_cfg_interval(text):
    """edm.parse_cfg_interval, imported when called (this module loads without torch)."""
    from presto_cli.diffusion.edm import parse_cfg_interval as parse

    return parse(text)


def x0_clip_setting(cfg: EvalConfig) -> bool | None:
    """``cfg.x0_clip`` as the pipeline takes it (None: the model's default)."""
    if cfg.x0_clip not in ("auto", "on", "off"):
        raise PrestoError(f"eval x0_clip must be auto, on or off, got {cfg.x0_clip!r}")
    return None if cfg.x0_clip == "auto" else cfg.x0_clip == "on"


def clip_cache_for(cfg: EvalConfig):
    """The clip cache ``cfg`` uses (None with --no-cache)."""
    from presto_cli.eval.clip_cache import ClipCache, default_root

    return None if cfg.no_cache else ClipCache(default_root(cfg.cache or None))


def generate_system(model: str, rows: list[dict], cfg: EvalConfig, audio_root: Path,
                    log: Callable[[str], None], progress: Callable[[str, int, int], None] | None = None,
                    clips=None) -> System:
    """Generate one clip per row with ``model``; write them (with sidecars) under ``audio_root``.
    Clips already in the clip cache ``clips`` (a :class:`ClipCache`) are taken from it instead."""
    from presto_cli.outputs import clip_record, provenance, write_clip
    from presto_cli.pipeline import load_pipeline, resolve_model

    from presto_cli.runtime import set_cpu_threads_for

    path = resolve_model(model)
    set_cpu_threads_for(path, cfg.device)  # as `presto generate`: small models on one CPU thread
    pipe = load_pipeline(str(path), cfg.device, cfg.precision or None, cfg.compile)
    pipe.set_text_adapter(cfg.text_adapter or None)
    if pipe.codec is None:
        raise PrestoError(f"{path} makes latents only (no codec embedded)", "evaluate a model trained on audio")
    s = pipe.settings(cfg.steps or None, cfg.sampler or None, cfg.cfg if cfg.cfg >= 0 else None,
                      x0_clip=x0_clip_setting(cfg), cfg_interval=parse_cfg_interval(cfg.cfg_interval or None))
    duration = pipe.frames_for(cfg.duration or None) / pipe.frame_rate
    common = provenance(pipe, s, model, duration)
    if cfg.match not in ("auto", "on", "off"):
        raise PrestoError(f"eval match must be auto, on or off, got {cfg.match!r}")
    match = None if cfg.match == "auto" else cfg.match == "on"
    name = system_name(model)
    out_dir = audio_root / name
    files = [out_dir / f"{r['name']}.wav" for r in rows]
    keep_latents = any(m in LATENT_METRICS for m in (cfg.metrics or []))
    dbs: list = [None] * len(rows)  # texture: each clip's latents in dB (cached beside the clip)
    keys = _clip_keys(path, pipe, s, pipe.frames_for(cfg.duration or None), rows, cfg) if clips is not None else None
    todo = []
    for i, (r, f) in enumerate(zip(rows, files)):
        if keep_latents and clips is not None:
            dbs[i] = clips.get_latents(keys[i])
        c = clips.get(keys[i], f) if clips is not None and (dbs[i] is not None or not keep_latents) else None
        if c is None:
            todo.append(i)
            continue
        from presto_cli.io import atomic_write_json

        try:
            atomic_write_json(f.with_suffix(f.suffix + ".json"),
                              clip_record(f, r["prompt"], r["seed"], common, style=r.get("style"), **c))
        except BaseException:
            f.unlink(missing_ok=True)
            raise
    reused = len(rows) - len(todo)
    if reused:
        log(f"{name}: reusing {reused} of {len(rows)} clips made before (clip cache {clips.root}); "
            f"generating {len(todo)}")
    t0 = time.time()
    done = reused
    if progress is not None and reused:
        progress(name, done, len(rows))
    for i in range(0, len(todo), max(1, cfg.batch_size)):
        chunk = todo[i:i + cfg.batch_size]
        conds: list[dict] = []
        lat = pipe.sample_latents([rows[j]["prompt"] for j in chunk], [rows[j]["seed"] for j in chunk], s.steps,
                                  s.sampler, s.cfg, duration, s.rho, match=match, conditions=conds,
                                  token_shift=s.token_shift, x0_clip=s.x0_clip,
                                  cfg_interval=s.cfg_interval)
        if keep_latents:
            from presto_cli.eval.texture import latents_to_db

            for j, db in zip(chunk, latents_to_db(lat, pipe.codec)):
                dbs[j] = db
        audio = pipe.decode(lat)
        for j, a, c in zip(chunk, audio, conds):
            r, f = rows[j], files[j]
            write_clip(f, a.float().cpu(), pipe.sample_rate,
                       clip_record(f, r["prompt"], r["seed"], common, style=r.get("style"), **c))
            if clips is not None:
                clips.put(keys[j], f, c, dbs[j])
        done += len(chunk)
        if progress is not None:
            progress(name, done, len(rows))
        else:
            log(f"{name}: generated {done}/{len(rows)} clips")
    info = {"model": model, "model_path": str(path), "kind": pipe.kind, "steps": s.steps,
            "sampler": s.sampler, "cfg": s.cfg, "nfe": common["nfe"], "sample_rate": pipe.sample_rate,
            "prompt_match": "off" if pipe.bank is None else cfg.match,
            "text_adapter": pipe.adapter_source,
            "precision": pipe.precision, "compile": pipe.compiled, "channels": pipe.audio_channels,
            "embedder_input": "mono downmix" if pipe.audio_channels > 1 else "mono",
            "generation_seconds": round(time.time() - t0, 3), "audio_dir": str(out_dir),
            "patch": int((pipe.meta.get("model") or {}).get("patch", 1)),
            "codec_sha256": _codec_sha(pipe), "clips_generated": len(todo), "clips_reused": reused}
    return System(name, "model", files, [r["prompt"] for r in rows], [r.get("style") for r in rows],
                  [r["seed"] for r in rows], info, dbs if keep_latents else None,
                  labels=[_asked_labels(r) for r in rows])


def _codec_sha(pipe) -> str | None:
    """The sha256 of the model's codec file when the artefact names one (bundled models), else None."""
    return pipe.meta.get("codec_sha256")


# --------------------------------------------------------------------------------------------
# Texture (METHOD.md section 6): on latents, against real latents of the same codec


def _texture_codec(systems: list[System]):
    """The codec that turns real (and folder) audio into latents: the first evaluated model's,
    else the bundled demo codec."""
    from presto_cli.codec import load_codec

    for sy in systems:
        if sy.source == "model":
            from presto_cli.pipeline import load_pipeline

            pipe = load_pipeline(sy.info["model_path"], "cpu")
            return pipe.codec, sy.info.get("codec_sha256"), int(sy.info.get("patch", 4))
    path = assets_dir() / "demo-codec.safetensors"
    if not path.is_file():
        raise PrestoError("texture of audio folders needs a codec, and the bundled demo codec is missing",
                          "evaluate a model (-m) so its codec is used")
    from presto_cli.data.latents import file_sha256

    return load_codec(path, "cpu"), file_sha256(path), 4


def _audio_latents_db(files: list[Path], codec, max_files: int = 0) -> list:
    from presto_cli.audio import load_audio
    from presto_cli.eval.texture import latents_to_db

    import torch

    out = []
    for f in files[: max_files or None]:
        a = load_audio(f, codec.sample_rate, getattr(codec, "audio_channels", 1))[None]
        with torch.no_grad():
            out.append(latents_to_db(codec.encode(a), codec)[0])
    return out


def texture_reference(cfg: EvalConfig, codec, codec_sha: str | None, patch: int,
                      log: Callable[[str], None]) -> dict:
    """The texture figures of real latents: ``cfg.texture_ref`` (a folder of audio, encoded by
    ``codec``, or a .json written by benchmarks/texture_ref.py), else ``--ref`` when it is a
    folder, else the bundled held-out statistics (demo codec only)."""
    import json

    from presto_cli.eval.texture import set_texture

    src = cfg.texture_ref or (cfg.ref if cfg.ref and Path(cfg.ref).is_dir() else "")
    if not src:
        src = str(assets_dir() / TEXTURE_REF)
    p = Path(src)
    if p.is_dir():
        files = audio_files(p)
        if not files:
            raise PrestoError(f"texture reference {p} has no audio files")
        log(f"texture reference: encoding {len(files)} real clips of {p}")
        ref = set_texture(_audio_latents_db(files, codec), patch=patch)
        ref.update(source=str(p), kind="folder")
        return ref
    if not p.is_file():
        raise PrestoError(f"texture reference not found: {p}",
                          "pass --texture-ref DIR (real clips) or a .json written by benchmarks/texture_ref.py")
    try:
        ref = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise PrestoError(f"cannot read texture reference {p}: {type(e).__name__}") from None
    want = ref.get("codec_sha256")
    if want and codec_sha and want != codec_sha:
        raise PrestoError(f"texture reference {p} was measured with another codec ({want[:12]}), the "
                          f"model's is {codec_sha[:12]}", "pass --texture-ref DIR with real clips")
    if int(ref.get("patch", patch)) != patch:  # every figure but the boundary ratio is patch-free
        log(f"texture reference {p} counts token boundaries every {ref.get('patch')} frames, this model's "
            f"patch is {patch}: its boundary ratio is compared with real latents' at {ref.get('patch')}")
    ref.update(source=str(p), kind="stats")
    return ref


def in_run_dir(cfg: EvalConfig) -> EvalConfig:
    """``cfg`` with results.json, report.html and audio/ under ``cfg.run_dir`` where not named."""
    import dataclasses

    if not cfg.run_dir:
        return cfg
    d = Path(cfg.run_dir)
    return dataclasses.replace(cfg, out=cfg.out or str(d / "results.json"),
                               report=cfg.report or str(d / "report.html"),
                               audio_dir=cfg.audio_dir or str(d / "audio"))


def time_model(model: str, cfg: EvalConfig, n: int, rows: list[dict] | None = None, clips=None) -> dict:
    """Estimated seconds to generate ``n`` clips with ``model``: a timed network call (the median of
    three, after a warm-up call) and one timed decode of a batch, times the calls the sampler makes. With
    ``rows`` and a clip cache ``clips``, only the clips not in the cache count (``cached``: how many are)."""
    import math

    import torch

    from presto_cli.pipeline import load_pipeline, resolve_model

    from presto_cli.runtime import set_cpu_threads_for

    set_cpu_threads_for(resolve_model(model), cfg.device)  # the threads generate_system will use
    pipe = load_pipeline(str(resolve_model(model)), cfg.device, cfg.precision or None, cfg.compile)
    s = pipe.settings(cfg.steps or None, cfg.sampler or None, cfg.cfg if cfg.cfg >= 0 else None,
                      x0_clip=x0_clip_setting(cfg), cfg_interval=parse_cfg_interval(cfg.cfg_interval or None))
    nfe = pipe.nfe(s.steps, s.sampler, s.cfg, cfg_interval=s.cfg_interval)
    cached = 0
    if rows is not None and clips is not None:
        keys = _clip_keys(resolve_model(model), pipe, s, pipe.frames_for(cfg.duration or None), rows, cfg)
        cached = sum(clips.has(k) for k in keys)
        n = len(rows) - cached
        if n == 0:
            return {"name": system_name(model), "nfe": nfe, "seconds": 0.0, "cached": cached}
    calls = nfe // 2 if s.cfg != 1.0 else nfe  # a guided call evaluates the batch twice at once
    b = max(1, min(cfg.batch_size, n))
    x = torch.zeros(b, pipe.latent_channels, pipe.frames_for(cfg.duration or None), device=pipe.device)
    fn = pipe.model_fn(pipe.encode_text(["timing"] * b), s)
    with torch.no_grad():
        fn(x, pipe.edm_cfg.sigma_max)
        times = []
        for _ in range(3):  # the median of three calls: one call on a shared machine was off by 0.6x-2.4x
            t0 = time.perf_counter()
            fn(x, pipe.edm_cfg.sigma_max)
            times.append(time.perf_counter() - t0)
        t_call = sorted(times)[1]
        t0 = time.perf_counter()
        if pipe.codec is not None:
            pipe.decode(x)
        t_dec = time.perf_counter() - t0
    return {"name": system_name(model), "nfe": nfe, "seconds": math.ceil(n / b) * (calls * t_call + t_dec),
            "cached": cached}


def estimate_text(cfg: EvalConfig, rows: list[dict], clips=None) -> str:
    """One line: the estimated generation time, in total and per model (clips in the clip cache
    ``clips`` are not generated again)."""
    est = [time_model(m, cfg, len(rows), rows, clips) for m in cfg.models]
    total = sum(e["seconds"] for e in est)
    parts = ", ".join(f"{e['name']} {_dur(e['seconds'])} ({e['nfe']} NFE/clip"
                      + (f", {e['cached']} cached" if e.get("cached") else "") + ")" for e in est)
    return f"estimate: about {_dur(total)} to generate {len(rows)} clips per model: {parts}"


def _dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# README's results table: `make results` = benchmarks/results.py --n 96 --seeds 2: each score is the
# mean over 2 seed sets (the held-out prompts' seeds, then + 1000) of 96 clips per model, generated
# with each model's default sampler settings and scored with presto-clap against the bundled stats.
TABLE_N, TABLE_SEED_SETS = 96, 2


def table_protocol_note(cfg: EvalConfig) -> str | None:
    """For a run on the bundled held-out prompts: how it differs from the protocol of README's
    results table and how to reproduce that protocol (None for other prompts)."""
    a = assets_dir()
    if not cfg.models or not cfg.prompts or Path(cfg.prompts).resolve() != (a / "heldout_prompts.jsonl").resolve():
        return None
    diffs = []
    if cfg.n != TABLE_N:
        diffs.append(f"{cfg.n or 'all'} clips per model, not {TABLE_N}")
    for key, flag, unset in (("steps", "--steps", 0), ("sampler", "--sampler", ""), ("cfg", "--cfg", -1.0),
                             ("duration", "--duration", 0.0)):
        if getattr(cfg, key) not in (unset, None) and not (key == "cfg" and getattr(cfg, key) < 0):
            diffs.append(f"{flag} {getattr(cfg, key)} instead of each model's default")
    if cfg.match != "auto":
        diffs.append(f"prompt matching {cfg.match} instead of auto")
    if cfg.embedder != "presto-clap" or not cfg.ref or \
            Path(cfg.ref).resolve() != (a / "ref_heldout_presto-clap.npz").resolve():
        diffs.append(f"embedder {cfg.embedder} / reference {cfg.ref or 'none'} instead of presto-clap "
                     "against the bundled held-out statistics")
    table = (f"README's results table averages {TABLE_SEED_SETS} seed sets of {TABLE_N} clips per model "
             f"(`make results`, i.e. python benchmarks/results.py --n {TABLE_N} --seeds {TABLE_SEED_SETS})")
    models = " ".join(f"-m {m}" for m in cfg.models)
    if diffs:
        return (f"note: this run's protocol differs from README's results table ({'; '.join(diffs)}), so its "
                f"scores are not comparable to the table's. {table}; its first seed set is "
                f"`presto eval {models} --n {TABLE_N}`.")
    return (f"note: this run is the first of the {TABLE_SEED_SETS} seed sets that README's results table "
            f"averages, so its scores differ from the table's by up to the spread across seed sets. {table}.")


def interrupted_text(cfg: EvalConfig, rows: list[dict], root: Path, keep: bool) -> str:
    """After Ctrl-C while generating: how many clips were kept, where, and the command that scores them."""
    import shlex

    kept = []
    for m in cfg.models:
        d = root / system_name(m)
        k = sum((d / f"{r['name']}.wav").is_file() for r in rows)
        if k:
            kept.append((system_name(m), d, k))
    total = sum(k for _, _, k in kept)
    again = "" if cfg.no_cache else (" The clip cache keeps them too: the same command again reuses them "
                                     "and generates only the rest.")
    if not keep or not kept:
        return f"interrupted while generating: {total} finished clip(s) kept in the clip cache.{again}" \
            if total and not cfg.no_cache else "interrupted while generating: no finished clip kept."
    a = assets_dir()
    args = ["presto", "eval"] + [x for _, d, _ in kept for x in ("--gen", str(d))]
    args += ["--metrics", ",".join(parse_metrics(cfg.metrics)), "--embedder", cfg.embedder]
    if cfg.ref and Path(cfg.ref).resolve() != (a / f"ref_heldout_{cfg.embedder}.npz").resolve():
        args += ["--ref", cfg.ref]
    if cfg.clap_ckpt and Path(cfg.clap_ckpt).resolve() != (a / "demo-clap.safetensors").resolve():
        args += ["--clap-ckpt", cfg.clap_ckpt]
    if cfg.styles and Path(cfg.styles).resolve() != (a / "styles.json").resolve():
        args += ["--styles", cfg.styles]
    each = ", ".join(f"{n} {k}/{len(rows)}" for n, _, k in kept)
    return (f"interrupted while generating: kept {total} finished clip(s) ({each}) under {root}.{again} "
            f"To score only the kept clips: {shlex.join(args)}")


def folder_system(folder: str, cfg: EvalConfig) -> System:
    d = Path(folder)
    files = audio_files(d)
    if cfg.n:
        files = files[: cfg.n]
    labels = file_labels(d, files)
    if cfg.prompts:  # a prompts file with "name" keys labels files by stem
        by_name = {r["name"]: r for r in read_prompts(cfg.prompts) if r.get("name")}
        for f, lab in zip(files, labels):
            r = by_name.get(f.stem)
            if r:
                lab["prompt"] = lab.get("prompt") or r["prompt"]
                lab["style"] = lab.get("style") or r.get("style")
    info = {"folder": str(d)}
    for key in ("model", "steps", "sampler"):
        vals = {lab.get(key) for lab in labels if lab.get(key) is not None}
        if len(vals) == 1:
            info[key] = vals.pop()
    return System(d.name or str(d), "folder", files, [lab.get("prompt") for lab in labels],
                  [lab.get("style") for lab in labels], [lab.get("seed") for lab in labels], info,
                  labels=[lab.get("labels") for lab in labels])


# --------------------------------------------------------------------------------------------
# Scoring


def score_system(sys_: System, emb: np.ndarray, ok: list[int], ref: Reference | None,
                 embedder: Embedder, metrics: list[str], cfg: EvalConfig,
                 style_table: dict[str, str] | None, texture_ref: dict | None = None,
                 texture_codec=None) -> dict:
    scores: dict[str, float | None] = {}
    notes: list[str] = []
    if "fad" in metrics:
        if emb.shape[0] < 2:
            raise PrestoError(f"{sys_.name}: FAD needs at least 2 readable clips, got {emb.shape[0]}")
        mu, s = M.gaussian_stats(emb)
        scores["fad"] = M.fad(mu, s, ref.mu, ref.sigma)
        if emb.shape[0] <= embedder.dim:
            notes.append(f"FAD with N={emb.shape[0]} <= dim={embedder.dim}: covariance is rank-deficient")
    if "mmd" in metrics:
        if ref.embeddings is None:
            raise PrestoError("MMD needs the reference embeddings, and the stats file has none",
                              "use --ref DIR, or stats written by --save-ref-stats")
        r = M.mmd(emb, ref.embeddings, cfg.bandwidth)
        scores["mmd2"] = r["mmd"]  # in the convention of doc["conditions"]["mmd"] (default CMMD's, ×1000)
        scores["mmd_bandwidth"] = r["bandwidth"]
        scores["mmd_scale"] = r["scale"]
    if "prdc" in metrics:
        if ref.embeddings is None:
            raise PrestoError("PRDC needs the reference embeddings, and the stats file has none",
                              "use --ref DIR, or stats written by --save-ref-stats")
        r = M.prdc(ref.embeddings, emb, k=cfg.k)
        scores.update({k: v for k, v in r.items() if k != "k"})
    if "texture" in metrics and texture_ref is not None:
        from presto_cli.eval.texture import set_texture, texture_ratios

        dbs = sys_.latent_db
        how = "the model's latents"
        if dbs is None:  # a folder of audio: re-encoded (the vocoder smoothed part of the speckle)
            dbs = _audio_latents_db(sys_.files, texture_codec)
            how = "latents re-encoded from its audio (a vocoder smooths speckle: prefer -m MODEL)"
        patch = int(sys_.info.get("patch") or texture_ref.get("patch") or 4)
        t = set_texture(dbs, patch=patch)
        scores["texture"] = {**t, **texture_ratios(t, texture_ref)}
        notes.append(f"texture on {how}, against {texture_ref.get('source')} (N={texture_ref.get('n')})")
    if any(m in metrics for m in TEXT_METRICS):
        prompts = [sys_.prompts[i] for i in ok]
        have = [j for j, p in enumerate(prompts) if p]
        if not have:
            raise PrestoError(f"{sys_.name}: no prompts known for its clips, so no CLAP score",
                              "use clips made by `presto generate` (JSON sidecars) or --prompts with names")
        if len(have) < len(prompts):
            notes.append(f"{len(prompts) - len(have)} clips without a prompt left out of CLAP/adherence")
        if "clap" in metrics:
            t = embedder.embed_text([prompts[j] for j in have])
            scores["clap_score"] = M.clap_score(t, emb[have])
        if "adherence" in metrics:
            styles = [sys_.styles[i] for i in ok]
            lab = [j for j in have if styles[j]]
            if not lab:
                raise PrestoError(f"{sys_.name}: no style labels, so no prompt adherence",
                                  "give a .jsonl prompts file with a \"style\" per prompt")
            names = sorted(style_table)
            st = embedder.embed_text([style_table[n] for n in names])
            scores["adherence"] = M.prompt_adherence(emb[lab], st, [names.index(styles[j]) for j in lab])
            scores["adherence_chance"] = 1.0 / len(names)
    return {"scores": scores, "notes": notes}


def signal_scores(sys_: System, ok: list[int], metrics: list[str]) -> tuple[dict, list[dict]]:
    """Tempo/key accuracy of ``sys_``'s clips ``ok`` against what each was asked
    (:mod:`presto_cli.eval.tempo_key`), and one record per clip."""
    from presto_cli.audio import load_audio
    from presto_cli.eval import tempo_key as TK

    labels = sys_.labels or [None] * len(sys_.files)
    asked = [TK.asked_values(labels[i], sys_.prompts[i]) for i in ok]
    return TK.score_clips(lambda j: load_audio(sys_.files[ok[j]], TK.SAMPLE_RATE)[0].numpy(), asked, metrics)


def signal_ceiling(cfg: EvalConfig, metrics: list[str], log: Callable[[str], None]) -> dict:
    """The tempo/key estimators' accuracy on the real clips of ``--ref DIR`` (their labels): the
    ceiling a generated clip's score is read against."""
    if not (cfg.ref and Path(cfg.ref).is_dir()):
        note = "no tempo/key ceiling: --ref is not a folder of real clips (pass --ref DIR with a manifest.jsonl)"
        log(note)
        return {"note": note}
    log(f"estimating {'/'.join(metrics)} of the reference clips {cfg.ref} (the estimators' ceiling)")
    import dataclasses

    sy = folder_system(cfg.ref, dataclasses.replace(cfg, n=0, prompts=""))  # every real clip, its own labels
    sc, _ = signal_scores(sy, list(range(len(sy.files))), metrics)
    return {"name": f"real ({Path(cfg.ref).name or cfg.ref})", "path": str(cfg.ref), "n": len(sy.files),
            "scores": sc}


def evaluate(cfg: EvalConfig, log: Callable[[str], None] = lambda s: None,
             progress: Callable[[str, int, int], None] | None = None, estimate: bool = False) -> dict:
    """Run an evaluation; returns the results document (see module docstring). ``progress(system,
    done, total)`` follows generation; ``estimate`` logs a time estimate before generating."""
    import tempfile

    from presto_cli import __version__

    metrics = parse_metrics(cfg.metrics)
    check_eval_options(cfg)  # option values first (usage errors), --mmd-bandwidth included
    names = [system_name(m) for m in cfg.models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PrestoError(f"two models would be reported under the same name: {', '.join(dup)}",
                          "give each model its own file name or run folder")
    miss = missing_inputs(cfg, metrics)
    if miss:
        raise PrestoError(f"presto eval is missing {len(miss)} input{'s' if len(miss) > 1 else ''}: "
                          + "; ".join(f"({i + 1}) {m}" for i, m in enumerate(miss)))
    need_ref = [m for m in metrics if m in REF_METRICS]
    cfg = in_run_dir(cfg)
    embedder = build_embedder(cfg.embedder, clap_ckpt=cfg.clap_ckpt or None, device=cfg.device)
    if any(m in metrics for m in TEXT_METRICS) and not embedder.has_text:
        raise PrestoError(f"the {embedder.name} embedder has no text tower, so no CLAP score/adherence",
                          "use --embedder clap (LAION-CLAP) or presto-clap")
    if cfg.run_dir:
        log(f"run directory: {cfg.run_dir}")
    cache = None if cfg.no_cache else EmbeddingCache(cfg.cache or None)

    ref = None
    if cfg.ref and (need_ref or cfg.save_ref_stats):
        log(f"embedding the reference {cfg.ref} with {embedder.name}")
        ref = load_reference(cfg.ref, embedder, cache, log)
        if cfg.save_ref_stats:
            save_reference_stats(cfg.save_ref_stats, ref, embedder)
            log(f"wrote reference statistics to {cfg.save_ref_stats}")

    systems: list[System] = []
    tmp = None
    if cfg.models:
        rows = _plan_prompts(cfg, Path(cfg.ref) if cfg.ref and Path(cfg.ref).is_dir() else None)
        if cfg.audio_dir:
            root = Path(cfg.audio_dir)
        elif cfg.report:
            root = Path(cfg.report).with_suffix("").parent / (Path(cfg.report).stem + "_audio")
        elif cfg.out:
            root = Path(cfg.out).with_suffix("").parent / (Path(cfg.out).stem + "_audio")
        else:
            tmp = tempfile.TemporaryDirectory(prefix="presto-eval-")
            root = Path(tmp.name)
        note = table_protocol_note(cfg)
        if note:
            log(note)
        clips = clip_cache_for(cfg)
        if estimate:
            log(estimate_text(cfg, rows, clips))
        try:
            for m in cfg.models:
                systems.append(generate_system(m, rows, cfg, root, log, progress, clips))
        except (KeyboardInterrupt, SystemExit):
            log(interrupted_text(cfg, rows, root, keep=tmp is None))
            raise
    for g in cfg.gen:
        systems.append(folder_system(g, cfg))

    style_table = None
    if "adherence" in metrics:
        needed = sorted({s for sy in systems for s in sy.styles if s})
        style_table = style_texts(cfg.styles, cfg.ref, needed)

    tex_ref = tex_codec = None
    if "texture" in metrics:
        tex_codec, sha, patch = _texture_codec(systems)
        tex_ref = texture_reference(cfg, tex_codec, sha, patch, log)

    signal = [m for m in metrics if m in SIGNAL_METRICS]
    embed = [m for m in metrics if m not in LATENT_METRICS and m not in SIGNAL_METRICS]
    results = []
    for sy in systems:
        if embed:
            log(f"embedding {sy.name} ({len(sy.files)} clips)")
            emb, ok, errors = drop_short(sy.files, *embedder.embed_files(sy.files, cache))
        else:  # texture / tempo / key only: no embeddings
            emb, ok, errors = np.zeros((len(sy.files), 0)), list(range(len(sy.files))), []
        for f, e in errors:
            log(f"skipped {f}: {e}")
        loud = loud_notes(embedder)
        for line in loud:
            log(f"warning: {line}")
        sc = score_system(sy, emb, ok, ref, embedder, metrics, cfg, style_table, tex_ref, tex_codec)
        sc["notes"] += loud
        per_clip: list[dict] = [{} for _ in ok]
        if signal:
            log(f"estimating {'/'.join(signal)} of {sy.name}")
            tk, per_clip = signal_scores(sy, ok, signal)
            sc["scores"].update(tk)
            if not any(tk.get(f"{m}_n") for m in signal):
                sc["notes"].append(f"no asked {'/'.join(signal)} known for any clip (manifest labels, a "
                                   "sidecar, or a BPM/key in the prompt), so no tempo/key accuracy")
        ok_files = [sy.files[i] for i in ok]
        if ref is not None:
            sc["notes"] += reference_notes(ref, embedder.dim, _summary(_durations(ok_files))["mean"])
        multi = _multichannel(ok_files)
        if multi:
            sc["notes"].append(f"{multi} of {len(ok_files)} clips have 2+ channels: the embedder scores "
                               "their mono downmix (the mean of the channels)")
        results.append({
            "name": sy.name, "source": sy.source, **sy.info,
            "n": int(emb.shape[0]), "n_files": len(sy.files),
            "clip_seconds": _summary(_durations(ok_files)),
            "seeds": [s for s in (sy.seeds[i] for i in ok) if s is not None],
            "scores": sc["scores"], "notes": sc["notes"],
            "skipped": [{"file": f, "error": e} for f, e in errors],
            "clips": [{"file": str(sy.files[i]), "prompt": sy.prompts[i], "style": sy.styles[i],
                       "seed": sy.seeds[i], **pc} for i, pc in zip(ok, per_clip)],
        })
    if tmp is not None:
        tmp.cleanup()
        for r in results:
            r["clips_deleted"] = True
    doc = {
        "presto_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metrics": metrics,
        "embedder": embedder.describe(),
        "reference": ref.description if ref is not None else None,
        "texture_reference": ({k: v for k, v in tex_ref.items()} if tex_ref is not None else None),
        "prompts": cfg.prompts or None,
        "conditions": {"k": cfg.k, "mmd": M.mmd_convention(cfg.bandwidth),
                       "steps": cfg.steps or "model default", "sampler": cfg.sampler or "model default",
                       "cfg": cfg.cfg if cfg.cfg >= 0 else "model default",
                       "duration": cfg.duration or "model default", "base_seed": cfg.seed,
                       "n": cfg.n or "all", "device": cfg.device},
        "systems": results,
    }
    if signal:
        doc["tempo_key_ceiling"] = signal_ceiling(cfg, signal, log)
    if cache is not None:
        doc["cache"] = {"dir": str(cache.root), "hits": cache.hits, "misses": cache.misses}
    if cfg.models:
        doc["clip_cache"] = None if clips is None else {"dir": str(clips.root), "hits": clips.hits,
                                                        "misses": clips.misses}
        doc["protocol_note"] = note
    if cfg.out:
        from presto_cli.io import atomic_write_json

        atomic_write_json(cfg.out, doc)
    if cfg.report:
        from presto_cli.eval.report import write_report

        write_report(doc, cfg.report, rows=cfg.report_rows)
    return doc


# texture as ratios to real latents (1 = real); levels as dB differences from real
TEXTURE_COLUMNS = (("frame_change_ratio", "frame×"), ("speckle_ratio", "speckle×"),
                   ("boundary_ratio", "grid"), ("peaks_per_frame_ratio", "peaks×"),
                   ("peak_persistence_ratio", "persist×"), ("level_p50_diff_db", "p50 dB±"))
SCORE_COLUMNS = (("fad", "FAD"), ("mmd2", "MMD² ×1000"), ("precision", "P"), ("recall", "R"),
                 ("density", "D"), ("coverage", "C"), ("clap_score", "CLAP"), ("adherence", "Adh."),
                 ("tempo_acc1", "tempo ±4%"), ("tempo_acc2", "tempo ±4% ×2/½"), ("key_exact", "key"),
                 ("key_fifth", "key 5th"), ("key_relative", "key rel."), ("key_parallel", "key par."))


def score_rows(doc: dict) -> list[dict]:
    """The systems, then the tempo/key ceiling (the real clips) where there is one."""
    ceil = doc.get("tempo_key_ceiling") or {}
    return doc["systems"] + ([ceil] if ceil.get("scores") else [])


def results_table(doc: dict):
    """A rich Table of the scores, with the conditions in its caption."""
    from rich.table import Table

    cols = [(k, t) for k, t in SCORE_COLUMNS if any(k in s["scores"] for s in doc["systems"])]
    tex = [(k, t) for k, t in TEXTURE_COLUMNS if any(k in (s["scores"].get("texture") or {})
                                                     for s in doc["systems"])]
    e = doc["embedder"]
    ref = doc.get("reference") or {}
    cap = (f"embedder {e['name']} ({e['version']})"
           + (f", reference {ref.get('path')} (N={ref.get('n')})" if ref else ""))
    if any("mmd_bandwidth" in s["scores"] for s in doc["systems"]):
        bw = next(s["scores"]["mmd_bandwidth"] for s in doc["systems"] if "mmd_bandwidth" in s["scores"])
        cap += f", MMD: {(doc.get('conditions') or {}).get('mmd', '')} (σ used: {bw:.4g})"
    t = Table(title="presto eval", caption=cap)
    for h in ("system", "N", "clip s", "steps", "sampler"):
        t.add_column(h)
    for _, h in cols + tex:
        t.add_column(h, justify="right")
    for s in score_rows(doc):
        cs = (s.get("clip_seconds") or {}).get("mean")
        row = [s["name"], str(s["n"]), f"{cs:.2f}" if cs else "-", str(s.get("steps", "-")),
               str(s.get("sampler", "-"))]
        for k, _ in cols:
            v = s["scores"].get(k)
            row.append("-" if v is None else f"{v:.4g}")
        for k, _ in tex:
            v = (s["scores"].get("texture") or {}).get(k)
            row.append("-" if v is None else f"{v:.3g}")
        t.add_row(*row)
    return t
