"""Fold BatchNormalization into neighbouring Dense / Conv layers, at the Keras level.

In inference mode a BatchNormalization layer is an affine map per channel,
``y = s * x + t`` with ``s = gamma / sqrt(moving_variance + epsilon)`` and
``t = beta - s * moving_mean``. Next to a linear layer it can be merged into that layer's
weights, which removes two ops per BN from the exported graph and, for int8, one requantization:

- **A linear layer followed by BN** (the layer has no activation and its output goes only to the
  BN): ``kernel' = kernel * s`` per output channel, ``bias' = s * bias + t``. The layer computes
  ``y[..., c] = sum(kernel[..., c] * patch) + bias[c]``, so scaling output channel c's kernel
  slice scales ``y[..., c]``: the same algebra for ``Dense``, ``Conv1D``, ``Conv2D`` and ``Conv3D``
  (the output channel is the kernel's last axis, whatever the rank, groups or dilation),
  ``DepthwiseConv1D/2D`` (output channel ``c * multiplier + m`` is kernel slice ``[..., c, m]``)
  and ``SeparableConv1D/2D`` (the pointwise kernel's last axis; the depthwise kernel before it is
  left as is). Transposed convolutions are not folded (their output channel is another axis).
- **BN directly before a Dense** (the BN output goes only to the Dense):
  ``kernel' = s[:, None] * kernel``, ``bias' = bias + kernel.T @ t``.

The folded BN becomes :class:`FoldedBatchNorm`, an identity layer with the same name, so the graph keeps its shape and
every other layer, MC layers included, is cloned with its weights. Arithmetic is float64, so the
folded model matches the original within float32 rounding (tests check 1e-5 relative).

>>> from edgekit.converters.fold import fold_batchnorm
>>> folded, report = fold_batchnorm(model)
>>> report.folded                       # (("conv_0", "bn_0"), ...)
>>> report.not_folded                   # (("bn_2", "follows a non-linearity (activation='relu')"),)

Anything that cannot be folded is listed with a reason (BN after a non-linearity, a BN on a
non-channel axis, shared layers, nested models, ...), never silently left.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from edgekit.errors import InvalidTypeError

__all__ = ["FoldReport", "FoldedBatchNorm", "fold_batchnorm"]

_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_LINEAR_BEFORE = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                  *_DEPTHWISE, *_SEPARABLE)
_LINEAR_NAMES = "Dense, Conv1D/2D/3D, DepthwiseConv1D/2D or SeparableConv1D/2D"


@keras.saving.register_keras_serializable(package="edgekit")
class FoldedBatchNorm(keras.layers.Layer):
    """The identity, standing where a BatchNormalization was folded into its neighbour.

    Unlike ``keras.layers.Identity`` it accepts the ``training``/``mask`` arguments the original
    BatchNormalization call was recorded with, so the cloned graph can call it the same way.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


@dataclass(frozen=True)
class FoldReport:
    """What :func:`fold_batchnorm` did.

    Attributes:
        folded: ``(linear_layer, bn_layer)`` name pairs that were merged.
        not_folded: ``(bn_layer, reason)`` for each BatchNormalization left in the model.
    """

    folded: tuple[tuple[str, str], ...] = ()
    not_folded: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        return {
            "folded": [{"layer": a, "batchnorm": b} for a, b in self.folded],
            "not_folded": [{"batchnorm": b, "reason": r} for b, r in self.not_folded],
        }


def _single(tensor_or_list):
    if isinstance(tensor_or_list, (list, tuple)):
        return tensor_or_list[0] if len(tensor_or_list) == 1 else None
    return tensor_or_list


def _io(layer):
    """(input tensor, output tensor) of a layer called exactly once, else (None, None)."""
    try:
        return _single(layer.input), _single(layer.output)
    except (AttributeError, ValueError):
        return None, None


def _f64(variable) -> np.ndarray:
    return keras.ops.convert_to_numpy(variable).astype(np.float64)


def _bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    mean = _f64(bn.moving_mean)
    var = _f64(bn.moving_variance)
    gamma = _f64(bn.gamma) if bn.scale else np.ones_like(mean)
    beta = _f64(bn.beta) if bn.center else np.zeros_like(mean)
    s = gamma / np.sqrt(var + bn.epsilon)
    return s, beta - s * mean


def _bn_axis_last(bn, rank: int) -> bool:
    axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
    return axis is not None and axis in (-1, rank - 1)


def _is_linear(layer) -> bool:
    act = getattr(layer, "activation", None)
    return act is None or act is keras.activations.linear or getattr(act, "__name__", "") == "linear"


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _fold_after(layer, bn) -> list[np.ndarray]:
    """New weights for ``layer`` followed by ``bn``, in ``layer.get_weights()`` order (bias included)."""
    s, t = _bn_affine(bn)
    bias = _f64(layer.bias) if layer.use_bias else np.zeros_like(s)
    new_bias = (s * bias + t).astype(np.float32)
    if isinstance(layer, _SEPARABLE):
        # depthwise then pointwise: only the pointwise kernel (last axis = output channel) is scaled.
        depthwise = keras.ops.convert_to_numpy(layer.depthwise_kernel)
        pointwise = _f64(layer.pointwise_kernel) * s
        return [depthwise, pointwise.astype(np.float32), new_bias]
    kernel = _f64(layer.kernel)
    if isinstance(layer, _DEPTHWISE):
        cin, mult = kernel.shape[-2:]
        kernel = kernel * s.reshape(cin, mult)  # output channel c*mult + m
    else:
        kernel = kernel * s  # last axis is the output channel for Dense and Conv1D/2D/3D
    return [kernel.astype(np.float32), new_bias]


