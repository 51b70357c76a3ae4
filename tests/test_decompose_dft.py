"""decompose-dft: DFT of a static length as MatMuls with a constant basis, equal to
onnxruntime (hypothesis: real/complex, forward/inverse, onesided), and accepted by the
real tensorrt_rtx parser and builder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fusekit.api as fk
from tests.helpers import assert_same_outputs, inspect_pass, op_counts, optimize_with, parse

PASS = ["decompose-dft"]
HEADER = '<ir_version: 9, opset_import: ["" : 20]>\n'


def dft_model(batch: int, n: int, parts: int, inverse: int, onesided: int) -> str:
    k = n // 2 + 1 if onesided else n
    return HEADER + f"""g (float[{batch},{n},{parts}] x) => (float[{batch},{k},2] y) {{
      y = DFT<inverse={inverse}, onesided={onesided}>(x) }}"""


@given(batch=st.integers(1, 3), n=st.integers(1, 16), complex_input=st.booleans(), inverse=st.booleans(),
       onesided=st.booleans(), seed=st.integers(0, 999))
def test_matches_onnxruntime(batch, n, complex_input, inverse, onesided, seed):
    if complex_input or inverse:
        onesided = False
    parts = 2 if complex_input else 1
    model = parse(dft_model(batch, n, parts, int(inverse), int(onesided)))
    optimized, _ = optimize_with(model, PASS)
    assert op_counts(optimized)["DFT"] == 0
    x = np.random.default_rng(seed).uniform(-1, 1, size=(batch, n, parts)).astype(np.float32)
    assert_same_outputs(model, optimized, [{"x": x}], rtol=1e-4, atol=1e-4)


def test_declines():
    other_axis = parse(HEADER + """g (float[4,3,1] x) => (float[4,3,2] y) {
      a = Constant<value=int64 {0}>()
      y = DFT(x, , a) }""")
    assert "only the axis" in inspect_pass(other_axis, PASS[0])["DFT_0"][0].message
    dynamic = parse(HEADER + "g (float[1,N,1] x) => (float[1,N,2] y) { y = DFT(x) }")
    assert "not static" in inspect_pass(dynamic, PASS[0])["DFT_0"][0].message


@pytest.mark.trt
def test_tensorrt_rtx_builds_the_result():
    model = parse(dft_model(2, 8, 2, 0, 0))
    [before] = fk.check_trt(model)
    assert before.substitution.startswith("decompose-dft:")
    optimized = fk.optimize(model)
    assert fk.check_trt(optimized) == []
    assert fk.build(optimized, optimize=False).engine.nbytes > 0
