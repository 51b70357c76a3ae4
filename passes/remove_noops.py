"""Remove nodes that compute their input unchanged.

Rewrites (the node's consumers read its input directly):
- ``Identity``; ``Dropout`` in inference (no ``training_mode`` true, mask unused);
- ``Reshape`` to the input's own shape, ``Expand`` to a shape that does not broadcast;
- ``Cast``/``CastLike`` to the input's own type; ``Transpose`` with the identity perm;
- ``Pad`` whose pads are all zero; ``Concat`` of one input; ``Split`` into one output;
- ``Slice`` taking the whole tensor: on every sliced axis step 1, start 0 (or at most -dim)
  and end at least the dim (for a dim that is not static, the largest value of the ends'
  integer type, which exporters write for "to the end");
- ``Mul``/``Div`` by 1 and ``Add``/``Sub`` of 0, when the constant does not broadcast the
  result to a larger shape (x + 0 turns -0.0 into +0.0, which compares equal).

Must not: rename a graph output (a node joining a graph input or constant straight to a
graph output stays), drop one (a Dropout whose mask is a graph output stays), or rewrite
when a shape or type it depends on is unknown.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import bypass, can_replace, constant_array, is_graph_io, live_consumers, onnx_type, type_name
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage

Verdict = Match | Decline
_NEUTRAL = {"Mul": (1, (0, 1)), "Div": (1, (1,)), "Add": (0, (0, 1)), "Sub": (0, (1,))}


def _identity(node: gs.Node) -> Verdict:
    return Match("Identity removed", 0)


def _dropout(node: gs.Node) -> Verdict:
    if len(node.inputs) > 2 and node.inputs[2].name:
        training = constant_array(node.inputs[2])
        if training is None or bool(np.asarray(training).item()):
            return Decline("training_mode is not a constant false")
    if len(node.outputs) > 1 and live_consumers(node.outputs[1]):
        return Decline("the mask output is used")
    return Match("inference Dropout removed", 0)


def _reshape(node: gs.Node) -> Verdict:
    target = constant_array(node.inputs[1])
    shape = node.inputs[0].shape
    if target is None:
        return Decline("target shape is not constant")
    if shape is None:
        return Decline("input shape is unknown")
    target = [int(d) for d in np.asarray(target).ravel()]
    if len(target) != len(shape):
        return Decline("reshape changes the rank")
    allowzero = node.attrs.get("allowzero", 0)
    unresolved = [i for i, (t, s) in enumerate(zip(target, shape))
                  if not ((t == 0 and not allowzero) or (isinstance(s, int) and t == s))]
    if not unresolved or (len(unresolved) == 1 and target[unresolved[0]] == -1):
        return Match("Reshape to the same shape removed", 0)
    return Decline(f"target {target} may differ from input shape {list(shape)}")


def _expand(node: gs.Node) -> Verdict:
    target = constant_array(node.inputs[1])
    shape = node.inputs[0].shape
    if target is None or shape is None:
        return Decline("shape or input shape is not known")
    target = [int(d) for d in np.asarray(target).ravel()]
    if len(target) > len(shape):
        return Decline("expand adds dimensions")
    tail = shape[len(shape) - len(target):]
    if all(t == 1 or (isinstance(s, int) and t == s) for t, s in zip(target, tail)):
        return Match("Expand to the same shape removed", 0)
    return Decline(f"expand to {target} may broadcast {list(shape)}")


def _cast(node: gs.Node) -> Verdict:
    source = onnx_type(node.inputs[0].dtype)
    to = int(node.attrs["to"]) if node.op == "Cast" else onnx_type(node.inputs[1].dtype)
    if source is None or to is None:
        return Decline("input type is unknown")
    if source != to:
        return Decline(f"casts {type_name(source)} to {type_name(to)}")
    return Match(f"{node.op} to the same type removed", 0)


def _transpose(node: gs.Node) -> Verdict:
    perm = node.attrs.get("perm")
    shape = node.inputs[0].shape
    if perm is None:
        if shape is not None and len(shape) <= 1:
            return Match("Transpose of rank <= 1 removed", 0)
        return Decline("default perm reverses the axes")
    if list(perm) == list(range(len(perm))):
        return Match("identity Transpose removed", 0)
    return Decline(f"perm {list(perm)} is not the identity")


def _pad(node: gs.Node) -> Verdict:
    pads = node.attrs.get("pads") if len(node.inputs) < 2 else constant_array(node.inputs[1])
    if pads is None:
        return Decline("pads are not constant")
    if np.any(np.asarray(pads) != 0):
        return Decline("pads are not all zero")
    return Match("zero Pad removed", 0)


def _concat(node: gs.Node) -> Verdict:
    if len(node.inputs) != 1:
        return Decline("concatenates several inputs")
    return Match("Concat of one input removed", 0)


def _split(node: gs.Node) -> Verdict:
    if len(node.outputs) != 1:
        return Decline(f"splits into {len(node.outputs)} outputs")
    return Match("Split into one output removed", 0)


def _slice_parts(node: gs.Node) -> tuple | None:
    """(starts, ends, axes or None, steps or None) as arrays, or None when one is not constant."""
    if len(node.inputs) == 1:  # opset < 10: attributes
        attrs = node.attrs
        if "starts" not in attrs or "ends" not in attrs:
            return None
        return np.array(attrs["starts"], np.int64), np.array(attrs["ends"], np.int64), \
            (np.array(attrs["axes"], np.int64) if "axes" in attrs else None), None
    parts = [constant_array(node.inputs[i]) if len(node.inputs) > i and node.inputs[i].name else "absent"
             for i in range(1, 5)]
    if any(p is None for p in parts):
        return None
    return tuple(None if isinstance(p, str) else np.asarray(p) for p in parts)


def _slice(node: gs.Node) -> Verdict:
    parts = _slice_parts(node)
    shape = node.inputs[0].shape
    if parts is None:
        return Decline("starts, ends, axes or steps are not constant")
    if shape is None:
        return Decline("input shape is unknown")
    starts, ends, axes, steps = parts
    axes = range(len(starts)) if axes is None else [int(a) + len(shape) if a < 0 else int(a) for a in axes]
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    end_max = np.iinfo(ends.dtype).max
    for axis, start, end, step in zip(axes, starts.tolist(), ends.tolist(), steps.tolist()):
        dim = shape[axis] if 0 <= axis < len(shape) else None
        static = isinstance(dim, (int, np.integer)) and dim >= 0
        if step != 1:
            return Decline(f"step {step} on axis {axis}")
        if not (start == 0 or (static and start <= -dim)):
            return Decline(f"starts at {start} on axis {axis}")
        if not (end >= end_max or (static and end >= dim)):
            return Decline(f"ends at {end} on axis {axis} of size {dim}")
    return Match("Slice of the whole tensor removed", 0)


def _neutral(node: gs.Node) -> Verdict:
    neutral, const_positions = _NEUTRAL[node.op]
    for pos in const_positions:
        value = constant_array(node.inputs[pos])
        if value is None:
            continue
        keep = 1 - pos
        data_shape = node.inputs[keep].shape
        if not np.all(np.asarray(value) == neutral):
            return Decline(f"constant is not all {neutral}")
        if data_shape is None or node.inputs[keep].dtype is None:
            return Decline("input shape is unknown")
        tail = data_shape[len(data_shape) - value.ndim:] if value.ndim else []
        if value.ndim > len(data_shape) or not all(v == 1 or v == s for v, s in zip(value.shape, tail)):
            return Decline("constant broadcasts the result to a larger shape")
        return Match(f"{node.op} by {neutral} removed", keep)
    return Decline("no constant operand")


RULES: dict[str, Callable[[gs.Node], Verdict]] = {
    "Identity": _identity, "Dropout": _dropout, "Reshape": _reshape, "Expand": _expand,
    "Cast": _cast, "CastLike": _cast, "Transpose": _transpose, "Pad": _pad, "Concat": _concat, "Split": _split,
    "Slice": _slice,
    "Mul": _neutral, "Div": _neutral, "Add": _neutral, "Sub": _neutral,
}


class RemoveNoOpsPass(NodeRewritePass):
    """Remove Identity, inference Dropout and ops that leave their input unchanged."""

    name = "remove-noops"
    stage = Stage.CLEANUP
    priority = 20
    ops = frozenset(RULES)

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Verdict:
        verdict = RULES[node.op](node)
        if not isinstance(verdict, Match):
            return verdict
        dropped = [t.name for t in node.outputs[1:] if is_graph_io(graph, t)]
        if dropped:
            return Decline(f"its output {dropped[0]!r} is a graph output")
        if not can_replace(graph, node.outputs[0], node.inputs[verdict.data]):
            return Decline("it joins a graph input or constant straight to a graph output")
        return verdict

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        bypass(graph, node, match.data)
