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

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import InvalidArgumentError
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
    """One user-facing output of the sampler.

    Attributes:
        tensor: the signature output.
        task: ``"classification"`` (the only task the runtime runs today).
        class_names: names of the classes (from the metadata, or ``"0"``, ``"1"``, ...).
        prob_slack: per-value slack of the probability check (a row sum may miss 1 by C times it):
            float32 softmax rounding, plus half a quantization step where the softmax runs quantized.
    """

    tensor: TensorSpec
    task: str = "classification"
    class_names: tuple[str, ...] = ()
    prob_slack: float = 1e-4

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def num_classes(self) -> int:
        return int(self.tensor.shape[-1]) if self.tensor.shape else 1


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
    stochastic: str = "in-graph"
    masks_from: str = "file"
    full_masks_from: str = "file"
    seeded: bool = False
    strategies: tuple[str, ...] = ("full",)
    mc_layers: tuple[dict, ...] = ()

    @property
    def output(self) -> OutputSpec:
        """The first output (the only one today)."""
        return self.outputs[0]

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

    out_name = (meta.get("output") or {}).get("name", "probs")
    if out_name not in s_out:
        out_name = next(iter(s_out))
    out = s_out[out_name]
    num_classes = int(out.shape[-1]) if out.shape else 1
    # An int8 model computes its softmax in int8 (steps of 1/256) even when its output tensor is
    # float; without edgekit metadata the file's quantization is unknown: allow the int8 step too.
    if out.dtype == np.int8:
        step = out.scale
    elif (meta.get("quantization") or {}).get("mode", "int8") in ("int8", "int16x8"):
        step = 1 / 256
    else:
        step = 0.0
    listed = meta.get("class_names")
    class_names = (tuple(str(c) for c in listed) if listed and len(listed) == num_classes
                   else tuple(str(i) for i in range(num_classes)))
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
        outputs=(OutputSpec(out, "classification", class_names, 1e-4 + step / 2),),
        batch=batch,
        stochastic=stochastic,
        masks_from=masks_from,
        full_masks_from=full_masks_from,
        seeded=seeded,
        strategies=strategies,
        mc_layers=tuple(mc_layers),
    )
