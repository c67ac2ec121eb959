"""The :class:`SignaturePlan` of an edgekit file: which signature runs once, which at batch T, and how.

One plan per file, read by everything that runs one: ``MCModel.predict``, ``edgekit profile`` and
the conversion report all run a file through :class:`edgekit.runtime.MCModel`, which holds it.

>>> plan = build_plan(metadata, interpreter, source="model.tflite")
>>> plan.trunk, plan.sampler, plan.masks_from, plan.strategies
('trunk', 'masked', 'numpy', ('trunk+head', 'full'))

The plan says, for a file (docs/format.md):

- ``input``: the data input of ``full`` (name, shape without batch, dtype, int8 scale/zero point);
- ``trunk``: the deterministic signature run once per input, or None (the first MC layer acts on
  the input, or the file has no edgekit metadata naming one);
- ``sampler``: the signature run at batch T, and ``sampler_role``: ``masked`` (the twin of an
  unseeded in-graph file, fed numpy keep-masks), ``head``, or ``full``; ``feed`` is its data input;
- ``masks``: the :class:`~edgekit.runtime.masks.MaskPlan` of every mask input the sampler takes,
  ``full_masks`` those of ``full`` (when ``full`` runs as the other strategy, or dropout off);
- ``outputs``: one :class:`OutputSpec` per user-facing output, a list although there is one today
  (class probabilities);
- ``batch``: the static batch of each role (``{role: int}``, from the ``batch`` metadata key;
  absent or null = dynamic). A static signature is run at exactly that batch, never resized;
- ``masks_from``: ``"numpy"`` (the runtime draws the masks), ``"file"`` (the file's
  ``RANDOM_UNIFORM``) or ``"none"`` (no MC layer), and ``full_masks_from`` the same for ``full``;
  ``seeded``: a seeded file, whose mask sequence restarts whenever an interpreter is re-prepared;
- ``strategies``: what may run T samples of one input, the default first. ``"trunk+head"``: the
  trunk once, then the sampler at batch T. ``"full"``: ``full`` at batch T (the trunk's work T
  times, but one invoke instead of two: faster at small T, see :mod:`edgekit.runtime.strategy`).
  A file without a trunk has only ``"full"`` (its sampler is ``full`` or its ``masked`` twin).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import InvalidArgumentError
from edgekit.runtime.calibration import Abstention, Temperature
from edgekit.runtime.masks import MaskPlan, mask_plan
from edgekit.runtime.metadata import masked_twin, twin_mask_inputs
from edgekit.runtime.safety import ModelLoadError

__all__ = ["ROLES", "OutputSpec", "SignaturePlan", "TensorSpec", "build_plan"]

ROLES = ("full", "trunk", "head", "masked")


@dataclass(frozen=True)
class TensorSpec:
    """A signature input or output: ``shape`` without the batch axis, int8 ``scale``/``zero_point`` (else 0)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0


@dataclass(frozen=True)
class OutputSpec:
    """One user-facing output of the sampler (one entry of the metadata's ``outputs``, docs/format.md).

    Every invoke's outputs are read into one float32 row per sample, the outputs side by side:
    ``columns`` is this output's ``(start, stop)`` in that row, ``variance_columns`` its
    log-variance partner's (a heteroscedastic value output), or None.

    Attributes:
        tensor: the signature output.
        task: ``"classification"`` or ``"regression"``.
        activation: for a class output, ``"softmax"`` (C probabilities) or ``"sigmoid"`` (one unit,
            read as P(class 1): two class probabilities); None for a value output.
        shape: the output's shape without the batch axis.
        class_names: names of the classes (from the metadata, or ``"0"``, ``"1"``, ...).
        prob_slack: per-value slack of the probability check (a row sum may miss 1 by C times it):
            float32 softmax rounding, plus half a quantization step where the softmax runs quantized.
        calibration: the file's temperature for this output, or None.
        abstain: the file's abstention threshold for this output, or None.
        noise_variance: a value output's homoscedastic noise variance per value, or None.
        variance: the log-variance output of a heteroscedastic value output, or None.
        variance_scale: the factor on a heteroscedastic output's total variance (1: none fitted).
        interval: the level of the central predictive interval reported for a value output.
    """

    tensor: TensorSpec
    task: str = "classification"
    class_names: tuple[str, ...] = ()
    prob_slack: float = 1e-4
    activation: str | None = "softmax"
    shape: tuple[int, ...] = ()
    columns: tuple[int, int] = (0, 0)
    calibration: Temperature | None = None
    abstain: Abstention | None = None
    noise_variance: tuple[float, ...] | None = None
    variance: TensorSpec | None = None
    variance_columns: tuple[int, int] | None = None
    variance_scale: float = 1.0
    interval: float = 0.9

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def num_classes(self) -> int:
        """C for a class output (2 for one sigmoid unit), 0 for a value output."""
        if self.task != "classification":
            return 0
        if self.activation == "sigmoid":
            return 2
        return int(self.tensor.shape[-1]) if self.tensor.shape else 1

    @property
    def width(self) -> int:
        """Columns this output takes in a sample row."""
        return self.columns[1] - self.columns[0]


