"""edgekit.runtime: MC-dropout prediction on the device, with numpy and LiteRT only.

>>> from edgekit.runtime import MCModel
>>> model = MCModel("model.tflite")
>>> pred = model.predict(x, budget_ms=5)
>>> pred.mean, pred.std, pred.mutual_information, pred.samples

- :class:`MCModel` (:mod:`edgekit.runtime.mc`): trunk once, head at batch T in one invoke (or
  ``full`` at batch T where that is faster), latency budgets, early stop on a tolerance or once
  the answer is settled (:class:`Anytime`, :mod:`~edgekit.runtime.anytime`), thread-safe. It
  returns an :class:`MCPrediction` (:mod:`~edgekit.runtime.prediction`): one summary per output,
  class probabilities or values.
- Its parts, one job each: :mod:`~edgekit.runtime.plan` (how a file is run: its one
  :class:`SignaturePlan`), :mod:`~edgekit.runtime.interpreter` (running it),
  :mod:`~edgekit.runtime.strategy` (trunk + head or ``full`` at each T),
  :mod:`~edgekit.runtime.masks` (keep-masks), :mod:`~edgekit.runtime.checks` (inputs, options,
  outputs), :mod:`~edgekit.runtime.summaries` (mean, spread, entropy, MI, intervals),
  :mod:`~edgekit.runtime.calibration` (the file's temperature and abstention threshold),
  :mod:`~edgekit.runtime.budget` (the budget controller), :mod:`~edgekit.runtime.latency` (its
  latency model), :mod:`~edgekit.runtime.stalls` (waits for a CPU).
- :mod:`~edgekit.runtime.profiling` (latency and quality against T), :mod:`~edgekit.runtime.inspect`
  (what a file declares: ops, dtypes, arena), :mod:`~edgekit.runtime.images` (image inputs),
  :mod:`~edgekit.runtime.metrics`, :mod:`~edgekit.runtime.fileio` (atomic writes).
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
    "BudgetController",
    "BudgetError",
    "IntegrityError",
    "MCModel",
    "MCPrediction",
    "MetadataError",
    "ModelLoadError",
    "OutputError",
    "SignaturePlan",
    "UnverifiedModelWarning",
    "embed_metadata",
    "read_metadata",
    "verify_integrity",
]
