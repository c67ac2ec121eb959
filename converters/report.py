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

from edgekit.converters.outputs import targets_by_output
from edgekit.errors import InvalidArgumentError
from edgekit.qtyping import CALIBRATED
from edgekit.runtime.metrics import ece, nll

__all__ = [
    "COLLAPSE_POINTS",
    "VALUE_CURVE_T",
    "AccuracyCollapseWarning",
    "ConversionReport",
    "KerasReference",
    "build_report",
    "ece",
    "evaluate",
    "keras_reference",
    "nll",
    "tflite_probs",
    "value_quality",
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
    heldout: dict | None = None
    calibration: dict | None = None

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
        if self.heldout is not None:
            lines.extend(_heldout_value_lines(self.heldout))
        if self.accuracy is not None:
            lines.extend(_quality_lines(self.accuracy))
        lines.extend(_calibration_lines(self.heldout, self.calibration))
        for w in self.warnings:
            loud = "ACCURACY COLLAPSE" in w
            add(("!!! " if loud else "warning: ") + w)
        return "\n".join(lines)


def _heldout_value_lines(heldout: dict) -> list[str]:
    """The table's lines for the value outputs' held-out fits (noise variance or variance scale)."""
    lines = []
    for name, fit in (heldout.get("outputs") or {}).items():
        if not fit.get("fitted") or ("noise_variance" not in fit and "variance_scale" not in fit):
            continue
        if fit.get("noise_variance") is not None:
            what = "noise variance   " + ", ".join(f"{v:.4g}" for v in fit["noise_variance"])
        else:
            what = f"variance scale   {fit['variance_scale']:.4g}"
        lines.append(f"{what} ({name!r}; held-out NLL {fit['before']['nll']:.4f} -> {fit['after']['nll']:.4f}, "
                     f"{fit['examples']} examples, T={fit['samples']})")
    return lines


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}" if abs(v) < 1e4 else f"{v:.3g}"


def _quality_lines(a: dict) -> list[str]:
    """The table's lines for :func:`evaluate`'s figures: one block per output measured."""
    lines = []
    outputs = a.get("outputs") or {"probs": {"task": "classification", **a}}
    several = len(outputs) > 1
    for name, o in outputs.items():
        if o["task"] == "classification":
            which = f"output {name!r} " if several else ""
            lines.append(f"accuracy         {which}on {a['n']} samples, T={a['samples']} MC samples")
            lines.append(f"  {'model':<10}{'determ.':>9}{'MC acc':>9}{'NLL':>8}{'ECE':>8}")
            for key in ("keras", "tflite"):
                r = o[key]
                det = "-" if r["deterministic_accuracy"] is None else f"{100 * r['deterministic_accuracy']:.2f}"
                lines.append(f"  {key:<10}{det:>9}{100 * r['mc_accuracy']:>9.2f}{r['nll']:>8.4f}{r['ece']:>8.4f}")
            lines.append(f"  MC accuracy change: {o['mc_accuracy_delta_points']:+.2f} points")
        else:
            part = {"noise_variance": "with the file's noise variance", "log_variance": "with the predicted variance",
                    None: "no aleatoric part: the model's uncertainty only"}[o["aleatoric"]]
            lines.append(f"values           output {name!r} on {a['n']} targets, {100 * o['level']:g}% interval, {part}")
            lines.append(f"  {'T':>5}{'RMSE keras':>12}{'tflite':>9}{'NLL keras':>11}{'tflite':>9}"
                         f"{'cover keras':>13}{'tflite':>8}")
            for c in o["curve"]:
                k, t = c["keras"], c["tflite"]
                lines.append(f"  {c['samples']:>5}{k['rmse']:>12.4f}{t['rmse']:>9.4f}{_num(k['nll']):>11}"
                             f"{_num(t['nll']):>9}{100 * k['coverage']:>12.1f}%{100 * t['coverage']:>7.1f}%")
            if o["rmse_ratio"] is not None:
                lines.append(f"  RMSE change: {100 * (o['rmse_ratio'] - 1):+.2f}%")
    return lines


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


