"""Read and write the ``edgekit`` metadata entry of a ``.tflite`` file, and check its digest.

No TensorFlow. The format is described in ``docs/format.md``; in short, ``Model.metadata`` holds an
entry named ``edgekit`` whose buffer is UTF-8 JSON, and that JSON carries a SHA-256 of the whole file.

>>> from edgekit.runtime.metadata import embed_metadata, read_metadata, verify_integrity
>>> tagged = embed_metadata(tflite_bytes, {"format": "edgekit/2", "stochastic": "in-graph"})
>>> read_metadata(tagged)["stochastic"]
'in-graph'
>>> verify_integrity(tagged)            # raises IntegrityError if any byte changed

Reading a damaged file
----------------------
The flatbuffer is read through the TFLite schema bindings that ship with LiteRT
(``ai_edge_litert.schema_py_generated``, on the ``flatbuffers`` package), as ``runtime/inspect.py``
does. Those generated readers trust the file: they do not check that an offset stays inside it, so
a damaged file makes them raise ``struct.error``, ``TypeError`` (a negative offset) or
``ValueError`` from deep inside, or return a vector length of billions. Every read here therefore
runs under :func:`_reading`, which turns those into :class:`MetadataError`, and every vector length
is checked against the file size before a loop walks it. The schema module is imported on the
first read, not with ``edgekit.runtime``.

How the entry is added without touching a single existing byte
--------------------------------------------------------------
Re-serializing the model with the flatbuffers object API would move (and may re-align) every
weight buffer. So :func:`embed_metadata` writes its bytes by hand, relying on one property of
flatbuffers: every ``uoffset`` points *forward*. A block is inserted right after the 8-byte header
(root offset + ``"TFL3"``); everything after it simply moves by the block's size, which is a
multiple of 16 so every weight buffer keeps its alignment. The block holds a new root ``Model``
table that copies every field of the old one (offsets recomputed to the shifted old data), a new
``metadata`` vector (the old entries plus ``edgekit``) and a new ``buffers`` vector (the old
entries plus one new ``Buffer`` holding the JSON). Then the root offset is pointed at the new
table. The old root table stays in the file, unreferenced. Embedding again replaces the
``edgekit`` entry (the older JSON also stays as dead bytes, covered by the digest). Where the old
tables are is read through the bindings; only the new block is written by hand.

The digest
----------
``sha256`` is the SHA-256 of every byte of the file with the 64 hex digits of the ``sha256`` value
replaced by 64 ASCII ``0``. :func:`verify_integrity` recomputes it; a one-byte change anywhere
(weights, graph, metadata, or the dead bytes) raises :class:`IntegrityError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from edgekit.errors import EdgekitError, InvalidTypeError

__all__ = [
    "FORMAT",
    "METADATA_NAME",
    "IntegrityError",
    "MetadataError",
    "content_digest",
    "embed_metadata",
    "masked_twin",
    "read_metadata",
    "twin_mask_inputs",
    "verify_integrity",
]

METADATA_NAME = "edgekit"
FORMAT = "edgekit/2"

_IDENT = b"TFL3"
_ZERO_DIGEST = "0" * 64
_HEX64 = re.compile(rb"^[0-9a-f]{64}$")

# tflite schema: Model field ids. Field 0 (version) is a uint32 scalar; every other known field is
# a uoffset to a vector or string. A field id above the last known one means a newer schema whose
# field types we cannot know, so embed_metadata refuses rather than guess.
_MODEL_VERSION, _MODEL_BUFFERS, _MODEL_METADATA = 0, 4, 6
_MODEL_LAST_KNOWN_FIELD = 9
_BUFFER_DATA_SLOT = 4  # vtable slot of Buffer.data (field 0): the bindings give its bytes, not where they are


class MetadataError(EdgekitError, ValueError):
    """The bytes are not a ``.tflite`` flatbuffer edgekit can read, or the metadata is malformed."""


class IntegrityError(EdgekitError, ValueError):
    """The file differs from what was exported (digest mismatch) or its metadata is damaged."""


# --------------------------------------------------------------------------------------------
# Guarded reading through the schema bindings.


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - a tflite_runtime install
        from tflite_runtime import schema_py_generated as schema  # type: ignore[no-redef]
    return schema


@contextlib.contextmanager
def _reading():
    """Turn what the unchecked generated readers raise on a damaged file into :class:`MetadataError`."""
    try:
        yield
    except MetadataError:
        raise
    except (struct.error, TypeError, ValueError, IndexError, OverflowError) as e:
        raise MetadataError(
            "Malformed .tflite flatbuffer: a field points outside the file. Expected a well-formed TFLite "
            f"flatbuffer. Received: {type(e).__name__} ({str(e).strip().splitlines()[0] if str(e).strip() else '-'})"
        ) from None


def _model(data: bytes):
    """The root ``Model`` of ``data`` (call under :func:`_reading`)."""
    if len(data) < 8 or bytes(data[4:8]) != _IDENT:
        got = bytes(data[4:8]) if len(data) >= 8 else b""
        raise MetadataError(
            f"Not a .tflite flatbuffer. Expected the file identifier {_IDENT!r} at bytes 4-8. Received: {got!r}"
        )
    return _schema().Model.GetRootAs(data, 0)


def _count(n: int, data: bytes, what: str) -> int:
    """``n`` if a vector of ``n`` offsets (4 bytes each) fits in ``data``; a damaged length otherwise."""
    if not 0 <= n <= len(data) // 4:
        raise MetadataError(
            f"Malformed .tflite flatbuffer: the {what} vector claims {n} entries. Expected at most "
            f"{len(data) // 4} in a file of {len(data)} bytes. Received: {n}"
        )
    return n


def _buffer_span(buffer, data: bytes) -> tuple[int, int]:
    """(absolute start, length) of a ``Buffer``'s bytes, inline or via offset/size."""
    if not buffer.DataIsNone():
        tab = buffer._tab  # flatbuffers' Table under every generated class: where the vector starts
        start, length = tab.Vector(tab.Offset(_BUFFER_DATA_SLOT)), buffer.DataLength()
    else:
        start, length = buffer.Offset(), buffer.Size()
    if start < 0 or length < 0 or start + length > len(data):
        raise MetadataError(
            f"Malformed .tflite flatbuffer: a buffer lies outside the file. Expected bytes within [0, {len(data)}]. "
            f"Received: [{start}, {start + length}]"
        )
    return start, length


