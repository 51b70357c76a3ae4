"""Rewrite a TopK whose constant K is at or beyond TensorRT's limit as an exact rank sort.

TensorRT builds no TopK with K >= ``K_LIMIT``, and splitting the axis into chunks does not
help (merging the chunks needs such a TopK again). Instead, along the last axis of length N
(static), every element's position in the sorted output is counted:

    rank[i] = #{j : x[j] beats x[i]} + #{j < i : x[j] == x[i]}

("beats": greater for largest=1, less for largest=0), which is ONNX's order, ties to the
lower index. Without NaN these ranks are a permutation of 0..N-1, so ``ScatterElements``
puts each value (and its index) at its rank: the fully sorted axis, then ``Slice`` keeps
the first K. Values and indices are exactly onnxruntime's. Cost: N x N comparisons per row.

Must not: rewrite K below the limit, a non-constant K, an unknown axis length, a
non-float input, ``sorted=0`` (the order is then the runtime's choice), or models below
opset 13 (Unsqueeze/ReduceSum take axes as inputs from 13 on). NaN has no defined place
in TopK's order; with NaN in a row the rewrite's output for that row is not specified.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, make_constant
from fusekit.pass_infra import Decline, Match, NodeRewritePass, Option, PassContext, Stage
from fusekit.passes._pattern import float_type, node, variable

K_LIMIT = Option("topk_k_limit", int, 3840, "Split TopK whose K is at least this (tensorrt_rtx 1.7: K < 3840).",
                 metavar="K")


class SplitTopKPass(NodeRewritePass):
    """Rewrite TopK with K >= 3840 (static axis) as rank counting + ScatterElements + Slice."""

    name = "split-topk"
    stage = Stage.LEGALIZE
    priority = 40
    ops = frozenset({"TopK"})
    options = (K_LIMIT,)

    def check(self, graph: gs.Graph, topk: gs.Node, ctx: PassContext) -> Match[tuple[int, int, int, int, bool]] | Decline:
        limit = ctx.get(K_LIMIT)
        if len(topk.inputs) < 2:
            return Decline("K is an attribute (opset < 10)")
        k_value = constant_array(topk.inputs[1])
        if k_value is None or k_value.size != 1:
            return Decline("K is not a constant")
        k = int(np.asarray(k_value).ravel()[0])
        if k < limit:
            return Decline(f"K = {k} is below TensorRT's limit ({limit})")
        if (graph.opset or 0) < 13:
            return Decline(f"opset {graph.opset} < 13 (Unsqueeze/ReduceSum axes inputs needed)")
        x = topk.inputs[0]
        if float_type(x) is None:
            return Decline("the input is not of a known float type")
        if x.shape is None:
            return Decline("the input rank is unknown")
        rank = len(x.shape)
        axis = int(topk.attrs.get("axis", -1))
        axis = axis + rank if axis < 0 else axis
        if rank == 0 or not 0 <= axis < rank:
            return Decline(f"axis {topk.attrs.get('axis', -1)} out of range")
        n = x.shape[axis]
        if not isinstance(n, (int, np.integer)) or n < 0:
            return Decline("the length of the TopK axis is not static")
        n = int(n)
        if k > n:
            return Decline(f"K = {k} exceeds the axis length {n}")
        if int(topk.attrs.get("sorted", 1)) != 1:
            return Decline("sorted=0: the output order is the runtime's choice, no exact rewrite")
        if len(topk.outputs) != 2:
            return Decline("TopK does not declare two outputs")
        largest = int(topk.attrs.get("largest", 1)) == 1
        return Match(f"TopK with K = {k} over {n} elements written as a rank sort (ScatterElements) and Slice",
                     (k, n, axis, rank, largest))

    def rewrite(self, graph: gs.Graph, topk: gs.Node, match: Match[tuple[int, int, int, int, bool]], ctx: PassContext) -> None:
        k, n, axis, rank, largest = match.data
        x = topk.inputs[0]
        values, indices = topk.outputs
        base = topk.name or "TopK"
        nodes: list[gs.Node] = []

        def op(kind: str, inputs: list[gs.Tensor], dtype=None, **attrs) -> gs.Tensor:
            result = variable(graph, f"{base}/{kind}_output")
            result.dtype = dtype
            nodes.append(node(graph, kind, f"{base}/{kind}", inputs, [result], **attrs))
            return result

        def const(name: str, value) -> gs.Constant:
            return make_constant(graph, f"{base}_{name}", np.asarray(value))

        # Work on the last axis.
        perm = list(range(rank))
        if axis != rank - 1:
            perm[axis], perm[-1] = perm[-1], perm[axis]
            x = op("Transpose", [x], x.dtype, perm=perm)
        col = op("Unsqueeze", [x, const("axes_col", np.array([-1], np.int64))], x.dtype)  # x[i] at [..., i, 0]
        row = op("Unsqueeze", [x, const("axes_row", np.array([-2], np.int64))], x.dtype)  # x[j] at [..., 0, j]
        beats = op("Greater" if largest else "Less", [row, col], np.bool_)
        equal = op("Equal", [row, col], np.bool_)
        positions = np.arange(n, dtype=np.int64)
        earlier = op("Less", [const("j", positions.reshape(1, n)), const("i", positions.reshape(n, 1))], np.bool_)
        before = op("Or", [beats, op("And", [equal, earlier], np.bool_)], np.bool_)
        counts = op("Cast", [before], np.int32, to=6)
        ranks32 = op("ReduceSum", [counts, const("axes_sum", np.array([-1], np.int64))], np.int32, keepdims=0)
        ranks = op("Cast", [ranks32], np.int64, to=7)
        sorted_values = op("ScatterElements", [x, ranks, x], x.dtype, axis=-1)
        shape = op("Shape", [x], np.int64)
        index_grid = op("Expand", [const("positions", positions), shape], np.int64)
        sorted_indices = op("ScatterElements", [index_grid, ranks, index_grid], np.int64, axis=-1)

        def finish(result: gs.Tensor, old: gs.Tensor) -> None:
            if k < n:
                result = op("Slice", [result, const("starts", np.array([0], np.int64)),
                                      const("ends", np.array([k], np.int64)),
                                      const("slice_axes", np.array([-1], np.int64))], result.dtype)
            if axis != rank - 1:
                result = op("Transpose", [result], result.dtype, perm=perm)
            # The result's producer writes the original output tensor: names, types, shapes kept.
            result.inputs[0].outputs = [old]

        topk.inputs.clear()
        topk.outputs.clear()
        finish(sorted_values, values)
        finish(sorted_indices, indices)
        graph.nodes.extend(nodes)
