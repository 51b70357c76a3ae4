"""What the builder knows of the ONNX model it parses: node names, op types, source hash."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from fusekit.builder import sidecar
from fusekit.onnx_nodes import trt_node_name, walk_nodes


@dataclass
class ModelFacts:
    """What the builder needs to know about the ONNX model it parses (read by the caller)."""

    name: str  # how messages name the model (the user's path)
    onnx_ops: dict[str, str]  # node name -> op type
    domains: dict[str, str] = field(default_factory=dict)  # node name -> op domain
    source_path: str | None = None
    source_sha256: str = ""
    optimized: bool = False

    @classmethod
    def of(cls, proto: onnx.ModelProto, name: str, source: Path | onnx.ModelProto, optimized: bool) -> "ModelFacts":
        """Facts of ``proto`` (the model parsed), whose source is ``source`` (hashed as given)."""
        nodes = [n for n in walk_nodes(proto.graph) if trt_node_name(n)]
        return cls(name=name, onnx_ops={trt_node_name(n): n.op_type for n in nodes},
                   domains={trt_node_name(n): n.domain for n in nodes if n.domain},
                   source_path=None if isinstance(source, onnx.ModelProto) else str(source),
                   source_sha256=_sha256_of(source), optimized=optimized)


def _sha256_of(source: Path | onnx.ModelProto) -> str:
    if isinstance(source, onnx.ModelProto):
        return sidecar.sha256(source.SerializeToString())
    return sidecar.file_sha256(source)
