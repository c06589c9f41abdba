"""Checks of user input made before any work starts (and before any model is loaded).

Each check raises :class:`PrestoError` with one line naming the problem and the fix, or returns a
warning line for the caller to print; a bad option value raises :class:`PrestoUsageError` (exit 2).
Shared by `generate`, `eval`, `export`, the recipes and the prompt files, so that every command
refuses the same inputs in the same words.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from presto_cli.errors import PrestoError, PrestoUsageError

MAX_PROMPT_CHARS = 2000  # the text encoders read at most a few hundred tokens anyway
MAX_STEPS = 1000  # sampler steps refused above this without --force, whatever the model
STEPS_WARN_FACTOR = 4  # warn above this multiple of the model's own step count
STEPS_CAP_FACTOR = 16  # refuse above this multiple (and above MAX_STEPS) unless --force
MIN_EVAL_SECONDS = 0.5  # shorter clips make meaningless embeddings (FAD 9e4 on 0.1 s clips)
CLIP_LENGTH_RATIO = 2.0  # warn when generated and reference clip lengths differ by more


# --------------------------------------------------------------------------------------------
# Numbers


def number(name: str, value: float | None, *, above: float | None = None,
           at_least: float | None = None, hint: str = "") -> None:
    """Refuse NaN/Inf and values outside the range; ``None`` (unset) passes."""
    if value is None:
        return
    if not math.isfinite(float(value)):
        raise PrestoUsageError(f"{name} must be a finite number, got {value}", hint or "give an ordinary number")
    if above is not None and not value > above:
        raise PrestoUsageError(f"{name} must be greater than {above:g}, got {value:g}", hint or None)
    if at_least is not None and not value >= at_least:
        raise PrestoUsageError(f"{name} must be at least {at_least:g}, got {value:g}", hint or None)


SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # what a torch.Generator takes without wrapping around


def check_seed(seed: int | None, name: str = "--seed") -> None:
    """A seed must fit the samplers' 64-bit generators (checked before any model is loaded)."""
    if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
        raise PrestoUsageError(f"{name} {seed} does not fit in 64 bits",
                               f"use a seed from 0 to {SEED_MAX}")


def check_sampling(steps: int | None = None, cfg: float | None = None, rho: float | None = None,
                   duration: float | None = None, force: bool = False) -> None:
    """The sampler options of `generate`/`eval`/`bench`, before the model is loaded."""
    number("--steps", steps, at_least=1)
    number("--cfg", cfg, at_least=0, hint="use a weight such as 2 (1 is no guidance), or leave --cfg unset")
    number("--rho", rho, above=0, hint="the Karras schedule's rho is usually 7")
    number("--duration", duration, above=0, hint="seconds, e.g. --duration 4")
    if steps is not None and steps > MAX_STEPS and not force:
        raise PrestoUsageError(f"--steps {steps} is above the cap of {MAX_STEPS}",
                               "pass --force if you really mean it")


def check_steps_for_model(steps: int | None, default_steps: int | None, force: bool,
                          warn: Callable[[str], None]) -> None:
    """Far above the model's own step count: warn; past ``STEPS_CAP_FACTOR`` times it: refuse."""
    if steps is None or not default_steps or force:
        return
    cap = STEPS_CAP_FACTOR * default_steps
    if steps > cap:
        raise PrestoUsageError(f"--steps {steps} is more than {STEPS_CAP_FACTOR}x the {default_steps} steps "
                               f"this model was made for", f"use --steps {default_steps}, or pass --force")
    if steps > STEPS_WARN_FACTOR * default_steps:
        warn(f"warning: --steps {steps} is far above the {default_steps} steps this model was made for; "
             "it will be slow and no better")


def model_default_steps(path: str | Path) -> int | None:
    """The sampler steps recorded in an artefact's metadata, read from its header only."""
    import json

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get("presto", "{}"))
        s = meta.get("sampler") or {}
        return int(s.get("steps") or (meta.get("edm") or {}).get("steps") or 0) or None
    except Exception:  # an unreadable file is reported by the loader itself, with its name
        return None


