"""What a ``.tflite`` file declares, read from its flatbuffer without running it.

One reader for every static fact, so the profiler, the conversion report and the device fit check
read a file the same way:

- :func:`signatures`: each signature's input and output names, in the file's order.
- :func:`model_ops` / :func:`op_counts` / :func:`operators`: the builtin ops, for the whole file or
  one signature (custom ops are named ``"CUSTOM:<code>"``).
- :func:`model_dtypes`: the tensor dtypes, for the whole file or one signature.
- :func:`signature_batches`: the static batch of each signature (``None`` for a dynamic batch).
- :func:`dynamic_shape_ops`: ops whose output shape is computed at run time (a ``RESHAPE`` fed by
  ``SHAPE``, a ``RANDOM_UNIFORM`` of a run-time shape). Under LiteRT's CompiledModel API a
  signature output written by such an op is dynamic, and the caller's output buffer is dropped.
- :func:`estimate_arena_bytes`: the tensor arena one signature needs at a batch size.
- :func:`model_facts`: all of the above that the device fit check needs, as one
  :class:`edgekit.devices.ModelFacts` (``edgekit.devices.check_model(profile, facts)``).

>>> from edgekit.runtime.inspect import model_facts, model_ops
>>> model_ops(data, "trunk")
['FULLY_CONNECTED', 'RESHAPE']
>>> model_facts(data).batches          # a dynamic-batch file: no static batch anywhere
{'full': None, 'trunk': None, 'head': None, 'masked': None}

The flatbuffer is read through the TFLite schema bindings that ship with LiteRT
(``ai_edge_litert.schema_py_generated``); nothing is executed.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from edgekit.devices import ROLES, ModelFacts
from edgekit.errors import InvalidArgumentError

__all__ = [
    "arena_steps",
    "dynamic_shape_ops",
    "estimate_arena_bytes",
    "model_dtypes",
    "model_facts",
    "model_ops",
    "op_counts",
    "operators",
    "random_uniform_shapes",
    "signature_batches",
    "signatures",
]

# For each op whose output shape comes from an input tensor: the index of that input.
_SHAPE_OPERAND = {"RESHAPE": 1, "RANDOM_UNIFORM": 0, "RANDOM_STANDARD_NORMAL": 0, "MULTINOMIAL": 1, "FILL": 0,
                  "BROADCAST_TO": 1}
_TYPE_BYTES = {"float32": 4, "float16": 2, "int32": 4, "uint8": 1, "int64": 8, "bool": 1, "int16": 2,
               "complex64": 8, "int8": 1, "float64": 8, "complex128": 16, "uint64": 8, "uint32": 4,
               "uint16": 2, "bfloat16": 2, "int4": 1}


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover
        from tflite_runtime import schema_py_generated as schema  # type: ignore[no-redef]
    return schema


class _File:
    """The parsed flatbuffer: op names, signatures and subgraphs, read once."""

    def __init__(self, tflite: bytes):
        schema = _schema()
        self.model = model = schema.Model.GetRootAs(tflite, 0)
        op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        self.codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            # Codes above 127 live in builtin_code; older files only set deprecated_builtin_code.
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            name = op_names.get(code, f"UNKNOWN_{code}")
            if name == "CUSTOM":
                name = f"CUSTOM:{(oc.CustomCode() or b'').decode(errors='replace')}"
            self.codes.append(name)
        self.signatures: dict[str, tuple[int, list[int]]] = {}
        for i in range(model.SignatureDefsLength()):
            sd = model.SignatureDefs(i)
            inputs = [sd.Inputs(j).TensorIndex() for j in range(sd.InputsLength())]
            self.signatures[sd.SignatureKey().decode()] = (sd.SubgraphIndex(), inputs)

    def names(self) -> dict[str, int]:
        """Signature key (or ``subgraph_<i>`` for a subgraph without one) -> subgraph index."""
        by_index = {g: k for k, (g, _) in self.signatures.items()}
        return {by_index.get(g, f"subgraph_{g}"): g for g in range(self.model.SubgraphsLength())}

    def subgraph(self, signature: str | None):
        if signature is None:
            if self.model.SubgraphsLength() != 1:
                raise InvalidArgumentError(
                    f"Expected a signature name for a file with {self.model.SubgraphsLength()} subgraphs. "
                    f"Received: signature=None (signatures: {', '.join(self.signatures) or 'none'})"
                )
            return self.model.Subgraphs(0)
        names = self.names()
        if signature not in names:
            raise InvalidArgumentError(
                f"Expected a signature of the model. Received: signature={signature!r} (signatures: {', '.join(names)})"
            )
        return self.model.Subgraphs(names[signature])

    def subgraphs(self, signature: str | None):
        if signature is None:
            return [self.model.Subgraphs(g) for g in range(self.model.SubgraphsLength())]
        return [self.subgraph(signature)]

    def dtype(self, tensor) -> str:
        return self.type_names.get(tensor.Type(), "unknown")

    def is_constant(self, tensor) -> bool:
        b = tensor.Buffer()
        if b <= 0 or b >= self.model.BuffersLength():
            return False
        buf = self.model.Buffers(b)
        return buf.DataLength() > 0 or buf.Size() > 0

    @staticmethod
    def shape(tensor) -> list[int]:
        if tensor.ShapeSignatureLength():
            return [int(d) for d in tensor.ShapeSignatureAsNumpy()]
        return [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []

    def ops(self, sg):
        """(op name, input tensor indices, output tensor indices) of each operator, in order."""
        out = []
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            ins = [int(t) for t in op.InputsAsNumpy()] if op.InputsLength() else []
            outs = [int(t) for t in op.OutputsAsNumpy()] if op.OutputsLength() else []
            out.append((self.codes[op.OpcodeIndex()], ins, outs))
        return out


def signatures(tflite: bytes) -> dict[str, dict[str, list[str]]]:
    """``{signature: {"inputs": [names], "outputs": [names]}}`` in the file's order."""
    model = _File(tflite).model
    out = {}
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        out[sd.SignatureKey().decode()] = {
            "inputs": [sd.Inputs(j).Name().decode() for j in range(sd.InputsLength())],
            "outputs": [sd.Outputs(j).Name().decode() for j in range(sd.OutputsLength())],
        }
    return out


