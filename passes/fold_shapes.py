"""Fold shape computations: what the shapes fix becomes a constant, the rest stays dynamic.

Exporters compute shapes at runtime: ``Shape -> Gather -> Unsqueeze -> Concat ->
Reshape``. With the symbolic analysis of ``passes/_shapes/`` (each dim an
expression over the named dims), this pass rewrites:

- every small integer tensor whose value is the same for all input sizes becomes a
  constant: ``Shape(x)[1:]`` of x ``[batch, 3, 224, 224]`` is ``[3, 224, 224]``, and
  with every input fixed every Shape folds;
- a Reshape target that is still symbolic becomes a constant where ONNX's Reshape can
  say it: an element equal to the input's dim at the same axis is ``0`` (copy, when
  ``allowzero`` is 0) and one other element may be ``-1``, only if every other
  element is a positive constant (``-1`` divides by their product: with a zero-sized
  dim it would fail where the original did not). ``[batch, seq, 64]`` reshaped to
  ``Concat(batch, seq, 4, 16)`` becomes ``Reshape(x, [0, 0, 4, 16])``; a target
  element computed from runtime data (which TensorRT cannot use as a shape) is
  replaced the same way when it is the only one;
- an Expand target element equal to the input's dim at the same (right-aligned) axis
  becomes 1 (Expand broadcasts 1 to the input's dim);
- a Reshape or Expand whose output shape is its input shape is removed.

Must not: fix a dim the user left dynamic (``Gather(Shape(x), 0)`` of a dynamic batch
stays), or fold an element that depends on runtime data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import bypass, is_constant, make_constant
from fusekit.onnx_nodes import is_default_domain
from fusekit.pass_infra import Decline, Finding, Match, Pass, PassContext, Stage
from fusekit.passes._folding import record_folded, replace_with_constant
from fusekit.passes._shapes.analysis import Analysis
from fusekit.passes._shapes.expr import Expr

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What one run will do (``run``) or would do (``inspect``)."""

    folds: list[tuple[gs.Tensor, np.ndarray]] = field(default_factory=list)
    targets: list[tuple[gs.Node, np.ndarray]] = field(default_factory=list)  # new constant shape input
    noops: list[gs.Node] = field(default_factory=list)
    declines: list[tuple[gs.Node, str]] = field(default_factory=list)


