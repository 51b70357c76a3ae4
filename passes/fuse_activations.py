"""Fuse decomposed activations into HardSigmoid, HardSwish and Mish; recognise SiLU; write
a HardSwish that only a reduction reads in the form TensorRT fuses into the reduction.

Rules, one per root op (x any float tensor, constants scalars):

- Clip -> HardSigmoid. ``Clip(a*x + b, 0, hi) * f`` with hi * f = 1 (f as Mul or as Div
  by hi; a*x optional, as Mul or Div) is max(0, min(1, (a/hi) x + b/hi)), which is
  ``HardSigmoid<alpha=a f, beta=b f>(x)`` (hi = 1: no f); torch's ``relu6(x + 3) / 6`` is
  HardSigmoid(1/6, 0.5). ``x * Clip(x + b, 0, hi) * f`` becomes ``HardSwish(x)`` when
  alpha, beta are 1/6, 1/2 (opset >= 14), else ``Mul(x, HardSigmoid(x))``.
- HardSigmoid -> HardSwish. ``x * HardSigmoid<alpha=1/6, beta=1/2>(x)``; opset >= 14.
- Softplus -> Mish. ``x * tanh(softplus(x))``; opset >= 18 (the opset is not raised for
  it: TensorRT imports Mish as these three layers anyway).
- Sigmoid: ``x * Sigmoid(x)`` (SiLU) is recognised and kept as it is (TensorRT has no
  Swish op and fuses the pair); inspect reports it.
- HardSwish read only by one reduction (ReduceMean, ReduceSum, ReduceMax, GlobalAveragePool)
  is written ``x * Clip(x + 3, 0, 6) / 6`` (the same function), from the op or any form
  above: the form TensorRT fuses into the reduction's kernel. Read through
  channels-last-mean's NHWC mean, the op stays.

Constants must equal their exact values within float32 rounding (or x's dtype, if
coarser). Must not rewrite when: Clip's lower bound is not 0 or its bounds are not
constant; hi * f is not 1; alpha/beta are not HardSwish's; the two x operands are
different tensors; an intermediate is read outside the pattern or is a graph output; a
constant would broadcast x to a higher rank; the opset lacks the target op. A HardSwish
(op or form) read by anything but one reduction, or that is a graph output, is not
written as the Clip form.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import is_graph_io, make_constant, onnx_type, type_name
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._pattern import (close, constant_operand, consumer, escaping, float_type, node, np_dtype,
                                     only_consumer, op_of, other_input, rank_of, replace_pattern, scalar_operand,
                                     scale_of, variable)

Verdict = Match | Decline
HARDSWISH_OPSET, MISH_OPSET = 14, 18
CLIP_INPUTS_OPSET = 11  # Clip's bounds are inputs from opset 11, attributes before
# Readers of a HardSwish for which it is written x * Clip(x + 3, 0, 6) / 6 (see the docstring).
REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceMax", "GlobalAveragePool")
CLIP_FORM = "x * Clip(x + 3, 0, 6) / 6"
SILU_KEPT = ("SiLU x * Sigmoid(x) recognised; kept as Sigmoid + Mul, which TensorRT fuses into one pointwise "
             "kernel (its ONNX parser has no Swish importer)")


def _clip_bounds(graph: gs.Graph, clip: gs.Node, rank) -> tuple[float, float] | str:
    if graph.opset < 11:
        return float(clip.attrs.get("min", -np.finfo(np.float32).max)), float(clip.attrs.get("max", np.inf))
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        if len(clip.inputs) <= i or not clip.inputs[i].name:
            bounds.append(default)
            continue
        value = scalar_operand(clip.inputs[i], rank)
        if value is None:
            return "Clip bounds are not scalar constants"
        bounds.append(value)
    return bounds[0], bounds[1]


def _hard_sigmoid_match(graph: gs.Graph, clip: gs.Node, rank, dtype) -> dict | str:
    """Match the Clip forms; the dict says what to build (see ``rewrite``)."""
    bounds = _clip_bounds(graph, clip, rank)
    if isinstance(bounds, str):
        return bounds
    lo, hi = bounds
    if lo != 0.0 or not 0 < hi < np.inf:
        return f"Clip bounds [{lo:g}, {hi:g}] are not [0, finite positive]"
    add = op_of(clip.inputs[0], "Add")
    found = constant_operand(add, rank) if add is not None else None
    if found is None:
        return "Clip input is not x + constant (a ReLU6-like clip, not a hard sigmoid)"
    index, b = found
    v, nodes = add.inputs[index], [add, clip]
    x, a = v, 1.0
    pre = op_of(v, "Mul", "Div")
    scaled = scale_of(pre, rank)
    if scaled is not None and only_consumer(pre.outputs[0], "Add") is add and not is_graph_io(graph, pre.outputs[0]):
        x, a = scaled
        nodes.insert(0, pre)
    c = clip.outputs[0]
    post = consumer(c, "Mul", "Div")
    if post is not None and x is not v and other_input(post, c) is v:  # v * Clip(v + b, ...): keep v whole
        x, a, nodes = v, 1.0, nodes[1:]
    factor = scale_of(post, rank) if post is not None else None
    if factor is not None and factor[0] is c:  # Clip(...) * f
        f = factor[1]
        if not close(hi * f, 1.0, dtype):
            return f"Clip upper bound {hi:g} times scale {f:.7g} is not 1"
        return dict(x=x, alpha=a * f, beta=b * f, nodes=[*nodes, post], out=post.outputs[0], times_x=False)
    if post is not None and post.op == "Mul" and other_input(post, c) is x:  # x * Clip(...), then * f
        last = consumer(post.outputs[0], "Mul", "Div")
        factor = scale_of(last, rank) if last is not None else None
        if factor is None or factor[0] is not post.outputs[0]:
            return "x * Clip(...) is not only scaled by a constant"
        f = factor[1]
        if not close(hi * f, 1.0, dtype):
            return f"Clip upper bound {hi:g} times scale {f:.7g} is not 1"
        return dict(x=x, alpha=a * f, beta=b * f, nodes=[*nodes, post, last], out=last.outputs[0], times_x=True,
                    clip_form=[n.op for n in nodes] == ["Add", "Clip"] and hi == 6.0 and last.op == "Div")
    if close(hi, 1.0, dtype):
        return dict(x=x, alpha=a, beta=b, nodes=nodes, out=c, times_x=False)
    return f"Clip(x + b, 0, {hi:g}) is not scaled by 1/{hi:g}"


def _is_hard_swish(alpha: float, beta: float, dtype=np.float32) -> bool:
    return close(alpha, 1 / 6, dtype) and close(beta, 0.5, dtype)


def _reduced_by(graph: gs.Graph, out: gs.Tensor) -> gs.Node | None:
    """The reduction that is the only reader of ``out`` (not a graph output), if any. Not
    through a Transpose: read by channels-last-mean's Transpose + ReduceMean, the HardSwish
    op fuses into the mean as well as the Clip form does."""
    if is_graph_io(graph, out):
        return None
    reader = only_consumer(out, *REDUCTIONS)
    return reader if reader is not None and reader.inputs[0] is out else None


def _as_clip_form(reduction: gs.Node, replaced: str, data: dict) -> tuple[str, dict]:
    return (f"{replaced} read by {reduction.op} becomes {CLIP_FORM}, which TensorRT fuses into the reduction",
            {**data, "build": "ClipHardSwish"})


class FuseActivationsPass(NodeRewritePass):
    """Fuse HardSigmoid, HardSwish and Mish forms into their ops; recognise SiLU; a HardSwish
    only a reduction reads becomes x * Clip(x + 3, 0, 6) / 6."""

    name = "fuse-activations"
    stage = Stage.FUSION
    priority = 14
    ops = frozenset({"Clip", "HardSigmoid", "HardSwish", "Softplus", "Sigmoid"})

    def check(self, graph: gs.Graph, root: gs.Node, ctx: PassContext) -> Verdict:
        x_in = root.inputs[0]
        if float_type(x_in) is None:
            return Decline(f"input type {type_name(onnx_type(x_in.dtype)) if x_in.dtype is not None else 'unknown'}"
                           " is not a known float type")
        rule: Callable = getattr(self, f"_{root.op.lower()}")
        verdict = rule(graph, root, rank_of(x_in), np_dtype(x_in))
        if isinstance(verdict, str):
            return Decline(verdict)
        message, data = verdict
        leak = escaping(graph, data["nodes"], data["out"])
        return Decline(leak) if leak else Match(message, data)

    # Each rule returns (message, data) or the reason it declines. data: x, nodes, out, build.

    def _clip(self, graph, clip, rank, dtype):
        m = _hard_sigmoid_match(graph, clip, rank, dtype)
        if isinstance(m, str):
            return m
        attrs = f"alpha {m['alpha']:.6g}, beta {m['beta']:.6g}"
        if not m["times_x"]:
            return f"HardSigmoid({attrs}) replaces {len(m['nodes'])} nodes", {**m, "build": "HardSigmoid"}
        reduction = _reduced_by(graph, m["out"]) if _is_hard_swish(m["alpha"], m["beta"], dtype) else None
        if reduction is not None:
            if m["clip_form"]:
                return f"HardSwish as {CLIP_FORM} read by {reduction.op} is kept: TensorRT fuses it into the reduction"
            return _as_clip_form(reduction, f"HardSwish of {len(m['nodes'])} nodes", m)
        if _is_hard_swish(m["alpha"], m["beta"], dtype) and graph.opset >= HARDSWISH_OPSET:
            return f"HardSwish replaces {len(m['nodes'])} nodes", {**m, "build": "HardSwish"}
        return f"x * HardSigmoid({attrs}) replaces {len(m['nodes'])} nodes", {**m, "build": "MulHardSigmoid"}

    def _hardsigmoid(self, graph, hs, rank, dtype):
        alpha, beta = float(hs.attrs.get("alpha", 0.2)), float(hs.attrs.get("beta", 0.5))
        x = hs.inputs[0]
        mul = consumer(hs.outputs[0], "Mul")
        if mul is None or other_input(mul, hs.outputs[0]) is not x:
            return "HardSigmoid output is not only multiplied by its input"
        if not _is_hard_swish(alpha, beta, dtype):
            return f"x * HardSigmoid(alpha {alpha:.6g}, beta {beta:.6g}) is not HardSwish (alpha 1/6, beta 1/2)"
        data = dict(x=x, nodes=[hs, mul], out=mul.outputs[0])
        reduction = _reduced_by(graph, mul.outputs[0])
        if reduction is not None:
            return _as_clip_form(reduction, "x * HardSigmoid(x)", data)
        if graph.opset < HARDSWISH_OPSET:
            return f"HardSwish needs opset {HARDSWISH_OPSET}, the model has {graph.opset}"
        return "HardSwish replaces 2 nodes", {**data, "build": "HardSwish"}

    def _hardswish(self, graph, hs, rank, dtype):
        reduction = _reduced_by(graph, hs.outputs[0])
        if reduction is None:
            return "HardSwish is kept: it is not read by a reduction only"
        return _as_clip_form(reduction, "HardSwish", dict(x=hs.inputs[0], nodes=[hs], out=hs.outputs[0]))

    def _softplus(self, graph, softplus, rank, dtype):
        x = softplus.inputs[0]
        tanh = consumer(softplus.outputs[0], "Tanh")
        mul = consumer(tanh.outputs[0], "Mul") if tanh is not None else None
        if mul is None or other_input(mul, tanh.outputs[0]) is not x:
            return "Softplus is not part of x * tanh(softplus(x))"
        if graph.opset < MISH_OPSET:
            return (f"Mish x * tanh(softplus(x)) recognised; Mish needs opset {MISH_OPSET}, the model has "
                    f"{graph.opset} (TensorRT imports Mish as these same three layers)")
        return "Mish replaces 3 nodes", dict(x=x, nodes=[softplus, tanh, mul], out=mul.outputs[0], build="Mish")

    def _sigmoid(self, graph, sigmoid, rank, dtype):
        s = sigmoid.outputs[0]
        if any(u.op == "Mul" and other_input(u, s) is sigmoid.inputs[0] for u in s.outputs if u.outputs):
            return SILU_KEPT
        return "Sigmoid output is not multiplied by its input (not a SiLU)"

    def rewrite(self, graph: gs.Graph, root: gs.Node, match: Match, ctx: PassContext) -> None:
        data = match.data
        x, build = data["x"], data["build"]
        base = root.name.removesuffix(root.op).rstrip("/_") or build.lower()
        out = variable(graph, f"{base}_{build}_output", data["out"])
        if build == "HardSigmoid":
            new = [node(graph, "HardSigmoid", f"{base}/HardSigmoid", [x], [out],
                        alpha=float(data["alpha"]), beta=float(data["beta"]))]
        elif build == "MulHardSigmoid":
            h = variable(graph, f"{base}_HardSigmoid_output", x)
            new = [node(graph, "HardSigmoid", f"{base}/HardSigmoid", [x], [h],
                        alpha=float(data["alpha"]), beta=float(data["beta"])),
                   node(graph, "Mul", f"{base}/Mul", [x, h], [out])]
        elif build == "ClipHardSwish":
            new = self._clip_form(graph, base, x, out)
        else:
            new = [node(graph, build, f"{base}/{build}", [x], [out])]
        replace_pattern(graph, data["nodes"], data["out"], new, out)

    @staticmethod
    def _clip_form(graph: gs.Graph, base: str, x: gs.Tensor, out: gs.Tensor) -> list[gs.Node]:
        """x * Clip(x + 3, 0, 6) / 6 computing ``out``, constants in x's dtype."""
        const = lambda name, v: make_constant(graph, f"{base}_{name}", np.array(v, dtype=np_dtype(x)))  # noqa: E731
        three, six = const("three", 3.0), const("six", 6.0)
        shifted, clipped, product = (variable(graph, f"{base}_{name}_output", x) for name in ("Add", "Clip", "Mul"))
        if graph.opset >= CLIP_INPUTS_OPSET:
            clip = node(graph, "Clip", f"{base}/Clip", [shifted, const("zero", 0.0), six], [clipped])
        else:
            clip = node(graph, "Clip", f"{base}/Clip", [shifted], [clipped], min=0.0, max=6.0)
        return [node(graph, "Add", f"{base}/Add", [x, three], [shifted]), clip,
                node(graph, "Mul", f"{base}/Mul", [x, clipped], [product]),
                node(graph, "Div", f"{base}/Div", [product, six], [out])]