def model_ops(tflite: bytes, signature: str | None = None) -> list[str]:
    """Sorted builtin op names the model uses (in every subgraph, or in one signature's)."""
    f = _File(tflite)
    sgs = f.subgraphs(signature) if signature is not None else f.subgraphs(None)
    return sorted({name for sg in sgs for name, _, _ in f.ops(sg)})


def op_counts(tflite: bytes) -> dict[str, dict[str, int]]:
    """Builtin op counts per signature (``{"full": {"FULLY_CONNECTED": 3, ...}, ...}``)."""
    f = _File(tflite)
    return {key: dict(sorted(Counter(name for name, _, _ in f.ops(f.model.Subgraphs(g))).items()))
            for key, g in f.names().items()}


def operators(tflite: bytes, signature: str | None = None) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Each operator of one signature, in order: ``(op name, input dtypes, output dtypes)``."""
    f = _File(tflite)
    sg = f.subgraph(signature)
    types = [f.dtype(sg.Tensors(t)) for t in range(sg.TensorsLength())]
    return [(name, tuple(types[t] for t in ins if t >= 0), tuple(types[t] for t in outs if t >= 0))
            for name, ins, outs in f.ops(sg)]


def model_dtypes(tflite: bytes, signature: str | None = None) -> list[str]:
    """Sorted tensor dtype names (``"float32"``, ``"int8"``, ...) in every subgraph, or in one signature's."""
    f = _File(tflite)
    return sorted({f.dtype(sg.Tensors(t)) for sg in f.subgraphs(signature) for t in range(sg.TensorsLength())})