@dataclass(frozen=True)
class SignaturePlan:
    """How one file is run (see the module docstring). Built by :func:`build_plan`."""

    input: TensorSpec
    full: str
    trunk: str | None
    sampler: str
    sampler_role: str
    feed: TensorSpec
    masks: tuple[MaskPlan, ...]
    full_masks: tuple[MaskPlan, ...]
    outputs: tuple[OutputSpec, ...]
    batch: Mapping[str, int | None] = field(default_factory=dict)
    fetch: tuple[TensorSpec, ...] = ()
    stochastic: str = "in-graph"
    masks_from: str = "file"
    full_masks_from: str = "file"
    seeded: bool = False
    strategies: tuple[str, ...] = ("full",)
    mc_layers: tuple[dict, ...] = ()

    @property
    def output(self) -> OutputSpec:
        """The first output (the one a single-output caller means)."""
        return self.outputs[0]

    @property
    def width(self) -> int:
        """Columns of one sample row: every fetched output flattened, side by side."""
        return sum(math.prod(t.shape) for t in self.fetch)

    @property
    def has_trunk(self) -> bool:
        return self.trunk is not None

    @property
    def default_strategy(self) -> str:
        """The strategy of budgeted and tolerance sampling (chunks of the sampler)."""
        return self.strategies[0]

    def static_batch(self, role: str) -> int | None:
        """The static batch of ``role`` (``full``, ``trunk``, ``sampler``, ...), None if dynamic."""
        return self.batch.get(self.sampler_role if role == "sampler" else role)


def _specs(runner, which: str) -> dict[str, TensorSpec]:
    get = runner.get_input_details if which == "in" else runner.get_output_details
    out = {}
    for name, d in get().items():
        q = d.get("quantization_parameters") or {}
        scales, zps = q.get("scales", []), q.get("zero_points", [])
        shape = tuple(int(s) for s in d["shape_signature"][1:])
        out[name] = TensorSpec(name, shape, np.dtype(d["dtype"]),
                               float(scales[0]) if len(scales) else 0.0, int(zps[0]) if len(zps) else 0)
    return out


def _static_batches(meta: dict, source: str) -> dict[str, int | None]:
    raw = meta.get("batch")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or any(k not in ROLES for k in raw) or any(
        v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1) for v in raw.values()
    ):
        raise ModelLoadError(
            f"{source}: malformed `batch` metadata. Expected {{role: int >= 1 or null}} with roles in {list(ROLES)}. "
            f"Received: {raw!r}"
        )
    return {k: v for k, v in raw.items() if v is not None}


def output_entries(meta: dict, available: list[str] | tuple[str, ...]) -> list[dict]:
    """The metadata's ``outputs`` list (docs/format.md), whatever the file's format version.

    ``edgekit/2`` files list their outputs; an ``edgekit/1`` file has one class output (its
    ``output.name``, with ``class_names``); a file without edgekit metadata is read as one class
    output, the first of ``available`` (the sampler's output names).
    """
    listed = meta.get("outputs")
    if listed is not None:
        return [dict(e) if isinstance(e, dict) else e for e in listed]
    name = (meta.get("output") or {}).get("name", "probs")
    if name not in available and available:
        name = available[0]
    return [{"name": name, "task": "classification", "activation": "softmax", "class_names": meta.get("class_names")}]


