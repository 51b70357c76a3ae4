"""decompose-det: Det of 1x1..3x3 matrices as entry arithmetic, equal to onnxruntime
(hypothesis) and accepted by the real tensorrt_rtx parser and builder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fusekit.api as fk
from tests.helpers import assert_same_outputs, inspect_pass, op_counts, optimize_with, parse

PASS = ["decompose-det"]


def det_model(batch: tuple[int, ...], n: int) -> str:
    dims = ",".join(map(str, batch + (n, n)))
    out = ",".join(map(str, batch))
    return f"g (float[{dims}] x) => (float[{out}] y) {{ y = Det(x) }}"


@given(batch=st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple), n=st.integers(1, 3),
       seed=st.integers(0, 999))
def test_matches_onnxruntime(batch, n, seed):
    model = parse(det_model(batch, n))
    optimized, _ = optimize_with(model, PASS)
    assert op_counts(optimized)["Det"] == 0
    x = np.random.default_rng(seed).uniform(-2, 2, size=batch + (n, n)).astype(np.float32)
    assert_same_outputs(model, optimized, [{"x": x}], rtol=1e-4, atol=1e-4)


def test_larger_or_unknown_sizes_are_declined():
    assert "only 1x1 to 3x3" in inspect_pass(parse(det_model((2,), 4)), "decompose-det")["Det_0"][0].message
    dynamic = parse("g (float[2,N,N] x) => (float[2] y) { y = Det(x) }")
    assert "not static" in inspect_pass(dynamic, "decompose-det")["Det_0"][0].message


@pytest.mark.trt
def test_tensorrt_rtx_builds_the_result():
    model = parse(det_model((2,), 3))
    [before] = fk.check_trt(model)
    assert before.substitution.startswith("decompose-det:")
    optimized = fk.optimize(model)
    assert fk.check_trt(optimized) == []
    assert fk.build(optimized, optimize=False).engine.nbytes > 0
