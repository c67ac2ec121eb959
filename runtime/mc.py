"""MC-dropout prediction on the device: T stochastic passes, their mean and their spread.

>>> from edgekit.runtime import MCModel
>>> model = MCModel("model.tflite")                 # verifies the digest, probes the model once
>>> pred = model.predict(x, samples=100)             # x: one input or a batch
>>> pred.mean[0], pred.std[0], pred.predicted[0], pred.mutual_information[0]
>>> pred = model.predict(x, budget_ms=5)             # as many samples as fit in 5 ms
>>> pred = model.predict(x, budget_ms=20, tolerance=0.01)   # stop once the top class is known
>>> pred = model.predict(x, anytime=True)            # stop each input once its answer is settled
>>> model.sample(x, 30).shape                        # per-sample outputs [N, T, C]
>>> model.strategy_at(100)                           # "trunk+head" or "full"

The parts: :mod:`~edgekit.runtime.plan` (the file's one :class:`SignaturePlan`: which signature
runs once, which at batch T, with which masks), :mod:`~edgekit.runtime.interpreter` (running it),
:mod:`~edgekit.runtime.masks`, :mod:`~edgekit.runtime.summaries` (mean, std, entropy, mutual
information), :mod:`~edgekit.runtime.budget` (how many samples fit a latency budget),
:mod:`~edgekit.runtime.strategy` (``trunk+head`` or ``full`` at each T), :mod:`~edgekit.runtime.checks`.

How the work is kept small
--------------------------
- An edgekit file has a deterministic ``trunk`` and a stochastic ``head`` (docs/format.md). The
  trunk runs once per input; the sampler (``head``, or its ``masked`` twin) runs at batch T in one
  invoke. With a fixed T, ``full`` at batch T (one invoke instead of two) is used instead where
  it is faster, which is at small T: timed once per size range (:mod:`edgekit.runtime.strategy`).
  Budgeted, tolerance and anytime sampling always chunk the sampler.
- The masks are drawn here, not in the graph, whenever the file allows it (see Randomness):
  LiteRT's ``RANDOM_UNIFORM`` kernel is scalar and costs half of the book MLP's T=100 head.
- Inputs and masks are written straight into the interpreter's input buffers; the interpreter keeps
  its allocation between calls with the same batch size. With a fixed T, the inputs of a batch share
  invokes (up to 1024 rows per invoke). The first time a thread needs more sampler rows than it has
  allocated, it grows to twice that (one slow call, once; :meth:`MCModel.warmup` pays it ahead).
- A fixed-batch file (the ``batch`` metadata key) runs each signature at exactly its batch, and
  draws T in multiples of the sampler's batch (a fixed T is rounded up to one).

Randomness
----------
- Masks drawn here (``masks_from == "numpy"``): ``mask-input`` files, and unseeded ``in-graph``
  files that carry the ``masked`` twin. One SFC64 generator per model (``seed`` makes it
  reproducible), never reset, so masks never repeat across calls, threads or batch sizes.
  ``rng="graph"`` uses an in-graph file's own op instead. With a ``seed``, the strategy never
  switches (results are then bitwise reproducible, whatever the timings).
- Masks drawn by the file (``masks_from == "file"``): LiteRT's ``RANDOM_UNIFORM``. Unseeded files
  are re-seeded from ``/dev/urandom`` whenever the kernel is prepared. A *seeded* file restarts
  its sequence on every re-prepare; for those the runtime keeps one interpreter per batch size
  and one signature, so a sequence is never restarted. Under a budget, T is then rounded down
  to 1, 2, 3, 4, 6, 8, 12, ... so the interpreters stay few.

Safety: the digest in the metadata is checked (a file without edgekit metadata runs with a
warning); every declared tensor is checked against a memory budget before anything is allocated;
the first load of a model is probed in a child process (:mod:`edgekit.runtime.safety`). Every
input is validated (shape, rank, dtype, empty batch, NaN/Inf) with an "Expected ... Received ..."
message, and every output is checked to be probabilities. Threads: each thread gets its own
interpreter(s); ``predict`` may be called from many threads at once. Uncertainty is in nats.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import InvalidArgumentError, InvalidTypeError, MissingFileError
from edgekit.runtime.anytime import Anytime
from edgekit.runtime.budget import BudgetCall, BudgetController, BudgetError, LatencyModel, SlackTracker, ladder_floor
from edgekit.runtime.checks import (
    OutputError,
    check_input,
    check_model_options,
    check_options,
    check_probs,
    check_row,
    output_checker,
)
from edgekit.runtime.interpreter import PlanRunner, Runner, interpreter_class, quantize
from edgekit.runtime.masks import mask_plan, new_keep_masks
from edgekit.runtime.metadata import read_metadata, verify_integrity
from edgekit.runtime.plan import SignaturePlan, build_plan
from edgekit.runtime.prediction import MCPrediction, file_notes
from edgekit.runtime.safety import ModelLoadError, declared_tensors, probe_model
from edgekit.runtime.stalls import runqueue_wait_clock
from edgekit.runtime.strategy import FULL, SPLIT, StrategyChooser
from edgekit.runtime.summaries import (
    class_probs,
    concat_outputs,
    standard_error,
    summarize,
    summarize_lean,
    summarize_outputs,
)

__all__ = [
    "BudgetError",
    "LatencyModel",
    "MCModel",
    "MCPrediction",
    "OutputError",
    "SlackTracker",
    "UnverifiedModelWarning",
    "mask_plan",
    "new_keep_masks",
    "summarize",
]

DEFAULT_SAMPLES = 100  # the book's T
DEFAULT_MAX_SAMPLES = 1000  # cap for budget/tolerance sampling when `samples` is not given
DEFAULT_MEMORY_BYTES = 512 * 2**20
# Rows per invoke when several inputs share one (fixed T): large enough to amortize the per-invoke
# overhead, small enough to stay in cache-friendly, modest arenas.
_ROWS_PER_INVOKE = 1024
_clock = time.perf_counter
_CHOOSERS: dict[tuple, StrategyChooser] = {}
_CHOOSERS_LOCK = threading.Lock()


class UnverifiedModelWarning(UserWarning):
    """The model has no edgekit metadata, so its integrity cannot be verified."""


class MCModel:
    """An edgekit ``.tflite`` model ready for MC-dropout prediction.

    Args:
        path_or_bytes: Path to a ``.tflite`` file, or its bytes.
        threads: Interpreter threads (default: the device profile's ``default_threads``, else 1:
            predictable latency, and concurrent ``predict`` calls scale across cores).
        device: A device profile name or TOML path (``edgekit.devices``); gives default threads,
            the memory budget (``ram_bytes``) and the default latency budget.
        seed: Seed for the masks the runtime draws (see ``rng``), for reproducible predictions.
            Ignored when the file draws its own masks (its seeding is fixed in the file).
        rng: Who draws the keep-masks. ``"auto"`` (default): the runtime, with numpy, whenever
            the file allows it (mask-input files, and in-graph files with the ``masked`` twin).
            ``"graph"``: always the file's ``RANDOM_UNIFORM`` (in-graph files only).
        probe: Load the model in a child process first (cached by content hash). Set False only for
            models you already trust.
        memory_bytes: Largest total of declared tensor bytes a subgraph may allocate (default
            512 MiB, or the device's ``ram_bytes``).
        calibrated: Apply the temperature the file carries to class outputs (default). False
            gives the file's raw MC probabilities.

    Raises:
        IntegrityError: the file differs from what was exported.
        ModelLoadError: LiteRT cannot load the model (the probe child died), or a tensor exceeds the
            memory budget, or the file lacks the signatures/inputs edgekit needs.
    """

    def __init__(self, path_or_bytes: str | os.PathLike | bytes, *, threads: int | None = None,
                 device: str | None = None, seed: int | None = None, rng: str = "auto", probe: bool = True,
                 memory_bytes: int | None = None, calibrated: bool = True):
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            data, self.source = bytes(path_or_bytes), "<bytes>"
        elif isinstance(path_or_bytes, (str, os.PathLike)):
            path = Path(path_or_bytes)
            if not path.is_file():
                raise MissingFileError(f"Model file not found. Expected an existing .tflite file. "
                                       f"Received: {str(path)!r}")
            data, self.source = path.read_bytes(), str(path)
        else:
            raise InvalidTypeError(f"Expected a path or bytes for the model. Received: {type(path_or_bytes).__name__}")
        self.profile = None
        if device is not None:
            from edgekit.devices import load_profile

            self.profile = load_profile(device)
        if threads is None:
            threads = self.profile.default_threads if self.profile else 1
        if memory_bytes is None:
            memory_bytes = self.profile.ram_bytes if self.profile else DEFAULT_MEMORY_BYTES
        check_model_options(threads, rng, seed)
        self.threads = threads
        self.memory_bytes = int(memory_bytes)
        self._data = data

        # 1. Integrity: the digest covers every byte.
        self.verified = verify_integrity(data, require_metadata=False)
        if not self.verified:
            warnings.warn(f"{self.source} has no edgekit metadata, so its integrity cannot be verified; running it "
                          f"as is.", UnverifiedModelWarning, stacklevel=2)
        self.metadata: dict = read_metadata(data) or {}
        # 2. Declared tensor sizes, before LiteRT allocates anything.
        self._tensors = declared_tensors(data)
        for t in self._tensors:
            if t.nbytes(1) > self.memory_bytes:
                raise ModelLoadError(
                    f"Tensor {t.name!r} declares {t.nbytes(1)} bytes at batch 1. Expected at most the memory "
                    f"budget of {self.memory_bytes} bytes. Received: shape={t.shape}"
                )
        # 3. Crash probe in a child process, then the real interpreter and the plan.
        if probe:
            probe_model(data, threads=threads)
        self._Interpreter = interpreter_class()
        interp = self._interpreter()
        self.plan: SignaturePlan = build_plan(self.metadata, interp, source=self.source, rng=rng)
        plan = self.plan
        self.input, self._feed, self._out = plan.input, plan.feed, plan.output.tensor
        first = plan.output
        self.num_classes, self.class_names = first.num_classes, first.class_names
        self.calibrated = bool(calibrated)
        self._width = plan.width
        self._check = output_checker(plan, self.source)
        # One softmax output: a T=1 prediction in plain Python (see _result_one).
        self._lean = len(plan.outputs) == 1 and len(plan.fetch) == 1 and first.activation == "softmax"
        self._prob_slack = first.prob_slack
        self.notes = file_notes(self.plan, self.metadata)
        self.max_batch = self._max_batch(interp, plan.sampler, "one MC sample")
        # SFC64: a small, fast generator of good statistical quality (its raw output is 1.4x faster
        # to draw than PCG64's here). One generator, never reset.
        self._bits = np.random.SFC64(seed)
        self._rng_lock = threading.Lock()
        self._run = PlanRunner(self._interpreter, plan, self._random_raw,
                               self._check, main=interp)
        self._step = self._run.step
        self._budget = BudgetController(clock=_clock, calibrate=self._calibrate, wait_clock=runqueue_wait_clock(threads))
        self._chooser = None
        self._ones = np.ones(math.prod(self.input.shape), dtype=np.float32)  # see check_input
        self._full_rows = self._max_batch(interp, plan.full, "one sample of `full`")
        if FULL in plan.strategies and plan.has_trunk and seed is None:
            key = (self.metadata.get("sha256") if self.verified else None) or hashlib.sha256(data).hexdigest()
            with _CHOOSERS_LOCK:  # one per file, threads and memory budget in a process (see strategy.py)
                self._chooser = _CHOOSERS.setdefault((key, threads, rng, self._full_rows),
                                                     StrategyChooser(max_rows=self._full_rows))
        # T=1 of one input through `full` where the chooser picks it: _predict_one, for these shapes.
        self._one_shapes = (self.input.shape, (1, *self.input.shape))
        self._one = (self._lean and self._chooser is not None and self._run.bare_full
                     and self.input.dtype == np.float32 and plan.full_masks_from == "file")
        # One sample now, so a file whose output is not probabilities is refused at load.
        self._draw(np.zeros((1, *self._feed.shape), dtype=self._feed.dtype), self._step, observe=False)

    # ------------------------------------------------------------------ what the file is

    has_trunk = property(lambda self: self.plan.has_trunk)
    stochastic = property(lambda self: self.plan.stochastic)
    masks_from = property(lambda self: self.plan.masks_from)
    seeded = property(lambda self: self.plan.seeded)

    @property
    def latency(self) -> LatencyModel:
        """The latency model behind budgets, calibrated on first use (not at load: a fixed-T caller
        never needs it, and calibrating costs ~25 ms of start-up for the book MLP)."""
        return self._budget.latency

    @property
    def budget(self) -> BudgetController:
        """The controller that sizes budgeted sampling (its latency model, reserve and slack)."""
        return self._budget

    def strategy_at(self, samples: int, inputs: int = 1) -> str:
        """What ``predict(x, samples=T)`` runs for ``inputs`` inputs: ``"trunk+head"`` or ``"full"``.

        ``"trunk+head"`` is the trunk once then the sampler at batch T (``"full"`` names the sampler
        itself for a file without a trunk); ``"full"`` for a file with a trunk is the ``full``
        signature at batch T, chosen where it measured faster (timed on first use of a size range).
        """
        if not self.plan.has_trunk:
            return FULL
        if self._chooser is None:
            return SPLIT
        return self._chooser.choose(int(inputs) * self._round_up(int(samples)), self._measure_strategies)

    def _interpreter(self):
        try:
            return self._Interpreter(model_content=self._data, num_threads=self.threads)
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"LiteRT cannot load {self.source}: {str(e).strip().splitlines()[0]}") from None

    def _max_batch(self, interp, key: str, what: str) -> int:
        """Largest batch of ``key`` the memory budget allows."""
        sg = Runner(interp, key).subgraph
        fixed = sum(t.nbytes(0) for t in self._tensors if t.subgraph == sg)
        per = sum(t.nbytes(1) - t.nbytes(0) for t in self._tensors if t.subgraph == sg)
        n = int((self.memory_bytes - fixed) // per) if per > 0 else 1 << 30
        if n < 1:
            raise ModelLoadError(f"{self.source}: {what} needs {fixed + per} bytes of tensors. Expected at most the "
                                 f"memory budget of {self.memory_bytes} bytes. Received: {fixed + per}")
        return n

    def _round_up(self, samples: int) -> int:
        """``samples`` rounded up to a multiple of the sampler's static batch (1 if dynamic)."""
        return -(-samples // self._step) * self._step

    def _calibrate(self, latency: LatencyModel) -> None:
        # Fit the latency model for the thread count in use from the median of 5 invokes at batch
        # 1, 16 and 128 (after one untimed invoke each, which pays for allocation). Medians, so a
        # noisy neighbour during calibration cannot skew the fit.
        feat = np.zeros((1, *self._feed.shape), dtype=self._feed.dtype)
        for t in sorted({self._round_up(min(t, self.max_batch)) for t in (1, 16, 128)}):
            self._draw(feat, t, observe=False)
            self._anchor(feat, t, repeats=5)

    def _anchor(self, feat: np.ndarray, samples: int, *, repeats: int) -> None:
        """Time ``repeats`` draws of ``samples`` and keep their median as a latency-model anchor."""
        times = sorted(self._timed(lambda: self._draw(feat, samples, observe=False)) for _ in range(repeats))
        self._budget.anchor(samples, times[len(times) // 2])  # not np.median: it imports numpy.ma (~50 ms)

    @staticmethod
    def _timed(fn) -> float:
        start = _clock()
        fn()
        return _clock() - start

    def _measure_strategies(self, rows: int) -> tuple[float, float]:
        """Best of 3 (after one untimed run each) seconds of ``full`` and of trunk + sampler for ``rows`` rows."""
        x = np.zeros((1, *self.input.shape), dtype=self.input.dtype)
        work = (lambda: self._run.full(x, rows), lambda: self._run.sample(self._run.trunk(x), rows))
        for fn in work:
            fn()
        times = [[self._timed(fn) for fn in work] for _ in range(3)]
        return min(t[0] for t in times), min(t[1] for t in times)

    # ------------------------------------------------------------------ running

    def _random_raw(self, n: int) -> np.ndarray:
        with self._rng_lock:  # one generator, never reset: masks never repeat across calls/sizes
            return self._bits.random_raw(n)

    def _draw(self, feats: np.ndarray, per: int, *, observe: bool = True, check: bool = True) -> np.ndarray:
        """``per`` MC samples for each of the K rows of features ``[K, *feature]`` through the sampler:
        probs ``[K * per, C]``. Timed into the latency model unless ``observe`` is False or it allocated."""
        start = _clock()
        batch = feats.shape[0] * per
        grew = self._run.grows(batch)
        probs = self._run.sample(feats, per, check=check)
        if observe and not (grew and self._step == 1):  # an allocating invoke is no latency sample
            self._budget.observe(batch, _clock() - start)
        return probs

    def _grow(self, feature: np.ndarray, batch: int) -> None:
        """Allocate for ``batch`` samples now: two unobserved invokes (the first re-allocates, the second
        touches the new memory for the first time, ~2x a steady invoke)."""
        if batch > self._run.high_water:
            self._draw(feature, batch, observe=False)
            self._draw(feature, batch, observe=False)

    def _rows(self, x: np.ndarray, per: int, *, check: bool = True) -> np.ndarray:
        """``per`` samples for each input of ``x`` by the strategy for that size: probs ``[K * per, C]``
        (``check=False``: the caller checks they are probabilities)."""
        xq = quantize(self.input, x, "input", self.source)
        if self._chooser is not None and self._chooser.choose(x.shape[0] * per, self._measure_strategies) == FULL:
            return self._run.full(xq, per, check=check)
        return self._draw(self._run.trunk(xq), per, check=check)

    def _check_input(self, x) -> np.ndarray:
        return check_input(x, self.input.shape, int8_ok=self.input.dtype == np.int8, ones=self._ones)

    def _fixed_cap(self, samples) -> int:
        cap = self._round_up(DEFAULT_SAMPLES if samples is None else int(samples))
        if cap > self.max_batch:
            raise InvalidArgumentError(
                f"samples={cap} needs more tensor memory than the budget allows. Expected samples <= "
                f"{self.max_batch} (memory budget {self.memory_bytes} bytes). Received: samples={cap}"
            )
        return cap

    # ------------------------------------------------------------------ public

    def features(self, x) -> np.ndarray:
        """Trunk outputs for one input or a batch (checked like :meth:`predict`'s); the quantized
        input itself when the file has no trunk."""
        return self._run.trunk(quantize(self.input, self._check_input(x), "input", self.source))

    def sample(self, x, samples: int, *, output: str | None = None, rows: int = _ROWS_PER_INVOKE) -> np.ndarray:
        """Per-sample outputs of one input or a batch, uncalibrated: ``[N, T, C]`` class probabilities
        for a class output (a sigmoid unit as two classes), ``[N, T, *shape]`` values for a value
        output. ``output`` names it (default: the first).

        The samples of each input are independent draws, run as :meth:`predict` runs a fixed T
        (same plan, same strategy at each size, at most ``rows`` rows per invoke); the first t of
        them are an unbiased t-sample MC prediction, so one call gives a whole accuracy-vs-T curve.
        T is rounded up to a multiple of a fixed-batch file's sampler batch.
        """
        spec = self.plan.output if output is None else self._output_spec(output)
        table = self.sample_rows(x, samples, rows=rows)
        if spec.task == "classification":
            return class_probs(spec, table)
        a, b = spec.columns
        return table[..., a:b].reshape(*table.shape[:2], *spec.shape)

    def sample_rows(self, x, samples: int, *, rows: int = _ROWS_PER_INVOKE) -> np.ndarray:
        """Every output of every sample side by side, ``[N, T, D]`` float32 (the columns of each
        output are ``model.plan.outputs[i].columns``; a log-variance partner's ``variance_columns``)."""
        check_options(samples, None, None)
        x = self._check_input(x)
        cap = self._fixed_cap(samples)
        group = max(1, min(x.shape[0], min(int(rows), self.max_batch) // cap))
        parts = [self._rows(x[lo:lo + group], cap).reshape(-1, cap, self._width)
                 for lo in range(0, x.shape[0], group)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _output_spec(self, name: str):
        for o in self.plan.outputs:
            if o.name == name:
                return o
        raise InvalidArgumentError(f"Expected one of the outputs {[o.name for o in self.plan.outputs]}. "
                                   f"Received: output={name!r}")

    def deterministic(self, x, *, rows: int = 4096, output: str | None = None) -> np.ndarray | None:
        """Dropout-off outputs: ``full`` fed every unit's expected keep-mask ``1 - rate`` (the identity
        for MCDropout-type layers); ``[N, C]`` probabilities of a class output, ``[N, *shape]`` values
        of a value output. ``output`` names it (default: the first). Only mask-input files whose
        every MC layer is an MCDropout or MCSpatialDropout2D have that path; None for any other file."""
        spec = self.plan.output if output is None else self._output_spec(output)
        layers = self.plan.mc_layers
        if (self.plan.stochastic != "mask-input" or not layers or len(self.plan.full_masks) != len(layers)
                or not all(m.get("kind") in ("MCDropout", "MCSpatialDropout1D", "MCSpatialDropout2D", "MCSpatialDropout3D")
                        for m in layers)):
            return None
        xq = quantize(self.input, self._check_input(x), "input", self.source)
        table = self._run.full_expected(xq, max(1, min(int(rows), self._full_rows)))
        if spec.task == "classification":
            return class_probs(spec, table)
        return table[:, slice(*spec.columns)].reshape(len(table), *spec.shape)

    def predict(self, x, *, samples: int | None = None, budget_ms: float | None = None,
                tolerance: float | None = None, anytime: bool | Anytime = False) -> MCPrediction:
        """MC-dropout prediction for one input or a batch.

        Args:
            x: One input (``input_shape``) or a batch (``[N, *input_shape]``), float.
            samples: Number of MC samples T per input. Default 100 without a budget; with a
                budget or a tolerance it is the cap (default 1000).
            budget_ms: Latency budget per input, in milliseconds. The largest T whose predicted
                p99 latency fits is used. **Documented choice:** if the budget is smaller than
                the fitted (typical) cost of one sample, :class:`BudgetError` is raised (a result
                from zero samples would be garbage, and a certain over-run would break the
                budget); when it is only tight (one sample fits typically but not at p99), one
                sample is drawn and ``budget_cut`` is set.
            tolerance: Stop early once the standard error of the top class's mean probability
                is below this value (checked between chunks).
            anytime: Stop each input once its answer is settled (:mod:`edgekit.runtime.anytime`:
                the top class leads the runner-up by more than ``k`` standard errors, checked
                from 8 samples on, every 4). True for the defaults, or an
                :class:`~edgekit.runtime.anytime.Anytime`. ``samples`` is then the cap (default
                100), also under a budget; with a ``tolerance``, an output is settled by either rule.

        Raises:
            ValueError: bad shape, rank, empty batch, NaN/Inf, bad options.
            TypeError: wrong dtype.
            BudgetError: the budget is below the cost of one sample.
        """
        if samples == 1 and type(samples) is int and self._one and budget_ms is None and tolerance is None \
                and not anytime:
            result = self._predict_one(x)
            if result is not None:
                return result
        t_call = _clock()  # a budget counts from here: the checks are part of the call
        if budget_ms is None and tolerance is None and not anytime:
            if samples is not None and (type(samples) is not int or samples < 1):
                check_options(samples, None, None)
            cap = self._fixed_cap(samples)
            x = self._check_input(x)
            n = x.shape[0]
            if n == 1:
                t0 = _clock()
                return self._result_one(self._rows(x, cap, check=cap != 1), cap, t0)
            # Several inputs share one invoke (input-major rows), up to _ROWS_PER_INVOKE rows.
            # elapsed_ms is the group's time split evenly between its inputs.
            group = max(1, min(n, min(_ROWS_PER_INVOKE, self.max_batch) // cap))
            parts, times = [], []
            for lo in range(0, n, group):
                t0 = _clock()
                k = min(n, lo + group) - lo
                parts.append(self._summaries(self._rows(x[lo:lo + k], cap).reshape(k, cap, self._width)))
                times.append(np.full(k, (_clock() - t0) * 1e3 / k))
            elapsed = np.concatenate(times) if len(times) > 1 else times[0]
            return self._result(concat_outputs(parts), np.full(n, cap, dtype=np.int64), elapsed,
                                np.zeros(n, dtype=bool))
        check_options(samples, budget_ms, tolerance)
        stop = Anytime.of(anytime)
        x = self._check_input(x)
        default = DEFAULT_MAX_SAMPLES if stop is None else DEFAULT_SAMPLES
        cap = self._round_up(min(int(samples or default), self.max_batch))
        return self._predict_adaptive(x, cap, None if budget_ms is None else budget_ms / 1e3, tolerance, t_call,
                                      stop)

    def _predict_one(self, x) -> MCPrediction | None:
        """``predict(x, samples=1)`` of one float32 input where the strategy chooser runs ``full`` (a
        float32 file drawing its own masks): the check, one invoke and the lean summary in the fewest
        Python calls, since at T=1 on a small model each call costs about what its arithmetic does.
        None where the general path must run (before checking ``x``, so that no input is checked
        twice): anything but one input's array, or the thread's first ``full``."""
        shape = getattr(x, "shape", None)
        if shape != self._one_shapes[0] and shape != self._one_shapes[1]:
            return None
        bare = self._run.full_runner()
        if bare is None:
            return None
        x = check_input(x, self.input.shape, ones=self._ones)
        t0 = _clock()
        if self._chooser.choose(1, self._measure_strategies) != FULL:
            return None  # the general path checks x again: only while trunk + head is faster at T=1
        runner, name, out = bare
        return self._result_one(runner.run(name, x, out), 1, t0)

    def _summaries(self, rows: np.ndarray) -> tuple:
        return summarize_outputs(self.plan, rows, self.calibrated)

    def _result_one(self, probs: np.ndarray, cap: int, t0: float) -> MCPrediction:
        """The result for one input's sample rows ``[T, D]``: for one softmax output, the lean
        summary (:func:`~edgekit.runtime.summaries.summarize_lean`), after the check the runner
        left to this one pass at T=1."""
        if not self._lean:
            outputs = self._summaries(probs[None])
        else:
            flat = None
            if cap == 1:
                if probs.shape != (1, self.num_classes):
                    check_probs(probs, self.num_classes, self._prob_slack, self.source)  # raises: the wrong shape
                flat = probs[0].tolist()
                check_row(flat, self._prob_slack, self.source)
            outputs = (summarize_lean(self.plan.output, probs, self.calibrated, flat),)
        return MCPrediction._of(outputs, np.array([cap]), np.array([(_clock() - t0) * 1e3]), np.zeros(1, dtype=bool),
                                self.notes)

    def _result(self, outputs: tuple, used: np.ndarray, elapsed: np.ndarray, cut: np.ndarray) -> MCPrediction:
        return MCPrediction._of(outputs, used, elapsed, cut, self.notes)

    def _predict_adaptive(self, x, cap: int, budget_s: float | None, tolerance: float | None,
                          t_call: float, stop: Anytime | None = None) -> MCPrediction:
        """One input at a time, in chunks of the sampler: under a budget, a tolerance, an anytime
        stop, or several."""
        n = x.shape[0]
        rows, used, elapsed, cut = [], np.empty(n, dtype=np.int64), np.empty(n), np.zeros(n, dtype=bool)
        call = None
        for i in range(n):
            t0 = t_call if i == 0 else _clock()
            if budget_s is not None:
                call = self._budget.start(budget_s, cap, started=t0, step=self._step, ladder=self.plan.seeded)
            feat = self._run.trunk(quantize(self.input, x[i:i + 1], "input", self.source))
            probs = self._sample_chunks(feat, cap, tolerance, call, stop)
            if call is not None:
                call.sampled()
            rows.append(self._summaries(probs[None]))
            used[i], cut[i] = probs.shape[0], call is not None and call.cut
            elapsed[i] = (_clock() - t0) * 1e3
            if call is not None and i < n - 1:
                call.finish()
        result = self._result(concat_outputs(rows), used, elapsed, cut)
        if call is not None:  # the last input's "after" lasts until its result is assembled
            call.finish()
        return result

    def _sample_chunks(self, feat: np.ndarray, cap: int, tolerance: float | None,
                       call: BudgetCall | None, stop: Anytime | None = None) -> np.ndarray:
        """Samples for one input: ``cap`` of them, or fewer if ``tolerance`` is met, the answer is
        settled (``stop``) or the budget ends.

        With a tolerance: growing chunks (16, 32, 64, ...) so the standard error can be checked
        between them. With ``stop``: ``min_samples``, then ``every`` at a time (each a multiple
        of a fixed-batch sampler's batch). Under a budget, the controller sizes each chunk
        (:mod:`edgekit.runtime.budget`), never larger than those.
        """
        chunks: list[np.ndarray] = []
        done = 0
        if stop is not None:
            chunk = min(self._round_up(stop.min_samples), cap)
        else:
            chunk = cap if tolerance is None else min(self._round_up(16), cap)
        while done < cap:
            want = min(chunk, cap - done)
            if call is not None:
                want = call.next_chunk(done, want)
                if want == 0:
                    break
                if not self.plan.seeded and self._step == 1 and want > self._run.high_water:
                    # First time this thread needs so many samples: pay the allocation once, then
                    # re-plan with what is left. Grow to twice what is needed, so that the
                    # call-to-call wobble of T does not make every call pay for a few more rows.
                    self._grow(feat, min(cap, self.max_batch, 2 * want))
                    want = call.replan(done, want)
                    if want == 0:
                        break
            if call is None:
                chunks.append(self._draw(feat, want))
            else:  # the call times the chunk into the latency model, without the waits for a CPU
                grew = self._step == 1 and self._run.grows(want)  # an allocating invoke is no latency sample
                start = _clock()
                chunks.append(self._draw(feat, want, observe=False))
                call.ran(want, _clock() - start, observe=not grew)
            done += want
            if stop is not None:
                if stop.min_samples <= done < cap:
                    rows = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
                    if stop.settled(self.plan, rows, tolerance):
                        break
                chunk = self._round_up(stop.every)
            elif tolerance is not None:
                probs = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
                if done >= 8 and standard_error(self.plan, probs) < tolerance:  # fewer give no usable std
                    break
                chunk *= 2
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def warmup(self, *, budget_ms: float | None = None, samples: int | None = None) -> int:
        """Allocate (on the calling thread) for the samples a budget or a fixed T will need.

        The first time a thread needs more rows than it has allocated, the allocation and the
        first touch of the new memory cost a few invokes, inside that call. Call this once before
        latency-critical use (``edgekit predict --budget-ms`` does) so no budgeted call pays it.
        Also adds the grown size as a calibration point. Returns the rows now allocated.
        """
        check_options(samples, budget_ms, None)
        if budget_ms is not None:
            cap = int(samples or DEFAULT_MAX_SAMPLES)
            need = self.latency.largest_fitting(budget_ms / 1e3, min(cap, self.max_batch))
        else:
            need = int(samples or DEFAULT_SAMPLES)
            if self._chooser is not None and self.strategy_at(need) == FULL:
                x = np.zeros((1, *self.input.shape), dtype=self.input.dtype)
                self._run.full(x, need)
        need = self._round_up(max(1, min(need, self.max_batch)))
        feat = np.zeros((1, *self._feed.shape), dtype=self._feed.dtype)
        if self.plan.seeded or self._step > 1:
            need = ladder_floor(need) if self.plan.seeded else need
            self._draw(feat, need, observe=False)
            return need
        target = min(self.max_batch, 2 * need) if budget_ms is not None else need
        self._grow(feat, target)
        self._anchor(feat, need, repeats=3)
        return self._run.high_water

    def time_parts(self, *, samples: int = DEFAULT_SAMPLES, repeats: int = 20,
                   parts: Sequence[str] | None = None) -> dict[str, float]:
        """Median milliseconds of the parts of one prediction, for profiling.

        Returns ``{"trunk_ms": trunk at batch 1 (0 without a trunk), "head_ms": the sampler at batch
        ``samples`` (masks included), "full_ms": ``full`` at batch 1, "full_batch_ms": ``full`` at
        batch ``samples``}`` (only the ``parts`` named, default all), each the median of ``repeats``
        runs after a warm-up; NaN for a size a fixed-batch signature cannot run.
        """
        x = np.zeros((1, *self.input.shape), dtype=self.input.dtype)
        feat = self._run.trunk(x)
        samples = self._round_up(samples)

        def med(fn):
            fn()
            ts = sorted(self._timed(fn) for _ in range(repeats))
            return ts[len(ts) // 2] * 1e3

        static = self.plan.batch.get("full")
        work = {
            "trunk_ms": (lambda: self._run.trunk(x)) if self.plan.has_trunk else None,
            "head_ms": lambda: self._draw(feat, samples, observe=False),
            "full_ms": (lambda: self._run.full(x, 1)) if static in (None, 1) else math.nan,
            "full_batch_ms": (lambda: self._run.full(x, samples)) if static in (None, samples) else math.nan,
        }
        out = {}
        for name in parts or work:
            fn = work[name]
            out[name] = 0.0 if fn is None else fn if isinstance(fn, float) else med(fn)
        return out

    def __repr__(self) -> str:
        return (f"MCModel({self.source!r}, stochastic={self.stochastic!r}, trunk={self.has_trunk}, "
                f"classes={self.num_classes}, threads={self.threads})")
