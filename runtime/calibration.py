"""Calibration of MC class probabilities on the device: a temperature per input, applied per sample.

A compressed MC model can be under- or over-confident. A temperature ``tau`` fixes the scale:
each MC sample's probabilities ``p`` become ``softmax(log p / tau)``, which equals
``softmax(z / tau)`` for the sample's logits ``z``, so it is exact from probabilities alone and
needs nothing from the graph. The samples are averaged after that.

One temperature for every input cannot be right both in distribution and under shift: fitted on
held-out in-distribution data it may sharpen (``tau < 1``), and sharpening an input the model
has never seen makes it more overconfident still. So the temperature here may depend on the
input's **mutual information** (BALD, the model's own disagreement between samples):

    tau(x) = exp(log_temperature + mi_slope * MI(x))

with ``mi_slope >= 0``: the more the samples disagree, the less the probabilities are sharpened
(``mi_slope = 0`` is the plain temperature). MI is computed from the uncalibrated samples, in
nats. :mod:`edgekit.converters.calibrate` fits both parameters by held-out NLL; this module only
applies them (numpy, no TensorFlow).

>>> from edgekit.runtime.calibration import Temperature
>>> cal = Temperature.from_dict({"method": "temperature", "temperature": 0.74, "mi_slope": 1.0})
>>> calibrated = cal.apply(probs)          # probs [T, C] (one input) or [N, T, C]

:class:`Abstention` is the other fitted value a file may carry: a threshold on an uncertainty
score above which the runtime flags a prediction as one to abstain from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import InvalidArgumentError

__all__ = ["Abstention", "Temperature", "mutual_information"]

_EPS = 1e-12  # log(0) guard: a probability below it contributes nothing measurable


def mutual_information(probs: np.ndarray) -> np.ndarray:
    """BALD mutual information (nats) of per-sample probabilities ``[..., T, C]``: ``[...]``.

    The entropy of the mean minus the mean per-sample entropy, clipped at 0 (rounding can make it
    a hair negative when every sample agrees).
    """
    p = np.asarray(probs, dtype=np.float64)
    mean = p.mean(axis=-2)
    total = -(mean * np.log(mean + _EPS)).sum(axis=-1)
    expected = -(p * np.log(p + _EPS)).sum(axis=-1).mean(axis=-1)
    return np.maximum(total - expected, 0.0)


@dataclass(frozen=True)
class Temperature:
    """``tau(x) = exp(log_temperature + mi_slope * MI(x))``, applied to each MC sample.

    Attributes:
        log_temperature: log of the temperature of an input whose samples agree (MI = 0).
        mi_slope: how fast the temperature grows with the input's mutual information (>= 0; 0 is
            one temperature for every input).
    """

    log_temperature: float
    mi_slope: float = 0.0

    def __post_init__(self):
        if not math.isfinite(self.log_temperature) or abs(self.log_temperature) > math.log(1e3):
            t = math.exp(self.log_temperature) if math.isfinite(self.log_temperature) else self.log_temperature
            raise InvalidArgumentError(f"Expected a temperature in [1e-3, 1e3]. Received: temperature={t}")
        if not math.isfinite(self.mi_slope) or self.mi_slope < 0:
            raise InvalidArgumentError(
                f"Expected `mi_slope` to be a finite number >= 0. Received: mi_slope={self.mi_slope}")

    @property
    def temperature(self) -> float:
        """The temperature at MI = 0."""
        return math.exp(self.log_temperature)

    def temperatures(self, mi: np.ndarray) -> np.ndarray:
        """The temperature of each input, from its mutual information (nats)."""
        return np.exp(self.log_temperature + self.mi_slope * np.asarray(mi, dtype=np.float64))

    def apply(self, probs: np.ndarray, mi: np.ndarray | None = None) -> np.ndarray:
        """Calibrated per-sample probabilities, same shape as ``probs`` ``[..., T, C]``, float64.

        ``mi`` (``[...]``) is the inputs' mutual information; computed from ``probs`` when None.
        """
        p = np.asarray(probs, dtype=np.float64)
        if self.mi_slope == 0.0:
            inv = 1.0 / self.temperature
        else:
            inv = 1.0 / self.temperatures(mutual_information(p) if mi is None else mi)[..., None, None]
        logits = np.log(p + _EPS) * inv
        logits -= logits.max(axis=-1, keepdims=True)
        out = np.exp(logits)
        out /= out.sum(axis=-1, keepdims=True)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The metadata form (docs/format.md): ``{"method": "temperature", "temperature", "mi_slope"}``."""
        return {"method": "temperature", "temperature": self.temperature, "mi_slope": self.mi_slope}

    @classmethod
    def from_dict(cls, data: dict) -> Temperature:
        """Read the metadata form; raises :class:`InvalidArgumentError` on anything else."""
        if not isinstance(data, dict) or data.get("method") != "temperature":
            raise InvalidArgumentError(
                "Expected a calibration entry {'method': 'temperature', 'temperature': t, 'mi_slope': s}. "
                f"Received: {data!r}"
            )
        t, slope = data.get("temperature"), data.get("mi_slope", 0.0)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise InvalidArgumentError(f"Expected a positive calibration temperature. Received: temperature={t!r}")
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise InvalidArgumentError(
                f"Expected a number for the calibration's mi_slope. Received: mi_slope={slope!r}")
        return cls(math.log(float(t)), float(slope))


