"""The interpreter plumbing under :class:`edgekit.runtime.MCModel`: running a :class:`SignaturePlan`.

- :class:`PlanRunner` runs a file's plan on the calling thread's interpreters: the trunk, the
  sampler at batch T (masks drawn and written in place), ``full`` at batch T, ``full`` with
  expected keep-masks (dropout off). Signatures with a static batch run at exactly that batch.
- :class:`Runner`: a signature runner that writes inputs straight into the interpreter's buffers
  and resizes only when a shape changes.
- :class:`ThreadInterpreters`: a LiteRT interpreter is not thread-safe, so each thread gets its
  own (and a seeded file one per sampler batch: its sequence restarts on every re-prepare).
- :func:`quantize` / :func:`dequantize`: int8 I/O through each tensor's scale and zero point.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.errors import InvalidArgumentError
from edgekit.runtime.masks import expected_keep_masks, fill_keep_masks, new_keep_masks
from edgekit.runtime.plan import SignaturePlan, TensorSpec, _specs
from edgekit.runtime.safety import ModelLoadError

__all__ = ["PlanRunner", "Runner", "ThreadInterpreters", "dequantize", "interpreter_class", "quantize"]


def interpreter_class():
    """LiteRT's ``Interpreter`` (or ``tflite_runtime``'s on old devices), imported on first use."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on the install
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ImportError(
                "edgekit.runtime needs a TFLite interpreter. Expected `ai-edge-litert` (pip install "
                "ai-edge-litert) or `tflite-runtime`. Received: neither is installed"
            ) from None
    return Interpreter


def quantize(t: TensorSpec, x: np.ndarray, what: str, source: str = "<model>") -> np.ndarray:
    """``x`` as ``t`` takes it: float32 as is, int8 quantized with ``t``'s scale and zero point.

    Raises:
        InvalidArgumentError: a value outside what the int8 input represents.
    """
    if t.dtype == np.float32:
        return x if x.dtype == np.float32 else x.astype(np.float32)
    if t.dtype == np.int8 and t.scale > 0:
        if x.dtype == np.int8:
            return x
        lo, hi = (-128 - t.zero_point) * t.scale, (127 - t.zero_point) * t.scale
        bad = (x < lo - t.scale / 2) | (x > hi + t.scale / 2)
        if bad.any():
            raise InvalidArgumentError(
                f"The model's {what} is int8 (scale={t.scale:g}, zero_point={t.zero_point}), which represents "
                f"[{lo:g}, {hi:g}]. Expected values in that range. Received: min={float(x.min()):g}, "
                f"max={float(x.max()):g}"
            )
        return np.clip(np.round(x / t.scale) + t.zero_point, -128, 127).astype(np.int8)
    raise ModelLoadError(f"{source}: unsupported {what} dtype. Expected float32 or int8. Received: {t.dtype}")


def dequantize(t: TensorSpec, y: np.ndarray) -> np.ndarray:
    """An output as float32 (int8 outputs through ``t``'s scale and zero point)."""
    if y.dtype == np.float32:
        return y
    return (y.astype(np.float32) - t.zero_point) * np.float32(t.scale)


