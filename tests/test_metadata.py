"""edgekit.runtime.metadata on real .tflite files (committed fixtures; no TensorFlow needed)."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.runtime.metadata import (
    IntegrityError,
    MetadataError,
    content_digest,
    embed_metadata,
    read_metadata,
    verify_integrity,
)

FIXTURES = Path(__file__).parent / "fixtures"
FOREIGN = (FIXTURES / "foreign.tflite").read_bytes()  # converter output, no edgekit entry


def _interpreter(data: bytes):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=data)


def _trunk_out(data: bytes, x: np.ndarray) -> np.ndarray:
    # The trunk is deterministic (no dropout), so outputs can be compared exactly.
    return _interpreter(data).get_signature_runner("trunk")(x=x)["features"]


def test_foreign_file_has_no_metadata():
    assert read_metadata(FOREIGN) is None
    with pytest.raises(IntegrityError, match="no edgekit metadata"):
        verify_integrity(FOREIGN)
    assert verify_integrity(FOREIGN, require_metadata=False) is False


def test_embed_keeps_model_runnable_and_bytes_intact():
    meta = {"stochastic": "in-graph", "class_names": ["a", "b"], "note": "été ✓"}
    out = embed_metadata(FOREIGN, meta)
    block = len(out) - len(FOREIGN)
    assert block % 16 == 0  # weight buffers keep their 16-byte alignment
    assert out[8 + block :] == FOREIGN[8:]  # every old byte is still there, shifted by the block
    got = read_metadata(out)
    assert {k: got[k] for k in meta} == meta
    assert got["format"] == "edgekit/2"
    assert verify_integrity(out) is True
    x = np.random.default_rng(0).normal(size=(3, 20)).astype(np.float32)
    np.testing.assert_array_equal(_trunk_out(out, x), _trunk_out(FOREIGN, x))
    assert _interpreter(out).get_signature_list() == _interpreter(FOREIGN).get_signature_list()


def test_existing_converter_metadata_entries_are_kept():
    from ai_edge_litert import schema_py_generated as schema

    def names(data):
        model = schema.Model.GetRootAs(data, 0)
        return [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]

    before = names(FOREIGN)
    assert "min_runtime_version" in before  # written by the TFLite converter
    assert names(embed_metadata(FOREIGN, {"a": 1})) == before + ["edgekit"]


def test_embed_replaces_an_existing_entry():
    first = embed_metadata(FOREIGN, {"stochastic": "in-graph", "old": True})
    second = embed_metadata(first, {"stochastic": "mask-input"})
    meta = read_metadata(second)
    assert meta["stochastic"] == "mask-input" and "old" not in meta
    assert verify_integrity(second)
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(second, 0)
    entries = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    assert entries.count("edgekit") == 1
    assert model.BuffersLength() == schema.Model.GetRootAs(first, 0).BuffersLength()


def test_digest_matches_definition():
    out = embed_metadata(FOREIGN, {"x": 1})
    meta = read_metadata(out)
    hexd = meta["sha256"].encode()
    at = out.index(hexd)
    import hashlib

    zeroed = out[:at] + b"0" * 64 + out[at + 64 :]
    assert hashlib.sha256(zeroed).hexdigest() == meta["sha256"] == content_digest(out)


def test_every_tested_single_byte_flip_fails_verification():
    out = embed_metadata(FOREIGN, {"stochastic": "in-graph", "class_names": ["a", "b"]})
    block = len(out) - len(FOREIGN)
    # Every byte of the header, the inserted block (new root, vectors, JSON) and the old root
    # region, plus 300 seeded random positions in the weights: hashing all ~11k positions would
    # take seconds and prove no more.
    positions = set(range(8 + block + 64)) | set(random.Random(0).sample(range(len(out)), 300))
    for pos in sorted(positions):
        bad = bytearray(out)
        bad[pos] ^= 0x01
        with pytest.raises(IntegrityError):
            verify_integrity(bytes(bad), require_metadata=False)


def test_digest_mismatch_message_names_expected_and_actual():
    out = bytearray(embed_metadata(FOREIGN, {"a": 1}))
    out[-20] ^= 0xFF
    with pytest.raises(IntegrityError, match=r"Expected: sha256=[0-9a-f]{64}\. Received: sha256=[0-9a-f]{64}"):
        verify_integrity(bytes(out))


@pytest.mark.parametrize("junk", [b"", b"1234", b"\x00" * 64, b"1234TFL3" + b"\xff" * 40])
def test_not_a_flatbuffer_is_a_clean_error(junk):
    with pytest.raises(MetadataError):
        read_metadata(junk)
    with pytest.raises(MetadataError):
        embed_metadata(junk, {})


def test_meta_must_be_a_json_dict():
    with pytest.raises(TypeError, match="Expected `meta` to be a dict"):
        embed_metadata(FOREIGN, ["a"])
    with pytest.raises(TypeError, match="NaN"):
        embed_metadata(FOREIGN, {"x": float("nan")})


def test_truncated_file_is_an_integrity_error():
    out = embed_metadata(FOREIGN, {"a": 1})
    with pytest.raises(IntegrityError):
        verify_integrity(out[: len(out) // 2])


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=st.dictionaries(st.text(max_size=12).filter(lambda k: k != "sha256"), _json_values, max_size=6))
def test_roundtrip_property(meta):
    out = embed_metadata(FOREIGN, meta)
    got = read_metadata(out)
    expected = {**meta}
    expected.setdefault("format", "edgekit/2")
    assert {k: v for k, v in got.items() if k != "sha256"} == json.loads(json.dumps(expected))
    assert verify_integrity(out)
    assert (len(out) - len(FOREIGN)) % 16 == 0
    # A second embed over the first still round-trips and verifies.
    again = embed_metadata(out, {"k": 1})
    assert read_metadata(again)["k"] == 1 and verify_integrity(again)


def test_fixtures_are_verified_edgekit_files():
    for path in sorted(FIXTURES.glob("*.tflite")):
        data = path.read_bytes()
        if path.name in ("foreign.tflite", "crash_segv.tflite"):  # deliberately without metadata
            continue
        assert verify_integrity(data), path.name
        assert read_metadata(data)["format"] == "edgekit/1"


def test_root_offset_points_into_new_block():
    out = embed_metadata(FOREIGN, {"a": 1})
    block = len(out) - len(FOREIGN)
    (root,) = struct.unpack_from("<I", out, 0)
    assert 8 <= root < 8 + block and out[4:8] == b"TFL3"


# --- Reading damaged files through the (unchecked) schema bindings ---------------------------------


def _vector_length_position(data: bytes, vector: str) -> int:
    """Byte position of the length of Model.<vector> (metadata or buffers)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    slot = {"metadata": 16, "buffers": 12}[vector]
    tab = model._tab
    return tab.Vector(tab.Offset(slot)) - 4


