"""split-topk: TopK with K at/over TensorRT's limit as a rank sort, values and indices equal
to onnxruntime (hypothesis, distinct values and ties), near misses declined, and the real
tensorrt_rtx builder accepts the result (N=5000, K=3900)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusekit.api as fk
from tests.helpers import assert_same_outputs, inspect_pass, op_counts, optimize_with, parse

PASS = ["split-topk"]


def topk_model(shape: tuple[int, ...], k: int, axis: int = -1, largest: int = 1, sorted_: int = 1,
               dtype: str = "float") -> str:
    out = list(shape)
    out[axis] = k
    dims, odims = ",".join(map(str, shape)), ",".join(map(str, out))
    return f"""g ({dtype}[{dims}] x) => ({dtype}[{odims}] v, int64[{odims}] i) <int64[1] k = {{{k}}}> {{
      v, i = TopK<axis={axis}, largest={largest}, sorted={sorted_}>(x, k) }}"""


def check(model: onnx.ModelProto, feeds: dict, limit: int | None = None) -> onnx.ModelProto:
    options = None if limit is None else {"topk_k_limit": limit}
    optimized, _ = optimize_with(model, PASS, options=options)
    onnx.checker.check_model(optimized, full_check=True)
    assert op_counts(optimized)["TopK"] == 0
    assert_same_outputs(model, optimized, [feeds], rtol=0, atol=0)
    return optimized


@settings(max_examples=25, deadline=None)
@given(batch=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple), n=st.integers(1, 40),
       data=st.data(), largest=st.integers(0, 1), ties=st.booleans(), seed=st.integers(0, 999))
def test_matches_onnxruntime_with_a_lowered_limit(batch, n, data, largest, ties, seed):
    """The limit lowered (option topk_k_limit) so that small axes exercise the rewrite."""
    k = data.draw(st.integers(1, n))
    rank = len(batch) + 1
    axis = data.draw(st.integers(-rank, rank - 1))
    shape = list(batch)
    shape.insert(axis % rank, n)
    shape = tuple(shape)
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: ties must go to the lower index, as in onnxruntime
        x = rng.integers(-2, 3, size=shape).astype(np.float32)
    else:
        x = rng.permutation(np.prod(shape, dtype=int)).reshape(shape).astype(np.float32) - 7.5
    check(parse(topk_model(shape, k, axis, largest)), {"x": x}, limit=1)


@settings(max_examples=3, deadline=None)
@given(k=st.sampled_from([3840, 3900, 4000]), largest=st.integers(0, 1), seed=st.integers(0, 99))
def test_matches_onnxruntime_at_the_real_limit(k, largest, seed):
    n = 4000
    x = np.random.default_rng(seed).permutation(2 * n)[:n].reshape(1, n).astype(np.float32) * 0.25
    check(parse(topk_model((1, n), k, largest=largest)), {"x": x})


def test_near_misses_are_declined():
    def message(text: str) -> str:
        [finding] = inspect_pass(parse(text), "split-topk")["TopK_0"]
        assert not finding.applies
        return finding.message

    assert "below TensorRT's limit" in message(topk_model((1, 5000), 3839))
    assert "sorted=0" in message(topk_model((1, 5000), 3900, sorted_=0))
    assert "not of a known float type" in message(topk_model((1, 5000), 3900, dtype="int64"))
    assert "not a constant" in message("""g (float[1,5000] x, int64[1] k) => (float[1,?] v, int64[1,?] i) {
      v, i = TopK(x, k) }""")
    assert "not static" in message("""g (float[1,N] x) => (float[1,3900] v, int64[1,3900] i) <int64[1] k = {3900}> {
      v, i = TopK(x, k) }""")
    model = parse(topk_model((1, 5000), 3900))
    [finding] = inspect_pass(model, "split-topk")["TopK_0"]
    assert finding.applies


@pytest.mark.trt
def test_tensorrt_rtx_builds_the_result():
    model = parse(topk_model((1, 5000), 3900))
    [before] = fk.check_trt(model)
    assert "3840" in before.reason and before.substitution.startswith("split-topk:")
    optimized = fk.optimize(model)
    assert op_counts(optimized)["TopK"] == 0
    assert fk.check_trt(optimized) == []
    assert fk.build(optimized, optimize=False).engine.nbytes > 0
