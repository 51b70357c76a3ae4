"""Push a Transpose through elementwise ops to meet another Transpose, removing one or both.

Rewrite: ``Transpose(E_k(...E_1(Transpose(x, p))...), q)`` -> ``Transpose(E_k'(...E_1'(x)...), r)``
with ``r[i] = p[q[i]]``, or without the last Transpose when r is the identity. Each E is an
elementwise op: unary (Relu, Sigmoid, Erf, Cast, Clip with scalar bounds...) or binary /
variadic (Add, Sub, Mul, Div, Pow, Min, Max, PRelu) whose other operands are constants.
Elementwise ops commute with a transpose: E(T_p(y), c) = T_p(E(y, T_p^-1(c))), so each
constant c of rank <= rank(y) is padded with leading 1s to that rank and transposed by
the inverse of p (constants that are all ones in shape are kept as they are). Broadcasting
commutes with the transpose too, since both operands are permuted alike. Values are
computed by the same arithmetic on the same elements: results are bit-identical.

Must not: rewrite when an intermediate (the first Transpose's output or an elementwise
result on the way) is a graph output or read by anything else (the first Transpose would
have to stay: nothing saved); when an operand is neither on the chain nor a constant;
when a constant has a higher rank than the chain (it would change the rank); or when the
first Transpose feeds the last directly (merge-transposes does that).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import bypass, can_replace, constant_array, make_constant, producer, remove, sole_use_problem
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._permute import BROADCASTING, UNARY, resolve_perm

MAX_CHAIN = 16


def _operand_problem(node: gs.Node, link: gs.Tensor, rank: int) -> str | None:
    """Why ``node`` does not commute with a transpose of ``link`` (its chain input), or None."""
    if node.op in UNARY:
        return None if len(node.inputs) == 1 else f"{node.op} has extra inputs"
    if node.op == "Clip":  # min/max are scalars: layout-free
        return None if node.inputs[0] is link and all(t is not link for t in node.inputs[1:]) else \
            "Clip bounds come from the chain"
    for t in node.inputs:
        if t is link:
            continue
        value = constant_array(t)
        if value is None:
            return f"{node.op} operand {t.name!r} is neither on the chain nor a constant"
        if np.ndim(value) > rank:
            return f"{node.op} constant {t.name!r} has rank {np.ndim(value)} > {rank}"
    return None


def _permuted_constant(value: np.ndarray, inverse: list[int]) -> np.ndarray | None:
    """``value`` in the untransposed layout, or None when it is the same there."""
    value = np.asarray(value)
    if all(d == 1 for d in value.shape):
        return None
    padded = value.reshape((1,) * (len(inverse) - value.ndim) + value.shape)
    return np.ascontiguousarray(np.transpose(padded, inverse))


class PushTransposesPass(NodeRewritePass):
    """Move a Transpose through elementwise ops so it merges with (or cancels) another."""

    name = "push-transposes"
    stage = Stage.FUSION
    priority = 60
    ops = frozenset({"Transpose"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match | Decline:
        chain: list[gs.Node] = []
        link, reader = node.inputs[0], node
        while True:
            source = producer(link)
            if source is None or (source.domain or "") not in self.domains:
                return Decline("no Transpose upstream through elementwise ops")
            problem = sole_use_problem(graph, link, reader)
            if problem:
                return Decline(f"an intermediate must stay: {problem}")
            if source.op == "Transpose":
                break
            if source.op not in UNARY | BROADCASTING | {"Clip"}:
                return Decline(f"input comes from {source.op} {source.name!r}, not through elementwise ops "
                               "from a Transpose")
            if len(chain) == MAX_CHAIN:
                return Decline(f"more than {MAX_CHAIN} elementwise ops before a Transpose")
            chain.append(source)
            data = [source.inputs[0]] if source.op not in BROADCASTING else \
                [t for t in source.inputs if t.name and constant_array(t) is None]
            if not data or any(t is not data[0] for t in data):
                return Decline(f"{source.op} {source.name!r} has no single non-constant operand")
            link, reader = data[0], source
        first = source
        if not chain:
            return Decline("input is a Transpose directly (merge-transposes merges those)")
        p, q = resolve_perm(first, None), resolve_perm(node, None)
        if p is None and q is not None:
            p = resolve_perm(first, len(q))
        if q is None and p is not None:
            q = resolve_perm(node, len(p))
        if p is None or q is None:
            return Decline("a Transpose has no perm and the rank is unknown")
        middle = first.outputs[0]
        for e in reversed(chain):
            problem = _operand_problem(e, middle, len(p))
            if problem:
                return Decline(problem)
            middle = e.outputs[0]
        if len(p) != len(q):
            return Decline(f"perms {p} and {q} differ in rank")
        merged = [p[i] for i in q]
        ops = " -> ".join(e.op for e in reversed(chain))
        if merged == list(range(len(merged))) and can_replace(graph, node.outputs[0], chain[0].outputs[0]):
            return Match(f"Transpose {p} pushed through {ops}: it cancels Transpose {q}; both removed",
                         (first, chain, p, merged, True))
        return Match(f"Transpose {p} pushed through {ops} and merged with Transpose {q} into perm {merged}",
                     (first, chain, p, merged, False))

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        first, chain, p, merged, cancel = match.data
        inverse = [int(i) for i in np.argsort(p)]
        link, source = first.outputs[0], first.inputs[0]
        remove(first)
        for e in reversed(chain):
            for i, t in enumerate(e.inputs):
                if t is link:
                    e.inputs[i] = source
                elif e.op in BROADCASTING:
                    value = _permuted_constant(constant_array(t), inverse)
                    if value is not None:
                        e.inputs[i] = make_constant(graph, f"{t.name}_untransposed", value)
            out = e.outputs[0]
            if out.shape is not None and len(out.shape) == len(p):
                out.shape = [out.shape[j] for j in inverse]
            else:
                out.shape = None
            link, source = out, out
        node.attrs["perm"] = merged
        if cancel:
            bypass(graph, node, 0)