@dataclass(frozen=True)
class KerasReference:
    """The float Keras model's MC samples and dropout-off outputs on some inputs (:func:`keras_reference`).

    Attributes:
        names: Keras' output names, in ``model.outputs`` order.
        samples: per output, ``[N, T, *shape]`` float32 MC samples.
        deterministic: per output, ``[N, *shape]`` the dropout-off outputs.

    It unpacks as ``(MC mean, dropout-off)`` of the first output, ``[N, C]`` each, as the
    one-output API did: ``mc_mean, det = keras_reference(model, x)``.
    """

    names: tuple[str, ...]
    samples: tuple[np.ndarray, ...]
    deterministic: tuple[np.ndarray, ...]

    @property
    def n(self) -> int:
        return int(self.samples[0].shape[0])

    @property
    def t(self) -> int:
        return int(self.samples[0].shape[1])

    @property
    def mean(self) -> np.ndarray:
        """The first output's MC mean ``[N, *shape]``."""
        return _sample_mean(self.samples[0])

    def __iter__(self):
        return iter((self.mean, self.deterministic[0]))


def _sample_mean(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1)


def _keras_reference(model, x, samples: int, rows: int) -> KerasReference:
    import tensorflow as tf

    from edgekit.converters.export import _mc_layers, _split
    from edgekit.layers import dropout_off
    from edgekit.mc import _as_list, output_names

    names = output_names(model)
    # Same shortcut as the runtime: the deterministic trunk once, the head T times.
    first = next((layer for layer in _mc_layers(model) if layer.rate > 0), None)
    trunk, head, _ = _split(model, first)
    net = head or model

    def call(m, batch) -> list[np.ndarray]:
        # Eager calls on large batches: a tf.function here would be retraced on every evaluate()
        # (new model, new shapes), and one traced under dropout_off() would keep dropout off.
        # Keras warns when a model with a named input gets a bare tensor; the call is right.
        with _warnings.catch_warnings():
            _warnings.filterwarnings("ignore", message=r"(?s)The structure of `inputs` doesn't match")
            return [np.asarray(o) for o in _as_list(m(tf.constant(batch), training=False), names)]

    chunk = max(1, rows // samples)
    parts: list[list[np.ndarray]] = []
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        if trunk is not None:
            xb = call(trunk, xb)[0]
        rep = np.repeat(xb, samples, axis=0)  # input-major: a reshape gives [k, T, *shape]
        parts.append([o.reshape(len(xb), samples, *o.shape[1:]) for o in call(net, rep)])
    with dropout_off():
        det = [call(model, x[i : i + rows]) for i in range(0, len(x), rows)]
    width = len(parts[0])
    return KerasReference(
        names=tuple(names[:width]),
        samples=tuple(np.concatenate([p[j] for p in parts]).astype(np.float32, copy=False) for j in range(width)),
        deterministic=tuple(np.concatenate([d[j] for d in det]) for j in range(width)),
    )


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
    The first output of the file (see :func:`evaluate` for every output).
    """
    from edgekit.runtime import MCModel

    model = MCModel(tflite, threads=threads, seed=seed, probe=False)  # the converter's own output
    x = np.asarray(x, dtype=np.float32)
    chunk = max(1, rows // samples)
    mc = [model.sample(x[i : i + chunk], samples, rows=rows)[:, :samples].mean(axis=1)
          for i in range(0, len(x), chunk)]
    strategy = model.strategy_at(samples, inputs=min(chunk, len(x)))
    return np.concatenate(mc), model.deterministic(x, rows=rows), strategy


def keras_reference(model, x, *, samples: int = 100, rows: int = 5000) -> KerasReference:
    """The float Keras model's MC samples and dropout-off outputs on ``x``, every output, for :func:`evaluate`.

    Compute it once and pass it as ``reference=`` when one model is converted in several modes:
    the Keras side of the comparison is the same for all of them. It unpacks as ``(MC mean,
    dropout-off)`` of the first output (:class:`KerasReference`).
    """
    _check_samples(samples)
    return _keras_reference(model, np.asarray(x, dtype=np.float32), samples, rows)


def _check_samples(samples) -> None:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise InvalidArgumentError(f"Expected `samples` to be a positive int. Received: samples={samples!r}")


VALUE_CURVE_T = (1, 10, 30, 100, 300, 1000)
"""The T at which value outputs are measured (those below the evaluated T, and T itself)."""


def _keras_index(entries: list[dict], keras_names: tuple[str, ...]) -> dict[str, int]:
    """File output name -> Keras output index. A one-output model's output is renamed in the file
    (``probs`` / ``value``, :mod:`edgekit.converters.outputs`); several keep Keras' names."""
    if len(keras_names) == 1:
        return {entries[0]["name"]: 0}
    return {n: i for i, n in enumerate(keras_names)}


def _class_of(spec, arr: np.ndarray) -> np.ndarray:
    """Class probabilities from one class output's own array (a sigmoid unit p -> [1 - p, p])."""
    a = arr.reshape(*arr.shape[:-1], -1)
    return np.concatenate([1.0 - a, a], axis=-1) if spec.activation == "sigmoid" else a


def value_quality(spec, rows: np.ndarray, targets: np.ndarray) -> dict:
    """RMSE, Gaussian NLL (nats per value) and coverage of the central ``spec.interval`` interval of
    value output ``spec`` from sample rows ``[N, T, D]`` (the file's layout,
    :class:`edgekit.runtime.plan.OutputSpec`), summarized as the runtime does
    (:func:`edgekit.runtime.summaries.summarize_value_output`)."""
    from edgekit.runtime.metrics import gaussian_nll, interval_coverage, rmse
    from edgekit.runtime.summaries import summarize_value_output

    s = summarize_value_output(spec, rows)
    # One sample without an aleatoric part has no spread: no likelihood to speak of.
    spread = rows.shape[1] > 1 or s.aleatoric_std is not None
    return {"rmse": rmse(s.mean, targets), "nll": gaussian_nll(s.mean, s.total_std**2, targets) if spread else None,
            "coverage": interval_coverage(s.low, s.high, targets)}


def _value_entry(spec, k_rows, t_rows, targets, det, samples: int, strategy: str) -> dict:
    points = sorted({t for t in VALUE_CURVE_T if t < samples} | {samples})
    curve = [{"samples": t, "keras": value_quality(spec, k_rows[:, :t], targets),
              "tflite": value_quality(spec, t_rows[:, :t], targets)} for t in points]
    from edgekit.runtime.metrics import rmse

    keras_m = {**curve[-1]["keras"], "deterministic_rmse": None if det is None else rmse(det, targets)}
    tfl_m = {**curve[-1]["tflite"], "strategy": strategy}
    aleatoric = ("log_variance" if spec.variance is not None else
                 "noise_variance" if spec.noise_variance is not None else None)
    return {"task": "regression", "level": spec.interval, "aleatoric": aleatoric, "keras": keras_m, "tflite": tfl_m,
            "rmse_ratio": tfl_m["rmse"] / keras_m["rmse"] if keras_m["rmse"] > 0 else None, "curve": curve}


def evaluate(converted, model, x, y, *, samples: int = 100, seed: int = 0, rows: int = 5000,
             reference: KerasReference | None = None) -> ConversionReport:
    """Return ``converted.report`` with ``accuracy`` filled in (and a collapse warning if any).

    Per output of the file with targets in ``y``:

    - a class output: deterministic and MC accuracy, NLL and ECE (the mean of T uncalibrated
      samples), Keras against the file, and the MC accuracy change in points;
    - a value output: RMSE, Gaussian NLL and the coverage of the file's central interval (90% by
      default) against T (:data:`VALUE_CURVE_T` up to ``samples``), Keras against the file. Both
      sides are summarized as the runtime summarizes the file's samples, with the aleatoric part
      the file carries (its fitted noise variance, or the variance the Keras head itself
      predicts), so the comparison measures what the conversion changed.

    ``accuracy["outputs"]`` has one entry per output measured; the first class output's figures
    are also at the top level (``keras``, ``tflite``, ``mc_accuracy_delta_points``).

    Args:
        converted: a :class:`~edgekit.converters.ConvertedModel`.
        model: the float Keras model it came from (before folding).
        x: inputs (the test set).
        y: targets: integer labels of a class output or values of a value output (an array for a
            one-output model), or ``{file output name: targets}`` (outputs without targets are
            not measured).
        samples: MC samples per input (T).
        seed: seeds the numpy generator of the masks the runtime draws (None: unseeded).
        rows: inputs x samples evaluated per batch (memory bound).
        reference: :func:`keras_reference` of ``model`` on ``x`` with the same ``samples``
            (computed here when None).

    Raises:
        InvalidArgumentError: inputs or targets of the wrong shape, labels out of range,
            a reference for other inputs or another T.
    """
    from edgekit.converters.export import check_representative_data
    from edgekit.runtime import MCModel

    in_shape = tuple(model.inputs[0].shape[1:])
    x = check_representative_data(x, in_shape, "x")
    _check_samples(samples)
    file = MCModel(converted.tflite, threads=2, seed=seed, probe=False)  # the converter's own output
    specs = file.plan.outputs
    targets = targets_by_output(y, specs, len(x), "test")
    if not targets:
        raise InvalidArgumentError(f"Expected targets for at least one output of {[s.name for s in specs]}. "
                                   f"Received: none")
    if reference is None:
        reference = _keras_reference(model, x, samples, rows)
    if isinstance(reference, tuple):  # (MC mean, dropout-off) of a one-output model, without samples
        raise InvalidArgumentError("Expected a KerasReference from keras_reference(). Received: a tuple")
    if reference.n != len(x):
        raise InvalidArgumentError(f"Expected a reference for {len(x)} inputs. Received: {reference.n} rows")
    if reference.t != samples:
        raise InvalidArgumentError(f"Expected a reference of T={samples} samples. Received: T={reference.t}")
    index = _keras_index(converted.metadata["outputs"], reference.names)
    # A fixed-batch file draws T in whole batches: the first T of them are an unbiased T-sample
    # estimate, the same T as the Keras side's.
    t_rows = file.sample_rows(x, samples, rows=rows)[:, :samples]
    strategy = file.strategy_at(samples, inputs=min(max(1, rows // samples), len(x)))
    k_rows = np.empty_like(t_rows)
    for spec in specs:
        k_rows[..., slice(*spec.columns)] = reference.samples[index[spec.name]].reshape(len(x), samples, -1)
        if spec.variance_columns is not None:
            k_rows[..., slice(*spec.variance_columns)] = (
                reference.samples[index[spec.variance.name]].reshape(len(x), samples, -1))

    from edgekit.runtime.summaries import class_probs

    outputs: dict[str, dict] = {}
    test_calibration = None
    warns = list(converted.report.warnings)
    several = len(specs) > 1
    for spec in specs:
        if spec.name not in targets:
            continue
        yt, k_det = targets[spec.name], reference.deterministic[index[spec.name]]
        if spec.task == "classification":
            t_det = file.deterministic(x, rows=rows, output=spec.name)
            k_mc = _sample_mean(class_probs(spec, k_rows))
            t_probs = class_probs(spec, t_rows)
            t_mc = _sample_mean(t_probs)
            if test_calibration is None:  # the first class output's calibration figures on the test set
                t_cal = None if spec.calibration is None else _sample_mean(spec.calibration.apply(t_probs))
                test_calibration = _test_calibration(t_mc, t_cal, yt, spec)
            keras_m = _metrics(k_mc, yt, _class_of(spec, k_det))
            tfl_m = {**_metrics(t_mc, yt, t_det), "strategy": strategy}
            delta = 100.0 * (tfl_m["mc_accuracy"] - keras_m["mc_accuracy"])
            outputs[spec.name] = {"task": "classification", "keras": keras_m, "tflite": tfl_m,
                                  "mc_accuracy_delta_points": delta}
            if delta < -COLLAPSE_POINTS:
                which = f"output {spec.name!r} of the " if several else ""
                msg = (f"ACCURACY COLLAPSE: {which}the {converted.report.quantization} model's MC accuracy is "
                       f"{-delta:.2f} points under the float Keras model ({100 * tfl_m['mc_accuracy']:.2f}% vs "
                       f"{100 * keras_m['mc_accuracy']:.2f}%)")
                _warnings.warn(msg, AccuracyCollapseWarning, stacklevel=2)
                warns.append(msg)
        else:
            det = k_det.reshape(len(x), *spec.shape)
            outputs[spec.name] = _value_entry(spec, k_rows, t_rows, yt, det, samples, strategy)
    acc: dict = {"n": len(x), "samples": samples}
    first_class = next((v for v in outputs.values() if v["task"] == "classification"), None)
    if first_class is not None:
        acc.update(keras=first_class["keras"], tflite=first_class["tflite"],
                   mc_accuracy_delta_points=first_class["mc_accuracy_delta_points"])
    acc["outputs"] = outputs
    return dataclasses.replace(converted.report, accuracy=acc, warnings=tuple(warns), calibration=test_calibration)


# --------------------------------------------------------------------------- calibration and abstention


def _test_calibration(raw: np.ndarray, calibrated: np.ndarray | None, y: np.ndarray, spec) -> dict | None:
    """The first output's calibration and abstention figures on labelled (test) data: accuracy, ECE,
    NLL and Brier of the MC mean before and after the file's temperature, the risk-coverage curve
    of what the device reports (by 1 - confidence) and the abstention threshold's coverage."""
    from edgekit.converters.calibrate import class_metrics, risk_coverage_summary

    if spec.task != "classification":
        return None
    shown = raw if calibrated is None else calibrated
    correct = shown.argmax(axis=1) == y
    out = {"output": spec.name, "examples": len(y), "before": class_metrics(raw, y),
           "after": None if calibrated is None else class_metrics(calibrated, y),
           "risk_coverage": {"score": "confidence", **risk_coverage_summary(1.0 - shown.max(axis=1), correct)},
           "abstain": None}
    if spec.abstain is not None:
        kept = ~spec.abstain.abstain(shown)
        out["abstain"] = {"coverage": float(kept.mean()),
                          "selective_accuracy": float(correct[kept].mean()) if kept.any() else None}
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _calibration_lines(heldout: dict | None, test: dict | None) -> list[str]:
    """The report table's calibration, abstention and risk-coverage lines (one block per class output)."""
    lines: list[str] = []
    add = lines.append
    fits = (heldout or {}).get("outputs") or {}
    if heldout is None and test is not None:
        add("calibration      none: no held-out data, the file runs uncalibrated")
    for name, fit in fits.items():
        if "risk_coverage" not in fit:  # a value output, or one without targets
            continue
        tag = "" if len(fits) == 1 else f" [{name}]"
        cal = fit.get("calibration")
        where = f"{heldout['examples']} held-out inputs, T={heldout['samples']}"
        if cal is None:
            add(f"calibration{tag}      none asked (--calibration none); fits on {where}")
        elif cal["applied"]:
            t = cal["calibration"]
            add(f"calibration{tag}      {heldout['method']} on {where}: applied (temperature {t['temperature']:.3f}"
                + (f", MI slope {t['mi_slope']:.3f}" if t.get("mi_slope") else "") + ")")
        else:
            add(f"calibration{tag}      {heldout['method']} on {where}: {cal['reason']}")
        rows = []
        if cal is not None:
            rows += [("held-out", "before", cal["before"]),
                     ("held-out", "after", cal["after"] if cal["applied"] else None)]
        if test is not None and test["output"] == name:
            rows += [("test", "before", test["before"]), ("test", "after", test["after"])]
        if rows:
            add(f"  {'data':<10}{'':<8}{'acc':>7}{'ECE':>8}{'NLL':>8}{'Brier':>8}")
            for data, when, m in rows:
                if m is None:
                    add(f"  {data:<10}{when:<8}{'(not applied: as before)':>31}")
                else:
                    add(f"  {data:<10}{when:<8}{100 * m['accuracy']:>7.2f}{m['ece']:>8.4f}{m['nll']:>8.4f}"
                        f"{m['brier']:>8.4f}")
        ab = fit.get("abstain")
        if ab is not None:
            text = (f"abstention{tag}       abstain when 1 - confidence > {ab['threshold']:.4f}: answers "
                    f"{_pct(ab['heldout_coverage'])}% of held-out "
                    f"(selective accuracy {_pct(ab['heldout_selective_accuracy'])}%)")
            t_ab = (test or {}).get("abstain") if (test or {}).get("output") == name else None
            if t_ab is not None:
                text += f", {_pct(t_ab['coverage'])}% of test ({_pct(t_ab['selective_accuracy'])}%)"
            add(text)
        rc = fit["risk_coverage"]
        t_rc = (test or {}).get("risk_coverage") if (test or {}).get("output") == name else None
        text = f"risk-coverage{tag}    AURC {rc['aurc']:.4f} held-out"
        if t_rc is not None:
            text += f", {t_rc['aurc']:.4f} test"
            curve = t_rc["curve"]
            picks = [c for c in curve if round(c[0] * 100) in (50, 80, 90, 100)]
            text += "; test risk at " + "/".join(f"{round(c[0] * 100)}" for c in picks) + "% coverage: " + "/".join(
                f"{100 * c[1]:.1f}" for c in picks) + "%"
        add(text + " (by 1 - confidence)")
    return lines
