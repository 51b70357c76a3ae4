"""Small, shared graph edits for passes: read constants, rewire uses, bypass nodes.

Every rewrite that removes a node goes through :func:`replace_uses` / :func:`bypass`, so
graph outputs keep their names whatever a pass does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from fusekit.weightless import WeightlessValues

# Ops whose results are drawn at random: never folded or merged. (Dropout draws a mask
# only in training mode; in inference it is an Identity, which remove-noops removes.)
S = TypeVar("S")
NONDETERMINISTIC_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                                  "Multinomial", "Bernoulli", "Dropout"})


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that computes ``tensor``, or None for inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def constant_of(tensor: gs.Tensor | None) -> gs.Constant | None:
    """The ``gs.Constant`` holding a constant tensor's values: the tensor itself (an
    initializer) or the ``value`` of the ``Constant`` node computing it; else None."""
    if isinstance(tensor, gs.Constant):
        return tensor
    node = producer(tensor) if tensor is not None else None
    if node is not None and node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
        return node.attrs["value"]
    return None


def held_values(const: gs.Constant) -> np.ndarray | LazyValues:
    """A constant's values as onnx-graphsurgeon holds them: an array, or a lazy (file-backed)
    holder that is not loaded by this. gs has no public reader (``Constant.values`` loads
    and keeps the array), so this is fusekit's one use of its private ``_values``; writes
    go through the public ``values`` setter, which stores what it is given as it is."""
    return const._values


def constant_array(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor (initializer or ``Constant`` node output), else None.

    Lazy (file-backed) values are read without being cached on the tensor, so reading a
    weight does not make the exporter copy it later. A tensor stored without data (a
    weightless model) has no value here.
    """
    const = constant_of(tensor)
    if const is None:
        return None
    values = held_values(const)
    if isinstance(values, WeightlessValues):
        return None  # stored without data: its values are unknown, as a computed tensor's are
    return values.load() if isinstance(values, LazyValues) else values


def is_weightless(tensor: gs.Tensor | None) -> bool:
    """Whether ``tensor`` is a constant stored without data (a weightless model's initializer)."""
    const = constant_of(tensor)
    return const is not None and isinstance(held_values(const), WeightlessValues)


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input ``index`` if the node has it (an empty name means absent)."""
    if len(node.inputs) > index and node.inputs[index].name:
        return node.inputs[index]
    return None


def is_constant(tensor: gs.Tensor | None) -> bool:
    return constant_of(tensor) is not None


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape if every dim is a known non-negative integer, else None."""
    shape = tensor.shape
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def onnx_type(dtype) -> int | None:
    """An element type as an ONNX ``TensorProto`` enum (None if unknown).

    onnx-graphsurgeon stores NumPy dtypes, except for types NumPy lacks (bfloat16, float8,
    int4...) where it keeps the ONNX enum itself: compare types through this, never with
    ``np.dtype`` directly.
    """
    if dtype is None:
        return None
    if isinstance(dtype, (int, np.integer)):
        return int(dtype)
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError, ValueError):
        return None


def type_name(onnx_enum: int) -> str:
    """``float32``, ``bfloat16``, ``float8e4m3fn``... for messages."""
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_enum)))
    except (TypeError, KeyError, ValueError):
        return onnx.TensorProto.DataType.Name(onnx_enum).lower()


def itemsize(dtype) -> int | None:
    """Bytes per element of a NumPy dtype or ONNX enum (None if unknown)."""
    enum = onnx_type(dtype)
    try:
        return None if enum is None else np.dtype(onnx.helper.tensor_dtype_to_np_dtype(enum)).itemsize
    except (TypeError, KeyError, ValueError):
        return None


