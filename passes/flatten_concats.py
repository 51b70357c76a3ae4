"""Flatten a Concat of a Concat on the same axis into one Concat.

Rewrite: ``Concat(a, Concat(b, c, axis=k), d, axis=k)`` -> ``Concat(a, b, c, d, axis=k)``:
concatenation along one axis is associative, so the inner inputs take the inner Concat's
place, in order. Negative axes are normalised against the rank (both Concats have the
rank of their inputs).

Must not: rewrite when the inner Concat's output is a graph output or read by another node
(it would have to stay, and the outer Concat would copy the same data again); when the
axes differ; or when a negative axis meets an unknown rank.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from fusekit.graph_edit import producer, remove, sole_use_problem
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage


def _axis(node: gs.Node) -> int | None:
    axis = int(node.attrs.get("axis", 0))
    if axis >= 0:
        return axis
    shape = node.outputs[0].shape
    if shape is None:
        shape = next((t.shape for t in node.inputs if t.shape is not None), None)
    return None if shape is None else axis + len(shape)


class FlattenConcatsPass(NodeRewritePass):
    """Replace a Concat input made by a Concat on the same axis (read only there) by that Concat's inputs."""

    name = "flatten-concats"
    stage = Stage.CLEANUP
    priority = 28
    ops = frozenset({"Concat"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match | Decline:
        inners = [producer(t) for t in node.inputs]
        inners = [n for n in inners if n is not None and n.op == "Concat" and (n.domain or "") in self.domains]
        if not inners:
            return Decline("no input is produced by a Concat")
        axis = _axis(node)
        reasons, flat = [], []
        for inner in {id(n): n for n in inners}.values():  # each inner Concat once, in order
            problem = sole_use_problem(graph, inner.outputs[0], node)
            inner_axis = _axis(inner)
            if problem:
                reasons.append(f"the inner Concat must stay: {problem}")
            elif axis is None or inner_axis is None:
                reasons.append("a negative axis and the rank is unknown")
            elif inner_axis != axis:
                reasons.append(f"the inner Concat joins axis {inner_axis}, this one axis {axis}")
            else:
                flat.append(inner)
        if not flat:
            return Decline(reasons[0])
        return Match(f"{len(flat)} inner Concat(s) on axis {axis} flattened into this one", flat)

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        by_output = {id(inner.outputs[0]): inner for inner in match.data}
        inputs = []
        for tensor in node.inputs:
            inner = by_output.get(id(tensor))
            inputs.extend(inner.inputs if inner is not None else [tensor])
        node.inputs.clear()
        node.inputs.extend(inputs)
        for inner in match.data:
            ctx.record(inner, "flattened into the Concat that reads it")
            remove(inner)
