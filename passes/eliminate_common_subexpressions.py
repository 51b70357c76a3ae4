"""Merge nodes that compute the same thing: same op, attributes and input tensors.

Rewrites: of two such nodes, the later one's consumers read the earlier one's outputs.
Nodes are visited in topological order, so merges cascade in one scan. Must not merge
nondeterministic ops (Random*, Multinomial, Bernoulli, Dropout), ops ONNX has no schema
for (custom domains, local functions: they may be random or stateful), nodes with
subgraphs, or two nodes whose outputs are both graph outputs (output names never change).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.graph_edit import NONDETERMINISTIC_OPS, can_replace, constant_array, remove, replace_uses
from fusekit.pass_infra import Decline, Match, Pass, PassContext, Stage


def _attr_key(value: Any) -> Any:
    if isinstance(value, gs.Constant):
        array = np.asarray(constant_array(value))
        return ("tensor", str(array.dtype), array.shape, array.tobytes())
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_attr_key(v) for v in value)
    return (type(value).__name__, repr(value))


def node_key(node: gs.Node, alias: dict[int, gs.Tensor]) -> tuple | None:
    """What makes two nodes compute the same values, or None if the node is never merged.

    ``alias`` maps a merged-away tensor (by id) to the tensor that replaces it.
    """
    if node.op in NONDETERMINISTIC_OPS or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return None
    if not onnx.defs.has(node.op, node.domain or ""):  # a custom op may be random or stateful
        return None
    inputs = tuple(id(alias.get(id(t), t)) for t in node.inputs)
    attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
    return (node.op, node.domain or "", inputs, len(node.outputs), attrs)


def duplicates(graph: gs.Graph):
    """(kept, duplicate) node pairs, in topological order, as if earlier merges had happened."""
    seen: dict[tuple, gs.Node] = {}
    alias: dict[int, gs.Tensor] = {}
    for node in graph.nodes:
        key = node_key(node, alias)
        if key is None:
            continue
        kept = seen.setdefault(key, node)
        if kept is not node:
            yield kept, node
            alias.update((id(b), a) for a, b in zip(kept.outputs, node.outputs))


class EliminateCommonSubexpressionsPass(Pass):
    """Merge nodes with the same op, attributes and inputs."""

    name = "eliminate-common-subexpressions"
    stage = Stage.CLEANUP
    priority = 40

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        merged = 0
        for kept, dup in list(duplicates(graph)):
            if not dup.outputs or not kept.outputs:
                continue
            verdict = self.check(graph, kept, dup)
            if isinstance(verdict, Decline):
                continue
            for old, new in zip(dup.outputs, kept.outputs):
                replace_uses(graph, old, new)
            remove(dup)
            ctx.record(dup, f"merged into identical node {kept.name!r}")
            merged += 1
        return merged

    def check(self, graph: gs.Graph, kept: gs.Node, dup: gs.Node) -> Match | Decline:
        if not all(can_replace(graph, old, new) for old, new in zip(dup.outputs, kept.outputs)):
            return Decline(f"identical to {kept.name!r}, but both write graph outputs")
        return Match(f"merge into identical node {kept.name!r}")

    def inspect(self, graph: gs.Graph, ctx: PassContext):
        for kept, dup in duplicates(graph):
            yield self.finding(dup, self.check(graph, kept, dup))
