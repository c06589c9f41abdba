"""Tempo and key of a clip, and how well they match what was asked (``presto eval --metrics
tempo,key``; METHOD.md §6). numpy only, on 16 kHz mono audio.

Tempo: an onset envelope (the mean positive change of 40-band log-mel power, 1024-point Hann STFT,
hop 128 = 8 ms, 125 frames/s), mean removed; its autocorrelation over the whole clip, weighted by
a log-normal prior on the tempo (centred at 120 BPM, one octave wide, as librosa's beat tracker),
is maximised over lags of 30-300 BPM, with a parabolic refinement of the peak lag; the tempo is
``60 * frame_rate / lag``.

Key: a long-window chroma (16384-point Hann STFT = 1.02 s, 0.98 Hz bins, hop 4096): the magnitude
of every bin between 40 Hz and 5 kHz goes to its nearest equal-tempered pitch class with a
triangular weight (1 on the semitone, 0 half a semitone away), so the bass register is resolved
(a 1024-point STFT at 16 kHz has 15.6 Hz bins, wider than a semitone below about 250 Hz). Frames
are max-normalised and averaged over the clip; the key is the best Pearson correlation of that
chroma with the 24 rotations of the Krumhansl-Kessler major and minor profiles.

Scoring (what was asked: manifest labels, a sidecar, or the BPM and key written in the prompt):
tempo within 4% (``acc1``) and within 4% of the asked tempo or its double or half (``acc2``);
key categories as MIREX counts them: exact, fifth (same mode, tonic a fifth up or down),
relative (C major / A minor), parallel (C major / C minor), other, and the MIREX weighted score
exact + 0.5 fifth + 0.3 relative + 0.2 parallel.
"""
from __future__ import annotations


import numpy as np

from presto_cli.dsp import mel_filterbank

SAMPLE_RATE = 16000
ONSET_N_FFT, ONSET_HOP, ONSET_MELS = 1024, 128, 40
TEMPO_MIN, TEMPO_MAX = 30.0, 300.0
TEMPO_PRIOR_BPM, TEMPO_PRIOR_OCTAVES = 120.0, 1.0
KEY_N_FFT, KEY_HOP = 16384, 4096
KEY_FMIN, KEY_FMAX = 40.0, 2000.0
KEY_POWER = 2.0  # chroma of the STFT power (1: of the magnitude)
TEMPO_TOLERANCE = 0.04

PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
KEY_CATEGORIES = ("exact", "fifth", "relative", "parallel", "other")
MIREX_WEIGHTS = {"exact": 1.0, "fifth": 0.5, "relative": 0.3, "parallel": 0.2, "other": 0.0}


def _frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Centred Hann frames ``[T, n_fft]`` (zero padding), one per ``hop`` samples."""
    pad = n_fft // 2
    x = np.pad(np.asarray(x, dtype=np.float64).reshape(-1), (pad, pad))
    if x.shape[0] < n_fft:
        x = np.pad(x, (0, n_fft - x.shape[0]))
    return np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft + 1)[:-1]


def _mono(audio, sample_rate: int) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float64)
    x = x.mean(axis=0) if x.ndim == 2 else x.reshape(-1)
    if sample_rate != SAMPLE_RATE:
        from presto_cli.audio import resample

        x = np.asarray(resample(x.astype(np.float32), sample_rate, SAMPLE_RATE), dtype=np.float64)
    return x


# --------------------------------------------------------------------------------------------
# Tempo


def onset_envelope(audio, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, float]:
    """The onset strength per frame and the frame rate (frames per second)."""
    x = _mono(audio, sample_rate)
    power = np.abs(np.fft.rfft(_frames(x, ONSET_N_FFT, ONSET_HOP), axis=-1)) ** 2
    mel = power @ mel_filterbank(SAMPLE_RATE, ONSET_N_FFT, ONSET_MELS, 30.0, 8000.0).T
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db, db.max() - 80.0)  # an 80 dB range, as power_to_db(top_db=80)
    flux = np.maximum(np.diff(db, axis=0), 0.0).mean(axis=1)
    return np.concatenate([[0.0], flux]), SAMPLE_RATE / ONSET_HOP


def tempo_strength(env: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(lags, score)``: the onset envelope's autocorrelation at each lag (frames) between
    TEMPO_MAX and TEMPO_MIN BPM, times the log-normal tempo prior."""
    e = np.asarray(env, dtype=np.float64) - np.mean(env)
    n = e.shape[0]
    spec = np.fft.rfft(e, 2 * n)
    acf = np.fft.irfft(np.abs(spec) ** 2)[:n]
    acf = acf / acf[0] if acf[0] > 0 else acf
    lo = max(1, int(np.floor(60.0 * fps / TEMPO_MAX)))
    hi = min(n - 1, int(np.ceil(60.0 * fps / TEMPO_MIN)))
    lags = np.arange(lo, hi + 1)
    bpm = 60.0 * fps / lags
    prior = np.exp(-0.5 * (np.log2(bpm / TEMPO_PRIOR_BPM) / TEMPO_PRIOR_OCTAVES) ** 2)
    return lags, acf[lags] * prior


