"""What the builder knows of the ONNX model it parses: node names, op types, the edges
between nodes, the graph's inputs and outputs, source hash."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from fusekit.builder import sidecar
from fusekit.builder.layers import TensorInfo
from fusekit.onnx_nodes import trt_node_name, walk_nodes

Edge = tuple[str | None, str | None, str]  # producer node (None: a graph input), consumer (None: a graph output), tensor


@dataclass
class ModelFacts:
    """What the builder needs to know about the ONNX model it parses (read by the caller)."""

    name: str  # how messages name the model (the user's path)
    onnx_ops: dict[str, str]  # node name -> op type
    domains: dict[str, str] = field(default_factory=dict)  # node name -> op domain
    source_path: str | None = None
    source_sha256: str = ""
    optimized: bool = False
    edges: list[Edge] = field(default_factory=list)  # of the top-level graph
    inputs: list[TensorInfo] = field(default_factory=list)  # graph inputs (not initializers); -1: dynamic dim
    outputs: list[TensorInfo] = field(default_factory=list)
    precision: str = "fp32"  # the float types the graph computes in, e.g. "fp32+fp16"

    @classmethod
    def of(cls, proto: onnx.ModelProto, name: str, source: Path | onnx.ModelProto, optimized: bool,
           source_sha256: str | None = None) -> ModelFacts:
        """Facts of ``proto`` (the model parsed), whose source is ``source`` (hashed as given,
        unless its ``source_sha256`` is known)."""
        nodes = [n for n in walk_nodes(proto.graph) if trt_node_name(n)]
        initializers = {t.name for t in proto.graph.initializer}
        return cls(name=name, onnx_ops={trt_node_name(n): n.op_type for n in nodes},
                   domains={trt_node_name(n): n.domain for n in nodes if n.domain},
                   source_path=None if isinstance(source, onnx.ModelProto) else str(source),
                   source_sha256=source_sha256 or sha256_of(source), optimized=optimized,
                   edges=graph_edges(proto.graph),
                   inputs=[tensor_info(v) for v in proto.graph.input if v.name not in initializers],
                   outputs=[tensor_info(v) for v in proto.graph.output], precision=graph_precision(proto))



_FLOAT_NAMES = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16",
                onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.DOUBLE: "fp64"}


def graph_precision(proto: onnx.ModelProto) -> str:
    """The float types ``proto``'s main graph holds (inputs, outputs, value infos,
    initializers, Cast targets), fp32 first: ``"fp32"``, ``"fp32+fp16"``, ``"fp16"``..."""
    g = proto.graph
    found = {vi.type.tensor_type.elem_type for vi in (*g.input, *g.output, *g.value_info)}
    found |= {t.data_type for t in g.initializer}
    found |= {a.i for n in g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    names = [name for enum, name in _FLOAT_NAMES.items() if enum in found]
    return "+".join(names) or "fp32"


def graph_edges(graph: onnx.GraphProto) -> list[Edge]:
    """Producer -> consumer edges of ``graph``'s nodes, through each tensor they share;
    graph inputs and outputs are the ends with no node (initializers make no edge)."""
    inputs = {v.name for v in graph.input} - {t.name for t in graph.initializer}
    producer: dict[str, str | None] = dict.fromkeys(inputs)
    for node in graph.node:
        for tensor in node.output:
            if tensor:
                producer[tensor] = trt_node_name(node)
    edges: list[Edge] = []
    for node in graph.node:
        for tensor in dict.fromkeys(t for t in node.input if t in producer):
            edges.append((producer[tensor], trt_node_name(node), tensor))
    edges.extend((producer[v.name], None, v.name) for v in graph.output if v.name in producer)
    return edges


_DTYPE_NAMES = {"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16", "DOUBLE": "float64"}


def tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    """Name, element type (``float32``, ``int64``, ...) and dims (-1: dynamic or unknown) of a graph input/output."""
    kind = value.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(kind.elem_type) if kind.elem_type else None
    dims = ([d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
            if kind.HasField("shape") else None)
    return TensorInfo(value.name, dims, None if dtype is None else _DTYPE_NAMES.get(dtype, dtype.lower()))


def sha256_of(source: Path | onnx.ModelProto) -> str:
    """The sidecar's ``source_model.sha256``: of the model file as given, or of the serialized proto."""
    if isinstance(source, onnx.ModelProto):
        return sidecar.sha256(source.SerializeToString())
    return sidecar.file_sha256(source)
