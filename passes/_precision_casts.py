"""Retype a graph for a set of converted nodes, with Casts only at region boundaries.

Given the nodes to convert (the rest stay FP32), each float32 tensor gets a *home* type:
the target type when a converted node computes it, FP32 when a kept node does; a graph
input keeps FP32 (unless its I/O is converted); a constant takes the target type unless
some consumer reads it in FP32. A consumer that wants the other type reads one Cast of
the tensor, shared by every such consumer. A Cast of a tensor that a Cast node computes
reads that node's input instead (adjacent Casts merged; a pair that would cancel is no
Cast at all). Graph outputs keep their name and FP32 type (the converted producer writes
a renamed tensor, Cast back under the output's name) unless their I/O is converted.

Node attributes that set a float type follow the node: Cast ``to``, ConstantOfShape and
Constant values (RandomNormal, EyeLike & co. are kept FP32 by the rules, their ``dtype``
unchanged); LayerNormalization/GroupNormalization get ``stash_type`` = 1 (statistics in FP32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from fusekit.passes._precision_rules import (
    ANY_TYPE_INPUT_OPS,
    FLEXIBLE_OPS,
    FLOAT,
    Target,
    is_float32,
)
from onnx_graphsurgeon.ir.tensor import LazyValues

from fusekit.graph_edit import constant_array, fresh_name, onnx_type, producer
from fusekit.shapes import gs_dtype

STASH_TYPE_OPS = frozenset({"LayerNormalization", "GroupNormalization"})
SHORT_NAMES = {FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}  # in tensor names


@dataclass
class Plan:
    """What to convert: node ids, each converted node's float32-pinned inputs, the I/O choice."""

    target: Target
    converted: set[int]
    pinned_inputs: dict[int, frozenset[int]] = field(default_factory=dict)
    convert_io: bool = False


def wanted(plan: Plan, node: gs.Node, index: int) -> int | None:
    """The type ``node`` reads its float32 input ``index`` in (None: any type)."""
    if index == 0 and node.op in ANY_TYPE_INPUT_OPS:
        return None
    if id(node) in plan.converted and index not in plan.pinned_inputs.get(id(node), ()):
        return plan.target.onnx_type
    return FLOAT


def decide_flexible(graph: gs.Graph, plan: Plan) -> None:
    """Convert each node of :data:`FLEXIBLE_OPS` computing float32 when its consumers want the
    target type (a Cast: any of them; others: all that have a preference)."""
    outputs = {id(t) for t in graph.outputs}
    for node in reversed(graph.nodes):  # consumers first
        if node.op not in FLEXIBLE_OPS or not node.outputs or not is_float32(node.outputs[0]):
            continue
        out = node.outputs[0]
        wants = {wanted(plan, c, i) for c in out.outputs for i, t in enumerate(c.inputs) if t is out}
        if id(out) in outputs and not plan.convert_io:
            wants.add(FLOAT)
        low = plan.target.onnx_type in wants
        if low and (node.op == "Cast" or FLOAT not in wants):
            plan.converted.add(id(node))


def retype(graph: gs.Graph, plan: Plan) -> int:
    """Apply ``plan`` to ``graph``; return the number of Casts added."""
    target = plan.target
    float_tensors = [t for t in graph.tensors().values() if is_float32(t)]
    consumers = {id(t): [(c, i) for c in t.outputs for i, x in enumerate(c.inputs) if x is t]
                 for t in float_tensors}
    pinned = {id(t) for t in graph.outputs} if not plan.convert_io else set()
    inputs = {id(t) for t in graph.inputs}
    home = {id(t): _home(t, plan, consumers[id(t)], pinned, inputs) for t in float_tensors}
    for node in graph.nodes:
        if id(node) in plan.converted:
            _retype_attributes(node, target)
    casts = _Casts(graph, home, pinned)
    for t in float_tensors:
        holder = t
        if home[id(t)] != FLOAT:
            holder = _to_target(graph, t, target, id(t) in pinned)
            if holder is not t:
                casts.made[(id(t), FLOAT)] = casts.write(holder, FLOAT, t)
        casts.holders[id(t)] = holder
    for t in float_tensors:
        for node, index in consumers[id(t)]:
            want = wanted(plan, node, index) or home[id(t)]
            node.inputs[index] = casts.holders[id(t)] if want == home[id(t)] else casts.of(t, want)
    return casts.added


