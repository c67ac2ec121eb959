"""edgekit.runtime: MC-dropout prediction on the device, with numpy and LiteRT only.

>>> from edgekit.runtime import MCModel
>>> model = MCModel("model.tflite")
>>> pred = model.predict(x, budget_ms=5)
>>> pred.mean, pred.std, pred.mutual_information, pred.samples

- :class:`MCModel` / :class:`MCPrediction` (:mod:`edgekit.runtime.mc`): trunk once, head at batch
  T in one invoke (or ``full`` at batch T where that is faster), latency budgets, early stop on a
  tolerance or once the answer is settled (:class:`Anytime`, :mod:`~edgekit.runtime.anytime`),
  thread-safe. Its parts: :mod:`~edgekit.runtime.plan` (how a file is run),
  :mod:`~edgekit.runtime.interpreter` (running it), :mod:`~edgekit.runtime.masks`,
  :mod:`~edgekit.runtime.summaries`, :mod:`~edgekit.runtime.budget` (the budget controller),
  :mod:`~edgekit.runtime.strategy`, :mod:`~edgekit.runtime.checks`.
- :func:`embed_metadata`, :func:`read_metadata`, :func:`verify_integrity`
  (:mod:`edgekit.runtime.metadata`): the ``edgekit`` metadata entry and its SHA-256 digest.
- :class:`ModelLoadError` (:mod:`edgekit.runtime.safety`): a model LiteRT cannot load, found by a
  probe in a child process before the host process touches it.

Nothing here imports TensorFlow or Keras, and ``ai_edge_litert`` is imported only when a model is
loaded.
"""

from edgekit.runtime.anytime import Anytime
from edgekit.runtime.budget import BudgetController, BudgetError
from edgekit.runtime.checks import OutputError
from edgekit.runtime.mc import MCModel, MCPrediction, UnverifiedModelWarning
from edgekit.runtime.metadata import (
    IntegrityError,
    MetadataError,
    embed_metadata,
    read_metadata,
    verify_integrity,
)
from edgekit.runtime.plan import SignaturePlan
from edgekit.runtime.safety import ModelLoadError

__all__ = [
    "Anytime",
    "MCModel",
    "MCPrediction",
    "SignaturePlan",
    "BudgetController",
    "BudgetError",
    "ModelLoadError",
    "OutputError",
    "IntegrityError",
    "MetadataError",
    "UnverifiedModelWarning",
    "embed_metadata",
    "read_metadata",
    "verify_integrity",
]