def _bad(source: str, what: str, received) -> ModelLoadError:
    return ModelLoadError(f"{source}: malformed `outputs` metadata. Expected {what}. Received: {received!r}")


def _outputs(meta: dict, s_out: dict[str, TensorSpec], source: str) -> tuple[tuple[OutputSpec, ...], tuple[TensorSpec, ...]]:
    """The plan's outputs and the sampler tensors read for them, in column order."""
    entries = output_entries(meta, list(s_out))
    if not isinstance(entries, list) or not entries:
        raise _bad(source, "a non-empty list of outputs", entries)
    # An int8 model computes its softmax in int8 (steps of 1/256) even when its output tensor is
    # float; without edgekit metadata the file's quantization is unknown: allow the int8 step too.
    quantized = (meta.get("quantization") or {}).get("mode", "int8") in ("int8", "int16x8")
    specs, fetch, col = [], [], 0
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise _bad(source, "each output to be an object with a `name`", e)
        name = e["name"]
        if name not in s_out:
            raise ModelLoadError(f"{source}: the metadata names output {name!r}, which the stochastic signature "
                                 f"lacks. Expected one of {sorted(s_out)}. Received: {name!r}")
        t, task = s_out[name], e.get("task", "classification")
        width = math.prod(t.shape)
        columns = (col, col + width)
        fetch.append(t)
        col += width
        if task == "classification":
            activation = e.get("activation") or "softmax"
            if activation not in ("softmax", "sigmoid") or (activation == "sigmoid" and width != 1):
                raise _bad(source, f"output {name!r} to be softmax, or sigmoid with one unit", e)
            step = t.scale if t.dtype == np.int8 else (1 / 256 if quantized else 0.0)
            classes = 2 if activation == "sigmoid" else width
            listed = e.get("class_names")
            names = (tuple(str(c) for c in listed) if listed and len(listed) == classes
                     else tuple(str(i) for i in range(classes)))
            cal, abstain = e.get("calibration"), e.get("abstain")
            try:
                cal = None if cal is None else Temperature.from_dict(cal)
                abstain = None if abstain is None else Abstention.from_dict(abstain)
            except InvalidArgumentError as err:
                raise _bad(source, f"a calibration/abstention entry for {name!r} ({err})", e) from None
            specs.append(OutputSpec(t, "classification", names, 1e-4 + step / 2, activation, t.shape, columns,
                                    cal, abstain))
        elif task == "regression":
            noise, var, var_cols = e.get("noise_variance"), None, None
            if noise is not None:
                if (not isinstance(noise, list) or len(noise) != width
                        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in noise)):
                    raise _bad(source, f"`noise_variance` of {name!r}: {width} numbers >= 0", noise)
                noise = tuple(float(v) for v in noise)
            declared = e.get("variance")
            if declared is not None:
                vname = declared.get("output") if isinstance(declared, dict) else None
                if vname not in s_out or declared.get("kind") != "log_variance" or s_out[vname].shape != t.shape:
                    raise _bad(source, f"`variance` of {name!r}: {{'output': a signature output of the same "
                                       f"shape, 'kind': 'log_variance'}}", declared)
                var = s_out[vname]
                var_cols = (col, col + width)
                fetch.append(var)
                col += width
            level = e.get("interval", 0.9)
            if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
                raise _bad(source, f"`interval` of {name!r} in (0, 1)", level)
            scale = e.get("variance_scale", 1.0) or 1.0
            specs.append(OutputSpec(t, "regression", (), 0.0, None, t.shape, columns, None, None, noise, var, var_cols,
                                    float(scale), float(level)))
        else:
            raise _bad(source, f"the task of {name!r} to be 'classification' or 'regression'", task)
    return tuple(specs), tuple(fetch)


