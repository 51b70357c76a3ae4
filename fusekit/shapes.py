"""Shape facts: ONNX shape inference onto the graph, input shape overrides, TensorRT checks.

- :func:`annotate_shapes` stores what ONNX shape inference finds on the graph's tensors
  (the ``infer-shapes`` pass; ``symbolic-shapes`` and ``fold-shapes`` go further).
- :func:`apply_input_shapes` fixes input shapes (``--input-shape NAME:1x3x224x224``) and
  named dims everywhere (``--dim batch=1``). Nothing else is ever fixed: every dim the
  user does not name stays as the model declares it.
- :func:`complete_outputs` gives graph outputs of unknown type or rank the inferred one.
- :func:`tensorrt_shape_problems` lists what TensorRT will refuse about shapes: shape
  inputs computed from runtime data, inputs of unknown rank or with 0/negative dims,
  outputs of unknown rank.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import get_numpy_type

from fusekit.errors import InputError
from fusekit.graph_edit import notes
from fusekit.profiles import dim_names
from fusekit.model_io import export_weightless
from fusekit.onnx_nodes import is_default_domain

log = logging.getLogger(__name__)

Dim = int | str | None
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def annotate_shapes(graph: gs.Graph, shell: onnx.ModelProto | None = None) -> int:
    """Run ONNX shape inference (weightless) and store dtypes/shapes on the graph's tensors.

    Graph inputs are left as declared. Returns how many tensors gained information.
    """
    light = export_weightless(graph, shell or onnx.ModelProto())
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference is advisory here; the final check is strict
        log.debug("shape inference failed: %s", exc)
        return 0
    tensors = graph.tensors()
    inputs = {id(t) for t in graph.inputs}
    gained = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = tensors.get(vi.name)
        if tensor is None or isinstance(tensor, gs.Constant) or id(tensor) in inputs:
            continue
        dtype, shape = _type_of(vi)
        if dtype is not None and tensor.dtype is None:
            tensor.dtype = dtype
            gained += 1
        if shape is not None and _more_specific(shape, tensor.shape):
            tensor.shape = shape
            gained += 1
    return gained


def _type_of(vi: onnx.ValueInfoProto):
    if not vi.type.HasField("tensor_type"):
        return None, None
    tt = vi.type.tensor_type
    dtype = gs_dtype(tt.elem_type) if tt.elem_type else None
    if not tt.HasField("shape"):
        return dtype, None
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return dtype, shape


def gs_dtype(elem_type: int):
    """An ONNX element type as onnx-graphsurgeon holds it: a NumPy dtype, or the ONNX enum
    itself for types it has no NumPy type for (bfloat16, float8). ml_dtypes types are not
    used: onnx-graphsurgeon exports some of them as the wrong ONNX type."""
    dtype = get_numpy_type(elem_type)
    return elem_type if dtype is None else dtype


def _more_specific(new: Sequence[Dim], old: Sequence[Dim] | None) -> bool:
    if old is None:
        return True
    if len(new) != len(old):
        return False
    return sum(isinstance(d, int) for d in new) > sum(isinstance(d, int) for d in old)


def parse_shape(text: str) -> tuple[str, list[Dim]]:
    """``NAME:1x3x224x224`` -> (NAME, dims). A dim is a size, a name (``batchx3x224x224``
    keeps axis 0 dynamic under the name ``batch``) or ``?`` (dynamic, unnamed)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name or not dims:
        raise InputError(f"--input-shape {text!r}: expected NAME:DxDxD, e.g. images:1x3x640x640")
    parsed: list[Dim] = []
    for d in dims.split("x"):
        d = d.strip()
        if d.isdigit() and int(d) >= 1:
            parsed.append(int(d))
        elif d == "?":
            parsed.append(None)
        elif _NAME.fullmatch(d):
            parsed.append(d)
        else:
            raise InputError(f"--input-shape {text!r}: dim {d!r} is not a size >= 1, a name or ?")
    return name, parsed


