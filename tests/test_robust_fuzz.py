"""Hundreds of corrupted ``.tflite`` files through ``MCModel`` and ``edgekit predict``: clean errors only.

The corpus (``tests/fuzz/corrupt.py``) is made from the committed fixtures: truncations, byte flips in
the header, operator codes, tensor shapes, weights and metadata, huge tensors, bad indices, random
bytes and non-files, plus re-signed and foreign copies that no digest can vouch for. Each file is
loaded by a long-lived worker process (the "calling process"); a native crash or a hang of that
worker is a failure, and the harness starts a fresh worker only after one. The rules for each case
are in ``tests/fuzz/checks.py``. ``bench/robustness.py`` runs the same corpus and also counts what the
stock interpreter does with it.
"""

from __future__ import annotations

import collections

import pytest
from fuzz.checks import WRONG_OUTPUT, violation
from fuzz.corrupt import EDGEKIT_SOURCES, FIXTURES, find_regions, make_corpus
from fuzz.harness import run_cases

# Needs no TensorFlow. Marked slow: the worker and the runtime's probe children cost ~1 s each.
pytestmark = pytest.mark.slow

SEED = 0


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(SEED)


def test_corpus_is_large_varied_and_reproducible(corpus):
    assert len(corpus) >= 500
    kinds = collections.Counter(case.kind for case in corpus)
    for kind in ("truncate", "flip-header", "flip-opcode", "flip-shape", "flip-weights", "flip-metadata",
                 "huge-tensor", "bad-index", "random", "not-a-file"):
        assert kinds[kind] > 0, kind
    assert [c.data for c in make_corpus(SEED)] == [c.data for c in corpus]
    sources = {name: (FIXTURES / name).read_bytes() for name in EDGEKIT_SOURCES}
    for case in corpus:
        if case.source in sources:
            assert case.data != sources[case.source], case.name


def test_regions_point_inside_the_file():
    data = (FIXTURES / "cnn_ingraph.tflite").read_bytes()
    regions = find_regions(data)
    assert regions.opcodes and regions.shapes and regions.weights and regions.small_ints
    start, length = regions.metadata
    assert data[start : start + length].startswith(b"{") and b'"edgekit/1"' in data[start : start + length]
    assert all(0 <= p < len(data) for p in regions.opcodes + regions.shapes + regions.small_ints)


def test_harness_records_a_native_crash_and_carries_on(corpus):
    # The stock interpreter segfaults on this bad index in invoke(); the harness must see a crash
    # (so a crash in the runtime could not go unnoticed) and still run the next case.
    crasher = next(c for c in corpus if c.kind == "bad-index" and c.source == "cnn_ingraph.tflite" and c.offset == 2744)
    after = next(c for c in corpus if c.name.endswith(":empty"))
    results = run_cases("stock", [crasher, after], timeout=60)
    assert results[0]["status"] == "crash" and results[0]["signal_name"] == "SIGSEGV", results[0]
    assert results[1]["status"] == "error", results[1]


@pytest.fixture(scope="module")
def outcomes(corpus, tmp_path_factory):
    """Run the corpus once per mode (lazily) and share the results between the tests below."""
    cache = tmp_path_factory.mktemp("probe-cache")  # shared, so predict reuses MCModel's probes
    done: dict[str, list[dict]] = {}

    def get(mode: str) -> list[dict]:
        if mode not in done:
            done[mode] = run_cases(mode, corpus, timeout=60, env={"XDG_CACHE_HOME": str(cache)})
        return done[mode]

    return get


def _violations(corpus, results, mode, *, wrong_output: bool):
    out = []
    for case, result in zip(corpus, results, strict=True):
        why = violation(case, result, mode)
        if why and (why == WRONG_OUTPUT) == wrong_output:
            out.append((case.name, why))
    return out


@pytest.mark.parametrize("mode", ["mcmodel", "predict"])
def test_no_crash_no_hang_and_clear_errors(corpus, outcomes, mode):
    results = outcomes(mode)
    statuses = collections.Counter(r["status"] for r in results)
    assert statuses["crash"] == 0 and statuses["hang"] == 0 and statuses["uncaught"] == 0, dict(statuses)
    bad = _violations(corpus, results, mode, wrong_output=False)
    assert not bad, f"{len(bad)} of {len(corpus)} cases broke the promise ({dict(statuses)}): {bad[:10]}"


@pytest.mark.parametrize("mode", ["mcmodel", "predict"])
def test_no_silently_wrong_output_from_files_no_digest_can_vouch_for(corpus, outcomes, mode):
    bad = _violations(corpus, outcomes(mode), mode, wrong_output=True)
    assert not bad, f"{len(bad)} files ran and returned garbage: {bad[:10]}"


def test_every_single_byte_change_fails_the_integrity_check():
    # Exhaustive, not sampled: every byte of an edgekit export XORed with 0xFF, and every
    # truncation, is refused by the digest check alone (pure Python; ~1 s for an 11 KB model).
    from edgekit.runtime.metadata import IntegrityError, verify_integrity

    data = (FIXTURES / "mlp_mask.tflite").read_bytes()
    assert verify_integrity(data)
    missed = []
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        try:
            verify_integrity(bytes(bad), require_metadata=False)
            missed.append(pos)
        except IntegrityError:
            pass
    assert not missed, f"{len(missed)} changed bytes passed the integrity check, e.g. at {missed[:10]}"
    for cut in range(0, len(data), 7):
        with pytest.raises(IntegrityError):
            verify_integrity(data[:cut], require_metadata=False)
