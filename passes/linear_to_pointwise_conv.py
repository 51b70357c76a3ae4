"""Turn channels-last Linear layers that end in a transpose to NCHW into 1x1 convolutions.

ConvNeXt-style blocks apply their pointwise Linear layers to a channels-last view of an
NCHW activation and transpose back afterwards:

    y = Transpose(z, [0, 2, 3, 1])                       # NHWC
    y = L_k(R_k(... L_2(R_1(L_1(y)))))                   # Linear L_i, pointwise regions R_i
    out = Transpose(y, [0, 3, 1, 2])                     # back to NCHW

with ``L_i(a) = MatMul(a, W_i) + b_i`` (W_i a constant [K, N], b_i a constant broadcast over
the last axis; the Add may be absent) and R_k possibly empty. With T = Transpose(., [0, 3, 1, 2]):

    T(a @ W + b) = Conv(T(a), W^T reshaped to [N, K, 1, 1], b)

(the same products summed). A pointwise region R (unary ops, or binary ops whose other
operands are constants varying at most along the last axis) commutes with T once each
constant of shape [..., C] is re-laid as [1, C, 1, 1]. So the closing transpose moves to
the start of the chain: ``T(a_1) -> Conv_1 -> R_1' -> ... -> Conv_k -> R_k'``, each MatMul
(+ Add) one Conv, which TensorRT fuses with the pointwise ops around it.

Must not: rewrite when the closing Transpose's perm is not [0, 3, 1, 2] or its input does
not come (through a region) from a Linear on a rank-4 tensor; when a weight is not a rank-2
constant (or a Transpose of one); when a bias is not a constant or varies along any axis
but the last; when the element type is not float16 or float32 (no float64 Conv in
onnxruntime or TensorRT); when an intermediate is a graph output or read outside the
chain (it would be seen in the other layout); when a region constant varies along another
axis or has a rank above 4. A chain stops at the first Linear whose input does not come,
through such a region, from another Linear.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.graph_edit import (constant_array, is_graph_io, live_consumers, make_constant, onnx_type, producer,
                                remove, replace_uses, sole_use_problem)
from fusekit.onnx_nodes import is_default_domain
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._channel_affine import matrix_weight
from fusekit.passes._pattern import node as new_node, variable
from fusekit.passes._permute import BROADCASTING, UNARY

TO_NCHW = [0, 3, 1, 2]
FLOATS = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT}  # no float64 Conv in onnxruntime or TensorRT
MAX_REGION = 32


class _Linear:
    """One matched Linear: its MatMul (and bias Add), input, output, stored weight (and
    whether it is stored [N, K], behind a Transpose) and bias [N]."""

    def __init__(self, matmul: gs.Node, add: gs.Node | None, weight: gs.Tensor, transposed: bool,
                 bias: np.ndarray | None):
        self.matmul, self.add, self.weight, self.transposed, self.bias = matmul, add, weight, transposed, bias
        self.input = matmul.inputs[0]
        self.output = (add or matmul).outputs[0]

    def weight_nk(self) -> np.ndarray:
        """The weight as stored for a convolution, [N, K] (read here, in the rewrite only)."""
        value = constant_array(self.weight)
        return value if self.transposed else np.transpose(value)


def _linear(graph: gs.Graph, out: gs.Tensor) -> _Linear | str:
    """The Linear computing ``out`` on a rank-4 float tensor, or why there is none."""
    node = producer(out)
    if node is None or not is_default_domain(node) or node.op not in ("Add", "MatMul"):
        return f"input comes from {'a graph input or constant' if node is None else node.op}, not a Linear"
    add, bias = None, None
    if node.op == "Add":
        add = node
        pairs = ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0]))
        sources = [(producer(t), other) for t, other in pairs]
        found = [(m, b) for m, b in sources if m is not None and m.op == "MatMul" and constant_array(b) is not None]
        if not found:
            return "Add is not a MatMul plus a constant bias"
        node, bias_tensor = found[0]
        problem = sole_use_problem(graph, node.outputs[0], add)
        if problem:
            return f"the MatMul result must stay: {problem}"
        bias = constant_array(bias_tensor)
    matmul = node
    a = matmul.inputs[0]
    if a.shape is None or len(a.shape) != 4:
        return f"MatMul input has rank {'unknown' if a.shape is None else len(a.shape)}, not 4"
    if onnx_type(a.dtype) not in FLOATS:
        return "element type is not float16 or float32"
    weight = matrix_weight(matmul.inputs[1], "weight is not a constant (or a Transpose of a rank-2 constant)")
    if isinstance(weight, str):
        return weight
    stored, transposed, stored_shape = weight
    n = stored_shape[0 if transposed else 1]
    if bias is not None:
        shape = np.shape(bias)
        if len(shape) > 4 or any(d != 1 for d in shape[:-1]) or (shape and shape[-1] not in (1, n)):
            return f"bias of shape {list(shape)} varies along an axis other than the last"
        bias = np.broadcast_to(np.ravel(bias), (n,))  # cast to the weight's type in the rewrite
    return _Linear(matmul, add, stored, transposed, bias)


def _channel_constant(value: np.ndarray) -> bool:
    """Whether a constant varies at most along the last (channel) axis of a rank-4 tensor."""
    return np.ndim(value) <= 4 and all(d == 1 for d in np.shape(value)[:-1])


def _to_nchw(value: np.ndarray) -> np.ndarray:
    """A channel constant in the NCHW layout: [..., C] -> [1, C, 1, 1]."""
    padded = np.reshape(value, (1,) * (4 - np.ndim(value)) + np.shape(value))
    return np.ascontiguousarray(np.transpose(padded, TO_NCHW))


def _pointwise(node: gs.Node | None) -> bool:
    """Whether ``node`` computes each element from the same position only (constants being
    one-element or per channel) and is not a Linear's bias Add (which ends a region)."""
    if node is None or not is_default_domain(node) or node.op not in UNARY | BROADCASTING | {"Clip"}:
        return False
    if node.op == "Add" and any(producer(t) is not None and producer(t).op == "MatMul" for t in node.inputs):
        return False
    if node.op in BROADCASTING:
        values = [constant_array(t) for t in node.inputs]
        return all(v is None or _channel_constant(v) for v in values)
    return True


