"""How much key and tempo the codec loses, and how much of it the mel representation itself loses
(issue 30, item 4; measurement only).

For each clip of a synthetic corpus (manifest labels = the asked tempo/key), the tempo and key
estimators of ``presto eval --metrics tempo,key`` (presto_cli/eval/tempo_key.py) run on:

* ``real``: the clip itself (the estimators' ceiling);
* ``codec``: the clip through the codec's encode/decode (default: the bundled demo codec);
* ``gl-mel<N>``: Griffin-Lim (fast GL, momentum 0.99, 64 iterations) from a 128-bin HTK mel
  magnitude at hop 256, ``n_fft`` N, the filterbank's non-negative pseudo-inverse giving the linear
  magnitude (as the codec's vocoder prior does); ``gl-mel1024`` is the codec's own analysis;
* ``gl-lin1024``: Griffin-Lim from the full 1024-point linear magnitude (no mel): what the STFT
  window alone loses; ``-fmin30``: filters from 30 Hz; ``-256bins``: 256 mel bins.

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
from presto_cli.eval import tempo_key as TK  # noqa: E402

SR, HOP, N_MELS = 16000, 256, 128


def griffin_lim(mag: torch.Tensor, n_fft: int, iters: int = 64, momentum: float = 0.99,
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


def gl_from_mel(x: torch.Tensor, n_fft: int, f_min: float, linear: bool = False,
                n_mels: int = N_MELS) -> torch.Tensor:
    w = hann_window(n_fft)
    mag = stft_same(x, n_fft, HOP, w).abs()
    if not linear:
        fb = mel_filterbank(SR, n_fft, n_mels, f_min, None)
        mag = torch.linalg.pinv(fb).clamp_min(0.0) @ (fb @ mag)
    return griffin_lim(mag, n_fft)


def bass_chroma(x: np.ndarray) -> np.ndarray:
    frames = TK._frames(x, TK.KEY_N_FFT, TK.KEY_HOP)
    p = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    return (p @ TK.pitch_class_weights(TK.KEY_N_FFT, 40.0, 262.0)).mean(axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="synth folder (manifest.jsonl with labels)")
    ap.add_argument("--codec", default=str(ROOT / "presto_cli" / "assets" / "demo-codec.safetensors"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    rows = [json.loads(line) for line in (a.data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[: a.n]
    codec = load_codec(a.codec)
    asked = [TK.asked_values(r["labels"], r.get("caption")) for r in rows]
    versions = {"real": [], "codec": [], "gl-lin1024": [], "gl-mel1024": [], "gl-mel2048": [],
                "gl-mel4096": [], "gl-mel2048-fmin30": [], "gl-mel4096-fmin30": [],
                "gl-mel4096-fmin30-256bins": []}
    for i, r in enumerate(rows):
        x = load_audio(a.data / r["path"], SR)
        x = x[:, : x.shape[-1] // HOP * HOP]
        with torch.no_grad():
            versions["real"].append(x[0].numpy())
            versions["codec"].append(codec.decode(codec.encode(x[None]))[0, 0].numpy())
            versions["gl-lin1024"].append(gl_from_mel(x, 1024, 0.0, linear=True)[0].numpy())
            for n_fft in (1024, 2048, 4096):
                versions[f"gl-mel{n_fft}"].append(gl_from_mel(x, n_fft, 0.0)[0].numpy())
            for n_fft in (2048, 4096):
                versions[f"gl-mel{n_fft}-fmin30"].append(gl_from_mel(x, n_fft, 30.0)[0].numpy())
            versions["gl-mel4096-fmin30-256bins"].append(gl_from_mel(x, 4096, 30.0, n_mels=256)[0].numpy())
        print(f"{i + 1}/{len(rows)}", end="\r", file=sys.stderr, flush=True)
    real_keys = [TK.estimate_key(v) for v in versions["real"]]
    real_bass = [bass_chroma(v) for v in versions["real"]]
    beat = [i for i, r in enumerate(rows) if r["labels"]["style"] not in ("ambient", "string_quartet")]
    out = {"data": str(a.data), "n": len(rows), "codec": a.codec, "versions": {}}
    print(f"{'version':<20} {'key exact':>9} {'MIREX':>6} {'=real key':>9} {'tempo 4%':>9} {'beat 4%':>8} "
          f"{'bass corr':>9}  tonic offsets of key misses")
    for name, clips in versions.items():
        sc, per = TK.score_clips(lambda j: clips[j], asked, ["tempo", "key"])
        keys = [TK.parse_key(p["key_est"]) for p in per]
        same = float(np.mean([k == rk for k, rk in zip(keys, real_keys)]))
        offs = Counter((k[0] - ak["key"][0]) % 12 for k, ak in zip(keys, asked) if k and k != ak["key"])
        beat_acc = float(np.mean([TK.tempo_match(per[i]["tempo_est"], asked[i]["tempo"])[0] for i in beat]))
        corr = float(np.median([np.corrcoef(bass_chroma(v), rb)[0, 1] for v, rb in zip(clips, real_bass)]))
        out["versions"][name] = {**sc, "key_same_as_real": same, "tempo_acc1_beat_styles": beat_acc,
                                 "bass_chroma_corr_median": corr, "tonic_offsets": dict(sorted(offs.items()))}
        print(f"{name:<20} {sc['key_exact']:>9.2f} {sc['key_mirex']:>6.3f} {same:>9.2f} {sc['tempo_acc1']:>9.2f} "
              f"{beat_acc:>8.2f} {corr:>9.2f}  {dict(offs.most_common(4))}")
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
