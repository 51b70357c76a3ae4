"""Remove nodes whose results reach no graph output, and initializers nothing reads.

Rewrites: any node from which no graph output can be reached (nodes have no side
effects in ONNX). Must not remove graph inputs, even unused ones: they are the model's
interface.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from fusekit.pass_infra import Match, Pass, PassContext, Stage


def dead_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Nodes that no graph output depends on, found by one walk back from the outputs."""
    live: set[int] = set()
    stack = [t for t in graph.outputs]
    seen: set[int] = set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.inputs:
            if id(node) not in live:
                live.add(id(node))
                stack.extend(node.inputs)
                stack.extend(_outer_inputs(node))
    return [n for n in graph.nodes if id(n) not in live]


def _outer_inputs(node: gs.Node) -> list[gs.Tensor]:
    """Every tensor a node's subgraphs read (outer-scope tensors among them)."""
    found = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            for inner in value.nodes:
                found.extend(inner.inputs)
                found.extend(_outer_inputs(inner))
    return found


class EliminateDeadCodePass(Pass):
    """Remove nodes whose outputs no graph output depends on."""

    name = "eliminate-dead-code"
    stage = Stage.CLEANUP
    priority = 0

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        dead = dead_nodes(graph)
        for node in dead:
            ctx.record(node, "removed: no graph output depends on it")
        if dead:
            graph.cleanup(remove_unused_graph_inputs=False)
        return len(dead)

    def inspect(self, graph: gs.Graph, ctx: PassContext):
        for node in dead_nodes(graph):
            yield self.finding(node, Match("remove: no graph output depends on it"))
