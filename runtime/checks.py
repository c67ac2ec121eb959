"""What goes into a model and what comes out, checked: options, inputs, and class probabilities.

Every check raises with a Keras-style "Expected ... Received: ..." message. They run inside every
prediction, so the common case (a float32 array of the right shape, a small probability output)
takes a fast path of a few microseconds; nothing is skipped on it.
"""

from __future__ import annotations

import math

import numpy as np

from edgekit.errors import EdgekitError, InvalidArgumentError, InvalidTypeError

__all__ = ["OutputError", "check_input", "check_model_options", "check_options", "check_probs", "check_row",
           "output_checker"]


class OutputError(EdgekitError, RuntimeError):
    """The model ran but its output is not what its metadata says: probabilities, finite values (a damaged
    or foreign model)."""


def check_options(samples, budget_ms, tolerance) -> None:
    """``samples`` an integer >= 1, ``budget_ms`` finite > 0, ``tolerance`` in (0, 1); each may be None."""
    if samples is not None and (not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 1):
        raise InvalidArgumentError(f"Expected `samples` to be an integer >= 1. Received: samples={samples!r}")
    if budget_ms is not None and (isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float))
                                  or not math.isfinite(budget_ms) or budget_ms <= 0):
        raise InvalidArgumentError(f"Expected `budget_ms` to be a finite number > 0. Received: budget_ms={budget_ms!r}")
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                  or not 0 < tolerance < 1):
        raise InvalidArgumentError(f"Expected `tolerance` to be a number in (0, 1). Received: tolerance={tolerance!r}")


def check_model_options(threads, rng, seed) -> None:
    """``MCModel``'s options: ``threads`` an integer >= 1, ``rng`` "auto" or "graph", ``seed`` None or >= 0."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise InvalidArgumentError(f"Expected `threads` to be an integer >= 1. Received: threads={threads!r}")
    if rng not in ("auto", "graph"):
        raise InvalidArgumentError(f"Expected `rng` to be 'auto' or 'graph'. Received: rng={rng!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise InvalidArgumentError(f"Expected `seed` to be a non-negative integer or None. Received: seed={seed!r}")


def check_input(x, shape: tuple[int, ...], int8_ok: bool = False, ones: np.ndarray | None = None) -> np.ndarray:
    """``x`` as a batch ``[N, *shape]`` (one input gets a batch axis), refused with a clear message if it
    is not a float array of that shape, is empty, or holds NaN/Inf. ``int8_ok``: int8 arrays pass too
    (already-quantized input for an int8 model). ``ones``: float32 ones of one input's size, which
    makes the common single-input check a BLAS dot product (the fastest finite-sum numpy has)."""
    if type(x) is np.ndarray and x.dtype == np.float32 and (x.shape == shape or x.shape[1:] == shape):
        # The common case: a finite sum means no NaN or Inf (NaN propagates, Inf stays Inf or meets
        # -Inf as NaN); only an overflowing sum of finite values needs the full check below.
        x = x[None] if x.shape == shape else x
        if x.shape[0] == 1 and ones is not None and x.flags.c_contiguous:
            total = float(np.dot(x.reshape(-1), ones))
        else:
            total = float(np.add.reduce(x, None)) if x.shape[0] else math.nan
        if math.isfinite(total):
            return x
    elif not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError):
            raise InvalidTypeError(f"Expected a numpy array as input. Received: {type(x).__name__}") from None
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise InvalidTypeError(f"Expected a float input (float32 preferred). Received: dtype={x.dtype}")
    if x.dtype.kind in "iu" and not (int8_ok and x.dtype == np.int8):
        raise InvalidTypeError(f"Expected a float input (float32), already scaled as the model expects (see the "
                               f"metadata's input.range). Received: dtype={x.dtype}")
    if x.shape == shape:
        x = x[None]
    if x.ndim != len(shape) + 1 or x.shape[1:] != shape:
        raise InvalidArgumentError(
            f"Input has the wrong shape. Expected {shape} for one input or (batch, {', '.join(map(str, shape))}) "
            f"for a batch. Received: shape={x.shape}"
        )
    if x.shape[0] == 0:
        raise InvalidArgumentError(f"Input batch is empty. Expected at least one input of shape {shape}. "
                                   f"Received: shape={x.shape}")
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            raise InvalidArgumentError(
                f"Input contains NaN or Inf. Expected finite values. Received: {int((~finite).sum())} non-finite "
                f"value(s), the first at index {tuple(int(i) for i in bad)} = {x[tuple(bad)]!r}"
            )
    return x


def check_probs(probs: np.ndarray, num_classes: int, slack: float, source: str) -> None:
    """Refuse an output that is not ``[samples, num_classes]`` probabilities: values in [0, 1] within
    ``slack`` and rows summing to 1 within ``slack * num_classes``.

    A damaged op (say SOFTMAX replaced by another op in a file with a recomputed digest) can run
    without error and return garbage.
    """
    if probs.ndim != 2 or probs.shape[1] != num_classes:  # e.g. SOFTMAX flipped to SQUEEZE
        raise OutputError(f"{source}: the model's output has the wrong shape. Expected [samples, {num_classes}]. "
                          f"Received: shape={probs.shape}")
    tol = slack * max(1, num_classes)
    if probs.shape[0] == 1:  # one sample (the latency-critical case): Python floats beat numpy's per-call cost
        check_row(probs[0].tolist(), slack, source)
        return
    if probs.size <= 64:
        flat = probs.ravel().tolist()
        lo, hi = min(flat), max(flat)
        sums = [math.fsum(flat[i:i + num_classes]) for i in range(0, len(flat), num_classes)]
        sums_ok = all(abs(s - 1) <= tol for s in sums)  # a NaN or Inf anywhere makes its row fail here
        smin, smax = min(sums), max(sums)
    else:
        s = probs.sum(axis=1)
        lo, hi = float(probs.min()), float(probs.max())
        sums_ok = float(np.abs(s - 1).max()) <= tol
        smin, smax = float(np.nanmin(s)), float(np.nanmax(s))
    # NaN fails every comparison (and makes its row's sum NaN), Inf fails the range: no separate
    # finiteness pass is needed.
    if not (lo >= -slack and hi <= 1 + slack and sums_ok):
        raise OutputError(
            f"{source}: the model's output is not class probabilities. Expected values in [0, 1] "
            f"summing to 1 per sample. Received: min={lo:g}, max={hi:g}, sums in [{smin:g}, {smax:g}]"
        )


def check_row(flat: list[float], slack: float, source: str) -> None:
    """:func:`check_probs` for one sample's probabilities as Python floats (``probs[0].tolist()``)."""
    lo, hi, total = min(flat), max(flat), math.fsum(flat)
    # A NaN or Inf anywhere makes the sum fail (min/max may skip a NaN).
    if not (lo >= -slack and hi <= 1 + slack and abs(total - 1) <= slack * max(1, len(flat))):
        raise OutputError(
            f"{source}: the model's output is not class probabilities. Expected values in [0, 1] "
            f"summing to 1 per sample. Received: min={lo:g}, max={hi:g}, sums in [{total:g}, {total:g}]"
        )


