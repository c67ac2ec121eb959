"""Read and write the ``edgekit`` metadata entry of a ``.tflite`` file, and check its digest.

Pure Python (``struct``, ``json``, ``hashlib``): no TensorFlow, no flatbuffers package. The
format is described in ``docs/format.md``; in short, ``Model.metadata`` holds an entry named
``edgekit`` whose buffer is UTF-8 JSON, and that JSON carries a SHA-256 of the whole file.

>>> from edgekit.runtime.metadata import embed_metadata, read_metadata, verify_integrity
>>> tagged = embed_metadata(tflite_bytes, {"format": "edgekit/1", "stochastic": "in-graph"})
>>> read_metadata(tagged)["stochastic"]
'in-graph'
>>> verify_integrity(tagged)            # raises IntegrityError if any byte changed

How the entry is added without touching a single existing byte
--------------------------------------------------------------
Re-serializing the model with the flatbuffers object API would move (and may re-align) every
weight buffer. Instead, :func:`embed_metadata` relies on one property of flatbuffers: every
``uoffset`` points *forward*. So a block can be inserted right after the 8-byte header (root
offset + ``"TFL3"``); everything after it simply moves by the block's size, which is a multiple of
16 so every weight buffer keeps its alignment. The block holds a new root ``Model`` table that
copies every field of the old one (offsets recomputed to the shifted old data), a new
``metadata`` vector (the old entries plus ``edgekit``) and a new ``buffers`` vector (the old
entries plus one new ``Buffer`` holding the JSON). Then the root offset is pointed at the new
table. The old root table stays in the file, unreferenced. Embedding again replaces the
``edgekit`` entry (the older JSON also stays as dead bytes, covered by the digest).

The digest
----------
``sha256`` is the SHA-256 of every byte of the file with the 64 hex digits of the ``sha256`` value
replaced by 64 ASCII ``0``. :func:`verify_integrity` recomputes it; a one-byte change anywhere
(weights, graph, metadata, or the dead bytes) raises :class:`IntegrityError`.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from typing import Any

from edgekit.errors import EdgekitError

__all__ = [
    "METADATA_NAME",
    "FORMAT",
    "IntegrityError",
    "MetadataError",
    "embed_metadata",
    "read_metadata",
    "verify_integrity",
    "content_digest",
    "twin_mask_inputs",
    "masked_twin",
]

METADATA_NAME = "edgekit"
FORMAT = "edgekit/1"

_IDENT = b"TFL3"
_ZERO_DIGEST = "0" * 64
_HEX64 = re.compile(rb"^[0-9a-f]{64}$")

# tflite schema: Model field ids. Field 0 (version) is a uint32 scalar; every other known field is
# a uoffset to a vector or string. A field id above the last known one means a newer schema whose
# field types we cannot know, so we refuse rather than guess.
_MODEL_VERSION, _MODEL_BUFFERS, _MODEL_METADATA = 0, 4, 6
_MODEL_LAST_KNOWN_FIELD = 9
# Buffer fields: 0 data [ubyte] (force_align 16), 1 offset uint64, 2 size uint64.
# Metadata fields: 0 name string, 1 buffer uint32.


class MetadataError(EdgekitError, ValueError):
    """The bytes are not a ``.tflite`` flatbuffer edgekit can read, or the metadata is malformed."""


class IntegrityError(EdgekitError, ValueError):
    """The file differs from what was exported (digest mismatch) or its metadata is damaged."""


# --------------------------------------------------------------------------------------------
# Bounds-checked flatbuffer reading. A damaged file must give a clean MetadataError, never an
# IndexError or struct.error from deep inside.


class _Reader:
    def __init__(self, data: bytes):
        self.buf = data
        self.n = len(data)

    def _need(self, pos: int, size: int) -> None:
        if pos < 0 or pos + size > self.n:
            raise MetadataError(
                f"Malformed .tflite flatbuffer: a field points outside the file. Expected an offset in "
                f"[0, {self.n - size}]. Received: {pos}"
            )

    def u8(self, pos: int) -> int:
        self._need(pos, 1)
        return self.buf[pos]

    def u16(self, pos: int) -> int:
        self._need(pos, 2)
        return struct.unpack_from("<H", self.buf, pos)[0]

    def u32(self, pos: int) -> int:
        self._need(pos, 4)
        return struct.unpack_from("<I", self.buf, pos)[0]

    def i32(self, pos: int) -> int:
        self._need(pos, 4)
        return struct.unpack_from("<i", self.buf, pos)[0]

    def u64(self, pos: int) -> int:
        self._need(pos, 8)
        return struct.unpack_from("<Q", self.buf, pos)[0]

    def deref(self, pos: int) -> int:
        """Target of the uoffset stored at ``pos``."""
        return pos + self.u32(pos)

    def vtable(self, table: int) -> list[int]:
        """Field offsets (relative to ``table``; 0 = absent) of the table at ``table``."""
        vt = table - self.i32(table)
        size = self.u16(vt)
        if size < 4 or size % 2:
            raise MetadataError(f"Malformed .tflite flatbuffer: bad vtable size. Received: {size}")
        self._need(vt, size)
        return [self.u16(vt + 4 + 2 * i) for i in range((size - 4) // 2)]

    def field_pos(self, table: int, field: int) -> int | None:
        offsets = self.vtable(table)
        if field >= len(offsets) or offsets[field] == 0:
            return None
        return table + offsets[field]

    def vector(self, pos: int) -> tuple[int, int]:
        """(start of elements, length) of the vector at ``pos``."""
        length = self.u32(pos)
        self._need(pos + 4, length)  # at least one byte per element
        return pos + 4, length

    def table_vector(self, pos: int, elem_size: int = 4) -> list[int]:
        start, length = self.vector(pos)
        self._need(start, length * elem_size)
        return [self.deref(start + 4 * i) for i in range(length)]

    def string(self, pos: int) -> bytes:
        start, length = self.vector(pos)
        return bytes(self.buf[start : start + length])


def _root(r: _Reader) -> int:
    if r.n < 8 or bytes(r.buf[4:8]) != _IDENT:
        got = bytes(r.buf[4:8]) if r.n >= 8 else b""
        raise MetadataError(
            f"Not a .tflite flatbuffer. Expected the file identifier {_IDENT!r} at bytes 4-8. Received: {got!r}"
        )
    return r.deref(0)


def _entries(r: _Reader, root: int) -> list[tuple[int, bytes, int]]:
    """(Metadata table position, name, buffer index) for every entry of Model.metadata."""
    pos = r.field_pos(root, _MODEL_METADATA)
    if pos is None:
        return []
    out = []
    for table in r.table_vector(r.deref(pos)):
        name_pos = r.field_pos(table, 0)
        name = r.string(r.deref(name_pos)) if name_pos is not None else b""
        buf_pos = r.field_pos(table, 1)
        out.append((table, name, r.u32(buf_pos) if buf_pos is not None else 0))
    return out


def _buffer_tables(r: _Reader, root: int) -> list[int]:
    pos = r.field_pos(root, _MODEL_BUFFERS)
    return [] if pos is None else r.table_vector(r.deref(pos))


def _buffer_data(r: _Reader, buffer_table: int) -> tuple[int, int]:
    """(absolute start, length) of a Buffer's bytes, inline or via offset/size."""
    data_pos = r.field_pos(buffer_table, 0)
    if data_pos is not None:
        start, length = r.vector(r.deref(data_pos))
        return start, length
    off_pos, size_pos = r.field_pos(buffer_table, 1), r.field_pos(buffer_table, 2)
    if off_pos is not None and size_pos is not None:
        start, length = r.u64(off_pos), r.u64(size_pos)
        r._need(start, length)
        return start, length
    return 0, 0


