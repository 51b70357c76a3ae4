"""decompose-max-unpool: MaxPool -> MaxUnpool round trips equal to onnxruntime (hypothesis),
and accepted by the real tensorrt_rtx parser and builder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fusekit.api as fk
from tests.helpers import assert_same_outputs, inspect_pass, op_counts, optimize_with, parse

PASS = ["infer-shapes", "decompose-max-unpool"]


def round_trip(n: int, c: int, h: int, w: int, k: int) -> str:
    return f"""g (float[{n},{c},{h},{w}] x) => (float[{n},{c},{h // k * k},{w // k * k}] y) {{
      p, i = MaxPool<kernel_shape=[{k},{k}], strides=[{k},{k}]>(x)
      y = MaxUnpool<kernel_shape=[{k},{k}], strides=[{k},{k}]>(p, i) }}"""


@given(n=st.integers(1, 2), c=st.integers(1, 3), rows=st.integers(1, 4), cols=st.integers(1, 4), k=st.integers(1, 3),
       seed=st.integers(0, 999))
def test_matches_onnxruntime(n, c, rows, cols, k, seed):
    h, w = rows * k, cols * k  # MaxUnpool's default output shape is the pooled input's
    model = parse(round_trip(n, c, h, w, k))
    optimized, _ = optimize_with(model, PASS)
    assert op_counts(optimized)["MaxUnpool"] == 0
    x = np.random.default_rng(seed).normal(size=(n, c, h, w)).astype(np.float32)
    assert_same_outputs(model, optimized, [{"x": x}], rtol=0, atol=0)


def test_dynamic_output_is_declined():
    model = parse("""g (float[N,1,4,4] x, int64[N,1,4,4] i) => (float[N,1,8,8] y) {
      y = MaxUnpool<kernel_shape=[2,2], strides=[2,2]>(x, i) }""")
    assert "not static" in inspect_pass(model, "decompose-max-unpool")["MaxUnpool_0"][0].message


@pytest.mark.trt
def test_tensorrt_rtx_builds_the_result():
    # indices as an input: TensorRT has no MaxPool Indices output either (check-trt says so)
    model = parse("""g (float[1,2,3,3] x, int64[1,2,3,3] i) => (float[1,2,6,6] y) {
      y = MaxUnpool<kernel_shape=[2,2], strides=[2,2]>(x, i) }""")
    [before] = fk.check_trt(model)
    assert before.substitution.startswith("decompose-max-unpool:")
    optimized = fk.optimize(model)
    assert fk.check_trt(optimized) == []
    assert fk.build(optimized, optimize=False).engine.nbytes > 0
