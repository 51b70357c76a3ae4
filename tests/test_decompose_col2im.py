"""decompose-col2im: 2-D Col2Im of constant image and block shapes, equal to onnxruntime
(hypothesis: shapes, strides, pads, dilations, a dynamic batch at two sizes), the onnx
corpus cases with their shapes made constant, and accepted by the real tensorrt_rtx parser
and builder."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import numpy_helper

import fusekit.api as fk
from tests.helpers import assert_same_outputs, inspect_pass, op_counts, optimize_with, parse, run_ort

PASS = ["decompose-col2im"]
HEADER = '<ir_version: 8, opset_import: ["" : 18]>\n'


def reason(model: onnx.ModelProto) -> str:
    """What the pass says of the model's one Col2Im."""
    [finding] = [f for found in inspect_pass(model, PASS[0]).values() for f in found]
    return finding.message


@lru_cache(maxsize=1)
def corpus_cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # the generators overflow casts and divide by zero on purpose
        warnings.simplefilter("ignore")
        return {case.name: case for case in collect_testcases(None) if case.name.startswith("test_col2im")}


def positions(image, block, strides, dilations, pads) -> list[int]:
    """Block positions per spatial dim, as the ONNX Col2Im spec counts them."""
    return [(image[a] + pads[a] + pads[a + 2] - dilations[a] * (block[a] - 1) - 1) // strides[a] + 1
            for a in range(2)]


def col2im_model(batch, c, image, block, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0)) -> onnx.ModelProto:
    lh, lw = positions(image, block, strides, dilations, pads)
    rows, length = c * block[0] * block[1], lh * lw
    ints = lambda v: ", ".join(str(int(i)) for i in v)  # noqa: E731
    return parse(HEADER + f"""g (float[{batch},{rows},{length}] x) => (float[{batch},{c},{image[0]},{image[1]}] y) {{
      image = Constant<value=int64[2] {{{ints(image)}}}>()
      block = Constant<value=int64[2] {{{ints(block)}}}>()
      y = Col2Im<strides=[{ints(strides)}], dilations=[{ints(dilations)}], pads=[{ints(pads)}]>(x, image, block) }}""")


@st.composite
def cases(draw):
    block = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    strides = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    dilations = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    # an image the (dilated) block fits into once padded, plus up to 4 more rows/columns
    image = [max(1, dilations[a] * (block[a] - 1) + 1 - pads[a] - pads[a + 2]) + draw(st.integers(0, 4))
             for a in range(2)]
    return image, block, strides, dilations, pads


@given(case=cases(), c=st.integers(1, 3), n=st.integers(1, 2), seed=st.integers(0, 999))
def test_matches_onnxruntime(case, c, n, seed):
    image, block, strides, dilations, pads = case
    model = col2im_model(n, c, image, block, strides, dilations, pads)
    optimized, _ = optimize_with(model, PASS)
    assert op_counts(optimized)["Col2Im"] == 0
    assert op_counts(optimized)["ConvTranspose"] == 1
    x_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).normal(size=x_shape).astype(np.float32)
    assert_same_outputs(model, optimized, [{"x": x}], rtol=1e-6, atol=1e-6)


def dynamic_batch_model() -> onnx.ModelProto:
    """A strided, dilated, padded Col2Im with a dynamic batch dim N (Lh*Lw = 4*5)."""
    return parse(HEADER + """g (float[N,12,20] x) => (float[N,2,7,6] y) {
      image = Constant<value=int64[2] {7, 6}>()
      block = Constant<value=int64[2] {3, 2}>()
      y = Col2Im<strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1]>(x, image, block) }""")


def test_dynamic_batch_at_two_sizes():
    model = dynamic_batch_model()
    optimized, _ = optimize_with(model, PASS)
    assert op_counts(optimized)["Col2Im"] == 0
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.normal(size=(n, 12, 20)).astype(np.float32)} for n in (1, 3)]
    assert_same_outputs(model, optimized, feeds, rtol=1e-6, atol=1e-6)


def test_unknown_block_count_is_rewritten():
    """A symbolic dim 2 is taken to be Lh*Lw (the Reshape fails at run time otherwise, as Col2Im does)."""
    model = parse(HEADER + """g (float[N,12,L] x) => (float[N,2,7,6] y) {
      image = Constant<value=int64[2] {7, 6}>()
      block = Constant<value=int64[2] {3, 2}>()
      y = Col2Im<strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1]>(x, image, block) }""")
    optimized, _ = optimize_with(model, PASS)
    assert op_counts(optimized)["Col2Im"] == 0
    x = np.random.default_rng(1).normal(size=(2, 12, 20)).astype(np.float32)
    assert_same_outputs(model, optimized, [{"x": x}], rtol=1e-6, atol=1e-6)


