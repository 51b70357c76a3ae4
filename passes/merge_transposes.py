"""Merge two consecutive Transposes into one, or cancel them.

Rewrite: ``Transpose(Transpose(x, perm=p), perm=q)`` -> ``Transpose(x, perm=r)`` with
``r[i] = p[q[i]]``: output axis i of the pair is axis q[i] of the middle tensor, which is
axis p[q[i]] of x. When r is the identity both nodes go and the consumers read x (if x
is a graph input or constant and the result a graph output, one identity Transpose stays
so the output keeps its name). A missing ``perm`` reverses the axes; it is resolved from
the other Transpose's perm or a known rank.

Must not: rewrite when the middle tensor is a graph output or anything else reads it (the
first Transpose would have to stay, and nothing would be saved), or when a missing perm
cannot be resolved because the rank is unknown.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from fusekit.graph_edit import bypass, can_replace, producer, remove, sole_use_problem
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._permute import resolve_perm


class MergeTransposesPass(NodeRewritePass):
    """Merge Transpose(Transpose(x)) into one Transpose, or remove both when they cancel."""

    name = "merge-transposes"
    stage = Stage.CLEANUP
    priority = 22
    ops = frozenset({"Transpose"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match | Decline:
        middle = node.inputs[0]
        inner = producer(middle)
        if inner is None or inner.op != "Transpose" or (inner.domain or "") not in self.domains:
            return Decline("input is not produced by a Transpose")
        problem = sole_use_problem(graph, middle, node)
        if problem:
            return Decline(f"the first Transpose must stay: {problem}")
        outer_perm = node.attrs.get("perm")
        p = resolve_perm(inner, len(outer_perm) if outer_perm is not None else None)
        q = resolve_perm(node, len(p) if p is not None else None)
        if p is None or q is None:
            return Decline("a Transpose has no perm and the rank is unknown")
        if sorted(p) != list(range(len(p))) or sorted(q) != sorted(p):
            return Decline(f"perms {p} and {q} are not permutations of the same rank")
        merged = [p[i] for i in q]
        source = inner.inputs[0]
        if merged == list(range(len(merged))):
            if can_replace(graph, node.outputs[0], source):
                return Match(f"Transposes {p} then {q} cancel: both removed", (merged, True))
            return Match(f"Transposes {p} then {q} cancel: one identity Transpose kept for the graph "
                         "output's name", (merged, False))
        return Match(f"Transposes {p} then {q} merged into one with perm {merged}", (merged, False))

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        merged, cancel = match.data
        inner = producer(node.inputs[0])
        source = inner.inputs[0]
        remove(inner)
        node.inputs[0] = source
        node.attrs["perm"] = merged
        if cancel:
            bypass(graph, node, 0)
