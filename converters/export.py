"""Keras -> one stochastic ``.tflite``: signatures, seeds, masks, quantization and metadata.

:func:`convert` turns a Keras 3 model that uses edgekit's MC layers into the bytes of one
``.tflite`` file laid out as ``docs/format.md`` describes. It does no file I/O:

>>> from edgekit.converters import convert
>>> result = convert(model, quantize="int8", representative_data=x_train[:500])
>>> open("model.tflite", "wb").write(result.tflite)          # the CLI writes atomically
>>> print(result.report.to_table())
>>> tpu = convert(model, device="coral-edgetpu", representative_data=x_train[:500])  # the profile's defaults

What happens, in order:

0. **Settings.** ``quantize``, ``stochastic``, ``int8_io`` and ``batch`` not given come from the device
   profile (:func:`edgekit.devices.conversion_settings`, the rule ``edgekit convert --device`` uses too).
1. **Checks.** One input, any number of outputs (each a class or a value output:
   :mod:`edgekit.converters.outputs`), no nested MC layer we cannot see; representative data (when
   given) has the model's input shape, is non-empty and finite.
2. **BatchNorm folding** (:mod:`edgekit.converters.fold`), unless ``fold_batchnorm=False``.
3. **Split.** ``trunk`` is everything before the input of the first MC layer and ``head`` the
   rest, so the runtime computes the trunk once and the head at batch T. No split (``trunk``
   absent) when the first MC layer acts on the model input or the cut does not separate the graph.
4. **Export** through ``keras.export.ExportArchive`` (endpoints sharing the tracked weights)
   and ``tf.lite.TFLiteConverter.from_saved_model`` with builtin ops only. Masks are drawn by the
   builtin ``RANDOM_UNIFORM`` op (``stochastic="in-graph"``) or are named inputs ``mask_0..``
   (``stochastic="mask-input"``). Unseeded in-graph files (not ``int16x8``) also get ``masked``:
   ``head`` (or ``full`` without a trunk) with its keep-masks as inputs ``mask_i``, which the
   edgekit runtime fills from numpy instead of paying for the slow ``RANDOM_UNIFORM`` kernel.
   With a static ``batch`` (fixed-shape targets), ``trunk`` is traced at batch 1 and the others
   at ``batch``, so every shape is a constant.
5. **Seeds.** TensorFlow bakes op seeds into the file when a global seed is set, and
   ``keras.utils.set_random_seed`` sets one. The export traces with the global seed cleared, so
   every ``RANDOM_UNIFORM`` op has seed 0/seed2 0 and every interpreter draws its own masks; the
   caller's global seed is restored afterwards. ``seed=S`` traces with ``tf.random.set_seed(S)``
   instead: reproducible masks, identical on every device (a warning says so).
6. **Quantization**: ``float32``, ``float16``, ``dynamic`` (int8 weights), ``int8`` (full integer
   with float islands where no int8 kernel exists, e.g. ``RANDOM_UNIFORM``; float or int8 I/O) and
   ``int16x8``. Calibration runs every signature on the representative data.
7. **Rewrites** (:mod:`edgekit.converters.rewrite`): static reshapes (Keras' Flatten/Reshape
   compute their shape from the run-time batch; each becomes a ``RESHAPE`` to the constant
   ``[-1, ...]``, without a dynamic output), int8 value outputs' ranges widened (they would
   saturate at the calibrated range), intermediate tensor names stripped.
8. **Metadata** (``edgekit`` entry + SHA-256) via :func:`edgekit.runtime.metadata.embed_metadata`.
9. **Report** (:mod:`edgekit.converters.report`): sizes, ops, float islands; accuracy is added by
   :func:`edgekit.converters.report.evaluate` when test data is at hand.
10. **Device fit** (with ``device``): :func:`edgekit.devices.check_model` on the file's facts
    (:func:`edgekit.runtime.inspect.model_facts`); :class:`edgekit.devices.DeviceFitError` lists
    every reason it does not fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edgekit.converters.outputs import describe_outputs, named, outputs_metadata
from edgekit.converters.rewrite import finish_flatbuffer
from edgekit.devices import ROLES, DeviceFitError, DeviceProfile, conversion_settings
from edgekit.errors import InvalidArgumentError, InvalidTypeError, UnsupportedModelError
from edgekit.layers import MC_LAYERS, mask_inputs
from edgekit.qtyping import CALIBRATED, Quantization, Stochastic
from edgekit.runtime.metadata import FORMAT, twin_mask_inputs

__all__ = [
    "ConvertedModel",
    "FixedSeedWarning",
    "NoMCLayerWarning",
    "call_model",
    "check_representative_data",
    "convert",
]

_MAX_CALIBRATION = 1000  # more samples barely move the ranges and cost conversion time


class NoMCLayerWarning(UserWarning):
    """The model has no MC layer: the export is deterministic."""


class FixedSeedWarning(UserWarning):
    """A fixed seed was baked into the file: every device draws the same masks."""


@dataclass(frozen=True)
class ConvertedModel:
    """The result of :func:`convert`.

    Attributes:
        tflite: the bytes of the ``.tflite`` file (metadata and digest embedded).
        metadata: the ``edgekit`` metadata dict embedded in the file (see ``docs/format.md``).
        report: a :class:`edgekit.converters.report.ConversionReport` (sizes, ops, float islands,
            folding, warnings; accuracy once :func:`~edgekit.converters.report.evaluate` ran).
        warnings: every warning the conversion raised, as plain strings.
    """

    tflite: bytes
    metadata: dict
    report: Any
    warnings: tuple[str, ...] = field(default=())

    @property
    def signatures(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.metadata["signatures"].items() if v)


# --------------------------------------------------------------------------- checks


def _mc_layers(model: keras.Model) -> list[keras.layers.Layer]:
    found = []
    for layer in model.layers:
        if isinstance(layer, MC_LAYERS):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            inner = _mc_layers(layer)
            if inner:
                raise UnsupportedModelError(
                    "Expected MC layers at the top level of the model. Received: MC layers inside the nested "
                    f"model {layer.name!r} ({', '.join(m.name for m in inner)}); flatten the model first"
                )
    return found


def _io_shape(model: keras.Model) -> tuple:
    if not isinstance(model, keras.Model):
        raise InvalidTypeError(f"Expected a keras.Model. Received: {type(model).__name__}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise UnsupportedModelError(
            "Expected a built functional or Sequential model with a known input shape. Received: a model "
            "that has never been called (give it a keras.Input)"
        )
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"Expected a model with one input (any number of outputs). Received: {len(inputs)} inputs "
            f"({', '.join(str(t.shape) for t in inputs)}); several inputs are not supported: concatenate them "
            f"into one input first"
        )
    in_shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in in_shape):
        raise UnsupportedModelError(f"Expected a fixed input shape (besides the batch). Received: {(None, *in_shape)}")
    if any(inputs[0] is o for o in outputs):
        raise UnsupportedModelError("Expected a model whose output differs from its input. Received: output == input")
    return in_shape


def check_representative_data(data, input_shape: Sequence[int], what: str = "representative_data") -> np.ndarray:
    """Return ``data`` as a float32 array after checking shape, size and finiteness."""
    if data is None:
        raise InvalidArgumentError(f"Expected `{what}` (an array of model inputs). Received: None")
    try:
        arr = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"Expected `{what}` to be a numeric array. Received: {type(data).__name__} ({e})") from None
    want = tuple(int(d) for d in input_shape)
    if arr.ndim == len(want) + 1 and arr.shape[0] == 0:
        raise InvalidArgumentError(f"Expected a non-empty `{what}`. Received: an array of shape {arr.shape}")
    if arr.ndim != len(want) + 1 or tuple(arr.shape[1:]) != want:
        raise InvalidArgumentError(
            f"Expected `{what}` of shape (n, {', '.join(map(str, want))}). Received: shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InvalidArgumentError(f"Expected finite values in `{what}`. Received: {bad} NaN or infinite values")
    return arr


def _check_image(spec, input_shape) -> dict | None:
    if spec is None:
        return None
    keys = ("height", "width", "channels", "scale", "offset")
    if not isinstance(spec, dict) or set(spec) != set(keys):
        raise InvalidArgumentError(f"Expected `input_image` to be a dict with keys {keys}. Received: {spec!r}")
    out = {k: (int(spec[k]) if k in keys[:3] else float(spec[k])) for k in keys}
    pixels = out["height"] * out["width"] * out["channels"]
    if pixels != int(np.prod(input_shape)):
        raise InvalidArgumentError(
            f"Expected `input_image` to describe {int(np.prod(input_shape))} values (the model input "
            f"{tuple(input_shape)}). Received: {out['height']}x{out['width']}x{out['channels']} = {pixels}"
        )
    return out


def call_model(model, x) -> np.ndarray:
    """``model(x)`` in inference mode as numpy, without Keras' input-structure warning.

    Keras 3 warns when a functional model whose input is named (``keras.Input(name="x")``) is
    called with a bare tensor instead of a one-element list; the call is correct either way.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s)The structure of `inputs` doesn't match")
        return keras.ops.convert_to_numpy(model(x, training=False))


