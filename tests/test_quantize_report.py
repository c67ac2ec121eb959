"""The report's metrics (NLL, ECE) on hand-computed cases, and its two renderings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgekit.converters.report import ConversionReport, ece, nll


def test_nll_golden_values():
    uniform = np.full((4, 10), 0.1)
    assert nll(uniform, np.array([0, 3, 5, 9])) == pytest.approx(math.log(10))
    sure = np.eye(3)[[0, 1, 2]]
    assert nll(sure, np.array([0, 1, 2])) == pytest.approx(0.0)
    assert nll(sure, np.array([1, 1, 2])) == pytest.approx(-math.log(1e-12) / 3)  # clipped, not inf


def test_ece_golden_values():
    # 10 predictions at confidence 0.9, 9 right: perfectly calibrated -> 0.
    probs = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0] * 9 + [1])
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # All right at confidence 0.6: gap 0.4 in one bin.
    assert ece(np.tile([0.6, 0.4], (5, 1)), np.zeros(5, int)) == pytest.approx(0.4)
    # Two bins: conf 0.95 all right (gap 0.05), conf 0.55 all wrong (gap 0.55); equal weight.
    probs = np.array([[0.95, 0.05]] * 2 + [[0.55, 0.45]] * 2)
    assert ece(probs, np.array([0, 0, 1, 1])) == pytest.approx((0.05 + 0.55) / 2)


def _report(**over):
    base = dict(quantization="int8", io="float32", stochastic="in-graph", seed=None, size_bytes=1000,
                gzip_bytes=800, signatures={"full": {"inputs": ["x"], "outputs": ["probs"]}},
                ops={"full": {"FULLY_CONNECTED": 2, "RANDOM_UNIFORM": 1}}, float_islands={"RANDOM_UNIFORM": 1},
                tensor_dtypes=("float32", "int8"))
    return ConversionReport(**{**base, **over})


def test_table_and_json_renderings():
    r = _report(warnings=("ACCURACY COLLAPSE: 3.00 points",))
    table = r.to_table()
    assert "float islands    RANDOM_UNIFORM x1" in table
    assert "1,000 bytes raw, 800 bytes gzip" in table
    assert "!!! ACCURACY COLLAPSE" in table  # loud, not a plain warning line
    assert json.loads(json.dumps(r.to_dict()))["ops"]["full"]["FULLY_CONNECTED"] == 2
    assert r.op_names == ("FULLY_CONNECTED", "RANDOM_UNIFORM")