def parse_dim(text: str) -> tuple[str, int]:
    """``batch=1`` -> ("batch", 1): fix the dim named ``batch`` everywhere."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value.isdigit() or int(value) < 1:
        raise InputError(f"--dim {text!r}: expected NAME=SIZE with SIZE >= 1, e.g. batch=1")
    return name, int(value)


def parse_dims(texts: Iterable[str]) -> dict[str, int]:
    """Repeated ``--dim`` values; the same name given two sizes is an error."""
    dims: dict[str, int] = {}
    for text in texts:
        name, value = parse_dim(text)
        if dims.get(name, value) != value:
            raise InputError(f"--dim {name}: given twice ({dims[name]} and {value})")
        dims[name] = value
    return dims


def apply_input_shapes(graph: gs.Graph, shapes: Mapping[str, Sequence[Dim]] | None = None,
                       dims: Mapping[str, int] | None = None) -> dict[str, Dim]:
    """Fix input shapes and named dims; return what each replaced dim name became.

    ``dims`` (``--dim batch=1``) replaces the dim named ``batch`` in every input, output
    and intermediate shape. ``shapes`` (``--input-shape``) replaces one input's shape;
    a dim name it replaces with a size in every input that uses it is replaced in the
    rest of the graph too. Refused, with a message naming the real inputs or dims: an
    unknown input or dim name, a wrong rank, a size for a dim the model fixes (0 and
    negative sizes excepted: they are read as dynamic), a size contradicting ``dims``,
    and one dim name given different sizes.
    """
    inputs = {t.name: t for t in graph.inputs}
    declared = {name: None if t.shape is None else list(t.shape) for name, t in inputs.items()}
    dims = dict(dims or {})
    shapes = dict(shapes or {})
    names = dim_names(list(declared.items()))
    for name, value in dims.items():
        if not isinstance(name, str) or name not in names:
            raise InputError(f"--dim {name}={value}: no input has a dim named {name!r} "
                             f"(dim names: {', '.join(names) or 'none'}; inputs: {_describe(declared)})")
        if not _is_size(value):
            raise InputError(f"--dim {name}={value}: the size must be an integer >= 1")
    new = {name: None if shape is None else [dims.get(d, d) if isinstance(d, str) else d for d in shape]
           for name, shape in declared.items()}
    for name, given in shapes.items():
        if name not in inputs:
            raise InputError(f"input shape for {name!r}: the model has no such input "
                             f"(inputs: {_describe(declared) or 'none'})")
        new[name] = _checked_shape(name, given, declared[name], dims)
    renamed = _renamed_dims(declared, new)
    for name, tensor in inputs.items():
        if new[name] != declared[name]:
            tensor.shape = new[name]
    if renamed:
        _rename_elsewhere(graph, renamed)
    return renamed


def _checked_shape(name: str, given: Sequence[Dim], old: list[Dim] | None, dims: Mapping[str, int]) -> list[Dim]:
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise InputError(f"input shape for {name!r}: expected a list of dims, got {given!r}")
    shape: list[Dim] = []
    for axis, d in enumerate(given):
        if _is_size(d):
            shape.append(int(d))
        elif d is None or (isinstance(d, str) and _NAME.fullmatch(d)):
            shape.append(d)
        else:
            raise InputError(f"input shape for {name!r}: axis {axis} is {d!r}; a dim is a size >= 1, a name or None")
    if old is None:
        return shape
    if len(old) != len(shape):
        raise InputError(f"input shape for {name!r}: rank {len(shape)} given, the model declares rank "
                         f"{len(old)} {_fmt(old)}")
    for axis, (was, now) in enumerate(zip(old, shape)):
        if isinstance(was, (int, np.integer)) and was > 0 and was != now:
            raise InputError(f"input shape for {name!r}: axis {axis} is fixed at {was} in the model, "
                             f"{_show(now)} given ({_fmt(old)})")
        if isinstance(was, str) and was in dims and now != dims[was]:
            raise InputError(f"input shape for {name!r}: axis {axis} ({was}) is fixed at {dims[was]} by "
                             f"--dim {was}={dims[was]}, {_show(now)} given")
    return shape


def _renamed_dims(declared: Mapping[str, list[Dim] | None], new: Mapping[str, list[Dim] | None]) -> dict[str, Dim]:
    """Dim names every one of whose uses in the inputs now holds one same dim."""
    uses: dict[str, list[tuple[str, int, Dim]]] = {}
    for name, shape in declared.items():
        for axis, d in enumerate(shape or []):
            if isinstance(d, str):
                uses.setdefault(d, []).append((name, axis, new[name][axis]))
    renamed: dict[str, Dim] = {}
    for dim, places in uses.items():
        values = {v for _, _, v in places}
        sizes = {v for v in values if isinstance(v, int)}
        if len(sizes) > 1:
            detail = ", ".join(f"{i} axis {a} = {v}" for i, a, v in places if isinstance(v, int))
            raise InputError(f"input shapes give the dim {dim!r} different sizes ({detail}); "
                             "the model declares them equal")
        if len(values) == 1 and dim not in values:
            renamed[dim] = values.pop()
    return renamed


def _rename_elsewhere(graph: gs.Graph, renamed: Mapping[str, Dim]) -> None:
    """Apply ``renamed`` to every non-input shape; a compound name mentioning a renamed dim
    (``4*batch``) becomes unknown, to be inferred again."""
    words = re.compile(r"\b(" + "|".join(re.escape(n) for n in renamed) + r")\b")
    inputs = {id(t) for t in graph.inputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) or id(tensor) in inputs or tensor.shape is None:
            continue
        shape = [renamed[d] if isinstance(d, str) and d in renamed
                 else (None if isinstance(d, str) and words.search(d) else d) for d in tensor.shape]
        if shape != list(tensor.shape):
            tensor.shape = shape


def _tensor_outputs(graph: gs.Graph) -> list[gs.Tensor]:
    """The graph outputs that are tensors (not optional/sequence/map outputs, whose declared
    types load keeps aside)."""
    declared = notes(graph).declared_types
    return [t for t in graph.outputs if t.name not in declared and getattr(t, "type", "tensor_type") == "tensor_type"]


def _is_size(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _describe(declared: Mapping[str, list[Dim] | None]) -> str:
    return ", ".join(f"{name} [{'unknown rank' if shape is None else _fmt(shape, ',')}]"
                     for name, shape in declared.items())


def _show(d: Dim) -> str:
    return "?" if d is None else str(d)


def _fmt(shape: Sequence[Dim], sep: str = "x") -> str:
    return sep.join(_show(d) for d in shape)


def complete_outputs(graph: gs.Graph, shell: onnx.ModelProto, where: str) -> None:
    """Give graph outputs of unknown type or rank what ONNX shape inference finds.

    ``onnx.checker`` refuses such outputs and TensorRT cannot bind them; an output
    inference cannot type either is an InputError naming it.
    """
    tensors = _tensor_outputs(graph)
    if all(t.dtype is not None and t.shape is not None for t in tensors):
        return
    annotate_shapes(graph, shell)
    for t in tensors:
        if t.dtype is None:
            raise InputError(f"{where}: output {t.name!r} has no type and shape inference cannot find one")
        if t.shape is None:
            raise InputError(f"{where}: output {t.name!r} has unknown rank and shape inference cannot find it")


# Inputs that TensorRT needs as shape tensors (computed from shapes and constants only),
# by op: their positions.
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Tile": (1,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Resize": (3,), "Pad": (1,), "TopK": (1,), "OneHot": (1,), "Upsample": (1,),
}
# Ops whose output is a shape computation when every input is (values flow element-wise).
_SHAPE_OPS = frozenset({
    "Shape", "Size", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Cast", "Identity",
    "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Min", "Max", "Floor", "Ceil", "Round", "Sqrt",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Where",
    "ConstantOfShape", "Range", "Expand", "Tile", "ReduceProd", "ReduceSum", "ReduceMin", "ReduceMax", "Clip",
    "Constant",
})


def tensorrt_shape_problems(graph: gs.Graph) -> list[str]:
    """What TensorRT will refuse about shapes, one message each (empty if nothing).

    - an input of an op that TensorRT needs as a shape tensor (a Reshape target, Expand
      shape, Slice bounds...) computed from runtime data rather than shapes/constants;
    - an input of unknown rank (TensorRT reads it as a scalar), an input dim declared 0
      (a fixed empty dim to TensorRT) or negative (no ONNX size);
    - an output of unknown rank or type.
    """
    problems = []
    for t in graph.inputs:
        if t.shape is None:
            problems.append(f"input {t.name!r} has unknown rank: TensorRT reads it as a scalar; "
                            f"give it a shape with --input-shape {t.name}:DxD")
            continue
        for axis, d in enumerate(t.shape):
            if isinstance(d, (int, np.integer)) and d <= 0:
                meaning = "an empty dim TensorRT builds as fixed" if d == 0 else "not an ONNX size"
                problems.append(f"input {t.name!r} axis {axis} is declared {d} ({meaning}); if it varies, "
                                f"name it: --input-shape {t.name}:{_fmt(_named(t.shape, axis))}")
    for t in _tensor_outputs(graph):
        if t.dtype is None or t.shape is None:
            problems.append(f"output {t.name!r} has unknown {'type' if t.dtype is None else 'rank'}")
    origin = _data_origins(graph)
    for node in graph.nodes:
        for i in SHAPE_INPUTS.get(node.op, ()):
            if not is_default_domain(node) or i >= len(node.inputs) or id(node.inputs[i]) not in origin:
                continue
            t = node.inputs[i]
            where, kind = origin[id(t)]
            why = {"float": "TensorRT's parser rejects shapes computed from float values",
                   "input": "a shape-tensor input, which fusekit build cannot give value ranges yet",
                   "data": "TensorRT must build it as a data-dependent shape"}[kind]
            problems.append(f"{node.op} {node.name!r}: input {i} ({t.name!r}) depends on runtime data ({where}), "
                            f"not only on shapes and constants: {why}")
    return problems


def _is_float(dtype) -> bool:
    try:
        return dtype is not None and np.dtype(dtype).kind == "f"
    except TypeError:
        return True  # bfloat16/float8 are held as ONNX enums


def _named(shape: Sequence[Dim], axis: int) -> list[Dim]:
    return [f"dim{axis}" if i == axis else d for i, d in enumerate(shape)]


def _data_origins(graph: gs.Graph) -> dict[int, tuple[str, str]]:
    """For each tensor computed from runtime data (not only from shapes and constants),
    where that data comes from and its kind: ``float`` (float values on the way),
    ``input`` (an integer input TensorRT can take as a shape tensor, through shape ops
    only) or ``data``. One sweep in topological order."""
    order = {"input": 0, "data": 1, "float": 2}
    origin: dict[int, tuple[str, str]] = {}
    for t in graph.inputs:
        shape = t.shape
        small = shape is not None and len(shape) <= 1 and all(isinstance(d, (int, np.integer)) for d in shape) \
            and (not shape or 0 <= shape[0] <= 64)
        kind = "float" if _is_float(t.dtype) else ("input" if small else "data")
        origin[id(t)] = (f"values of input {t.name!r}", kind)
    for node in graph.nodes:
        if node.op in ("Shape", "Size", "Constant"):
            continue
        sources = [origin[id(t)] for t in node.inputs if id(t) in origin]
        floats = any(_is_float(t.dtype) for t in (*node.inputs, *node.outputs) if t.name)
        if node.op in _SHAPE_OPS and is_default_domain(node):
            if not sources:
                continue
            kind = max((k for _, k in sources), key=order.get)
            source = (sources[0][0], "float" if floats else kind)
        else:
            worst = max((k for _, k in sources), key=order.get, default="data")
            source = (f"{node.op} {node.name!r}", "float" if floats or worst == "float" else "data")
        for t in node.outputs:
            origin[id(t)] = source
    return origin
