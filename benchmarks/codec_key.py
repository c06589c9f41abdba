"""How much key and tempo the codec loses, and how much of it the mel representation itself loses
(issue 30, item 4; measurement only).

For each clip of a synthetic corpus (manifest labels = the asked tempo/key), the tempo and key
estimators of ``presto eval --metrics tempo,key`` (presto_cli/eval/tempo_key.py) run on:

* ``real``: the clip itself (the estimators' ceiling);
* ``codec``: the clip through the codec's encode/decode (default: the bundled demo codec);
* ``gl-mel<N>``: Griffin-Lim (fast GL, momentum 0.99, 32 iterations) from a 128-bin HTK mel
  magnitude at hop 256, ``n_fft`` N, the filterbank's non-negative pseudo-inverse giving the linear
  magnitude (as the codec's vocoder prior does); ``gl-mel1024`` is the codec's own analysis;
* ``gl-lin1024``: Griffin-Lim from the full 1024-point linear magnitude (no mel): what the STFT
  window alone loses; ``-fmin30``: filters from 30 Hz; ``-256bins``/``-192bins``: more mel bins;
* ``gl-bass<N>-<note>+mel<M>``: the bass-band representation of the mel codec (``bass_n_fft``):
  one filter per semitone from E1 (41 Hz) to ``note`` on an N-point STFT, then M HTK-mel filters
  from there at n_fft 1024; each part is Griffin-Lim'd at its own window and the two are summed.

Reported per version: key exact and MIREX score against the labels, key agreement with the real
clip's estimate (the loss itself, estimator errors aside), tempo within 4%, the tonic offset
histogram of key misses, and the median correlation of the bass chroma (40-262 Hz, C4) with the
real clip's.

    python benchmarks/codec_key.py --data /work/scratch/synth --n 100 --out codec_key.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from presto_cli.audio import load_audio  # noqa: E402
from presto_cli.codec.base import load_codec  # noqa: E402
from presto_cli.codec.losses import mel_filterbank  # noqa: E402
from presto_cli.codec.vae import hann_window, istft_same, stft_same  # noqa: E402
from presto_cli.dsp import midi_hz, note_filterbank  # noqa: E402
from presto_cli.eval import tempo_key as TK  # noqa: E402

SR, HOP, N_MELS = 16000, 256, 128
GL_ITERS = 32


def griffin_lim(mag: torch.Tensor, n_fft: int, iters: int = GL_ITERS, momentum: float = 0.99,
                seed: int = 0) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013) of a magnitude ``[B, F, N]`` with the same-framed
    STFT of the codec; audio ``[B, N * HOP]``."""
    w = hann_window(n_fft, mag.device)
    g = torch.Generator().manual_seed(seed)
    angles = torch.polar(torch.ones_like(mag), 2 * torch.pi * torch.rand(mag.shape, generator=g))
    prev = torch.zeros_like(angles)
    for _ in range(iters):
        x = istft_same(mag * angles, n_fft, HOP, w)
        rebuilt = stft_same(x, n_fft, HOP, w)
        angles = rebuilt - (momentum / (1 + momentum)) * prev
        prev = rebuilt
        angles = angles / angles.abs().clamp_min(1e-16)
    return istft_same(mag * angles, n_fft, HOP, w)


def gl_from_filters(x: torch.Tensor, n_fft: int, fb: torch.Tensor | None) -> torch.Tensor:
    """Griffin-Lim of the ``n_fft``-point magnitude seen through filterbank ``fb`` (its non-negative
    pseudo-inverse, as the codec's vocoder prior), or of the full magnitude when ``fb`` is None."""
    mag = stft_same(x, n_fft, HOP, hann_window(n_fft)).abs()
    if fb is not None:
        mag = torch.linalg.pinv(fb).clamp_min(0.0) @ (fb @ mag)
    return griffin_lim(mag, n_fft)


def gl_from_mel(x: torch.Tensor, n_fft: int, f_min: float, linear: bool = False,
                n_mels: int = N_MELS) -> torch.Tensor:
    return gl_from_filters(x, n_fft, None if linear else mel_filterbank(SR, n_fft, n_mels, f_min, None))


BASS_LOW = 28  # E1
SPLITS = {"C4": 60, "C5": 72, "C6": 84}  # the bass band's top note


def gl_split(x: torch.Tensor, bass_fft: int, top: int, n_mels: int) -> torch.Tensor:
    """Griffin-Lim of the bass band (``bass_fft`` points) plus that of the mel filters above it."""
    bass = torch.from_numpy(note_filterbank(SR, bass_fft, BASS_LOW, top)).float()
    return (gl_from_filters(x, bass_fft, bass)
            + gl_from_filters(x, 1024, mel_filterbank(SR, 1024, n_mels, float(midi_hz(top - 1)), None)))


def bass_chroma(x: np.ndarray) -> np.ndarray:
    frames = TK._frames(x, TK.KEY_N_FFT, TK.KEY_HOP)
    p = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    return (p @ TK.pitch_class_weights(TK.KEY_N_FFT, 40.0, 262.0)).mean(axis=0)


VERSIONS = ("real", "codec", "gl-lin1024", "gl-mel1024", "gl-mel2048", "gl-mel4096", "gl-mel2048-fmin30",
            "gl-mel4096-fmin30", "gl-mel4096-fmin30-256bins", "gl-mel1024-192bins", "gl-bass4096-C4+mel95",
            "gl-bass4096-C5+mel83", "gl-bass2048-C5+mel83", "gl-bass4096-C6+mel72")