class FoldShapesPass(Pass):
    """Fold shape arithmetic into constants and make Reshape/Expand targets constant."""

    name = "fold-shapes"
    stage = Stage.SHAPES
    priority = 10

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        plan = self._plan(graph, Analysis(graph))
        outputs = {id(t) for t in graph.outputs}
        rewrites = 0
        touched: dict[int, gs.Node] = {}
        for tensor, value in plan.folds:
            node = tensor.inputs[0]
            if replace_with_constant(graph, tensor, value, outputs):
                touched.setdefault(id(node), node)
                rewrites += 1
        record_folded(ctx, touched.values(), outputs)
        for node, target in plan.targets:
            if not node.outputs or is_constant(node.inputs[1]):
                continue
            node.inputs[1] = make_constant(graph, f"{node.name}_shape", target)
            ctx.record(node, f"{node.op} target made constant {target.tolist()}")
            rewrites += 1
        for node in plan.noops:
            if node.outputs and bypass(graph, node):
                ctx.record(node, f"{node.op} removed: its output shape is its input shape")
                rewrites += 1
        for node, reason in plan.declines:
            log.debug("%s %s: %s", node.op, node.name, reason)
        return rewrites

    def inspect(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Finding]:
        plan = self._plan(graph, Analysis(graph))
        for tensor, value in plan.folds:
            yield self.finding(tensor.inputs[0], Match(f"fold {tensor.name!r} into the constant {value.tolist()}"))
        for node, target in plan.targets:
            yield self.finding(node, Match(f"make the {node.op} target constant: {target.tolist()}"))
        for node in plan.noops:
            yield self.finding(node, Match(f"remove the {node.op}: its output shape is its input shape"))
        for node, reason in plan.declines:
            yield self.finding(node, Decline(reason))

    # -- planning -------------------------------------------------------------------
    def _plan(self, graph: gs.Graph, analysis: Analysis) -> Plan:
        plan = Plan()
        outputs = {id(t) for t in graph.outputs}
        constant = {id(t) for t, v in ((t, analysis.values.get(id(t))) for n in graph.nodes for t in n.outputs)
                    if v is not None and v.constant}
        for node in graph.nodes:
            if node.op == "Constant" or not node.outputs:
                continue
            for t in node.outputs:
                if id(t) in constant and (id(t) in outputs or any(
                        not all(id(o) in constant for o in c.outputs) for c in t.outputs)):
                    plan.folds.append((t, analysis.values[id(t)].array()))
            if not is_default_domain(node):
                continue
            if node.op == "Reshape":
                self._reshape(node, analysis, constant, plan)
            elif node.op == "Expand":
                self._expand(node, analysis, constant, plan)
            elif node.op == "Shape" and id(node.outputs[0]) not in constant:
                plan.declines.append((node, _dynamic_shape_reason(node, analysis)))
        return plan

    @staticmethod
    def _computed_target(node: gs.Node, analysis: Analysis, constant: set[int], plan: Plan,
                         need_input_shape: bool):
        """(input shape, target, its analysed value) of a Reshape/Expand whose computed target
        may become constant; None when the node is a no-op (planned for removal), its target
        is constant already, or the analysis cannot follow the target (decline planned)."""
        data, target = node.inputs[0], node.inputs[1]
        in_shape, out_shape = analysis.shape(data), analysis.shape(node.outputs[0])
        if _same_shape(in_shape, out_shape):
            plan.noops.append(node)
            return None
        if is_constant(target) or id(target) in constant:
            return None
        value = analysis.value(target)
        if value is None or value.scalar or (need_input_shape and in_shape is None):
            plan.declines.append((node, f"target {target.name!r} is not a small integer vector the analysis follows"))
            return None
        return in_shape, target, value

    def _reshape(self, node: gs.Node, analysis: Analysis, constant: set[int], plan: Plan) -> None:
        found = self._computed_target(node, analysis, constant, plan, need_input_shape=False)
        if found is None:
            return
        in_shape, target, value = found
        allowzero = bool(node.attrs.get("allowzero", 0))
        new: list[int | None] = []
        for i, e in enumerate(value.elems):
            if e is not None and e.is_const:
                new.append(e.value)
            elif not allowzero and e is not None and in_shape is not None and i < len(in_shape) and e == in_shape[i]:
                new.append(0)
            else:
                new.append(None)
        pending = [i for i, x in enumerate(new) if x is None]
        if len(pending) == 1 and all(x is not None and x > 0 for i, x in enumerate(new) if i != pending[0]):
            new[pending[0]] = -1
            pending = []
        if pending:
            plan.declines.append((node, "target stays computed at runtime: " + "; ".join(
                _element_reason(i, value.elems[i], target, analysis) for i in pending)))
            return
        plan.targets.append((node, np.array(new, dtype=np.int64)))

    def _expand(self, node: gs.Node, analysis: Analysis, constant: set[int], plan: Plan) -> None:
        found = self._computed_target(node, analysis, constant, plan, need_input_shape=True)
        if found is None:
            return
        in_shape, target, value = found
        n, rank = len(value.elems), len(in_shape)
        new, pending = [], []
        for j, e in enumerate(value.elems):
            axis = j - n + rank
            if e is not None and e.is_const:
                new.append(e.value)
            elif e is not None and axis >= 0 and e == in_shape[axis]:
                new.append(1)
            else:
                new.append(None)
                pending.append(j)
        if pending:
            plan.declines.append((node, "target stays computed at runtime: " + "; ".join(
                _element_reason(j, value.elems[j], target, analysis) for j in pending)))
            return
        plan.targets.append((node, np.array(new, dtype=np.int64)))


def _same_shape(a: list[Expr] | None, b: list[Expr] | None) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(x == y for x, y in zip(a, b))


def _element_reason(i: int, e: Expr | None, target: gs.Tensor, analysis: Analysis) -> str:
    if e is None:
        return f"element {i} depends on runtime data ({analysis.unknown_reason(target)})"
    shown = analysis.final(e).render()
    return f"element {i} is {shown if shown is not None else 'an unknown dim'}, not the input's dim {i}"


def _dynamic_shape_reason(node: gs.Node, analysis: Analysis) -> str:
    shape = analysis.shape(node.inputs[0])
    if shape is None:
        return f"the rank of {node.inputs[0].name!r} is unknown"
    shown = [analysis.final(d).render() for d in shape]
    text = ", ".join("?" if d is None else str(d) for d in shown)
    return f"{node.inputs[0].name!r} has shape ({text}): its dynamic dims are read at runtime"
