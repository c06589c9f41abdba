"""Where do layer-dropped models lose quality? Per-noise-bin errors on held-out latents (not a test).

For each layer-dropping model (ASE, Presto-L, its ablations) and for the *untuned* teacher run with
the same schedule (first-k = ASE's early exit, keep-last = Presto-L's block choice), this measures on
held-out latents (fixed noise, the captions as condition, no CFG), in each of the schedule's noise
bins:

- ``dn``: the EDM-weighted denoising error  lambda(sigma) |D_drop(x_sigma) - x0|^2  (what ASE trains);
- ``st``: the EDM-weighted distance to the full-depth teacher  lambda(sigma) |D_drop - D_full|^2
  (what Presto-L's self-teacher term trains);

with the full-depth teacher's own ``dn`` as the floor. Far less noisy than FAD on a few hundred
clips, so it separates training choices that FAD cannot.

    python benchmarks/layer_diag.py --teacher runs/demo/teacher/model.safetensors \
        --data data/synth runs/demo/ase/model.safetensors runs/demo/presto-l/model.safetensors ...
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
from pathlib import Path

import torch

from presto_cli.data.latents import LatentDataset, file_sha256, latent_cache_dir
from presto_cli.diffusion.edm import denoise_fn, edm_weight
from presto_cli.diffusion.artefact import load_teacher
from presto_cli.diffusion.layer_schedule import LayerSchedule
from presto_cli.diffusion.layered import LayeredDenoiser
from presto_cli.text.cache import TextCache
from presto_cli.text.encoders import build_text_encoder


def bin_sigmas(schedule: LayerSchedule, sigma_min: float, sigma_max: float, per_bin: int,
               gen: torch.Generator) -> list[torch.Tensor]:
    """``per_bin`` log-uniform noise levels inside each bin (low noise first)."""
    edges = [math.log(sigma_min)] + list(schedule.bins) + [math.log(sigma_max)]
    out = []
    for lo, hi in zip(edges, edges[1:]):
        u = torch.rand(per_bin, generator=gen, dtype=torch.float64)
        out.append((lo + u * (hi - lo)).exp().float())
    return out


def cache_setting(teacher: Path, data: Path, n: int, per_bin: int, seed: int, cfg: float,
                  clip_seconds: float) -> tuple[str, str]:
    """What every model's cached scores depend on besides the model: the teacher's bytes, the data
    (folder, manifest bytes) and the measurement's settings."""
    return (file_sha256(teacher), json.dumps([str(Path(data).resolve()), n, per_bin, seed, cfg, clip_seconds,
                                              file_sha256(Path(data) / "manifest.jsonl")]))


def result_key(model: Path, setting: tuple[str, ...]) -> str:
    """The cache key of one model's scores: its bytes and ``setting`` (:func:`cache_setting`)."""
    h = hashlib.sha256()
    for part in (file_sha256(model), *setting):
        h.update(part.encode())
    return h.hexdigest()[:32]


