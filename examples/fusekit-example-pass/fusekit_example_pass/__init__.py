"""An example third-party fusekit pass, installed through the ``fusekit.passes`` entry point.

Rewrites ``Neg(Neg(x))`` to ``x``. Must not remove the inner Neg when something else
reads it (only the outer one is bypassed then the inner one dies on its own).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from fusekit.graph_edit import bypass, can_replace, producer
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage


class CancelDoubleNegPass(NodeRewritePass):
    """Replace Neg(Neg(x)) by x."""

    name = "cancel-double-neg"
    stage = Stage.FUSION
    priority = 50
    ops = frozenset({"Neg"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match | Decline:
        inner = producer(node.inputs[0])
        if inner is None or inner.op != "Neg" or not inner.outputs:
            return Decline("input is not produced by another Neg")
        if not can_replace(graph, node.outputs[0], inner.inputs[0]):
            return Decline("it would join a graph input straight to a graph output")
        return Match("Neg(Neg(x)) replaced by x", inner.inputs[0])

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        node.inputs[0] = match.data
        bypass(graph, node, 0)
