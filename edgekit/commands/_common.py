"""Shared CLI plumbing: option types, JSON output, and library errors as one line on stderr.

- :func:`library_errors`: an :class:`~edgekit.errors.EdgekitError` (an error edgekit raises on
  purpose, with a message for the user) or an ``OSError`` becomes "Error: <one line>" and exit
  status 1. Anything else is a bug and keeps its traceback.
- :data:`DATA`: ``--data`` takes ``fashion-mnist`` or an existing ``.npz`` file; a missing file is a
  usage error (exit status 2), as for every input path (``click.Path(exists=True)``).
"""

from __future__ import annotations

import functools
import json
import math
import sys

import click

from edgekit.errors import EdgekitError

__all__ = [
    "DATA",
    "FASHION_MNIST",
    "LIBRARY_ERRORS",
    "SEED",
    "DataSource",
    "FiniteFloatRange",
    "echo_json",
    "json_option",
    "library_errors",
    "status",
    "stderr_is_tty",
    "warn",
]

# EdgekitError: raised on purpose, the message is meant for the user. OSError: a full disk, a
# permission or a missing folder is the environment, not a bug, and its message names the path.
LIBRARY_ERRORS: tuple[type[BaseException], ...] = (EdgekitError, OSError)

FASHION_MNIST = "fashion-mnist"


def library_errors(fn):
    """Turn a library error into ``click.ClickException``: "Error: <one line>", exit status 1.

    Only :data:`LIBRARY_ERRORS` are turned; a ``TypeError`` or ``KeyError`` from a bug propagates
    with its traceback, so it is seen and reported instead of read as a user mistake.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except LIBRARY_ERRORS as e:
            text = str(e).strip()
            raise click.ClickException(text.splitlines()[0] if text else type(e).__name__) from None

    return wrapper


class DataSource(click.ParamType):
    """``fashion-mnist`` (the installed data set) or the path of an existing ``.npz`` file."""

    name = "fashion-mnist|FILE.npz"

    def convert(self, value, param, ctx):
        import os

        if value == FASHION_MNIST or (isinstance(value, str) and os.path.isfile(value)):
            return value
        self.fail(f"Expected 'fashion-mnist' or an existing .npz file. Received: {value!r}", param, ctx)


DATA = DataSource()


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which compare false to every bound)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"Expected a finite number. Received: {value!r}", param, ctx)
        return rv


SEED = click.IntRange(0, 2**32 - 1)
"""A random seed: numpy's generators take 0 to 2**32 - 1 (``keras.utils.set_random_seed`` too)."""

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines instead of a table.")


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable))


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def status(message: str) -> None:
    """A progress line on stderr for people at a terminal (stdout stays clean for ``--json``)."""
    if stderr_is_tty():
        click.echo(message, err=True)
