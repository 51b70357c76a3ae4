"""Remove nodes whose results reach no graph output, and initializers nothing reads.

Rewrites: any node from which no graph output can be reached (nodes have no side
effects in ONNX). Must not remove graph inputs, even unused ones: they are the model's
interface.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from fusekit.graph_order import dead_nodes, prune
from fusekit.pass_infra import Match, Pass, PassContext, Stage


class EliminateDeadCodePass(Pass):
    """Remove nodes whose outputs no graph output depends on."""

    name = "eliminate-dead-code"
    stage = Stage.CLEANUP
    priority = 0

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        dead = prune(graph)
        for node in dead:
            ctx.record(node, "removed: no graph output depends on it")
        return len(dead)

    def inspect(self, graph: gs.Graph, ctx: PassContext):
        for node in dead_nodes(graph):
            yield self.finding(node, Match("remove: no graph output depends on it"))
