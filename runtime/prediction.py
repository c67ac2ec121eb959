"""What a prediction returns: one summary per model output, and the result of a call.

- :class:`ClassOutput`: a class output's MC mean probabilities, their spread, the predicted class,
  entropy and mutual information (nats), whether the file's temperature was applied, and whether
  to abstain.
- :class:`ValueOutput`: a value output's MC mean, epistemic, aleatoric and total standard
  deviation, and its central predictive interval.
- :class:`MCPrediction`: the summaries of every output of N inputs, with the samples used, the
  time spent and whether a budget cut sampling short; ``to_dict`` is ``edgekit predict --json``
  (docs/predict-json.md).

:mod:`edgekit.runtime.summaries` computes them; :class:`edgekit.runtime.MCModel` returns them.
Plain values: numpy arrays and strings, nothing of the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ClassOutput", "MCPrediction", "ValueOutput", "file_notes"]


@dataclass(frozen=True)
class ClassOutput:
    """The MC summary of one class output for N inputs (every array has N rows).

    Attributes:
        name: the output's name (its signature output, Keras' output name).
        mean: ``[N, C]`` mean class probabilities (calibrated when the file carries a temperature
            and the model was opened with ``calibrated=True``).
        std: ``[N, C]`` their standard deviation over the samples.
        predicted: ``[N]`` the class with the highest mean probability; ``confidence``: that probability.
        entropy: ``[N]`` predictive entropy of ``mean`` (nats).
        mutual_information: ``[N]`` BALD mutual information of the samples (nats).
        class_names: the C class names.
        calibrated: whether a temperature was applied.
        abstain: ``[N]`` True where the file's abstention threshold says not to answer; None when
            the file has no threshold.
    """

    name: str
    mean: np.ndarray
    std: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    class_names: tuple[str, ...]
    calibrated: bool = False
    abstain: np.ndarray | None = None

    task = "classification"

    @classmethod
    def _of(cls, *values) -> ClassOutput:
        """Built from its fields in order without the frozen ``__init__`` (microseconds of a T=1 call)."""
        obj = object.__new__(cls)
        obj.__dict__.update(zip(_CLASS_FIELDS, values))
        return obj

    def row(self, i: int) -> dict[str, Any]:
        """Input ``i``'s summary as plain JSON values."""
        top = int(self.predicted[i])
        out = {"predicted": top, "label": self.class_names[top], "confidence": float(self.confidence[i]),
               "mean": self.mean[i].tolist(), "std": self.std[i].tolist(), "entropy": float(self.entropy[i]),
               "mutual_information": float(self.mutual_information[i]), "calibrated": self.calibrated}
        if self.abstain is not None:
            out["abstain"] = bool(self.abstain[i])
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "class_names": list(self.class_names)}


@dataclass(frozen=True)
class ValueOutput:
    """The MC summary of one value (regression) output for N inputs.

    Attributes:
        name: the output's name.
        mean: ``[N, *shape]`` the MC mean.
        std: ``[N, *shape]`` the epistemic standard deviation (the samples' spread).
        aleatoric_std: ``[N, *shape]`` the noise's standard deviation (the file's noise variance, or
            the mean variance a heteroscedastic head predicts); None when the file has neither.
        total_std: ``[N, *shape]`` the predictive standard deviation, sqrt(epistemic + aleatoric variance).
        low, high: ``[N, *shape]`` the central ``level`` predictive interval.
        level: the interval's level (e.g. 0.9).
    """

    name: str
    mean: np.ndarray
    std: np.ndarray
    aleatoric_std: np.ndarray | None
    total_std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float

    task = "regression"

    def row(self, i: int) -> dict[str, Any]:
        return {"mean": self.mean[i].tolist(), "std": self.std[i].tolist(),
                "aleatoric_std": None if self.aleatoric_std is None else self.aleatoric_std[i].tolist(),
                "total_std": self.total_std[i].tolist(),
                "interval": {"level": self.level, "low": self.low[i].tolist(), "high": self.high[i].tolist()}}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "shape": list(self.mean.shape[1:])}


_CLASS_FIELDS = tuple(f.name for f in dataclasses.fields(ClassOutput))


@dataclass(frozen=True)
class MCPrediction:
    """The MC-dropout result for a batch of N inputs: one summary per model output.

    ``pred.outputs`` holds a :class:`~edgekit.runtime.summaries.ClassOutput` (mean, std,
    predicted, confidence, entropy, mutual_information, class_names, abstain) or a
    :class:`~edgekit.runtime.summaries.ValueOutput` (mean, std, aleatoric_std, total_std, low,
    high) per output, in the file's order; ``pred["name"]`` picks one by name, and the first
    output's fields are also the result's own (``pred.mean`` is ``pred.outputs[0].mean``), so a
    single-output caller never needs to name it.

    Attributes:
        outputs: the per-output summaries.
        samples: ``[N]`` number of MC samples used for each input.
        elapsed_ms: ``[N]`` wall time spent on each input.
        budget_cut: ``[N]`` True where the budget stopped sampling before ``samples`` was reached.
        notes: things the caller should know about how this was computed (e.g. a file that carries
            no calibration).
    """

    outputs: tuple
    samples: np.ndarray
    elapsed_ms: np.ndarray
    budget_cut: np.ndarray
    notes: tuple[str, ...] = ()

    @classmethod
    def _of(cls, *values) -> MCPrediction:
        """A result from its fields in order, without the frozen ``__init__``'s per-field
        ``object.__setattr__`` (a few microseconds of a T=1 prediction); the same object."""
        obj = object.__new__(cls)
        obj.__dict__.update(zip(cls._FIELDS, values))
        return obj

    def __getattr__(self, name: str):
        # Only reached for names the result itself lacks: the first output's fields.
        outputs = self.__dict__.get("outputs")
        if outputs and not name.startswith("_") and hasattr(outputs[0], name):
            return getattr(outputs[0], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getitem__(self, name: str):
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(f"Expected one of the outputs {[o.name for o in self.outputs]}. Received: {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: one dict per input. Each holds every output's summary under ``outputs``, and
        the first output's fields at its top level (what a single-output consumer reads)."""
        rows = []
        for i in range(len(self.samples)):
            per = {o.name: o.row(i) for o in self.outputs}
            rows.append({**per[self.outputs[0].name], "samples": int(self.samples[i]),
                         "elapsed_ms": float(self.elapsed_ms[i]), "budget_cut": bool(self.budget_cut[i]),
                         "outputs": per})
        first = self.outputs[0]
        return {"outputs": [o.describe() for o in self.outputs],
                "class_names": list(first.class_names) if first.task == "classification" else None,
                "notes": list(self.notes), "predictions": rows}


MCPrediction._FIELDS = tuple(f.name for f in dataclasses.fields(MCPrediction))


def file_notes(plan, metadata: dict) -> tuple[str, ...]:
    """What every result of a file should say about how it was computed, from its metadata."""
    notes = []
    old = metadata.get("format", "edgekit/1") == "edgekit/1" or not str(metadata.get("format", "")).startswith("edgekit/")
    for o in plan.outputs:
        if o.task == "classification" and o.calibration is None:
            why = "the file predates calibration (edgekit/1)" if old else "the file carries no temperature"
            notes.append(f"{o.name}: uncalibrated ({why})")
        elif o.task == "regression" and o.noise_variance is None and o.variance is None:
            notes.append(f"{o.name}: no noise variance in the file: the std and interval cover the model's "
                         f"uncertainty only")
    return tuple(notes)
