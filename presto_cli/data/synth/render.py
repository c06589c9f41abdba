"""Rendering: FluidSynth (General MIDI soundfont) -> pedalboard effects -> mastering."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from presto_cli.data.synth.styles import Style
from presto_cli.errors import PrestoError

DEBIAN_SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
INSTALL_HINT = "install it: apt-get install fluidsynth fluid-soundfont-gm (macOS: brew install fluid-synth)"


def find_soundfont(path: str | Path | None = None) -> Path:
    """The General MIDI soundfont to render with: ``path``, $PRESTO_SOUNDFONT, Debian's FluidR3_GM,
    else pretty_midi's bundled TimGM6mb."""
    for cand in (path, os.environ.get("PRESTO_SOUNDFONT")):
        if cand:
            p = Path(cand).expanduser()
            if not p.is_file():
                raise PrestoError(f"soundfont not found: {p}", "pass an existing .sf2 file")
            return p
    if DEBIAN_SF2.is_file():
        return DEBIAN_SF2
    try:
        import pretty_midi

        p = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
        if p.is_file():
            return p
    except ImportError:
        pass
    raise PrestoError("no General MIDI soundfont found", INSTALL_HINT)


def find_fluidsynth() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise PrestoError("FluidSynth is not installed (needed to render the synthetic corpus)", INSTALL_HINT)
    return exe


def render_midi(pm, sample_rate: int, soundfont: Path, workdir: Path, exe: str = "fluidsynth",
                tail_seconds: float = 2.0, timeout: float = 120.0) -> np.ndarray:
    """Render a PrettyMIDI with the FluidSynth CLI; returns mono float32 at ``sample_rate``.

    FluidSynth 2.3's fast file renderer can keep rendering forever on some files (a sustained
    voice that never ends: seen here on 4 s clips that grew to 18 GB). So it writes headerless raw
    float32 stereo, and we stop it as soon as ``end_time + tail_seconds`` of audio exist: the first
    N samples do not depend on when the process is stopped, so the clip stays deterministic.
    """
    import time

    mid, raw = workdir / "clip.mid", workdir / "clip.raw"
    pm.write(str(mid))
    raw.unlink(missing_ok=True)
    frames = int(np.ceil((pm.get_end_time() + tail_seconds) * sample_rate))
    need = frames * 2 * 4  # stereo float32
    cmd = [exe, "-ni", "-q", "-g", "0.5", "-R", "0", "-C", "0", "-r", str(sample_rate),
           "-o", "synth.cpu-cores=1", "-o", "synth.polyphony=256", "-o", "synth.dynamic-sample-loading=1",
           "-o", "audio.file.format=float", "-o", "audio.file.type=raw", "-o", "audio.file.endian=little",
           "-F", str(raw), str(soundfont), str(mid)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            if raw.is_file() and raw.stat().st_size >= need:
                break
            if time.monotonic() - t0 > timeout:
                raise PrestoError(f"fluidsynth did not finish rendering a clip in {timeout:.0f} s")
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    if not raw.is_file() or (proc.returncode not in (0, -9) and raw.stat().st_size < need):
        raise PrestoError(f"fluidsynth failed ({proc.returncode}): {(err or '').strip()[:200]}", INSTALL_HINT)
    with open(raw, "rb") as f:
        buf = f.read(need)
    raw.unlink(missing_ok=True)
    n = len(buf) // 8
    data = np.frombuffer(buf[: n * 8], dtype="<f4").reshape(n, 2)
    if n < frames:  # the renderer stopped early (all voices released): pad with silence
        data = np.concatenate([data, np.zeros((frames - n, 2), np.float32)])
    return data.mean(axis=1).astype(np.float32)


def effects_chain(style: Style, tempo: float, rng: np.random.Generator):
    """The pedalboard mix chain of a style (reverb, compression, EQ, lo-fi filtering, bitcrush)."""
    from pedalboard import (Bitcrush, Chorus, Compressor, Delay, HighpassFilter, LowpassFilter,
                            LowShelfFilter, Pedalboard, Reverb)

    wet = float(rng.uniform(0.8, 1.2))
    fx = style.fx
    if fx == "jazz":
        ch = [HighpassFilter(40), Compressor(-18, 2.5), Reverb(room_size=0.35, wet_level=0.15 * wet, dry_level=0.9)]
    elif fx == "rock":
        ch = [HighpassFilter(50), Compressor(-16, 4), Reverb(room_size=0.3, wet_level=0.1 * wet, dry_level=0.9)]
    elif fx == "hall":
        ch = [Compressor(-20, 2), Reverb(room_size=0.75, damping=0.4, wet_level=0.3 * wet, dry_level=0.8)]
    elif fx == "club":
        ch = [HighpassFilter(30), Compressor(-20, 6, attack_ms=5, release_ms=80),
              Reverb(room_size=0.25, wet_level=0.08 * wet, dry_level=0.95)]
    elif fx == "ambient":
        ch = [Chorus(rate_hz=0.3, depth=0.3, mix=0.4), LowpassFilter(4500),
              Reverb(room_size=0.95, damping=0.3, wet_level=0.55 * wet, dry_level=0.6, width=1.0)]
    elif fx == "dry":
        ch = [HighpassFilter(40), Compressor(-18, 4), Reverb(room_size=0.2, wet_level=0.07 * wet, dry_level=0.95)]
    elif fx == "warm":
        ch = [LowpassFilter(6000), Compressor(-20, 2), Reverb(room_size=0.45, wet_level=0.18 * wet, dry_level=0.9)]
    elif fx == "dub":
        ch = [LowShelfFilter(120, 4.0), Delay(delay_seconds=0.75 * 60.0 / tempo, feedback=0.35, mix=0.18),
              Reverb(room_size=0.5, wet_level=0.15 * wet, dry_level=0.9), Compressor(-18, 3)]
    elif fx == "lofi":
        ch = [LowpassFilter(float(rng.uniform(2600, 3600))), Bitcrush(bit_depth=10), Compressor(-20, 4),
              Reverb(room_size=0.3, wet_level=0.1 * wet, dry_level=0.9)]
    elif fx == "chip":
        ch = [Bitcrush(bit_depth=float(rng.choice([5, 6]))), HighpassFilter(80)]
    else:
        ch = [Compressor(-18, 3), Reverb(room_size=0.3, wet_level=0.1, dry_level=0.9)]
    return Pedalboard(ch)


TARGET_RMS_DB = -20.0
PEAK_CEILING = 0.95


def master(audio: np.ndarray, n: int, sample_rate: int) -> np.ndarray:
    """Cut/pad to exactly ``n`` samples, fade the last 30 ms, normalise RMS to -20 dBFS with a
    0.95 peak ceiling."""
    x = np.zeros(n, dtype=np.float64)
    m = min(n, audio.shape[-1])
    x[:m] = audio[:m]
    fade = min(n, int(0.03 * sample_rate))
    if fade > 0:
        x[n - fade:] *= np.linspace(1.0, 0.0, fade)
    rms = math.sqrt(float(np.mean(x * x)))
    if rms < 1e-6:
        raise PrestoError("a synthetic clip rendered silent", "check the soundfont: " + INSTALL_HINT)
    x *= 10 ** (TARGET_RMS_DB / 20) / rms
    peak = float(np.abs(x).max())
    if peak > PEAK_CEILING:
        x *= PEAK_CEILING / peak
    return x.astype(np.float32)

