"""Weight-free music features for ``presto eval --embedder music`` (METHOD.md §6), numpy only.

Frame features (16 kHz, 2048-point Hann STFT, hop 512 = 32 ms):

* ``chroma``: pitch-class energy of the power spectrum between 65 Hz and 5 kHz (each FFT bin to
  its nearest equal-tempered pitch class, C = 0), unit L2 norm per frame.
* ``tonnetz``: Harte et al. (2006) 6-D tonal centroid of the L1-normalised chroma (fifths,
  minor thirds, major thirds; radii 1, 1, 0.5), as librosa computes it.
* ``contrast``: spectral contrast in six octave bands (dB between the mean of the top and of the
  bottom 2 % of each band's power bins).
* ``onset``: onset strength, the mean positive change of 40-band log-mel power between frames.

Per 2 s window (hop 1 s, deterministic; a shorter clip is one window) the mean and standard
deviation of each frame feature over the window's frames, plus window features of change over
time: ``change`` (mean and std of the chroma cosine distance at lags 0.25 s and 0.5 s, and the
mean chroma peak share max/sum: how clearly one pitch class leads) and the onset envelope's
normalised autocorrelation peak in four lag bands (0.125-1 s, a tempogram in miniature, in ``onset``).
A clip's vector is the mean of its windows' vectors. Each group is divided by a fixed scale (the
typical across-clip standard deviation of that group's dimensions, measured once on the synthetic
corpus and written below), so no group dominates by its units; no weights are fitted at run time.
"""
from __future__ import annotations

import numpy as np

from presto_cli.dsp import (CHROMA_FMAX, CHROMA_FMIN, HOP, N_FFT, SAMPLE_RATE, _freqs,  # noqa: F401
                            chroma, chroma_change, mel_filterbank, power_spectrum)

WINDOW_SECONDS = 2.0
WINDOW_HOP_SECONDS = 1.0
CONTRAST_EDGES = (0.0, 200.0, 400.0, 800.0, 1600.0, 3200.0, 8000.0)
CONTRAST_QUANTILE = 0.02
CHANGE_LAGS_SECONDS = (0.25, 0.5)
ACF_BANDS_SECONDS = ((0.125, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))

# Feature groups: name -> size. "pitch" groups are the ones that see notes.
GROUPS = {"chroma": 24, "tonnetz": 12, "change": 5, "contrast": 12, "onset": 6}
PITCH_GROUPS = ("chroma", "tonnetz", "change")
# Fixed scales (divide by these): per group, or per dimension where a group's dimensions have
# different units (contrast: band means, then band stds; onset: mean, std, then 4 autocorrelation
# bands). Typical across-clip standard deviations on 64 clips of `presto data synth --seed 0`.
GROUP_SCALES = {"chroma": (0.09,), "tonnetz": (0.07,), "change": (0.09,),
                "contrast": (9.0,) * 6 + (2.0,) * 6, "onset": (0.6, 1.1) + (0.17,) * 4}


def tonnetz_matrix() -> np.ndarray:
    """``[6, 12]`` tonal-centroid projection (Harte et al. 2006; librosa.feature.tonnetz)."""
    pc = np.arange(12)
    rows = []
    for r, a in ((1.0, 7 * np.pi / 6), (1.0, 3 * np.pi / 2), (0.5, 2 * np.pi / 3)):
        rows += [r * np.sin(pc * a), r * np.cos(pc * a)]
    return np.stack(rows)


def tonnetz(chroma_: np.ndarray) -> np.ndarray:
    """``[T, 6]`` tonal centroid of chroma frames (L1-normalised first)."""
    c = chroma_ / np.maximum(chroma_.sum(axis=1, keepdims=True), 1e-12)
    return c @ tonnetz_matrix().T


