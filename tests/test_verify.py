"""Output comparison of --verify: floats within tolerance, everything else exact."""

from __future__ import annotations

import numpy as np

from fusekit.verify import Tolerance, output_diff


def test_integer_outputs_are_compared_exactly():
    # rtol 1e-4 would let an argmax of 10001 pass for 10000.
    e, g = np.array([10000], np.int64), np.array([10001], np.int64)
    diff = output_diff("idx", e, g, Tolerance())
    assert not diff.ok and diff.max_abs_diff == 1.0
    assert output_diff("idx", e, e.copy(), Tolerance()).ok


def test_bool_and_string_outputs_are_compared_exactly():
    assert not output_diff("m", np.array([True]), np.array([False]), Tolerance()).ok
    assert output_diff("s", np.array(["a"], object), np.array(["a"], object), Tolerance()).ok
    assert not output_diff("s", np.array(["a"], object), np.array(["b"], object), Tolerance()).ok


def test_float_outputs_within_tolerance_and_nan_positions():
    e = np.array([1.0, np.nan, np.inf], np.float32)
    assert output_diff("y", e, e + np.float32(1e-6), Tolerance()).ok
    assert not output_diff("y", e, np.array([1.0, 0.0, np.inf], np.float32), Tolerance()).ok
    assert not output_diff("y", e, np.array([1.1, np.nan, np.inf], np.float32), Tolerance()).ok
