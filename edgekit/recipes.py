"""Training recipes: the seed text's default configurations, with MC dropout built in.

Three model builders and one way to train them:

- :func:`book`: exactly the seed's dropout MLP (Flatten, dropout 0.2 before each Dense, Dense 300
  and 100 with ELU and He init, softmax 10), with MC layers instead of ``Dropout``.
- :func:`default_dnn`: Table 11-3. He initialization, ELU, Batch Norm only when deep, optional ℓ2
  (and ℓ1 for sparsity), MC dropout in the top layers, optional max-norm.
- :func:`self_normalizing`: Table 11-4. LeCun initialization, SELU, no Batch Norm, MC alpha
  dropout in the top layers, standardized inputs.
- :func:`small_cnn`: (Conv+BN+ReLU, max-pool) x2, then MC dropout in the top two layers: the
  conv net the converter's BatchNorm folding and prefix caching are measured on.

Every builder starts with a fixed ``Rescaling`` layer that standardizes the inputs with the
training set's mean and std ("Don't forget to normalize the input features!"), so the exported
model takes raw [0, 1] pixels on the device. :func:`compile_model` uses Nadam or momentum SGD
with the 1cycle schedule (:class:`OneCycle`); :func:`train` adds early stopping.

>>> from edgekit import recipes
>>> model = recipes.build("book", mean=0.286, std=0.353)
>>> recipes.compile_model(model, steps=20 * 430)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from edgekit.errors import InvalidArgumentError
from edgekit.layers import MCAlphaDropout, MCDropout

__all__ = [
    "RECIPES",
    "OneCycle",
    "TrainResult",
    "book",
    "build",
    "compile_model",
    "default_dnn",
    "self_normalizing",
    "small_cnn",
    "train",
]

RECIPES = ("book", "default", "selu")


def _check_top(mc_layers: int, n_hidden: int) -> None:
    if not isinstance(mc_layers, int) or not 0 <= mc_layers <= n_hidden:
        raise InvalidArgumentError(
            f"Expected `mc_layers` between 0 and the number of hidden layers ({n_hidden}). "
            f"Received: mc_layers={mc_layers!r}"
        )


def _check_rate(name: str, value: float | None) -> None:
    if value is not None and (not isinstance(value, (int, float)) or value < 0):
        raise InvalidArgumentError(f"Expected `{name}` to be a non-negative number or None. Received: {name}={value!r}")


def _inputs(input_shape: Sequence[int], mean: float, std: float):
    if std <= 0:
        raise InvalidArgumentError(f"Expected a positive input `std`. Received: std={std!r}")
    inputs = keras.Input(shape=tuple(input_shape), name="x")
    # Standardize inside the model: the device then feeds raw [0, 1] pixels.
    x = keras.layers.Rescaling(scale=1.0 / std, offset=-mean / std, name="standardize")(inputs)
    return inputs, keras.layers.Flatten(name="flatten")(x)


def book(input_shape=(28, 28), n_classes: int = 10, *, mean: float = 0.0, std: float = 1.0,
         rate: float = 0.2) -> keras.Model:
    """The seed text's dropout MLP, with MC dropout (always on) before each Dense layer."""
    inputs, x = _inputs(input_shape, mean, std)
    x = MCDropout(rate, name="mc_dropout_0")(x)
    x = keras.layers.Dense(300, activation="elu", kernel_initializer="he_normal", name="dense_0")(x)
    x = MCDropout(rate, name="mc_dropout_1")(x)
    x = keras.layers.Dense(100, activation="elu", kernel_initializer="he_normal", name="dense_1")(x)
    x = MCDropout(rate, name="mc_dropout_2")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="book")


