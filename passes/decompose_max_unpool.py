"""Decompose ``MaxUnpool`` into a ScatterElements of the values into zeros.

TensorRT cannot parse MaxUnpool. ONNX defines its indices as MaxPool gives them: positions
in the flattened output tensor, [0, N*C*H_out*W_out). So, for an output of static shape S:

    Y = Reshape(ScatterElements(zeros(prod S), Reshape(I, [-1]), Reshape(X, [-1]), axis=0), S)

which copies every value to its position and leaves zeros elsewhere: exact. (Repeated
indices, which overlapping pooling windows can give, are written in an unspecified order by
both ONNX ops; the values written are equal in the MaxPool -> MaxUnpool round trip.)

Must not: rewrite when the output shape is not static.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import make_constant, static_shape
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._pattern import node, np_dtype, replace_pattern, variable


class DecomposeMaxUnpoolPass(NodeRewritePass):
    """Rewrite MaxUnpool of a static output shape as ScatterElements into zeros."""

    name = "decompose-max-unpool"
    stage = Stage.LEGALIZE
    priority = 40
    ops = frozenset({"MaxUnpool"})

    def check(self, graph: gs.Graph, unpool: gs.Node, ctx: PassContext) -> Match[tuple[int, ...]] | Decline:
        out = unpool.outputs[0]
        shape = static_shape(out) if out.shape is not None else None
        if shape is None:
            return Decline("the output shape is not static")
        if unpool.inputs[0].dtype is None:
            return Decline("the input type is unknown")
        return Match(f"MaxUnpool to {list(shape)} written as ScatterElements into zeros", shape)

    def rewrite(self, graph: gs.Graph, unpool: gs.Node, match: Match[tuple[int, ...]], ctx: PassContext) -> None:
        x, indices, out = unpool.inputs[0], unpool.inputs[1], unpool.outputs[0]
        shape = match.data
        base = unpool.name or "MaxUnpool"
        flat = make_constant(graph, f"{base}_flat", np.array([-1], dtype=np.int64))
        nodes: list[gs.Node] = []

        def op(kind: str, inputs: list, like=None, **attrs) -> gs.Tensor:
            result = variable(graph, f"{base}/{kind}_output")
            result.dtype = (like if like is not None else x).dtype
            nodes.append(node(graph, kind, f"{base}/{kind}", inputs, [result], **attrs))
            return result

        zeros = make_constant(graph, f"{base}_zeros", np.zeros(int(np.prod(shape)), dtype=np_dtype(x)))
        scattered = op("ScatterElements", [zeros, op("Reshape", [indices, flat], like=indices),
                                           op("Reshape", [x, flat])], axis=0)
        result = op("Reshape", [scattered, make_constant(graph, f"{base}_shape", np.array(shape, dtype=np.int64))])
        result.shape = out.shape
        replace_pattern(graph, [unpool], out, nodes, result)
