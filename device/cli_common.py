"""What the `edgecap` sub-command modules share: exit codes, the user-error type, small formatting."""
from __future__ import annotations

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 1."""


def percent(confidence: float | None) -> str:
    """A caption's confidence (device/records.py) as people read it."""
    return "confidence ?" if confidence is None else f"confidence {confidence:.0%}"
