"""decompose-contrib-ops: com.microsoft ops -> standard ops, equal to onnxruntime's contrib
kernels (hypothesis), and accepted by the real tensorrt_rtx parser and builder afterwards."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto

import fusekit.api as fk
from tests.helpers import assert_same_outputs, op_counts, optimize_with, parse

PASS = ["decompose-contrib-ops"]
MS = '<ir_version: 8, opset_import: ["" : 17, "com.microsoft": 1]>\n'


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset), oh.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _x(name, shape):
    return oh.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _init(name, rng, shape):
    return onnx.numpy_helper.from_array(rng.uniform(-2, 2, shape).astype(np.float32), name)


def _feeds(model, rng):
    return [{i.name: rng.uniform(-3, 3, [d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input}]


def _check(model, rng, removed):
    optimized, report = optimize_with(model, PASS)
    counts = op_counts(optimized)
    assert counts[removed] == 0, onnx.printer.to_text(optimized.graph)
    assert all(n.domain in ("", "ai.onnx") for n in optimized.graph.node)
    assert_same_outputs(model, optimized, _feeds(model, rng))
    return optimized, report


shapes = st.lists(st.integers(1, 5), min_size=2, max_size=3).map(tuple)


@given(shape=shapes, op=st.sampled_from(["Gelu", "FastGelu", "BiasGelu", "FastGeluBias"]), seed=st.integers(0, 99))
def test_gelu_family_matches_onnxruntime(shape, op, seed):
    rng = np.random.default_rng(seed)
    bias = op in ("BiasGelu", "FastGeluBias")
    kind = "FastGelu" if op.startswith("FastGelu") else op
    inits = [_init("b", rng, shape[-1:])] if bias else []
    node = oh.make_node(kind, ["x", "b"] if bias else ["x"], ["y"], name="n", domain="com.microsoft")
    _check(_model([node], [_x("x", shape)], [_x("y", shape)], inits), rng, kind)


@given(shape=shapes, alpha=st.floats(0.1, 3.0), seed=st.integers(0, 99))
def test_quick_gelu_matches_onnxruntime(shape, alpha, seed):
    node = oh.make_node("QuickGelu", ["x"], ["y"], name="n", domain="com.microsoft", alpha=alpha)
    _check(_model([node], [_x("x", shape)], [_x("y", shape)]), np.random.default_rng(seed), "QuickGelu")


@given(batch=st.integers(1, 3), seq=st.integers(1, 4), hidden=st.integers(2, 8), beta=st.booleans(),
       bias=st.booleans(), eps=st.sampled_from([1e-12, 1e-5]), sum_out=st.booleans(), seed=st.integers(0, 99))
def test_skip_layer_norm_matches_onnxruntime(batch, seq, hidden, beta, bias, eps, sum_out, seed):
    rng = np.random.default_rng(seed)
    shape = (batch, seq, hidden)
    names = ["x", "skip", "gamma", "beta" if beta else "", "bias" if bias else ""]
    while names and not names[-1]:
        names.pop()
    inits = [_init(n, rng, (hidden,)) for n in ("gamma", "beta", "bias") if n in names]
    outs = ["y", "", "", "s"] if sum_out else ["y"]
    node = oh.make_node("SkipLayerNormalization", names, outs, name="n", domain="com.microsoft", epsilon=eps)
    outputs = [_x("y", shape)] + ([_x("s", shape)] if sum_out else [])
    optimized, _ = _check(_model([node], [_x("x", shape), _x("skip", shape)], outputs, inits), rng,
                          "SkipLayerNormalization")
    assert op_counts(optimized)["LayerNormalization"] == 1


ACTS = [("Relu", []), ("Tanh", []), ("Sigmoid", []), ("LeakyRelu", [0.2]), ("Clip", [-0.5, 0.7]),
        ("HardSigmoid", [0.3, 0.4])]


@given(act=st.sampled_from(ACTS), bias=st.booleans(), z=st.booleans(), group=st.sampled_from([1, 2]),
       stride=st.integers(1, 2), pad=st.integers(0, 1), seed=st.integers(0, 99))
def test_fused_conv_matches_onnxruntime(act, bias, z, group, stride, pad, seed):
    rng = np.random.default_rng(seed)
    c, m, size = 4, 4, 6
    out = (size + 2 * pad - 3) // stride + 1
    inits = [_init("w", rng, (m, c // group, 3, 3))] + ([_init("b", rng, (m,))] if bias else [])
    inputs = ["x", "w", "b" if bias else ""] + (["z"] if z else [])
    params = {"activation_params": act[1]} if act[1] else {}
    node = oh.make_node("FusedConv", inputs, ["y"], name="n", domain="com.microsoft", activation=act[0],
                        kernel_shape=[3, 3], strides=[stride, stride], pads=[pad] * 4, group=group, **params)
    graph_inputs = [_x("x", (1, c, size, size))] + ([_x("z", (1, m, out, out))] if z else [])
    _check(_model([node], graph_inputs, [_x("y", (1, m, out, out))], inits), rng, "FusedConv")


def test_declines_are_explained():
    model = parse(MS + """g (float[2,4] x, float[2,4] k, float[4] g1) => (float[2,4] y, float[2,1] mean) {
      y, mean = com.microsoft.SkipLayerNormalization(x, k, g1) }""")
    optimized, report = optimize_with(model, PASS)
    assert op_counts(optimized)["SkipLayerNormalization"] == 1
    conv = parse(MS + """g (float[1,2,5,5] x, float[1,2,3,3] w) => (float[1,1,3,3] y) {
      y = com.microsoft.FusedConv<activation="Swish">(x, w) }""")
    found = fk.check_trt(conv, table="tensorrt-10.15")
    assert found[0].substitution is None
    opt, _ = optimize_with(conv, PASS)
    assert op_counts(opt)["FusedConv"] == 1


def test_opset_is_raised_for_layer_norm():
    model = parse('<ir_version: 7, opset_import: ["" : 13, "com.microsoft": 1]>\n'
                  """g (float[2,4] x, float[2,4] k, float[4] g1) => (float[2,4] y) {
                  y = com.microsoft.SkipLayerNormalization(x, k, g1) }""")
    optimized, _ = optimize_with(model, PASS)
    assert {o.domain: o.version for o in optimized.opset_import}[""] == 17
    assert_same_outputs(model, optimized)


ALL = MS + """g (float[1,4,6,6] x, float[1,4,36] k) => (float[1,4,36] y) {
  w = Constant<value=float[4,4,1,1] {1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1}>()
  g1 = Constant<value=float[36] {1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1}>()
  shape = Constant<value=int64[3] {1,4,36}>()
  a = com.microsoft.FusedConv<activation="Relu">(x, w)
  b = com.microsoft.FastGelu(a)
  c = com.microsoft.QuickGelu(b)
  d = com.microsoft.Gelu(c)
  e = Reshape(d, shape)
  y = com.microsoft.SkipLayerNormalization(e, k, g1)
}"""


@pytest.mark.trt
def test_tensorrt_rtx_parses_and_builds_after_the_decomposition():
    model = parse(ALL)
    before = fk.check_trt(model)
    # measured: the parser imports com.microsoft Gelu with its own Gelu importer (the domain is
    # not looked at); the other contrib ops are looked up as plugins and rejected
    assert [u.op for u in before] == ["FusedConv", "FastGelu", "QuickGelu", "SkipLayerNormalization"]
    assert all(u.substitution and u.substitution.startswith("decompose-contrib-ops:") for u in before)
    optimized = fk.optimize(model)
    assert fk.check_trt(optimized) == []
    assert_same_outputs(model, optimized)
    result = fk.build(optimized, optimize=False)
    assert result.engine.nbytes > 0
