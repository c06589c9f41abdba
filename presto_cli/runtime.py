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


class Ticker:
    """What :func:`progress` yields: ``advance(n)``, ``update(done, total)``, or call it as a
    ``(done, total)`` callback; ``label(text)`` changes the description, ``note(text)`` the text after
    the times; ``row(label, total)`` adds
    another bar below (one per model, say) and returns its Ticker."""

    def __init__(self, bar, task):
        self._bar, self._task = bar, task

    def advance(self, n: float = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def update(self, done: float, total: Optional[float] = None) -> None:
        if self._task is not None:
            self._bar.update(self._task, completed=done, **({"total": total} if total is not None else {}))

    __call__ = update

    def label(self, text: str) -> None:
        if self._task is not None:
            self._bar.update(self._task, description=text)

    def note(self, text: str) -> None:
        """Text shown after the bar and its times (a loss, say)."""
        if self._task is not None:
            self._bar.update(self._task, note=text)

    def row(self, label: str, total: Optional[float] = None) -> "Ticker":
        return Ticker(self._bar, self._bar.add_task(label, total=total, note=""))


def progress_enabled(quiet: bool = False) -> bool:
    """Bars are drawn only on an interactive stderr, by rank 0, and never under --json (quiet)."""
    return not quiet and console.is_terminal and is_rank0()


@contextmanager
def progress(label: Optional[str], total: Optional[float] = None, quiet: bool = False,
             transient: bool = True) -> Iterator[Ticker]:
    """A progress bar on stderr for work longer than a couple of seconds (a no-op when quiet, under
    --json, or when stderr is not a terminal). ``total=None`` draws an indeterminate bar;
    ``label=None`` starts with no bar, for rows added with :meth:`Ticker.row`."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=console,
                   disable=not progress_enabled(quiet), transient=transient)
    with bar:
        yield Ticker(bar, None if label is None else bar.add_task(label, total=total, note=""))


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
