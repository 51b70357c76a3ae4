"""Edge-case models built by code (issue 15): what real exports and hand-edited models look
like when they are not tidy. Each builder returns a model onnxruntime runs (unless said)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), value_info=(), name="g", opsets=OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=list(opsets), ir_version=8)


def _x(shape=("N", 4)):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))


def _w(name, shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _body():
    """x -> MatMul -> Add -> Identity -> Relu: something for the passes to do."""
    return [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
            helper.make_node("Add", ["m", "b"], ["a"], name="add"),
            helper.make_node("Identity", ["a"], ["i"], name="id"),
            helper.make_node("Relu", ["i"], ["y"], name="relu")], [_w("w", (4, 4)), _w("b", (4,))]


def unsorted_graph() -> onnx.ModelProto:
    nodes, inits = _body()
    return _model(nodes[::-1], [_x()], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)


def unnamed_graph() -> onnx.ModelProto:
    nodes, inits = _body()
    return _model(nodes, [_x()], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits, name="")


def duplicate_value_info() -> onnx.ModelProto:
    nodes, inits = _body()
    vi = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4])
    return _model(nodes, [_x()], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits,
                  value_info=[vi, vi])


def contradictory_value_info() -> onnx.ModelProto:
    """value_info says [N, 7] where the graph computes [N, 4] (a stale annotation)."""
    nodes, inits = _body()
    return _model(nodes, [_x()], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits,
                  value_info=[helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 7]),
                              helper.make_tensor_value_info("a", TensorProto.DOUBLE, ["N", 4])])


def output_of_unknown_rank() -> onnx.ModelProto:
    """The graph output declares only an element type (no shape), like many exports."""
    nodes, inits = _body()
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _model(nodes, [_x()], [out], inits)


def output_without_type() -> onnx.ModelProto:
    nodes, inits = _body()
    out = onnx.ValueInfoProto(name="y")
    return _model(nodes, [_x()], [out], inits)


def inference_error_on_one_node() -> onnx.ModelProto:
    """A Sum whose declared output contradicts what inference finds (a shape-inference error
    on that node alone); onnxruntime runs it."""
    nodes, inits = _body()
    nodes.append(helper.make_node("Sum", ["y", "x"], ["s"], name="sum"))
    return _model(nodes, [_x()], [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 4])], inits,
                  value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5, 7])])


def unknown_op_custom_domain() -> onnx.ModelProto:
    """An op of an unregistered domain (a TensorRT plugin, say): kept as it is. onnxruntime
    cannot run it."""
    nodes, inits = _body()
    nodes.append(helper.make_node("FancyPlugin", ["y"], ["z"], name="plugin", domain="com.example"))
    return _model(nodes, [_x()], [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits,
                  opsets=OPSET + [helper.make_opsetid("com.example", 1)])


def unknown_op_default_domain() -> onnx.ModelProto:
    """``No Op registered for FAKE``: an op no schema knows, in the default domain."""
    nodes, inits = _body()
    nodes.append(helper.make_node("FAKE", ["y"], ["z"], name="fake"))
    return _model(nodes, [_x()], [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)


def weightless() -> onnx.ModelProto:
    """Initializers with dims and type but no data, as weight-stripping tools write them."""
    model = unsorted_graph()
    model.graph.node.sort(key=lambda n: ["mm", "add", "id", "relu"].index(n.name))
    for t in model.graph.initializer:
        t.ClearField("raw_data")
        del t.float_data[:]
    return model


def attention_block() -> onnx.ModelProto:
    """Scaled dot-product attention of one head, as exports write it (Transpose, MatMul, Div,
    Softmax, MatMul)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8])
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Div", ["s", "scale"], ["sd"]),
             helper.make_node("Softmax", ["sd"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    inits = [_w("wq", (8, 8)), _w("wk", (8, 8)), _w("wv", (8, 8)),
             numpy_helper.from_array(np.array(np.sqrt(8), np.float32), "scale")]
    return _model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8])], inits)


def if_subgraph() -> onnx.ModelProto:
    """An If with Identity chains inside both branches."""
    def branch(name, op):
        return helper.make_graph([helper.make_node("Identity", ["x"], [f"{name}_i"]),
                                  helper.make_node(op, [f"{name}_i"], [f"{name}_o"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_o", TensorProto.FLOAT, ["N", 4])])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "Relu"),
                            else_branch=branch("else", "Neg"))
    return _model([node], [_x(), cond], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])


CASES = {f.__name__: f for f in (unsorted_graph, unnamed_graph, duplicate_value_info, contradictory_value_info,
                                  output_of_unknown_rank, output_without_type, inference_error_on_one_node,
                                  unknown_op_custom_domain, unknown_op_default_domain, weightless,
                                  attention_block, if_subgraph)}
