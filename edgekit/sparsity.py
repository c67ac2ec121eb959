"""ℓ1-friendly magnitude pruning in native Keras 3: reach a target sparsity while fine-tuning.

TensorFlow Model Optimization's pruning wrappers do not support Keras 3, so edgekit prunes with
a plain callback. Every ``frequency`` steps between ``begin_step`` and ``end_step`` the
:class:`PruningCallback` recomputes, for each prunable kernel (Dense, Conv2D, DepthwiseConv2D),
a mask that zeroes its smallest-magnitude weights; after *every* training step it multiplies the
kernel by its mask again, so weights the optimizer nudged away from zero go back to exactly zero.
The sparsity follows the polynomial schedule of Zhu & Gupta (2017), the one tfmot uses:

    s(t) = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_1 - t_0)) ** 3

so most weights go early, while the network can still recover, and few near the end.

>>> from edgekit.sparsity import sparsify
>>> result = sparsify(model, x_train, y_train, target=0.8, epochs=2)
>>> print(result.to_table())          # per-layer sparsity
>>> result.model.save("sparse.keras")

Training with ``kernel_regularizer=keras.regularizers.l1(...)`` (``edgekit.recipes`` takes an
``l1=`` option) drives many weights towards zero already, so pruning them costs less accuracy.
Exact zeros stay exact through conversion: float16 and int8 both represent 0 exactly (int8
weights are quantized symmetrically, zero point 0). They make the file compress well (see the
gzip size in the conversion report); the raw ``.tflite`` stays dense unless converted with
``sparse=True`` (float32 only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from edgekit.errors import InvalidArgumentError, UnsupportedModelError

__all__ = [
    "LayerSparsity",
    "PolynomialSchedule",
    "PruningCallback",
    "SparsifyResult",
    "prunable_layers",
    "prune_once",
    "sparsify",
    "sparsity_report",
]

_PRUNABLE = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise InvalidArgumentError(
            f"Invalid value received for argument `{name}`. Expected a float value between 0 and 1 "
            f"(1 excluded). Received: {name}={value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class PolynomialSchedule:
    """Sparsity over training steps: ``initial`` at ``begin_step`` to ``target`` at ``end_step``.

    Args:
        target: final sparsity (fraction of zeros per kernel), in [0, 1).
        end_step: step at which ``target`` is reached (masks are then frozen).
        begin_step: first pruning step.
        initial: sparsity at ``begin_step``.
        frequency: steps between mask updates.
        power: exponent of the decay (3 in Zhu & Gupta).
    """

    target: float
    end_step: int
    begin_step: int = 0
    initial: float = 0.0
    frequency: int = 50
    power: int = 3

    def __post_init__(self):
        _check_fraction("target", self.target)
        _check_fraction("initial", self.initial)
        if self.end_step < self.begin_step or self.begin_step < 0:
            raise InvalidArgumentError(
                f"Expected 0 <= begin_step <= end_step. Received: begin_step={self.begin_step}, end_step={self.end_step}"
            )
        if self.frequency < 1:
            raise InvalidArgumentError(f"Expected a positive `frequency`. Received: frequency={self.frequency}")

    def sparsity_at(self, step: int) -> float:
        if step <= self.begin_step:
            return self.initial
        if step >= self.end_step:
            return self.target
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        return self.target + (self.initial - self.target) * (1.0 - progress) ** self.power

    def updates_at(self, step: int) -> bool:
        return self.begin_step <= step <= self.end_step and (
            (step - self.begin_step) % self.frequency == 0 or step == self.end_step
        )


@dataclass(frozen=True)
class LayerSparsity:
    """Zeros in one layer's kernel."""

    name: str
    kind: str
    weights: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0


def prunable_layers(model: keras.Model, skip: Sequence[str] = ()) -> list[keras.layers.Layer]:
    """Dense, Conv2D and DepthwiseConv2D layers of ``model`` (nested models included), minus ``skip``."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += prunable_layers(layer, skip)
        elif isinstance(layer, _PRUNABLE) and layer.name not in skip:
            found.append(layer)
    return found


def _kernel(layer):
    return layer.kernel  # Dense, Conv2D and (in Keras 3) DepthwiseConv2D all name it `kernel`


def _magnitude_mask(kernel: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask zeroing the ``round(sparsity * size)`` smallest |w| (ties broken by position)."""
    k = int(round(sparsity * kernel.size))
    mask = np.ones(kernel.size, dtype=kernel.dtype)
    if k > 0:
        order = np.argsort(np.abs(kernel).reshape(-1), kind="stable")
        mask[order[:k]] = 0
    return mask.reshape(kernel.shape)


def sparsity_report(model: keras.Model) -> tuple[LayerSparsity, ...]:
    """Per prunable layer: kernel size and exact zeros."""
    out = []
    for layer in prunable_layers(model):
        w = keras.ops.convert_to_numpy(_kernel(layer))
        out.append(LayerSparsity(layer.name, type(layer).__name__, int(w.size), int(np.count_nonzero(w == 0))))
    return tuple(out)


