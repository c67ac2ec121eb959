"""The errors edgekit raises on purpose: one base class, so a caller can tell them from bugs.

Every error edgekit raises with a message meant for the user derives from :class:`EdgekitError`.
The CLI turns exactly these into one line on stderr and exit status 1; anything else is a bug and
keeps its traceback.

Each class also derives from the built-in exception a Python user would expect (``ValueError``
for a bad value, ``TypeError`` for a wrong type, ``FileNotFoundError`` for a missing file), so
``except ValueError`` keeps working. Messages follow Keras: "Expected ... Received: ...".

>>> from edgekit.errors import EdgekitError
>>> try:
...     model.predict(x, budget_ms=-1)
... except EdgekitError as e:
...     print(e)

This module imports nothing, so every layer (runtime and devices included) may use it.
"""

from __future__ import annotations

__all__ = [
    "EdgekitError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "MissingFileError",
    "UnsupportedModelError",
]


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose."""


class InvalidArgumentError(EdgekitError, ValueError):
    """An argument, option or data value is outside what edgekit accepts."""


class InvalidTypeError(EdgekitError, TypeError):
    """An argument has the wrong type."""


class MissingFileError(EdgekitError, FileNotFoundError):
    """An input file or folder does not exist."""


class UnsupportedModelError(EdgekitError, ValueError):
    """A model uses something edgekit cannot convert or run; the message names what is supported."""
