"""Fold chains of constant Mul/Add/Sub/Div into linear ops' weights, or into one scale and one shift.

A link is ``Mul``/``Add`` with a constant on either side, or ``Sub``/``Div`` with the
constant second (``c - x`` and ``c / x`` do not compose this way). As a map of ``x`` it
is a scale ``f`` (Mul ``c``, Div ``1/c``) or a shift ``f`` (Add ``c``, Sub ``-c``). A
chain is a run of links each read only by the next. In float64 it composes to::

    y = x * S + T,   S = prod of the scales,   T = sum of each shift times the scales after it

and every constant the rewrite writes is computed from the chain's own constants in
float64 and cast back once (a chain is rewritten whole, never link by link).

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
the composed one larger than every constant so far), or change a graph output's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import (constant_array, fresh_name, is_graph_io, live_consumers, make_constant, producer,
                                remove, replace_uses)
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._channel_affine import (DEFAULT_DOMAINS, FLOAT_TYPES, LinearOp, MatMulOp, channel_vector,
                                            linear_op)

Verdict = Match | Decline
SCALES, SHIFTS = frozenset({"Mul", "Div"}), frozenset({"Add", "Sub"})


@dataclass(frozen=True)
class Affine:
    """A scale or shift of a computed value ``data`` by the constant ``value``."""

    node: gs.Node
    data: gs.Tensor
    value: np.ndarray

    @property
    def is_scale(self) -> bool:
        return self.node.op in SCALES

    def factor(self) -> np.ndarray:
        """The constant as what multiplies (scale) or is added to (shift) ``x``, in float64."""
        v = np.asarray(self.value, np.float64)
        return {"Mul": v, "Div": 1.0 / v, "Add": v, "Sub": -v}[self.node.op]


def as_affine(node: gs.Node) -> Affine | Decline:
    """The node as an :class:`Affine` link, or why it is not one."""
    if node.op not in SCALES | SHIFTS or (node.domain or "") not in DEFAULT_DOMAINS or len(node.inputs) != 2:
        return Decline(f"{node.op} is not a Mul/Add/Sub/Div of the default domain")
    values = [constant_array(t) for t in node.inputs]
    if all(v is not None for v in values):
        return Decline("both operands are constant")
    if all(v is None for v in values):
        return Decline("no constant operand")
    if values[0] is not None and node.op in ("Sub", "Div"):
        return Decline(f"the constant is the first operand of {node.op}")
    index = 0 if values[0] is not None else 1
    value = np.asarray(values[index])
    if value.dtype not in FLOAT_TYPES:
        return Decline(f"the constant is {value.dtype}, not float16/float32/float64")
    if node.op == "Div" and not np.all(value != 0):
        return Decline("it divides by a constant holding a zero")
    return Affine(node, node.inputs[1 - index], value)


def next_link(graph: gs.Graph, link: Affine) -> Affine | None:
    """The link reading ``link``'s output, if that is its only reader and not a graph output."""
    out = link.node.outputs[0]
    readers = live_consumers(out)
    if is_graph_io(graph, out) or len(readers) != 1:
        return None
    nxt = as_affine(readers[0])
    if isinstance(nxt, Decline) or nxt.data is not out or nxt.value.dtype != link.value.dtype:
        return None
    return nxt


def previous_link(graph: gs.Graph, link: Affine) -> Affine | None:
    source = producer(link.data)
    if source is None or source.op not in SCALES | SHIFTS:
        return None
    prev = as_affine(source)
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
        link = as_affine(node)
        if isinstance(link, Decline):
            return link
        chain = self._chain_of(graph, link)
        head = chain.links[0]
        if head.node is not node:
            return Decline(f"it is part of the chain from {head.node.op} {head.node.name!r}")
        ops = " then ".join(a.node.op for a in chain.links)
        if chain.linear is not None:
            where = f"{chain.linear.node.op} {chain.linear.node.name!r}"
            if isinstance(chain.linear, MatMulOp) and len(chain.links) == 1 and not head.is_scale:
                return Decline(f"{where} has no bias: MatMul + {node.op} is the bias form already")
            return Match(f"{ops} folded into {where}", chain)
        if len(chain.links) == 1:
            return Decline(chain.why_not_linear)
        if len(chain.links) == 2 and head.is_scale and not chain.links[1].is_scale:
            return Decline(f"{ops} is already one scale then one shift; {chain.why_not_linear}")
        return Match(f"{ops} merged into {' then '.join(self._emitted_ops(chain))}", chain)

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
    def _chain_from(graph: gs.Graph, head: Affine) -> Chain:
        linear, why = _linear_before(graph, head)
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
        return Chain(links, linear, why, stop)

    @staticmethod
    def _emitted_ops(chain: Chain) -> list[str]:
        scales = [a.node.op for a in chain.links if a.is_scale]
        shifts = [a.node.op for a in chain.links if not a.is_scale]
        ops = []
        if scales:
            ops.append("Div" if set(scales) == {"Div"} else "Mul")
        if shifts:
            ops.append("Sub" if set(shifts) == {"Sub"} else "Add")
        return ops

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        chain: Chain = match.data
        scale, shift = _compose(chain.links)
        last = chain.links[-1].node.outputs[0]
        dtype = chain.links[0].value.dtype
        if chain.linear is not None:
            layout, channels = chain.linear.output_layout(), chain.linear.channels
            result = chain.linear.apply(None if scale is None else channel_vector(scale, layout, channels),
                                        None if shift is None else channel_vector(shift, layout, channels))
        else:
            result = chain.links[0].data
            emitted = self._emitted_ops(chain)
            if scale is not None:
                op = emitted.pop(0)
                value = _product([a.value for a in chain.links if a.is_scale]) if op == "Div" else scale
                result = _emit(graph, op, result, value.astype(dtype), last, final=not emitted)
            if shift is not None:
                op = emitted.pop(0)
                result = _emit(graph, op, result, (-shift if op == "Sub" else shift).astype(dtype), last, final=True)
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
        prev = as_affine(source) if source.op in SCALES | SHIFTS else None
        if isinstance(prev, Decline):
            return None, f"{where} is not a constant scale or shift: {prev.reason}"
        if prev is not None and prev.value.dtype != head.value.dtype:
            return None, f"{where} has a {prev.value.dtype} constant, this one {head.value.dtype}"
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


def _product(values: list[np.ndarray]) -> np.ndarray:
    result = np.ones(())
    for v in values:
        result = result * np.asarray(v, np.float64)
    return result


def _emit(graph: gs.Graph, op: str, data: gs.Tensor, value: np.ndarray, replaced: gs.Tensor,
          final: bool) -> gs.Tensor:
    """A new ``op(data, value)`` node; its output takes ``replaced``'s type (and shape if ``final``)."""
    out = gs.Variable(fresh_name(graph, f"{replaced.name}_{op.lower()}"), dtype=replaced.dtype,
                      shape=replaced.shape if final else None)
    const = make_constant(graph, f"{replaced.name}_{'scale' if op in SCALES else 'shift'}", value)
    graph.nodes.append(gs.Node(op, name=fresh_name(graph, f"{replaced.name}_{op}"), inputs=[data, const],
                               outputs=[out]))
    return out
