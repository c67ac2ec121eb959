"""Helpers for the robustness suite (``tests/test_robust_*.py`` and ``bench/robustness.py``).

- :mod:`fuzz.corrupt`: corrupted ``.tflite`` files made from the committed fixtures.
- :mod:`fuzz.images`, :mod:`fuzz.arrays`: hostile image (PNG, JPEG, WebP, BMP) and ``.npy`` inputs.
- :mod:`fuzz.harness` and :mod:`fuzz.worker`: run many files through batched child processes,
  surviving crashes and hangs.
- :mod:`fuzz.checks`: what counts as a kept promise for each case.
- :mod:`fuzz.stress`: many threads on one ``MCModel``, every result checked, RSS sampled.

Nothing here imports TensorFlow.
"""

__all__: list[str] = []
