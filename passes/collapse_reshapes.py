"""Collapse a chain of reshapes into the last Reshape.

Rewrite: ``Reshape(R(x), b)`` -> ``Reshape(x, b')`` where R is a Reshape, Flatten, Squeeze
or Unsqueeze: all of them keep the elements in row-major order, so only the final shape
matters, and a target without 0 entries (or with ``allowzero=1``, where 0 means an empty
dim) does not depend on the intermediate shape. With ``allowzero=0`` a 0 in b copies the
intermediate dim at that index; b' then says the same thing about x:

- the inner Reshape's target has a positive value there: b' holds that value;
- the inner target has a 0 there (and the inner ``allowzero`` is 0): it copied x's dim,
  so b' keeps the 0, which now copies x's dim directly;
- otherwise a static intermediate dim from shape inference is written into b', and an
  intermediate dim that shape inference names like x's dim at that index (the same
  symbol, e.g. the batch N carried through a Flatten) keeps the 0.

A -1 in b is resolved from the element count, which the chain does not change.

Must not: rewrite when the intermediate is a graph output or read by anything else; when
a 0 in b refers to an intermediate dim that is not known (a -1 of the inner Reshape with
unknown shapes, or an inner ``allowzero=1`` zero); or when a non-constant target may
hold zeros (``allowzero=0``).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, make_constant, producer, remove, sole_use_problem
from fusekit.onnx_nodes import is_default_domain
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage

RESHAPING = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _middle_dim(inner: gs.Node, middle: gs.Tensor, index: int) -> int | str | None:
    """What b' must hold where b copies intermediate dim ``index``: an int, "copy" (keep
    the 0: it copies x's dim), or None (unknown)."""
    if inner.op == "Reshape" and len(inner.inputs) > 1:
        target = constant_array(inner.inputs[1])
        if target is not None and index < np.size(target):
            value = int(np.ravel(target)[index])
            if value > 0:
                return value
            if value == 0 and not inner.attrs.get("allowzero", 0):
                return "copy"
    shape, source = middle.shape, inner.inputs[0].shape
    if shape is None or index >= len(shape):
        return None
    dim = shape[index]
    if isinstance(dim, (int, np.integer)):
        return int(dim) if dim > 0 else None
    if isinstance(dim, str) and dim and source is not None and index < len(source) and source[index] == dim:
        return "copy"  # the same named dim as x's at this index
    return None


class CollapseReshapesPass(NodeRewritePass):
    """Replace Reshape(Reshape/Flatten/Squeeze/Unsqueeze(x), b) by one Reshape of x."""

    name = "collapse-reshapes"
    stage = Stage.CLEANUP
    priority = 24
    ops = frozenset({"Reshape"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match | Decline:
        middle = node.inputs[0]
        inner = producer(middle)
        if inner is None or inner.op not in RESHAPING or not is_default_domain(inner):
            return Decline("input is not produced by a Reshape, Flatten, Squeeze or Unsqueeze")
        problem = sole_use_problem(graph, middle, node)
        if problem:
            return Decline(f"the inner {inner.op} must stay: {problem}")
        if len(node.inputs) < 2 or (inner.op == "Reshape" and len(inner.inputs) < 2):
            return Decline("a Reshape has its shape as an attribute (opset < 5)")
        allowzero = node.attrs.get("allowzero", 0)
        target = constant_array(node.inputs[1])
        if target is None:
            if allowzero:
                return Match(f"{inner.op} then Reshape (allowzero=1) collapsed into one Reshape", None)
            return Decline("target shape is not constant: a 0 in it would copy an intermediate dim")
        target = [int(d) for d in np.ravel(target)]
        if allowzero or 0 not in target:
            return Match(f"{inner.op} then Reshape to {target} collapsed into one Reshape", None)
        new = list(target)
        for i, d in enumerate(target):
            if d != 0:
                continue
            dim = _middle_dim(inner, middle, i)
            if dim is None:
                return Decline(f"target {target} copies intermediate dim {i}, which is not known")
            if dim != "copy":
                new[i] = dim
        return Match(f"{inner.op} then Reshape to {target} collapsed into one Reshape to {new}",
                     None if new == target else new)

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        inner = producer(node.inputs[0])
        source = inner.inputs[0]
        remove(inner)
        node.inputs[0] = source
        if match.data is not None:
            node.inputs[1] = make_constant(graph, f"{node.name}_shape", np.array(match.data, np.int64))