def _region(graph: gs.Graph, a: gs.Tensor, reader: gs.Node) -> tuple[gs.Tensor, list[gs.Node]] | str:
    """The pointwise nodes computing ``a`` (read by ``reader`` alone) from one tensor, and
    that tensor; or why there is no such region."""
    nodes: list[gs.Node] = []
    entry, stack, seen = None, [a], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        source = producer(t)
        if not _pointwise(source):
            if entry is not None:
                return f"the input is computed from two tensors ({entry.name!r}, {t.name!r})"
            entry = t
            continue
        if len(nodes) == MAX_REGION:
            return f"more than {MAX_REGION} pointwise ops after a Linear"
        nodes.append(source)
        if source.op in UNARY and len(source.inputs) != 1:
            return f"{source.op} {source.name!r} has extra inputs"
        for bound in (source.inputs[1:] if source.op == "Clip" else []):
            if bound.name and constant_array(bound) is None:
                return f"Clip {source.name!r} bounds are not constants"
        operands = source.inputs[:1] if source.op in UNARY | {"Clip"} else source.inputs
        stack.extend(t for t in operands if constant_array(t) is None)
    members = {id(n) for n in nodes} | {id(reader)}
    for t in [entry] + [n.outputs[0] for n in nodes]:
        if is_graph_io(graph, t):
            return f"{t.name!r} is a graph output"
        outside = [c for c in live_consumers(t) if id(c) not in members]
        if outside:
            return f"{t.name!r} is also read by {outside[0].op} {outside[0].name!r}"
    return entry, nodes


class LinearToPointwiseConvPass(NodeRewritePass):
    """Rewrite channels-last Linear chains closed by a Transpose to NCHW as 1x1 Convs."""

    name = "linear-to-pointwise-conv"
    stage = Stage.FUSION
    priority = 35  # after fold-scale-into-weights (30) has folded layer-scale Muls into the weights
    ops = frozenset({"Transpose"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match | Decline:
        perm = node.attrs.get("perm")
        if perm is None or [int(p) for p in perm] != TO_NCHW:
            return Decline(f"perm {None if perm is None else list(perm)} is not {TO_NCHW} (channels-last to NCHW)")
        region = _region(graph, node.inputs[0], node)
        if isinstance(region, str):
            return Decline(region)
        entry, trailing = region
        last = _linear(graph, entry)
        if isinstance(last, str):
            return Decline(last)
        chain, regions = [last], [trailing]
        while len(chain) < 64:
            region = _region(graph, chain[-1].input, chain[-1].matmul)
            if isinstance(region, str):
                break
            entry, nodes = region
            previous = _linear(graph, entry)
            if isinstance(previous, str):
                break
            chain.append(previous)
            regions.append(nodes)
        chain.reverse()
        regions.reverse()
        count = f"{len(chain)} Linear layers" if len(chain) > 1 else "a Linear layer"
        return Match(f"{count} before Transpose {TO_NCHW} written as 1x1 Conv, the Transpose moved before them",
                     (chain, regions))

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        chain, regions = match.data
        first, before_close, final = chain[0].input, node.inputs[0], node.outputs[0]
        link = variable(graph, f"{first.name}_nchw")
        link.dtype = first.dtype
        graph.nodes.append(new_node(graph, "Transpose", f"{node.name}_before", [first], [link], perm=TO_NCHW))
        remove(node)
        for i, (linear, region) in enumerate(zip(chain, regions)):
            last = i == len(chain) - 1
            weight_nk = linear.weight_nk()
            weight = make_constant(graph, f"{linear.matmul.name}_conv_weight",
                                   np.reshape(weight_nk, weight_nk.shape + (1, 1)))
            inputs = [link, weight]
            if linear.bias is not None:
                inputs.append(make_constant(graph, f"{linear.matmul.name}_conv_bias",
                                            linear.bias.astype(weight_nk.dtype)))
            out = final if last and not region else variable(graph, f"{linear.output.name}_nchw")
            out.dtype = linear.output.dtype
            graph.nodes.append(new_node(graph, "Conv", f"{linear.matmul.name}_conv", inputs, [out],
                                        kernel_shape=[1, 1]))
            following = None if last else chain[i + 1].input
            for old in (linear.matmul, linear.add):
                if old is not None:
                    ctx.record(old, "written as a 1x1 Conv")
                    remove(old)
            if out is final:
                break
            # the region now computes on the Conv's NCHW result: channel constants re-laid
            replace_uses(graph, linear.output, out)
            for member in region:
                for j, t in enumerate(member.inputs):
                    value = constant_array(t)
                    if value is not None and np.size(value) != 1 and member.op in BROADCASTING:
                        member.inputs[j] = make_constant(graph, f"{t.name}_nchw", _to_nchw(value))
                for t in member.outputs:
                    t.shape = None
            if last:
                closing = producer(before_close)
                closing.outputs[closing.outputs.index(before_close)] = final
            else:
                link = out if following is linear.output else following
