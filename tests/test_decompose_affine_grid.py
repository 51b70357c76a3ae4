"""decompose-affine-grid: 2D AffineGrid of a constant size, equal to onnxruntime
(hypothesis), and accepted by the real tensorrt_rtx parser and builder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fusekit.api as fk
from tests.helpers import assert_same_outputs, inspect_pass, op_counts, optimize_with, parse

PASS = ["decompose-affine-grid"]
HEADER = '<ir_version: 9, opset_import: ["" : 20]>\n'


def grid_model(n: int, h: int, w: int, align: int) -> str:
    return HEADER + f"""g (float[{n},2,3] theta) => (float[{n},{h},{w},2] y) {{
      s = Constant<value=int64[4] {{{n},3,{h},{w}}}>()
      y = AffineGrid<align_corners={align}>(theta, s) }}"""


@given(n=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6), align=st.sampled_from([0, 1]),
       seed=st.integers(0, 999))
def test_matches_onnxruntime(n, h, w, align, seed):
    if align:
        h, w = h + 1, w + 1  # align_corners needs 2 points per axis (declined otherwise)
    model = parse(grid_model(n, h, w, align))
    optimized, _ = optimize_with(model, PASS)
    assert op_counts(optimized)["AffineGrid"] == 0
    theta = np.random.default_rng(seed).uniform(-2, 2, size=(n, 2, 3)).astype(np.float32)
    assert_same_outputs(model, optimized, [{"theta": theta}], rtol=1e-5, atol=1e-5)


def test_declines():
    assert "spatial size of 1" in inspect_pass(parse(grid_model(1, 1, 4, 1)), PASS[0])["AffineGrid_0"][0].message
    computed = parse(HEADER + """g (float[1,2,3] theta, int64[4] s) => (float[1,2,2,2] y) {
      y = AffineGrid(theta, s) }""")
    assert "not a constant" in inspect_pass(computed, PASS[0])["AffineGrid_0"][0].message


@pytest.mark.trt
def test_tensorrt_rtx_builds_the_result():
    model = parse(grid_model(2, 4, 5, 0))
    [before] = fk.check_trt(model)
    assert before.substitution.startswith("decompose-affine-grid:")
    optimized = fk.optimize(model)
    assert fk.check_trt(optimized) == []
    assert fk.build(optimized, optimize=False).engine.nbytes > 0
