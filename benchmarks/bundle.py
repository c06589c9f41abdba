"""Bundle the demo chain's inference artefacts (fp16) and the held-out evaluation set with presto.

    python benchmarks/bundle.py --runs runs/demo --data data/synth

Writes presto_cli/assets/: demo-{codec,teacher,s,ase,l,ls,clap}.safetensors (fp16 EMA weights with their
metadata), demo-captions.safetensors (the training captions every bundled model matches prompts
against, stored once), demo-latent-range.safetensors (the training latents' per-channel range that
sampling clips x0 predictions to, stored once), heldout_prompts.jsonl (the held-out split's captions: prompts training never saw, one
seed each), styles.json, and the reference statistics of the held-out audio for the presto-clap,
mel and music-feature embedders (ref_heldout_<embedder>.npz). The held-out audio itself is copied to
<data>-heldout/ (not bundled).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from presto_cli.io import atomic_write_text, load_artefact, save_artefact  # noqa: E402
from presto_cli.pipeline import ASSETS  # noqa: E402

RUNS = {"autoencoder": "demo-codec", "teacher": "demo-teacher", "presto-s": "demo-s", "ase": "demo-ase", "presto-l": "demo-l",
        "presto-ls": "demo-ls", "clap": "demo-clap"}
# later phases of the same model replace the run above them (the last one present wins):
# recipes/demo/teacher-shift{1,2,3}.yaml, teacher-head2d.yaml (run twice: teacher-head2d, then
# teacher-head2d2 from its export), teacher-tempo-key.yaml (teacher-tk), teacher-tempo-phase.yaml
# (teacher-tp); presto-s-regress.yaml, presto-s-dmd.yaml, presto-s-bsim.yaml (run twice: presto-s-bsim,
# then presto-s-bsim2), presto-s-head.yaml, presto-s-tp.yaml; presto-ls-regress.yaml, presto-ls-dmd.yaml,
# presto-ls-head.yaml, presto-ls-tp.yaml, presto-ls-bsim.yaml (run twice: presto-ls-bsim, then
# presto-ls-bsim2); then the chain on the bass-band codec (autoencoder-bass.yaml): teacher-bass.yaml,
# teacher-bass2.yaml, presto-s-bass.yaml, presto-s-bass-reg.yaml, presto-s-bass2.yaml, presto-s-bass3.yaml,
# presto-ls-bass-reg.yaml, presto-ls-bass.yaml, presto-ls-bass2.yaml, and ASE and Presto-L distilled from
# teacher-bass2 (ase-bass, presto-l-bass)
LATER = {"autoencoder": ["autoencoder-bass"],
         "teacher": ["teacher-shift1", "teacher-shift2", "teacher-shift3", "teacher-head2d", "teacher-head2d2",
                     "teacher-tk", "teacher-tp", "teacher-bass", "teacher-bass2"],
         "presto-s": ["presto-s-regress", "presto-s-dmd", "presto-s-bsim", "presto-s-bsim2", "presto-s-head",
                      "presto-s-tp", "presto-s-bass", "presto-s-bass-reg", "presto-s-bass2", "presto-s-bass3"],
         "ase": ["ase-bass"],
         "presto-l": ["presto-l-bass"],
         "presto-ls": ["presto-ls-regress", "presto-ls-dmd", "presto-ls-head", "presto-ls-tp", "presto-ls-bsim",
                       "presto-ls-bsim2", "presto-ls-bass-reg", "presto-ls-bass", "presto-ls-bass2"]}


def bundle_models(runs: Path, only: list[str] | None = None) -> list[str]:
    import torch

    ASSETS.mkdir(parents=True, exist_ok=True)
    done = []
    for run, name in RUNS.items():
        if only and run not in only:
            continue
        src = runs / run / "model.safetensors"
        for later in LATER.get(run, []):
            if (runs / later / "model.safetensors").is_file():
                run, src = later, runs / later / "model.safetensors"
        if not src.is_file():
            print(f"skip {name}: {src} missing")
            continue
        tensors, meta = load_artefact(src)
        meta = dict(meta)
        meta["bundled_as"] = name
        meta["source_run"] = str(runs / run)
        # keep integer/boolean buffers as they are; floating weights go to fp16
        save_artefact(ASSETS / f"{name}.safetensors", tensors, meta, dtype=torch.float16)
        size = (ASSETS / f"{name}.safetensors").stat().st_size / 2**20
        print(f"bundled {name}: {size:.1f} MiB")
        done.append(name)
    share_codec(ASSETS)
    return done


def save_unless_unchanged(path: Path, save) -> bool:
    """``save(tmp)`` writes a new version of ``path``; it replaces ``path`` only when its tensors or
    metadata (the ``created`` stamp aside) differ, so rebundling leaves unchanged shared files as
    they were in git. Returns whether ``path`` was rewritten."""
    import os

    import torch

    tmp = path.with_name(path.stem + ".new" + path.suffix)
    save(tmp)
    if path.is_file():
        (t_old, m_old), (t_new, m_new) = load_artefact(path), load_artefact(tmp)
        strip = lambda m: {k: v for k, v in m.items() if k != "created"}  # noqa: E731
        if (strip(m_old) == strip(m_new) and t_old.keys() == t_new.keys()
                and all(t_old[k].dtype == t_new[k].dtype and torch.equal(t_old[k], t_new[k]) for k in t_old)):
            tmp.unlink()
            print(f"{path.name}: unchanged, not rewritten")
            return False
    os.replace(tmp, path)
    return True


def _store_once(assets: Path, name: str, prefix: str, meta_key: str, what: str) -> None:
    """Rewrite every bundled model (but ``name``) without its ``prefix`` tensors and ``meta_key``
    metadata, now kept once in ``name``; then share the codec again (load_artefact put it back)."""
    for f in sorted(assets.glob("demo-*.safetensors")):
        if f.name == name:
            continue
        tensors, meta = load_artefact(f)
        if meta_key in meta or any(k.startswith(prefix) for k in tensors):
            meta = {k: v for k, v in meta.items() if k not in (meta_key, "codec_file", "codec_sha256")}
            save_artefact(f, {k: v for k, v in tensors.items() if not k.startswith(prefix)}, meta)
            print(f"{f.name}: {what} stored once, in {name}")
    share_codec(assets)


def share_captions(assets: Path, data: Path, name: str = "demo-captions.safetensors", keep: bool = False) -> Path:
    """Store the caption bank once (presto_cli/text/caption_bank.py): the bundled teacher's, else one
    built from ``data``'s training split (``keep``: the bank already in ``name``, when there is one);
    the bundled models are rewritten without their copies (the pipeline reads ``name`` for every
    bundled model)."""
    from presto_cli.text.caption_bank import PREFIX, CaptionBank
    from presto_cli.text.encoders import build_text_encoder

    bank, source = None, str(data)
    teacher = assets / "demo-teacher.safetensors"
    if keep and (assets / name).is_file():  # the bank already bundled stays, with its source
        tensors, meta = load_artefact(assets / name)
        bank, source = CaptionBank.from_artefact(tensors, meta), meta.get("source", source)
    if bank is None and teacher.is_file():
        tensors, meta = load_artefact(teacher)
        bank = CaptionBank.from_artefact(tensors, meta)
    if bank is None:
        rows = [json.loads(l) for l in (data / "manifest.jsonl").read_text().splitlines() if l.strip()]
        caps = [r["caption"] for r in rows if r.get("split", "train") == "train"]
        bank = CaptionBank.build(caps, build_text_encoder("minilm"))
    save_unless_unchanged(assets / name, lambda p: bank.save(p, source=source))
    _store_once(assets, name, PREFIX, "caption_bank", "caption bank")
    print(f"caption bank: {len(bank)} captions in {assets / name} ({(assets / name).stat().st_size / 2**20:.1f} MiB)")
    return assets / name


def share_latent_range(assets: Path, data: Path, name: str = "demo-latent-range.safetensors") -> Path:
    """Store the training latents' range once (presto_cli/diffusion/latent_range.py): the bundled
    teacher's, else measured on ``data``'s training split under the bundled codec; the bundled
    models are rewritten without their copies (the pipeline reads ``name`` for every bundled model)."""
    from presto_cli.diffusion.latent_range import PREFIX, LatentRange

    rng = None
    teacher = assets / "demo-teacher.safetensors"
    if teacher.is_file():
        tensors, meta = load_artefact(teacher)
        rng = LatentRange.from_artefact(tensors, meta)
    if rng is None:
        from presto_cli.data.latents import LatentDataset, ensure_latent_cache

        cache = ensure_latent_cache(assets / "demo-codec.safetensors",
                                    {"path": str(data), "sample_rate": 16000, "clip_seconds": 4.0}, "cpu")
        ds = LatentDataset(cache, "train")
        rng = LatentRange.measure((ds[i]["latents"] for i in range(len(ds))), source=str(data))
    save_unless_unchanged(assets / name, rng.save)
    _store_once(assets, name, PREFIX, "latent_range", "latent range")
    print(f"latent range: {rng.channels} channels from {rng.n} training clips in {assets / name}")
    return assets / name


def share_codec(assets: Path, codec_name: str = "demo-codec.safetensors") -> list[str]:
    """Store the codec once: each bundled generator whose embedded codec equals ``codec_name``'s
    tensors is rewritten without them, pointing at that file (``io.load_artefact`` puts them back
    on load). Returns the files rewritten."""
    import hashlib

    import torch

    codec_path = assets / codec_name
    if not codec_path.is_file():
        return []
    codec, _ = load_artefact(codec_path)
    digest = hashlib.sha256(codec_path.read_bytes()).hexdigest()
    done = []
    for f in sorted(assets.glob("demo-*.safetensors")):
        if f == codec_path:
            continue
        tensors, meta = load_artefact(f)  # a shared codec comes back here; compare it all the same
        emb = {k[len("codec."):]: v for k, v in tensors.items() if k.startswith("codec.")}
        if set(emb) != set(codec) or not all(torch.equal(emb[k].cpu(), codec[k].cpu()) for k in codec):
            continue
        meta = dict(meta, codec_file=codec_name, codec_sha256=digest)
        save_artefact(f, {k: v for k, v in tensors.items() if not k.startswith("codec.")}, meta)
        done.append(f.name)
        print(f"{f.name}: codec stored once, in {codec_name} ({f.stat().st_size / 2**20:.1f} MiB)")
    return done


def heldout_set(data: Path) -> Path:
    rows = [json.loads(l) for l in (data / "manifest.jsonl").read_text().splitlines() if l.strip()]
    held = [r for r in rows if r.get("split") == "heldout"]
    if not held:
        raise SystemExit(f"{data} has no held-out split (presto data synth --split-heldout 0.1)")
    out = data.parent / (data.name + "-heldout")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for r in held:
        shutil.copy2(data / r["path"], out / r["path"])
    atomic_write_text(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in held))
    shutil.copy2(data / "styles.json", out / "styles.json")
    prompts = [{"prompt": r["caption"], "seed": i, "name": f"heldout_{i:04d}", "style": r["labels"]["style"]}
               for i, r in enumerate(held)]
    atomic_write_text(ASSETS / "heldout_prompts.jsonl", "".join(json.dumps(p) + "\n" for p in prompts))
    shutil.copy2(data / "styles.json", ASSETS / "styles.json")
    print(f"held-out set: {len(held)} clips in {out}; prompts in {ASSETS / 'heldout_prompts.jsonl'}")
    return out


def reference_stats(heldout: Path) -> None:
    from presto_cli.eval.embedders import EmbeddingCache, build_embedder
    from presto_cli.eval.evaluate import load_reference, save_reference_stats

    for emb_name, ckpt in (("presto-clap", ASSETS / "demo-clap.safetensors"), ("mel", None), ("music", None)):
        if ckpt is not None and not ckpt.is_file():
            print(f"skip reference statistics for {emb_name}: {ckpt} missing")
            continue
        emb = build_embedder(emb_name, clap_ckpt=str(ckpt) if ckpt else None, device="cpu")
        ref = load_reference(str(heldout), emb, EmbeddingCache(), print)
        save_reference_stats(str(ASSETS / f"ref_heldout_{emb_name}.npz"), ref, emb)
        print(f"reference statistics: {ASSETS / f'ref_heldout_{emb_name}.npz'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/demo"))
    ap.add_argument("--data", type=Path, default=Path("data/synth"))
    ap.add_argument("--default", default="", help="default model name (written to assets/default.txt)")
    ap.add_argument("--skip-models", action="store_true")
    ap.add_argument("--only", nargs="+", choices=sorted(RUNS), help="bundle only these models (e.g. --only presto-s)")
    ap.add_argument("--keep-captions", action="store_true",
                    help="keep the bundled caption bank (models fine-tuned on another corpus match prompts "
                         "against the captions the chain was trained on)")
    ap.add_argument("--models-only", action="store_true",
                    help="bundle models only: keep the held-out prompts and reference statistics (they come "
                         "from the corpus the bundled set was made from, which --data need not be)")
    a = ap.parse_args()
    if not a.skip_models:
        bundle_models(a.runs, a.only)
    share_captions(ASSETS, a.data, keep=a.keep_captions)
    share_latent_range(ASSETS, a.data)
    if not a.models_only:
        held = heldout_set(a.data)
        reference_stats(held)
    if a.default:
        atomic_write_text(ASSETS / "default.txt", a.default + "\n")


if __name__ == "__main__":
    main()
