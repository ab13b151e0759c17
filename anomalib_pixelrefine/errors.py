"""The package's refusals: bad input a user can trigger, reported in one line before any expensive work.

Every refusal class derives from :class:`PixelRefineError` (and from the built-in exception it specialises, e.g.
``ValueError``), so the ``pixelrefine`` command prints them as one ``pixelrefine: error: ...`` line without a
traceback, and Python callers can catch them all at once.
"""

from __future__ import annotations

__all__ = ["InvalidArgumentError", "PixelRefineError"]


class PixelRefineError(Exception):
    """Base of this package's one-line refusals (the message names the problem and what to do)."""


class InvalidArgumentError(PixelRefineError, ValueError):
    """An argument out of its range or of the wrong kind (the message names the owner, argument and value)."""