def estimate_tempo(audio, sample_rate: int = SAMPLE_RATE) -> float | None:
    """Beats per minute, or None for a clip too short or without onsets."""
    env, fps = onset_envelope(audio, sample_rate)
    lags, s = tempo_strength(env, fps)
    if lags.size < 3 or not np.any(s > 0):
        return None
    i = int(np.argmax(s))
    lag = float(lags[i])
    if 0 < i < lags.size - 1:  # parabolic refinement of the peak
        a, b, c = s[i - 1], s[i], s[i + 1]
        den = a - 2 * b + c
        if den < 0:
            lag += float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return 60.0 * fps / lag


# --------------------------------------------------------------------------------------------
# Key


def pitch_class_weights(n_fft: int, fmin: float, fmax: float) -> np.ndarray:
    """``[n_fft // 2 + 1, 12]``: each STFT bin's weight on its nearest pitch class (C = 0),
    triangular in pitch (1 on an equal-tempered semitone, 0 half a semitone away); bins outside
    [fmin, fmax] weigh 0."""
    f = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    w = np.zeros((f.shape[0], 12))
    keep = np.nonzero((f >= fmin) & (f <= fmax))[0]
    midi = 69.0 + 12.0 * np.log2(f[keep] / 440.0)
    near = np.round(midi)
    w[keep, near.astype(int) % 12] = np.clip(1.0 - 2.0 * np.abs(midi - near), 0.0, None)
    return w