# --------------------------------------------------------------------------- seeds


def _global_seed() -> int | None:
    # tf.compat.v1.random.get_seed(None) is the public way to read the global seed.
    return tf.compat.v1.random.get_seed(None)[0]


@contextlib.contextmanager
def _tracing_seed(seed: int | None) -> Iterator[None]:
    """Trace with the global seed cleared (unseeded ops) or set to ``seed``; restore afterwards."""
    previous = _global_seed()
    tf.random.set_seed(seed)
    try:
        yield
    finally:
        tf.random.set_seed(previous)


# --------------------------------------------------------------------------- split


def _split(model: keras.Model, first_mc) -> tuple[keras.Model | None, keras.Model | None, str]:
    """(trunk, head, reason): trunk/head models, or (None, None, why there is no split)."""
    if first_mc is None:
        return None, None, "the model has no MC layer"
    if isinstance(model, keras.Sequential):
        # A Sequential model (notably one loaded from .keras) rebuilds its graph internally, so its
        # layers' `.input` tensors need not belong to `model.inputs`: cut the layer list instead.
        layers = list(model.layers)
        k = next(i for i, layer in enumerate(layers) if layer is first_mc)
        if k == 0:
            return None, None, f"the first MC layer {first_mc.name!r} acts on the model input"
        trunk = keras.Sequential([keras.Input(tuple(model.inputs[0].shape[1:])), *layers[:k]], name="trunk")
        head = keras.Sequential([keras.Input(tuple(trunk.outputs[0].shape[1:])), *layers[k:]], name="head")
        return trunk, head, ""
    try:
        cut = first_mc.input
    except (AttributeError, ValueError) as e:
        return None, None, f"the first MC layer is shared or not connected ({e})"
    if cut is model.inputs[0]:
        return None, None, f"the first MC layer {first_mc.name!r} acts on the model input"
    try:
        # Keras refuses a head whose output still needs the model input (a skip connection
        # around the cut): then the cut does not separate the graph.
        trunk = keras.Model(model.inputs, cut, name="trunk")
        head = keras.Model(cut, list(model.outputs), name="head")
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        return None, None, f"the input of {first_mc.name!r} does not separate the graph ({str(e).splitlines()[0]})"
    return trunk, head, ""


