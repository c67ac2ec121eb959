"""edgekit: deploy Keras models to the edge without losing their MC-dropout uncertainty.

The package is split by dependency weight, and importing it is cheap:

- ``edgekit.layers``, ``edgekit.mc``, ``edgekit.recipes``, ``edgekit.data``: the training side
  (needs the ``[train]`` extra, i.e. TensorFlow).
- ``edgekit.converters``: Keras -> TFLite export that keeps dropout stochastic, BatchNorm folding,
  quantization and reports (TensorFlow).
- ``edgekit.runtime``: on-device MC sampling under a latency budget (numpy + LiteRT only).
- ``edgekit.devices``: target device profiles (TOML data, standard library only).

This file must never import TensorFlow or Keras: ``import edgekit.runtime`` runs it first.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