def _batch(f: _File, sg, inputs: list[int]) -> int | None:
    dims = [f.shape(sg.Tensors(t)) for t in inputs]
    dims = [d for d in dims if d]
    if not dims or any(d[0] < 0 for d in dims):
        return None
    return dims[0][0]


def signature_batches(tflite: bytes) -> dict[str, int | None]:
    """Each signature's static batch (the leading dim of its inputs), ``None`` where it is dynamic."""
    f = _File(tflite)
    out = {}
    for key, g in f.names().items():
        sg = f.model.Subgraphs(g)
        inputs = f.signatures[key][1] if key in f.signatures else [int(t) for t in sg.InputsAsNumpy()]
        out[key] = _batch(f, sg, inputs)
    return out


def dynamic_shape_ops(tflite: bytes, signature: str | None = None) -> list[str]:
    """Ops (sorted, with repeats) whose output shape is computed at run time, in one signature or all.

    These are the ``RESHAPE``, ``RANDOM_UNIFORM``, ``FILL``, ``BROADCAST_TO``, ... whose shape input
    is not a constant of the file. A static export has none; a dynamic-batch edgekit export has only
    the ``RANDOM_UNIFORM`` ops of in-graph dropout (their shape follows the batch).
    """
    f = _File(tflite)
    found = []
    for sg in f.subgraphs(signature):
        for name, ins, _ in f.ops(sg):
            k = _SHAPE_OPERAND.get(name)
            if k is not None and k < len(ins) and ins[k] >= 0 and not f.is_constant(sg.Tensors(ins[k])):
                found.append(name)
    return sorted(found)


def random_uniform_shapes(tflite: bytes) -> dict[str, list[list[int]]]:
    """Each signature's ``RANDOM_UNIFORM`` outputs' shape signatures (-1: the batch), sorted: the
    masks a file draws itself (one per MC layer; a drop path's is ``[-1, 1, 1, 1]``)."""
    f = _File(tflite)
    out = {}
    for key, g in f.names().items():
        sg = f.model.Subgraphs(g)
        out[key] = sorted(f.shape(sg.Tensors(outs[0])) for name, _, outs in f.ops(sg) if name == "RANDOM_UNIFORM")
    return out


def _arena_steps(f: _File, sg) -> tuple[tuple[int, int], ...]:
    sizes: dict[int, tuple[int, int]] = {}  # tensor -> (bytes per batch row, fixed bytes)
    for t in range(sg.TensorsLength()):
        tensor = sg.Tensors(t)
        if f.is_constant(tensor):
            continue  # a constant (weights): lives in the model, not the arena
        shape = f.shape(tensor)
        width = _TYPE_BYTES.get(f.dtype(tensor), 4)
        per = int(np.prod([max(d, 1) for d in shape[1:]], dtype=np.int64)) * width
        sizes[t] = (per, 0) if shape and shape[0] < 0 else (0, per * max(shape[0], 1) if shape else width)
    ops = f.ops(sg)
    n_ops = len(ops)
    first = {int(t): -1 for t in sg.InputsAsNumpy() if int(t) in sizes} if sg.InputsLength() else {}
    last = {int(t): n_ops for t in sg.OutputsAsNumpy() if int(t) in sizes} if sg.OutputsLength() else {}
    for i, (_, ins, outs) in enumerate(ops):
        for t in outs:
            if t in sizes:
                first.setdefault(t, i)
        for t in ins:
            if t in sizes:
                last[t] = max(last.get(t, i), i)
    # A tensor nobody writes is alive from the start; one nobody reads dies where it is written.
    spans = [(first.get(t, -1), last.get(t, first.get(t, -1)), size) for t, size in sizes.items()]
    steps = set()
    for step in range(-1, n_ops + 1):
        live = [size for lo, hi, size in spans if lo <= step <= hi]
        steps.add((sum(p for p, _ in live), sum(c for _, c in live)))
    # Keep the steps no other step exceeds in both terms: the peak at any batch is among them.
    kept = [s for s in steps if not any(o != s and o[0] >= s[0] and o[1] >= s[1] for o in steps)]
    return tuple(sorted(kept)) or ((0, 0),)


