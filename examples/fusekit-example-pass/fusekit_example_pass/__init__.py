"""An example third-party fusekit pass, installed through the ``fusekit.passes`` entry point.

Rewrites ``Neg(Neg(x))`` to ``x``. Must not remove the inner Neg when something else
reads it (only the outer one is bypassed then the inner one dies on its own).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from fusekit.graph_edit import bypass, can_replace, producer
from fusekit.pass_infra import Decline, Match, NodeRewritePass, Option, PassContext, Stage

# A declared option: fusekit.optimize(model, double_neg_limit=1), options={...}, or the
# CLI flag `fusekit optimize --double-neg-limit 1`, generated from this declaration.
LIMIT = Option("double_neg_limit", int, 0, "Cancel at most this many Neg pairs per run (0: all).", metavar="N")


class CancelDoubleNegPass(NodeRewritePass):
    """Replace Neg(Neg(x)) by x."""

    name = "cancel-double-neg"
    stage = Stage.FUSION
    priority = 50
    ops = frozenset({"Neg"})
    options = (LIMIT,)

    def start(self, graph: gs.Graph, ctx: PassContext) -> None:
        self.cancelled = 0  # per run: start is called before the checks of every run and inspect

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match[gs.Tensor] | Decline:
        inner = producer(node.inputs[0])
        if inner is None or inner.op != "Neg" or not inner.outputs:
            return Decline("input is not produced by another Neg")
        if not can_replace(graph, node.outputs[0], inner.inputs[0]):
            return Decline("it would join a graph input straight to a graph output")
        if ctx.get(LIMIT) and self.cancelled >= ctx.get(LIMIT):
            return Decline(f"double_neg_limit={ctx.get(LIMIT)} reached")
        return Match("Neg(Neg(x)) replaced by x", inner.inputs[0])

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match[gs.Tensor], ctx: PassContext) -> None:
        node.inputs[0] = match.data
        bypass(graph, node, 0)
        self.cancelled += 1