def thread_env(name: str) -> int | None:
    """A thread count from the environment (PRESTO_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS): None
    when unset or empty, else a whole number of at least 1; anything else is one clear line (torch
    would silently ignore 0 or 'abc' and run on every core)."""
    import os

    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        n = int(raw.split(",")[0])  # OpenMP also takes a list per nesting level, "4,2"
    except ValueError:
        n = 0
    if n < 1:
        raise PrestoError(f"{name}={raw} is not a thread count", f"set {name} to a whole number such as 1 or 4, "
                          f"or unset it")
    return n


def check_thread_env() -> None:
    for name in ("PRESTO_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        thread_env(name)


# --------------------------------------------------------------------------------------------
# Text


def check_prompt(text: str, where: str = "prompt") -> str:
    if len(text) > MAX_PROMPT_CHARS:
        raise PrestoError(f"{where} is {len(text)} characters long, more than the {MAX_PROMPT_CHARS} "
                          "allowed (the text encoder would silently drop the rest)",
                          "shorten it to a sentence or two")
    return text


def read_utf8(path: str | Path, what: str = "file") -> str:
    """A text file's content; invalid UTF-8 is one line naming the file and the byte offset."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrestoError(f"{what} {path} is not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start})", "save it as UTF-8 text") from None
    except OSError as e:
        raise PrestoError(f"cannot read {what} {path}: {e.strerror or type(e).__name__}") from None


def describe(value: Any) -> str:
    """A short description of a value for an error line, never its full rendering."""
    if isinstance(value, dict):
        return f"a mapping of {len(value)} keys"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# Output paths


def check_out_path(out: Path | None, single: bool, formats: Sequence[str]) -> None:
    """``-o`` must be an audio file of a known format for one clip, a folder for several."""
    if out is None:
        return
    ext = out.suffix.lstrip(".").lower()
    if single and ext and ext not in formats and not out.is_dir():
        raise PrestoUsageError(f"-o {out}: unknown audio extension '.{ext}'",
                               f"use .{', .'.join(formats)}, or a folder name without an extension")
    if not single and ext in formats and not out.is_dir():
        raise PrestoUsageError(f"-o {out} names one audio file but several clips are made",
                               "give a folder, e.g. -o outputs/")


# --------------------------------------------------------------------------------------------
# Evaluation sets


def short_clips(files: Sequence[Path], idx: Sequence[int],
                min_seconds: float = MIN_EVAL_SECONDS) -> tuple[list[int], list[tuple[str, str]]]:
    """Split the embedded clips ``idx`` into those long enough and ``(file, reason)`` for the rest."""
    from presto_cli.audio import audio_info

    keep, errors = [], []
    for i in idx:
        try:
            dur = float(audio_info(files[i])["duration"])
        except PrestoError as e:
            errors.append((str(files[i]), str(e)))
            continue
        if dur < min_seconds:
            errors.append((str(files[i]), f"too short to score ({dur:.2f} s < {min_seconds:g} s)"))
        else:
            keep.append(i)
    return keep, errors


def set_warnings(n_ref: int | None, dim: int, gen_seconds: float | None,
                 ref_seconds: float | None) -> list[str]:
    """Why scores against this reference may mislead: too few clips, or mismatched lengths."""
    notes = []
    if n_ref is not None and n_ref < dim:
        notes.append(f"the reference has {n_ref} clips, fewer than the embedding dimension {dim}: its "
                     "covariance is rank-deficient and FAD is unreliable (use more reference clips)")
    if gen_seconds and ref_seconds:
        ratio = max(gen_seconds, ref_seconds) / min(gen_seconds, ref_seconds)
        if ratio > CLIP_LENGTH_RATIO:
            notes.append(f"generated clips ({gen_seconds:.1f} s) and reference clips ({ref_seconds:.1f} s) "
                         f"differ in length by {ratio:.1f}x: scores mix length with quality "
                         "(use clips of similar length)")
    return notes


def drop_short(files: Sequence[Path], emb, ok: list[int], errors: list[tuple[str, str]],
               min_seconds: float = MIN_EVAL_SECONDS):
    """``embed_files``' result without the clips too short to score (added to ``errors``)."""
    keep, short = short_clips(files, ok, min_seconds)
    if short and not keep:
        raise PrestoError(f"all {len(short)} readable clips in {Path(short[0][0]).parent} are too short to score "
                          f"(under {min_seconds:g} s)", f"evaluate clips of at least {min_seconds:g} s")
    rows = [ok.index(i) for i in keep]
    return emb[rows], keep, list(errors) + short