def _fold_before(bn, dense) -> list[np.ndarray]:
    """New [kernel, bias] for ``dense`` preceded by ``bn``."""
    s, t = _bn_affine(bn)
    kernel = _f64(dense.kernel)
    bias = _f64(dense.bias) if dense.use_bias else np.zeros(kernel.shape[-1])
    return [(s[:, None] * kernel).astype(np.float32), (bias + t @ kernel).astype(np.float32)]


def _consumers(layers, tensor) -> list:
    out = []
    for layer in layers:
        try:
            inputs = layer.input
        except (AttributeError, ValueError):
            continue
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if any(t is tensor for t in inputs):
            out.append(layer)
    return out


class _Graph:
    """Who feeds whom among the top-level layers, for layers called once.

    A Sequential model is a chain (its list order). A functional model is read from the tensors
    each layer was called on (``layer.input`` / ``layer.output``).
    """

    def __init__(self, model):
        self.layers = list(model.layers)
        self.chain = isinstance(model, keras.Sequential)
        self.producers = {}
        if not self.chain:
            for layer in self.layers:
                _, out = _io(layer)
                if out is not None:
                    self.producers[id(out)] = layer

    def called_once(self, layer) -> bool:
        return self.chain or _io(layer)[0] is not None

    def rank_in(self, layer) -> int:
        try:
            return len(_single(layer.input).shape)
        except (AttributeError, ValueError):
            return -1

    def producer(self, layer):
        if self.chain:
            i = self.layers.index(layer)
            return self.layers[i - 1] if i > 0 else None
        return self.producers.get(id(_io(layer)[0]))

    def consumers(self, layer) -> list:
        if self.chain:
            i = self.layers.index(layer)
            return self.layers[i + 1 : i + 2]
        return _consumers(self.layers, _io(layer)[1])


def _plan(model):
    """Decide the folds: {linear_name: (bn, "after"|"before")}, [(bn_name, reason)]."""
    graph = _Graph(model)
    plan, skipped, used = {}, [], set()
    for bn in graph.layers:
        if isinstance(bn, keras.Model):
            if any(isinstance(inner, keras.layers.BatchNormalization) for inner in bn.layers):
                skipped.append((bn.name, "nested model: BatchNormalization inside it is not folded"))
            continue
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        if not graph.called_once(bn):
            skipped.append((bn.name, "the BatchNormalization layer is shared (called more than once)"))
            continue
        rank = graph.rank_in(bn)
        if rank < 2 or not _bn_axis_last(bn, rank):
            skipped.append((bn.name, f"normalizes axis {bn.axis}, not the channel (last) axis"))
            continue
        prev = graph.producer(bn)
        reason = None
        if isinstance(prev, _LINEAR_BEFORE) and prev.name not in used:
            if not _is_linear(prev):
                act = keras.activations.serialize(prev.activation)
                reason = f"follows a non-linearity (activation={act!r} in {prev.name!r})"
            elif not _channels_last(prev):
                reason = f"{prev.name!r} is channels_first"
            elif len(graph.consumers(prev)) != 1:
                reason = f"the output of {prev.name!r} is also used elsewhere"
            elif not graph.called_once(prev):
                reason = f"{prev.name!r} is shared (called more than once)"
            else:
                plan[prev.name] = (bn, "after")
                used.add(prev.name)
                continue
        after = graph.consumers(bn)
        if len(after) == 1 and isinstance(after[0], keras.layers.Dense) and after[0].name not in used:
            dense = after[0]
            if rank == 2 and graph.called_once(dense):
                plan[dense.name] = (bn, "before")
                used.add(dense.name)
                continue
            reason = reason or f"precedes {dense.name!r} on a rank-{rank} input"
        if reason is None:
            if prev is None:
                reason = "follows the model input"
            elif isinstance(prev, _LINEAR_BEFORE):
                reason = f"{prev.name!r} already absorbs another BatchNormalization"
            else:
                kind = type(prev).__name__
                nonlinear = isinstance(prev, (keras.layers.Activation, keras.layers.ReLU, keras.layers.ELU,
                                              keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.Softmax))
                reason = (f"follows a non-linearity ({kind} {prev.name!r})" if nonlinear
                          else f"follows a {kind} layer ({prev.name!r}), not a {_LINEAR_NAMES} layer, "
                               "and no Dense follows it")
        skipped.append((bn.name, reason))
    return plan, skipped


def fold_batchnorm(model: keras.Model) -> tuple[keras.Model, FoldReport]:
    """Return ``(folded_model, report)``; ``model`` itself is not changed.

    The folded model computes the same function as ``model`` in inference mode. When nothing can
    be folded, ``model`` is returned as is.
    """
    if not isinstance(model, keras.Model):
        raise InvalidTypeError(f"Expected a keras.Model. Received: {type(model).__name__}")
    plan, skipped = _plan(model)
    if not plan:
        return model, FoldReport((), tuple(skipped))
    folded_bn = {bn.name for bn, _ in plan.values()}
    new_weights = {}
    for name, (bn, where) in plan.items():
        layer = model.get_layer(name)
        new_weights[name] = _fold_after(layer, bn) if where == "after" else _fold_before(bn, layer)

    def clone(layer):
        if layer.name in folded_bn:
            return FoldedBatchNorm(name=layer.name)
        config = layer.get_config()
        if layer.name in plan:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in folded_bn or not layer.weights:
            continue  # input layers may be renamed by clone_model; they have no weights anyway
        target = new.get_layer(layer.name)
        if layer.name in new_weights:
            target.set_weights(new_weights[layer.name])
        else:
            target.set_weights(layer.get_weights())
    pairs = tuple((name, bn.name) for name, (bn, _) in plan.items())
    return new, FoldReport(pairs, tuple(skipped))
