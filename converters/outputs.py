"""What each output of a Keras model is: its task, its name in the file, and how it is read.

A model may have several outputs. Each becomes one output of every stochastic signature and one
entry of the metadata's ``outputs`` (docs/format.md), with a **task** inferred from the layer
that makes it:

- softmax -> a class output (C class probabilities);
- sigmoid on one unit -> a class output of two classes (P(class 1) = the unit);
- linear (no activation) -> a value (regression) output.

Anything else (ReLU, tanh, a sigmoid on several units, a layer edgekit cannot see into) cannot be
inferred: the error names the output and the override, ``tasks={"name": "regression"}``
(``edgekit convert --task name=regression``).

A **heteroscedastic** value output predicts its own noise: declare its partner with
``variance={"mean": "log_var"}``; ``log_var`` must be a linear output of the same shape, read as
the log of the noise variance of each value. It is carried by the signatures but is not an
output of its own in the metadata.

Names: the outputs of a model with several are named by the keys of its dict of outputs
(``keras.Model(x, {"cls": ..., "value": ...})``), else as Keras names them (``model.output_names``,
the producing layers' names). A model with one output keeps the names edgekit/1 files used,
``probs`` for a class output and ``value`` for a value output, so code written for the stock
interpreter against such files keeps working.

>>> infos = describe_outputs(model, tasks={"score": "regression"})
>>> [(i.name, i.task, i.activation) for i in infos]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import keras
import numpy as np

from edgekit.errors import InvalidArgumentError, UnsupportedModelError
from edgekit.qtyping import TASKS, Task

__all__ = ["OutputInfo", "describe_outputs", "named", "outputs_metadata", "targets_by_output"]


@dataclass(frozen=True)
class OutputInfo:
    """One output of the model as the file carries it.

    Attributes:
        name: its name in the signatures and the metadata.
        index: its position in ``model.outputs``.
        task: ``"classification"`` or ``"regression"``; ``"log_variance"`` for the partner of a
            heteroscedastic output (not listed in the metadata on its own).
        activation: ``"softmax"`` or ``"sigmoid"`` for a class output, None otherwise.
        shape: the output's shape without the batch axis.
        class_names: for a class output, the class names (or None).
        variance: for a heteroscedastic value output, the name of its log-variance partner.
    """

    name: str
    index: int
    task: str
    activation: str | None
    shape: tuple[int, ...]
    class_names: tuple[str, ...] | None = None
    variance: str | None = None

    @property
    def num_classes(self) -> int:
        if self.task != Task.CLASSIFICATION:
            return 0
        return 2 if self.activation == "sigmoid" else int(self.shape[-1])


def _keras_names(model: keras.Model) -> list[str]:
    from edgekit.mc import output_names

    return output_names(model)


def _activation(tensor) -> str | None:
    """The name of the activation that makes ``tensor`` ("linear" for none), or None if unknown."""
    try:
        op = tensor._keras_history.operation
    except AttributeError:
        return None
    if isinstance(op, keras.layers.Softmax):
        return "softmax"
    act = getattr(op, "activation", None)
    if act is None:
        # A layer with no activation of its own that passes values through linearly.
        return "linear" if isinstance(op, (keras.layers.Add, keras.layers.Reshape, keras.layers.Flatten)) else None
    name = getattr(act, "__name__", None) or str(act)
    return {"linear": "linear", "softmax": "softmax", "sigmoid": "sigmoid"}.get(name, name)


def describe_outputs(model: keras.Model, *, tasks: Mapping[str, str] | None = None,
                     variance: Mapping[str, str] | None = None,
                     class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None) -> list[OutputInfo]:
    """The outputs of ``model`` (see the module docstring), in ``model.outputs`` order.

    Args:
        tasks: per Keras output name, ``"classification"`` or ``"regression"``, overriding the
            inferred task.
        variance: ``{value output: its log-variance output}`` for heteroscedastic heads.
        class_names: the class names of the class output (a list, for a model with one class
            output), or per output name.

    Raises:
        UnsupportedModelError: a task that cannot be inferred, an output shape edgekit cannot
            carry, or a malformed variance declaration.
        InvalidArgumentError: overrides naming outputs the model does not have.
    """
    keras_names = _keras_names(model)
    single = len(keras_names) == 1
    tasks, variance = dict(tasks or {}), dict(variance or {})
    for what, given in (("tasks", tasks), ("variance", {**variance, **{v: v for v in variance.values()}})):
        unknown = sorted(set(given) - set(keras_names))
        if unknown:
            raise InvalidArgumentError(f"`{what}` names output(s) {unknown} the model does not have. Expected names "
                                       f"from {keras_names}. Received: {unknown}")
    bad = {k: v for k, v in tasks.items() if v not in TASKS}
    if bad:
        raise InvalidArgumentError(f"Expected tasks in {list(TASKS)}. Received: {bad}")
    partners = set(variance.values())
    infos = []
    for i, (kname, tensor) in enumerate(zip(keras_names, model.outputs)):
        shape = tuple(tensor.shape[1:])
        if not shape or any(d is None for d in shape):
            raise UnsupportedModelError(f"Output {kname!r} has shape {(None, *shape)}. Expected a fixed shape "
                                        f"besides the batch, with at least one axis.")
        act = _activation(tensor)
        if kname in partners:
            if act != "linear":
                raise UnsupportedModelError(
                    f"Output {kname!r} is declared the log-variance of a heteroscedastic output. Expected a linear "
                    f"output (no activation) read as log-variance. Received: activation {act!r}")
            infos.append(OutputInfo(kname, i, "log_variance", None, shape))
            continue
        task = tasks.get(kname)
        if task is None:
            if act == "softmax" or (act == "sigmoid" and shape == (1,)):
                task = Task.CLASSIFICATION.value
            elif act == "linear":
                task = Task.REGRESSION.value
            else:
                raise UnsupportedModelError(
                    f"Cannot tell whether output {kname!r} (activation {act!r}) holds classes or values. Expected a "
                    f"softmax or one-unit sigmoid (classification) or a linear output (regression). Pass "
                    f"tasks={{{kname!r}: 'classification' or 'regression'}} (CLI: --task {kname}=regression)"
                )
        activation = None
        if task == Task.CLASSIFICATION:
            if len(shape) != 1:
                raise UnsupportedModelError(f"Class output {kname!r} has shape {(None, *shape)}. Expected "
                                            f"(batch, classes).")
            activation = "sigmoid" if act == "sigmoid" and shape == (1,) else "softmax"
            if act not in ("softmax", "sigmoid") or (act == "sigmoid" and shape != (1,)):
                raise UnsupportedModelError(
                    f"Output {kname!r} is declared a class output, but its activation is {act!r}. Expected softmax, "
                    f"or sigmoid on one unit (several sigmoid units, multi-label, are not supported)"
                )
        elif kname in variance and variance[kname] not in keras_names:
            raise InvalidArgumentError(f"Unknown log-variance output {variance[kname]!r}. Expected one of {keras_names}")
        name = kname if not single else ("probs" if task == Task.CLASSIFICATION else "value")
        infos.append(OutputInfo(name, i, task, activation, shape, None, variance.get(kname)))
    for mean, var in variance.items():
        a, b = next(x for x in infos if x.index == keras_names.index(mean)), infos[keras_names.index(var)]
        if a.task != Task.REGRESSION or a.shape != b.shape:
            raise UnsupportedModelError(
                f"Expected {mean!r} to be a value output of the same shape as its log-variance {var!r}. Received: "
                f"{a.task} {a.shape} and {b.shape}")
    return _with_class_names(infos, class_names)


def _with_class_names(infos: list[OutputInfo], class_names) -> list[OutputInfo]:
    classes = [i for i in infos if i.task == Task.CLASSIFICATION]
    if class_names is None:
        return infos
    if isinstance(class_names, Mapping):
        given = {k: list(v) for k, v in class_names.items()}
    elif len(classes) == 1:
        given = {classes[0].name: list(class_names)}
    else:
        raise InvalidArgumentError(f"Expected `class_names` per output name for a model with {len(classes)} class "
                                   f"outputs. Received: one list")
    out = []
    for info in infos:
        names = given.pop(info.name, None)
        if names is not None:
            if info.task != Task.CLASSIFICATION or len(names) != info.num_classes:
                raise InvalidArgumentError(f"Expected {info.num_classes} class names for output {info.name!r}. "
                                           f"Received: {len(names)}")
            info = OutputInfo(info.name, info.index, info.task, info.activation, info.shape,
                              tuple(str(c) for c in names), info.variance)
        out.append(info)
    if given:
        raise InvalidArgumentError(f"`class_names` names output(s) {sorted(given)} the model does not have as class "
                                   f"outputs. Expected names from {[i.name for i in classes]}")
    return out


def named(result, infos: list[OutputInfo]) -> dict:
    """A model call's outputs (a tensor, a list or a dict) as ``{file name: tensor}`` in file order.

    A dict of outputs is flattened as Keras flattens ``model.outputs`` (by sorted key), not in the
    order it was written: the order of a dict's values would pair outputs with other names."""
    from edgekit.mc import _as_list

    values = _as_list(result)
    by_index = {i.index: i.name for i in infos}
    return {by_index[k]: values[k] for k in sorted(by_index)}