class Runner:
    """A signature runner that resizes and re-allocates only when an input's shape changes.

    LiteRT's ``SignatureRunner.__call__`` resizes every input and calls ``AllocateTensors`` on
    every call, which costs a noticeable part of a small model's invoke; this runner skips both
    when the shapes are unchanged. It needs the interpreter's internal wrapper (the same in
    tflite_runtime and ai_edge_litert); without it, the public runner is used as is.
    """

    def __init__(self, interp, key: str):
        self._public = interp.get_signature_runner(key)
        self._shapes: dict[str, tuple] = {}
        try:
            self._wrapper = self._public._interpreter_wrapper
            self._subgraph = self._public._subgraph_index
            self._inputs = dict(self._public._inputs)
            self._outputs = list(self._public._outputs)
        except AttributeError:  # pragma: no cover - another interpreter build
            self._wrapper = None

    @property
    def subgraph(self) -> int:
        return int(getattr(self._public, "_subgraph_index", 0))

    def _resize(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Resize the inputs whose shape changed, then re-allocate (only then)."""
        w, sg = self._wrapper, self._subgraph
        resized = False
        for name, shape in shapes.items():
            if self._shapes.get(name) != shape:
                w.ResizeInputTensor(self._inputs[name], np.array(shape, dtype=np.int32), False, sg)
                self._shapes[name] = shape
                resized = True
        if resized:
            try:
                w.AllocateTensors(sg)
            except Exception:
                self._shapes.clear()  # nothing is allocated: the next call must resize again
                raise

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        if self._wrapper is None:  # pragma: no cover
            return self._public(**feeds)
        if len(feeds) != len(self._inputs):
            return self._public(**feeds)  # let LiteRT raise its own message
        self._resize({name: value.shape for name, value in feeds.items()})
        for name, value in feeds.items():
            self._wrapper.SetTensor(self._inputs[name], value, self._subgraph)  # checks dtypes too
        return self.invoke()

    def inputs(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """Writable input arrays of these shapes for the next :meth:`invoke`.

        They are views of the interpreter's own input buffers, so filling them is the only copy
        (no temporary array, no ``SetTensor`` copy of T rows of masks and features). A view
        is valid until the next call here (which may re-allocate): callers fill, invoke and drop
        them within one function, never keep them.
        """
        if self._wrapper is None:  # pragma: no cover - another interpreter build
            details = self._public.get_input_details()
            self._pending = {n: np.empty(shape, dtype=details[n]["dtype"]) for n, shape in shapes.items()}
            return self._pending
        self._resize(shapes)
        w, sg = self._wrapper, self._subgraph
        return {name: w.tensor(w, self._inputs[name], sg) for name in shapes}

    def invoke(self) -> dict[str, np.ndarray]:
        """Run on what :meth:`inputs` handed out; the outputs are copies."""
        if self._wrapper is None:  # pragma: no cover
            return self._public(**self._pending)
        w, sg = self._wrapper, self._subgraph
        w.Invoke(sg)
        return {name: w.GetTensor(index, sg) for name, index in self._outputs}

    def run(self, name: str, value: np.ndarray, out: str) -> np.ndarray:
        """Set the one input ``name`` to ``value`` (copied), invoke, return output ``out``: the
        shortest path for a signature with a single input (a trunk, ``full`` of an in-graph file)."""
        if self._wrapper is None:  # pragma: no cover
            return self._public(**{name: value})[out]
        w, sg = self._wrapper, self._subgraph
        if self._shapes.get(name) != value.shape:
            self._resize({name: value.shape})
        w.SetTensor(self._inputs[name], value, sg)
        w.Invoke(sg)
        return w.GetTensor(self._outputs_by_name[out], sg)

    def output(self, name: str) -> np.ndarray:
        """Run on what :meth:`inputs` handed out and return one output (a copy)."""
        if self._wrapper is None:  # pragma: no cover
            return self._public(**self._pending)[name]
        w, sg = self._wrapper, self._subgraph
        w.Invoke(sg)
        return w.GetTensor(self._outputs_by_name[name], sg)

    @property
    def _outputs_by_name(self) -> dict[str, int]:
        d = self.__dict__.get("_by_name")
        if d is None:
            d = self.__dict__["_by_name"] = dict(self._outputs)
        return d


class ThreadInterpreters(threading.local):
    """One thread's interpreters (a LiteRT interpreter is not thread-safe) and their runners."""

    def __init__(self):
        self.main: Any = None  # trunk (any batch), `full`, and the sampler when resizing is safe
        self.by_size: dict[int, Any] = {}  # seeded in-graph files: one interpreter per sampler batch
        # Largest sampler batch allocated so far. Growing past it reallocates the arena (a one-off
        # cost several times an invoke); going back to any smaller batch is cheap.
        self.high_water = 0
        self.runners: dict[int, dict[str, Runner]] = {}  # id(interpreter) -> signature -> runner
        self.main_runners: dict[str, Runner] = {}  # signature -> runner on `main`


class PlanRunner:
    """Runs one file's :class:`SignaturePlan` (thread-safe: each thread gets its own interpreters).

    Args:
        make_interpreter: a function returning a new LiteRT interpreter for the file.
        plan: the file's plan.
        random_raw: ``random_raw(n)`` gives n random uint64 for the keep-masks.
        check: called with every probability output (raises if it is not probabilities).
        main: an interpreter already made (it becomes the calling thread's).
    """

    def __init__(self, make_interpreter: Callable[[], Any], plan: SignaturePlan,
                 random_raw: Callable[[int], np.ndarray], check: Callable[[np.ndarray], None], main=None):
        self.plan = plan
        self._make = make_interpreter
        self._random_raw = random_raw
        self._check = check
        self.local = ThreadInterpreters()
        self.local.main = main
        self.step = plan.static_batch("sampler") or 1  # the sampler's static batch (1: dynamic)
        self._trunk_batch = plan.static_batch("trunk")
        self._full_batch = plan.static_batch("full")
        # The sampler's outputs read for the plan's outputs, and the same outputs of `full` (by name;
        # a foreign file's only output by position). Each signature dequantizes with its own scales.
        self._fetch = plan.fetch
        self._names = tuple(t.name for t in plan.fetch)
        self._single = len(plan.fetch) == 1
        full_specs = _specs(self.interpreter().get_signature_runner(plan.full), "out")
        if all(n in full_specs for n in self._names):
            self._full_names = self._names
        elif self._single and len(full_specs) == 1:
            self._full_names = tuple(full_specs)
        else:
            raise ModelLoadError(f"`{plan.full}` lacks the outputs {list(self._names)} of the stochastic signature. "
                                 f"Received: {sorted(full_specs)}")
        self._full_fetch = tuple(full_specs[n] for n in self._full_names)
        self._full_out = self._full_names[0]
        # `full` at batch 1 is then set, invoke, get (see full_runner).
        self.bare_full = (self._single and self._full_fetch[0].dtype == np.float32 and not plan.full_masks
                          and self._full_batch is None)
        sigs = self.interpreter().get_signature_list()
        if plan.trunk is not None:
            outs = sigs[plan.trunk]["outputs"]
            self._trunk_out = outs[0] if len(outs) == 1 or plan.feed.name not in outs else plan.feed.name
        self.broadcast = self._feed_broadcasts()

    def _rows(self, outs: dict[str, np.ndarray], full: bool = False) -> np.ndarray:
        """One float32 row per sample: the fetched outputs of one invoke, dequantized, side by side."""
        specs, names = (self._full_fetch, self._full_names) if full else (self._fetch, self._names)
        parts = [dequantize(t, outs[n]) for t, n in zip(specs, names)]
        return np.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1)

    def _read(self, runner: Runner, full: bool = False) -> np.ndarray:
        """Invoke ``runner`` on the inputs it handed out and read the sample rows."""
        if self._single:
            t = self._full_fetch[0] if full else self._fetch[0]
            out = dequantize(t, runner.output(self._full_out if full else self._names[0]))
            return out if out.ndim == 2 else out.reshape(out.shape[0], -1)
        return self._rows(runner.invoke(), full)

    def interpreter(self):
        """The calling thread's main interpreter."""
        if self.local.main is None:
            self.local.main = self._make()
        return self.local.main

    def runner(self, key: str, batch: int | None = None) -> Runner:
        local = self.local
        if batch is None or not self.plan.seeded:
            runner = local.main_runners.get(key)  # the common case, one dict lookup
            if runner is not None:
                return runner
        interp = self.interpreter()
        if batch is not None and self.plan.seeded:
            interp = local.by_size.get(batch)
            if interp is None:
                interp = local.by_size[batch] = self._make()
        runners = local.runners.setdefault(id(interp), {})
        runner = runners.get(key)
        if runner is None:
            runner = runners[key] = Runner(interp, key)
            if interp is local.main:
                local.main_runners[key] = runner
        return runner

    def grows(self, batch: int) -> bool:
        """Whether a sampler invoke of ``batch`` rows allocates on this thread (a one-off slow invoke)."""
        local = self.local
        return batch > local.high_water or (self.plan.seeded and batch not in local.by_size)

    @property
    def high_water(self) -> int:
        """The largest sampler batch this thread has allocated (a static sampler: unbounded)."""
        return self.local.high_water if self.step == 1 else 1 << 30

    def _feed_broadcasts(self) -> bool:
        """Whether the sampler takes one feature row for T masks (its first op multiplies the
        features by the first mask, which broadcasts): then the T copies of the features are
        never written (T x 784 floats for the book MLP). Tried once on load: one row and two
        rows of the same features, with the same two masks, must give the same two outputs."""
        plan, feed = self.plan, self.plan.feed
        if not plan.masks or self.step > 1:
            return False
        runner = self.runner(plan.sampler)
        masks = new_keep_masks(self._random_raw, plan.masks, 2)
        # Not zeros: a zero feature row would hide masks paired with the wrong rows.
        n = math.prod(feed.shape)
        ramp = np.linspace(-1.0, 1.0, n) if feed.dtype == np.float32 else np.linspace(-100, 100, n).round()
        feature = ramp.astype(feed.dtype).reshape(1, *feed.shape)
        outs = []
        for rows in (1, 2):
            shapes = {feed.name: (rows, *feed.shape), **{k: v.shape for k, v in masks.items()}}
            try:
                arrays = runner.inputs(shapes)
                arrays[feed.name][...] = feature
                for name, value in masks.items():
                    arrays[name][...] = value
                del arrays
                outs.append(self._read(runner))
            except (RuntimeError, ValueError):
                return False
        return outs[0].shape == outs[1].shape == (2, self.plan.width) and bool(np.array_equal(outs[0], outs[1]))

    def trunk(self, xq: np.ndarray) -> np.ndarray:
        """Trunk outputs for quantized inputs (the inputs themselves when there is no trunk)."""
        plan = self.plan
        if plan.trunk is None:
            return xq
        name, out = plan.input.name, self._trunk_out
        runner = self.runner(plan.trunk)
        b = self._trunk_batch
        if b is None:
            return runner.run(name, xq, out)
        return _in_static_batches(xq, b, lambda chunk: runner.run(name, chunk, out))

    def sample(self, feats: np.ndarray, per: int, *, check: bool = True) -> np.ndarray:
        """``per`` samples for each of the K rows of ``feats`` ``[K, *feature]`` through the sampler:
        probs ``[K * per, C]``, input-major. A static sampler runs ``K * per / step`` invokes of its batch."""
        plan, feed = self.plan, self.plan.feed
        batch = feats.shape[0] * per
        if self.step > 1:
            runner = self.runner(plan.sampler)
            rows = np.repeat(feats, per, axis=0)
            parts = []
            for lo in range(0, batch, self.step):
                masks = new_keep_masks(self._random_raw, plan.masks, self.step)
                parts.append(self._rows(runner(**{feed.name: rows[lo:lo + self.step]}, **masks)))
            probs = np.concatenate(parts) if len(parts) > 1 else parts[0]
        else:
            grew = self.grows(batch)
            runner = self.runner(plan.sampler, batch)
            one = self.broadcast and feats.shape[0] == 1
            shapes = {feed.name: (1 if one else batch, *feed.shape)}
            for p in plan.masks:
                shapes[p.name] = (batch, *p.shape)
            arrays = runner.inputs(shapes)
            if one:
                arrays[feed.name][...] = feats
            else:
                arrays[feed.name].reshape(feats.shape[0], per, *feed.shape)[...] = feats[:, None]
            if plan.masks:
                fill_keep_masks(self._random_raw, arrays, plan.masks, batch)
            del arrays  # views into the interpreter: never kept past this invoke
            probs = self._read(runner)
            if grew:
                self.local.high_water = max(self.local.high_water, batch)
        if check:
            self._check(probs)
        return probs

    def full(self, xq: np.ndarray, per: int, *, check: bool = True) -> np.ndarray:
        """``full`` at batch ``K * per`` for the K inputs of ``xq``: probs ``[K * per, C]``, input-major.
        ``check=False``: the caller checks the probabilities itself."""
        plan, x = self.plan, self.plan.input
        runner = self.runner(plan.full)
        k = xq.shape[0]
        batch = k * per
        if batch == 1 and not plan.full_masks:
            if self._single:
                probs = dequantize(self._full_fetch[0], runner.run(x.name, xq, self._full_out))
                probs = probs if probs.ndim == 2 else probs.reshape(1, -1)
            else:
                probs = self._rows(runner(**{x.name: xq}), full=True)
            if check:
                self._check(probs)
            return probs
        shapes = {x.name: (batch, *x.shape)}
        for p in plan.full_masks:
            shapes[p.name] = (batch, *p.shape)
        arrays = runner.inputs(shapes)
        arrays[x.name].reshape(k, per, *x.shape)[...] = xq[:, None]
        if plan.full_masks:
            fill_keep_masks(self._random_raw, arrays, plan.full_masks, batch)
        del arrays
        probs = self._read(runner, full=True)
        if check:
            self._check(probs)
        return probs

    def full_runner(self) -> tuple[Runner, str, str] | None:
        """Where :attr:`bare_full`: the calling thread's runner of ``full`` with the names of its
        input and output, for ``runner.run(input, x, output)`` at batch 1 (a float32 row, unchecked).
        None before the thread's first ``full``, which makes the runner."""
        runner = self.local.main_runners.get(self.plan.full)
        return None if runner is None else (runner, self.plan.input.name, self._full_out)

    def full_expected(self, xq: np.ndarray, rows: int) -> np.ndarray:
        """``full`` with every mask input at its expected keep-mask (dropout off), ``rows`` inputs per invoke."""
        plan = self.plan
        runner = self.runner(plan.full)

        def run(chunk):
            feed = {plan.input.name: chunk, **expected_keep_masks(plan.full_masks, len(chunk))}
            return self._rows(runner(**feed), full=True)

        if self._full_batch is not None:
            return _in_static_batches(xq, self._full_batch, run)
        return np.concatenate([run(xq[lo:lo + rows]) for lo in range(0, len(xq), rows)])


def _in_static_batches(x: np.ndarray, batch: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` over whole batches of ``batch`` rows of ``x`` (the last padded with its last row), cut to ``len(x)``."""
    parts = []
    for lo in range(0, x.shape[0], batch):
        chunk = x[lo:lo + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        parts.append(fn(chunk)[:n])
    return np.concatenate(parts) if len(parts) > 1 else parts[0]