@pytest.mark.parametrize("vector", ["metadata", "buffers"])
def test_a_vector_length_of_billions_is_refused_not_walked(vector):
    data = bytearray(embed_metadata(FOREIGN, {"a": 1}))
    struct.pack_into("<I", data, _vector_length_position(bytes(data), vector), 0xFFFFFFF0)
    with pytest.raises(MetadataError, match=f"the {vector} vector claims 4294967280 entries"):
        read_metadata(bytes(data))
    with pytest.raises(MetadataError):
        embed_metadata(bytes(data), {"b": 2})


def test_deeply_nested_json_is_a_metadata_error():
    # json.loads raises RecursionError on deep nesting: the entry is damaged, not a crash.
    out = bytearray(embed_metadata(FOREIGN, {"pad": "x" * 5000}))
    start = out.index(b'{"pad"')
    end = out.index(b"}", out.index(b'"sha256"')) + 1
    out[start:end] = b"[" * (end - start)
    with pytest.raises(MetadataError, match="not UTF-8 JSON"):
        read_metadata(bytes(out))


def test_every_damaged_byte_near_the_root_gives_a_clean_error():
    # The header, the root table, its vtable and the vectors sit in the first bytes; flipping each
    # of them (and 200 seeded positions elsewhere) must give a result or a MetadataError from every
    # reader, never struct.error, IndexError or TypeError from the generated bindings.
    from edgekit.runtime.safety import declared_tensors

    data = (FIXTURES / "mlp_twin.tflite").read_bytes()
    positions = sorted(set(range(640)) | set(random.Random(1).sample(range(len(data)), 200)))
    for pos in positions:
        for mask in (0x01, 0xFF):
            bad = bytearray(data)
            bad[pos] ^= mask
            for read in (read_metadata, declared_tensors, lambda d: embed_metadata(d, {"a": 1})):
                try:
                    read(bytes(bad))
                except MetadataError:
                    pass
            with pytest.raises(IntegrityError):
                verify_integrity(bytes(bad), require_metadata=False)


def test_import_does_not_load_the_schema_bindings():
    # The generated schema module is large (some 20,000 lines): a model load imports it,
    # `import edgekit.runtime` does not.
    import subprocess
    import sys

    code = "import sys, edgekit.runtime; print('ai_edge_litert.schema_py_generated' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
