"""Claiming output paths, so that two runs aimed at one file cannot both write it.

A claim is a lock file ``.<name>.presto-lock`` beside the output, created with O_CREAT|O_EXCL and
holding the owner's pid. Of two runs the first to create it wins; the other is refused with one
line naming the path and the pid. A lock left by a process that no longer exists (SIGKILL) is
stale and taken over. Existing outputs are refused unless ``force``.
"""
from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from presto_cli.errors import PrestoError, known_os_error


def lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.presto-lock"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner(lock: Path) -> int:
    try:
        return int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _take_stale(lock: Path, pid: int) -> None:
    """Move a stale lock aside (atomically: only one of several racers gets it), then drop it."""
    aside = lock.with_name(f"{lock.name}.stale.{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if _owner(aside) != pid:  # someone took it over between our read and our rename: put it back
        try:
            os.link(aside, lock)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def _create(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    return True


def _unwritable(path: Path, e: OSError) -> PrestoError:
    """A folder the output cannot be written to, named (not its hidden lock file)."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return known_os_error(e) or PrestoError(f"the disk holding {path.parent} is full")
    return PrestoError(f"cannot write to {path.parent}: {e.strerror or type(e).__name__.lower()}",
                       "choose an output folder you can write")


def claim_one(path: Path, force: bool = False) -> Path:
    """Claim ``path`` for this process; returns the lock file to release."""
    path = Path(path)
    lock = lock_path(path)
    for _ in range(3):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            made = _create(lock)
        except OSError as e:  # no permission, read-only, full, or not a real folder (/proc)
            raise _unwritable(path, e) from None
        if made:
            break
        pid = _owner(lock)
        if pid == os.getpid():
            break
        if _alive(pid):
            raise PrestoError(f"{path} is taken: another presto run (pid {pid}) is writing it",
                              "wait for it to finish, or choose another output path")
        _take_stale(lock, pid)
    else:
        raise PrestoError(f"{path} is taken: cannot claim its lock {lock}", "choose another output path")
    if path.exists() and not force:
        lock.unlink(missing_ok=True)
        raise PrestoError(f"{path} already exists", "pass --force to overwrite it")
    return lock


def check_free(paths: Iterable[Path], force: bool = False) -> None:
    """Refuse, before any work, outputs that exist (unless ``force``) or that a live run holds;
    cheap (no lock is made), so a long job can claim each path only when its clip starts."""
    for p in paths:
        p = Path(p)
        pid = _owner(lock_path(p)) if lock_path(p).exists() else 0
        if pid and pid != os.getpid() and _alive(pid):
            raise PrestoError(f"{p} is taken: another presto run (pid {pid}) is writing it",
                              "wait for it to finish, or choose another output path")
        if p.exists() and not force:
            raise PrestoError(f"{p} already exists", "pass --force to overwrite it")


_DEFERRED = ("SIGINT", "SIGTERM", "SIGHUP")


@contextmanager
def _signals_deferred():
    """Hold back Ctrl-C, SIGTERM and SIGHUP for the block and deliver them as it ends: a signal
    between creating a lock file and recording it would leave the lock behind. Python runs signal
    handlers in the main thread whichever thread the OS hands the signal to, so the handlers
    themselves are swapped for a recorder (an OS signal mask would not do: torch's threads would
    take the signal instead); signals without a Python handler are left alone."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    held = {}
    for name in _DEFERRED:
        sig = getattr(signal, name, None)
        if sig is not None and callable(signal.getsignal(sig)):
            held[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        for sig in got:
            signal.raise_signal(sig)  # now, to the handler it was meant for


_HELD: list["claim_outputs"] = []


def release_all() -> None:
    """Release every claim this process still holds (the CLI calls it when a command ends)."""
    while _HELD:
        _HELD.pop().release()


atexit.register(release_all)


class claim_outputs:
    """``with claim_outputs(paths, force):`` hold every path's claim for the block's duration."""

    def __init__(self, paths: Iterable[Path], force: bool = False):
        self.paths = list(dict.fromkeys(Path(p) for p in paths))
        self.force = force
        self.locks: list[Path] = []

    def acquire(self) -> "claim_outputs":
        """Claim every path (all or none); held until :meth:`release` or :func:`release_all`."""
        try:
            for p in self.paths:
                with _signals_deferred():  # a lock made is a lock recorded, so release() finds it
                    self.locks.append(claim_one(p, self.force))
        except BaseException:
            self.release()
            raise
        _HELD.append(self)
        return self

    __enter__ = acquire

    def release(self) -> None:
        for lock in self.locks:
            if _owner(lock) == os.getpid():
                lock.unlink(missing_ok=True)
        self.locks = []
        if self in _HELD:  # a long run claims batch by batch: keep the list short
            _HELD.remove(self)

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
