"""The corpus driver: plan every clip, compose + render + master them in worker processes, write
the wav files, manifest.jsonl, styles.json and synth.json."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from presto_cli.data.synth.compose import Composer
from presto_cli.data.synth.plan import _rng, heldout_indices, plan_clip
from presto_cli.data.synth.render import effects_chain, find_fluidsynth, find_soundfont, master, render_midi
from presto_cli.data.synth.styles import STYLE_BY_NAME, STYLES
from presto_cli.errors import PrestoError


def synth_clip(plan: dict[str, Any], seconds: float, sample_rate: int, soundfont: Path,
               workdir: Path, exe: str = "fluidsynth") -> np.ndarray:
    """Compose, render, mix and master one clip: mono float32 of exactly seconds*rate samples."""
    st = STYLE_BY_NAME[plan["labels"]["style"]]
    pm = Composer(plan, seconds).compose()
    dry = render_midi(pm, sample_rate, soundfont, workdir, exe)
    rng = _rng(plan["seed"], 0xEFF)
    board = effects_chain(st, float(plan["labels"]["tempo"]), rng)
    wet = board(dry[None, :].astype(np.float32), float(sample_rate), reset=True)[0]
    if st.fx == "lofi":  # vinyl: hiss and sparse crackle, drawn from the clip's seed
        n = wet.shape[-1]
        hiss = rng.normal(0.0, 1.0, n) * 10 ** (-52 / 20)
        crackle = np.zeros(n)
        k = int(rng.poisson(6 * n / sample_rate))
        crackle[rng.integers(0, n, size=k)] = rng.uniform(-1, 1, size=k) * 10 ** (-24 / 20)
        wet = wet + (hiss + crackle).astype(np.float32) * float(np.abs(wet).max() + 1e-6)
    return master(wet, int(round(seconds * sample_rate)), sample_rate)



def _clip_name(plan: dict[str, Any]) -> str:
    return f"audio/{plan['index']:06d}_{plan['labels']['style']}.wav"


_WORKER: dict[str, Any] = {}


def _worker_init(soundfont: str, exe: str, tmp_root: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER["soundfont"] = Path(soundfont)
    _WORKER["exe"] = exe
    # inside the run's temporary folder, which the parent removes however the workers end
    _WORKER["tmp"] = Path(tempfile.mkdtemp(prefix="worker-", dir=tmp_root))


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Atomic PCM-16 wav write (what presto_cli.audio.write_audio does, without importing torch in
    the render workers, which would cost seconds of start-up per process)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.wav", dir=str(path.parent))
    os.close(fd)
    try:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), int(sample_rate), format="WAV", subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _worker_job(args: tuple[dict[str, Any], float, int, str]) -> tuple[int, float, float]:
    plan, seconds, sample_rate, out = args
    audio = synth_clip(plan, seconds, sample_rate, _WORKER["soundfont"], _WORKER["tmp"], _WORKER["exe"])
    _write_wav(Path(out) / _clip_name(plan), audio, sample_rate)
    return plan["index"], float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))), float(np.abs(audio).max())


def synth_corpus(out: str | Path, n: int, seconds: float, seed: int = 0, sample_rate: int = 16000,
                 workers: int = 1, heldout: float = 0.0, soundfont: str | Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write ``n`` clips of ``seconds`` seconds plus manifest.jsonl, styles.json and synth.json.

    Returns a summary ``{"out", "n", "seconds", "sample_rate", "styles", "heldout", "elapsed_s",
    "clips_per_s", "workers", "soundfont"}``. Deterministic in (seed, n, seconds, sample_rate, heldout).
    """
    from presto_cli.io import atomic_write_json, atomic_write_text  # main process only

    if n < 1:
        raise PrestoError(f"--n must be at least 1, got {n}")
    if not 0.5 <= seconds <= 120:
        raise PrestoError(f"--seconds must be between 0.5 and 120, got {seconds}")
    if not 0.0 <= heldout < 1.0:
        raise PrestoError(f"--split-heldout must be in [0, 1), got {heldout}")
    if sample_rate < 8000 or sample_rate > 96000:
        raise PrestoError(f"--sample-rate must be between 8000 and 96000, got {sample_rate}")
    exe = find_fluidsynth()
    sf2 = find_soundfont(soundfont)
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    held = heldout_indices(seed, n, heldout)
    plans = [plan_clip(seed, i, heldout=i in held, use_heldout=heldout > 0) for i in range(n)]
    jobs = [(p, float(seconds), int(sample_rate), str(out)) for p in plans]
    t0 = time.perf_counter()
    workers = max(1, min(int(workers), n))
    done = 0
    tmp_root = tempfile.mkdtemp(prefix="presto-synth-")
    try:
        if workers == 1:
            _worker_init(str(sf2), exe, tmp_root)
            for j in jobs:
                _worker_job(j)
                done += 1
                if progress:
                    progress(done, n)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # no forked torch/OpenMP state in the workers
            with ctx.Pool(workers, initializer=_worker_init, initargs=(str(sf2), exe, tmp_root)) as pool:
                for _ in pool.imap_unordered(_worker_job, jobs, chunksize=1):
                    done += 1
                    if progress:
                        progress(done, n)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    lines = []
    for p in plans:
        rec = {"path": _clip_name(p), "caption": p["caption"], "labels": p["labels"],
               "duration": float(seconds), "seed": p["seed"], "split": p["split"]}
        lines.append(json.dumps(rec))
    atomic_write_text(out / "manifest.jsonl", "\n".join(lines) + "\n")
    atomic_write_json(out / "styles.json", {"styles": [{"name": s.name, "title": s.title, "caption": s.canonical}
                                                       for s in STYLES]})
    info = {"out": str(out), "n": n, "seconds": float(seconds), "sample_rate": int(sample_rate), "seed": seed,
            "heldout": len(held), "heldout_fraction": heldout, "styles": len(STYLES),
            "soundfont": sf2.name, "workers": workers, "elapsed_s": round(elapsed, 3),
            "clips_per_s": round(n / max(elapsed, 1e-9), 3)}
    volatile = ("elapsed_s", "clips_per_s", "workers", "out")  # synth.json is deterministic too
    atomic_write_json(out / "synth.json", {k: v for k, v in info.items() if k not in volatile})
    return info
