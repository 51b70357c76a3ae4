"""DeformConv -> ModulatedDeformConv2d plugin spec (plugins/deform_conv.py).

The spec's NumPy reference (bilinear sampling, zero outside the image) matches onnxruntime
running the original DeformConv (opset 19, CPU kernel) at batch 1 and 2 on small random
shapes (hypothesis); the substitution is opt-in, maps the attributes to the plugin's
fields and reorders the inputs (x, offset, mask, weight, bias), supplies an exact mask of
ones / zero bias when those are absent and the shapes allow, and declines what the plugin
cannot express; the optimized model parses with tensorrt_rtx into exactly one PLUGIN_V3
layer named for the DeformConv node, builds (dynamic batch, in a subprocess), and the
engine bytes hold the plugin name, the field names and values.
"""

from __future__ import annotations


import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import fusekit.api as fk
from fusekit import registry
from fusekit.pass_infra import Decline
from fusekit.plugin_infra import PLUGIN_DOMAIN
from tests.helpers import run_ort
from tests.plugin_build import parse_and_build



def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def deform_model(c=4, oc=6, hw=(7, 6), k=(3, 2), strides=(1, 1), pads=(1, 0, 1, 0), dilations=(1, 1), group=1,
                 offset_group=1, batch="B", with_mask=True, with_bias=True, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    oh = (hw[0] + pads[0] + pads[2] - dilations[0] * (k[0] - 1) - 1) // strides[0] + 1
    ow = (hw[1] + pads[1] + pads[3] - dilations[1] * (k[1] - 1) - 1) // strides[1] + 1
    inits = [nh.from_array(rng.normal(size=(oc, c // group, *k)).astype(np.float32), "W")]
    ins = ["X", "W", "offset"]
    if with_bias:
        inits.append(nh.from_array(rng.normal(size=oc).astype(np.float32), "B"))
    ins.append("B" if with_bias else "")
    inputs = [h.make_tensor_value_info("X", T.FLOAT, [batch, c, *hw]),
              h.make_tensor_value_info("offset", T.FLOAT, [batch, 2 * offset_group * k[0] * k[1], oh, ow])]
    if with_mask:
        ins.append("mask")
        inputs.append(h.make_tensor_value_info("mask", T.FLOAT, [batch, offset_group * k[0] * k[1], oh, ow]))
    while ins[-1] == "":
        ins.pop()
    node = h.make_node("DeformConv", ins, ["Y"], name="dcn", strides=list(strides), pads=list(pads),
                       dilations=list(dilations), group=group, offset_group=offset_group, kernel_shape=list(k))
    graph = h.make_graph([node], "deform", inputs, [h.make_tensor_value_info("Y", T.FLOAT, [batch, oc, oh, ow])],
                         inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 19)], ir_version=9)


def plugin_node(m: onnx.ModelProto) -> onnx.NodeProto:
    [node] = [n for n in m.graph.node if n.op_type == "ModulatedDeformConv2d"]
    return node


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def feeds(m: onnx.ModelProto, batch: int, rng) -> dict[str, np.ndarray]:
    out = {}
    for vi in m.graph.input:
        shape = [batch if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
        scale = 2.0 if vi.name == "offset" else 1.0  # offsets reach past the border
        out[vi.name] = (rng.normal(size=shape) * scale).astype(np.float32)
    return out


def test_substitution_is_opt_in_and_maps_the_fields():
    m = deform_model(strides=(2, 1), pads=(1, 2, 1, 2), dilations=(1, 2), group=2, offset_group=2)
    assert [n.op_type for n in fk.optimize(m).graph.node] == ["DeformConv"]
    out = fk.optimize(m, plugins=["deform-conv"])
    assert [(n.op_type, n.name, n.domain) for n in out.graph.node] == [("ModulatedDeformConv2d", "dcn", PLUGIN_DOMAIN)]
    node = plugin_node(out)
    assert list(node.input) == ["X", "offset", "mask", "W", "B"] and list(node.output) == ["Y"]
    assert attrs(node) == {"stride": [2, 1], "padding": [1, 2], "dilation": [1, 2], "group": 2,
                           "deformable_group": 2, "plugin_version": b"1", "plugin_namespace": b""}
    assert plugin_node(fk.optimize(m, plugins="auto")).name == "dcn"


def test_missing_mask_and_bias_become_exact_constants_when_shapes_are_static():
    m = deform_model(batch=2, with_mask=False, with_bias=False, offset_group=2)
    out = fk.optimize(m, plugins="deform-conv")
    node = plugin_node(out)
    inits = {i.name: nh.to_array(i) for i in out.graph.initializer}
    mask, bias = inits[node.input[2]], inits[node.input[4]]
    assert mask.shape == (2, 2 * 3 * 2, 7, 5) and np.all(mask == 1.0)
    assert bias.shape == (6,) and np.all(bias == 0.0)
    spec = registry.discover_plugins()[0]["deform-conv"].obj()
    f = feeds(m, 2, np.random.default_rng(1))
    w = inits[node.input[3]]
    got = spec.reference([f["X"], f["offset"], mask, w, bias], attrs(node))[0]
    np.testing.assert_allclose(got, run_ort(m, f)["Y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant, reason", [
    (dict(pads=(1, 0, 0, 0)), "asymmetric pads"),
    (dict(with_mask=False), "no mask"),
])
def test_what_the_plugin_cannot_express_is_declined(variant, reason):
    graph = gs.import_onnx(deform_model(**variant))
    [dcn] = [n for n in graph.nodes if n.op == "DeformConv"]
    verdict = registry.discover_plugins()[0]["deform-conv"].obj().match(graph, dcn)
    assert isinstance(verdict, Decline) and reason in verdict.reason
    out = fk.optimize(deform_model(**variant), plugins="auto")
    assert [n.op_type for n in out.graph.node] == ["DeformConv"]


def test_non_2d_is_declined():
    x = h.make_tensor_value_info("X", T.FLOAT, [1, 2, 5])
    off = h.make_tensor_value_info("offset", T.FLOAT, [1, 6, 3])
    w = nh.from_array(np.ones((2, 2, 3), np.float32), "W")
    node = h.make_node("DeformConv", ["X", "W", "offset"], ["Y"], kernel_shape=[3])
    g = h.make_graph([node], "d1", [x, off], [h.make_tensor_value_info("Y", T.FLOAT, [1, 2, 3])], [w])
    graph = gs.import_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9))
    verdict = registry.discover_plugins()[0]["deform-conv"].obj().match(graph, graph.nodes[0])
    assert isinstance(verdict, Decline) and "2-D only" in verdict.reason


@settings(max_examples=30, deadline=None)
@given(cg=st.integers(1, 3), ocg=st.integers(1, 3), group=st.integers(1, 2), offset_group=st.integers(1, 2),
       hw=st.tuples(st.integers(3, 7), st.integers(3, 7)), k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       strides=st.tuples(st.integers(1, 2), st.integers(1, 2)), pad=st.tuples(st.integers(0, 1), st.integers(0, 1)),
       dilations=st.tuples(st.integers(1, 2), st.integers(1, 2)), seed=st.integers(0, 999))
def test_reference_matches_onnxruntime_at_batch_1_and_2(cg, ocg, group, offset_group, hw, k, strides, pad,
                                                        dilations, seed):
    c = cg * group * offset_group
    if any(out_size(hw[a], k[a], strides[a], pad[a], dilations[a]) < 1 for a in (0, 1)):
        return
    m = deform_model(c=c, oc=ocg * group, hw=hw, k=k, strides=strides, pads=(*pad, *pad), dilations=dilations,
                     group=group, offset_group=offset_group, seed=seed)
    spec = registry.discover_plugins()[0]["deform-conv"].obj()
    out = fk.optimize(m, plugins="deform-conv")
    fields = attrs(plugin_node(out))
    inits = {i.name: nh.to_array(i) for i in m.graph.initializer}
    rng = np.random.default_rng(seed)
    for batch in (1, 2):
        f = feeds(m, batch, rng)
        expected = run_ort(m, f)["Y"]
        [got] = spec.reference([f["X"], f["offset"], f["mask"], inits["W"], inits["B"]], fields)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)




@pytest.mark.trt
def test_optimized_model_parses_and_builds_with_tensorrt(tmp_path):
    m = deform_model(strides=(2, 1), pads=(1, 2, 1, 2), dilations=(1, 2), group=2, offset_group=2)
    out = fk.optimize(m, plugins="deform-conv")
    names = ["ModulatedDeformConv2d", "stride", "padding", "dilation", "group", "deformable_group"]
    values = [np.array(v, np.int32).tobytes().decode("latin-1") for v in ([2, 1], [1, 2], [1, 2])]
    profile = {"X": ((1, 4, 7, 6), (2, 4, 7, 6), (3, 4, 7, 6)), "offset": ((1, 24, 4, 8), (2, 24, 4, 8), (3, 24, 4, 8)),
               "mask": ((1, 12, 4, 8), (2, 12, 4, 8), (3, 12, 4, 8))}
    result = parse_and_build(tmp_path, out, creators=("ModulatedDeformConv2d",), profile=profile,
                             words=names + values)
    assert result["parsed"], result["errors"]
    assert result["plugin_layers"] == ["dcn"]
    assert result["fields"]["ModulatedDeformConv2d"] == [{"stride": [2, 1], "padding": [1, 2], "dilation": [1, 2], "group": 2,
                                 "deformable_group": 2}]
    assert result["outputs"] == [["Y", "DataType.FLOAT", [-1, 6, 4, 8]]]
    assert result["built"]
    assert result["in_engine"] == names + values
