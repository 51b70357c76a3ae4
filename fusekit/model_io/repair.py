"""Lenient in: accept the models onnxruntime runs, repairing what is safe, one warning each.

Repairs made on every load (:func:`repair_loaded`, which never changes what the model
computes):

- an unsorted graph is sorted (topologically); an unnamed graph gets a name;
- duplicate ``value_info`` entries (the same name twice) are dropped, contradictory ones
  (the same name with different types) are dropped altogether;
- initializers with no data (as weight-stripping tools write them) stay without data: a
  pass that needs their values stops with an ``InputError`` naming the pass and tensor,
  and everything that does not need them is optimized.

Checked before the passes run (:func:`check_input`):

- ``value_info`` that contradicts shape inference is dropped (the graph computes what it
  computes; the annotation was stale);
- a graph output whose rank inference cannot find keeps its unknown shape;
- what ``onnx.checker`` still refuses after that (an op no schema knows, in any domain; a
  shape-inference error on one node; weightless tensors) is accepted with a warning, and
  the optimized model must not fail the checker in any other way (:func:`check_output`).

With ``strict`` each of these is an ``InputError`` (exit 2), as before this module. Only
unreadable input (not protobuf, no graph, unsafe external data) is refused either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from fusekit.errors import InputError, PassError
from fusekit.graph_order import sort_topologically
from fusekit.weightless import WeightlessValues

log = logging.getLogger("fusekit.repair")


@dataclass
class Acceptance:
    """What loading repaired (one line each) and what the checker refused but was accepted."""

    repairs: list[str] = field(default_factory=list)
    accepted: str | None = None  # the checker's first complaint about the input, if accepted


Repair = tuple[str, str]  # (what is wrong, naming the model; what was done about it)


def repair_loaded(model: onnx.ModelProto, graph: gs.Graph, where: str) -> list[Repair]:
    """Make the safe structural repairs on ``graph`` (imported from ``model``); say what was done."""
    repairs = []
    was_sorted = _is_sorted(graph)
    try:
        sort_topologically(graph)  # also what finds a cycle (a node writing a graph input, say)
    except ValueError as exc:
        raise InputError(f"{where}: not a valid graph: {exc}") from None
    if not was_sorted:
        repairs.append((f"{where}: the graph's nodes are not in topological order", "sorted them"))
    _refuse_undefined_inputs(graph, where)
    if not graph.name:
        graph.name = "main"
        repairs.append((f"{where}: the graph has no name", "named it 'main'"))
    repairs.extend(_value_info_repairs(model, graph, where))
    weightless = _mark_weightless(graph)
    if weightless:
        names = ", ".join(repr(n) for n in weightless[:3]) + (" ..." if len(weightless) > 3 else "")
        repairs.append((f"{where}: {len(weightless)} initializer(s) have no data (a weightless model: {names})",
                        "optimized without reading them; a pass that needs their values stops"))
    return repairs


# What onnx.checker refuses that a runtime may still run: accepted with a warning (not strict).
# Anything else it refuses (an empty op_type, a value nobody computes) is a broken graph.
ACCEPTABLE = ("No Op registered for", "ShapeInferenceError", "should contain one and only one value field",
              "Field 'shape' of 'type' is required but missing")


def check_input(graph: gs.Graph, shell: onnx.ModelProto, where: str, repairs: list[str], strict: bool) -> Acceptance:
    """Check the loaded model; repair or accept (with a warning) what is safe unless ``strict``."""
    from fusekit.shapes import complete_outputs
    from fusekit.validate import check_graph

    if strict and repairs:
        raise InputError(f"{repairs[0][0]} (--strict)")
    acceptance = Acceptance([f"{problem}; {action}" for problem, action in repairs])
    try:
        complete_outputs(graph, shell, where)
    except InputError as exc:
        if strict:
            raise
        acceptance.repairs.append(f"{exc}; kept with an unknown shape")
    try:
        check_graph(graph, shell, f"{where}: invalid model")
    except InputError as exc:
        if strict or "cannot be written back" in str(exc):
            raise
        dropped = _drop_contradicted_value_info(graph, shell)
        if dropped:
            acceptance.repairs.append(f"{where}: value_info contradicts shape inference ({', '.join(dropped)}); "
                                      "dropped it")
        try:
            check_graph(graph, shell, f"{where}: invalid model")
        except InputError as again:
            if not any(kind in str(again) for kind in ACCEPTABLE):
                raise
            acceptance.accepted = _complaint(again)
            acceptance.repairs.append(f"{again}; accepted as it is (--strict refuses it)")
    for line in acceptance.repairs:
        log.warning("%s", line)
    return acceptance


def check_output(graph: gs.Graph, shell: onnx.ModelProto, acceptance: Acceptance) -> None:
    """The optimized model passes the checker, or fails it only as the accepted input did."""
    from fusekit.validate import check_graph

    what = "the optimized model is invalid (rerun with --debug to find the pass)"
    try:
        check_graph(graph, shell, what, error=PassError)
    except PassError as exc:
        if acceptance.accepted is None or _complaint(exc) != acceptance.accepted:
            raise


def _complaint(exc: Exception) -> str:
    """The checker's message without the prefix naming the model."""
    return str(exc).split(": ", 1)[-1].split("invalid model: ", 1)[-1].split("(rerun with --debug to find the pass): ",
                                                                               1)[-1]


