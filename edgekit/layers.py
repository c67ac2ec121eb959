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

Each layer can also take its keep-mask from outside instead of drawing it (:func:`mask_inputs`).
The converter uses that to export a model whose masks are named model inputs, for targets such as
the Edge TPU or TFLite Micro that have no ``RANDOM_UNIFORM`` kernel.

All three layers are registered for Keras serialization (package ``edgekit``), so a model using them
round-trips through ``model.save`` and ``keras.models.load_model`` without ``custom_objects``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

import keras
import tensorflow as tf

__all__ = ["MCDropout", "MCAlphaDropout", "MCSpatialDropout2D", "MC_LAYERS", "mask_inputs", "dropout_off"]

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
        raise ValueError(
            "Invalid value received for argument `rate`. Expected a float value between 0 and 1 "
            f"(1 excluded). Received: rate={rate!r}"
        )
    return float(rate)


class _MCLayer(keras.layers.Layer):
    """Shared machinery: draw (or receive) a keep-mask, then apply it."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = _check_rate(rate)
        self.supports_masking = True

    # The shape of one keep-mask, without the batch axis.
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


@keras.saving.register_keras_serializable(package="edgekit")
class MCDropout(_MCLayer):
    """Dropout that stays active at inference (Monte Carlo dropout).

    Each call zeroes every input unit with probability ``rate`` and scales the kept units by
    ``1 / (1 - rate)``, at training **and** at inference. This is deliberate: averaging T
    stochastic passes gives the MC-dropout prediction and its uncertainty. Use it where the
    seed text uses ``keras.layers.Dropout``; a model already trained with plain ``Dropout``
    can be turned into an MC model with :func:`edgekit.mc.to_mc`.

    Args:
        rate: Float between 0 and 1 (1 excluded). Fraction of the input units to drop.

    Call arguments:
        inputs: Input tensor (of any rank).
        training: Ignored; the layer samples in both modes.
    """

    def _apply(self, inputs, keep):
        return inputs * keep * (1.0 / (1.0 - self.rate))


@keras.saving.register_keras_serializable(package="edgekit")
class MCAlphaDropout(_MCLayer):
    """Alpha dropout that stays active at inference, for self-normalizing (SELU) networks.

    Like ``keras.layers.AlphaDropout``: dropped units are set to SELU's negative saturation
    value and an affine correction keeps the mean and variance of SELU activations, so
    self-normalization survives. Unlike it, it samples at inference too (MC dropout).

    Args:
        rate: Float between 0 and 1 (1 excluded). Fraction of the input units to drop.

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


@keras.saving.register_keras_serializable(package="edgekit")
class MCSpatialDropout2D(_MCLayer):
    """Spatial (channel-wise) dropout for conv nets that stays active at inference.

    Drops whole feature maps: one keep/drop decision per sample and channel, shared by every
    pixel, as ``keras.layers.SpatialDropout2D`` does when training.

    Args:
        rate: Float between 0 and 1 (1 excluded). Fraction of the channels to drop.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Call arguments:
        inputs: 4D tensor.
        training: Ignored; the layer samples in both modes.
    """

    def __init__(self, rate: float, data_format: str | None = None, **kwargs):
        super().__init__(rate, **kwargs)
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                "Invalid value received for argument `data_format`. Expected 'channels_last' or "
                f"'channels_first'. Received: data_format={data_format!r}"
            )
        self.data_format = data_format
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def mask_shape(self, input_shape):
        if self.data_format == "channels_last":
            return (1, 1, input_shape[-1])
        return (input_shape[1], 1, 1)

    def _batch_mask_shape(self, inputs):
        shape = tf.shape(inputs)
        if self.data_format == "channels_last":
            return tf.stack([shape[0], 1, 1, shape[3]])
        return tf.stack([shape[0], shape[1], 1, 1])

    def _apply(self, inputs, keep):
        return inputs * keep * (1.0 / (1.0 - self.rate))

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


# The MC twin of each Keras dropout layer, used by edgekit.mc.to_mc and by the converter.
MC_LAYERS = (MCDropout, MCAlphaDropout, MCSpatialDropout2D)
