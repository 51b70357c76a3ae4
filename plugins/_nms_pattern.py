"""A pattern graph written in ONNX text, matched node by node against a graph (plugins/_nms_tails.py).

The pattern is written as fusekit's cleanup stages leave an exporter's graph (constants
folded, common subexpressions merged). :meth:`Pattern.match` walks the pattern and the
graph back from the outputs together and requires the same op types, attributes (ONNX
defaults filled in), literal constants (``$N`` and ``$CN`` in the text are replaced by the
numbers given) and wiring; each pattern node stands for one graph node, and one pattern
value for one graph tensor. The pattern's graph inputs other than ``boxes`` and ``scores``
are free: they bind to whatever the graph has there, for the caller to check.
Unsqueeze/Squeeze (and ReduceMax) axes match whether given as attribute (opset < 13, < 18)
or input, Unsqueeze's in any order (they are a set), and an If
with a constant condition is seen through to the branch it takes (its nodes are reported
in ``Bound.covered``). A mismatch comes back as a sentence naming the first difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array
from fusekit.onnx_nodes import is_default_domain

AXES_OPS = frozenset({"Unsqueeze", "Squeeze", "ReduceMax"})


def const(t) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(t, np.ndarray):
        return t
    if isinstance(t, gs.Constant) or len(t.inputs) == 1:  # one producer: a Constant node's value
        v = constant_array(t)
        return None if v is None else np.asarray(v)
    return None


def single_value(t):
    """The Python value of a one-element constant tensor, else None."""
    v = const(t)
    return None if v is None or v.size != 1 else v.reshape(-1)[0].item()


@dataclass
class Bound:
    """A pattern matched: pattern tensor name -> graph tensor, and the graph nodes it covers."""

    tensors: dict[str, gs.Tensor] = field(default_factory=dict)
    nodes: dict[int, gs.Node] = field(default_factory=dict)  # id(pattern node) -> graph node
    covered: list[gs.Node] = field(default_factory=list)  # If nodes seen through, and their branches' nodes


class Pattern:
    """A tail's pattern graph (ONNX text) for boxes/image ``n`` and ``c`` classes."""

    def __init__(self, text: str, n: int, c: int):
        proto = onnx.parser.parse_graph(text.replace("$CN", str(c * n)).replace("$N", str(n)))
        self.graph = gs.import_onnx(onnx.helper.make_model(proto, opset_imports=[onnx.helper.make_opsetid("", 17)]))
        self.free = {t.name for t in self.graph.inputs}

    def match(self, outputs: list[gs.Tensor], boxes: gs.Tensor, scores: gs.Tensor) -> Bound | str:
        """Bind the pattern's outputs, in order, to ``outputs``; a reason string when they differ."""
        if len(outputs) != len(self.graph.outputs):
            return f"the NMS reaches {len(outputs)} graph outputs, this tail ends at {len(self.graph.outputs)}"
        bound = Bound()
        bound.tensors.update(boxes=boxes, scores=scores)
        for p, g in zip(self.graph.outputs, outputs):
            why = self._value(p, g, bound)
            if why:
                return why
        return bound

    def _value(self, p: gs.Tensor, g, bound: Bound) -> str | None:
        g = _through_if(g, bound)
        if p.name in bound.tensors:
            return None if bound.tensors[p.name] is g else f"{_name(g)} is not the pattern's {p.name}"
        if p.name == "":  # an optional input left out
            return None if isinstance(g, gs.Variable) and g.name == "" else f"{_name(g)} is given, the pattern omits it"
        if p.name in self.free:
            if isinstance(g, np.ndarray):
                return f"{p.name} is an attribute"
            bound.tensors[p.name] = g
            return None
        if isinstance(p, gs.Constant):
            want, got = np.asarray(p.values), const(g)
            if got is None or got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
                return f"{_name(g)} is not the constant {want.tolist()} ({want.dtype})"
            return None
        pn = p.inputs[0]
        if isinstance(g, np.ndarray) or len(g.inputs) != 1:
            return f"{_name(g)} is not computed by {pn.op}"
        gn = g.inputs[0]
        if gn.op != pn.op or not is_default_domain(gn):
            return f"{g.name!r} comes from {gn.op}, the pattern has {pn.op}"
        if pn.outputs.index(p) != gn.outputs.index(g) or len(pn.outputs) != len(gn.outputs):
            return f"{gn.name!r} ({gn.op}) has other outputs than the pattern's"
        if id(pn) in bound.nodes:
            return None if bound.nodes[id(pn)] is gn else f"{gn.name!r} stands for a node matched elsewhere"
        if any(gn is n for n in bound.nodes.values()):
            return f"{gn.name!r} ({gn.op}) would stand for two pattern nodes"
        p_attrs, p_ins = _operands(pn)
        g_attrs, g_ins = _operands(gn)
        if len(p_ins) != len(g_ins):
            return f"{gn.name!r} ({gn.op}) has {len(g_ins)} inputs, the pattern {len(p_ins)}"
        for key in set(p_attrs) | set(g_attrs):
            if not _same_attr(_attr(pn.op, p_attrs, key), _attr(gn.op, g_attrs, key)):
                return f"{gn.name!r} ({gn.op}) has {key}={_attr(gn.op, g_attrs, key)!r}, " \
                       f"the pattern {_attr(pn.op, p_attrs, key)!r}"
        bound.nodes[id(pn)] = gn
        for pt, gt in zip(pn.outputs, gn.outputs):
            bound.tensors[pt.name] = gt
        for pt, gt in zip(p_ins, g_ins):
            if isinstance(pt, np.ndarray):  # the pattern's axes attribute (never: patterns use inputs)
                pt = gs.Constant(f"{pn.name}_axes", pt)
            why = self._value(pt, gt, bound)
            if why:
                return why
        return None