def spectral_contrast(power: np.ndarray) -> np.ndarray:
    """``[T, 6]`` dB between the top and bottom ``CONTRAST_QUANTILE`` of each octave band's bins."""
    f = _freqs()
    out = []
    for lo, hi in zip(CONTRAST_EDGES[:-1], CONTRAST_EDGES[1:]):
        band = np.sort(power[:, (f >= lo) & (f < hi)], axis=1)
        q = max(1, int(round(CONTRAST_QUANTILE * band.shape[1])))
        peak, valley = band[:, -q:].mean(axis=1), band[:, :q].mean(axis=1)
        out.append(10.0 * np.log10((peak + 1e-10) / (valley + 1e-10)))
    return np.stack(out, axis=1)


def onset_strength(power: np.ndarray) -> np.ndarray:
    """``[T]`` mean positive frame-to-frame rise of 40-band log-mel power (dB), first frame 0."""
    lm = 10.0 * np.log10(power @ mel_filterbank(SAMPLE_RATE, N_FFT, 40).T + 1e-10)
    rise = np.maximum(np.diff(lm, axis=0), 0.0).mean(axis=1)
    return np.concatenate([[0.0], rise])


def onset_acf_bands(env: np.ndarray) -> np.ndarray:
    """Peak normalised autocorrelation of the (mean-removed) onset envelope in each lag band."""
    e = env - env.mean()
    den = float(e @ e)
    out = []
    for lo, hi in ACF_BANDS_SECONDS:
        lags = range(max(1, int(round(lo * SAMPLE_RATE / HOP))), int(round(hi * SAMPLE_RATE / HOP)) + 1)
        vals = [float(e[k:] @ e[:-k]) / den for k in lags if k < e.shape[0] and den > 1e-12]
        out.append(max(vals) if vals else 0.0)
    return np.asarray(out)


def _mean_std(x: np.ndarray) -> np.ndarray:
    if x.shape[0] == 0:
        return np.zeros(2 * (x.shape[1] if x.ndim == 2 else 1))
    return np.concatenate([np.atleast_1d(x.mean(axis=0)), np.atleast_1d(x.std(axis=0))])


def window_features(c: np.ndarray, tz: np.ndarray, con: np.ndarray, ons: np.ndarray) -> dict[str, np.ndarray]:
    """Every group's features of one window of frame features."""
    lags = [max(1, int(round(s * SAMPLE_RATE / HOP))) for s in CHANGE_LAGS_SECONDS]
    change = [_mean_std(chroma_change(c, lag)[:, None]) for lag in lags]
    c1 = c / np.maximum(c.sum(axis=1, keepdims=True), 1e-12)
    return {"chroma": _mean_std(c), "tonnetz": _mean_std(tz),
            "change": np.concatenate(change + [[c1.max(axis=1).mean()]]),
            "contrast": _mean_std(con),
            "onset": np.concatenate([_mean_std(ons[:, None]), onset_acf_bands(ons)])}


def frame_windows(n_frames: int) -> list[tuple[int, int]]:
    """Deterministic (start, stop) frame ranges: WINDOW_SECONDS long, WINDOW_HOP_SECONDS apart,
    the last one ending at the clip's end; one window when the clip is shorter."""
    w = int(round(WINDOW_SECONDS * SAMPLE_RATE / HOP))
    h = int(round(WINDOW_HOP_SECONDS * SAMPLE_RATE / HOP))
    if n_frames <= w:
        return [(0, n_frames)]
    starts = list(range(0, n_frames - w + 1, h))
    if starts[-1] != n_frames - w:
        starts.append(n_frames - w)
    return [(s, s + w) for s in starts]


def music_features(x: np.ndarray, groups: tuple[str, ...] = tuple(GROUPS)) -> np.ndarray:
    """The clip vector of a 1-D 16 kHz signal: mean over windows, groups in ``groups`` order, scaled."""
    p = power_spectrum(x)
    c = chroma(p)
    frame = (c, tonnetz(c), spectral_contrast(p), onset_strength(p))
    per_window = [window_features(*(a[s:e] for a in frame)) for s, e in frame_windows(p.shape[0])]
    return np.concatenate([np.mean([w[g] for w in per_window], axis=0) / np.asarray(GROUP_SCALES[g])
                           for g in groups])
