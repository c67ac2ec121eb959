"""What a ``.tflite`` file declares, read from its flatbuffer without running it.

- :func:`model_ops`: the builtin ops the model uses.
- :func:`model_dtypes`: the tensor dtypes of every subgraph.
- :func:`estimate_arena_bytes`: the tensor arena one signature needs at a batch size.

The flatbuffer is read through the TFLite schema bindings that ship with LiteRT
(``ai_edge_litert.schema_py_generated``); nothing is executed. Used by the profiler, the
conversion report and the device fit check, so all three read a file the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["model_ops", "model_dtypes", "estimate_arena_bytes"]


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover
        from tflite_runtime import schema_py_generated as schema  # type: ignore[no-redef]
    return schema


_TYPE_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
               "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16, "UINT64": 8, "UINT32": 4,
               "UINT16": 2, "BFLOAT16": 2}


def model_ops(tflite: bytes) -> list[str]:
    """Sorted builtin op names used anywhere in the model (``"CUSTOM"`` for custom ops)."""
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(tflite, 0)
    used = set()
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        # Codes above 127 live in builtin_code; older files only set deprecated_builtin_code.
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        used.add(names.get(code, f"UNKNOWN_{code}"))
    return sorted(used)


def model_dtypes(tflite: bytes) -> list[str]:
    """Sorted tensor dtype names (``"float32"``, ``"int8"``, ...) found in any subgraph."""
    schema = _schema()
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(tflite, 0)
    found = set()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for t in range(sg.TensorsLength()):
            found.add(types.get(sg.Tensors(t).Type(), "unknown"))
    return sorted(found)


def estimate_arena_bytes(tflite: bytes, signature: str, batch: int = 1) -> int:
    """Estimate the tensor arena of one signature at ``batch`` rows.

    Walks the operators in order and keeps every non-constant tensor alive from the op that
    writes it (or the start, for inputs) to the last op that reads it (or the end, for outputs);
    the estimate is the peak of the live bytes. Unknown dims (``-1``) are the batch on axis 0
    and 1 elsewhere. LiteRT's planner also reuses memory by lifetime, but aligns and adds scratch
    buffers, so read this as an estimate (typically within a few tens of percent), not a bound.
    """
    schema = _schema()
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(tflite, 0)
    sub_index = None
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        if sd.SignatureKey().decode() == signature:
            sub_index = sd.SubgraphIndex()
    if sub_index is None:
        if model.SignatureDefsLength() == 0 and model.SubgraphsLength() == 1:
            sub_index = 0
        else:
            raise ValueError(f"Expected a signature of the model. Received: signature={signature!r}")
    sg = model.Subgraphs(sub_index)
    n_ops = sg.OperatorsLength()
    sizes: dict[int, int] = {}
    for t in range(sg.TensorsLength()):
        tensor = sg.Tensors(t)
        buf = model.Buffers(tensor.Buffer()) if tensor.Buffer() < model.BuffersLength() else None
        if buf is not None and (buf.DataLength() > 0 or buf.Size() > 0):
            continue  # a constant (weights): lives in the model, not the arena
        shape = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else tensor.ShapeAsNumpy()
        dims = [batch if (d < 0 and k == 0) else max(int(d), 1) for k, d in enumerate(np.atleast_1d(shape))]
        sizes[t] = int(np.prod(dims, dtype=np.int64)) * _TYPE_BYTES.get(types.get(tensor.Type(), ""), 4)
    first = {t: -1 for t in sg.InputsAsNumpy() if t in sizes}
    last = {t: n_ops for t in sg.OutputsAsNumpy() if t in sizes}
    for i in range(n_ops):
        op = sg.Operators(i)
        for t in op.OutputsAsNumpy() if op.OutputsLength() else ():
            if t in sizes:
                first.setdefault(int(t), i)
        for t in op.InputsAsNumpy() if op.InputsLength() else ():
            if t in sizes:
                last[int(t)] = max(last.get(int(t), i), i)
    # A tensor nobody writes is alive from the start; one nobody reads dies where it is written.
    spans = [(first.get(t, -1), last.get(t, first.get(t, -1)), size) for t, size in sizes.items()]
    return max((sum(size for lo, hi, size in spans if lo <= step <= hi) for step in range(-1, n_ops + 1)), default=0)
