"""Fold a constant-mode Pad into the pads of the Conv, AveragePool or MaxPool reading it.

Rewrite: ``op(Pad(x, pads=P, value=v))`` -> ``op(x)`` with the spatial part of P added to
op's own ``pads`` (``auto_pad=VALID`` counts as zero pads and becomes NOTSET). Both forms
of Pad are read: attributes before opset 11, the ``pads`` / ``constant_value`` / ``axes``
inputs from opset 11 (``axes``, opset 18, is expanded to every axis).

When it is exact:

- Conv: v = 0. A convolution's own padding is zeros, so the sums are the same.
- AveragePool: v = 0 and the result counts the padding (``count_include_pad=1``): the
  explicit zeros of the Pad were averaged in. A pool with ``count_include_pad=0`` and no
  pads of its own is switched to 1 (its pads are then all the Pad's zeros); one with pads
  of its own and ``count_include_pad=0`` is refused: its own padding is not counted but
  the Pad's was, and one attribute cannot say both.
- MaxPool: the pad value never wins a window. Its own padding never wins either, and with
  ``ceil_mode=0``, dilation 1 and pads smaller than the kernel (which onnxruntime
  requires) every window holds at least one element of x; so the max is the same when
  v <= every element of x: v = -inf, or v <= a lower bound of x from its producer (0 for
  Relu, Sigmoid, Softplus, Abs, Exp, HardSigmoid; the constant min of a Clip). NaN
  inputs aside.

Must not: fold when the Pad is not constant mode (reflect, edge, wrap), has negative pads
(a crop), pads the batch or channel axis, or has non-constant pads/value/axes; when its
result is a graph output or read by anything else; when the op uses SAME_* auto padding;
for pools, when ``ceil_mode=1``, a dilation is not 1, or a merged pad would reach the
kernel size; for MaxPool, when its Indices output is used (indices would then count the
unpadded input) or the pad value could win.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, live_consumers, producer, remove, sole_use_problem
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage

TARGETS = frozenset({"Conv", "AveragePool", "MaxPool"})
NON_NEGATIVE = frozenset({"Relu", "Sigmoid", "Softplus", "Abs", "Exp", "HardSigmoid"})


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pad_spec(node: gs.Node) -> tuple[list[int], list[int], float] | Decline:
    """(begin pads, end pads) over every axis of the input, and the pad value."""
    if _text(node.attrs.get("mode", "constant")) != "constant":
        return Decline(f"mode {_text(node.attrs['mode'])!r} is not constant")
    inputs = [t if t.name else None for t in node.inputs]
    inputs += [None] * (4 - len(inputs))
    axes = None
    if inputs[1] is not None:
        pads = constant_array(inputs[1])
        value = constant_array(inputs[2]) if inputs[2] is not None else 0.0
        if inputs[3] is not None:
            axes = constant_array(inputs[3])
            if axes is None:
                return Decline("axes are not constant")
    else:
        pads = node.attrs.get("pads", node.attrs.get("paddings"))
        value = node.attrs.get("value", 0.0)
    if pads is None or value is None:
        return Decline("pads or pad value are not constant")
    pads = [int(p) for p in np.ravel(pads)]
    if axes is None:
        rank = len(pads) // 2
        axes = list(range(rank))
    else:
        shape = node.inputs[0].shape
        if shape is None:
            return Decline("Pad has axes and the input rank is unknown")
        rank = len(shape)
        axes = [int(a) + rank if a < 0 else int(a) for a in np.ravel(axes)]
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[i + len(axes)]
    return begin, end, float(np.ravel(value)[0]) if np.size(value) else 0.0


def lower_bound(tensor: gs.Tensor) -> float | None:
    """A value every element of ``tensor`` is known to be at least (from its producer)."""
    node = producer(tensor)
    if node is None:
        return None
    if node.op in NON_NEGATIVE:
        return 0.0
    if node.op == "Clip":
        if len(node.inputs) > 1 and node.inputs[1].name:
            low = constant_array(node.inputs[1])
            return None if low is None else float(np.ravel(low)[0])
        if "min" in node.attrs:
            return float(node.attrs["min"])
    return None


class FoldPadPass(NodeRewritePass):
    """Fold a constant Pad into the padding of the Conv or pool that reads it."""

    name = "fold-pad"
    stage = Stage.FUSION
    priority = 50
    ops = frozenset({"Pad"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match | Decline:
        out = node.outputs[0]
        targets = [n for n in live_consumers(out) if n.op in TARGETS and (n.domain or "") in self.domains]
        if not targets:
            return Decline("its result is not read by a Conv, AveragePool or MaxPool")
        op = targets[0]
        problem = sole_use_problem(graph, out, op)
        if problem:
            return Decline(problem)
        if op.inputs[0] is not out or any(t is out for t in op.inputs[1:]):
            return Decline(f"it is not only the data input of the {op.op}")
        spec = pad_spec(node)
        if isinstance(spec, Decline):
            return spec
        begin, end, value = spec
        rank = len(begin)
        if rank < 3:
            return Decline(f"input rank {rank} has no spatial axes")
        if min(begin + end) < 0:
            return Decline(f"negative pads {begin + end} crop")
        if begin[:2] != [0, 0] or end[:2] != [0, 0]:
            return Decline("it pads the batch or channel axis")
        auto_pad = _text(op.attrs.get("auto_pad", "NOTSET"))
        if auto_pad not in ("NOTSET", "VALID"):
            return Decline(f"the {op.op} uses auto_pad={auto_pad}")
        spatial = rank - 2
        own = [int(p) for p in op.attrs.get("pads", [0] * 2 * spatial)] if auto_pad == "NOTSET" else [0] * 2 * spatial
        if len(own) != 2 * spatial:
            return Decline(f"the {op.op} has {len(own)} pads for {spatial} spatial axes")
        merged = [own[i] + begin[i + 2] for i in range(spatial)] + [own[spatial + i] + end[i + 2] for i in range(spatial)]
        extra = {}
        if op.op == "Conv":
            if value != 0:
                return Decline(f"pad value {value} is not 0")
        else:
            verdict = self._pool_problem(graph, op, merged, value, own, node.inputs[0], extra)
            if verdict:
                return Decline(verdict)
        return Match(f"Pad {begin[2:]}+{end[2:]} folded into the {op.op}'s pads, now {merged}", (op, merged, extra))

    @staticmethod
    def _pool_problem(graph: gs.Graph, op: gs.Node, merged: list[int], value: float, own: list[int],
                      data: gs.Tensor, extra: dict) -> str | None:
        if int(op.attrs.get("ceil_mode", 0)):
            return "ceil_mode=1: windows may overhang the padding"
        if any(int(d) != 1 for d in op.attrs.get("dilations", [])):
            return "the pool is dilated"
        kernel = [int(k) for k in op.attrs.get("kernel_shape", [])]
        spatial = len(merged) // 2
        if len(kernel) != spatial or any(merged[i] >= kernel[i] or merged[i + spatial] >= kernel[i]
                                         for i in range(spatial)):
            return f"merged pads {merged} would reach the kernel {kernel}"
        if op.op == "AveragePool":
            if value != 0:
                return f"pad value {value} is not 0"
            if not int(op.attrs.get("count_include_pad", 0)):
                if any(own):
                    return "count_include_pad=0 with pads of its own: the Pad's zeros were counted, its own are not"
                extra["count_include_pad"] = 1
            return None
        if len(op.outputs) > 1 and (live_consumers(op.outputs[1]) or any(t is op.outputs[1] for t in graph.outputs)):
            return "the MaxPool's Indices output is used"
        if value == -np.inf:
            return None
        bound = lower_bound(data)
        if bound is None or not value <= bound:
            return f"pad value {value} could be the max of a window (no lower bound of the input at or above it)"
        return None

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        op, merged, extra = match.data
        source = node.inputs[0]
        remove(node)
        op.inputs[0] = source
        op.attrs.pop("auto_pad", None)
        op.attrs["pads"] = merged
        op.attrs.update(extra)
