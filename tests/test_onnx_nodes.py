"""fusekit.onnx_nodes: one walker for protos and onnx-graphsurgeon graphs, the default domain,
TensorRT's layer names."""

from __future__ import annotations

from types import SimpleNamespace

import onnx
import onnx_graphsurgeon as gs

from fusekit.onnx_nodes import is_default_domain, trt_node_name, walk_nodes

NESTED = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y) {
  a = Relu(x)
  y = If(c) <then_branch = t () => (float[2] o) {
      inner = Neg(a)
      o = If(c) <then_branch = tt () => (float[2] p) { p = Abs(inner) },
                 else_branch = te () => (float[2] q) { q = Exp(inner) }>
    }, else_branch = e () => (float[2] r) { r = Sigmoid(a) }>
}"""


def test_walk_nodes_gives_the_same_nodes_in_the_same_order_for_a_proto_and_a_gs_graph():
    proto = onnx.parser.parse_model(NESTED)
    from_proto = [n.op_type for n in walk_nodes(proto.graph)]
    from_gs = [n.op for n in walk_nodes(gs.import_onnx(proto))]
    assert from_proto == ["Relu", "If", "Neg", "If", "Abs", "Exp", "Sigmoid"]
    assert from_gs == from_proto


def test_default_domain_and_trt_node_names():
    assert [is_default_domain(SimpleNamespace(domain=d)) for d in ("", None, "ai.onnx", "com.microsoft")] == \
        [True, True, True, False]
    named = onnx.helper.make_node("Relu", ["x"], ["y"], name="act")
    unnamed = onnx.helper.make_node("Relu", ["x"], ["y"])
    no_outputs = onnx.helper.make_node("Relu", ["x"], [])
    assert [trt_node_name(n) for n in (named, unnamed, no_outputs)] == ["act", "node_of_y", ""]