def rebuild(name: str, x: torch.Tensor, codec) -> np.ndarray:
    """Clip ``x [1, T]`` as version ``name`` (see the module docstring)."""
    if name == "real":
        return x[0].numpy()
    if name == "codec":
        return codec.decode(codec.encode(x[None]))[0, 0].numpy()
    if name == "gl-lin1024":
        return gl_from_mel(x, 1024, 0.0, linear=True)[0].numpy()
    parts = name.split("-")  # gl, mel<N>[, fmin30][, <M>bins] | gl, bass<N>, <note>+mel<M>
    if parts[1].startswith("bass"):
        top, mels = parts[2].split("+mel")
        return gl_split(x, int(parts[1][4:]), SPLITS[top], int(mels))[0].numpy()
    n_fft = int(parts[1][3:])
    bins = [int(p[:-4]) for p in parts[2:] if p.endswith("bins")]
    return gl_from_mel(x, n_fft, 30.0 if "fmin30" in parts else 0.0,
                       n_mels=bins[0] if bins else N_MELS)[0].numpy()


def summarise(rows: list[dict], recs: list[dict], versions=VERSIONS) -> dict:
    """Per version: the scores of :func:`TK.score_clips` and the measures of the module docstring."""
    n = len(recs)
    asked = [TK.asked_values(r["labels"], r.get("caption")) for r in rows[:n]]
    beat = [i for i, r in enumerate(rows[:n]) if r["labels"]["style"] not in ("ambient", "string_quartet")]
    out = {}
    for name in versions:
        keys = [TK.parse_key(rec[name]["key"]) for rec in recs]
        tempos = [rec[name]["tempo"] for rec in recs]
        cats = Counter(TK.key_relation(k, a["key"]) for k, a in zip(keys, asked))
        t1 = [TK.tempo_match(t, a["tempo"]) for t, a in zip(tempos, asked)]
        offs = Counter((k[0] - a["key"][0]) % 12 for k, a in zip(keys, asked) if k and k != a["key"])
        out[name] = {
            "n": n, "key_exact": cats["exact"] / n,
            "key_mirex": sum(TK.MIREX_WEIGHTS[c] * v for c, v in cats.items()) / n,
            **{f"key_{c}": cats[c] / n for c in TK.KEY_CATEGORIES if c != "exact"},
            "key_same_as_real": float(np.mean([rec[name]["key"] == rec["real"]["key"] for rec in recs])),
            "tempo_acc1": float(np.mean([m[0] for m in t1])), "tempo_acc2": float(np.mean([m[1] for m in t1])),
            "tempo_acc1_beat_styles": float(np.mean([t1[i][0] for i in beat])) if beat else None,
            "bass_chroma_corr_median": float(np.median([rec[name]["bass_corr"] for rec in recs])),
            "tonic_offsets_of_misses": dict(sorted(offs.items())),
        }
    return out


def print_table(summary: dict) -> None:
    print(f"{'version':<26} {'key exact':>9} {'MIREX':>6} {'=real key':>9} {'tempo 4%':>9} {'beat 4%':>8} "
          f"{'bass corr':>9}  commonest tonic offsets of key misses")
    for name, v in summary.items():
        top = dict(Counter(v["tonic_offsets_of_misses"]).most_common(3))
        print(f"{name:<26} {v['key_exact']:>9.2f} {v['key_mirex']:>6.3f} {v['key_same_as_real']:>9.2f} "
              f"{v['tempo_acc1']:>9.2f} {v['tempo_acc1_beat_styles']:>8.2f} {v['bass_chroma_corr_median']:>9.2f}  {top}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="synth folder (manifest.jsonl with labels)")
    ap.add_argument("--codec", default=str(ROOT / "presto_cli" / "assets" / "demo-codec.safetensors"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--start", type=int, default=0, help="first clip (to split a run over processes)")
    ap.add_argument("--versions", default=",".join(VERSIONS), help="comma list (real is always measured)")
    ap.add_argument("--out", type=Path, required=True, help="JSON: per-clip estimates (written after each "
                    "clip; a rerun continues it) and the summary")
    a = ap.parse_args()
    rows = [json.loads(line) for line in (a.data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[a.start: a.n]
    versions = ["real"] + [v for v in a.versions.split(",") if v in VERSIONS and v != "real"]
    if len(versions) != len(set(a.versions.split(",")) | {"real"}):
        raise SystemExit(f"--versions: choose from {','.join(VERSIONS)}")
    recs = json.loads(a.out.read_text())["clips"] if a.out.is_file() else []
    codec = load_codec(a.codec)
    for i in range(len(recs), len(rows)):
        x = load_audio(a.data / rows[i]["path"], SR)
        x = x[:, : x.shape[-1] // HOP * HOP]
        rec = {"path": rows[i]["path"]}
        real_bass = bass_chroma(x[0].numpy())
        with torch.no_grad():
            for name in versions:
                y = rebuild(name, x, codec)
                rec[name] = {"key": TK.key_name(TK.estimate_key(y)), "tempo": TK.estimate_tempo(y),
                             "bass_corr": float(np.corrcoef(bass_chroma(y), real_bass)[0, 1])}
        recs.append(rec)
        a.out.write_text(json.dumps({"data": str(a.data), "codec": a.codec, "clips": recs,
                                     "summary": summarise(rows, recs, versions)}, indent=1))
        print(f"{i + 1}/{len(rows)}", end="\r", file=sys.stderr, flush=True)
    print_table(summarise(rows, recs, versions))


if __name__ == "__main__":
    main()
