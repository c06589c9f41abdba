"""Does a log-mel latent keep the notes at a given format? mel -> the filterbank's non-negative
pseudo-inverse -> 32 Griffin-Lim iterations -> chroma similarity to the original (codec/quality.py),
mean and min over the clips of a prepared folder. Weight-free: a floor for what a vocoder can reach.

    presto data synth --out /tmp/s44 --n 6 --seconds 8 --sample-rate 44100
    python benchmarks/mel_notes.py /tmp/s44      # the settings compared in recipes/paper/autoencoder.yaml
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presto_cli.audio import load_audio  # noqa: E402
from presto_cli.codec.losses import mel_filterbank  # noqa: E402
from presto_cli.codec.quality import chroma_similarity  # noqa: E402
from presto_cli.codec.vae import hann_window, istft_same, stft_same  # noqa: E402

SETTINGS = [(16000, 1024, 256, 128, 0), (44100, 2048, 512, 128, 0), (44100, 2048, 512, 128, 16000),
            (44100, 2048, 512, 64, 0)]  # (sample rate, n_fft, hop, n_mels, f_max; 0 = sr / 2)


def chroma_after_griffin_lim(root: Path, sr, n_fft, hop, n_mels, f_max, seconds=8.0, iters=32):
    fb = mel_filterbank(sr, n_fft, n_mels, 0.0, f_max or None)
    pinv, w = torch.linalg.pinv(fb).clamp_min(0), hann_window(n_fft)
    sims = []
    for line in (root / "manifest.jsonl").read_text().splitlines():
        x = load_audio(root / json.loads(line)["path"], sr)[:, :int(sr * seconds)]
        x = x[:, :(x.shape[-1] // hop) * hop]
        mag = pinv @ (fb @ stft_same(x, n_fft, hop, w).abs())
        phase = torch.rand(mag.shape, generator=torch.Generator().manual_seed(0)) * 2 * np.pi
        spec = torch.polar(mag, phase)
        for _ in range(iters):
            spec = torch.polar(mag, torch.angle(stft_same(istft_same(spec, n_fft, hop, w), n_fft, hop, w)))
        sims.append(chroma_similarity(x[0].numpy(), istft_same(spec, n_fft, hop, w)[0].numpy(), sr))
    return float(np.mean(sims)), float(np.min(sims))


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for s in SETTINGS:
        mean, low = chroma_after_griffin_lim(root, *s)
        print(f"sr {s[0]} n_fft {s[1]} hop {s[2]} n_mels {s[3]} f_max {s[4] or s[0] // 2}: "
              f"chroma similarity {mean:.3f} (min {low:.3f})", flush=True)
