"""What a conversion produced, and how well it still predicts: one report, two renderings.

:func:`build_report` reads the ``.tflite`` bytes with :mod:`edgekit.runtime.inspect` (the
flatbuffer schema that ships with ``ai_edge_litert``; nothing is executed) and records:

- the file size, raw and gzip-compressed (gzip shows what sparsity and low-entropy weights buy on
  a download; the device still maps the raw size);
- the builtin ops per signature;
- the **float islands** of a quantized model: ops of the ``full`` signature that still read or
  write float32 tensors (``RANDOM_UNIFORM`` has no integer kernel, ELU has none in int8, ...),
  apart from the ``QUANTIZE``/``DEQUANTIZE`` ops at their borders;
- what BatchNorm folding did and what it could not do, and every conversion warning;
- the device it was checked against (:func:`edgekit.devices.check_model`, run by ``convert``).

:func:`evaluate` adds accuracy on labelled data (the real Fashion-MNIST test set in the CLI and
the benchmark), against the float Keras model:

- **MC accuracy** (T samples, default 100), **NLL** and **ECE** (15 equal-width confidence bins)
  of the mean MC prediction, for the Keras model and for the ``.tflite`` file run as ``edgekit
  predict`` runs it (:func:`tflite_probs`: through :class:`edgekit.runtime.MCModel`, the file's one
  signature plan, so the ``masked`` twin fed numpy masks where the file has it; the strategy that
  ran is recorded under ``accuracy.tflite.strategy``).
- **Deterministic accuracy** means "dropout off": every MC layer is the identity, which is what
  Keras' own ``Dropout`` does at inference. For the Keras model it is measured with
  :func:`edgekit.layers.dropout_off`. An in-graph ``.tflite`` has no dropout-off path, so its
  deterministic accuracy is ``None``; a mask-input file gets it by feeding each MCDropout its
  *expected* keep-mask ``1 - rate`` (which cancels the ``1/(1 - rate)`` scaling exactly), through
  :meth:`edgekit.runtime.MCModel.deterministic`.
- A ``.tflite`` MC accuracy more than 2 points under the Keras MC accuracy is an **accuracy
  collapse**: a warning is added and :meth:`ConversionReport.to_table` prints it in capitals.

>>> report = evaluate(result, model, x_test, y_test, samples=100)
>>> print(report.to_table())
>>> json.dumps(report.to_dict())
"""

from __future__ import annotations

import dataclasses
import gzip
import warnings as _warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import InvalidArgumentError
from edgekit.qtyping import CALIBRATED
from edgekit.runtime.metrics import ece, nll

__all__ = [
    "COLLAPSE_POINTS",
    "AccuracyCollapseWarning",
    "ConversionReport",
    "build_report",
    "ece",
    "evaluate",
    "nll",
    "tflite_probs",
]

COLLAPSE_POINTS = 2.0  # MC accuracy drop (percentage points) that counts as a collapse
_BORDER_OPS = {"QUANTIZE", "DEQUANTIZE"}
# Tensor types that are not "float islands": indices, shapes, masks and comparison results.
_INDEX_TYPES = {"int32", "int64", "bool", "string", "uint32", "uint64"}


class AccuracyCollapseWarning(UserWarning):
    """The converted model's MC accuracy is far below the float Keras model's."""


