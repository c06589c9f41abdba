"""Does a codec keep the music? Reconstruction measures beyond spectral distance (METHOD.md §1).

A codec can match the spectral envelope while erasing every pitch (the first demo codec did:
log-mel L1 looked fine, the notes were gone), so the autoencoder stage also reports:

- **chroma similarity**: chroma (pitch-class energy of a 2048-point STFT with hop 512 at 16 kHz,
  :mod:`presto_cli.dsp`, the same chroma ``presto eval --embedder music`` uses) of
  the original and of the reconstruction, cosine per frame, mean over frames and clips; beside it
  the same between each original and an *unrelated* original (the next clip), the level a
  pitch-blind codec reaches;
- **tonal ratio**: mean chroma change over 0.5 s (how much the notes move) of the reconstruction
  divided by that of the original (1 = the notes move as much; a drone scores near 0);
- **frame-rate comb contrast**: energy on multiples of the codec's frame rate against energy
  halfway between them, in dB, from a 1 Hz-resolution Welch spectrum (a decoder that buzzes at its
  frame rate scores high; the original music scores about 0 dB).

Everything here is numpy on ``[T]`` float arrays; audio at another rate is resampled to 16 kHz for
the chroma measures.
"""
from __future__ import annotations

import numpy as np


def chroma(x: np.ndarray, sr: int) -> np.ndarray:
    """Unit-norm chroma ``[12, frames]`` of a mono signal (resampled to 16 kHz if needed)."""
    from presto_cli import dsp as mf

    if sr != mf.SAMPLE_RATE:
        from presto_cli.audio import resample

        x = resample(np.asarray(x, np.float32), sr, mf.SAMPLE_RATE)
    return mf.chroma(mf.power_spectrum(x)).T


def chroma_similarity(x: np.ndarray, y: np.ndarray, sr: int) -> float:
    """Mean frame cosine between the chroma of ``x`` and of ``y`` (compared over the shorter)."""
    a, b = chroma(x, sr), chroma(y, sr)
    n = min(a.shape[1], b.shape[1])
    a, b = a[:, :n], b[:, :n]
    cos = (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0) + 1e-12)
    return float(cos.mean())


def tonal_change(x: np.ndarray, sr: int, lag_seconds: float = 0.5) -> float:
    """Mean chroma cosine distance between frames ``lag_seconds`` apart (0 for a steady drone;
    the measure benchmarks/spectrograms.py prints)."""
    from presto_cli import dsp as mf

    lag = max(1, int(round(lag_seconds * mf.SAMPLE_RATE / mf.HOP)))
    d = mf.chroma_change(chroma(x, sr).T, lag)
    return float(d.mean()) if d.size else 0.0


def chroma_peak_share(x: np.ndarray, sr: int) -> float:
    """Mean over frames of the strongest pitch class's share of the frame's (energy) chroma: about
    0.37 for the synthetic corpus, 0.12 for white noise, 1/12 at the least. Tonal change alone is
    fooled by noise (random chroma changes too); this says whether there are pitches at all."""
    c = chroma(x, sr)  # pitch-class energy per frame (its norm cancels in the share)
    share = c.max(axis=0) / np.maximum(c.sum(axis=0), 1e-12)
    return float(share.mean()) if share.size else 0.0