def _with_constant_shapes(model: onnx.ModelProto, feeds: list) -> onnx.ModelProto:
    """The corpus model with its image_shape and block_shape inputs turned into initializers."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    names = [i.name for i in frozen.graph.input[1:]]
    kept = [i for i in frozen.graph.input if i.name not in names]
    del frozen.graph.input[:]
    frozen.graph.input.extend(kept)
    frozen.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in zip(names, feeds[1:]))
    return frozen


@pytest.mark.parametrize("name", ["test_col2im", "test_col2im_strides", "test_col2im_pads", "test_col2im_dilations",
                                  "test_col2im_5d"])
def test_onnx_corpus_cases(name):
    """The onnx wheel's cases pass image_shape and block_shape as graph inputs, so the pass
    declines them as they are; with those inputs made constant, the 2-D ones are rewritten
    and give the case's expected outputs (the 5-D one is declined)."""
    case = corpus_cases()[name]
    [(inputs, [expected])] = case.data_sets
    assert "not a constant" in reason(case.model)
    model = _with_constant_shapes(case.model, inputs)
    optimized, _ = optimize_with(model, PASS)
    if name.endswith("5d"):
        assert op_counts(optimized)["Col2Im"] == 1
        assert "only 2-D" in reason(model)
        return
    assert op_counts(optimized)["Col2Im"] == 0
    [got] = run_ort(optimized, {model.graph.input[0].name: inputs[0]}).values()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_declines():
    computed = parse(HEADER + """g (float[1,4,4] x, int64[2] image) => (float[1,1,3,3] y) {
      block = Constant<value=int64[2] {2, 2}>()
      y = Col2Im(x, image, block) }""")
    assert "not a constant" in reason(computed)
    wrong_length = parse(HEADER + """g (float[1,4,5] x) => (float[1,1,3,3] y) {
      image = Constant<value=int64[2] {3, 3}>()
      block = Constant<value=int64[2] {2, 2}>()
      y = Col2Im(x, image, block) }""")
    assert "not the 2*2 block positions" in reason(wrong_length)
    unknown_channels = parse(HEADER + """g (float[1,C,4] x) => (float[1,D,3,3] y) {
      image = Constant<value=int64[2] {3, 3}>()
      block = Constant<value=int64[2] {2, 2}>()
      y = Col2Im(x, image, block) }""")
    assert "not a known multiple" in reason(unknown_channels)


def test_strided_and_dilated_spreads_the_dilations_into_the_filter():
    model = col2im_model(1, 2, [7, 6], [3, 2], strides=[2, 1], dilations=[1, 2])
    optimized, _ = optimize_with(model, PASS)
    [deconv] = [n for n in optimized.graph.node if n.op_type == "ConvTranspose"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in deconv.attribute}
    assert attrs["dilations"] == [1, 1] and attrs["kernel_shape"] == [3, 3] and attrs["strides"] == [2, 1]


# tensorrt_rtx 1.7 refuses to build a ConvTranspose that is both strided and dilated; the
# first case checks the filter-spread form, the others output_padding and asymmetric pads
TRT_CASES = {
    "strided-and-dilated": dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1]),
    "dilated": dict(dilations=[2, 2]),
    "strided-output-padding": dict(strides=[2, 2]),
}


@pytest.mark.trt
@pytest.mark.parametrize("case", list(TRT_CASES))
def test_tensorrt_rtx_builds_the_result(case):
    model = col2im_model(2, 3, [8, 6], [3, 2], **TRT_CASES[case])
    [before] = fk.check_trt(model)
    assert before.op == "Col2Im"
    assert before.substitution.startswith("decompose-col2im:")
    optimized = fk.optimize(model)
    assert fk.check_trt(optimized) == []
    assert fk.build(optimized, optimize=False).engine.nbytes > 0


@pytest.mark.trt
def test_tensorrt_rtx_builds_a_dynamic_batch():
    optimized = fk.optimize(dynamic_batch_model())
    assert op_counts(optimized)["Col2Im"] == 0
    assert fk.build(optimized, optimize=False, dynamic=["N=1:2:4"]).engine.nbytes > 0


@pytest.mark.parametrize("table", ["tensorrt-10.15", "tensorrt_rtx-1.7"])
def test_check_trt_offers_the_pass(table):
    [found] = fk.check_trt(col2im_model(1, 2, [5, 4], [2, 2], strides=[1, 2]), table=table)
    assert found.op == "Col2Im"
    assert found.substitution.startswith("decompose-col2im: ")
