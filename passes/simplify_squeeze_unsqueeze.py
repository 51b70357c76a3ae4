"""Cancel Squeeze/Unsqueeze pairs and merge chains of the same kind.

Rewrites (axes normalised to non-negative, each against the rank it refers to):

- ``Unsqueeze(Squeeze(x, s), u)`` -> x when u = s: the dims Squeeze removed (size 1, or
  Squeeze would have failed) are put back where they were.
- ``Squeeze(Unsqueeze(x, u), s)`` -> x when s = u (a Squeeze without axes counts when x's
  shape is static and has no dim of size 1).
- ``Unsqueeze(Unsqueeze(x, u1), u2)`` -> ``Unsqueeze(x, u)``: u2 is kept, and each axis of
  u1 moves to the output position of that intermediate axis (the j-th position not in u2).
- ``Squeeze(Squeeze(x, s1), s2)`` -> ``Squeeze(x, s)``: s1 is kept, and each axis of s2 is
  mapped back to x (the j-th axis of x not in s1).

- ``Unsqueeze(R(x, axes=a, keepdims=0), u)`` -> ``R(x, axes=a, keepdims=1)`` when u = a, for
  a reduction R (ReduceSum, ReduceMean, ReduceMax, ... and ArgMax/ArgMin on ``axis``): the
  Unsqueeze puts back exactly the size-1 dims keepdims=1 keeps. Without axes a Reduce*
  reduces every axis (unless ``noop_with_empty_axes=1``, then declined).

Axes are written the way the model's opset wants them: the ``axes`` attribute before
opset 13, the ``axes`` input from 13 on (both forms are read).

Must not: rewrite when the intermediate is a graph output or read by anything else; when
axes are not constant, or negative with an unknown rank; when a Squeeze has no axes and
the shape it squeezes is not static (which dims are 1 would be a runtime fact); or when
pair axes differ (the pair then moves dims, which is not a no-op).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import bypass, can_replace, constant_array, make_constant, producer, remove, \
    sole_use_problem, static_shape
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage

PAIR_OPS = frozenset({"Squeeze", "Unsqueeze"})
REDUCTIONS = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"})


def read_axes(node: gs.Node) -> list[int] | None | str:
    """The node's axes as written: a list, None (a Squeeze with no axes), or "dynamic"."""
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = constant_array(node.inputs[1])
        return "dynamic" if value is None else [int(a) for a in np.ravel(value)]
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def _reduced_axes(node: gs.Node, rank: int | None) -> list[int] | str:
    """The axes a reduction removes (normalised, sorted), or why they are not known."""
    if node.op in ("ArgMax", "ArgMin"):
        axes = [int(node.attrs.get("axis", 0))]
    else:
        axes = read_axes(node)
        if axes == "dynamic":
            return "the reduction's axes are not constant"
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return "the reduction has no axes and noop_with_empty_axes=1"
            if rank is None:
                return "the reduction reduces every axis and the rank is unknown"
            return list(range(rank))
    normalized = _normalize(axes, rank)
    return "the reduction has negative axes and the rank is unknown" if normalized is None else normalized


def _rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def _normalize(axes: list[int], rank: int | None) -> list[int] | None:
    if any(a < 0 for a in axes):
        if rank is None:
            return None
        axes = [a + rank if a < 0 else a for a in axes]
    return sorted(axes)


def _squeezed_axes(node: gs.Node, data: gs.Tensor, rank: int | None) -> list[int] | None:
    """A Squeeze's axes against ``data``'s rank; without axes, the static 1-dims of ``data``."""
    axes = read_axes(node)
    if axes is None:
        shape = static_shape(data)
        return None if shape is None else [i for i, d in enumerate(shape) if d == 1]
    return _normalize(axes, _rank(data) if rank is None else rank)


def _interleave(kept: list[int], inner: list[int]) -> list[int]:
    """Positions ``kept`` stay; ``inner`` indexes the remaining positions, in order."""
    taken, free, position = set(kept), [], 0
    while len(free) <= max(inner, default=-1):
        if position not in taken:
            free.append(position)
        position += 1
    return sorted(set(kept) | {free[j] for j in inner})