def arena_steps(tflite: bytes, signature: str | None = None) -> tuple[tuple[int, int], ...]:
    """The live tensor bytes of one signature at each step, as ``(bytes per batch row, fixed bytes)``.

    The arena at batch ``b`` is the largest ``per_row * b + fixed`` (:func:`estimate_arena_bytes`).
    """
    f = _File(tflite)
    return _arena_steps(f, f.subgraph(signature))


def estimate_arena_bytes(tflite: bytes, signature: str, batch: int = 1) -> int:
    """Estimate the tensor arena of one signature at ``batch`` rows.

    Walks the operators in order and keeps every non-constant tensor alive from the op that
    writes it (or the start, for inputs) to the last op that reads it (or the end, for outputs);
    the estimate is the peak of the live bytes. Unknown dims (``-1``) are the batch on axis 0
    and 1 elsewhere; a signature with a static batch has the same arena at every ``batch``.
    LiteRT's planner also reuses memory by lifetime, but aligns and adds scratch buffers, so read
    this as an estimate (typically within a few tens of percent), not a bound.
    """
    f = _File(tflite)
    if not f.signatures and f.model.SubgraphsLength() == 1:
        sg = f.model.Subgraphs(0)
    else:
        sg = f.subgraph(signature)
    return max(per * batch + fixed for per, fixed in _arena_steps(f, sg))


def _roles(f: _File, meta: dict | None) -> dict[str, str]:
    """Role (``full``, ``trunk``, ``head``, ``masked``) -> signature key, for the roles the file has."""
    names = f.names()
    declared = (meta or {}).get("signatures")
    if isinstance(declared, dict):
        return {r: declared[r] for r in ROLES if isinstance(declared.get(r), str) and declared[r] in names}
    found = {r: r for r in ROLES if r in names}
    if not found and len(names) == 1:
        found = {"full": next(iter(names))}
    return found


def _io_dtype(f: _File, keys) -> str | None:
    types = set()
    for key in keys:
        sg = f.model.Subgraphs(f.names()[key])
        ends = [int(t) for t in sg.InputsAsNumpy()] if sg.InputsLength() else []
        ends += [int(t) for t in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
        types |= {f.dtype(sg.Tensors(t)) for t in ends}
    if not types:
        return None
    return "int8" if types == {"int8"} else min(types - {"int8"})


def model_facts(tflite: bytes) -> ModelFacts:
    """What the device fit check needs to know about a file (:func:`edgekit.devices.check_model`)."""
    from edgekit.runtime.metadata import read_metadata

    f = _File(tflite)
    meta = read_metadata(tflite)
    roles = _roles(f, meta)
    names = f.names()
    sgs = [f.model.Subgraphs(g) for g in range(f.model.SubgraphsLength())]
    batches, arena = {}, {}
    for role, key in roles.items():
        sg = f.model.Subgraphs(names[key])
        inputs = f.signatures[key][1] if key in f.signatures else [int(t) for t in sg.InputsAsNumpy()]
        batches[role] = _batch(f, sg, inputs)
        arena[role] = _arena_steps(f, sg)
    stochastic = (meta or {}).get("stochastic")
    return ModelFacts(
        size_bytes=len(tflite),
        ops=tuple(sorted({name for sg in sgs for name, _, _ in f.ops(sg)})),
        dtypes=tuple(sorted({f.dtype(sg.Tensors(t)) for sg in sgs for t in range(sg.TensorsLength())})),
        io_dtype=_io_dtype(f, list(roles.values()) or list(names)),
        stochastic=stochastic if isinstance(stochastic, str) else None,
        batches=batches,
        arena=arena,
    )
