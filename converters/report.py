"""What a conversion produced, and how well it still predicts: one report, two renderings.

:func:`build_report` reads the ``.tflite`` bytes (with the flatbuffer schema that ships with
``ai_edge_litert``; nothing is executed) and records:

- the file size, raw and gzip-compressed (gzip shows what sparsity and low-entropy weights buy on
  a download; the device still maps the raw size);
- the builtin ops per signature;
- the **float islands** of a quantized model: ops of the ``full`` signature that still read or
  write float32 tensors (``RANDOM_UNIFORM`` has no integer kernel, ELU has none in int8, ...),
  apart from the ``QUANTIZE``/``DEQUANTIZE`` ops at their borders;
- what BatchNorm folding did and what it could not do, and every conversion warning.

:func:`evaluate` adds accuracy on labelled data (the real Fashion-MNIST test set in the CLI and
the benchmark), against the float Keras model:

- **MC accuracy** (T samples, default 100), **NLL** and **ECE** (15 equal-width confidence bins)
  of the mean MC prediction, for the Keras model and for the ``.tflite`` file run by the stock
  LiteRT interpreter (``trunk`` once, ``head`` at batch T: the file's own ``RANDOM_UNIFORM``, as a
  stock-interpreter user runs it; the ``masked`` twin the edgekit runtime feeds is not used here).
- **Deterministic accuracy** means "dropout off": every MC layer is the identity, which is what
  Keras' own ``Dropout`` does at inference. For the Keras model it is measured with
  :func:`edgekit.layers.dropout_off`. An in-graph ``.tflite`` has no dropout-off path, so its
  deterministic accuracy is ``None``; a mask-input file gets it by feeding each MCDropout its
  *expected* keep-mask ``1 - rate`` (which cancels the ``1/(1 - rate)`` scaling exactly).
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

from edgekit.runtime.metrics import ece, nll

__all__ = [
    "ConversionReport",
    "AccuracyCollapseWarning",
    "build_report",
    "check_device",
    "evaluate",
    "ece",
    "nll",
    "tflite_ops",
    "COLLAPSE_POINTS",
]

COLLAPSE_POINTS = 2.0  # MC accuracy drop (percentage points) that counts as a collapse
_BORDER_OPS = {"QUANTIZE", "DEQUANTIZE"}
# Tensor types that are not "float islands": indices, shapes, masks and comparison results.
_INDEX_TYPES = {"INT32", "INT64", "BOOL", "STRING", "UINT32", "UINT64"}


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
        if self.quantization in ("int8", "int16x8"):
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


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _read(tflite: bytes):
    schema = _schema()
    model = schema.Model.GetRootAs(tflite, 0)
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = op_names.get(code, f"OP_{code}")
        if name == "CUSTOM":
            name = f"CUSTOM:{(oc.CustomCode() or b'').decode()}"
        codes.append(name)
    sig_of = {}
    signatures = {}
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        key = sd.SignatureKey().decode()
        sig_of[sd.SubgraphIndex()] = key
        signatures[key] = {
            "inputs": [sd.Inputs(j).Name().decode() for j in range(sd.InputsLength())],
            "outputs": [sd.Outputs(j).Name().decode() for j in range(sd.OutputsLength())],
        }
    graphs = {}
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        types = [type_names.get(sg.Tensors(t).Type(), "?") for t in range(sg.TensorsLength())]
        ops = []
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            ins = [types[t] for t in op.InputsAsNumpy() if t >= 0] if op.InputsLength() else []
            outs = [types[t] for t in op.OutputsAsNumpy() if t >= 0] if op.OutputsLength() else []
            ops.append((codes[op.OpcodeIndex()], ins, outs))
        graphs[sig_of.get(g, f"subgraph_{g}")] = (ops, types)
    return signatures, graphs


def tflite_ops(tflite: bytes) -> dict[str, dict[str, int]]:
    """Builtin op counts per signature (``{"full": {"FULLY_CONNECTED": 3, ...}, ...}``)."""
    _, graphs = _read(tflite)
    return {k: dict(sorted(Counter(op for op, _, _ in ops).items())) for k, (ops, _) in graphs.items()}


def build_report(tflite: bytes, *, fold_report=None, warnings: tuple[str, ...] = (), raw_bytes=None) -> ConversionReport:
    """The static part of the report (no inference is run)."""
    from edgekit.runtime.metadata import read_metadata

    meta = read_metadata(tflite) or {}
    signatures, graphs = _read(tflite)
    ops = {k: dict(sorted(Counter(op for op, _, _ in g).items())) for k, (g, _) in graphs.items()}
    mode = meta.get("quantization", {}).get("mode", "float32")
    islands: Counter = Counter()
    if mode in ("int8", "int16x8"):
        main = graphs.get("full", next(iter(graphs.values())))[0]
        for op, ins, outs in main:
            if op not in _BORDER_OPS and "FLOAT32" in ins + outs:
                islands[op] += 1
    dtypes = sorted({t.lower() for _, types in graphs.values() for t in types if t not in _INDEX_TYPES})
    split = meta.get("split", {}).get("reason") if isinstance(meta.get("split"), dict) else None
    extra = {"bytes_before_metadata": int(raw_bytes)} if raw_bytes is not None else {}
    return ConversionReport(
        quantization=mode,
        io=meta.get("quantization", {}).get("io", "float32"),
        stochastic=meta.get("stochastic", "unknown"),
        seed=meta.get("seed"),
        size_bytes=len(tflite),
        gzip_bytes=len(gzip.compress(tflite, compresslevel=9, mtime=0)),
        signatures=signatures,
        ops=ops,
        float_islands=dict(sorted(islands.items())),
        tensor_dtypes=tuple(dtypes),
        fold=fold_report.to_dict() if fold_report is not None else None,
        warnings=tuple(warnings),
        split_reason=split,
        extra=extra,
    )


def check_device(report: ConversionReport, device, metadata: dict) -> ConversionReport:
    """Check the report against a device profile (or its name); raise ``ValueError`` if it does not fit."""
    from edgekit.devices import check_model, load_profile

    profile = load_profile(device) if isinstance(device, str) else device
    problems = list(
        check_model(
            profile,
            ops=report.op_names,
            model_bytes=report.size_bytes,
            dtypes=report.tensor_dtypes,
            io_dtype=report.io,
        )
    )
    if profile.stochastic != metadata.get("stochastic") and metadata.get("stochastic") != "none":
        problems.append(
            f"{profile.name} needs stochastic={profile.stochastic!r}; the model is {metadata.get('stochastic')!r}"
        )
    if problems:
        raise ValueError(
            f"The converted model does not fit device {profile.name!r}. Expected: only what the profile allows. "
            f"Received: {'; '.join(problems)}"
        )
    return dataclasses.replace(report, device={"name": profile.name, "problems": []})


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


class _Runner:
    """Run one signature of a ``.tflite`` with float arrays, handling int8 I/O."""

    def __init__(self, interpreter, name):
        self.runner = interpreter.get_signature_runner(name)
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()

    def __call__(self, **arrays) -> np.ndarray:
        feed = {}
        for k, v in arrays.items():
            d = self.inputs[k]
            if d["dtype"] == np.float32:
                feed[k] = v.astype(np.float32)
            else:
                scale, zp = d["quantization"]
                info = np.iinfo(d["dtype"])
                feed[k] = np.clip(np.round(v / scale + zp), info.min, info.max).astype(d["dtype"])
        out = self.runner(**feed)
        (key, val), = out.items()
        d = self.outputs[key]
        if d["dtype"] != np.float32:
            scale, zp = d["quantization"]
            val = (val.astype(np.float32) - zp) * scale
        return np.asarray(val, dtype=np.float32)


def _tflite_probs(tflite: bytes, meta: dict, x, samples: int, rows: int, seed: int):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite, num_threads=2)
    sigs = meta["signatures"]
    masked = [m for m in meta["mc_layers"] if m.get("mask_input")]
    rng = np.random.default_rng(seed)

    def masks(n, expected=False):
        out = {}
        for m in masked:
            shape = (n, *m["mask_shape"])
            out[m["mask_input"]] = (
                np.full(shape, 1.0 - m["rate"], np.float32) if expected
                else (rng.random(shape) >= m["rate"]).astype(np.float32)
            )
        return out

    split = sigs.get("trunk") is not None
    full = _Runner(it, "full")
    trunk = _Runner(it, "trunk") if split else None
    head = _Runner(it, "head") if split else None
    chunk = max(1, rows // samples)
    mc = []
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        if split:
            feats = trunk(x=xb)
            p = head(features=np.repeat(feats, samples, axis=0), **masks(len(xb) * samples))
        else:
            p = full(x=np.repeat(xb, samples, axis=0), **masks(len(xb) * samples))
        mc.append(p.reshape(len(xb), samples, -1).mean(axis=1))
    det = None
    only_mcdropout = all(m["kind"] in ("MCDropout", "MCSpatialDropout1D", "MCSpatialDropout2D", "MCSpatialDropout3D")
                         for m in masked)
    if masked and only_mcdropout and len(masked) == len(meta["mc_layers"]):
        det = np.concatenate([full(x=x[i : i + rows], **masks(len(x[i : i + rows]), True))
                              for i in range(0, len(x), rows)])
    return np.concatenate(mc), det


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
        seed: seeds the numpy generator that fills mask inputs (mask-input files only).
        rows: inputs x samples evaluated per batch (memory bound).
        reference: :func:`keras_reference` of ``model`` on ``x`` with the same ``samples``
            (computed here when None).
    """
    from edgekit.converters.export import check_representative_data

    in_shape = tuple(model.inputs[0].shape[1:])
    x = check_representative_data(x, in_shape, "x")
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"Expected one label per input. Received: {len(x)} inputs and {len(y)} labels")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"Expected `samples` to be a positive int. Received: samples={samples!r}")
    if reference is None:
        reference = _keras_probs(model, x, samples, rows)
    k_mc, k_det = reference
    if k_mc.shape[0] != len(x):
        raise ValueError(f"Expected a reference for {len(x)} inputs. Received: {k_mc.shape[0]} rows")
    t_mc, t_det = _tflite_probs(converted.tflite, converted.metadata, x, samples, rows, seed)
    keras_m, tfl_m = _metrics(k_mc, y, k_det), _metrics(t_mc, y, t_det)
    delta = 100.0 * (tfl_m["mc_accuracy"] - keras_m["mc_accuracy"])
    acc = {"n": int(len(x)), "samples": samples, "keras": keras_m, "tflite": tfl_m,
           "mc_accuracy_delta_points": delta}
    warns = list(converted.report.warnings)
    if delta < -COLLAPSE_POINTS:
        msg = (f"ACCURACY COLLAPSE: the {converted.report.quantization} model's MC accuracy is {-delta:.2f} points "
               f"under the float Keras model ({100 * tfl_m['mc_accuracy']:.2f}% vs {100 * keras_m['mc_accuracy']:.2f}%)")
        _warnings.warn(msg, AccuracyCollapseWarning, stacklevel=2)
        warns.append(msg)
    return dataclasses.replace(converted.report, accuracy=acc, warnings=tuple(warns))