def default_dnn(input_shape=(28, 28), n_classes: int = 10, *, hidden: Sequence[int] = (300, 100),
                mean: float = 0.0, std: float = 1.0, rate: float = 0.2, mc_layers: int = 2,
                batchnorm: bool | None = None, l2: float | None = None, l1: float | None = None,
                max_norm: float | None = None) -> keras.Model:
    """Table 11-3: He init, ELU, Batch Norm if deep, optional ℓ1/ℓ2 and max-norm, top-layer MC dropout.

    Args:
        hidden: units of each hidden Dense layer.
        rate: the MC dropout rate.
        mc_layers: how many of the top hidden layers get MC dropout after them (the seed:
            "usually ... only ... the top one to three layers").
        batchnorm: Batch Norm after each hidden Dense; ``None`` means "only if deep" (more than
            three hidden layers).
        l2, l1: kernel regularization factors (ℓ1 drives weights to exactly zero, for sparsity).
        max_norm: max-norm constraint r on each neuron's incoming weights.
    """
    hidden = tuple(hidden)
    _check_top(mc_layers, len(hidden))
    for name, value in (("l1", l1), ("l2", l2), ("max_norm", max_norm)):
        _check_rate(name, value)
    if batchnorm is None:
        batchnorm = len(hidden) > 3
    regularizer = None
    if l1 or l2:
        regularizer = keras.regularizers.L1L2(l1=l1 or 0.0, l2=l2 or 0.0)
    constraint = keras.constraints.MaxNorm(max_norm) if max_norm else None
    inputs, x = _inputs(input_shape, mean, std)
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, kernel_initializer="he_normal", kernel_regularizer=regularizer,
                               kernel_constraint=constraint, use_bias=not batchnorm, name=f"dense_{i}")(x)
        if batchnorm:
            x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.Activation("elu", name=f"elu_{i}")(x)
        if i >= len(hidden) - mc_layers:
            x = MCDropout(rate, name=f"mc_dropout_{i}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=regularizer,
                                 name="probs")(x)
    return keras.Model(inputs, outputs, name="default_dnn")


