"""Fold chains of constant Mul/Add/Sub/Div into linear ops' weights, or into one scale and one shift.

A link is ``Mul``/``Add`` with a constant on either side, or ``Sub``/``Div`` with the
constant second (``c - x`` and ``c / x`` do not compose this way). As a map of ``x`` it
is a scale ``f`` (Mul ``c``, Div ``1/c``) or a shift ``f`` (Add ``c``, Sub ``-c``). A
chain is a run of links each read only by the next. In float64 it composes to::

    y = x * S + T,   S = prod of the scales,   T = sum of each shift times the scales after it

and every constant the rewrite writes is computed from the chain's own constants in
float64 and cast back once: a chain is rewritten whole, never link by link, and a
constant this pass wrote earlier in the run is read back as the float64 values it was
cast from.

Rewrites, rooted at the first link of a chain:

- after a linear op ``P`` (Conv, ConvTranspose, Gemm, MatMul with constant 2-D weight)
  read by the chain alone, when every constant is a scalar or broadcasts per output
  channel (all dims 1 but the channel axis, rank no larger than the output's): output
  channel ``c`` of the weight is scaled by ``S[c]`` and the bias becomes
  ``b * S[c] + T[c]`` (created when absent; Gemm: ``C := beta*C*S + T``, ``beta := 1``).
  MatMul has no bias: ``T`` becomes one Add, so a lone Add/Sub after a MatMul stays.
- anywhere else, a chain of two or more links becomes ``Mul(x, S)`` then ``Add(., T)``
  (the form of TensorRT's scale layer): ``Div`` by the product when every scale was a
  Div, ``Sub`` when every shift was a Sub; a chain already one scale then one shift stays.

Must not: rewrite non-float types (integer Div truncates, integer sums wrap), divide by
a constant holding a zero, fold a constant that would broadcast the output to a larger
shape or rank, grow a constant (a chain stops before a link whose constant would make
the composed one larger than every constant so far), write a value that overflows its
type (x/300/300 in float16 is not x/90000), or change a graph output's name. Nor merge
where float rounding of the original differs by more than a few ulps of what flows: shifts
that cancel (``(x + 65504) - 65504`` is 0 in float32 for a small ``x``, not ``x``; the same
for a linear op's bias and the shift: ``Gemm(x, W, 65504) - 65504``), running products of scales far outside 1..``S``
(``x * 1e30 * 1e-30`` overflows on the way), or a new Mul or weight pushed below the
type's smallest normal (a Div by a huge constant as a Mul by a subnormal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, fresh_name, is_graph_io, live_consumers, producer, remove, replace_uses
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._channel_affine import (FLOAT_TYPES, LinearOp, MatMulOp, cancellation, cast_once,
                                            channel_vector, exact_constant, exact_value, linear_op, scale_detour)
from fusekit.passes._fusion import is_default_domain

Verdict = Match | Decline
SCALES, SHIFTS = frozenset({"Mul", "Div"}), frozenset({"Add", "Sub"})


@dataclass(frozen=True)
class Affine:
    """A scale or shift of a computed value ``data`` by the constant ``value``."""

    node: gs.Node
    data: gs.Tensor
    value: np.ndarray  # float64 if this pass made the constant from float64 values, else as stored
    dtype: np.dtype  # the constant's (and the data's) element type

    @property
    def is_scale(self) -> bool:
        return self.node.op in SCALES

    def factor(self) -> np.ndarray:
        """The constant as what multiplies (scale) or is added to (shift) ``x``, in float64."""
        v = np.asarray(self.value, np.float64)
        op = self.node.op
        if op == "Div":
            return 1.0 / v  # a Div by a constant holding a zero is declined before folding
        return -v if op == "Sub" else v


def as_affine(graph: gs.Graph, node: gs.Node) -> Affine | Decline:
    """The node as an :class:`Affine` link, or why it is not one."""
    if node.op not in SCALES | SHIFTS or not is_default_domain(node) or len(node.inputs) != 2:
        return Decline(f"{node.op} is not a Mul/Add/Sub/Div of the default domain")
    values = [constant_array(t) for t in node.inputs]
    if all(v is not None for v in values):
        return Decline("both operands are constant")
    if all(v is None for v in values):
        return Decline("no constant operand")
    if values[0] is not None and node.op in ("Sub", "Div"):
        return Decline(f"the constant is the first operand of {node.op}")
    index = 0 if values[0] is not None else 1
    stored = np.asarray(values[index])
    if stored.dtype not in FLOAT_TYPES:
        return Decline(f"the constant is {stored.dtype}, not float16/float32/float64")
    if node.op == "Div" and not np.all(stored != 0):
        return Decline("it divides by a constant holding a zero")
    exact = exact_value(graph, node.inputs[index])
    return Affine(node, node.inputs[1 - index], stored if exact is None else exact, stored.dtype)


def next_link(graph: gs.Graph, link: Affine) -> Affine | None:
    """The link reading ``link``'s output, if that is its only reader and not a graph output."""
    out = link.node.outputs[0]
    readers = live_consumers(out)
    if is_graph_io(graph, out) or len(readers) != 1:
        return None
    nxt = as_affine(graph, readers[0])
    if isinstance(nxt, Decline) or nxt.data is not out or nxt.dtype != link.dtype:
        return None
    return nxt