def chroma_profile(audio, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip's time-averaged chroma ``[12]`` (C = 0), each frame max-normalised first."""
    x = _mono(audio, sample_rate)
    mag = np.abs(np.fft.rfft(_frames(x, KEY_N_FFT, KEY_HOP), axis=-1))
    if KEY_POWER != 1.0:
        mag = mag ** KEY_POWER
    c = mag @ pitch_class_weights(KEY_N_FFT, KEY_FMIN, KEY_FMAX)
    peak = c.max(axis=1, keepdims=True)
    loud = peak[:, 0] > 1e-3 * max(float(peak.max()), 1e-12)  # silent frames carry no key
    if not np.any(loud):
        return np.zeros(12)
    return (c[loud] / peak[loud]).mean(axis=0)


def key_scores(chroma: np.ndarray) -> np.ndarray:
    """``[2, 12]`` Pearson correlation of ``chroma`` with the major (row 0) and minor (row 1)
    Krumhansl-Kessler profile of each tonic (column: pitch class, C = 0)."""
    c = np.asarray(chroma, dtype=np.float64)
    out = np.zeros((2, 12))
    if np.ptp(c) <= 0:
        return out
    for m, prof in enumerate((KK_MAJOR, KK_MINOR)):
        for t in range(12):
            out[m, t] = np.corrcoef(c, np.roll(prof, t))[0, 1]  # roll: profile[0] lands on tonic t
    return out


def estimate_key(audio, sample_rate: int = SAMPLE_RATE) -> tuple[int, str] | None:
    """``(tonic pitch class, "major" | "minor")``, or None for silence."""
    s = key_scores(chroma_profile(audio, sample_rate))
    if not np.any(s):
        return None
    m, t = np.unravel_index(int(np.argmax(s)), s.shape)
    return int(t), MODES[m]


def key_name(key: tuple[int, str] | None) -> str | None:
    return None if key is None else f"{PITCH_NAMES[key[0] % 12]} {key[1]}"


# --------------------------------------------------------------------------------------------
# What was asked

def parse_key(text: str | None) -> tuple[int, str] | None:
    """``(tonic, mode)`` of the key written in ``text`` ("E minor", "B flat major", "F# min"): the
    prompt parser generation uses (text/musical.py), so eval asks what the model was asked."""
    from presto_cli.text.musical import parse_key as _parse

    idx = _parse(str(text)) if text else None
    return None if idx is None else (idx % 12, "minor" if idx >= 12 else "major")


def parse_bpm(text: str | None) -> float | None:
    """The BPM written in ``text`` (20-400), else None (text/musical.py's parser)."""
    from presto_cli.text.musical import parse_bpm as _parse

    return _parse(str(text)) if text else None


def asked_values(labels: dict | None, prompt: str | None) -> dict:
    """``{"tempo": float | None, "key": (tonic, mode) | None}`` from labels (``tempo`` or ``bpm``;
    ``key`` as "E minor", or ``key`` + ``mode``), else from the prompt's words."""
    labels = labels or {}
    tempo = labels.get("tempo", labels.get("bpm"))
    try:
        tempo = float(tempo) if tempo is not None else None
    except (TypeError, ValueError):
        tempo = None
    key = None
    if isinstance(labels.get("key"), str):
        key = parse_key(f"{labels['key']} {labels.get('mode') or ''}".strip())
    return {"tempo": tempo if tempo is not None else parse_bpm(prompt),
            "key": key if key is not None else parse_key(prompt)}


# --------------------------------------------------------------------------------------------
# Scoring


def tempo_match(est: float | None, asked: float, tol: float = TEMPO_TOLERANCE) -> tuple[bool, bool]:
    """``(within tol of asked, within tol of asked, 2x asked or asked / 2)``."""
    if est is None or not asked > 0:
        return False, False
    ok = lambda target: abs(est - target) <= tol * target  # noqa: E731
    return ok(asked), any(ok(asked * f) for f in (1.0, 2.0, 0.5))


def key_relation(est: tuple[int, str] | None, asked: tuple[int, str]) -> str:
    """One of KEY_CATEGORIES: how the estimated key relates to the asked one."""
    if est is None:
        return "other"
    (te, me), (ta, ma) = est, asked
    d = (te - ta) % 12
    if me == ma:
        return "exact" if d == 0 else "fifth" if d in (5, 7) else "other"
    if d == 0:
        return "parallel"
    # relative: the minor key's tonic is 3 semitones below the major key's
    if (ma == "major" and d == 9) or (ma == "minor" and d == 3):
        return "relative"
    return "other"


def score_clips(audio_of, asked: list[dict], metrics: list[str]) -> tuple[dict, list[dict]]:
    """Estimate and score every clip. ``audio_of(i)`` gives clip i's 16 kHz mono audio (or raises
    an exception naming the problem); ``asked[i]`` its :func:`asked_values`. Returns the scores
    (fractions over the clips whose asked value is known) and one record per clip."""
    per: list[dict] = []
    t1 = t2 = nt = 0
    cats = dict.fromkeys(KEY_CATEGORIES, 0)
    nk = 0
    for i, a in enumerate(asked):
        rec: dict = {}
        need_t = "tempo" in metrics and a.get("tempo")
        need_k = "key" in metrics and a.get("key")
        if need_t or need_k:
            x = audio_of(i)
            if need_t:
                est = estimate_tempo(x)
                m1, m2 = tempo_match(est, a["tempo"])
                t1, t2, nt = t1 + m1, t2 + m2, nt + 1
                rec.update(tempo_asked=a["tempo"], tempo_est=None if est is None else round(est, 2))
            if need_k:
                k = estimate_key(x)
                rel = key_relation(k, a["key"])
                cats[rel] += 1
                nk += 1
                rec.update(key_asked=key_name(a["key"]), key_est=key_name(k), key_relation=rel)
        per.append(rec)
    scores: dict = {}
    if "tempo" in metrics:
        scores.update(tempo_n=nt, tempo_acc1=t1 / nt if nt else None, tempo_acc2=t2 / nt if nt else None)
    if "key" in metrics:
        scores["key_n"] = nk
        for c in KEY_CATEGORIES:
            scores[f"key_{c}"] = cats[c] / nk if nk else None
        scores["key_mirex"] = (sum(MIREX_WEIGHTS[c] * cats[c] for c in KEY_CATEGORIES) / nk) if nk else None
    return scores, per
