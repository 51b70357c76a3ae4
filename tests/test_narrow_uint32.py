"""narrow-uint32: a UINT32 constant read only by Casts stored as INT32 when its values fit,
outputs equal to onnxruntime (hypothesis), near misses declined, and the real tensorrt_rtx
parser and builder accept the result."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusekit.api as fk
from tests.helpers import inspect_pass, optimize_with

PASS = ["narrow-uint32"]
TP = onnx.TensorProto
TARGETS = [TP.FLOAT, TP.DOUBLE, TP.FLOAT16, TP.INT8, TP.INT16, TP.INT32, TP.INT64, TP.UINT8, TP.UINT16,
           TP.BOOL]


def model(values: np.ndarray, targets: list[int], extra_reader: bool = False) -> onnx.ModelProto:
    """x + Cast(c, to=t) for each target t, each result its own output (the constant is an
    initializer, so no pass folds it before narrow-uint32 runs)."""
    h = onnx.helper
    n = values.size
    nodes, outputs = [], []
    for i, to in enumerate(targets):
        nodes.append(h.make_node("Cast", ["c"], [f"y{i}"], to=to, name=f"Cast_{i}"))
        outputs.append(h.make_tensor_value_info(f"y{i}", to, [n]))
    if extra_reader:
        nodes.append(h.make_node("Identity", ["c"], ["z"], name="Identity_0"))
        outputs.append(h.make_tensor_value_info("z", TP.UINT32, [n]))
    nodes.append(h.make_node("Relu", ["x"], ["r"], name="Relu_0"))
    outputs.append(h.make_tensor_value_info("r", TP.FLOAT, [n]))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [n])], outputs,
                         [onnx.numpy_helper.from_array(values.astype(np.uint32), "c")])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


def run(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def uint32_initializers(m: onnx.ModelProto) -> list[str]:
    return [t.name for t in m.graph.initializer if t.data_type == TP.UINT32]


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.integers(0, 2**31 - 1) | st.integers(0, 70000), min_size=1, max_size=12),
       targets=st.lists(st.sampled_from(TARGETS), min_size=1, max_size=4))
def test_matches_onnxruntime(values, targets):
    m = model(np.array(values, dtype=np.uint32), targets)
    optimized, _ = optimize_with(m, PASS)
    onnx.checker.check_model(optimized, full_check=True)
    assert uint32_initializers(optimized) == []
    feeds = {"x": np.zeros(len(values), np.float32)}
    # Bit-for-bit equal (assert_same_outputs' tolerance arithmetic turns inf - inf, a
    # float16 overflow on both sides, into NaN).
    for name, expected, got in zip([o.name for o in m.graph.output], run(m, feeds), run(optimized, feeds)):
        assert expected.dtype == got.dtype, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_near_misses_are_declined():
    too_big = inspect_pass(model(np.array([1, 2**31], np.uint32), [TP.INT64]), "narrow-uint32")
    assert "does not fit int32" in too_big["Cast_0"][0].message
    to_uint32 = inspect_pass(model(np.array([1], np.uint32), [TP.INT64, TP.UINT32]), "narrow-uint32")
    assert "casts to uint32" in to_uint32["Cast_0"][0].message
    other = inspect_pass(model(np.array([1], np.uint32), [TP.INT64], extra_reader=True), "narrow-uint32")
    assert "graph output" in other["Cast_0"][0].message or "read by Identity" in other["Cast_0"][0].message
    h = onnx.helper
    computed = h.make_model(h.make_graph(
        [h.make_node("Cast", ["x"], ["u"], to=TP.UINT32, name="Cast_0"),
         h.make_node("Cast", ["u"], ["y"], to=TP.INT64, name="Cast_1")], "g",
        [h.make_tensor_value_info("x", TP.FLOAT, [3])], [h.make_tensor_value_info("y", TP.INT64, [3])]),
        opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    findings = inspect_pass(computed, "narrow-uint32")
    assert "computed at run time" in findings["Cast_1"][0].message
    for finding in findings.values():
        assert not finding[0].applies


def test_constant_node_is_narrowed():
    h = onnx.helper
    value = onnx.numpy_helper.from_array(np.array([7, 2**31 - 1], np.uint32))
    m = h.make_model(h.make_graph(
        [h.make_node("Constant", [], ["c"], value=value, name="Constant_0"),
         h.make_node("Cast", ["c"], ["y"], to=TP.INT64, name="Cast_0"),
         h.make_node("Add", ["x", "y"], ["z"], name="Add_0")], "g",
        [h.make_tensor_value_info("x", TP.INT64, [2])], [h.make_tensor_value_info("z", TP.INT64, [2])]),
        opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    optimized, _ = optimize_with(m, PASS)
    onnx.checker.check_model(optimized, full_check=True)
    assert not any(a.t.data_type == TP.UINT32 for n in optimized.graph.node for a in n.attribute)
    assert uint32_initializers(optimized) == []
    feeds = {"x": np.array([-5, 1], np.int64)}
    np.testing.assert_array_equal(run(optimized, feeds)[0], run(m, feeds)[0])


@pytest.mark.trt
def test_tensorrt_rtx_builds_the_result():
    """300000 values cast to int64: fold-constants declines (2.4 MB, over its cap and larger
    than any constant), so the default pipeline leaves the Cast to narrow-uint32."""
    m = model(np.arange(300000, dtype=np.uint32) * 3, [TP.INT64])
    assert "importInitializers" in fk.check_trt(m)[0].reason
    optimized, report = fk.optimize(m, return_report=True)
    assert any(e.pass_name == "narrow-uint32" for e in report.events)
    assert uint32_initializers(optimized) == []
    feeds = {"x": np.zeros(300000, np.float32)}
    for expected, got in zip(run(m, feeds), run(optimized, feeds)):
        np.testing.assert_array_equal(got, expected)
    assert fk.check_trt(optimized) == []
    assert fk.build(optimized, optimize=False).engine.nbytes > 0
