"""drop-unused-indices: MaxPool's unused Indices output dropped, values unchanged
(onnxruntime, hypothesis), and the real tensorrt_rtx parser accepts the result."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fusekit.api as fk
from tests.helpers import assert_same_outputs, inspect_pass, optimize_with, parse

PASS = ["drop-unused-indices"]


def pool(n: int, c: int, size: int, k: int, stride: int, pad: int, tail: str = "y = Relu(p)",
         outputs: str = "float[{n},{c},{o},{o}] y") -> str:
    o = (size + 2 * pad - k) // stride + 1
    outs = outputs.format(n=n, c=c, o=o)
    return f"""g (float[{n},{c},{size},{size}] x) => ({outs}) {{
      p, i = MaxPool<kernel_shape=[{k},{k}], strides=[{stride},{stride}], pads=[{pad},{pad},{pad},{pad}]>(x)
      {tail} }}"""


@given(n=st.integers(1, 3), c=st.integers(1, 4), size=st.integers(3, 8), k=st.integers(1, 3),
       stride=st.integers(1, 2), pad=st.integers(0, 1), seed=st.integers(0, 99))
def test_values_unchanged(n, c, size, k, stride, pad, seed):
    pad = min(pad, k - 1)  # onnxruntime: pads must be smaller than the kernel
    model = parse(pool(n, c, size, k, stride, pad))
    optimized, report = optimize_with(model, PASS)
    [node] = [x for x in optimized.graph.node if x.op_type == "MaxPool"]
    assert list(node.output) == ["p"]
    rng = np.random.default_rng(seed)
    assert_same_outputs(model, optimized, [{"x": rng.normal(size=(n, c, size, size)).astype(np.float32)}])


def test_used_indices_stay():
    read = parse(pool(1, 1, 4, 2, 2, 0, tail="y = Relu(p)\n f = Cast<to=1>(i)\n z = Add(y, f)",
                      outputs="float[{n},{c},{o},{o}] z"))
    findings = inspect_pass(read, "drop-unused-indices")
    assert "read by Cast" in findings["MaxPool_0"][0].message
    graph_output = parse(pool(1, 1, 4, 2, 2, 0, outputs="float[{n},{c},{o},{o}] y, int64[{n},{c},{o},{o}] i"))
    assert "graph output" in inspect_pass(graph_output, "drop-unused-indices")["MaxPool_0"][0].message
    optimized, _ = optimize_with(graph_output, PASS)
    assert len(optimized.graph.node[0].output) == 2


@pytest.mark.trt
def test_tensorrt_rtx_parses_the_result():
    model = parse(pool(1, 2, 6, 2, 2, 0))
    [before] = fk.check_trt(model)
    assert "emptyOutputChecker" in before.reason and before.substitution.startswith("drop-unused-indices:")
    assert fk.check_trt(fk.optimize(model)) == []