def _through_if(g, bound: Bound):
    """The branch output an If with a constant condition returns for ``g``, else ``g`` (torch
    exports ``squeeze(0)`` of a dim it cannot prove is 1 as such an If)."""
    while not isinstance(g, np.ndarray) and len(g.inputs) == 1 and g.inputs[0].op == "If":
        node = g.inputs[0]
        cond = single_value(node.inputs[0])
        if cond is None:
            break
        if not any(node is n for n in bound.covered):
            bound.covered += [node] + [n for b in ("then_branch", "else_branch") for n in node.attrs[b].nodes]
        g = node.attrs["then_branch" if cond else "else_branch"].outputs[node.outputs.index(g)]
    return g


def _name(t) -> str:
    return "an attribute" if isinstance(t, np.ndarray) else repr(t.name)


def _operands(node: gs.Node) -> tuple[dict, list]:
    """Attributes and inputs, with an ``axes`` attribute (AXES_OPS) as a constant input and
    Unsqueeze's constant axes sorted."""
    attrs, ins = dict(node.attrs), list(node.inputs)
    if node.op in AXES_OPS and "axes" in attrs:
        ins.append(np.asarray(attrs.pop("axes"), np.int64))
    if node.op == "Unsqueeze" and len(ins) == 2:
        axes = const(ins[1])
        if axes is not None:
            ins[1] = np.sort(axes.reshape(-1)).reshape(axes.shape)
    return attrs, ins


def _attr(op: str, attrs: dict, key: str):
    if key in attrs:
        v = attrs[key]
        return np.asarray(constant_array(v)) if isinstance(v, gs.Constant) else v
    try:
        default = onnx.defs.get_schema(op).attributes[key].default_value
    except Exception:
        return None
    return None if default is None or not default.name else onnx.helper.get_attribute_value(default)


def _same_attr(a, b) -> bool:
    if isinstance(a, onnx.TensorProto):
        a = onnx.numpy_helper.to_array(a)
    if isinstance(b, onnx.TensorProto):
        b = onnx.numpy_helper.to_array(b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is not None and b is not None and np.asarray(a).dtype == np.asarray(b).dtype and \
            np.array_equal(a, b)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a or []) == list(b or [])
    return a == b
