"""Corrupted ``.tflite`` files made from edgekit's own exports, for the robustness suite.

:func:`make_corpus` turns a few good model files into hundreds of damaged ones, each a :class:`Case`
that says how it was made and what a loader must do with it:

- ``truncate``: the file cut at many offsets (0 bytes up to one byte short);
- ``flip-header``, ``flip-opcode``, ``flip-shape``, ``flip-weights``, ``flip-metadata``: one byte
  changed inside a region located with LiteRT's own schema (``ai_edge_litert.schema_py_generated``):
  the 8-byte header and root table, each ``OperatorCode``'s builtin code, each tensor's shape
  vector, each weight buffer, and the edgekit metadata JSON;
- ``huge-tensor``: a tensor's shape rewritten to declare billions of elements;
- ``bad-index``: an element of a small int32 constant (a reshape target, a slice index, an axis)
  set to a huge or negative value; one such byte flip segfaults the stock interpreter in
  ``invoke()`` (after ``allocate_tensors()`` succeeded), so the probe must invoke, not only allocate;
- ``random``, ``random-tfl3``: random bytes, without and with a valid-looking header;
- ``not-a-file``: empty file, text file, directory, ``/dev/null``, a path that does not exist;
- ``resigned-*``: a damaged edgekit file whose digest was recomputed, as an attacker (or a buggy tool)
  could; the digest cannot catch it, so it tests the next lines of defence (the child-process probe
  and the memory budget). ``foreign-*``: damaged copies of a file without edgekit metadata.

``Case.expect`` is the contract: ``"integrity"`` (an edgekit export with a changed byte: the runtime
must refuse it, with :class:`~edgekit.runtime.metadata.IntegrityError` when the metadata is still
readable), ``"error"`` (must fail cleanly) or ``"no-crash"`` (may run or fail cleanly, but must not
take the process down or hang). Nothing here needs TensorFlow: the corpus is built from the
committed fixtures in ``tests/fixtures``.
"""

from __future__ import annotations

import json
import os
import random
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from ai_edge_litert import schema_py_generated as schema

from edgekit.runtime.metadata import content_digest, read_metadata

__all__ = ["Case", "Regions", "find_regions", "make_corpus", "materialize", "resign"]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# Sources: edgekit exports (carry a digest) and one file another tool wrote (no metadata).
EDGEKIT_SOURCES = ("mlp_ingraph.tflite", "mlp_mask.tflite", "cnn_ingraph.tflite")
FOREIGN_SOURCE = "foreign.tflite"


@dataclass(frozen=True)
class Case:
    """One corrupted input. ``data`` is None for the special paths (directory, /dev/null, missing)."""

    name: str
    kind: str
    source: str
    expect: str  # "integrity" | "error" | "no-crash"
    data: bytes | None = field(default=None, repr=False)
    special: str | None = None  # "directory" | "devnull" | "missing"
    offset: int | None = None  # the byte changed or the truncation point, for reproducers
    suffix: str = ".tflite"


@dataclass(frozen=True)
class Regions:
    """Byte positions of the interesting parts of a ``.tflite`` file."""

    header: tuple[int, ...]
    opcodes: tuple[int, ...]
    shapes: tuple[int, ...]  # first byte of each int32 shape element
    weights: tuple[tuple[int, int], ...]  # (start, length) of each non-empty buffer
    small_ints: tuple[int, ...]  # first byte of each element of int32 constants of <= 4 elements
    metadata: tuple[int, int] | None  # (start, length) of the edgekit JSON


def find_regions(data: bytes) -> Regions:
    """Locate header, operator codes, tensor shapes, weights and edgekit metadata in ``data``."""
    model = schema.Model.GetRootAs(data, 0)
    root = model._tab.Pos
    header = tuple(range(8)) + tuple(range(root, min(root + 8, len(data))))
    opcodes = []
    for i in range(model.OperatorCodesLength()):
        tab = model.OperatorCodes(i)._tab
        for slot, width in ((4, 1), (10, 4)):  # deprecated_builtin_code (int8), builtin_code (int32)
            off = tab.Offset(slot)
            if off:
                opcodes.extend(range(tab.Pos + off, tab.Pos + off + min(width, 2)))
    shapes = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for t in range(graph.TensorsLength()):
            tab = graph.Tensors(t)._tab
            off = tab.Offset(4)
            if off:
                start = tab.Vector(off)
                shapes.extend(start + 4 * k for k in range(tab.VectorLen(off)))
    weights = []
    small_ints = []
    int32_buffers = set()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            if tensor.Type() == schema.TensorType.INT32:
                int32_buffers.add(tensor.Buffer())
    meta_span = None
    meta = read_metadata(data)
    meta_buffer = None
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name() == b"edgekit":
            meta_buffer = model.Metadata(i).Buffer()
    for i in range(model.BuffersLength()):
        tab = model.Buffers(i)._tab
        off = tab.Offset(4)
        if off and tab.VectorLen(off):
            span = (tab.Vector(off), tab.VectorLen(off))
            if i == meta_buffer and meta is not None:
                meta_span = span
            elif i not in _metadata_buffers(model):
                weights.append(span)
                if i in int32_buffers and span[1] <= 16:
                    small_ints.extend(range(span[0], span[0] + span[1], 4))
    return Regions(tuple(header), tuple(opcodes), tuple(shapes), tuple(weights), tuple(small_ints), meta_span)


def _metadata_buffers(model) -> set[int]:
    return {model.Metadata(i).Buffer() for i in range(model.MetadataLength())}


def resign(data: bytes) -> bytes:
    """Recompute the edgekit digest of ``data`` in place (what a tampering tool would do)."""
    meta = read_metadata(data)
    old = meta["sha256"].encode()
    assert data.count(old) == 1, "the digest must occur once to be replaced unambiguously"
    new = content_digest(data).encode()
    return data.replace(old, new)


