"""Rewrites of the converter's flatbuffer after TFLite conversion, before the metadata goes in.

:func:`finish_flatbuffer` applies, in order:

- **Static reshapes.** Keras' Flatten and Reshape compute their target shape from the batch at
  run time (SHAPE, STRIDED_SLICE, PACK...). Where the non-batch dims are known, the RESHAPE gets
  a constant ``[-1, ...]`` shape and the shape ops nobody reads any more are removed: a fixed-shape
  target (the Edge TPU) then sees no dynamic op, and LiteRT's CompiledModel API, which makes a
  computed-shape output dynamic and drops the caller's buffer, writes the output.
- **Wider value ranges.** An int8 value (regression) output is quantized to the range calibration
  saw, and would saturate at it on inputs a little outside it: its range is widened by
  :data:`VALUE_RANGE_MARGIN` about its centre (one bit of resolution for the headroom).
- **Stripped names.** Intermediate tensor names are debugging text (a few KB); signatures refer
  to tensors by index, so nothing that runs the model reads them.

Everything goes through the TFLite schema's object API (``ai_edge_litert.schema_py_generated``)
and ``flatbuffers``: these rewrites re-serialize the file, which is fine before the metadata
(whose digest covers the final bytes) is embedded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["VALUE_RANGE_MARGIN", "finish_flatbuffer"]


# Ops that only compute shapes or values from their inputs: when nothing reads their outputs any
# more (after a static reshape), they are removed.
_PURE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK", "UNPACK", "CONCATENATION", "GATHER", "SLICE", "CAST", "SQUEEZE",
             "EXPAND_DIMS", "REDUCE_PROD", "MUL", "ADD", "SUB", "DIV", "FLOOR_DIV", "MAXIMUM", "MINIMUM", "RESHAPE")


def _signature_shape(tensor) -> list[int]:
    shape = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
    return [] if shape is None else [int(d) for d in shape]


def _is_constant(model, tensor) -> bool:
    if not 0 < tensor.buffer < len(model.buffers):
        return False
    buf = model.buffers[tensor.buffer]
    return (buf.data is not None and len(buf.data) > 0) or buf.size > 0


def _static_reshapes(model, sg, codes, schema) -> bool:
    """Give every RESHAPE of a batch-major tensor whose shape is computed at run time (Keras'
    Flatten and Reshape: ``(tf.shape(x)[0], 784)``) the constant shape ``[-1, 784]`` instead.

    Both reshape a ``[-1, *dims]`` tensor to ``[-1, *dims']`` with the same number of values per
    row, so they compute the same thing; the constant one has its output shape fixed when the
    interpreter prepares, where the computed one makes the output dynamic (LiteRT's CompiledModel
    API then never writes the caller's output buffer) and needs ``SHAPE``, which the Edge TPU does
    not have. True if any changed.
    """
    changed = False
    for op in sg.operators or []:
        if codes[op.opcodeIndex] != "RESHAPE" or op.inputs is None or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        src, shape_in, out = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]], sg.tensors[op.outputs[0]]
        if _is_constant(model, shape_in):
            continue
        before, after = _signature_shape(src), _signature_shape(out)
        if not before or not after or before[0] != -1 or after[0] != -1:
            continue
        if any(d <= 0 for d in before[1:] + after[1:]) or np.prod(before[1:]) != np.prod(after[1:]):
            continue
        new_shape = np.array([-1, *after[1:]], np.int32)
        buf = schema.BufferT()
        buf.data = np.frombuffer(new_shape.tobytes(), np.uint8).copy()
        model.buffers.append(buf)
        tensor = schema.TensorT()
        tensor.shape, tensor.type, tensor.buffer = [len(new_shape)], schema.TensorType.INT32, len(model.buffers) - 1
        sg.tensors.append(tensor)
        op.inputs = [int(t) for t in op.inputs]  # the unpacked vector is a read-only view of the file
        op.inputs[1] = len(sg.tensors) - 1
        if isinstance(op.builtinOptions, schema.ReshapeOptionsT):
            op.builtinOptions.newShape = new_shape.tolist()
        changed = True
    return changed


def _drop_dead_ops(sg, codes) -> None:
    while True:
        read = {int(t) for t in (sg.outputs if sg.outputs is not None else [])}
        for op in sg.operators or []:
            read |= {int(t) for t in (op.inputs if op.inputs is not None else []) if t >= 0}
        keep = [op for op in sg.operators or [] if codes[op.opcodeIndex] not in _PURE_OPS
                or any(int(t) in read for t in (op.outputs if op.outputs is not None else []))]
        if len(keep) == len(sg.operators or []):
            return
        sg.operators = keep


def _drop_unused_tensors(model, index, sg) -> None:
    used = {int(t) for t in (sg.inputs if sg.inputs is not None else [])}
    used |= {int(t) for t in (sg.outputs if sg.outputs is not None else [])}
    for op in sg.operators or []:
        for vec in (op.inputs, op.outputs, op.intermediates):
            used |= {int(t) for t in (vec if vec is not None else []) if t >= 0}
    if len(used) == len(sg.tensors or []):
        return
    order = sorted(used)
    remap = {old: new for new, old in enumerate(order)}

    def moved(vec):
        return None if vec is None else [remap[int(t)] if t >= 0 else int(t) for t in vec]

    sg.tensors = [sg.tensors[i] for i in order]
    sg.inputs, sg.outputs = moved(sg.inputs), moved(sg.outputs)
    for op in sg.operators or []:
        op.inputs, op.outputs, op.intermediates = moved(op.inputs), moved(op.outputs), moved(op.intermediates)
    for sd in model.signatureDefs or []:
        if sd.subgraphIndex == index:
            for tm in (sd.inputs or []) + (sd.outputs or []):
                tm.tensorIndex = remap[int(tm.tensorIndex)]


def _drop_unused_buffers(model) -> None:
    used = {0}  # buffer 0 is the empty sentinel every tensor without data points to
    for sg in model.subgraphs or []:
        used |= {int(t.buffer) for t in sg.tensors or []}
    used |= {int(m.buffer) for m in model.metadata or []}
    used |= {int(b) for b in (model.metadataBuffer if model.metadataBuffer is not None else [])}
    if len(used) == len(model.buffers or []):
        return
    order = sorted(used)
    remap = {old: new for new, old in enumerate(order)}
    model.buffers = [model.buffers[i] for i in order]
    for sg in model.subgraphs or []:
        for t in sg.tensors or []:
            t.buffer = remap[int(t.buffer)]
    for m in model.metadata or []:
        m.buffer = remap[int(m.buffer)]
    if model.metadataBuffer is not None:
        model.metadataBuffer = [remap[int(b)] for b in model.metadataBuffer]


def _drop_unused_opcodes(model) -> None:
    used = sorted({int(op.opcodeIndex) for sg in model.subgraphs or [] for op in sg.operators or []})
    if len(used) == len(model.operatorCodes or []):
        return
    remap = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            op.opcodeIndex = remap[int(op.opcodeIndex)]


VALUE_RANGE_MARGIN = 2.0
"""How much wider than calibrated the quantized range of a value output is (:func:`_widen_value_ranges`)."""

# Ops whose int8 kernels rescale to any output scale, and ops that pass values through with their
# input's scale (a value output's range may be widened only back to the first of the former).
_REQUANTIZING = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "TRANSPOSE_CONV", "ADD", "SUB", "MUL")
_PASS_THROUGH = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")


def _widen_value_ranges(model, codes, schema, names: Sequence[str], factor: float = VALUE_RANGE_MARGIN) -> bool:
    """Widen the quantized range of each value output (``names``) ``factor`` times about its centre.

    A quantized tensor saturates at the ends of the range calibration saw. Class probabilities
    live in [0, 1] whatever the input, but a value output's calibrated range is that of one
    stochastic pass per calibration input, and the MC samples of other inputs go beyond it: a
    regressor trained on standardized targets, calibrated on 200 inputs, clipped test predictions
    at 1.7 where Keras gave 3.7 (its int8 MC mean 0.6 away, 23 standard errors). Twice the range
    costs one bit of the output's resolution (a step of 1/128 of the calibrated span), far under
    the noise of any regression target. The rescale is exact: the producing op (a Dense or a
    convolution) computes its output multiplier from the scales when the interpreter prepares.
    True if any changed.
    """
    changed = False
    wanted = set(names)
    for sd in model.signatureDefs or []:
        sg = model.subgraphs[sd.subgraphIndex]
        producer, consumers = {}, {}
        for op in sg.operators or []:
            for t in op.outputs if op.outputs is not None else []:
                producer[int(t)] = op
            for t in op.inputs if op.inputs is not None else []:
                consumers.setdefault(int(t), []).append(op)
        for tm in sd.outputs or []:
            name = tm.name.decode() if isinstance(tm.name, bytes) else tm.name
            if name not in wanted:
                continue
            t = int(tm.tensorIndex)
            op = producer.get(t)
            if op is not None and codes[op.opcodeIndex] == "DEQUANTIZE":  # float output of a quantized graph
                t = int(op.inputs[0])
                op = producer.get(t)
            chain = [t]
            while op is not None and codes[op.opcodeIndex] in _PASS_THROUGH:
                t = int(op.inputs[0])
                chain.append(t)
                op = producer.get(t)
            if op is None or codes[op.opcodeIndex] not in _REQUANTIZING:
                continue
            tensors = [sg.tensors[i] for i in chain]
            q = tensors[0].quantization
            kinds = {schema.TensorType.INT8: (-128, 127), schema.TensorType.INT16: (-32768, 32767)}
            if (tensors[0].type not in kinds or q is None or q.scale is None or len(q.scale) != 1
                    or any(c is not op and codes[c.opcodeIndex] not in ("DEQUANTIZE", *_PASS_THROUGH)
                           for i in chain for c in consumers.get(i, []))):
                continue
            lo_q, hi_q = kinds[tensors[0].type]
            scale, zero = float(q.scale[0]), int(q.zeroPoint[0]) if q.zeroPoint is not None else 0
            low, high = scale * (lo_q - zero), scale * (hi_q - zero)
            centre, half = 0.5 * (low + high), 0.5 * factor * (high - low)
            low, high = min(centre - half, 0.0), max(centre + half, 0.0)  # zero stays representable
            if tensors[0].type == schema.TensorType.INT16:  # 16-bit activations are symmetric
                new_scale, new_zero = max(-low, high) / hi_q, 0
            else:
                new_scale = (high - low) / (hi_q - lo_q)
                new_zero = int(min(hi_q, max(lo_q, round(lo_q - low / new_scale))))
            for tensor in tensors:
                tensor.quantization.scale = [new_scale]
                tensor.quantization.zeroPoint = [new_zero]
            changed = True
    return changed


def finish_flatbuffer(tflite: bytes, value_outputs: Sequence[str] = ()) -> bytes:
    """The converter's file with static reshapes (:func:`_static_reshapes`, then the shape ops
    nobody reads any more removed), the quantized ranges of ``value_outputs`` widened
    (:func:`_widen_value_ranges`) and the names of intermediate tensors stripped.

    Tensor names are debugging text ("head_1/dense_0_1/MatMul;head_1/dense_0_1/BiasAdd2", ...), a
    few KB of a small int8 file. TF's own ``flatbuffer_utils.strip_strings`` does the same;
    signatures refer to tensors by index, so nothing that runs the model reads these names.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [op_names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "") for oc in model.operatorCodes or []]
    changed = [_static_reshapes(model, sg, codes, schema) for sg in model.subgraphs or []]
    if value_outputs:
        _widen_value_ranges(model, codes, schema, value_outputs)
    if any(changed):
        for index, sg in enumerate(model.subgraphs or []):
            _drop_dead_ops(sg, codes)
            _drop_unused_tensors(model, index, sg)
        _drop_unused_buffers(model)
        _drop_unused_opcodes(model)
    for subgraph in model.subgraphs or []:
        keep = {int(i) for i in (subgraph.inputs if subgraph.inputs is not None else [])}
        keep |= {int(i) for i in (subgraph.outputs if subgraph.outputs is not None else [])}
        for i, tensor in enumerate(subgraph.tensors or []):
            if i not in keep:
                tensor.name = None
    builder = flatbuffers.Builder(len(tflite) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