@dataclass(frozen=True)
class ConversionReport:
    """Facts about one converted model. ``to_dict()`` for machines, ``to_table()`` for people."""

    quantization: str
    io: str
    stochastic: str
    seed: int | None
    size_bytes: int
    gzip_bytes: int
    signatures: dict[str, dict[str, list[str]]]
    ops: dict[str, dict[str, int]]
    float_islands: dict[str, int]
    tensor_dtypes: tuple[str, ...]
    fold: dict | None = None
    warnings: tuple[str, ...] = ()
    device: dict | None = None
    accuracy: dict | None = None
    split_reason: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(sorted({op for ops in self.ops.values() for op in ops}))

    def to_table(self) -> str:
        lines = []
        add = lines.append
        add(f"quantization     {self.quantization} (I/O {self.io})")
        seeding = "" if self.stochastic != "in-graph" else (f", seed {self.seed}" if self.seed is not None else ", unseeded")
        add(f"stochastic       {self.stochastic}{seeding}")
        add(f"size             {self.size_bytes:,} bytes raw, {self.gzip_bytes:,} bytes gzip")
        sigs = ", ".join(f"{k}({', '.join(v['inputs'])})" for k, v in self.signatures.items())
        add(f"signatures       {sigs}" + (f"  [no split: {self.split_reason}]" if self.split_reason else ""))
        add(f"ops              {', '.join(self.op_names)}")
        if self.quantization in CALIBRATED:
            islands = ", ".join(f"{k} x{v}" for k, v in sorted(self.float_islands.items())) or "none"
            add(f"float islands    {islands}")
        if self.fold is not None:
            folded = ", ".join(f"{f['layer']}+{f['batchnorm']}" for f in self.fold["folded"]) or "none"
            add(f"BN folded        {folded}")
            for item in self.fold["not_folded"]:
                add(f"BN not folded    {item['batchnorm']}: {item['reason']}")
        if self.device is not None:
            status = "fits" if not self.device["problems"] else "DOES NOT FIT"
            add(f"device           {self.device['name']}: {status}")
            for p in self.device["problems"]:
                add(f"                 - {p}")
        if self.accuracy is not None:
            a = self.accuracy
            add(f"accuracy         on {a['n']} samples, T={a['samples']} MC samples")
            add(f"  {'model':<10}{'determ.':>9}{'MC acc':>9}{'NLL':>8}{'ECE':>8}")
            for key in ("keras", "tflite"):
                r = a[key]
                det = "-" if r["deterministic_accuracy"] is None else f"{100 * r['deterministic_accuracy']:.2f}"
                add(f"  {key:<10}{det:>9}{100 * r['mc_accuracy']:>9.2f}{r['nll']:>8.4f}{r['ece']:>8.4f}")
            add(f"  MC accuracy change: {a['mc_accuracy_delta_points']:+.2f} points")
        for w in self.warnings:
            loud = "ACCURACY COLLAPSE" in w
            add(("!!! " if loud else "warning: ") + w)
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading the file


def build_report(tflite: bytes, *, fold_report=None, warnings: tuple[str, ...] = (), raw_bytes=None) -> ConversionReport:
    """The static part of the report (no inference is run)."""
    from edgekit.runtime import inspect
    from edgekit.runtime.metadata import read_metadata

    meta = read_metadata(tflite) or {}
    ops = inspect.op_counts(tflite)
    mode = meta.get("quantization", {}).get("mode", "float32")
    islands: Counter = Counter()
    if mode in CALIBRATED:
        main = "full" if "full" in ops else next(iter(ops))
        for op, ins, outs in inspect.operators(tflite, main):
            if op not in _BORDER_OPS and "float32" in ins + outs:
                islands[op] += 1
    dtypes = [t for t in inspect.model_dtypes(tflite) if t not in _INDEX_TYPES]
    split = meta.get("split", {}).get("reason") if isinstance(meta.get("split"), dict) else None
    extra = {"bytes_before_metadata": int(raw_bytes)} if raw_bytes is not None else {}
    return ConversionReport(
        quantization=mode,
        io=meta.get("quantization", {}).get("io", "float32"),
        stochastic=meta.get("stochastic", "unknown"),
        seed=meta.get("seed"),
        size_bytes=len(tflite),
        gzip_bytes=len(gzip.compress(tflite, compresslevel=9, mtime=0)),
        signatures=inspect.signatures(tflite),
        ops=ops,
        float_islands=dict(sorted(islands.items())),
        tensor_dtypes=tuple(dtypes),
        fold=fold_report.to_dict() if fold_report is not None else None,
        warnings=tuple(warnings),
        split_reason=split,
        extra=extra,
    )


# --------------------------------------------------------------------------- accuracy


def _metrics(probs: np.ndarray, labels: np.ndarray, det: np.ndarray | None) -> dict:
    return {
        "deterministic_accuracy": None if det is None else float((det.argmax(1) == labels).mean()),
        "mc_accuracy": float((probs.argmax(1) == labels).mean()),
        "nll": nll(probs, labels),
        "ece": ece(probs, labels),
    }