def _home(t: gs.Tensor, plan: Plan, uses, pinned: set[int], inputs: set[int]) -> int:
    if id(t) in inputs:
        return plan.target.onnx_type if plan.convert_io else FLOAT
    if isinstance(t, gs.Constant):
        wants = {wanted(plan, n, i) for n, i in uses} - {None}
        return FLOAT if FLOAT in wants or id(t) in pinned or not wants else plan.target.onnx_type
    source = producer(t)
    return plan.target.onnx_type if source is not None and id(source) in plan.converted else FLOAT


def _to_target(graph: gs.Graph, t: gs.Tensor, target: Target, pinned: bool) -> gs.Tensor:
    """Give ``t`` the target type; a pinned output keeps its own, and its producer writes a
    new tensor of the target type instead (returned)."""
    if isinstance(t, gs.Constant):
        t.values = converted_values(constant_array(t), target, t.name)
        return t
    if not pinned:
        t.dtype = gs_dtype(target.onnx_type)
        return t
    low = gs.Variable(fresh_name(graph, f"{t.name}_{target.name}"), dtype=gs_dtype(target.onnx_type), shape=t.shape)
    source = producer(t)
    source.outputs[source.outputs.index(t)] = low
    return low


class _Casts:
    """The Casts added: one per (tensor, type), merged with a Cast node that computes it."""

    def __init__(self, graph: gs.Graph, home: dict[int, int], pinned: set[int]) -> None:
        self.graph, self.home, self.pinned, self.added = graph, home, pinned, 0
        self.holders: dict[int, gs.Tensor] = {}
        self.made: dict[tuple[int, int], gs.Tensor] = {}

    def of(self, t: gs.Tensor, to: int) -> gs.Tensor:
        key = (id(t), to)
        if key not in self.made:
            out = gs.Variable(fresh_name(self.graph, f"{t.name}_{SHORT_NAMES.get(to, 'cast')}"),
                              dtype=gs_dtype(to), shape=t.shape)
            self.made[key] = self.write(self.holders[id(t)], to, out)
        return self.made[key]

    def write(self, source: gs.Tensor, to: int, out: gs.Tensor) -> gs.Tensor:
        """Cast ``source`` to ``to`` into ``out``, reading past a Cast node that computes it."""
        node = producer(source)
        if node is not None and node.op == "Cast":
            source = node.inputs[0]
            if self._type(source) == to and not any(o is out for o in self.graph.outputs):
                return source  # the two Casts cancel
        self.graph.nodes.append(gs.Node("Cast", fresh_name(self.graph, f"{out.name}/Cast"), attrs={"to": to},
                                        inputs=[source], outputs=[out]))
        self.added += 1
        return out

    def _type(self, t: gs.Tensor) -> int | None:
        """The type ``t`` has once retyped (a pinned output keeps FP32)."""
        return FLOAT if id(t) in self.pinned else self.home.get(id(t), onnx_type(t.dtype))


def _retype_attributes(node: gs.Node, target: Target) -> None:
    low = target.onnx_type
    if node.op == "Cast" and node.attrs.get("to") == FLOAT:
        node.attrs["to"] = low
    elif node.op == "ConstantOfShape":
        value = node.attrs.get("value")
        array = np.zeros(1, np.float32) if value is None else constant_array(value)
        if array.dtype == np.float32:
            node.attrs["value"] = gs.Constant(f"{node.name}_value", converted_values(array, target, "value"))
    elif node.op == "Constant":
        array = _constant_node_value(node)
        if array is not None and array.dtype == np.float32:
            node.attrs.clear()
            node.attrs["value"] = gs.Constant(f"{node.name}_value", converted_values(array, target, "value"))
    elif node.op in STASH_TYPE_OPS:
        node.attrs["stash_type"] = 1


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    if isinstance(node.attrs.get("value"), gs.Constant):
        return constant_array(node.attrs["value"])
    if "value_float" in node.attrs:
        return np.array(node.attrs["value_float"], np.float32)
    if "value_floats" in node.attrs:
        return np.array(node.attrs["value_floats"], np.float32)
    return None


def converted_values(array: np.ndarray, target: Target, name: str):
    """``array`` in the target type, as a ``gs.Constant`` holds it (bfloat16: a tensor proto,
    which onnx-graphsurgeon exports as it is)."""
    low = np.asarray(array).astype(target.numpy_type)
    if target.onnx_type == onnx.TensorProto.FLOAT16:
        return low
    return LazyValues(onnx.numpy_helper.from_array(low, name))


