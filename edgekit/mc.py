"""MC dropout in Keras: turn a trained dropout model into an MC model, and predict with it.

The seed text's recipe, made fast. Its loop::

    y_probas = np.stack([model(X_test_scaled, training=True) for sample in range(100)])

runs the model 100 times from Python and, with ``training=True``, also switches BatchNorm to
training mode. :func:`predict` instead repeats each input T times along the batch axis and runs
one batched call, with the model in inference mode: only the MC layers sample.

>>> from edgekit import mc
>>> mc_model = mc.to_mc(trained_model)            # Dropout -> MCDropout, weights copied
>>> result = mc.predict(mc_model, x_test[:1], samples=100)
>>> result.mean.round(2), result.std.round(2)
>>> two = mc.predict(two_output_model, x_test[:8], samples=100)   # one result per output
>>> two["value"].mean, two["value"].std, two.outputs[0].name

:func:`predict_deterministic` gives the "dropout off" prediction for comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from edgekit.errors import InvalidArgumentError, InvalidTypeError, UnsupportedModelError
from edgekit.layers import (
    MC_LAYERS,
    MCAlphaDropout,
    MCDropout,
    MCSpatialDropout1D,
    MCSpatialDropout2D,
    MCSpatialDropout3D,
    dropout_off,
)

__all__ = ["MCResult", "has_mc_layers", "output_names", "predict", "predict_deterministic", "to_mc"]

# Rows per batched call: large enough to amortize the call overhead, small enough for memory
# (a 784-wide float32 input at 8192 rows is 25 MB).
_ROWS_PER_CALL = 8192


@dataclass(frozen=True)
class MCResult:
    """T stochastic predictions of N inputs for one model output, or for every output of a model.

    ``probs`` holds the samples ``[T, N, *shape]`` (class probabilities for a class output, values
    for a value output; the name is kept from the one-output API), ``mean`` and ``std`` their mean
    and population standard deviation over the samples, ``[N, *shape]``.

    A model with several outputs gives one result per output in ``outputs`` (in ``model.outputs``
    order, each named by Keras' output name), and its own ``probs``/``mean``/``std``/``name`` are
    the first output's, so a one-output caller never names it; ``result["value"]`` picks one.
    """

    probs: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    name: str | None = None
    outputs: tuple[MCResult, ...] = ()

    @property
    def samples(self) -> np.ndarray:
        """The samples ``[T, N, *shape]`` (the same array as ``probs``)."""
        return self.probs

    @property
    def predicted(self) -> np.ndarray:
        """The MC-averaged predicted class of each input, [N] (for a class output)."""
        return self.mean.argmax(axis=-1)

    @property
    def names(self) -> tuple[str, ...]:
        """The output names, in ``model.outputs`` order."""
        return tuple(o.name for o in self.outputs) if self.outputs else (self.name,)

    def __getitem__(self, name: str) -> MCResult:
        for o in self.outputs or (self,):
            if o.name == name:
                return o
        raise KeyError(f"Expected one of the outputs {list(self.names)}. Received: {name!r}")


def _mc_noise_shape(layer) -> tuple | None:
    """A Keras dropout layer's ``noise_shape`` for its MC twin: the batch entry becomes None.

    At inference Keras' Dropout is the identity, so only training ever shared a mask along the
    batch (``noise_shape=(batch_size, 1, features)`` in Keras' own docstring). An MC call's batch
    is its T samples, and each must draw its own mask.
    """
    shape = getattr(layer, "noise_shape", None)
    if shape is None:
        return None
    shape = tuple(shape)
    return (None, *shape[1:]) if shape else shape


def _mc_twin(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The MC layer that replaces a Keras dropout layer, or None for any other layer."""
    # Checked most specific first: the spatial variants subclass Dropout in Keras.
    if isinstance(layer, MC_LAYERS):
        return None
    if isinstance(layer, keras.layers.SpatialDropout1D):
        return MCSpatialDropout1D(layer.rate, name=layer.name)
    if isinstance(layer, keras.layers.SpatialDropout2D):
        return MCSpatialDropout2D(layer.rate, data_format=layer.data_format, name=layer.name)
    if isinstance(layer, keras.layers.SpatialDropout3D):
        return MCSpatialDropout3D(layer.rate, data_format=layer.data_format, name=layer.name)
    if isinstance(layer, keras.layers.AlphaDropout):
        return MCAlphaDropout(layer.rate, noise_shape=_mc_noise_shape(layer), name=layer.name)
    if isinstance(layer, keras.layers.Dropout):
        return MCDropout(layer.rate, noise_shape=_mc_noise_shape(layer), name=layer.name)
    return None


def has_mc_layers(model: keras.Model) -> bool:
    """True if any layer of ``model`` (nested models included) is an MC layer."""
    return any(isinstance(layer, MC_LAYERS) for layer in _walk(model))


def _walk(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer)


def to_mc(model: keras.Model) -> keras.Model:
    """A new model identical to ``model``, with each Dropout-like layer replaced by its MC twin.

    ``Dropout`` -> :class:`~edgekit.layers.MCDropout`, ``AlphaDropout`` ->
    :class:`~edgekit.layers.MCAlphaDropout`, ``SpatialDropout1D/2D/3D`` ->
    :class:`~edgekit.layers.MCSpatialDropout1D` / ``2D`` / ``3D``, with the same rates, names,
    ``noise_shape`` and ``data_format``; every weight is copied exactly. A ``noise_shape`` keeps
    its broadcast axes (stochastic depth, e.g. EfficientNet's ``noise_shape=(None, 1, 1, 1)``,
    stays one decision per sample); its batch entry becomes ``None`` (each MC sample draws its own
    mask). Works for Sequential and Functional models (nested models included), such as
    ``keras.applications.EfficientNetB0`` and the EfficientNetV2 family. The original model is
    left untouched.
    """
    if not isinstance(model, keras.Model):
        raise InvalidTypeError(f"Expected a keras.Model. Received: {type(model).__name__}")

    def clone(layer):
        try:
            twin = _mc_twin(layer)
        except InvalidArgumentError as e:
            raise UnsupportedModelError(f"Layer {layer.name!r} has no MC twin: {e}") from None
        if twin is not None:
            return twin
        return layer.__class__.from_config(layer.get_config())

    try:
        new = keras.models.clone_model(model, clone_function=clone, recursive=True)
    except InvalidArgumentError as e:  # an MC twin refused the input it was called on (its noise_shape)
        raise UnsupportedModelError(str(e)) from None
    except ValueError as e:
        if "only supported for Sequential" not in str(e):
            raise
        raise InvalidTypeError(
            "to_mc needs a Sequential or Functional model (a subclassed model's graph cannot be "
            f"rewritten). Received: {type(model).__name__}"
        ) from None
    new.set_weights(model.get_weights())
    return new


def _batched_call(model: keras.Model):
    @tf.function(reduce_retracing=True)
    def call(x):
        return model(x, training=False)

    return call


def output_names(model: keras.Model) -> list[str]:
    """The names of the outputs of ``model``, in ``model.outputs`` order: the keys of a model built
    with a dict of outputs (``keras.Model(x, {"cls": ..., "value": ...})``), else Keras' output
    names (the layers that make them)."""
    outputs = getattr(model, "outputs", None) or []
    try:
        structure = model.output
    except (AttributeError, ValueError):  # a layer called more than once has no single output
        structure = None
    if isinstance(structure, Mapping):
        paths = [path for path, _ in keras.tree.flatten_with_path(structure)]
        if len(paths) == len(outputs) and all(len(p) == 1 and isinstance(p[0], str) for p in paths):
            return [p[0] for p in paths]
    names = getattr(model, "output_names", None)
    if names and len(names) == len(outputs):
        return [str(n) for n in names]
    return [t._keras_history.operation.name for t in outputs]  # Sequential: the last layer's name


def _as_list(result, names: list[str] | None = None) -> list:
    """A model call's outputs (a tensor, a list or a dict) in ``model.outputs`` order: Keras
    flattens a dict of outputs by sorted key, whatever order it was written in."""
    if isinstance(result, (Mapping, list, tuple)):
        return list(keras.tree.flatten(result))
    return [result]


def _check_samples(samples) -> None:
    if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 1:
        raise InvalidArgumentError(f"Expected `samples` to be an integer >= 1. Received: samples={samples!r}")


def predict(model: keras.Model, x, samples: int = 100) -> MCResult:
    """MC-dropout prediction: ``samples`` stochastic passes per input, batched.

    Each input is repeated ``samples`` times along the batch axis and run in large batched
    calls, in inference mode (BatchNorm uses its moving statistics); only the MC layers sample.
    Every output of the model is sampled in the same passes (see :class:`MCResult`).

    Args:
        model: a model with MC layers (see :func:`to_mc`). Without any, every sample is the same.
        x: inputs, [N, ...].
        samples: T, the number of stochastic passes per input (>= 1).
    """
    _check_samples(samples)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 1 or x.shape[0] == 0:
        raise InvalidArgumentError(f"Expected a non-empty batch of inputs. Received: shape {x.shape}")
    n = x.shape[0]
    names = output_names(model)
    call = _batched_call(model)
    per_call = max(1, _ROWS_PER_CALL // samples)  # inputs per call
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, per_call):
        part = x[start : start + per_call]
        k = part.shape[0]
        # Row t*k + i is sample t of input i, so a reshape gives [T, k, *shape].
        tiled = np.tile(part, (samples,) + (1,) * (part.ndim - 1))
        outs = _as_list(call(tf.constant(tiled)), names)
        chunks.append([np.asarray(o).reshape(samples, k, *o.shape[1:]) for o in outs])
    results = []
    for j, name in enumerate(names[: len(chunks[0])]):
        probs = np.concatenate([c[j] for c in chunks], axis=1)
        results.append(MCResult(probs=probs, mean=probs.mean(axis=0), std=probs.std(axis=0), name=name))
    if len(results) == 1:
        return results[0]
    first = results[0]
    return MCResult(first.probs, first.mean, first.std, first.name, tuple(results))


def predict_deterministic(model: keras.Model, x, batch_size: int = 1024) -> np.ndarray | dict[str, np.ndarray]:
    """The prediction with dropout off (MC layers act as the identity): ``[N, *shape]``, or for a
    model with several outputs ``{Keras output name: [N, *shape]}``."""
    x = np.asarray(x, dtype=np.float32)
    names = output_names(model)
    outs: list[list[np.ndarray]] = []
    with dropout_off():
        for start in range(0, x.shape[0], batch_size):
            got = _as_list(model(tf.constant(x[start : start + batch_size]), training=False), names)
            outs.append([np.asarray(o) for o in got])
    arrays = [np.concatenate([o[j] for o in outs], axis=0) for j in range(len(outs[0]))]
    return arrays[0] if len(arrays) == 1 else dict(zip(names, arrays))
