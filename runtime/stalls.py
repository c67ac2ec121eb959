"""Stalls: the time a budgeted call loses waiting for a CPU while another process runs.

A busy device runs other work beside the model. When the scheduler gives this thread's CPU to
another process, the thread waits (a *stall*) for a time slice or more, with no invoke running,
and a budgeted call that was on time ends late by that much. The latency model cannot predict
that from invoke timings, so the budget controller (:mod:`edgekit.runtime.budget`) reads the
wait itself:

>>> wait = runqueue_wait_clock()        # seconds this thread has waited for a CPU, cumulative
>>> tracker = StallTracker()
>>> tracker.observe(exposure_s=0.004, stalls=[0.004])   # one call: 4 ms of CPU, one 4 ms stall
>>> tracker.plan()                      # (stall length, call time in which one is unlikely)

Why it matters and what a user can do about it (pin the thread, raise its priority, choose a
budget): docs/budgets.md. Standard library only.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from edgekit.runtime.latency import _quantile

__all__ = ["StallTracker", "runqueue_wait_clock"]


class StallTracker:
    """How often budgeted calls lose the CPU, and for how long: the delays no invoke explains.

    A stall is a wait for the CPU of at least ``min_stall_s`` in a budgeted call (the thread was
    runnable, another process ran). The tracker keeps the rate of stalls per second of call time
    (counts and call time both fade with time constant ``memory_s`` on ``clock``; ``prior_s``
    seconds of stall-free call time are added, so one stall in a short history does not read as
    a storm) and the ``quantile`` of the last ``lengths`` stall lengths.

    :meth:`plan` turns them into ``(length, window)``: a stall of ``length`` that starts in a
    chunk ending after ``budget - length`` ends the call late, and ``window = q / rate`` is the
    call time in which a stall happens with probability ``q``. So sampling aims to end by
    ``budget - length + window``, and no chunk crosses ``budget - length`` (the stall line):
    a stall then makes a call late with probability about ``q``. None: no stall in memory.
    Thread-safe.
    """

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter, min_stall_s: float = 2e-4,
                 memory_s: float = 5.0, prior_s: float = 0.25, q: float = 0.005, lengths: int = 32,
                 quantile: float = 0.95):
        self.clock, self.min_stall_s, self.memory_s, self.prior_s = clock, min_stall_s, memory_s, prior_s
        self.q, self.quantile = q, quantile
        self._lengths: deque[float] = deque(maxlen=lengths)
        self._events = self._exposure = self._rate = 0.0
        self._at: float | None = None
        self._length = 0.0
        self._plan: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def observe(self, exposure_s: float, stalls: Sequence[float]) -> None:
        """One budgeted call ran ``exposure_s`` seconds on the CPU and lost it for each of ``stalls``."""
        with self._lock:
            now = self.clock()
            fade = 1.0 if self._at is None else math.exp(-max(0.0, now - self._at) / self.memory_s)
            self._at = now
            self._events = self._events * fade + len(stalls)
            self._exposure = self._exposure * fade + max(0.0, exposure_s)
            if stalls:
                self._lengths.extend(stalls)
                self._length = _quantile(sorted(self._lengths), self.quantile)
            rate = self._rate = self._events / (self._exposure + self.prior_s)
            # Below 1e-6 stalls per second of call time nothing is left to guard against.
            self._plan = (self._length, self.q / rate) if rate > 1e-6 and self._length > 0 else None

    def rate(self) -> float:
        """Stalls per second of budgeted call time, as of the last call."""
        return self._rate

    def length(self) -> float:
        """The stall length guarded against (the ``quantile`` of recent stalls; 0: none yet)."""
        return self._length

    def plan(self) -> tuple[float, float] | None:
        """``(length, window)`` in seconds (see the class docstring), or None without stalls."""
        return self._plan


class _Fd:
    """A file descriptor closed when its owner (one thread's :class:`_Schedstat` state) goes away."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self):
        try:
            os.close(self.fd)
        except (OSError, TypeError):  # TypeError: os is torn down at interpreter exit
            pass


class _Schedstat(threading.local):
    """The calling thread's run-queue wait from ``/proc/thread-self/schedstat``: one descriptor per
    thread (a re-open costs ten times a read), closed when the thread ends."""

    def __init__(self):
        self.file: _Fd | None = None

    def __call__(self) -> float:
        f = self.file
        if f is None:
            f = self.file = _Fd("/proc/thread-self/schedstat")
        return int(os.pread(f.fd, 64, 0).split()[1]) * 1e-9


_SCHEDSTAT: _Schedstat | None = None


def _off_cpu() -> float:
    return time.perf_counter() - time.thread_time()


def runqueue_wait_clock(threads: int = 1) -> Callable[[], float] | None:
    """A clock of the calling thread's time spent waiting for a CPU, in seconds (for ``wait_clock``).

    On Linux, the run-queue delay the scheduler accounts per thread (``/proc/thread-self/schedstat``,
    its second field: time runnable but not running), read through one descriptor per thread.
    Elsewhere, with ``threads == 1`` (the interpreter runs on the calling thread alone): wall time
    minus the thread's CPU time, which also counts time the thread blocks, and a single-threaded
    invoke never blocks. None otherwise: with worker threads the caller blocks on them, and
    counting that as stalls would make invokes look faster than they are.
    """
    global _SCHEDSTAT
    if _SCHEDSTAT is None:
        try:
            probe = _Schedstat()
            probe()
            _SCHEDSTAT = probe
        except (OSError, ValueError, IndexError):
            _SCHEDSTAT = False  # type: ignore[assignment]
    if _SCHEDSTAT:
        return _SCHEDSTAT
    return _off_cpu if threads == 1 else None