# --------------------------------------------------------------------------- export


def _mask_shape(layer) -> list[int | None]:
    # Without the batch axis; 1 where units share a decision (spatial dropout, a noise_shape such
    # as stochastic depth's (None, 1, 1, 1) -> [1, 1, 1]): the mask broadcasts over that axis.
    shape = layer.mask_shape(tuple(layer.input.shape))
    return [None if d is None else int(d) for d in shape]


def _mc_layer_meta(layers, stochastic: str) -> list[dict]:
    kinds = {cls: cls.__name__ for cls in MC_LAYERS}  # MCDropout, MCAlphaDropout, MCSpatialDropout1D/2D/3D
    out = []
    for i, layer in enumerate(layers):
        out.append({
            "name": layer.name,
            "kind": next(v for k, v in kinds.items() if type(layer) is k or isinstance(layer, k)),
            "rate": float(layer.rate),
            "mask_shape": _mask_shape(layer),
            "mask_input": f"mask_{i}" if stochastic == "mask-input" and layer.rate > 0 else None,
        })
    return out


def _write_saved_model(model, trunk, head, mc_meta, in_shape, folder: str, masked_twin: bool = False,
                       batch: int | None = None, infos=()) -> list[str]:
    """Write a SavedModel with the endpoints ``full`` (+ ``trunk`` and ``head``, + ``masked``);
    return their names. With ``batch``, ``trunk`` takes batch 1 and the others ``batch``: static
    shapes, so TensorFlow folds every shape computation into a constant."""
    masked = [m for m in mc_meta if m["mask_input"]]
    mask_specs = [tf.TensorSpec([batch, *m["mask_shape"]], tf.float32, name=m["mask_input"]) for m in masked]
    x_spec = tf.TensorSpec([batch, *in_shape], tf.float32, name="x")

    def with_masks(fn, first, masks, layers=masked):
        with mask_inputs({m["name"]: t for m, t in zip(layers, masks)}):
            return named(fn(first), infos)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("full", lambda x, *masks: with_masks(model, x, masks), input_signature=[x_spec, *mask_specs])
    names = ["full"]
    if trunk is not None:
        f_spec = tf.TensorSpec([batch, *trunk.outputs[0].shape[1:]], tf.float32, name="features")
        trunk_x = tf.TensorSpec([None if batch is None else 1, *in_shape], tf.float32, name="x")
        archive.add_endpoint("trunk", lambda x: {"features": trunk(x)}, input_signature=[trunk_x])
        archive.add_endpoint(
            "head", lambda f, *masks: with_masks(head, f, masks), input_signature=[f_spec, *mask_specs]
        )
        names += ["trunk", "head"]
    if masked_twin:
        # The stochastic part again, with every keep-mask an input: a runtime with a fast random
        # generator (numpy) feeds masks instead of paying for RANDOM_UNIFORM, the slowest op of
        # the book MLP's head. Same weights, so it costs only its ops (~2-4 KB).
        fed = twin_mask_inputs(mc_meta)
        specs = [tf.TensorSpec([batch, *m["mask_shape"]], tf.float32, name=name) for name, m in fed]
        layers = [m for _, m in fed]
        if trunk is not None:
            first_spec, net = f_spec, head
        else:
            first_spec, net = x_spec, model
        archive.add_endpoint(
            "masked", lambda first, *masks: with_masks(net, first, masks, layers), input_signature=[first_spec, *specs]
        )
        names.append("masked")
    archive.write_out(folder, verbose=False)
    return names


