"""The names edgekit's file format, converter, runtime and device profiles share, defined once.

String enums, so a member equals its value (``Quantization.INT8 == "int8"``) and the metadata,
the TOML profiles and the CLI keep plain strings:

>>> from edgekit.qtyping import Quantization, Stochastic
>>> Quantization("int8") is Quantization.INT8
True
>>> [m.value for m in Stochastic]
['in-graph', 'mask-input', 'none']

This module imports nothing of edgekit's, so every layer (runtime and devices included) may use it.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "CALIBRATED",
    "QUANTIZATIONS",
    "STOCHASTIC_MODES",
    "TASKS",
    "Quantization",
    "Stochastic",
    "Task",
]


class Quantization(str, Enum):
    """How the weights and activations of an exported file are stored and computed."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"  # float16 weights, dequantized to float32 when the model loads
    DYNAMIC = "dynamic"  # int8 weights, float activations
    INT8 = "int8"  # full integer, calibrated on representative inputs
    INT16X8 = "int16x8"  # int16 activations, int8 weights, calibrated

    def __str__(self) -> str:
        return self.value


class Stochastic(str, Enum):
    """Where an exported file's dropout masks come from."""

    IN_GRAPH = "in-graph"  # the builtin RANDOM_UNIFORM op draws them
    MASK_INPUT = "mask-input"  # they are model inputs, filled by the runtime
    NONE = "none"  # the model has no MC layer: deterministic

    def __str__(self) -> str:
        return self.value


class Task(str, Enum):
    """What one model output predicts."""

    CLASSIFICATION = "classification"  # class probabilities (softmax, or one sigmoid unit)
    REGRESSION = "regression"  # values

    def __str__(self) -> str:
        return self.value


QUANTIZATIONS: tuple[str, ...] = tuple(m.value for m in Quantization)
"""Every quantization mode, in the order help texts and error messages list them."""

CALIBRATED: tuple[str, ...] = (Quantization.INT8.value, Quantization.INT16X8.value)
"""The modes whose activation ranges are calibrated on representative inputs."""

STOCHASTIC_MODES: tuple[str, ...] = (Stochastic.IN_GRAPH.value, Stochastic.MASK_INPUT.value)
"""The modes a user can ask ``convert`` for (``none`` is what a model without MC layers gets)."""

TASKS: tuple[str, ...] = tuple(m.value for m in Task)