class SimplifySqueezeUnsqueezePass(NodeRewritePass):
    """Cancel Squeeze/Unsqueeze pairs on the same axes; merge consecutive Squeezes or Unsqueezes;
    fold an Unsqueeze that restores a reduction's removed axes into keepdims=1."""

    name = "simplify-squeeze-unsqueeze"
    stage = Stage.CLEANUP
    priority = 26
    ops = PAIR_OPS

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match[tuple[str, list[int] | None]] | Decline:
        middle = node.inputs[0]
        inner = producer(middle)
        if inner is None or (inner.domain or "") not in self.domains or \
                inner.op not in (PAIR_OPS | REDUCTIONS if node.op == "Unsqueeze" else PAIR_OPS):
            return Decline("input is not produced by a Squeeze, Unsqueeze or (for an Unsqueeze) a reduction")
        problem = sole_use_problem(graph, middle, node)
        if problem:
            return Decline(f"the inner {inner.op} must stay: {problem}")
        if inner.op in REDUCTIONS:
            return self._check_reduction(inner, node)
        source = inner.inputs[0]
        rank = _rank(source)
        if read_axes(inner) == "dynamic" or read_axes(node) == "dynamic":
            return Decline("axes are not constant")
        if any(n.op == "Unsqueeze" and read_axes(n) is None for n in (inner, node)):
            return Decline("an Unsqueeze has no axes")
        if inner.op == "Squeeze":
            first = _squeezed_axes(inner, source, rank)
            if first is None:
                return Decline("the inner Squeeze's axes are not known (negative or none, without a static shape)")
            middle_rank = None if rank is None else rank - len(first)
        else:
            u = read_axes(inner)
            middle_rank = None if rank is None else rank + len(u)
            first = _normalize(u, middle_rank)
            if first is None:
                return Decline("the inner Unsqueeze has negative axes and the rank is unknown")
        if node.op == "Squeeze":
            second = _squeezed_axes(node, middle, middle_rank) if read_axes(node) is not None or inner.op == "Squeeze" \
                else self._squeeze_all_after_unsqueeze(source, first)
        else:
            u = read_axes(node)
            second = _normalize(u, None if middle_rank is None else middle_rank + len(u))
        if second is None:
            return Decline(f"the outer {node.op}'s axes are not known (negative or none, without a static shape)")
        if inner.op != node.op:
            if first != second:
                return Decline(f"{inner.op} axes {first} and {node.op} axes {second} differ")
            if not can_replace(graph, node.outputs[0], source):
                return Decline("it would join a graph input or constant straight to a graph output")
            return Match(f"{inner.op} and {node.op} on axes {first} cancel: both removed", ("cancel", None))
        if node.op == "Unsqueeze":
            merged = _interleave(second, first)
        else:
            merged = _interleave(first, second)
        return Match(f"{inner.op} axes {first} then {second} merged into one {node.op} on axes {merged}",
                     ("merge", merged))

    @staticmethod
    def _check_reduction(reduce: gs.Node, unsqueeze: gs.Node) -> Match | Decline:
        if int(reduce.attrs.get("keepdims", 1)):
            return Decline(f"the {reduce.op} keeps its dims already")
        rank = _rank(reduce.inputs[0])
        reduced = _reduced_axes(reduce, rank)
        if isinstance(reduced, str):
            return Decline(reduced)
        u = read_axes(unsqueeze)
        if u == "dynamic" or u is None:
            return Decline("the Unsqueeze's axes are not constant")
        inserted = _normalize(u, None if rank is None else rank - len(reduced) + len(u))
        if inserted is None:
            return Decline("the Unsqueeze has negative axes and the rank is unknown")
        if inserted != reduced:
            return Decline(f"{reduce.op} axes {reduced} and Unsqueeze axes {inserted} differ")
        return Match(f"{reduce.op} (keepdims=0) then Unsqueeze of the same axes {reduced} written as one "
                     f"{reduce.op} with keepdims=1", ("keepdims", None))

    @staticmethod
    def _squeeze_all_after_unsqueeze(source: gs.Tensor, inserted: list[int]) -> list[int] | None:
        """Squeeze without axes after Unsqueeze(source): the inserted axes, if source has no 1-dims."""
        shape = static_shape(source)
        if shape is None or 1 in shape:
            return None
        return inserted

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match[tuple[str, list[int] | None]], ctx: PassContext) -> None:
        kind, merged = match.data
        inner = producer(node.inputs[0])
        if kind == "keepdims":
            inner.attrs["keepdims"] = 1
            node.inputs[0].shape = node.outputs[0].shape
            bypass(graph, node, 0)
            return
        source = inner.inputs[0]
        remove(inner)
        node.inputs[0] = source
        if kind == "cancel":
            bypass(graph, node, 0)
            return
        if graph.opset >= 13:
            node.attrs.pop("axes", None)
            axes = make_constant(graph, f"{node.name}_axes", np.array(merged, np.int64))
            node.inputs.clear()
            node.inputs.extend([source, axes])
        else:
            node.attrs["axes"] = merged
            while len(node.inputs) > 1:
                node.inputs.pop()