def self_normalizing(input_shape=(28, 28), n_classes: int = 10, *, hidden: Sequence[int] = (300, 100),
                     mean: float = 0.0, std: float = 1.0, rate: float = 0.1, mc_layers: int = 2,
                     max_norm: float | None = None) -> keras.Model:
    """Table 11-4: LeCun init, SELU, no Batch Norm, MC alpha dropout in the top layers.

    Inputs are standardized by the model's first layer, as self-normalization requires. ℓ1/ℓ2
    are not offered: the seed notes that they break self-normalization.
    """
    hidden = tuple(hidden)
    _check_top(mc_layers, len(hidden))
    _check_rate("max_norm", max_norm)
    constraint = keras.constraints.MaxNorm(max_norm) if max_norm else None
    inputs, x = _inputs(input_shape, mean, std)
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="selu", kernel_initializer="lecun_normal",
                               kernel_constraint=constraint, name=f"dense_{i}")(x)
        if i >= len(hidden) - mc_layers:
            x = MCAlphaDropout(rate, name=f"mc_alpha_dropout_{i}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="self_normalizing")


def small_cnn(input_shape=(28, 28, 1), n_classes: int = 10, *, filters: Sequence[int] = (16, 32),
              units: int = 128, rate: float = 0.3) -> keras.Model:
    """(Conv2D + BatchNorm + ReLU + max-pool) per entry of ``filters``, then Flatten, MC dropout,
    Dense(``units``, ReLU), MC dropout, softmax: MC dropout in the top two layers only.

    The convolutions have no bias (BatchNorm follows), so the converter folds each BatchNorm into
    its convolution; everything before the first MC layer is the deterministic trunk.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="x")
    h = inputs
    for i, n in enumerate(filters):
        h = keras.layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"conv_{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn_{i}")(h)
        h = keras.layers.ReLU(name=f"relu_{i}")(h)
        h = keras.layers.MaxPooling2D(2, name=f"pool_{i}")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = MCDropout(rate, name="mc_0")(h)
    h = keras.layers.Dense(units, activation="relu", name="dense_0")(h)
    h = MCDropout(rate, name="mc_1")(h)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probs")(h)
    return keras.Model(inputs, outputs, name="small_cnn")


def build(recipe: str, **kwargs) -> keras.Model:
    """Build a model by recipe name: ``book``, ``default`` or ``selu``."""
    builders = {"book": book, "default": default_dnn, "selu": self_normalizing}
    if recipe not in builders:
        raise InvalidArgumentError(f"Unknown recipe. Expected one of {', '.join(RECIPES)}. Received: {recipe!r}")
    return builders[recipe](**kwargs)


@keras.saving.register_keras_serializable(package="edgekit")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """The 1cycle learning-rate schedule (Smith 2018), as the seed's chapter implements it.

    Over the first half of the cycle the rate rises linearly from ``max_rate / 10`` to
    ``max_rate``; over the second half it falls back to ``max_rate / 10``; over the last
    ``steps // 10 + 1`` steps it falls linearly to ``max_rate / 10_000``, and stays there.

    Args:
        steps: total number of training steps (epochs x batches per epoch).
        max_rate: the peak learning rate.
    """

    def __init__(self, steps: int, max_rate: float):
        if not isinstance(steps, int) or steps < 2:
            raise InvalidArgumentError(f"Expected `steps` to be an integer >= 2. Received: steps={steps!r}")
        if not max_rate > 0:
            raise InvalidArgumentError(f"Expected a positive `max_rate`. Received: max_rate={max_rate!r}")
        self.steps = steps
        self.max_rate = float(max_rate)
        self.start_rate = self.max_rate / 10
        self.last_rate = self.start_rate / 1000
        self.last_steps = steps // 10 + 1
        self.half = (steps - self.last_steps) // 2

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        half, top = float(self.half), float(2 * self.half)

        def ramp(x0, x1, y0, y1):
            span = max(x1 - x0, 1.0)
            return y0 + (y1 - y0) * (step - x0) / span

        up = ramp(0.0, half, self.start_rate, self.max_rate)
        down = ramp(half, top, self.max_rate, self.start_rate)
        tail = tf.maximum(ramp(top, float(self.steps), self.start_rate, self.last_rate), self.last_rate)
        return tf.where(step < half, up, tf.where(step < top, down, tail))

    def get_config(self):
        return {"steps": self.steps, "max_rate": self.max_rate}


def compile_model(model: keras.Model, *, steps: int, optimizer: str = "nadam",
                  max_rate: float | None = None) -> keras.Model:
    """Compile for classification with a 1cycle schedule: ``nadam`` or ``momentum`` (SGD, 0.9)."""
    if optimizer == "nadam":
        schedule = OneCycle(steps, max_rate or 2e-3)
        opt = keras.optimizers.Nadam(learning_rate=schedule)
    elif optimizer == "momentum":
        schedule = OneCycle(steps, max_rate or 5e-2)
        opt = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True)
    else:
        raise InvalidArgumentError(f"Unknown optimizer. Expected 'nadam' or 'momentum'. Received: {optimizer!r}")
    model.compile(loss="sparse_categorical_crossentropy", optimizer=opt, metrics=["accuracy"])
    return model


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: epochs run, and the validation accuracy of the epoch kept (best val loss)."""

    epochs_run: int
    val_accuracy: float


def train(model: keras.Model, x_train, y_train, *, epochs: int, batch_size: int = 64,
          optimizer: str = "nadam", max_rate: float | None = None, validation: int = 5000,
          patience: int = 5, verbose: int | str = "auto") -> TrainResult:
    """Compile and fit with 1cycle and early stopping on a held-out tail of the training set.

    The last ``validation`` training examples are held out (the seed's 55,000 / 5,000 split).
    Early stopping restores the best weights. Keras' own progress bar shows progress.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise InvalidArgumentError(f"Expected `epochs` to be an integer >= 1. Received: epochs={epochs!r}")
    x_train = np.asarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train)
    if not 0 < validation < len(x_train):
        raise InvalidArgumentError(
            f"Expected `validation` between 1 and {len(x_train) - 1}. Received: validation={validation!r}"
        )
    x_fit, y_fit = x_train[:-validation], y_train[:-validation]
    x_val, y_val = x_train[-validation:], y_train[-validation:]
    steps = epochs * int(np.ceil(len(x_fit) / batch_size))
    compile_model(model, steps=steps, optimizer=optimizer, max_rate=max_rate)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    history = model.fit(x_fit, y_fit, epochs=epochs, batch_size=batch_size,
                        validation_data=(x_val, y_val), callbacks=[stop], verbose=verbose)
    best = int(np.argmin(history.history["val_loss"]))
    return TrainResult(epochs_run=len(history.history["loss"]),
                       val_accuracy=float(history.history["val_accuracy"][best]))