def is_graph_io(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs) or any(t is tensor for t in graph.inputs)


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> bool:
    """Make every consumer of ``old`` read ``new`` instead; keep graph output names.

    If ``old`` is a graph output, ``new``'s producer is made to write ``old`` directly
    (and ``new``'s other consumers read ``old``). Returns False, changing nothing, when
    that is impossible: ``new`` is a graph input, a constant or itself a graph output.
    """
    if not can_replace(graph, old, new):
        return False
    if any(t is old for t in graph.outputs):
        source = producer(new)
        old_source = producer(old)
        if old_source is not None:
            old_source.outputs = [t for t in old_source.outputs if t is not old]
        rewire_consumers(new, old)
        source.outputs = [old if t is new else t for t in source.outputs]
        if old.dtype is None:
            old.dtype = new.dtype
        if old.shape is None:
            old.shape = new.shape
        return True
    rewire_consumers(old, new)
    return True


def rewire_consumers(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of ``old`` read ``new`` (graph outputs are not touched)."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def can_replace(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> bool:
    """Whether :func:`replace_uses` can succeed (it can unless old is a graph output that
    ``new`` cannot be renamed to)."""
    if not any(t is old for t in graph.outputs):
        return True
    return producer(new) is not None and not is_graph_io(graph, new) and not isinstance(new, gs.Constant)


def bypass(graph: gs.Graph, node: gs.Node, keep_input: int = 0) -> bool:
    """Remove a node whose only used output equals its input ``keep_input``.

    Returns False (graph unchanged) when the node must stay: it connects a graph input
    or constant straight to a graph output.
    """
    out = node.outputs[0]
    if not replace_uses(graph, out, node.inputs[keep_input]):
        return False
    remove(node)
    return True


def remove(node: gs.Node) -> None:
    """Detach a node; the manager's cleanup drops it from the graph."""
    node.inputs.clear()
    node.outputs.clear()


@dataclass
class GraphNotes:
    """What fusekit keeps about one ``gs.Graph`` that onnx-graphsurgeon has no field for:
    one object per graph (made on first use by :func:`notes`), living and dying with it.

    ``declared_types``: declared value types gs cannot hold (optional, map, sequence), by
    name, set by loading and written back by export. ``names``: every name taken, for
    :func:`fresh_name` (None until first needed). ``states``: what passes compute for the
    graph and share between rounds or passes, one object per kind (see :meth:`state`).
    """

    declared_types: dict[str, onnx.TypeProto] = field(default_factory=dict)
    names: set[str] | None = None
    states: dict[type, Any] = field(default_factory=dict)

    def state(self, kind: Callable[[], S]) -> S:
        """The graph's instance of ``kind`` (made on first use)."""
        if kind not in self.states:
            self.states[kind] = kind()
        return self.states[kind]


_NOTES = "_fusekit_notes"  # the one attribute fusekit adds to a gs.Graph


def notes(graph: gs.Graph) -> GraphNotes:
    """``graph``'s :class:`GraphNotes`."""
    found = graph.__dict__.get(_NOTES)
    if found is None:
        found = graph.__dict__[_NOTES] = GraphNotes()
    return found


def fresh_name(graph: gs.Graph, base: str) -> str:
    """A tensor/node name used nowhere in ``graph`` (deterministic across runs)."""
    kept = notes(graph)
    if kept.names is None:
        kept.names = set(graph.tensors()) | {n.name for n in graph.nodes}
    taken = kept.names
    name, suffix = base, 0
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    taken.add(name)
    return name


def make_constant(graph: gs.Graph, base: str, values: np.ndarray) -> gs.Constant:
    return gs.Constant(fresh_name(graph, base), np.require(values, requirements="C"))


def live_consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Consumers that are still in the graph (detached nodes have no outputs)."""
    return [n for n in tensor.outputs if n.outputs]


def sole_use_problem(graph: gs.Graph, tensor: gs.Tensor, consumer: gs.Node) -> str | None:
    """Why a rewrite that stops computing ``tensor`` would change what others see, or None.

    None means ``consumer`` is the only live node reading ``tensor`` and it is not a graph
    output; otherwise the reason, worded for a ``Decline``.
    """
    if any(t is tensor for t in graph.outputs):
        return f"{tensor.name!r} is a graph output"
    others = [n for n in live_consumers(tensor) if n is not consumer]
    if others:
        return f"{tensor.name!r} is also read by {others[0].op} {others[0].name!r}"
    return None
