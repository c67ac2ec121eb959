"""Which strategy runs T samples: ``trunk+head`` or ``full`` at batch T, decided by measurement.

A file with a trunk can run T samples of one input two ways (:mod:`edgekit.runtime.interpreter`):
the trunk once and the sampler at batch T (two invokes), or ``full`` at batch T (one invoke, but
the trunk's work T times, and in an in-graph file the file's own scalar ``RANDOM_UNIFORM``
instead of numpy masks). At small T the saved invoke wins; at large T the repeated trunk loses.

The difference ``cost_full(rows) - cost_split(rows)`` grows with the rows (the full graph does at
least the sampler's work per row, plus the trunk's), so the rows where ``full`` wins form a range
``[1, r*]``. :class:`StrategyChooser` finds where a size falls by timing both on demand, only for
sizes not yet bracketed by earlier measurements: it measures at 1, 2, 4, ... (doubling from the
largest size known to win) up to the size asked, and stops at the first loss, so a file whose
trunk is expensive pays for a measurement at 1 and 2 rows only, once. Nothing is measured at load:
the first prediction at a new size pays (a few invokes). Thread-safe.

The runtime keeps one chooser per (file, thread count, memory budget) in a process, shared by
every :class:`~edgekit.runtime.MCModel` of that file: models loaded twice (``edgekit profile``
beside a prediction service, the conversion report) run the same strategy at each size, and
measure once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["FULL", "SPLIT", "StrategyChooser"]

SPLIT = "trunk+head"
FULL = "full"


class StrategyChooser:
    """Decides ``full`` or ``trunk+head`` for a number of rows (inputs x samples per invoke).

    Args:
        max_rows: ``full`` is never used above this many rows (its memory budget).
    """

    def __init__(self, max_rows: int):
        self._max_rows = max_rows
        self._win_max = 0  # largest rows measured where `full` was faster
        self._lose_min = max_rows + 1  # smallest rows measured where it was not
        self._lock = threading.Lock()
        self.measured: dict[int, tuple[float, float]] = {}  # rows -> (full s, split s), for reports

    def choose(self, rows: int, measure: Callable[[int], tuple[float, float]]) -> str:
        """``"full"`` or ``"trunk+head"`` for ``rows`` rows. If not yet known, calls ``measure(rows) ->
        (full_seconds, split_seconds)`` (each the best of a few runs) for the sizes it must."""
        if rows <= self._win_max:
            return FULL
        if rows >= self._lose_min:
            return SPLIT
        with self._lock:
            while self._win_max < rows < self._lose_min:
                probe = min(rows, max(1, 2 * self._win_max))
                full_s, split_s = measure(probe)
                self.measured[probe] = (full_s, split_s)
                if full_s < split_s:
                    self._win_max = probe
                else:
                    self._lose_min = probe
        return FULL if rows <= self._win_max else SPLIT
