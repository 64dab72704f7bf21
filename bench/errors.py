"""User-facing errors: one clear line, no traceback.

Anything a user can cause (a wrong name, a missing root, a bad parameter, bad data)
raises a :class:`BenchError`; the CLI prints ``error: <message>`` and exits 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """An error caused by input the user controls; its message is the whole story."""


class UnknownNameError(BenchError, KeyError):
    """A name that is not in a registry; the message suggests the closest ones."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        available = sorted(available)
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(available) if available else "(none)"
        super().__init__(f"Unknown {kind} {name!r}.{hint} Available: {shown}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DataError(BenchError):
    """Data that cannot be used as given (NaN features, too few samples, corrupt files)."""
