"""Audio file I/O: mono float32 tensors in, atomic files out.

Reading goes through libsndfile (``soundfile``: wav, flac, ogg/vorbis, ogg/opus, mp3 with gapless
trimming, aiff; a wav holding less data than its header declares is refused as truncated) and falls back to pedalboard's decoders; resampling is polyphase (``scipy.signal.
resample_poly``), deterministic and exact in length (``round(T * sr_out / sr_in)``).
Writing is atomic (:class:`presto_cli.io.atomic_path`) and picks the container from ``fmt`` or the
file suffix.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from presto_cli.errors import PrestoError
from presto_cli.io import atomic_path

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif")

# format name -> (libsndfile container, default subtype)
WRITE_FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "aiff": ("AIFF", "PCM_16"),
    "aif": ("AIFF", "PCM_16"),
}


def wav_shortfall(path: Path) -> tuple[int, int] | None:
    """``(declared, present)`` bytes of a RIFF/WAVE file's data chunk when the file holds fewer
    than its header declares (a truncated copy: libsndfile would silently read what is there)."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, n = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                present = size - pos - 8
                if n in (0, 0xFFFFFFFF) or present >= n:  # 0/-1: size left open by a streaming writer
                    return None
                return n, present
            pos += 8 + n + (n & 1)
    return None


def _check_complete(path: Path) -> None:
    short = wav_shortfall(path) if path.suffix.lower() == ".wav" else None
    if short:
        raise PrestoError(f"audio file {path} is truncated: its header declares {short[0]} bytes of audio, "
                          f"the file holds {short[1]}", "copy or export the file again")


def _read_any(path: Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 array and its sample rate; raises PrestoError."""
    import soundfile as sf

    _check_complete(path)
    errors: list[str] = []
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return np.asarray(data, dtype=np.float32), int(sr)
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError on bad files
        errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    try:
        from pedalboard.io import AudioFile

        with AudioFile(str(path)) as f:
            sr = int(round(f.samplerate))
            data = f.read(f.frames)  # (channels, frames)
        return np.ascontiguousarray(np.asarray(data, dtype=np.float32).T), sr
    except Exception as e:
        errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    raise PrestoError(f"cannot read audio file {path}: {errors[0]}",
                      "check that it is a valid wav/flac/mp3/ogg/aiff file")


def resample(audio: np.ndarray | torch.Tensor, sr_in: int, sr_out: int):
    """Polyphase resampling along the last axis; returns the same type it was given."""
    if sr_in == sr_out:
        return audio
    from scipy.signal import resample_poly

    frac = Fraction(int(sr_out), int(sr_in))
    is_t = isinstance(audio, torch.Tensor)
    x = audio.detach().cpu().numpy() if is_t else audio
    n_out = int(round(x.shape[-1] * sr_out / sr_in))
    y = resample_poly(x.astype(np.float64), frac.numerator, frac.denominator, axis=-1)
    y = y[..., :n_out].astype(np.float32)
    if y.shape[-1] < n_out:  # never happens with resample_poly, but keep the length contract
        pad = [(0, 0)] * (y.ndim - 1) + [(0, n_out - y.shape[-1])]
        y = np.pad(y, pad)
    return torch.from_numpy(np.ascontiguousarray(y)) if is_t else y


def to_channels(data: np.ndarray, channels: int = 1) -> np.ndarray:
    """``(frames, C)`` -> ``(channels, frames)``: 1 averages every channel (mono); 2 keeps a
    stereo file's first two channels and copies a mono file into both."""
    if channels == 1:
        return (data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0])[None]
    if channels != 2:
        raise PrestoError(f"audio channels must be 1 (mono) or 2 (stereo), got {channels}")
    return np.stack([data[:, 0], data[:, 1 if data.shape[1] > 1 else 0]])


