"""Hostile ``.npy`` inputs for ``edgekit predict`` on the MLP fixture (20 features).

:func:`make_npy_corpus` gives valid arrays in unusual layouts (float16, big-endian, Fortran order),
which must run, and bad ones, which must end in one ``Error:`` line: truncations, a pickled object
whose unpickling would create a marker file, a header declaring 10**13 rows in a 200-byte file,
negative and nonsensical headers, strings, complex numbers, structured dtypes, NaN, an empty batch,
wrong ranks.
"""

from __future__ import annotations

import io
import os

import numpy as np

from .corrupt import Case

__all__ = ["PickleBomb", "make_npy_corpus"]


class PickleBomb:
    """Unpickling it runs ``touch MARKER``: proof that an input's pickle payload ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _npy(array, **kwargs) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, **kwargs)
    return buf.getvalue()


def make_npy_corpus(marker: str) -> list[Case]:
    good = _npy(np.full((1, 20), 0.5, np.float32))
    valid = {
        "float32": good,
        "float16": _npy(np.full((1, 20), 0.5, np.float16)),
        "big-endian": _npy(np.full((1, 20), 0.5, ">f4")),
        "fortran": _npy(np.asfortranarray(np.full((3, 20), 0.5, np.float32))),
        "one-input": _npy(np.full(20, 0.5, np.float32)),
    }
    bad = {f"truncate-{cut}": good[:cut] for cut in (5, 10, 60, 100, len(good) - 1)}
    bad.update(
        {
            "pickle": _npy(np.array([PickleBomb(marker)], dtype=object), allow_pickle=True),
            "neg-shape": good.replace(b"(1, 20), ", b"(-1, 20),"),
            "void-dtype": good.replace(b"'<f4'", b"'<V9'"),
            "garbage-header": b"\x93NUMPY\x01\x00\x10\x00{'descr': zzzz}\n" + bytes(80),
            "not-npy": b"hello",
            "strings": _npy(np.array([["a"] * 20])),
            "complex": _npy(np.full((1, 20), 1 + 1j)),
            "structured": _npy(np.zeros((1,), dtype=[("a", "f4", (20,))])),
            "nan": _npy(np.full((1, 20), np.nan, np.float32)),
            "empty-batch": _npy(np.zeros((0, 20), np.float32)),
            "rank3": _npy(np.zeros((1, 1, 20), np.float32)),
            "scalar": _npy(np.float32(1)),
        }
    )
    # Once gaps (see tests/test_robust_npy.py), kept apart so each has its own test.
    gaps = {
        "empty-file": b"",  # numpy raises EOFError, which click reports as "Aborted!"
        "huge-shape": good.replace(b"(1, 20)", b"(9999999999999, 20)"),  # 10**13 rows in 200 bytes
    }
    cases = [Case(f"npy:{n}", "npy-valid", n, "valid", d, suffix=".npy") for n, d in valid.items()]
    cases += [Case(f"npy:{n}", "npy-bad", n, "error", d, suffix=".npy") for n, d in bad.items()]
    cases += [Case(f"npy:{n}", "npy-gap", n, "error", d, suffix=".npy") for n, d in gaps.items()]
    return cases