def output_checker(plan, source: str):
    """A function that refuses sample rows ``[S, D]`` whose outputs are not what ``plan`` says:
    class probabilities (softmax rows summing to 1, a sigmoid unit in [0, 1]) and finite values.
    A file with one softmax output (the common case) gets :func:`check_probs` itself."""
    outs = plan.outputs
    if len(outs) == 1 and len(plan.fetch) == 1 and outs[0].activation == "softmax":
        o = outs[0]
        return lambda rows: check_probs(rows, o.num_classes, o.prob_slack, source)
    width = plan.width

    def check(rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[1] != width:
            raise OutputError(f"{source}: the model's outputs have the wrong shape. Expected [samples, {width}] "
                              f"(the outputs side by side). Received: shape={rows.shape}")
        for o in outs:
            a, b = o.columns
            part = rows[:, a:b]
            if o.activation == "softmax":
                check_probs(part, o.num_classes, o.prob_slack, source)
            elif o.activation == "sigmoid":
                lo, hi = float(part.min()), float(part.max())
                if not (lo >= -o.prob_slack and hi <= 1 + o.prob_slack):  # NaN fails both
                    raise OutputError(f"{source}: output {o.name!r} is not a probability. Expected values in [0, 1]. "
                                      f"Received: min={lo:g}, max={hi:g}")
            else:
                cols = [part] if o.variance_columns is None else [part, rows[:, slice(*o.variance_columns)]]
                for c in cols:
                    if not np.isfinite(c).all():
                        raise OutputError(
                            f"{source}: value output {o.name!r} holds NaN or Inf in "
                            f"{int((~np.isfinite(c)).sum())} of {c.size} sampled values. Expected finite values "
                            f"(a damaged file, or inputs far outside the training range)."
                        )

    return check