def outputs_metadata(infos: list[OutputInfo], *, interval: float = 0.9) -> list[dict]:
    """The metadata's ``outputs`` list (docs/format.md): every output but log-variance partners."""
    out = []
    for info in infos:
        if info.task == "log_variance":
            continue
        entry = {"name": info.name, "task": info.task, "shape": list(info.shape)}
        if info.task == Task.CLASSIFICATION:
            entry.update(activation=info.activation,
                         class_names=None if info.class_names is None else list(info.class_names),
                         calibration=None, abstain=None)
        else:
            entry.update(noise_variance=None,
                         variance=None if info.variance is None else {"output": info.variance, "kind": "log_variance"},
                         interval=interval)
        out.append(entry)
    return out


def targets_by_output(y, specs, n: int, what: str) -> dict[str, np.ndarray]:
    """Targets per output name from ``y`` (an array for a one-output file, else ``{name: targets}``),
    checked against ``specs`` (a plan's outputs): ``n`` integer labels in ``[0, C)`` for a class
    output (int64), ``n`` finite values of the output's shape for a value output (float64).
    Outputs without targets are left out. ``what`` names the data in messages."""

    names = [s.name for s in specs]
    if isinstance(y, Mapping):
        unknown = sorted(set(y) - set(names))
        if unknown:
            raise InvalidArgumentError(f"The {what} targets name output(s) {unknown} the model does not have. "
                                       f"Expected names from {names}. Received: {sorted(y)}")
        given = dict(y)
    elif len(names) == 1:
        given = {names[0]: y}
    else:
        raise InvalidArgumentError(f"Expected {what} targets per output name ({{name: targets}}) for a model with "
                                   f"outputs {names}. Received: one array")
    out = {}
    for spec in specs:
        if spec.name not in given or given[spec.name] is None:
            continue
        t = np.asarray(given[spec.name])
        if spec.task == "classification":
            if t.dtype.kind not in "iuf" or t.size != n:
                raise InvalidArgumentError(f"Expected {what} targets of output {spec.name!r}: {n} integer labels. "
                                           f"Received: shape {t.shape}, dtype {t.dtype}")
            t = t.reshape(-1)
            if t.dtype.kind == "f" and not (np.isfinite(t).all() and np.all(t == np.round(t))):
                raise InvalidArgumentError(f"Expected integer {what} labels for class output {spec.name!r}. Received: "
                                           f"non-integer or NaN values")
            t = t.astype(np.int64)
            if len(t) and (t.min() < 0 or t.max() >= spec.num_classes):
                raise InvalidArgumentError(f"Expected {what} labels in [0, {spec.num_classes - 1}] (the model's "
                                           f"classes). Received: labels in [{int(t.min())}, {int(t.max())}] for output "
                                           f"{spec.name!r}")
        else:
            want = (n, *spec.shape)
            if t.dtype.kind not in "iuf" or t.shape[:1] != (n,) or t.size != int(np.prod(want)):
                raise InvalidArgumentError(f"Expected {what} targets of shape {want} for value output {spec.name!r}. "
                                           f"Received: shape {t.shape}")
            t = t.astype(np.float64).reshape(want)
            if not np.isfinite(t).all():
                raise InvalidArgumentError(f"Expected finite {what} targets for value output {spec.name!r}. Received: "
                                           f"NaN or Inf")
        out[spec.name] = t
    return out