def read_cached(folder: Path, key: str) -> dict | None:
    f = Path(folder) / f"{key}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def write_cached(folder: Path, key: str, result: dict) -> None:
    """Atomically: a killed run leaves the entry whole or absent, never half-written."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    tmp = Path(folder) / f"{key}.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(Path(folder) / f"{key}.json")


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", type=Path, help="layer-dropping artefacts (ase / presto-l)")
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("data/synth"))
    ap.add_argument("--clip-seconds", type=float, default=4.0)
    ap.add_argument("--n", type=int, default=240, help="held-out latents")
    ap.add_argument("--per-bin", type=int, default=4, help="noise levels per latent and bin")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=1.0,
                    help="guidance weight: > 1 compares guided outputs (as sampled), D_null + w (D_c - D_null)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder of per-model results, keyed by the model's, the teacher's and the data's "
                         "digests and the settings: a model scored before is not scored again")
    a = ap.parse_args()
    torch.set_grad_enabled(False)

    teacher, tmeta, _ = load_teacher(a.teacher, "cpu")
    codec = tmeta.get("codec_source") or ""
    cache, _, _ = latent_cache_dir(codec, {"path": str(a.data), "clip_seconds": a.clip_seconds})
    ds = LatentDataset(cache, split="heldout")
    n = min(a.n, len(ds))
    items = [ds[i] for i in range(n)]
    x0 = torch.stack([it["latents"] for it in items]).float()
    text = TextCache(build_text_encoder(tmeta.get("text", "minilm"), device="cpu"))
    cond = text([it["caption"] for it in items], "cpu")

    models = {}
    for p in a.models:
        den, meta, _ = load_teacher(p, "cpu")
        name = p.parent.name if p.name == "model.safetensors" else p.stem
        if re.fullmatch(r"seed\d+", name):  # runs/demo/grid/ase/seed1 -> ase/seed1
            name = f"{p.parent.parent.name}/{name}"
        if name in models:  # runs/demo/ase vs runs/demo/long/ase
            name = f"{p.parent.parent.name}/{name}"
        if name in models:
            raise SystemExit(f"two models are both named {name}: {p}")
        models[name] = LayeredDenoiser(den, LayerSchedule.from_dict(meta["schedule"]))
    ref_sched = next(iter(models.values())).schedule
    for mode in ("first-k", "keep-last"):  # the untuned teacher under each block choice
        models[f"untuned {mode}"] = LayeredDenoiser(teacher, LayerSchedule(ref_sched.bins, ref_sched.depths,
                                                                           ref_sched.depth_total, mode, 1))

    setting = (cache_setting(a.teacher, a.data, n, a.per_bin, a.seed, a.cfg, a.clip_seconds)
               if a.cache else ())
    cached: dict[str, dict] = {}
    keys: dict[str, str] = {}
    if a.cache:
        for p, name in zip(a.models, list(models)[:len(a.models)]):
            keys[name] = result_key(p, setting)
            hit = read_cached(a.cache, keys[name])
            if hit is not None:
                cached[name] = hit
        for name in cached:  # scored before: not run again
            del models[name]

    def run(den, x, sig, c):
        return denoise_fn(den, c, a.cfg)(x, sig)

    gen = torch.Generator().manual_seed(a.seed)
    cfg = teacher.cfg
    sig_bins = bin_sigmas(ref_sched, cfg.sigma_min, cfg.sigma_max, a.per_bin, gen)
    noise = torch.randn((a.per_bin, *x0.shape), generator=gen)
    res: dict[str, dict] = {"teacher (full depth)": {"dn": [], "st": []}, **{k: {"dn": [], "st": []} for k in models}}
    order = list(models)
    depths = []
    for b, sigmas in enumerate(sig_bins):
        acc = {k: [0.0, 0.0] for k in res}
        for j, s in enumerate(sigmas.tolist()):
            sig = torch.full((n,), s)
            xs = x0 + s * noise[j]
            lam = edm_weight(sig, cfg.sigma_data)
            full = torch.cat([run(teacher, xs[i:i + 60], sig[i:i + 60], cond.index(slice(i, i + 60)))
                              for i in range(0, n, 60)])
            err = lambda d: float((lam * (d - x0).pow(2).flatten(1).mean(1)).mean())  # noqa: E731
            acc["teacher (full depth)"][0] += err(full)
            for name, den in models.items():
                d = torch.cat([run(den, xs[i:i + 60], sig[i:i + 60], cond.index(slice(i, i + 60)))
                               for i in range(0, n, 60)])
                acc[name][0] += err(d)
                acc[name][1] += float((lam * (d - full).pow(2).flatten(1).mean(1)).mean())
        depths.append(ref_sched.depth(float(sigmas.mean())))
        for k, (dn, st) in acc.items():
            res[k]["dn"].append(dn / len(sigmas))
            res[k]["st"].append(st / len(sigmas))
    if a.cache:
        for name, key in keys.items():
            if name in res and name not in cached:
                write_cached(a.cache, key, res[name])
    # the command line's order, the untuned models last
    res = {"teacher (full depth)": res["teacher (full depth)"],
           **{k: (cached[k] if k in cached else res[k]) for k in list(keys or ()) + [k for k in order if k not in keys]}}
    doc = {"n": n, "per_bin": a.per_bin, "cfg": a.cfg, "depths_low_to_high_noise": depths,
           "bins_ln_sigma": ref_sched.bins, "results": res}
    w = max(len(k) for k in res)
    print(f"held-out latents: {n}, {a.per_bin} noise levels per bin, CFG {a.cfg:g}; depths per bin (low -> high noise): {depths}")
    for key, title in (("dn", "denoising error lambda|D - x0|^2"), ("st", "distance to full teacher lambda|D - D_full|^2")):
        print(f"\n{title}")
        print(" " * w + "  " + "  ".join(f"bin{b}(k={d})".rjust(10) for b, d in enumerate(depths)) + "      mean")
        for k, v in res.items():
            if key == "st" and k.startswith("teacher"):
                continue
            print(k.ljust(w) + "  " + "  ".join(f"{x:10.4f}" for x in v[key]) + f"  {sum(v[key]) / len(v[key]):8.4f}")
    if a.out:
        a.out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
