"""``edgekit.runtime.inspect``: the one reader of a file's static facts, on the committed fixtures.

Base install only (numpy + LiteRT's schema bindings): no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.devices import ModelFacts, check_model, load_profile
from edgekit.errors import InvalidArgumentError
from edgekit.runtime.inspect import (
    arena_steps,
    dynamic_shape_ops,
    estimate_arena_bytes,
    model_dtypes,
    model_facts,
    model_ops,
    op_counts,
    operators,
    random_uniform_shapes,
    signature_batches,
    signatures,
)

FIX = Path(__file__).resolve().parent / "fixtures"


def _read(name: str) -> bytes:
    return (FIX / name).read_bytes()


def test_ops_and_dtypes_per_signature():
    data = _read("mlp_twin.tflite")
    assert model_ops(data, "masked") == ["FULLY_CONNECTED", "MUL", "SOFTMAX"]  # keep-masks fed: no random op
    assert "RANDOM_UNIFORM" in model_ops(data, "head") and "RANDOM_UNIFORM" not in model_ops(data, "trunk")
    assert set(model_ops(data)) == {op for ops in op_counts(data).values() for op in ops}
    assert model_dtypes(data, "masked") == ["float32"]
    assert signatures(data)["masked"] == {"inputs": ["features", "mask_0"], "outputs": ["probs"]}
    # Each operator with the dtypes it reads and writes (what the report's float islands come from).
    assert operators(_read("mlp_mask.tflite"), "head")[0] == ("MUL", ("float32", "float32"), ("float32",))
    with pytest.raises(InvalidArgumentError, match="Expected a signature of the model. Received: signature='nope'"):
        model_ops(data, "nope")


def test_dynamic_shape_ops_find_the_flatten_of_a_dynamic_batch():
    # book_twin.tflite was written by a converter that left Keras' Flatten as it traces:
    # RESHAPE(x, PACK(STRIDED_SLICE(SHAPE(x)), 784)), a shape computed at run time. Its RANDOM_UNIFORM
    # ops take the run-time batch too. The masked twin has keep-masks as inputs: nothing dynamic.
    data = _read("book_twin.tflite")
    assert dynamic_shape_ops(data, "trunk") == ["RESHAPE"]
    assert dynamic_shape_ops(data, "head") == ["RANDOM_UNIFORM", "RANDOM_UNIFORM"]
    assert dynamic_shape_ops(data, "masked") == []
    assert dynamic_shape_ops(_read("mlp_mask.tflite")) == []


def test_random_uniform_shapes_are_the_masks_a_file_draws_itself():
    # One RANDOM_UNIFORM per MC layer, of the layer's mask shape with the batch left dynamic, in the
    # signatures that sample (trunk: none); the twin `masked` and a mask-input file take theirs as inputs.
    assert random_uniform_shapes(_read("mlp_twin.tflite")) == {"full": [[-1, 64]], "head": [[-1, 64]], "masked": [],
                                                        "trunk": []}
    assert random_uniform_shapes(_read("mlp_mask.tflite")) == {"full": [], "head": [], "trunk": []}
    assert random_uniform_shapes(_read("book_ingraph.tflite"))["head"] == [[-1, 32], [-1, 784]]


def test_arena_steps_give_the_estimate_at_any_batch():
    data = _read("book_twin.tflite")
    steps = arena_steps(data, "trunk")
    for batch in (1, 7, 100):
        assert estimate_arena_bytes(data, "trunk", batch) == max(p * batch + c for p, c in steps)
    # mlp_mask head: features, mask_0 and MUL's output ([b, 64] float32 each) live together: 768 bytes a row.
    assert arena_steps(_read("mlp_mask.tflite"), "head") == ((768, 0),)


def test_model_facts_of_a_mask_input_file():
    facts = model_facts(_read("mlp_int8mask.tflite"))
    assert facts == ModelFacts(
        size_bytes=(FIX / "mlp_int8mask.tflite").stat().st_size,
        ops=("FULLY_CONNECTED", "MUL", "SOFTMAX"),
        dtypes=("int8",),
        io_dtype="int8",
        stochastic="mask-input",
        batches={"full": None, "trunk": None, "head": None},
        arena={"full": ((192, 0),), "trunk": ((84, 0),), "head": ((192, 0),)},
    )
    # What the Edge TPU check makes of it: everything fits but the dynamic batch.
    assert check_model(load_profile("coral-edgetpu"), facts) == [
        ("coral-edgetpu runs static shapes only; the model's full, trunk, head signatures have a dynamic batch "
        "(convert for coral-edgetpu: trunk at batch 1, the others at batch 16)")]


def test_model_facts_without_metadata_take_roles_from_signature_names():
    facts = model_facts(_read("foreign.tflite"))
    assert facts.stochastic is None and facts.io_dtype == "float32"
    assert set(facts.batches) == {"full", "trunk", "head"}
    assert signature_batches(_read("foreign.tflite")) == {"full": None, "head": None, "trunk": None}