def _calibration(model, trunk, head, mc_meta, data: np.ndarray, names, rng_seed: int = 0, batch: int | None = None):
    """A representative-dataset generator that feeds every signature (multi-signature calibration).

    Every signature sees each calibration input once: one row at a time with a dynamic batch;
    with a static ``batch``, ``trunk`` one row at a time and the others ``batch`` rows at a time
    (the last group wraps around to the first inputs).
    """
    masked = [m for m in mc_meta if m["mask_input"]]
    fed = twin_mask_inputs(mc_meta)
    # Eager calls (not trunk.predict, whose traced function TF would warn about retracing).
    features = (
        np.concatenate([call_model(trunk, data[i : i + 256]) for i in range(0, len(data), 256)])
        if trunk is not None else None
    )
    rng = np.random.default_rng(rng_seed)

    def keep(n, m):
        # Calibrate on real keep-masks so the ranges match what the runtime feeds.
        return (rng.random((n, *m["mask_shape"])) >= m["rate"]).astype(np.float32)

    def stochastic(rows, with_trunk: bool):
        n = len(rows)
        yield "full", {"x": data[rows], **{m["mask_input"]: keep(n, m) for m in masked}}
        if trunk is not None:
            if with_trunk:
                yield "trunk", {"x": data[rows]}
            yield "head", {"features": features[rows], **{m["mask_input"]: keep(n, m) for m in masked}}
        if "masked" in names:
            first = {"features": features[rows]} if trunk is not None else {"x": data[rows]}
            yield "masked", {**first, **{name: keep(n, m) for name, m in fed}}

    def gen():
        if batch is None:
            for i in range(len(data)):
                yield from stochastic(np.arange(i, i + 1), True)
            return
        if trunk is not None:
            for i in range(len(data)):
                yield "trunk", {"x": data[i : i + 1]}
        for start in range(0, len(data), batch):
            yield from stochastic(np.arange(start, start + batch) % len(data), False)

    return gen