def _find_entry(data: bytes) -> tuple[dict, int, int] | None:
    """(parsed JSON, absolute start, length of the JSON bytes) of the edgekit entry, or None.

    An entry counts as edgekit's if it is named ``edgekit`` *or* its JSON says
    ``"format": "edgekit/..."``, so a damaged name is caught as damage rather than read as a
    foreign file.
    """
    r = _Reader(data)
    root = _root(r)
    entries = _entries(r, root)
    if not entries:
        return None
    buffers = _buffer_tables(r, root)
    found = None
    for _table, name, index in entries:
        named = name == METADATA_NAME.encode()
        if index >= len(buffers):
            if named:
                raise MetadataError(
                    f"Malformed edgekit metadata: the entry points at buffer {index}. Expected an index "
                    f"below {len(buffers)}. Received: {index}"
                )
            continue
        start, length = _buffer_data(r, buffers[index])
        raw = bytes(data[start : start + length])
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
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


def _pad_to(buf: bytearray, align: int, base: int = 0) -> None:
    while (base + len(buf)) % align:
        buf.append(0)


def embed_metadata(tflite: bytes, meta: dict[str, Any]) -> bytes:
    """Return a copy of ``tflite`` whose ``edgekit`` metadata entry is ``meta`` (plus a digest).

    Adds the entry, or replaces an existing one. Every existing byte is kept (shifted by a
    16-byte-aligned block after the header), so weights and alignment are untouched. ``meta``
    must be JSON-serializable; ``"format"`` defaults to ``"edgekit/1"`` and ``"sha256"`` is
    always (re)computed.

    Raises:
        MetadataError: not a ``.tflite`` flatbuffer, a schema field edgekit does not know, or a
            model that stores its weights outside the flatbuffer (> 2 GB).
        TypeError: ``meta`` is not a dict or not JSON-serializable.
    """
    if not isinstance(meta, dict):
        raise TypeError(f"Expected `meta` to be a dict. Received: {type(meta).__name__}")
    data = bytes(tflite)
    r = _Reader(data)
    root = _root(r)
    model_fields = r.vtable(root)
    for field, off in enumerate(model_fields):
        if off and field > _MODEL_LAST_KNOWN_FIELD:
            raise MetadataError(
                f"The .tflite Model table has field {field}, newer than the schema edgekit knows. Expected "
                f"fields 0-{_MODEL_LAST_KNOWN_FIELD}. Received: field {field}"
            )
    buffers = _buffer_tables(r, root)
    for b in buffers:
        off_pos = r.field_pos(b, 1)
        if off_pos is not None and r.u64(off_pos) > 1:
            raise MetadataError(
                "The model keeps its weights after the flatbuffer (a > 2 GB model); edgekit cannot add "
                "metadata to it. Expected inline buffers. Received: a buffer with an offset"
            )
    entries = _entries(r, root)

    body = {k: v for k, v in meta.items() if k != "sha256"}
    body.setdefault("format", FORMAT)
    body["sha256"] = _ZERO_DIGEST  # last key, zeroed while hashing
    try:
        json_bytes = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except ValueError as e:  # NaN/Inf
        raise TypeError(f"Expected `meta` to be JSON-serializable without NaN/Inf. Received: {e}") from None

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
            blk.extend(struct.pack("<I", r.u32(r.field_pos(root, f))))
        elif f == _MODEL_METADATA:
            refs["metadata"] = put_ref_new()
        elif f == _MODEL_BUFFERS:
            refs["buffers"] = put_ref_new()
        else:
            put_ref_old(r.deref(r.field_pos(root, f)))

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