def prune_once(model: keras.Model, sparsity: float, skip: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Zero the smallest weights of every prunable kernel in place; return the masks by layer name."""
    _check_fraction("sparsity", sparsity)
    masks = {}
    for layer in prunable_layers(model, skip):
        var = _kernel(layer)
        w = keras.ops.convert_to_numpy(var)
        mask = _magnitude_mask(w, sparsity)
        var.assign(w * mask)
        masks[layer.name] = mask
    return masks


class PruningCallback(keras.callbacks.Callback):
    """Keep prunable kernels masked during ``fit``; update the masks on a schedule.

    Args:
        schedule: a :class:`PolynomialSchedule` (steps count training batches across epochs).
        skip: names of layers to leave dense.
    """

    def __init__(self, schedule: PolynomialSchedule, skip: Sequence[str] = ()):
        super().__init__()
        self.schedule = schedule
        self.skip = tuple(skip)
        self.step = 0
        self.masks: dict[str, np.ndarray] = {}

    def on_train_begin(self, logs=None):
        self.masks = prune_once(self.model, self.schedule.sparsity_at(self.step), self.skip)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.schedule.updates_at(self.step):
            self.masks = prune_once(self.model, self.schedule.sparsity_at(self.step), self.skip)
            return
        # Re-apply: the optimizer step moved some pruned weights away from zero.
        for layer in prunable_layers(self.model, self.skip):
            var = _kernel(layer)
            var.assign(keras.ops.convert_to_numpy(var) * self.masks[layer.name])

    def on_train_end(self, logs=None):
        # Whatever the schedule reached, end exactly at the target.
        self.masks = prune_once(self.model, self.schedule.target, self.skip)


@dataclass(frozen=True)
class SparsifyResult:
    """The pruned model (a copy), its per-layer sparsity, and accuracy before/after if measured."""

    model: keras.Model
    layers: tuple[LayerSparsity, ...]
    target: float
    accuracy_before: float | None = None
    accuracy_after: float | None = None

    @property
    def overall(self) -> float:
        total = sum(s.weights for s in self.layers)
        return sum(s.zeros for s in self.layers) / total if total else 0.0

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "overall_sparsity": self.overall,
            "layers": [{"name": s.name, "kind": s.kind, "weights": s.weights, "zeros": s.zeros,
                        "sparsity": s.sparsity} for s in self.layers],
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
        }

    def to_table(self) -> str:
        lines = [f"{'layer':<20}{'kind':<18}{'weights':>10}{'zeros':>10}{'sparsity':>10}"]
        for s in self.layers:
            lines.append(f"{s.name:<20}{s.kind:<18}{s.weights:>10,}{s.zeros:>10,}{100 * s.sparsity:>9.1f}%")
        total = sum(s.weights for s in self.layers)
        lines.append(f"{'total':<38}{total:>10,}{sum(s.zeros for s in self.layers):>10,}{100 * self.overall:>9.1f}%")
        if self.accuracy_before is not None and self.accuracy_after is not None:
            lines.append(f"accuracy (dropout off): {100 * self.accuracy_before:.2f}% -> {100 * self.accuracy_after:.2f}%")
        return "\n".join(lines)


def _accuracy(model, data) -> float | None:
    if data is None:
        return None
    from edgekit.layers import dropout_off

    x, y = data
    x = np.asarray(x, dtype=np.float32)
    # Eager calls: model.predict would cache a traced function with dropout off for good.
    with dropout_off():
        probs = np.concatenate([keras.ops.convert_to_numpy(model(x[i : i + 1024], training=False))
                                for i in range(0, len(x), 1024)])
    return float(np.mean(np.argmax(probs, axis=-1) == np.asarray(y).reshape(-1)))


def sparsify(
    model: keras.Model,
    x,
    y,
    *,
    target: float = 0.8,
    epochs: int = 2,
    batch_size: int = 64,
    learning_rate: float = 5e-4,
    skip: Sequence[str] = (),
    validation_data=None,
    verbose: int = 0,
) -> SparsifyResult:
    """Prune a copy of ``model`` to ``target`` sparsity per kernel, fine-tuning for ``epochs``.

    The sparsity ramps up over the first 70% of the steps (then the masks are frozen and the
    network recovers for the remaining 30%). ``epochs=0`` prunes once without training. The
    model must output class probabilities and ``y`` holds integer labels.

    Raises:
        ValueError: bad ``target``/``epochs``, no prunable layer, or ``x``/``y`` that do not match.
    """
    _check_fraction("target", target)
    if not isinstance(epochs, int) or epochs < 0:
        raise InvalidArgumentError(f"Expected a non-negative int `epochs`. Received: epochs={epochs!r}")
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise InvalidArgumentError(f"Expected as many labels as inputs (and at least one). Received: {len(x)} inputs, {len(y)} labels")
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if not prunable_layers(clone, skip):
        raise UnsupportedModelError("Expected a model with Dense, Conv2D or DepthwiseConv2D layers to prune. Received: none")
    before = _accuracy(clone, validation_data)
    if epochs == 0:
        prune_once(clone, target, skip)
    else:
        steps = epochs * int(np.ceil(len(x) / batch_size))
        schedule = PolynomialSchedule(target=target, end_step=max(1, int(0.7 * steps)),
                                      frequency=max(1, steps // 50))
        clone.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
        clone.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose,
                  callbacks=[PruningCallback(schedule, skip)])
    return SparsifyResult(clone, sparsity_report(clone), float(target), before, _accuracy(clone, validation_data))
