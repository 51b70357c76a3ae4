"""Merge a Slice of a Slice on different axes into one Slice.

Rewrite: ``Slice(Slice(x, s1, e1, a1, p1), s2, e2, a2, p2)`` -> ``Slice(x, s1+s2, e1+e2,
a1+a2, p1+p2)`` (lists joined) when the two sets of axes do not meet: slicing one axis
does not move the elements of another, so the two slices commute and one Slice taking
both is the same tensor. Axes default to 0..len(starts)-1 and steps to 1, as ONNX says;
negative axes are normalised against x's rank. Starts, ends, axes and steps are written
as int64.

Must not: rewrite when the intermediate is a graph output or read by anything else; when
starts, ends, axes or steps are not constant; when an axis is sliced by both (merging
those needs the dim's size, and a step, folded in); when negative axes meet an unknown
rank; or before opset 10 (Slice took attributes, written otherwise).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, make_constant, optional_input, producer, remove, sole_use_problem
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage


def _parts(node: gs.Node, rank: int | None) -> tuple[list[int], ...] | str:
    """(starts, ends, axes, steps) of an input-form Slice, axes normalised; or why not."""
    if len(node.inputs) < 3:
        return "the Slice takes attributes (opset < 10)"
    values = []
    for index in range(1, 5):
        tensor = optional_input(node, index)
        value = None if tensor is None else constant_array(tensor)
        if tensor is not None and value is None:
            return "starts, ends, axes or steps are not constant"
        values.append(None if value is None else [int(v) for v in np.ravel(value)])
    starts, ends, axes, steps = values
    axes = list(range(len(starts))) if axes is None else axes
    if any(a < 0 for a in axes):
        if rank is None:
            return "negative axes and the rank is unknown"
        axes = [a + rank if a < 0 else a for a in axes]
    return starts, ends, axes, [1] * len(starts) if steps is None else steps


class MergeSlicesPass(NodeRewritePass):
    """Merge Slice(Slice(x)) on different axes into one Slice."""

    name = "merge-slices"
    stage = Stage.CLEANUP
    priority = 27
    ops = frozenset({"Slice"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match | Decline:
        middle = node.inputs[0]
        inner = producer(middle)
        if inner is None or inner.op != "Slice" or (inner.domain or "") not in self.domains:
            return Decline("input is not produced by a Slice")
        problem = sole_use_problem(graph, middle, node)
        if problem:
            return Decline(f"the inner Slice must stay: {problem}")
        rank = None if inner.inputs[0].shape is None else len(inner.inputs[0].shape)
        first, second = _parts(inner, rank), _parts(node, rank)
        for parts in (first, second):
            if isinstance(parts, str):
                return Decline(parts)
        shared = sorted(set(first[2]) & set(second[2]))
        if shared:
            return Decline(f"both Slices cut axis {shared[0]}")
        merged = tuple(a + b for a, b in zip(first, second))
        return Match(f"Slices on axes {first[2]} and {second[2]} merged into one Slice", merged)

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        inner = producer(node.inputs[0])
        source = inner.inputs[0]
        remove(inner)
        base = node.name or "Slice"
        node.inputs.clear()
        node.inputs.extend([source] + [make_constant(graph, f"{base}_{part}", np.array(values, np.int64))
                                       for part, values in zip(("starts", "ends", "axes", "steps"), match.data)])
