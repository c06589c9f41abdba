"""Known, user-facing errors: the CLI turns these into one line and exit code 1."""
from __future__ import annotations


class PrestoError(Exception):
    """A problem with the user's input or environment, with a hint on how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line
        return f"{self.message} ({self.hint})" if self.hint else self.message


class PrestoUsageError(PrestoError):
    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C's KeyboardInterrupt would be, so that both take the
    same path (finished outputs kept, the one in progress discarded, claims released); the exit
    code is the shell's 128 + signal number (143 for SIGTERM, 129 for SIGHUP)."""

    def __init__(self, signum: int, name: str):
        super().__init__(name)
        self.signum = signum
        self.name = name
        self.exit_code = 128 + signum


def interrupt_code(e: BaseException) -> int:
    """The exit code of an interruption: 130 for Ctrl-C, 128 + N for signal N (see Interrupted)."""
    return getattr(e, "exit_code", 130)


_DISK_FULL = ("No space left on device", "Disk quota exceeded")


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _stdout_failing() -> bool:
    """Whether stdout goes somewhere full: /dev/full, or a file on a disk with no space left."""
    import os
    import stat
    import sys

    try:
        fd = sys.stdout.fileno()
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode):
            return os.path.exists("/dev/full") and st.st_rdev == os.stat("/dev/full").st_rdev
        if stat.S_ISREG(st.st_mode):
            v = os.fstatvfs(fd)
            return v.f_bavail * v.f_frsize < 1 << 20
    except (OSError, ValueError, AttributeError):
        pass
    return False


def silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush of stdout cannot fail again."""
    import os
    import sys

    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


def disk_full(where: str) -> PrestoError:
    return PrestoError(f"the disk is full: no space left on the device writing {where}",
                       "free some space, or write somewhere else")


def known_os_error(e: BaseException) -> PrestoError | None:
    """An environment failure the user can fix, as one line: a full disk (ENOSPC/EDQUOT, stdout on
    a full device included), a folder without write permission, a read-only file system. None for
    anything else."""
    import errno

    for x in _chain(e):
        if isinstance(x, PrestoError):
            return x
        code = getattr(x, "errno", None) if isinstance(x, OSError) else None
        name = getattr(x, "filename", None) if isinstance(x, OSError) else None
        if code == errno.EPIPE:  # the reader of stdout went away (| head): nothing more to say
            return PrestoError("stdout was closed by the program reading it")
        if code in (errno.ENOSPC, errno.EDQUOT) or any(s in str(x) for s in _DISK_FULL):
            if name is None and _stdout_failing():
                return PrestoError("cannot write to stdout: no space left on the device it goes to",
                                   "redirect stdout to a file on a disk with free space")
            return disk_full(str(name) if name else "the output")
        if code in (errno.EACCES, errno.EPERM) and name:
            return PrestoError(f"permission denied: cannot write {name}",
                               "choose a folder you can write, or fix its permissions")
        if code == errno.EROFS:
            return PrestoError(f"{name or 'the output'} is on a read-only file system",
                               "write somewhere else")
    return None
