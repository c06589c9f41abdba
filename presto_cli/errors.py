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