def _find_entry(data: bytes) -> tuple[dict, int, int] | None:
    """(parsed JSON, absolute start, length of the JSON bytes) of the edgekit entry, or None.

    An entry counts as edgekit's if it is named ``edgekit`` *or* its JSON says
    ``"format": "edgekit/..."``, so a damaged name is caught as damage rather than read as a
    foreign file.
    """
    with _reading():
        model = _model(data)
        n_entries = _count(model.MetadataLength(), data, "metadata")
        if not n_entries:
            return None
        n_buffers = _count(model.BuffersLength(), data, "buffers")
        found = None
        for i in range(n_entries):
            entry = model.Metadata(i)
            named = (entry.Name() or b"") == METADATA_NAME.encode()
            index = entry.Buffer()
            if index >= n_buffers:
                if named:
                    raise MetadataError(
                        f"Malformed edgekit metadata: the entry points at buffer {index}. Expected an index "
                        f"below {n_buffers}. Received: {index}"
                    )
                continue
            start, length = _buffer_span(model.Buffers(index), data)
            raw = bytes(data[start : start + length])
            try:
                meta = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                if named:
                    raise MetadataError("Malformed edgekit metadata: the entry's buffer is not UTF-8 JSON.") from None
                continue
            ours = isinstance(meta, dict) and str(meta.get("format", "")).startswith("edgekit/")
            if named or ours:
                if not isinstance(meta, dict):
                    raise MetadataError(
                        f"Malformed edgekit metadata. Expected a JSON object. Received: {type(meta).__name__}"
                    )
                if found is not None:
                    raise MetadataError("Malformed edgekit metadata: the file holds more than one edgekit entry.")
                found = (meta, start, length)
        return found


def twin_mask_inputs(mc_layers: list[dict]) -> list[tuple[str, dict]]:
    """(input name, ``mc_layers`` entry) of the keep-masks the ``masked`` signature takes:
    ``mask_i`` for the i-th MC layer, layers of rate 0 skipped (they are the identity and draw
    nothing). One rule for the converter that writes the twin and the runtimes that feed it."""
    return [(f"mask_{i}", m) for i, m in enumerate(mc_layers) if float(m.get("rate", 0)) > 0]


def masked_twin(meta: dict, signatures) -> str | None:
    """The ``masked`` signature a runtime should feed its own masks to, or None (docs/format.md):
    present in ``signatures`` and the file in-graph and unseeded (a seed promises the file's own
    mask sequence)."""
    key = (meta.get("signatures") or {}).get("masked")
    if meta.get("stochastic") != "in-graph" or meta.get("seed") is not None:
        return None
    return key if isinstance(key, str) and key in signatures else None


