"""MC-dropout-ready layers: dropout that stays on at inference, and converts to stock TFLite.

Gal & Ghahramani (2016) showed that a network trained with dropout can be read as an approximate
Bayesian model: keep dropout *active at inference*, run T stochastic passes, average them, and read
their spread as the model's uncertainty (MC dropout). Keras' own ``Dropout`` is inactive unless it is
called with ``training=True``, and forcing that (the seed text's ``MCDropout`` subclass) produces a
graph that needs Flex ops in TFLite, which the stock LiteRT interpreter does not have.

The layers here sample **always**, on purpose, and draw their masks with ``tf.random.uniform``,
which converts to the builtin TFLite op ``RANDOM_UNIFORM``:

>>> import keras
>>> from edgekit.layers import MCDropout
>>> model = keras.Sequential([keras.Input((784,)), MCDropout(0.2), keras.layers.Dense(10)])

``MCDropout`` and ``MCAlphaDropout`` take Keras' ``noise_shape``: a 1 (or an integer equal to the
input's size) shares one keep/drop decision along that axis, ``None`` draws one per unit. The batch
axis is always per sample (each MC sample draws its own mask). Stochastic depth ("drop path", as
in EfficientNet) drops a whole residual branch per sample:

>>> branch = MCDropout(0.2, noise_shape=(None, 1, 1, 1))(branch)   # one decision per sample
>>> x = keras.layers.Add()([shortcut, branch])

Each layer can also take its keep-mask from outside instead of drawing it (:func:`mask_inputs`).
The converter uses that to export a model whose masks are named model inputs, for targets such as
the Edge TPU or TFLite Micro that have no ``RANDOM_UNIFORM`` kernel.

The spatial layers (``MCSpatialDropout1D/2D/3D``) drop whole feature maps, one decision per sample
and channel, like Keras' ``SpatialDropout1D/2D/3D``.

Every layer is registered for Keras serialization (package ``edgekit``), so a model using them
round-trips through ``model.save`` and ``keras.models.load_model`` without ``custom_objects``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

import keras
import tensorflow as tf

from edgekit.errors import InvalidArgumentError

__all__ = [
    "MC_LAYERS",
    "MCAlphaDropout",
    "MCDropout",
    "MCSpatialDropout1D",
    "MCSpatialDropout2D",
    "MCSpatialDropout3D",
    "dropout_off",
    "mask_inputs",
]

if keras.backend.backend() != "tensorflow":  # pragma: no cover - depends on the user's environment
    raise ImportError(
        "edgekit's MC layers need the TensorFlow backend of Keras 3. "
        f"Expected KERAS_BACKEND=tensorflow. Received: {keras.backend.backend()!r}"
    )

_override = threading.local()


@contextlib.contextmanager
def mask_inputs(masks: Mapping[str, tf.Tensor]) -> Iterator[None]:
    """Make MC layers use the given keep-masks (by layer name) instead of drawing them.

    A keep-mask holds 1 where a unit is kept and 0 where it is dropped, in the shape that
    :meth:`mask_shape` gives (batch first). Used while tracing a model for export in mask-input
    mode; layers not named in ``masks`` keep drawing their own.
    """
    previous = getattr(_override, "masks", None)
    _override.masks = dict(masks)
    try:
        yield
    finally:
        _override.masks = previous


@contextlib.contextmanager
def dropout_off() -> Iterator[None]:
    """Make MC layers the identity while tracing or calling a model inside this block.

    This is the "dropout off" prediction of the seed text (what plain Keras ``Dropout`` does at
    inference), used to compare deterministic and MC predictions. A ``tf.function`` traced inside
    the block keeps dropout off for good, so trace a fresh one.
    """
    previous = getattr(_override, "off", False)
    _override.off = True
    try:
        yield
    finally:
        _override.off = previous


def _check_rate(rate: float) -> float:
    # Same message shape as keras.layers.Dropout, so users see a familiar error.
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
        raise InvalidArgumentError(
            "Invalid value received for argument `rate`. Expected a float value between 0 and 1 "
            f"(1 excluded). Received: rate={rate!r}"
        )
    return float(rate)


def _check_noise_shape(noise_shape) -> tuple | None:
    # Keras' Dropout checks and messages, plus the MC rule for the batch axis.
    if noise_shape is None:
        return None
    if isinstance(noise_shape, str):
        raise InvalidArgumentError(
            "Invalid value received for argument `noise_shape`. Expected a tuple or list of integers. "
            f"Received: noise_shape={noise_shape!r}"
        )
    try:
        noise_shape = tuple(noise_shape)
    except TypeError:
        raise InvalidArgumentError(
            "Invalid value received for argument `noise_shape`. Expected an iterable of integers (e.g., a "
            f"tuple or list). Received: noise_shape={noise_shape!r}"
        ) from None
    for i, dim in enumerate(noise_shape):
        if dim is None:
            continue
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise InvalidArgumentError(
                "Invalid value received for argument `noise_shape`. Expected all elements to be integers or "
                f"None. Received element at index {i}: {dim!r} (type: {type(dim).__name__})"
            )
        if dim <= 0:
            raise InvalidArgumentError(
                "Invalid value received for argument `noise_shape`. Expected all dimensions to be positive "
                f"integers or None. Received negative or zero value at index {i}: {dim}"
            )
    if not noise_shape or noise_shape[0] is not None:
        # The batch of an MC call is its T samples: a mask shared along it would make them all equal.
        raise InvalidArgumentError(
            "Invalid value received for argument `noise_shape`. Expected None at index 0 (the batch axis: every "
            f"MC sample draws its own mask). Received: noise_shape={noise_shape!r}"
        )
    return noise_shape


class _MCLayer(keras.layers.Layer):
    """Shared machinery: draw (or receive) a keep-mask, then apply it."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = _check_rate(rate)
        self.supports_masking = True

    # The shape of one keep-mask, without the batch axis (1 on an axis where units share a decision).
    def mask_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape[1:])

    def _batch_mask_shape(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.shape(inputs)

    def _keep(self, inputs: tf.Tensor) -> tf.Tensor:
        given = getattr(_override, "masks", None)
        if given is not None and self.name in given:
            return tf.cast(given[self.name], inputs.dtype)
        # No op seed on purpose: the converter decides how the exported file is seeded.
        draw = tf.random.uniform(self._batch_mask_shape(inputs), dtype=tf.float32)
        return tf.cast(draw >= self.rate, inputs.dtype)

    def call(self, inputs):
        if self.rate == 0.0 or getattr(_override, "off", False):
            return inputs  # rate 0 is the identity, and exports no random op
        return self._apply(inputs, self._keep(inputs))

    def _apply(self, inputs, keep):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        base_config = super().get_config()
        config = {"rate": self.rate}
        return {**base_config, **config}


class _NoiseShapeMCLayer(_MCLayer):
    """An MC layer with Keras' ``noise_shape``: the keep-mask's shape, broadcast over the input."""

    def __init__(self, rate: float, noise_shape=None, **kwargs):
        super().__init__(rate, **kwargs)
        self.noise_shape = _check_noise_shape(noise_shape)

    def build(self, input_shape):
        if self.noise_shape is not None:
            shape = tuple(input_shape)
            fits = len(self.noise_shape) == len(shape) and all(
                d is None or d == 1 or d == n for d, n in zip(self.noise_shape[1:], shape[1:])
            )
            if not fits:
                raise InvalidArgumentError(
                    "Invalid value received for argument `noise_shape`. Expected one entry per input axis (rank "
                    f"{len(shape)}), each None, 1 or the input's size on that axis. Received: "
                    f"noise_shape={self.noise_shape!r} for an input of shape {shape} (layer {self.name!r})"
                )
        super().build(input_shape)

    def mask_shape(self, input_shape):
        if self.noise_shape is None:
            return tuple(input_shape[1:])
        return tuple(n if d is None else d for d, n in zip(self.noise_shape[1:], tuple(input_shape)[1:]))

    def _batch_mask_shape(self, inputs):
        if self.noise_shape is None:
            return tf.shape(inputs)
        dynamic = tf.shape(inputs)
        # Static sizes where known, so the exported RANDOM_UNIFORM gets a mostly constant shape.
        dims = [dynamic[0]]
        for i, d in enumerate(self.noise_shape[1:], start=1):
            n = inputs.shape[i] if d is None else d
            dims.append(dynamic[i] if n is None else tf.constant(n, dynamic.dtype))
        return tf.stack(dims)

    def get_config(self):
        noise_shape = None if self.noise_shape is None else list(self.noise_shape)
        return {**super().get_config(), "noise_shape": noise_shape}


@keras.saving.register_keras_serializable(package="edgekit")
class MCDropout(_NoiseShapeMCLayer):
    """Dropout that stays active at inference (Monte Carlo dropout).

    Each call zeroes every input unit with probability ``rate`` and scales the kept units by
    ``1 / (1 - rate)``, at training **and** at inference. This is deliberate: averaging T
    stochastic passes gives the MC-dropout prediction and its uncertainty. Use it where the
    seed text uses ``keras.layers.Dropout``; a model already trained with plain ``Dropout``
    can be turned into an MC model with :func:`edgekit.mc.to_mc`.

    With ``noise_shape=(None, 1, 1, 1)`` on a 4D activation it is stochastic depth ("drop path"):
    each sample keeps or drops the whole tensor, as EfficientNet's residual branches do.

    Args:
        rate: Float between 0 and 1 (1 excluded). Fraction of the input units to drop.
        noise_shape: Shape of the keep-mask, one entry per input axis, as in
            ``keras.layers.Dropout``: ``None`` takes the input's size on that axis (one decision
            per unit), ``1`` shares one decision along the axis. The batch entry must be ``None``:
            every sample draws its own mask. Default ``None``: one decision per unit.

    Call arguments:
        inputs: Input tensor (of any rank).
        training: Ignored; the layer samples in both modes.
    """

    def _apply(self, inputs, keep):
        return inputs * keep * (1.0 / (1.0 - self.rate))


@keras.saving.register_keras_serializable(package="edgekit")
class MCAlphaDropout(_NoiseShapeMCLayer):
    """Alpha dropout that stays active at inference, for self-normalizing (SELU) networks.

    Like ``keras.layers.AlphaDropout``: dropped units are set to SELU's negative saturation
    value and an affine correction keeps the mean and variance of SELU activations, so
    self-normalization survives. Unlike it, it samples at inference too (MC dropout).

    Args:
        rate: Float between 0 and 1 (1 excluded). Fraction of the input units to drop.
        noise_shape: Shape of the keep-mask, as for :class:`MCDropout` (batch entry ``None``).

    Call arguments:
        inputs: Input tensor (of any rank).
        training: Ignored; the layer samples in both modes.
    """

    _ALPHA = 1.6732632423543772848170429916717
    _SCALE = 1.0507009873554804934193349852946

    def _apply(self, inputs, keep):
        alpha_p = -self._ALPHA * self._SCALE
        a = ((1.0 - self.rate) * (1.0 + self.rate * alpha_p**2)) ** -0.5
        b = -a * alpha_p * self.rate
        return a * (inputs * keep + (1.0 - keep) * alpha_p) + b


class _SpatialMCLayer(_MCLayer):
    """Channel-wise dropout on a rank-``_NDIM`` input: one decision per sample and channel."""

    _NDIM = 4

    def __init__(self, rate: float, data_format: str | None = None, **kwargs):
        super().__init__(rate, **kwargs)
        data_format = data_format or self._default_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise InvalidArgumentError(
                "Invalid value received for argument `data_format`. Expected 'channels_last' or "
                f"'channels_first'. Received: data_format={data_format!r}"
            )
        self.data_format = data_format
        self.input_spec = keras.layers.InputSpec(ndim=self._NDIM)

    @staticmethod
    def _default_data_format() -> str:
        return keras.config.image_data_format()

    def mask_shape(self, input_shape):
        ones = (1,) * (self._NDIM - 2)
        if self.data_format == "channels_last":
            return (*ones, input_shape[-1])
        return (input_shape[1], *ones)

    def _batch_mask_shape(self, inputs):
        shape = tf.shape(inputs)
        one = tf.constant(1, shape.dtype)
        ones = [one] * (self._NDIM - 2)
        if self.data_format == "channels_last":
            return tf.stack([shape[0], *ones, shape[self._NDIM - 1]])
        return tf.stack([shape[0], shape[1], *ones])

    def _apply(self, inputs, keep):
        return inputs * keep * (1.0 / (1.0 - self.rate))

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


@keras.saving.register_keras_serializable(package="edgekit")
class MCSpatialDropout1D(_SpatialMCLayer):
    """Spatial (channel-wise) dropout for 1D conv nets that stays active at inference.

    Drops whole 1D feature maps: one keep/drop decision per sample and channel, shared by every
    time step, as ``keras.layers.SpatialDropout1D`` does when training.

    Args:
        rate: Float between 0 and 1 (1 excluded). Fraction of the channels to drop.
        data_format: ``"channels_last"`` (default, ``(batch, steps, channels)``, the only layout
            of ``keras.layers.SpatialDropout1D``) or ``"channels_first"``.

    Call arguments:
        inputs: 3D tensor.
        training: Ignored; the layer samples in both modes.
    """

    _NDIM = 3

    @staticmethod
    def _default_data_format() -> str:
        return "channels_last"  # Keras' SpatialDropout1D ignores image_data_format


@keras.saving.register_keras_serializable(package="edgekit")
class MCSpatialDropout2D(_SpatialMCLayer):
    """Spatial (channel-wise) dropout for conv nets that stays active at inference.

    Drops whole feature maps: one keep/drop decision per sample and channel, shared by every
    pixel, as ``keras.layers.SpatialDropout2D`` does when training.

    Args:
        rate: Float between 0 and 1 (1 excluded). Fraction of the channels to drop.
        data_format: ``"channels_last"`` or ``"channels_first"``; default
            ``keras.config.image_data_format()``.

    Call arguments:
        inputs: 4D tensor.
        training: Ignored; the layer samples in both modes.
    """

    _NDIM = 4


@keras.saving.register_keras_serializable(package="edgekit")
class MCSpatialDropout3D(_SpatialMCLayer):
    """Spatial (channel-wise) dropout for 3D conv nets that stays active at inference.

    Drops whole 3D feature maps: one keep/drop decision per sample and channel, shared by every
    voxel, as ``keras.layers.SpatialDropout3D`` does when training.

    Args:
        rate: Float between 0 and 1 (1 excluded). Fraction of the channels to drop.
        data_format: ``"channels_last"`` or ``"channels_first"``; default
            ``keras.config.image_data_format()``.

    Call arguments:
        inputs: 5D tensor.
        training: Ignored; the layer samples in both modes.
    """

    _NDIM = 5


# The MC twin of each Keras dropout layer, used by edgekit.mc.to_mc and by the converter.
MC_LAYERS = (MCDropout, MCAlphaDropout, MCSpatialDropout1D, MCSpatialDropout2D, MCSpatialDropout3D)