def _flip(data: bytes, pos: int, rng: random.Random) -> bytes:
    out = bytearray(data)
    out[pos] ^= rng.choice((0x01, 0x80, 0xFF, rng.randrange(1, 256)))
    return bytes(out)


def _huge(data: bytes, pos: int) -> bytes:
    """Rewrite the shape element at ``pos`` to 2**30 - 1, so the tensor declares billions of elements."""
    out = bytearray(data)
    struct.pack_into("<i", out, pos, 0x3FFF_FFFF)
    return bytes(out)


def _sample(seq, k: int, rng: random.Random) -> list:
    seq = list(seq)
    return seq if len(seq) <= k else rng.sample(seq, k)


def _damage(name: str, data: bytes, rng: random.Random, *, per_region: int, cuts: int) -> list[tuple[str, int, bytes]]:
    """(kind, offset, bytes) of truncations and one-byte flips in each region of one source."""
    regions = find_regions(data)
    out = []
    n = len(data)
    fixed = [0, 1, 3, 4, 7, 8, 16, 64, n // 2, n - 64, n - 16, n - 1]
    if regions.metadata:
        start, length = regions.metadata
        fixed += [start, start + length // 2, start + length - 1]
    random_cuts = rng.sample(range(1, n), max(0, cuts - len(fixed)))
    for cut in sorted(set(fixed + random_cuts)):
        out.append(("truncate", cut, data[:cut]))
    weight_bytes = [s + rng.randrange(length) for s, length in regions.weights for _ in range(10)]
    groups = {
        "flip-header": regions.header,
        "flip-opcode": regions.opcodes,
        "flip-shape": [p + rng.randrange(4) for p in regions.shapes],
        "flip-weights": weight_bytes,
    }
    if regions.metadata:
        start, length = regions.metadata
        groups["flip-metadata"] = range(start, start + length)
    for kind, positions in groups.items():
        for pos in _sample(positions, per_region, rng):
            out.append((kind, pos, _flip(data, pos, rng)))
    for pos in _sample(regions.shapes, 3, rng):
        out.append(("huge-tensor", pos, _huge(data, pos)))
    for pos in regions.small_ints:
        for value in (-0x00FF_FFFF, 0x7FFF_FFFF, 0x00FF_0001):
            bad = bytearray(data)
            struct.pack_into("<i", bad, pos, value)
            out.append(("bad-index", pos, bytes(bad)))
    return out


def make_corpus(seed: int = 0, *, per_region: int = 20, cuts: int = 44) -> list[Case]:
    """Build the corpus (about 600 cases with the defaults) from the committed fixtures."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for source in EDGEKIT_SOURCES:
        data = (FIXTURES / source).read_bytes()
        damaged = _damage(source, data, rng, per_region=per_region, cuts=cuts)
        for i, (kind, pos, bad) in enumerate(damaged):
            if bad == data:
                continue  # a flip that changed nothing (cannot happen with XOR, but be explicit)
            cases.append(Case(f"{source}:{kind}:{pos}:{i}", kind, source, "integrity", bad, offset=pos))
        # Re-signed: damage outside the metadata, then a valid digest. Only the probe and the
        # memory budget stand between these and the interpreter.
        resignable = [d for d in damaged if d[0] in ("flip-opcode", "flip-shape", "flip-weights", "huge-tensor")]
        resignable = _sample(resignable, 24, rng) + [d for d in damaged if d[0] == "bad-index"]
        for kind, pos, bad in resignable:
            cases.append(Case(f"{source}:resigned-{kind}:{pos}", f"resigned-{kind}", source, "no-crash", resign(bad), offset=pos))
    foreign = (FIXTURES / FOREIGN_SOURCE).read_bytes()
    for kind, pos, bad in _damage(FOREIGN_SOURCE, foreign, rng, per_region=8, cuts=20):
        if bad != foreign:
            cases.append(Case(f"{FOREIGN_SOURCE}:foreign-{kind}:{pos}", f"foreign-{kind}", FOREIGN_SOURCE, "no-crash", bad, offset=pos))
    head = (FIXTURES / EDGEKIT_SOURCES[0]).read_bytes()[:8]
    for size in (1, 7, 8, 64, 1024, 4096, 65536):
        cases.append(Case(f"random:{size}", "random", "-", "error", rng.randbytes(size)))
        cases.append(Case(f"random-tfl3:{size}", "random-tfl3", "-", "error", head + rng.randbytes(size)))
    cases += [
        Case("empty", "not-a-file", "-", "error", b""),
        Case("text", "not-a-file", "-", "error", b"this is not a model\n" * 20),
        Case("json", "not-a-file", "-", "error", json.dumps({"format": "edgekit/1"}).encode()),
        Case("directory", "not-a-file", "-", "error", special="directory"),
        Case("devnull", "not-a-file", "-", "error", special="devnull"),
        Case("missing", "not-a-file", "-", "error", special="missing"),
    ]
    # A running number makes every name unique (and a reproducer: make_corpus(seed)[number]).
    return [replace(case, name=f"{i:03d}:{case.name}") for i, case in enumerate(cases)]


def materialize(case: Case, folder: str | os.PathLike) -> str:
    """Write ``case`` under ``folder`` (or point at the special path) and return the path to load."""
    folder = Path(folder)
    if case.special == "devnull":
        return os.devnull
    if case.special == "missing":
        return str(folder / f"does-not-exist{case.suffix}")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in case.name)
    path = folder / f"{safe}{case.suffix}"
    if case.special == "directory":
        path.mkdir(exist_ok=True)
        return str(path)
    path.write_bytes(case.data)
    return str(path)