def comb_contrast_db(x: np.ndarray, sr: int, frame_rate: float, f_max: float | None = None) -> float:
    """10·log10(energy at k·frame_rate / energy at (k+½)·frame_rate), k ≥ 1, up to ``f_max``."""
    from scipy.signal import welch

    x = np.asarray(x, dtype=np.float64)
    nper = min(len(x), sr)  # 1 Hz bins for clips of a second or more
    f, p = welch(x, fs=sr, nperseg=nper, noverlap=nper // 2)
    df = f[1] - f[0]
    top = min(f_max or sr / 2, sr / 2) - frame_rate
    ks = np.arange(1, int(top // frame_rate) + 1)
    if not len(ks):
        return 0.0

    def energy(freqs: np.ndarray) -> float:
        idx = np.clip(np.round(freqs / df).astype(int), 0, len(p) - 1)
        return float(sum(p[np.clip(idx + d, 0, len(p) - 1)].sum() for d in (-1, 0, 1)))

    on, off = energy(ks * frame_rate), energy((ks + 0.5) * frame_rate)
    return float(10.0 * np.log10((on + 1e-20) / (off + 1e-20)))


def music_report(originals: list[np.ndarray], recons: list[np.ndarray], sr: int,
                 frame_rate: float) -> dict[str, float]:
    """The measures above, averaged over clip pairs (each ``[T]``)."""
    n = len(originals)
    sim = [chroma_similarity(o, r, sr) for o, r in zip(originals, recons)]
    unrelated = [chroma_similarity(originals[i], originals[(i + 1) % n], sr) for i in range(n)] \
        if n > 1 else [float("nan")]
    t_orig = np.array([tonal_change(o, sr) for o in originals])
    t_rec = np.array([tonal_change(r, sr) for r in recons])
    comb_o = [comb_contrast_db(o, sr, frame_rate) for o in originals]
    comb_r = [comb_contrast_db(r, sr, frame_rate) for r in recons]
    return {"chroma_similarity": float(np.mean(sim)), "chroma_similarity_min": float(np.min(sim)),
            "chroma_similarity_unrelated": float(np.mean(unrelated)),
            "tonal_change_original": float(t_orig.mean()), "tonal_change_recon": float(t_rec.mean()),
            "tonal_ratio": float(t_rec.mean() / max(t_orig.mean(), 1e-12)),
            "comb_contrast_db": float(np.mean(comb_r)),
            "comb_contrast_db_original": float(np.mean(comb_o)), "frame_rate": float(frame_rate)}


def _figure(rows: int, cols: int, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, height * rows), squeeze=False)
    return plt, fig, axes


def _panel(ax, x: np.ndarray, sr: int, title: str) -> None:
    ax.imshow(log_mel_image(x, sr), origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(plt, fig, path) -> None:
    from presto_cli.io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def spectrogram_png(path, pairs: list[tuple[np.ndarray, np.ndarray]], sr: int,
                    titles: tuple[str, str] = ("original", "reconstruction")) -> None:
    """A PNG with one column per pair: log-mel spectrogram of the first above the second."""
    plt, fig, axes = _figure(2, max(1, len(pairs)), 2.3)
    for j, (a, b) in enumerate(pairs):
        _panel(axes[0][j], a, sr, f"{titles[0]} {j}")
        _panel(axes[1][j], b, sr, f"{titles[1]} {j}")
    _save(plt, fig, path)


def spectrogram_grid(path, panels: list[tuple[str, np.ndarray, int]], suptitle: str = "",
                     cols: int = 3) -> None:
    """A PNG of titled log-mel spectrograms ``(title, audio, sample_rate)``, ``cols`` per row."""
    rows = -(-len(panels) // cols)
    plt, fig, axes = _figure(rows, cols, 2.4)
    for i, ax in enumerate(axes.flat):
        if i < len(panels):
            _panel(ax, panels[i][1], panels[i][2], panels[i][0])
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    _save(plt, fig, path)


def log_mel_image(x: np.ndarray, sr: int, n_mels: int = 128) -> np.ndarray:
    """dB log-mel power ``[n_mels, frames]`` (1024-point STFT, hop 256) relative to the clip's peak,
    floored at -80 dB (for pictures)."""
    import torch

    from presto_cli.codec.losses import mel_filterbank, stft_mag

    mag = stft_mag(torch.as_tensor(np.asarray(x, np.float32))[None], 1024, 256)[0]
    power = (mel_filterbank(sr, 1024, n_mels) @ mag.pow(2)).numpy()
    db = 10.0 * np.log10(np.maximum(power, 1e-12) / max(float(power.max()), 1e-12))
    return np.maximum(db, -80.0)