@dataclass(frozen=True)
class Abstention:
    """Abstain when an uncertainty ``score`` of the calibrated MC mean is above ``threshold``.

    Scores (higher = less sure): ``"entropy"``, the predictive entropy of the mean (nats);
    ``"confidence"``, 1 minus the top class's mean probability; ``"mutual_information"``, the
    samples' disagreement (BALD, nats). The threshold was chosen on held-out data to answer
    ``target_coverage`` of the inputs (``heldout_coverage`` is what it answered there).
    """

    SCORES = ("entropy", "confidence", "mutual_information")

    score: str
    threshold: float
    target_coverage: float
    heldout_coverage: float | None = None
    heldout_selective_accuracy: float | None = None

    def __post_init__(self):
        if self.score not in self.SCORES:
            raise InvalidArgumentError(f"Expected an abstention score in {self.SCORES}. Received: score={self.score!r}")
        if not math.isfinite(self.threshold):
            raise InvalidArgumentError(f"Expected a finite abstention threshold. Received: {self.threshold!r}")

    @staticmethod
    def score_of(score: str, mean: np.ndarray, mi: np.ndarray | None = None) -> np.ndarray:
        """The score of MC mean probabilities ``[..., C]`` (and their MI for ``mutual_information``)."""
        if score == "entropy":
            return -(mean * np.log(mean + _EPS)).sum(axis=-1)
        if score == "confidence":
            return 1.0 - mean.max(axis=-1)
        if mi is None:
            raise InvalidArgumentError("Expected the mutual information for score 'mutual_information'. Received: None")
        return np.asarray(mi, dtype=np.float64)

    def abstain(self, mean: np.ndarray, mi: np.ndarray | None = None) -> np.ndarray:
        """True where the prediction should be withheld."""
        return self.score_of(self.score, mean, mi) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold, "target_coverage": self.target_coverage,
                "heldout_coverage": self.heldout_coverage,
                "heldout_selective_accuracy": self.heldout_selective_accuracy}

    @classmethod
    def from_dict(cls, data: dict) -> Abstention:
        if not isinstance(data, dict) or not {"score", "threshold", "target_coverage"} <= set(data):
            raise InvalidArgumentError(
                f"Expected an abstention entry with score, threshold and target_coverage. Received: {data!r}"
            )
        return cls(str(data["score"]), float(data["threshold"]), float(data["target_coverage"]),
                   data.get("heldout_coverage"), data.get("heldout_selective_accuracy"))
