"""Device profiles: every built-in profile loads, validation names the file and key, round-trips.

Needs only the standard library, hypothesis and pytest (no TensorFlow, no LiteRT).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.devices import (
    DTYPES,
    PROFILE_DIR,
    ConversionSettings,
    DeviceProfile,
    DeviceProfileError,
    ModelFacts,
    check_model,
    conversion_settings,
    list_profiles,
    load_profile,
)
from edgekit.errors import InvalidArgumentError
from edgekit.qtyping import QUANTIZATIONS

BUILTIN = ["android-midrange", "coral-edgetpu", "cortex-m-tflm", "host", "jetson-orin-nano-cpu", "rpi4", "rpi5"]


def _rpi4_text() -> str:
    return (PROFILE_DIR / "rpi4.toml").read_text()


def _write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_profiles_load_and_are_named_after_their_file():
    profiles = list_profiles()
    assert [p.name for p in profiles] == BUILTIN
    for p in profiles:
        assert p.sources and all(s.startswith("https://") for s in p.sources)
        assert 1 <= p.default_threads <= p.cores


def test_issue_requirements_for_special_targets():
    coral = load_profile("coral-edgetpu")
    assert (coral.stochastic, coral.int8_io, coral.default_quantization) == ("mask-input", True, "int8")
    assert not coral.supports_op("RANDOM_UNIFORM")
    assert "float32" not in coral.dtypes
    mcu = load_profile("cortex-m-tflm")
    assert (mcu.stochastic, mcu.default_quantization) == ("mask-input", "int8")
    assert mcu.flash_bytes is not None and mcu.max_model_bytes <= mcu.flash_bytes
    assert mcu.ram_bytes < 256 * 1024  # the board has 256 KB of SRAM in all
    for name in ("host", "rpi4", "rpi5", "android-midrange", "jetson-orin-nano-cpu"):
        p = load_profile(name)
        assert p.stochastic == "in-graph" and p.supports_op("RANDOM_UNIFORM")


def test_host_reads_this_machine():
    import os

    host = load_profile("host")
    assert host.cores == os.cpu_count()
    assert host.ram_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_user_profile_from_a_path(tmp_path):
    path = _write(tmp_path, _rpi4_text().replace('name = "rpi4"', 'name = "my-board"'))
    p = load_profile(path)
    assert p.name == "my-board" and p.cores == 4
    assert load_profile(str(path)) == p


def test_unknown_name_lists_the_profiles():
    with pytest.raises(DeviceProfileError, match=r"Expected one of android-midrange, .*Received: 'rpi9'"):
        load_profile("rpi9")


def test_missing_file():
    with pytest.raises(DeviceProfileError, match="not found: 'nowhere/board.toml'"):
        load_profile("nowhere/board.toml")


def test_bad_toml_names_the_file(tmp_path):
    path = _write(tmp_path, "name = \n")
    with pytest.raises(DeviceProfileError, match=f"{path}: not valid TOML"):
        load_profile(path)


def test_unknown_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, _rpi4_text() + "\ncolour = \"red\"\n")
    with pytest.raises(DeviceProfileError) as e:
        load_profile(path)
    assert str(e.value).startswith(f"{path}: unknown key `colour`. Expected keys: name, description, sources")


def test_missing_key_names_file_and_key(tmp_path):
    text = "\n".join(line for line in _rpi4_text().splitlines() if not line.startswith("stochastic"))
    path = _write(tmp_path, text)
    with pytest.raises(DeviceProfileError, match=rf"^{path}: missing key `stochastic`"):
        load_profile(path)


@pytest.mark.parametrize(
    "line, new, expected",
    [
        ('stochastic = "in-graph"', 'stochastic = "random"', r"`stochastic`. Expected one of 'in-graph', 'mask-input'. Received: 'random'"),
        ('default_quantization = "int8"', 'default_quantization = "int4"', r"`default_quantization`. Expected one of 'float32', 'float16', 'dynamic', 'int8', 'int16x8'. Received: 'int4'"),
        ("cores = 4", "cores = 0", r"`cores`. Expected an integer >= 1. Received: 0"),
        ("default_threads = 4", "default_threads = 8", r"`default_threads`. Expected at most cores=4. Received: 8"),
        ("int8_io = false", 'int8_io = "no"', r"`int8_io`. Expected true or false. Received: 'no'"),
        ('supported_ops = "all"', 'supported_ops = ["fully_connected"]', r"`supported_ops`. Expected a non-empty list of TFLite builtin op names"),
        ("default_budget_ms = 30.0", "default_budget_ms = -1", r"`default_budget_ms`. Expected a number of milliseconds > 0. Received: -1"),
        ("# default_samples = 100", "default_samples = 0", r"`default_samples`. Expected an integer >= 1. Received: 0"),
        ("# static_batch = false", 'static_batch = "yes"', r"`static_batch`. Expected true or false. Received: 'yes'"),
        ('"https://www.raspberrypi.com/products/raspberry-pi-4-model-b/specifications/",', '"raspberrypi.com",', r"`sources`. Expected a non-empty list of http\(s\) URLs. Received: 'raspberrypi.com'"),
    ],
)
def test_bad_value_names_file_key_and_allowed(tmp_path, line, new, expected):
    text = _rpi4_text()
    assert line in text
    path = _write(tmp_path, text.replace(line, new, 1))
    with pytest.raises(DeviceProfileError, match=rf"^{path}: invalid value for key {expected}"):
        load_profile(path)


def test_in_graph_needs_random_uniform(tmp_path):
    text = _rpi4_text().replace('supported_ops = "all"', 'supported_ops = ["FULLY_CONNECTED", "SOFTMAX"]')
    path = _write(tmp_path, text)
    with pytest.raises(DeviceProfileError, match="`stochastic`. Expected 'mask-input' when supported_ops lacks RANDOM_UNIFORM"):
        load_profile(path)


def test_constructor_validates_too():
    good = load_profile("rpi4").to_dict()
    with pytest.raises(DeviceProfileError, match="<DeviceProfile>: invalid value for key `cores`"):
        DeviceProfile(**{**good, "cores": -2})


# Hypothesis: any valid profile survives to_dict -> from_dict, and to_dict is TOML-shaped.
_ops = st.lists(st.sampled_from(["FULLY_CONNECTED", "SOFTMAX", "MUL", "RANDOM_UNIFORM", "ELU", "RESHAPE"]), min_size=1, unique=True)


@st.composite
def profiles(draw):
    cores = draw(st.integers(1, 64))
    quant = draw(st.sampled_from(QUANTIZATIONS))
    needs = {"float32": {"float32"}, "float16": {"float32"}, "dynamic": {"float32", "int8"}, "int8": {"int8"}, "int16x8": {"int16", "int8"}}[quant]
    extra = draw(st.lists(st.sampled_from(DTYPES), unique=True))
    dtypes = list(dict.fromkeys([*sorted(needs), *extra]))
    ops = draw(st.one_of(st.just("all"), _ops))
    stochastic = "in-graph" if ops == "all" or "RANDOM_UNIFORM" in ops else "mask-input"
    stochastic = draw(st.sampled_from([stochastic, "mask-input"]))
    flash = draw(st.one_of(st.none(), st.integers(1024, 2**40)))
    max_model = draw(st.integers(1, flash if flash is not None else 2**40))
    return DeviceProfile(
        name=draw(st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)),
        description=draw(st.text(min_size=1).filter(str.strip)),
        sources=tuple(draw(st.lists(st.from_regex(r"https://[a-z]{1,10}\.org/[a-z0-9/]{0,10}", fullmatch=True), min_size=1, max_size=3, unique=True))),
        cores=cores,
        default_threads=draw(st.integers(1, cores)),
        supported_ops=ops if ops == "all" else tuple(ops),
        dtypes=tuple(dtypes),
        stochastic=stochastic,
        int8_io=quant == "int8" and draw(st.booleans()),
        max_model_bytes=max_model,
        ram_bytes=draw(st.integers(1, 2**40)),
        flash_bytes=flash,
        default_quantization=quant,
        default_budget_ms=draw(st.floats(0.01, 1e5)),
        default_samples=draw(st.integers(1, 10_000)),
        static_batch=draw(st.booleans()),
        notes=draw(st.text()),
    )


@settings(max_examples=60, deadline=None)
@given(profiles())
def test_round_trip(profile):
    d = profile.to_dict()
    assert DeviceProfile.from_dict(d) == profile
    # Every value is a plain TOML type (no tuples, no None except the optional flash_bytes).
    assert all(isinstance(v, (str, int, float, bool, list)) or (k == "flash_bytes" and v is None) for k, v in d.items())


@settings(max_examples=25, deadline=None)
@given(profiles())
def test_round_trip_through_a_toml_file(tmp_path_factory, profile):
    d = {k: v for k, v in profile.to_dict().items() if v is not None}
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items()]
    path = tmp_path_factory.mktemp("p") / "p.toml"
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text())["name"] == profile.name
    assert load_profile(path) == profile


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, int):
        return str(v)
    # TOML basic string: escape quote, backslash and every control character (TOML rejects raw
    # U+0000-U+001F and U+007F, which JSON would leave as is).
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\' else c for c in v) + '"'


# check_model: the one fit check (convert, convert --device and profile --device call it).
def test_check_model_fits():
    facts = ModelFacts(size_bytes=300_000, ops=("FULLY_CONNECTED", "RANDOM_UNIFORM"), dtypes=("float32", "int8", "int32"),
                       io_dtype="float32", stochastic="in-graph", arena={"full": ((0, 10_000),)})
    assert check_model(load_profile("rpi5"), facts) == []


def test_check_model_refuses_anything_but_a_model_facts_value():
    with pytest.raises(InvalidArgumentError, match="Expected `facts` to be edgekit.devices.ModelFacts"):
        check_model(load_profile("rpi5"), {"ops": []})


def test_check_model_lists_every_problem_for_the_edge_tpu():
    coral = load_profile("coral-edgetpu")
    facts = ModelFacts(size_bytes=9_000_000, ops=("fully_connected", "RANDOM_UNIFORM", "ELU", "SHAPE"),
                       dtypes=("float32", "int8", "int32"), io_dtype="float32", stochastic="in-graph",
                       batches={"full": None, "trunk": None, "head": None})
    assert check_model(coral, facts) == [
        # A refused op says what the target has instead, where edgekit knows it.
        ("op ELU is not supported on coral-edgetpu: it has no ELU kernel; its activations are RELU, RELU6, "
        "RELU_N1_TO_1, PRELU, LOGISTIC, TANH"),
        "op RANDOM_UNIFORM is not supported on coral-edgetpu (in-graph dropout: convert in mask-input mode)",
        ("op SHAPE is not supported on coral-edgetpu (a shape computed at run time from a dynamic batch: convert "
        "for this device, which exports static shapes)"),
        "float32 tensors are not supported on coral-edgetpu (supported: int8, uint8)",
        "coral-edgetpu needs int8 input/output tensors; the model has float32",
        "model is 9,000,000 bytes; coral-edgetpu takes at most 8,388,608 bytes",
        ("coral-edgetpu takes its dropout masks as inputs (stochastic='mask-input'); the model draws them in the "
        "graph (stochastic='in-graph')"),
        ("coral-edgetpu runs static shapes only; the model's full, trunk, head signatures have a dynamic batch "
        "(convert for coral-edgetpu: trunk at batch 1, the others at batch 16)"),
    ]


def test_check_model_accepts_what_the_edge_tpu_runs():
    coral = load_profile("coral-edgetpu")
    facts = ModelFacts(size_bytes=40_000, ops=("FULLY_CONNECTED", "MUL", "RESHAPE", "SOFTMAX"), dtypes=("int8", "int32"),
                       io_dtype="int8", stochastic="mask-input", batches={"full": 16, "trunk": 1, "head": 16},
                       arena={"full": ((0, 25_000),), "trunk": ((0, 1_600),), "head": ((0, 1_800),)})
    assert check_model(coral, facts) == []
    # One dynamic signature is enough to be refused by a fixed-shape target.
    one = ModelFacts(**{**facts.__dict__, "batches": {"full": 16, "trunk": 1, "head": None}})
    assert check_model(coral, one) == [
        ("coral-edgetpu runs static shapes only; the model's head signature has a dynamic batch (convert for "
        "coral-edgetpu: trunk at batch 1, the others at batch 16)")]


def test_a_mask_input_model_fits_a_target_that_draws_masks_in_the_graph():
    # The runtime fills mask inputs anywhere; only a target without RANDOM_UNIFORM is picky.
    facts = ModelFacts(size_bytes=1000, ops=("FULLY_CONNECTED",), dtypes=("float32",), stochastic="mask-input")
    assert check_model(load_profile("rpi4"), facts) == []


def test_arena_is_the_trunk_or_the_sampler_at_batch_t():
    phone = load_profile("android-midrange")  # 512 MiB for model + arena, default T = 100
    # masked: 1 MiB per batch row, so 100 MiB at T=100; trunk: 300 MiB at batch 1 (run once).
    arena = {"trunk": ((0, 300 * 2**20),), "head": ((4 * 2**20, 0),), "masked": ((2**20, 0),)}
    facts = ModelFacts(size_bytes=100, arena=arena)
    assert check_model(phone, facts) == []  # the runtime runs `masked` (not `head`) at batch T
    assert check_model(phone, facts, samples=511) == []  # 511 MiB + 100 bytes of model
    assert check_model(phone, facts, samples=512) == [
        f"model + tensor arena needs {512 * 2**20 + 100:,} bytes; android-midrange has {phone.ram_bytes:,} bytes of RAM"]
    # The peak of a signature is the largest step at that batch, fixed parts included.
    steps = ModelFacts(size_bytes=1, arena={"full": ((10, 500), (40, 0))})
    assert [steps.arena_bytes("full", b) for b in (1, 16, 17, 100)] == [510, 660, 680, 4000]
    assert steps.arena_bytes("trunk", 1) is None


def test_check_model_arena_versus_ram_on_an_mcu():
    mcu = load_profile("cortex-m-tflm")
    # On the MCU the model stays in flash: only the arena counts against RAM; TFLite Micro runs the
    # T passes one by one, so the arena is the batch-1 one whatever T is.
    fits = ModelFacts(size_bytes=500_000, ops=("FULLY_CONNECTED",), dtypes=("int8",), arena={"head": ((mcu.ram_bytes, 0),)})
    assert check_model(mcu, fits, samples=300) == []
    over = ModelFacts(**{**fits.__dict__, "arena": {"head": ((mcu.ram_bytes + 1, 0),)}})
    assert check_model(mcu, over) == [
        f"tensor arena needs {mcu.ram_bytes + 1:,} bytes; cortex-m-tflm has {mcu.ram_bytes:,} bytes of RAM"
    ]


# conversion_settings: the profile's defaults under the caller's explicit choices.
def test_conversion_settings_without_a_device():
    assert conversion_settings() == ConversionSettings("float32", "in-graph", False, None)
    assert conversion_settings(quantize="int8", int8_io=True, batch=4) == ConversionSettings("int8", "in-graph", True, 4)


def test_conversion_settings_apply_the_profile_defaults():
    coral = load_profile("coral-edgetpu")
    assert conversion_settings(coral) == ConversionSettings("int8", "mask-input", True, coral.default_samples)
    assert conversion_settings(load_profile("rpi4")) == ConversionSettings("int8", "in-graph", False, None)
    assert conversion_settings(load_profile("host")) == ConversionSettings("float32", "in-graph", False, None)


def test_explicit_choices_override_the_profile():
    coral = load_profile("coral-edgetpu")
    # int8 I/O is the profile's only with int8; an explicit value always wins.
    assert conversion_settings(coral, quantize="float32") == ConversionSettings("float32", "mask-input", False, 16)
    assert conversion_settings(coral, int8_io=False, batch=4, stochastic="in-graph") == ConversionSettings(
        "int8", "in-graph", False, 4)


@pytest.mark.parametrize("kwargs, message", [
    ({"quantize": "int4"}, ("argument `quantize`. Expected one of 'float32', 'float16', 'dynamic', 'int8', 'int16x8'. "
                           "Received: quantize='int4'")),
    ({"stochastic": "sometimes"}, "argument `stochastic`. Expected one of 'in-graph', 'mask-input'"),
    ({"batch": 0}, "argument `batch`. Expected a positive int or None. Received: batch=0"),
    ({"batch": True}, "Received: batch=True"),
])
def test_conversion_settings_bad_values(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        conversion_settings(**kwargs)


def test_devices_import_no_tensorflow_or_numpy():
    code = "import sys, edgekit.devices as d; d.list_profiles(); print(sorted(m for m in ('tensorflow','keras','numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
