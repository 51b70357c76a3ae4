"""What the builder knows of the ONNX model it parses: node names, op types, source hash."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import onnx

from fusekit.builder import sidecar


@dataclass
class ModelFacts:
    """What the builder needs to know about the ONNX model it parses (read by the caller)."""

    name: str  # how messages name the model (the user's path)
    onnx_ops: dict[str, str]  # node name -> op type
    domains: dict[str, str] = field(default_factory=dict)  # node name -> op domain
    source_path: str | None = None
    source_sha256: str = ""
    optimized: bool = False
    precision: str = "fp32"  # the float types the graph computes in, e.g. "fp32+fp16"

    @classmethod
    def of(cls, proto: onnx.ModelProto, name: str, source: Path | onnx.ModelProto, optimized: bool) -> "ModelFacts":
        """Facts of ``proto`` (the model parsed), whose source is ``source`` (hashed as given)."""
        nodes = [n for n in walk_nodes(proto.graph) if trt_node_name(n)]
        return cls(name=name, onnx_ops={trt_node_name(n): n.op_type for n in nodes},
                   domains={trt_node_name(n): n.domain for n in nodes if n.domain},
                   source_path=None if isinstance(source, onnx.ModelProto) else str(source),
                   source_sha256=_sha256_of(source), optimized=optimized, precision=graph_precision(proto))


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


def walk_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs (depth first, each node before its subgraphs)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from walk_nodes(sub)


def trt_node_name(node: onnx.NodeProto) -> str:
    """The name TensorRT's parser gives a node's layer (``node_of_OUTPUT`` when unnamed;
    empty for an unnamed node without outputs)."""
    return node.name or (f"node_of_{node.output[0]}" if node.output else "")


def _sha256_of(source: Path | onnx.ModelProto) -> str:
    if isinstance(source, onnx.ModelProto):
        return sidecar.sha256(source.SerializeToString())
    return sidecar.file_sha256(source)
