"""The demo (``make demo``) end to end on the real Fashion-MNIST, at a small T and one epoch: every
step runs and writes its files. ``make demo`` itself runs T=100 and 15 epochs; this keeps a
change in any step's interface from reaching a user's first command."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.train]
pytest.importorskip("tensorflow")


def test_demo_runs_every_step_and_writes_its_files(tmp_path):
    from edgekit.demo import run_demo

    summary = run_demo(tmp_path, epochs=1, samples=4, profile_runs=3, shift_examples=100, shift_samples=4)
    for name in ("demo.json", "first_image_mc.png", "book.keras", "book_float32.tflite", "book_float16.tflite",
                 "book_int8.tflite", "conversion_report.json", "profile.json", "profile.png", "shift.png",
                 "reliability_float32.png", "reliability_float16.png", "reliability_int8.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "demo.json").read_text())["accuracy"] == summary["accuracy"]
    # One epoch of the reference MLP reaches about 0.85 on the test set; 0.75 leaves room for any seed.
    assert summary["accuracy"]["mc"] > 0.75 and summary["accuracy"]["deterministic"] > 0.75
    assert set(summary["conversion"]) == {"float32", "float16", "int8"}
    assert set(summary["trust"]["reliability"]) == {"float32", "float16", "int8"}
    assert [c["angle"] for c in summary["trust"]["shift"]["curves"]["int8 calibrated"]][:2] == [0, 15]
