"""Devices, distributed setup, the stderr console and the one progress helper.

torch is imported inside the functions that need it, so that importing the console costs no torch.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

from rich.console import Console

from presto_cli.errors import PrestoError

console = Console(stderr=True)  # logs and progress go to stderr; data goes to stdout


PROGRESS_EVERY_ENV = "PRESTO_PROGRESS_EVERY"  # seconds between progress lines when stderr is no terminal
PROGRESS_EVERY_DEFAULT = 30.0
_QUIET = {"on": False}


def set_quiet(on: bool = True) -> None:
    """``--quiet``: no progress bar and no progress lines for the rest of the command."""
    _QUIET["on"] = bool(on)


def progress_every() -> float:
    """Seconds between progress lines on a stderr that is not a terminal (PRESTO_PROGRESS_EVERY,
    default 30; 0: a line at every update)."""
    import math

    raw = os.environ.get(PROGRESS_EVERY_ENV, "").strip()
    if not raw:
        return PROGRESS_EVERY_DEFAULT
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not math.isfinite(v) or v < 0:
        from presto_cli.errors import PrestoUsageError

        raise PrestoUsageError(f"{PROGRESS_EVERY_ENV}={raw!r} is not a number of seconds >= 0",
                               f"set it to e.g. {PROGRESS_EVERY_DEFAULT:g}, or unset it")
    return v


def _hms(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def _num(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:.1f}"


class _Lines:
    """Plain progress lines for a stderr that is not a terminal (nohup, CI, systemd, a pipe): one
    line per bar every ``every`` seconds, with done/total, rate, elapsed time and ETA, read from the
    rich Progress's tasks (which it keeps whether or not it draws them); a last line at the end when
    any was printed."""

    def __init__(self, bar, every: float):
        import time

        self._bar, self._every, self._clock = bar, every, time.monotonic
        self._last = self._clock()
        self._base: dict = {}  # task id -> (time, completed) it started from (rate, elapsed)
        self.printed = 0

    def begin(self, task, done: float = 0) -> None:
        """Rate and elapsed time of ``task`` count from now and ``done``."""
        self._base[task] = (self._clock(), done)

    def poll(self) -> None:
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            self.emit(now)

    def emit(self, now: float | None = None, final: bool = False) -> None:
        now = self._clock() if now is None else now
        for t in self._bar.tasks:
            if not t.description and t.total is None:
                continue
            t0, c0 = self._base.get(t.id, (now, t.completed))
            el = now - t0
            parts = [f"{_num(t.completed)}/{_num(t.total)} ({100 * t.completed / t.total:.0f}%)"
                     if t.total else f"{_num(t.completed)} done"]
            rate = (t.completed - c0) / el if el > 0 and t.completed > c0 else None
            if rate is not None:
                parts.append(f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g} s each")
            parts.append(f"elapsed {_hms(el)}")
            if t.total and not final:
                left = t.total - t.completed
                parts.append("ETA " + (_hms(left / rate) if rate else "?") if left > 0 else "ETA 0:00")
            note = t.fields.get("note") or ""
            line = f"[progress] {t.description}: " + ", ".join(parts) + (f"  {note}" if note else "")
            console.print(line, markup=False, highlight=False, soft_wrap=True)
            self.printed += 1


class Ticker:
    """What :func:`progress` yields: ``advance(n)``, ``update(done, total)``, or call it as a
    ``(done, total)`` callback; ``label(text)`` changes the description, ``note(text)`` the text after
    the times; ``row(label, total)`` adds
    another bar below (one per model, say) and returns its Ticker."""

    def __init__(self, bar, task, lines: "_Lines | None" = None):
        self._bar, self._task, self._lines = bar, task, lines
        if lines is not None and task is not None:
            lines.begin(task)

    def _poll(self) -> None:
        if self._lines is not None:
            self._lines.poll()

    def advance(self, n: float = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)
            self._poll()

    def update(self, done: float, total: Optional[float] = None) -> None:
        if self._task is not None:
            self._bar.update(self._task, completed=done, **({"total": total} if total is not None else {}))
            self._poll()

    __call__ = update

    def start_at(self, done: float) -> None:
        """Set the count without counting it as work done now (a resumed run's first step)."""
        if self._task is not None:
            self._bar.update(self._task, completed=done)
            if self._lines is not None:
                self._lines.begin(self._task, done)

    def label(self, text: str) -> None:
        if self._task is not None:
            self._bar.update(self._task, description=text)

    def note(self, text: str) -> None:
        """Text shown after the bar and its times (a loss, say)."""
        if self._task is not None:
            self._bar.update(self._task, note=text)

    def row(self, label: str, total: Optional[float] = None) -> "Ticker":
        return Ticker(self._bar, self._bar.add_task(label, total=total, note=""), self._lines)


def progress_enabled(quiet: bool = False) -> bool:
    """Bars are drawn only on an interactive stderr, by rank 0, never under --json (quiet) or --quiet."""
    return not quiet and not _QUIET["on"] and console.is_terminal and is_rank0()


def progress_lines_enabled(lines: bool = True) -> bool:
    """Progress lines instead of a bar: stderr is not a terminal, rank 0, no --quiet. They go to
    stderr, so they are printed under --json too (stdout keeps only the JSON document)."""
    return lines and not _QUIET["on"] and not console.is_terminal and is_rank0()


@contextmanager
def progress(label: Optional[str], total: Optional[float] = None, quiet: bool = False,
             transient: bool = True, lines: bool = True) -> Iterator[Ticker]:
    """A progress bar on stderr for work longer than a couple of seconds (not drawn when ``quiet``,
    under --json, or when stderr is not a terminal). When stderr is not a terminal, a plain line per
    bar every PRESTO_PROGRESS_EVERY seconds instead (default 30; ``lines=False`` or --quiet: none).
    ``total=None`` draws an indeterminate bar; ``label=None`` starts with no bar, for rows added
    with :meth:`Ticker.row`."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=console,
                   disable=not progress_enabled(quiet), transient=transient)
    text = _Lines(bar, progress_every()) if progress_lines_enabled(lines) else None
    with bar:
        yield Ticker(bar, None if label is None else bar.add_task(label, total=total, note=""), text)
        if text is not None and text.printed:
            text.emit(final=True)


def resolve_device(name: str = "auto") -> "torch.device":  # noqa: F821
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device(f"cuda:{local % torch.cuda.device_count()}")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PrestoError(f"device '{name}' asked for but CUDA is not available",
                              "use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise PrestoError("device 'mps' asked for but MPS is not available", "use --device cpu")
        return torch.device("mps")
    raise PrestoError(f"unknown device '{name}'", "use auto, cpu, cuda or cuda:N")


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment (0, 1 when not distributed)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_rank0() -> bool:
    return dist_info()[0] == 0


SMALL_MODEL_PARAMS = 50_000_000


def cpu_threads_for(n_params: int, device) -> Optional[int]:
    """Threads to use for a model of ``n_params`` on ``device`` (None: leave torch's default).

    On a CPU a small model runs no faster on two threads than on one, and far slower when another
    process holds the other core, because every one of its many small ops waits for both threads
    (measured, 2 cores, load average 3.8: demo-s at 4 steps sampled in 0.06 s on one thread and 4.0 s
    on two; the demo teacher in 1.09 s vs 1.35 s). So small models get one thread, unless the user
    chose a number (OMP_NUM_THREADS or PRESTO_THREADS).
    """
    from presto_cli.validate import thread_env

    if thread_env("PRESTO_THREADS"):
        return thread_env("PRESTO_THREADS")
    if str(getattr(device, "type", device)) != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None
    return 1 if n_params < SMALL_MODEL_PARAMS else None


def set_cpu_threads_for(model_path, device) -> None:
    """Apply :func:`cpu_threads_for` before loading the artefact at ``model_path``, its parameter
    count bounded from the file size (at least 2 bytes a weight), so that loading it (dtype casts,
    copies: many small parallel ops too) already runs on the chosen threads."""
    if isinstance(device, str):
        device = resolve_device(device)
    n = cpu_threads_for(os.path.getsize(model_path) // 2, device)
    if n is not None:
        import torch

        torch.set_num_threads(n)
