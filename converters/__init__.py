"""Keras -> TFLite for MC-dropout models: stochastic export, BatchNorm folding, quantization, reports.

>>> from edgekit.converters import convert
>>> result = convert(model, quantize="int8", representative_data=x_train[:1000])
>>> result.tflite[:8], result.report.size_bytes
>>> print(result.report.to_table())

- :func:`convert` (:mod:`edgekit.converters.export`): one ``.tflite`` with signatures ``full``,
  ``trunk`` and ``head``, masks drawn in-graph (unseeded) or fed as inputs, edgekit metadata.
- :func:`fold_batchnorm` (:mod:`edgekit.converters.fold`): BatchNorm merged into Dense/Conv.
- :func:`evaluate` (:mod:`edgekit.converters.report`): deterministic and MC accuracy, NLL, ECE
  of the file against the float Keras model.
- :func:`edgekit.converters.loading.load_keras_model`: load a ``.keras`` file safely.

This package needs TensorFlow. Its names are imported lazily, so ``import edgekit.converters``
itself is cheap; the first use of :func:`convert` pays for TensorFlow.
"""

from __future__ import annotations

import importlib

__all__ = [
    "ConversionReport",
    "ConvertedModel",
    "FoldReport",
    "convert",
    "evaluate",
    "fold_batchnorm",
    "keras_reference",
]

_WHERE = {
    "convert": "export",
    "ConvertedModel": "export",
    "fold_batchnorm": "fold",
    "FoldReport": "fold",
    "evaluate": "report",
    "keras_reference": "report",
    "ConversionReport": "report",
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekit.converters' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgekit.converters.{module}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