def build_plan(meta: dict, interp, *, source: str = "<bytes>", rng: str = "auto") -> SignaturePlan:
    """The :class:`SignaturePlan` of a file from its metadata and its interpreter's signatures.

    Raises:
        ModelLoadError: the file lacks the signatures or inputs edgekit needs.
        InvalidArgumentError: ``rng="graph"`` for a mask-input file (it has no random op).
    """
    sigs = interp.get_signature_list()
    names = meta.get("signatures") or {}
    full = names.get("full") or ("full" if "full" in sigs else None)
    if full is None and len(sigs) == 1:
        full = next(iter(sigs))  # a foreign file with one signature
    if full not in sigs:
        raise ModelLoadError(
            f"{source} has no usable signature. Expected a 'full' signature (docs/format.md). "
            f"Received: signatures={sorted(sigs)}"
        )
    trunk, head = names.get("trunk"), names.get("head")
    has_trunk = bool(trunk and head and trunk in sigs and head in sigs)
    stochastic = meta.get("stochastic", "in-graph")
    mc_layers = list(meta.get("mc_layers") or [])
    if rng == "graph" and stochastic == "mask-input":
        raise InvalidArgumentError(
            f"{source} is a mask-input model: it has no random op of its own. Expected rng='auto' "
            f"for it. Received: rng='graph'"
        )
    # Mask inputs of the sampler: (input name, layer). In mask-input files `full`/`head` take
    # them; an in-graph file's `masked` twin takes `mask_i` for each MC layer i with rate > 0.
    fed = [(m["mask_input"], m) for m in mc_layers if m.get("mask_input")]
    sampler, role = (head, "head") if has_trunk else (full, "full")
    masked = masked_twin(meta, sigs) if rng == "auto" else None
    full_fed = fed
    if masked is not None:
        sampler, role = masked, "masked"
        fed = twin_mask_inputs(mc_layers)
        full_fed = []  # `full` keeps its own RANDOM_UNIFORM
    masks_from = "numpy" if fed else ("file" if stochastic == "in-graph" else "none")
    full_masks_from = "numpy" if full_fed else ("file" if stochastic == "in-graph" else "none")
    # A seeded file restarts its sequence on re-prepare: the runtime keeps one interpreter per
    # batch size and never switches signatures (that would be another sequence).
    seeded = masks_from == "file" and meta.get("seed") is not None

    full_in = _specs(interp.get_signature_runner(full), "in")
    mask_names = {name for name, _ in fed} | {m.get("mask_input") for m in mc_layers if m.get("mask_input")}
    x_name = (meta.get("input") or {}).get("name", "x")
    if x_name not in full_in:
        candidates = [n for n in full_in if n not in mask_names]
        if len(candidates) != 1:
            raise ModelLoadError(
                f"{source}: cannot tell which input is the data. Expected one input named "
                f"{x_name!r}. Received: inputs={sorted(full_in)}"
            )
        x_name = candidates[0]
    runner = interp.get_signature_runner(sampler)
    s_in, s_out = _specs(runner, "in"), _specs(runner, "out")
    for name, _ in fed:
        if name not in s_in:
            raise ModelLoadError(f"{source}: mask input {name!r} is missing. Received: {sorted(s_in)}")
    for name, _ in full_fed:
        if name not in full_in:
            raise ModelLoadError(f"{source}: mask input {name!r} of {full!r} is missing. Received: {sorted(full_in)}")
    feeds = [n for n in s_in if n not in mask_names]
    if len(feeds) != 1:
        raise ModelLoadError(f"{source}: the stochastic signature has inputs {sorted(s_in)}; expected one data input.")

    def plans(inputs, which):
        return tuple(mask_plan(t.name, m.get("mask_shape") or t.shape, float(m["rate"]), t.dtype, t.scale, t.zero_point)
                     for t, m in ((inputs[name], m) for name, m in which))

    outputs, fetch = _outputs(meta, s_out, source)
    batch = _static_batches(meta, source)
    strategies: tuple[str, ...] = ("full",)
    if has_trunk:
        # `full` at batch T as the alternative: not for a seeded file (one signature, one sequence)
        # and not for a fixed-batch file (its signatures run at their own batches only).
        strategies = ("trunk+head",) if seeded or batch else ("trunk+head", "full")
    return SignaturePlan(
        input=full_in[x_name],
        full=full,
        trunk=trunk if has_trunk else None,
        sampler=sampler,
        sampler_role=role,
        feed=s_in[feeds[0]],
        masks=plans(s_in, fed),
        full_masks=plans(full_in, full_fed),
        outputs=outputs,
        fetch=fetch,
        batch=batch,
        stochastic=stochastic,
        masks_from=masks_from,
        full_masks_from=full_masks_from,
        seeded=seeded,
        strategies=strategies,
        mc_layers=tuple(mc_layers),
    )