def _refuse_undefined_inputs(graph: gs.Graph, where: str) -> None:
    """A value read in the main graph but computed by nothing (no node, input or initializer)
    is a broken graph no runtime runs: refused."""
    inputs = {id(t) for t in graph.inputs}
    for node in graph.nodes:
        for t in node.inputs:
            if t.name and isinstance(t, gs.Variable) and not t.inputs and id(t) not in inputs:
                raise InputError(f"{where}: input {t.name!r} of node {node.name or node.op!r} is computed by no "
                                 "node and is neither a graph input nor an initializer")


def _is_sorted(graph: gs.Graph) -> bool:
    known = {t.name for t in graph.inputs} | {name for name, t in graph.tensors().items()
                                             if isinstance(t, gs.Constant)}
    outer = _outer_names(graph)
    for node in graph.nodes:
        for t in node.inputs:
            if t.name and t.name not in known and t.name not in outer:
                return False
        known.update(t.name for t in node.outputs)
    return True


def _outer_names(graph: gs.Graph) -> set[str]:
    produced = {t.name for n in graph.nodes for t in n.outputs}
    return {t.name for n in graph.nodes for t in n.inputs
            if t.name and t.name not in produced and not isinstance(t, gs.Constant)} - {t.name for t in graph.inputs}


def _value_info_repairs(model: onnx.ModelProto, graph: gs.Graph, where: str) -> list[Repair]:
    seen: dict[str, bytes] = {}
    duplicates, contradictory = set(), set()
    for vi in model.graph.value_info:
        key = vi.type.SerializeToString()
        if vi.name in seen:
            (duplicates if seen[vi.name] == key else contradictory).add(vi.name)
        seen.setdefault(vi.name, key)
    repairs = []
    if duplicates - contradictory:
        repairs.append((f"{where}: duplicate value_info ({', '.join(sorted(duplicates - contradictory))})",
                        "dropped the copies"))
    if contradictory:
        tensors = graph.tensors()
        for name in contradictory:
            tensor = tensors.get(name)
            if isinstance(tensor, gs.Variable) and tensor not in graph.outputs and tensor not in graph.inputs:
                tensor.dtype, tensor.shape = None, None
        repairs.append((f"{where}: contradictory value_info (one name, several types: "
                        f"{', '.join(sorted(contradictory))})", "dropped it"))
    return repairs


def _mark_weightless(graph: gs.Graph) -> list[str]:
    names = []
    for tensor in graph.tensors().values():
        values = getattr(tensor, "_values", None)
        if type(values) is not LazyValues or not _has_no_data(values.tensor):
            continue
        weightless = WeightlessValues.__new__(WeightlessValues)
        weightless.__dict__.update(values.__dict__)
        tensor._values = weightless
        names.append(tensor.name)
    return names


_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _has_no_data(proto: onnx.TensorProto) -> bool:
    if proto.data_location == onnx.TensorProto.EXTERNAL or proto.external_data:
        return False
    count = 1
    for d in proto.dims:
        count *= d
    if count == 0:
        return False
    return not any(len(getattr(proto, f)) for f in _DATA_FIELDS)


def _drop_contradicted_value_info(graph: gs.Graph, shell: onnx.ModelProto) -> list[str]:
    """Forget the declared type/shape of intermediate tensors; keep what inference finds.
    Returns the names whose declaration inference contradicts."""
    from fusekit.shapes import annotate_shapes

    io = {id(t) for t in (*graph.inputs, *graph.outputs)}
    declared = {}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in io and (tensor.dtype is not None
                                                                         or tensor.shape is not None):
            declared[tensor.name] = (tensor, tensor.dtype, tensor.shape)
            tensor.dtype, tensor.shape = None, None
    annotate_shapes(graph, shell)
    dropped = []
    for name, (tensor, dtype, shape) in declared.items():
        if (tensor.dtype is not None and tensor.dtype != dtype) or (
                tensor.shape is not None and shape is not None and _contradicts(tensor.shape, shape)):
            dropped.append(name)
        else:  # not contradicted: keep what was declared where inference found nothing
            tensor.dtype = tensor.dtype if tensor.dtype is not None else dtype
            tensor.shape = tensor.shape if tensor.shape is not None else shape
    return dropped


def _contradicts(inferred, declared) -> bool:
    if len(inferred) != len(declared):
        return True
    return any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(inferred, declared))
