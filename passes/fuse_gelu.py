"""Fuse GELU subgraphs: into ``Gelu`` from opset 20, else into the canonical GELU pattern.

The two forms, x any float tensor:

    erf:   y = x * 0.5 * (1 + erf(x / sqrt(2)))                      (exact GELU)
    tanh:  y = x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))  (tanh approximation)

matched in the orderings exporters write: x / sqrt(2) or x * (1/sqrt(2)); 1 + e or
e + 1; the 0.5 applied last, to (1 + e) first, or to x first; 0.5 as Mul or as Div by 2;
x^3 as Pow(x, 3) or x * x * x; commuted operands.

- Opset >= 20: the pattern becomes ``Gelu<approximate="none"|"tanh">(x)``, one
  activation layer in TensorRT.
- Below opset 20 (no Gelu op; the opset is never raised for it) the pattern is rewritten
  into the canonical form torch.onnx writes, which TensorRT's pointwise fusion matches:
  ``Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5`` (tanh: ``x*x*x`` or ``Pow`` kept
  as written, ``Mul 0.044715 -> Add x -> Mul sqrt(2/pi) -> Tanh -> Add 1 -> Mul x -> Mul 0.5``);
  a pattern already in that form is left unchanged.

The rewrite never adds nodes. Must not rewrite when: a constant differs from its exact
value beyond the rounding of a float32 (or of x's dtype, if coarser: 1.41 is not sqrt 2;
inspect says which); the two x operands are different tensors; an intermediate is read
outside the pattern or is a graph output; a constant would broadcast x to a higher rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import make_constant, onnx_type, type_name
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._pattern import (close, constant_operand, consumer, escaping, float_type, node, np_dtype, op_of,
                                     other_input, rank_of, replace_pattern, scalar_operand, scale_of, variable)

GELU_OPSET = 20
SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715
Verdict = Match | Decline


@dataclass
class _Gelu:
    """A matched GELU: its input, nodes, output, and how it differs from the canonical spelling."""

    x: gs.Tensor
    approximate: str
    nodes: list = field(default_factory=list)
    out: gs.Tensor | None = None
    variants: list = field(default_factory=list)  # how it differs from the canonical spelling
    cube_pow: bool = False


def _erf_inner(erf: gs.Node, rank, dtype) -> _Gelu | str:
    prod = op_of(erf.inputs[0], "Div", "Mul")
    scaled = scale_of(prod, rank)
    if scaled is None:
        return "Erf input is not x scaled by a constant"
    x, factor = scaled
    if not close(factor, 1 / SQRT_2, dtype):
        return f"Erf input is x * {factor:.7g}, not x / sqrt(2)"
    g = _Gelu(x, "none", [prod, erf])
    if prod.op == "Mul":
        g.variants.append("x * (1/sqrt 2)")
    return g


def _cube(p: gs.Tensor, x: gs.Tensor, rank) -> list | None:
    power = op_of(p, "Pow")
    if power is not None:
        exponent = scalar_operand(power.inputs[1], rank, kinds="fiu")
        return [power] if power.inputs[0] is x and exponent == 3.0 else None
    outer = op_of(p, "Mul")
    if outer is None:
        return None
    sq = other_input(outer, x)
    square = op_of(sq, "Mul")
    if square is None or square.inputs[0] is not x or square.inputs[1] is not x:
        return None
    return [outer, square]


def _tanh_inner(tanh: gs.Node, rank, dtype) -> _Gelu | str:
    prod = op_of(tanh.inputs[0], "Mul", "Div")
    scaled = scale_of(prod, rank)
    if scaled is None:
        return "Tanh input is not a constant times (x + 0.044715 x^3)"
    u, factor = scaled
    if not close(factor, SQRT_2_OVER_PI, dtype):
        return f"Tanh input is scaled by {factor:.7g}, not sqrt(2/pi)"
    add = op_of(u, "Add")
    if add is None or len(add.inputs) != 2:
        return "Tanh input is not sqrt(2/pi) * (x + 0.044715 x^3)"
    for x, w in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        wmul = op_of(w, "Mul", "Div")
        term = scale_of(wmul, rank)
        if term is None:
            continue
        p, c = term
        cube = _cube(p, x, rank)
        if cube is None:
            continue
        if not close(c, CUBIC, dtype):
            return f"the cubic term is scaled by {c:.7g}, not 0.044715"
        g = _Gelu(x, "tanh", [*cube, wmul, add, prod, tanh], cube_pow=cube[0].op == "Pow")
        g.variants += [v for v, bad in (("Div in sqrt(2/pi) scale", prod.op == "Div"),
                                         ("Div in cubic term", wmul.op == "Div")) if bad]
        return g
    return "Tanh input is not sqrt(2/pi) * (x + 0.044715 x^3)"


def _outer(g: _Gelu, root: gs.Node, rank, dtype) -> _Gelu | str:
    """Match ``0.5 * x * (1 + root)`` in its orderings; completes ``g``."""
    add = consumer(root.outputs[0], "Add")
    found = constant_operand(add, rank) if add is not None else None
    if found is None or add.inputs[found[0]] is not root.outputs[0] or not close(found[1], 1.0, dtype):
        return f"{root.op} output is not only increased by 1"
    a = add.outputs[0]
    g.nodes.append(add)
    user = consumer(a, "Mul", "Div")
    if user is None:
        return f"1 + {root.op.lower()}(.) is not only multiplied"
    half = scale_of(user, rank)
    if half is not None and half[0] is a:  # (1 + e) * 0.5, then * x
        last = consumer(user.outputs[0], "Mul")
        if not close(half[1], 0.5, dtype) or last is None or other_input(last, user.outputs[0]) is not g.x:
            return "(1 + e) is not scaled by 0.5 and multiplied by x"
        g.nodes += [user, last]
        g.variants.append("0.5 applied to (1 + e)")
    elif other_input(user, a) is g.x and user.op == "Mul":  # x * (1 + e), then * 0.5
        last = consumer(user.outputs[0], "Mul", "Div")
        scaled = scale_of(last, rank)
        if scaled is None or scaled[0] is not user.outputs[0] or not close(scaled[1], 0.5, dtype):
            return "x * (1 + e) is not only scaled by 0.5"
        g.nodes += [user, last]
        if last.op == "Div":
            g.variants.append("Div by 2")
    elif user.op == "Mul":  # (x * 0.5) * (1 + e)
        hx = op_of(other_input(user, a), "Mul", "Div")
        scaled = scale_of(hx, rank)
        if scaled is None or scaled[0] is not g.x or not close(scaled[1], 0.5, dtype):
            return "(1 + e) is not multiplied by x and 0.5"
        g.nodes += [hx, user]
        last = user
        g.variants.append("0.5 applied to x")
    else:
        return "(1 + e) is not multiplied by x and 0.5"
    g.out = last.outputs[0]
    return g


class FuseGeluPass(NodeRewritePass):
    """Fuse Erf/Tanh GELU subgraphs into Gelu (opset >= 20) or the canonical pattern TensorRT fuses."""

    name = "fuse-gelu"
    stage = Stage.FUSION
    priority = 12
    ops = frozenset({"Erf", "Tanh"})

    def check(self, graph: gs.Graph, root: gs.Node, ctx: PassContext) -> Verdict:
        x_in = root.inputs[0]
        rank = rank_of(x_in)
        if float_type(x_in) is None:
            return Decline(f"input type {type_name(onnx_type(x_in.dtype)) if x_in.dtype is not None else 'unknown'}"
                           " is not a known float type")
        dtype = np_dtype(x_in)
        g = (_erf_inner if root.op == "Erf" else _tanh_inner)(root, rank, dtype)
        if isinstance(g, str):
            return Decline(g)
        g = _outer(g, root, rank, dtype)
        if isinstance(g, str):
            return Decline(g)
        leak = escaping(graph, g.nodes, g.out)
        if leak:
            return Decline(leak)
        form = "erf" if g.approximate == "none" else "tanh"
        if graph.opset >= GELU_OPSET:
            return Match(f"Gelu(approximate={g.approximate}) replaces {len(g.nodes)} nodes", g)
        if not g.variants:
            return Decline(f"already the canonical {form} GELU pattern TensorRT fuses "
                           f"(Gelu needs opset {GELU_OPSET}, the model has {graph.opset})")
        return Match(f"canonical {form} GELU pattern replaces a variant ({', '.join(g.variants)})", g)

    def rewrite(self, graph: gs.Graph, root: gs.Node, match: Match, ctx: PassContext) -> None:
        g: _Gelu = match.data
        base = root.name.removesuffix(root.op).rstrip("/_") or "gelu"
        if graph.opset >= GELU_OPSET:
            out = variable(graph, f"{base}_Gelu_output", g.out)
            new = [node(graph, "Gelu", f"{base}/Gelu", [g.x], [out], approximate=g.approximate)]
        else:
            new, out = self._canonical(graph, g, base)
        replace_pattern(graph, g.nodes, g.out, new, out)

    @staticmethod
    def _canonical(graph: gs.Graph, g: _Gelu, base: str) -> tuple[list[gs.Node], gs.Tensor]:
        dtype = np_dtype(g.x)
        nodes: list[gs.Node] = []

        def const(name: str, value: float) -> gs.Constant:
            return make_constant(graph, f"{base}_{name}", np.array(value, dtype=dtype))

        def op(kind: str, *inputs: gs.Tensor) -> gs.Tensor:
            out = variable(graph, f"{base}/{kind}_output", g.x)
            nodes.append(node(graph, kind, f"{base}/{kind}", list(inputs), [out]))
            return out

        if g.approximate == "none":
            inner = op("Erf", op("Div", g.x, const("sqrt2", SQRT_2)))
        else:
            cube = (op("Pow", g.x, const("three", 3.0)) if g.cube_pow
                    else op("Mul", g.x, op("Mul", g.x, g.x)))
            poly = op("Add", g.x, op("Mul", const("cubic", CUBIC), cube))
            inner = op("Tanh", op("Mul", const("sqrt_2_over_pi", SQRT_2_OVER_PI), poly))
        y = op("Mul", op("Mul", g.x, op("Add", inner, const("one", 1.0))), const("half", 0.5))
        return nodes, y