def previous_link(graph: gs.Graph, link: Affine) -> Affine | None:
    source = producer(link.data)
    if source is None or source.op not in SCALES | SHIFTS:
        return None
    prev = as_affine(graph, source)
    if isinstance(prev, Decline):
        return None
    nxt = next_link(graph, prev)
    return prev if nxt is not None and nxt.node is link.node else None


@dataclass
class Chain:
    links: list[Affine]
    linear: LinearOp | None  # the op it folds into
    why_not_linear: str  # why it does not fold into its producer (when ``linear`` is None)
    stop: str = ""  # why the next link starts a chain of its own


class FoldScaleIntoWeightsPass(NodeRewritePass):
    """Fold constant Mul/Add/Sub/Div chains into Conv/ConvTranspose/Gemm/MatMul weights, or into one scale and shift."""

    name = "fold-scale-into-weights"
    stage = Stage.FUSION
    priority = 30
    ops = SCALES | SHIFTS

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Verdict:
        link = as_affine(graph, node)
        if isinstance(link, Decline):
            return link
        chain = self._chain_of(graph, link)
        head = chain.links[0]
        if head.node is not node:
            return Decline(f"it is part of the chain from {head.node.op} {head.node.name!r}")
        ops = " then ".join(a.node.op for a in chain.links)
        scale, shift = _compose(chain.links)
        if problem := _reassociation_problem(chain.links, scale, shift):
            return Decline(f"{ops}: {problem}")
        if chain.linear is not None:
            where = f"{chain.linear.node.op} {chain.linear.node.name!r}"
            layout, channels = chain.linear.output_layout(), chain.linear.channels
            scale, shift = (None if v is None else channel_vector(v, layout, channels) for v in (scale, shift))
            carried = chain.linear.folded_bias(scale, None)  # the bias alone, scaled: (Wx + b) * S + T
            if carried is not None and shift is not None and (problem := cancellation([carried, shift],
                                                                                     carried + shift)):
                return Decline(f"{where}: its bias and the shift: {problem}")
            folded = chain.linear.fold(scale, shift)
            if isinstance(folded, Decline):
                return Decline(f"{where}: {folded.reason}")
            return Match(f"{ops} folded into {where}", (chain, folded))
        if len(chain.links) == 1:
            return Decline(chain.why_not_linear)
        if len(chain.links) == 2 and head.is_scale and not chain.links[1].is_scale:
            return Decline(f"{ops} is already one scale then one shift; {chain.why_not_linear}")
        emitted = []
        if scale is not None:
            scales = [a for a in chain.links if a.is_scale]
            emitted.append(("Div", _product([a.value for a in scales])) if all(a.node.op == "Div" for a in scales)
                           else ("Mul", scale))
        if shift is not None:
            emitted.append(("Sub", -shift) if all(a.node.op == "Sub" for a in chain.links if not a.is_scale)
                           else ("Add", shift))
        for op, value in emitted:
            if isinstance(problem := cast_once(value, head.dtype, () if op == "Mul" else None), str):
                return Decline(f"the merged {op} constant would {problem}")
        return Match(f"{ops} merged into {' then '.join(op for op, _ in emitted)}", (chain, emitted))

    def _chain_of(self, graph: gs.Graph, link: Affine) -> Chain:
        """The chain ``link`` belongs to: chains partition a run of links from its start."""
        start = link
        while (prev := previous_link(graph, start)) is not None:
            start = prev
        chain = self._chain_from(graph, start)
        while not any(a.node is link.node for a in chain.links):
            head = next_link(graph, chain.links[-1])
            if head is None:  # not reached: the run from ``start`` leads to ``link``
                return self._chain_from(graph, link)
            stop, chain = chain.stop, self._chain_from(graph, head)
            chain.why_not_linear = stop
        return chain

    @staticmethod
    def _chain_from(graph: gs.Graph, head: Affine, into_linear: bool = True) -> Chain:
        """The chain from ``head``: into the linear op before it if it can, else a plain one."""
        linear, why = _linear_before(graph, head) if into_linear else (None, "")
        if linear is not None:
            layout, channels = linear.output_layout(), linear.channels
            if isinstance(vector := channel_vector(head.value, layout, channels), Decline):
                linear, why = None, vector.reason
        links, largest, shape = [head], head.value.size, head.value.shape
        stop = ""
        while (nxt := next_link(graph, links[-1])) is not None:
            after = f"after {links[-1].node.op} {links[-1].node.name!r}"
            try:
                grown = np.broadcast_shapes(shape, nxt.value.shape)
            except ValueError:
                stop = f"its constant does not broadcast with the chain's {after}"
                break
            if int(np.prod(grown)) > max(largest, nxt.value.size):
                stop = f"merging it {after} would grow the constant to {int(np.prod(grown))} values"
                break
            if linear is not None and isinstance(reason := channel_vector(nxt.value, layout, channels), Decline):
                stop = f"{reason.reason}, unlike the chain {after}"
                break
            links.append(nxt)
            largest, shape = max(largest, nxt.value.size), grown
        if isinstance(linear, MatMulOp) and len(links) == 1 and not head.is_scale:
            # MatMul + Add is the bias form already; the Add may still merge with what follows
            chain = FoldScaleIntoWeightsPass._chain_from(graph, head, into_linear=False)
            chain.why_not_linear = f"MatMul {linear.node.name!r} has no bias: MatMul + {head.node.op} is the bias form"
            return chain
        return Chain(links, linear, why, stop)

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        chain, outcome = match.data
        last = chain.links[-1].node.outputs[0]
        if chain.linear is not None:
            result = chain.linear.apply(outcome)
        else:
            result = chain.links[0].data
            for i, (op, value) in enumerate(outcome):
                result = _emit(graph, op, result, value, chain.links[0].dtype, last, final=i == len(outcome) - 1)
        replace_uses(graph, last, result)
        for link in chain.links:
            remove(link.node)


