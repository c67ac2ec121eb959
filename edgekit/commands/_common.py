"""Shared CLI plumbing: library errors become one line on stderr and exit 1."""

from __future__ import annotations

import functools
import json
import sys

import click

__all__ = ["library_errors", "json_option", "echo_json", "LIBRARY_ERRORS"]

# Errors that edgekit's library code raises on purpose, with a message meant for the user.
LIBRARY_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, RuntimeError, KeyError)


def library_errors(fn):
    """Turn a library error into ``click.ClickException``: "Error: <one line>", exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except LIBRARY_ERRORS as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, KeyError):
                message = f"{type(e).__name__}: {message}"
            raise click.ClickException(message) from None

    return wrapper


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
