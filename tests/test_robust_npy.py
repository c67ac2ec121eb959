"""Hostile ``.npy`` inputs through ``edgekit predict``: valid layouts run, bad files give one line.

The corpus is ``tests/fuzz/arrays.py``; each file goes through ``edgekit predict`` on the MLP
fixture in a worker process. A pickled payload must never run (it would create a marker file).
An empty file and a header declaring a 728 TiB array used to escape as "Aborted!" and a
traceback; both now give one line.
"""

from __future__ import annotations

import pytest
from fuzz.arrays import make_npy_corpus
from fuzz.corrupt import FIXTURES
from fuzz.harness import run_cases

MODEL = str(FIXTURES / "mlp_ingraph.tflite")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    marker = tmp_path_factory.mktemp("npy") / "PICKLE_RAN"
    corpus = make_npy_corpus(str(marker))
    results = run_cases("predict", corpus, timeout=30, model=MODEL, env={"FUZZ_AS_LIMIT": str(3 << 30)})
    return marker, {case.name: (case, r) for case, r in zip(corpus, results, strict=True)}


def _clean_error(r: dict) -> bool:
    return r["status"] == "error" and r.get("exit_code") == 1 and bool(r.get("one_line")) and r["message"].startswith("Error:")


def test_valid_layouts_run(outcomes):
    _, cases = outcomes
    valid = [(c, r) for c, r in cases.values() if c.kind == "npy-valid"]
    assert len(valid) == 5
    assert all(r["status"] == "ran" and r["finite"] for _, r in valid), [(c.name, r) for c, r in valid]


def test_bad_arrays_give_one_error_line(outcomes):
    _, cases = outcomes
    bad = [(c, r) for c, r in cases.values() if c.kind == "npy-bad"]
    assert len(bad) == 17
    broken = [(c.name, r["status"], r.get("message")) for c, r in bad if not _clean_error(r)]
    assert not broken, broken


def test_pickle_payload_never_runs(outcomes):
    marker, cases = outcomes
    _, r = cases["npy:pickle"]
    assert _clean_error(r) and "allow_pickle" in r["message"], r
    assert not marker.exists()


def test_empty_file_gives_an_error_line(outcomes):
    # numpy raises EOFError here, which click alone would report as a bare "Aborted!".
    _, cases = outcomes
    _, r = cases["npy:empty-file"]
    assert _clean_error(r), r


def test_header_declaring_a_huge_array_gives_an_error_line(outcomes):
    # A 200-byte file whose header declares (9999999999999, 20): np.load's MemoryError (728 TiB)
    # used to escape as a traceback.
    _, cases = outcomes
    _, r = cases["npy:huge-shape"]
    assert _clean_error(r), r


def test_pickle_payload_is_live_when_loaded_unsafely(tmp_path):
    # Positive control for test_pickle_payload_never_runs: numpy with allow_pickle=True runs it.
    import io

    import numpy as np

    marker = tmp_path / "PICKLE_RAN"
    data = next(c.data for c in make_npy_corpus(str(marker)) if c.name == "npy:pickle")
    np.load(io.BytesIO(data), allow_pickle=True)
    assert marker.exists()
