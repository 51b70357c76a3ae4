"""Drop an unused ``Indices`` output of MaxPool (TensorRT rejects MaxPool with two outputs).

TensorRT's parser refuses any MaxPool that declares its second output, used or not, and
PyTorch exports ``max_pool2d(return_indices=True)`` with it even when only the values are
used. When nothing reads the indices, the node is rewritten to declare only ``Y``: the
values are unchanged, exactly.

Must not: drop indices that a node reads or that are a graph output.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from fusekit.graph_edit import live_consumers
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage


class DropUnusedIndicesPass(NodeRewritePass):
    """Drop MaxPool's Indices output when nothing reads it."""

    name = "drop-unused-indices"
    stage = Stage.LEGALIZE
    priority = 20
    ops = frozenset({"MaxPool"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match[None] | Decline:
        if len(node.outputs) < 2:
            return Decline("no Indices output")
        indices = node.outputs[1]
        if any(t is indices for t in graph.outputs):
            return Decline(f"Indices {indices.name!r} is a graph output")
        readers = live_consumers(indices)
        if readers:
            return Decline(f"Indices {indices.name!r} is read by {readers[0].op} {readers[0].name!r}")
        return Match("unused Indices output of MaxPool dropped")

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match[None], ctx: PassContext) -> None:
        node.outputs = node.outputs[:1]