def _keras_probs(model, x, samples: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    from edgekit.converters.export import _mc_layers, _split, call_model
    from edgekit.layers import dropout_off

    # Same shortcut as the runtime: the deterministic trunk once, the head T times.
    first = next((layer for layer in _mc_layers(model) if layer.rate > 0), None)
    trunk, head, _ = _split(model, first)
    # Eager calls on large batches: a tf.function here would be retraced on every evaluate()
    # (new model, new shapes), and one traced under dropout_off() would keep dropout off.
    net = head or model
    chunk = max(1, rows // samples)
    mc = []
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        if trunk is not None:
            xb = call_model(trunk, tf.constant(xb))
        rep = np.repeat(xb, samples, axis=0)
        p = call_model(net, tf.constant(rep)).reshape(len(xb), samples, -1)
        mc.append(p.mean(axis=1))
    with dropout_off():
        det = np.concatenate([call_model(model, tf.constant(x[i : i + rows])) for i in range(0, len(x), rows)])
    return np.concatenate(mc), det


def tflite_probs(tflite: bytes, x, samples: int, *, seed: int | None = 0, rows: int = 5000, threads: int = 2
                 ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The ``.tflite`` file's MC-mean and dropout-off probabilities on ``x``, and the strategy that ran.

    The file runs through :class:`edgekit.runtime.MCModel`, as ``edgekit predict`` runs it: the same
    signature plan (the ``masked`` twin fed numpy masks where the file has it), ``samples`` per
    input, ``rows`` inputs x samples per invoke, every signature at its static batch in a
    fixed-batch file (the runtime pads the last batch and drops the padded rows). Such a file
    draws samples in whole batches: the mean is over the first ``samples`` of them, an unbiased
    ``samples``-sample MC estimate like the Keras side's. The dropout-off probabilities are
    :meth:`~edgekit.runtime.MCModel.deterministic` (None for a file without that path). ``seed``
    seeds the masks the runtime draws (None: unseeded, like ``predict`` without ``--seed``).
    """
    from edgekit.runtime import MCModel

    model = MCModel(tflite, threads=threads, seed=seed, probe=False)  # the converter's own output
    x = np.asarray(x, dtype=np.float32)
    chunk = max(1, rows // samples)
    mc = [model.sample(x[i : i + chunk], samples, rows=rows)[:, :samples].mean(axis=1)
          for i in range(0, len(x), chunk)]
    strategy = model.strategy_at(samples, inputs=min(chunk, len(x)))
    return np.concatenate(mc), model.deterministic(x, rows=rows), strategy


def keras_reference(model, x, *, samples: int = 100, rows: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """The float Keras model's MC-mean and dropout-off probabilities on ``x``, for :func:`evaluate`.

    Compute it once and pass it as ``reference=`` when one model is converted in several modes:
    the Keras side of the comparison is the same for all of them.
    """
    return _keras_probs(model, np.asarray(x, dtype=np.float32), samples, rows)


def evaluate(converted, model, x, y, *, samples: int = 100, seed: int = 0, rows: int = 5000,
             reference: tuple[np.ndarray, np.ndarray] | None = None) -> ConversionReport:
    """Return ``converted.report`` with ``accuracy`` filled in (and a collapse warning if any).

    Args:
        converted: a :class:`~edgekit.converters.ConvertedModel`.
        model: the float Keras model it came from (before folding).
        x, y: inputs and integer labels (the test set).
        samples: MC samples per input (T).
        seed: seeds the numpy generator of the masks the runtime draws (None: unseeded).
        rows: inputs x samples evaluated per batch (memory bound).
        reference: :func:`keras_reference` of ``model`` on ``x`` with the same ``samples``
            (computed here when None).
    """
    from edgekit.converters.export import check_representative_data

    in_shape = tuple(model.inputs[0].shape[1:])
    x = check_representative_data(x, in_shape, "x")
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(y) != len(x):
        raise InvalidArgumentError(f"Expected one label per input. Received: {len(x)} inputs and {len(y)} labels")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"Expected `samples` to be a positive int. Received: samples={samples!r}")
    if reference is None:
        reference = _keras_probs(model, x, samples, rows)
    k_mc, k_det = reference
    if k_mc.shape[0] != len(x):
        raise ValueError(f"Expected a reference for {len(x)} inputs. Received: {k_mc.shape[0]} rows")
    t_mc, t_det, strategy = tflite_probs(converted.tflite, x, samples, seed=seed, rows=rows)
    keras_m, tfl_m = _metrics(k_mc, y, k_det), {**_metrics(t_mc, y, t_det), "strategy": strategy}
    delta = 100.0 * (tfl_m["mc_accuracy"] - keras_m["mc_accuracy"])
    acc = {"n": len(x), "samples": samples, "keras": keras_m, "tflite": tfl_m,
           "mc_accuracy_delta_points": delta}
    warns = list(converted.report.warnings)
    if delta < -COLLAPSE_POINTS:
        msg = (f"ACCURACY COLLAPSE: the {converted.report.quantization} model's MC accuracy is {-delta:.2f} points "
               f"under the float Keras model ({100 * tfl_m['mc_accuracy']:.2f}% vs {100 * keras_m['mc_accuracy']:.2f}%)")
        _warnings.warn(msg, AccuracyCollapseWarning, stacklevel=2)
        warns.append(msg)
    return dataclasses.replace(converted.report, accuracy=acc, warnings=tuple(warns))