def read_metadata(tflite: bytes) -> dict | None:
    """The ``edgekit`` metadata of a ``.tflite`` file as a dict, or ``None`` if it has none.

    Raises:
        MetadataError: the bytes are not a readable ``.tflite`` flatbuffer, or the entry is not JSON.
    """
    found = _find_entry(bytes(tflite))
    return None if found is None else found[0]


def _digest_span(data: bytes, start: int, length: int, meta: dict) -> int:
    """Absolute position of the 64 hex digits of ``sha256`` inside the JSON at ``start``."""
    value = meta.get("sha256")
    if not isinstance(value, str) or not _HEX64.match(value.encode()):
        raise IntegrityError(
            f"The edgekit metadata has no valid integrity digest. Expected 'sha256' to be 64 lowercase hex "
            f"digits. Received: {value!r}"
        )
    raw = bytes(data[start : start + length])
    needle = b'"sha256"'
    key = raw.rfind(needle)
    hit = raw.find(value.encode(), key + len(needle)) if key >= 0 else -1
    if key < 0 or hit < 0:
        raise IntegrityError("The edgekit metadata's digest cannot be located in its JSON.")
    return start + hit


def content_digest(tflite: bytes) -> str:
    """SHA-256 hex of the file with its own digest field zeroed (what ``sha256`` must equal)."""
    found = _find_entry(tflite)
    if found is None:
        raise IntegrityError(
            "The model has no edgekit metadata, so it carries no digest. Expected an 'edgekit' metadata "
            "entry. Received: none"
        )
    meta, start, length = found
    at = _digest_span(tflite, start, length, meta)
    return _sha256_with_zeroed(tflite, at)


def _sha256_with_zeroed(data: bytes, at: int) -> str:
    h = hashlib.sha256()
    mv = memoryview(data)
    h.update(mv[:at])
    h.update(_ZERO_DIGEST.encode())
    h.update(mv[at + 64 :])
    return h.hexdigest()


def verify_integrity(tflite: bytes, *, require_metadata: bool = True) -> bool:
    """Check that the file is byte for byte what was exported.

    Returns ``True`` when the digest matches. A file without edgekit metadata (made by another
    tool) raises :class:`IntegrityError` by default; with ``require_metadata=False`` it returns
    ``False`` instead so the caller can warn and go on. A file that names itself an edgekit export
    somewhere (``"edgekit/`` appears in its bytes) but whose entry cannot be found is damaged and
    always raises.

    Raises:
        IntegrityError: digest mismatch (the message gives expected and actual digests), an
            unreadable flatbuffer or entry, or no metadata when ``require_metadata`` is true.
    """
    data = bytes(tflite)
    try:
        found = _find_entry(data)
    except MetadataError as e:
        raise IntegrityError(f"The model file is damaged: {e}") from None
    if found is None:
        if b'"edgekit/' in data:
            raise IntegrityError(
                "The model file is damaged: it was exported by edgekit but its metadata entry cannot be found."
            )
        if require_metadata:
            raise IntegrityError(
                "The model has no edgekit metadata, so its integrity cannot be verified. Expected an "
                "'edgekit' metadata entry. Received: none"
            )
        return False
    meta, start, length = found
    at = _digest_span(data, start, length, meta)
    actual = _sha256_with_zeroed(data, at)
    if actual != meta["sha256"]:
        raise IntegrityError(
            "The model file differs from what was exported (integrity digest mismatch). "
            f"Expected: sha256={meta['sha256']}. Received: sha256={actual}"
        )
    return True


# --------------------------------------------------------------------------------------------
# Writing.


@dataclass(frozen=True)
class _Layout:
    """Where the parts of the old file are, as :func:`embed_metadata` needs them (absolute positions)."""

    fields: tuple[int, ...]  # the Model table's vtable: offset of each field in the table, 0 = absent
    version: int
    targets: dict[int, int]  # field id -> what its uoffset points at (every field but version)
    entries: tuple[tuple[int, bytes, int], ...]  # Model.metadata: (Metadata table, name, buffer index)
    buffers: tuple[int, ...]  # Model.buffers: the Buffer tables
    external: bool  # a buffer stored after the flatbuffer (offset/size instead of data)