def _tflite_convert(folder, names, quantize, int8_io, calibration, sparse=False, dense_per_channel=True) -> bytes:
    conv = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=names)
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    conv.target_spec.supported_ops = [builtins]
    if quantize == Quantization.FLOAT16:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quantize == Quantization.DYNAMIC:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == Quantization.INT8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = calibration
        # RANDOM_UNIFORM (and ELU) have no int8 kernel: TFLITE_BUILTINS leaves them as float islands.
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, builtins]
    elif quantize == Quantization.INT16X8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = calibration
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            builtins,
        ]
    if not dense_per_channel and quantize in (Quantization.DYNAMIC, *CALIBRATED):
        # One scale per Dense kernel instead of one per unit: each per-unit scale costs 12 bytes
        # (float32 scale + int64 zero point) in every signature's subgraph. TF 2.21 exposes the
        # switch only as this attribute (TF is pinned < 2.22); without it, stay per-unit.
        if hasattr(conv, "_experimental_disable_per_channel_quantization_for_dense_layers"):
            conv._experimental_disable_per_channel_quantization_for_dense_layers = True
        else:  # pragma: no cover - other TF versions
            warnings.warn(f"TF {tf.__version__} cannot quantize Dense kernels per tensor; using per-channel scales",
                          stacklevel=3)
    if sparse:
        conv.optimizations = [*conv.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if int8_io:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    try:
        with warnings.catch_warnings():
            # TF's calibrator uses its own deprecated tf.lite.Interpreter; that is not the user's concern.
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            return conv.convert()
    except Exception as e:  # ConverterError and friends: say which ops are the problem
        text = str(e)
        hint = [ln.strip() for ln in text.splitlines() if "op" in ln.lower() and ("not" in ln.lower() or "flex" in ln.lower())]
        detail = hint[0] if hint else (text.strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedModelError(
            "Expected a model made of layers that convert to TFLite builtin ops. Received: the TFLite converter "
            f"failed ({detail[:300]})"
        ) from None


# --------------------------------------------------------------------------- public


def _profile(device) -> DeviceProfile | None:
    if device is None or isinstance(device, DeviceProfile):
        return device
    if isinstance(device, (str, os.PathLike)):
        from edgekit.devices import load_profile

        return load_profile(device)
    raise InvalidTypeError(
        f"Expected `device` to be a profile name, a .toml path or an edgekit.devices.DeviceProfile. "
        f"Received: {type(device).__name__}"
    )


def convert(
    model: keras.Model,
    *,
    quantize: str | None = None,
    representative_data=None,
    fold_batchnorm: bool = True,
    device=None,
    stochastic: str | None = None,
    seed: int | None = None,
    class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    tasks: Mapping[str, str] | None = None,
    variance: Mapping[str, str] | None = None,
    heldout_data=None,
    heldout_samples: int = 100,
    calibration: str = "mi-temperature",
    abstain_coverage: float | None = None,
    force_small_heldout: bool = False,
    input_image: dict | None = None,
    int8_io: bool | None = None,
    batch: int | None = None,
    sparse: bool = False,
    dense_per_channel: bool | None = None,
) -> ConvertedModel:
    """Convert an MC-dropout Keras model to the bytes of one edgekit ``.tflite`` file.

    ``quantize``, ``stochastic``, ``int8_io`` and ``batch`` left at ``None`` take the device
    profile's defaults (:func:`edgekit.devices.conversion_settings`, the same rule as
    ``edgekit convert --device``), or ``float32``, ``in-graph``, float I/O and a dynamic batch
    without a device. A value given explicitly always wins.

    Args:
        model: a built Keras 3 model with one input and any number of outputs (class
            probabilities or values: :mod:`edgekit.converters.outputs`) using ``edgekit.layers`` MC
            layers. It is not modified.
        quantize: ``"float32"``, ``"float16"``, ``"dynamic"``, ``"int8"`` or ``"int16x8"``.
        representative_data: model inputs from the training set, shape ``(n, *input_shape)``;
            required for ``int8`` and ``int16x8`` (the first 1000 are used), and used to record the
            input range in the metadata.
        fold_batchnorm: fold BatchNormalization into neighbouring Dense/Conv layers first.
        device: a device profile (``edgekit.devices.load_profile`` result), its name or a
            ``.toml`` path. It gives the defaults above, and the result is checked against it by
            :func:`edgekit.devices.check_model` (ops, dtypes, int8 I/O, size, tensor arena against
            RAM, stochastic mode, static batch): :class:`edgekit.devices.DeviceFitError` if it
            does not fit, naming every reason.
        stochastic: ``"in-graph"`` (``RANDOM_UNIFORM`` draws the masks) or ``"mask-input"``
            (masks are inputs ``mask_0..``; no random op). Unseeded in-graph files also carry the
            ``masked`` signature (keep-masks as inputs, for the edgekit runtime; docs/format.md),
            except with ``int16x8``.
        seed: bake this seed into the random ops (reproducible masks, identical on every device).
            ``None`` (default) leaves the ops unseeded, whatever global seed is set. A seeded file
            has no ``masked`` signature (its masks must come from its own seeded ops).
        class_names: names of the classes of the class output (a list), or per output name.
        tasks: per Keras output name, ``"classification"`` or ``"regression"``, where the task
            cannot be inferred from the output's activation (or to override it).
        variance: ``{value output: its log-variance output}`` for heteroscedastic heads.
        heldout_data: ``(x, y)`` held out from training and from ``representative_data`` (not
            the test set): ``y`` an array for a one-output model, else ``{output name: targets}``.
            The converted file's own MC samples on it fit what the file carries
            (:mod:`edgekit.converters.heldout`): a temperature per class output, a noise variance
            (or variance scale) per value output, and an abstention threshold.
        heldout_samples: MC samples per held-out input for those fits (the T the file will run).
        calibration: ``"mi-temperature"`` (default: a temperature that grows with the samples'
            disagreement), ``"temperature"`` (one for every input) or ``"none"``.
        abstain_coverage: with held-out data, store an abstention threshold that answers this
            share of the inputs (e.g. 0.9); None: no threshold.
        force_small_heldout: fit on a held-out split under 500 examples anyway (with a warning).
        input_image: how an 8-bit image becomes the input, ``{"height", "width", "channels",
            "scale", "offset"}`` (``x = pixel * scale + offset``), stored in the metadata.
        int8_io: int8 inputs and outputs (only with ``quantize="int8"``).
        batch: a static batch for ``full``, ``head`` and ``masked``, with ``trunk`` at batch 1, for
            fixed-shape targets (the Edge TPU): no shape is then computed at run time, and the
            metadata's ``batch`` records it. ``None``: every signature takes any batch.
        sparse: encode sparse weights with TFLite's experimental sparsity (float32 only).
        dense_per_channel: quantize Dense kernels with one scale per unit (``True``) or one per
            kernel (``False``). Every signature stores its own scales (12 bytes per unit), so
            per-kernel gives a smaller file. ``None`` (default): per-kernel for ``int8``, where it
            was measured (bench/convert_report.py: book MLP 28.4% -> 26.6% of float32, MC accuracy
            unchanged within noise), per-unit for the other modes.

    Returns:
        A :class:`ConvertedModel`.

    Raises:
        InvalidArgumentError: bad arguments or data (a ``ValueError``).
        UnsupportedModelError: a model or layer edgekit cannot convert (a ``ValueError``).
        DeviceFitError: the result does not fit ``device`` (a ``ValueError``).
        InvalidTypeError: ``model`` is not a Keras model (a ``TypeError``).
    """
    from edgekit.converters import fold as fold_mod
    from edgekit.converters import report as report_mod

    profile = _profile(device)
    settings = conversion_settings(profile, quantize=quantize, stochastic=stochastic, int8_io=int8_io, batch=batch)
    quantize, stochastic, int8_io, batch = settings.quantize, settings.stochastic, settings.int8_io, settings.batch
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise InvalidArgumentError(
            f"Invalid value received for argument `seed`. Expected a non-negative int or None. Received: seed={seed!r}"
        )
    if int8_io and quantize != Quantization.INT8:
        raise InvalidArgumentError(f"Expected quantize='int8' with int8_io=True. Received: quantize={quantize!r}")
    if sparse and quantize != Quantization.FLOAT32:
        raise InvalidArgumentError(
            "Expected quantize='float32' with sparse=True. Received: quantize="
            f"{quantize!r} (a sparse-encoded quantized model fails in the stock LiteRT interpreter: XNNPACK "
            "'failed to delegate FULLY_CONNECTED', measured with ai-edge-litert 2.3)"
        )
    if dense_per_channel is None:
        dense_per_channel = quantize != Quantization.INT8
    in_shape = _io_shape(model)
    infos = describe_outputs(model, tasks=tasks, variance=variance, class_names=class_names)
    image = _check_image(input_image, in_shape)
    if calibration not in ("mi-temperature", "temperature", "none"):
        raise InvalidArgumentError(f"Expected calibration 'mi-temperature', 'temperature' or 'none'. Received: "
                                   f"calibration={calibration!r}")
    data = None
    if representative_data is not None or quantize in CALIBRATED:
        if representative_data is None:
            raise InvalidArgumentError(
                f"Expected `representative_data` (training inputs) for quantize={quantize!r}. Received: None"
            )
        data = check_representative_data(representative_data, in_shape)[:_MAX_CALIBRATION]

    caught: list[str] = []
    mc = _mc_layers(model)
    if not mc:
        msg = "the model has no MC layer: the converted model is deterministic (no uncertainty)"
        warnings.warn(msg, NoMCLayerWarning, stacklevel=2)
        caught.append(msg)
    if seed is not None and mc and stochastic == Stochastic.IN_GRAPH:
        msg = f"seed={seed} is baked into the file: every device and every interpreter will draw the same masks"
        warnings.warn(msg, FixedSeedWarning, stacklevel=2)
        caught.append(msg)

    fold_report = None
    work = model
    if fold_batchnorm:
        work, fold_report = fold_mod.fold_batchnorm(model)
        mc = _mc_layers(work)
    mc_meta = _mc_layer_meta(mc, stochastic)
    first = next((layer for layer in mc if layer.rate > 0), None)
    trunk, head, no_split = _split(work, first)
    if quantize == Quantization.INT16X8 and trunk is not None:
        # Measured with TF 2.21 on the book MLP: with three signatures the 16x8 quantizer stores
        # the shared Dense weights with scales that do not match them (kernel correlation 0.83,
        # MC accuracy 64% vs 83%); with `full` alone it matches Keras (82.8%). So no split.
        trunk = head = None
        no_split = "int16x8 with trunk/head signatures mis-quantizes shared weights in TF 2.21"

    # In-graph files also carry `masked` (docs/format.md), except when seeded (the seed promises
    # the file's own mask sequence) or int16x8 (TF 2.21 mis-quantizes weights shared by 16x8
    # signatures, see above).
    masked_twin = (stochastic == Stochastic.IN_GRAPH and seed is None and quantize != Quantization.INT16X8
                   and any(m["rate"] > 0 for m in mc_meta))
    folder = tempfile.mkdtemp(prefix="edgekit-export-")
    try:
        with _tracing_seed(seed):
            names = _write_saved_model(work, trunk, head, mc_meta, in_shape, folder, masked_twin, batch, infos)
        dataset = (_calibration(work, trunk, head, mc_meta, data, names, batch=batch)
                   if quantize in CALIBRATED else None)
        values = [i.name for i in infos if i.task != "classification"] if quantize in CALIBRATED else []
        raw = finish_flatbuffer(_tflite_convert(folder, names, quantize, int8_io, dataset, sparse,
                                                 dense_per_channel), values)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    present = {"full": True, "trunk": trunk is not None, "head": trunk is not None, "masked": masked_twin}
    metadata = {
        "format": FORMAT,
        "edgekit_version": _version(),
        "stochastic": stochastic if mc_meta and any(m["rate"] > 0 for m in mc_meta) else Stochastic.NONE.value,
        "seed": seed,
        "mc_layers": mc_meta,
        "signatures": {role: role if present[role] else None for role in ROLES},
        # The static batch of each signature (docs/format.md): trunk 1, the others `batch`.
        "batch": {role: (None if batch is None or not present[role] else 1 if role == "trunk" else batch)
                  for role in ROLES},
        "input": {
            "name": "x",
            "shape": [int(d) for d in in_shape],
            "dtype": "int8" if int8_io else "float32",
            "range": [float(data.min()), float(data.max())] if data is not None else None,
            **({"image": image} if image else {}),
        },
        "outputs": outputs_metadata(infos),
        "quantization": {"mode": quantize, "io": "int8" if int8_io else "float32",
                         **({"dense": "per-tensor"} if not dense_per_channel
                            and quantize in (Quantization.DYNAMIC, *CALIBRATED) else {})},
    }
    if no_split and mc:
        metadata["split"] = {"trunk": None, "reason": no_split}
    from edgekit.runtime.metadata import embed_metadata, read_metadata

    tflite = embed_metadata(raw, metadata)
    heldout = None
    if heldout_data is not None:
        from edgekit.converters.heldout import fit_heldout

        if profile is not None:  # a file the device cannot take is refused before the fits, not after
            _check_fit(tflite, profile, None)

        metadata, heldout = fit_heldout(tflite, read_metadata(tflite), heldout_data, samples=heldout_samples,
                                        calibration=calibration, abstain_coverage=abstain_coverage,
                                        force=force_small_heldout)
        for w in heldout.get("warnings", ()):
            caught.append(w)
        tflite = embed_metadata(raw, metadata)
    metadata = read_metadata(tflite)
    report = report_mod.build_report(tflite, fold_report=fold_report, warnings=tuple(caught), raw_bytes=len(raw))
    if heldout is not None:
        report = dataclasses.replace(report, heldout=heldout)
    if profile is not None:
        report = _check_fit(tflite, profile, report)
    return ConvertedModel(tflite=tflite, metadata=metadata, report=report, warnings=tuple(caught))


def _check_fit(tflite: bytes, profile: DeviceProfile, report):
    """``report`` with its device entry, after :func:`edgekit.devices.check_model`; raise if it does not fit."""
    import dataclasses

    from edgekit.devices import check_model
    from edgekit.runtime.inspect import model_facts

    problems = check_model(profile, model_facts(tflite))
    if problems:
        raise DeviceFitError(
            f"The converted model does not fit device {profile.name!r}. Expected: only what the profile allows. "
            f"Received: {'; '.join(problems)}"
        )
    return None if report is None else dataclasses.replace(report, device={"name": profile.name, "problems": []})


def _version() -> str:
    try:
        return importlib.metadata.version("edgekit")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"