def _linear_before(graph: gs.Graph, head: Affine) -> tuple[LinearOp | None, str]:
    """The linear op the chain from ``head`` can fold into, or None and why not."""
    source = producer(head.data)
    if source is None:
        return None, "its input is a graph input or constant"
    where = f"{source.op} {source.name!r}"
    if is_graph_io(graph, head.data):
        return None, f"{where} output {head.data.name!r} is a graph output"
    if len(live_consumers(head.data)) != 1:
        return None, f"{where} output {head.data.name!r} has other consumers"
    op = linear_op(graph, source)
    if op is None:
        prev = as_affine(graph, source) if source.op in SCALES | SHIFTS else None
        if isinstance(prev, Decline):
            return None, f"{where} is not a constant scale or shift: {prev.reason}"
        if prev is not None and prev.dtype != head.dtype:
            return None, f"{where} has a {prev.dtype} constant, this one {head.dtype}"
        return None, f"its input comes from {where}, which cannot absorb it"
    problem = op.problem()
    if problem:
        return None, f"{where}: {problem}"
    return op, ""


def _compose(links: list[Affine]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(S, T) in float64 with chain(x) = x * S + T; None where the chain has no scale/shift."""
    scale = shift = None
    for link in links:
        f = link.factor()
        if link.is_scale:
            scale = f if scale is None else scale * f
            shift = None if shift is None else shift * f
        else:
            shift = f if shift is None else shift + f
    return scale, shift


def _reassociation_problem(links: list[Affine], scale: np.ndarray | None, shift: np.ndarray | None) -> str | None:
    """Why computing the chain as ``x * S + T`` would change its result, or None: its shift
    terms cancel in ``T``, or a running product of its scales strays far from 1..``S``."""
    terms, partials = [], []
    for link in links:
        f = link.factor()
        if link.is_scale:
            terms = [t * f for t in terms]
            partials.append(f if not partials else partials[-1] * f)
        else:
            terms.append(f)
    if shift is not None and len(terms) > 1 and (problem := cancellation(terms, shift)):
        return problem
    return scale_detour(partials[:-1], scale) if scale is not None else None


def _product(values: list[np.ndarray]) -> np.ndarray:
    result = np.ones(())
    for v in values:
        result = result * np.asarray(v, np.float64)
    return result


def _emit(graph: gs.Graph, op: str, data: gs.Tensor, exact: np.ndarray, dtype: np.dtype, replaced: gs.Tensor,
          final: bool) -> gs.Tensor:
    """A new ``op(data, exact cast to dtype)`` node; its output takes ``replaced``'s type (and
    shape if ``final``)."""
    out = gs.Variable(fresh_name(graph, f"{replaced.name}_{op.lower()}"), dtype=replaced.dtype,
                      shape=replaced.shape if final else None)
    const = exact_constant(graph, f"{replaced.name}_{'scale' if op in SCALES else 'shift'}", exact, dtype)
    graph.nodes.append(gs.Node(op, name=fresh_name(graph, f"{replaced.name}_{op}"), inputs=[data, const],
                               outputs=[out]))
    return out