def _layout(data: bytes) -> _Layout:
    from flatbuffers import number_types as N

    with _reading():
        model = _model(data)
        tab = model._tab  # flatbuffers' Table: positions, which the generated accessors do not give
        vtable = tab.Pos - tab.Get(N.SOffsetTFlags, tab.Pos)
        size = tab.Get(N.VOffsetTFlags, vtable)
        if size < 4 or size % 2:
            raise MetadataError(
                f"Malformed .tflite flatbuffer: bad vtable size. Expected an even size >= 4. Received: {size}"
            )
        fields = tuple(tab.Offset(4 + 2 * f) for f in range((size - 4) // 2))
        targets = {f: tab.Indirect(tab.Pos + off) for f, off in enumerate(fields) if off and f != _MODEL_VERSION}
        metadata = [model.Metadata(i) for i in range(_count(model.MetadataLength(), data, "metadata"))]
        buffers = [model.Buffers(i) for i in range(_count(model.BuffersLength(), data, "buffers"))]
        return _Layout(
            fields=fields,
            version=model.Version(),
            targets=targets,
            entries=tuple((m._tab.Pos, m.Name() or b"", m.Buffer()) for m in metadata),
            buffers=tuple(b._tab.Pos for b in buffers),
            external=any(b.Offset() > 1 for b in buffers),
        )


def _pad_to(buf: bytearray, align: int, base: int = 0) -> None:
    while (base + len(buf)) % align:
        buf.append(0)


def embed_metadata(tflite: bytes, meta: dict[str, Any]) -> bytes:
    """Return a copy of ``tflite`` whose ``edgekit`` metadata entry is ``meta`` (plus a digest).

    Adds the entry, or replaces an existing one. Every existing byte is kept (shifted by a
    16-byte-aligned block after the header), so weights and alignment are untouched. ``meta``
    must be JSON-serializable; ``"format"`` defaults to ``"edgekit/2"`` and ``"sha256"`` is
    always (re)computed.

    Raises:
        MetadataError: not a ``.tflite`` flatbuffer, a schema field edgekit does not know, or a
            model that stores its weights outside the flatbuffer (> 2 GB).
        InvalidTypeError: ``meta`` is not a dict or not JSON-serializable (a ``TypeError``).
    """
    if not isinstance(meta, dict):
        raise InvalidTypeError(f"Expected `meta` to be a dict. Received: {type(meta).__name__}")
    data = bytes(tflite)
    old = _layout(data)
    for field, off in enumerate(old.fields):
        if off and field > _MODEL_LAST_KNOWN_FIELD:
            raise MetadataError(
                f"The .tflite Model table has field {field}, newer than the schema edgekit knows. Expected "
                f"fields 0-{_MODEL_LAST_KNOWN_FIELD}. Received: field {field}"
            )
    if old.external:
        raise MetadataError(
            "The model keeps its weights after the flatbuffer (a > 2 GB model); edgekit cannot add "
            "metadata to it. Expected inline buffers. Received: a buffer with an offset"
        )
    model_fields, entries, buffers = old.fields, old.entries, old.buffers

    body = {k: v for k, v in meta.items() if k != "sha256"}
    body.setdefault("format", FORMAT)
    body["sha256"] = _ZERO_DIGEST  # last key, zeroed while hashing
    try:
        json_bytes = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:  # an object JSON cannot hold, or NaN/Inf
        raise InvalidTypeError(f"Expected `meta` to be JSON-serializable without NaN/Inf. Received: {e}") from None

    existing = [i for i, (_t, name, _b) in enumerate(entries) if name == METADATA_NAME.encode()]
    if existing:
        entry_slot, buffer_index = existing[0], entries[existing[0]][2]
        if buffer_index >= len(buffers):
            raise MetadataError(f"Malformed edgekit metadata: buffer index {buffer_index} out of range.")
    else:
        entry_slot, buffer_index = len(entries), len(buffers)

    # The block is laid out at absolute file position 8. Pieces whose absolute position depends on
    # the final block size S (references into the old data) are patched after S is known.
    HEAD = 8
    blk = bytearray()
    patches: list[tuple[int, int]] = []  # (position in blk of a uoffset, absolute OLD target)

    def here() -> int:
        return HEAD + len(blk)

    def put_u32(v: int) -> None:
        blk.extend(struct.pack("<I", v))

    def put_ref_old(old_target: int) -> None:
        patches.append((len(blk), old_target))
        put_u32(0)

    new_refs: list[tuple[int, int]] = []  # (position in blk of a uoffset, position in blk of target)

    def put_ref_new() -> int:
        new_refs.append((len(blk), -1))
        put_u32(0)
        return len(new_refs) - 1

    def resolve(ref: int, target_in_blk: int) -> None:
        pos, _ = new_refs[ref]
        new_refs[ref] = (pos, target_in_blk)

    # 1. New Model table: vtable, then table (soffset + one 4-byte slot per present field).
    nfields = len(model_fields)
    present = [f for f, off in enumerate(model_fields) if off]
    for f in (_MODEL_BUFFERS, _MODEL_METADATA):
        if f not in present:
            present.append(f)
    present.sort()
    nfields = max(nfields, max(present) + 1)
    vt_pos = len(blk)
    blk.extend(struct.pack("<HH", 4 + 2 * nfields, 4 + 4 * len(present)))
    slot_of = {f: 4 + 4 * i for i, f in enumerate(present)}
    for f in range(nfields):
        blk.extend(struct.pack("<H", slot_of.get(f, 0)))
    _pad_to(blk, 4, HEAD)
    table_pos = len(blk)
    blk.extend(struct.pack("<i", table_pos - vt_pos))
    refs: dict[str, int] = {}
    for f in present:
        if f == _MODEL_VERSION:
            blk.extend(struct.pack("<I", old.version))
        elif f == _MODEL_METADATA:
            refs["metadata"] = put_ref_new()
        elif f == _MODEL_BUFFERS:
            refs["buffers"] = put_ref_new()
        else:
            put_ref_old(old.targets[f])

    # 2. metadata vector: old entries (one of them possibly replaced) + the edgekit entry.
    n_entries = max(len(entries), entry_slot + 1)
    resolve(refs["metadata"], len(blk))
    put_u32(n_entries)
    entry_ref = None
    for i in range(n_entries):
        if i == entry_slot:
            entry_ref = put_ref_new()
        else:
            put_ref_old(entries[i][0])

    # 3. buffers vector: old buffers (the old edgekit one possibly replaced) + the JSON buffer.
    n_buffers = max(len(buffers), buffer_index + 1)
    resolve(refs["buffers"], len(blk))
    put_u32(n_buffers)
    buffer_ref = None
    for i in range(n_buffers):
        if i == buffer_index:
            buffer_ref = put_ref_new()
        else:
            put_ref_old(buffers[i])

    # 4. The new Metadata table {name, buffer} and its name string.
    mvt = len(blk)
    blk.extend(struct.pack("<HHHH", 8, 12, 4, 8))
    mtable = len(blk)
    blk.extend(struct.pack("<i", mtable - mvt))
    name_ref = put_ref_new()
    put_u32(buffer_index)
    resolve(entry_ref, mtable)
    resolve(name_ref, len(blk))
    name = METADATA_NAME.encode()
    put_u32(len(name))
    blk.extend(name + b"\0")
    _pad_to(blk, 4, HEAD)

    # 5. The new Buffer table {data} and its data, 16-byte aligned like every TFLite buffer.
    bvt = len(blk)
    blk.extend(struct.pack("<HHH", 6, 8, 4))
    _pad_to(blk, 4, HEAD)
    btable = len(blk)
    blk.extend(struct.pack("<i", btable - bvt))
    data_ref = put_ref_new()
    resolve(buffer_ref, btable)
    while (HEAD + len(blk) + 4) % 16:
        blk.append(0)
    resolve(data_ref, len(blk))
    put_u32(len(json_bytes))
    json_at = len(blk)
    blk.extend(json_bytes)
    blk.append(0)  # flatbuffers' builder terminates byte vectors too; harmless and conventional
    _pad_to(blk, 16)  # the block's *size* is a multiple of 16, so shifted weights stay aligned
    size = len(blk)

    for pos, target in new_refs:
        struct.pack_into("<I", blk, pos, target - pos)
    for pos, old_target in patches:
        new_target = old_target + size  # old bytes after the header move by the block size
        struct.pack_into("<I", blk, pos, new_target - (HEAD + pos))

    out = bytearray()
    out.extend(struct.pack("<I", HEAD + table_pos))
    out.extend(_IDENT)
    out.extend(blk)
    out.extend(data[HEAD:])
    # The old root offset at byte 0 is gone; the old header's "TFL3" is at byte 4 still.
    digest_at = HEAD + json_at + json_bytes.rindex(_ZERO_DIGEST.encode())
    digest = _sha256_with_zeroed(bytes(out), digest_at)
    out[digest_at : digest_at + 64] = digest.encode()
    return bytes(out)