def load_audio(path: str | Path, sample_rate: int, channels: int = 1) -> torch.Tensor:
    """Decode ``path`` to a float32 tensor of shape (channels, T) at ``sample_rate``.

    ``channels`` 1 (default): channels are averaged; 2: stereo (see :func:`to_channels`). The file
    is resampled if its rate differs. Unreadable or empty files raise :class:`PrestoError` naming
    the file.
    """
    path = Path(path)
    if not path.is_file():
        raise PrestoError(f"audio file not found: {path}")
    data, sr = _read_any(path)
    if data.size == 0 or data.shape[0] == 0:
        raise PrestoError(f"audio file {path} is empty (0 samples)")
    x = resample(to_channels(data, channels), sr, int(sample_rate))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _format_for(path: Path, fmt: str | None) -> str:
    name = (fmt or path.suffix.lstrip(".")).lower()
    if name not in WRITE_FORMATS:
        raise PrestoError(f"cannot write audio format '{name or path.name}'",
                          f"use one of {', '.join(sorted(set(WRITE_FORMATS) - {'aif'}))}")
    return name


def write_audio(path: str | Path, audio: torch.Tensor | np.ndarray, sample_rate: int,
                fmt: str | None = None, subtype: str | None = None) -> Path:
    """Write mono audio (``[1, T]`` or ``[T]``; ``[C, T]`` writes C channels) atomically.

    The container comes from ``fmt`` or the suffix of ``path`` (wav, flac, mp3, ogg, aiff).
    Samples are clipped to [-1, 1]; non-finite samples raise :class:`PrestoError`.
    """
    import soundfile as sf

    path = Path(path)
    name = _format_for(path, fmt)
    container, default_subtype = WRITE_FORMATS[name]
    x = audio.detach().to("cpu", torch.float32).numpy() if isinstance(audio, torch.Tensor) \
        else np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise PrestoError(f"audio to write to {path} must be [T] or [C, T], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise PrestoError(f"audio to write to {path} contains NaN or Inf samples")
    x = np.clip(x, -1.0, 1.0).T  # soundfile wants (frames, channels)
    if x.shape[0] == 0:
        raise PrestoError(f"audio to write to {path} is empty")
    suffix = path.suffix if path.suffix else f".{name}"
    try:
        with atomic_path(path, suffix=suffix) as tmp:
            sf.write(str(tmp), np.ascontiguousarray(x), int(sample_rate), format=container,
                     subtype=subtype or default_subtype)
    except PrestoError:
        raise
    except Exception as e:
        raise PrestoError(f"cannot write {name} audio to {path}: {e}",
                          "try wav or flac" if name not in ("wav", "flac") else None) from None
    return path


def audio_info(path: str | Path) -> dict[str, Any]:
    """``{"sample_rate", "channels", "frames", "duration", "format"}`` without decoding the file."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise PrestoError(f"audio file not found: {path}")
    try:
        i = sf.info(str(path))
        return {"sample_rate": int(i.samplerate), "channels": int(i.channels),
                "frames": int(i.frames), "duration": float(i.frames) / float(i.samplerate),
                "format": str(i.format).lower()}
    except Exception:
        pass
    try:
        from pedalboard.io import AudioFile

        with AudioFile(str(path)) as f:
            sr = float(f.samplerate)
            return {"sample_rate": int(round(sr)), "channels": int(f.num_channels),
                    "frames": int(f.frames), "duration": float(f.frames) / sr,
                    "format": path.suffix.lstrip(".").lower()}
    except Exception as e:
        raise PrestoError(f"cannot read audio file {path}: {type(e).__name__}",
                          "check that it is a valid audio file") from None


def peak_normalize(audio: torch.Tensor, peak: float = 0.95, eps: float = 1e-8) -> torch.Tensor:
    """Scale so that max |x| equals ``peak`` (silence is returned unchanged)."""
    m = audio.abs().amax()
    if float(m) < eps:
        return audio.clone()
    return audio * (peak / m)
