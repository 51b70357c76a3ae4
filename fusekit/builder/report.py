"""The fused-layer report of one build, and the comparison of two builds.

JSON form (``BuildReport.to_dict``, ``Comparison.to_dict``) is documented by
``fusekit/schemas/build-report.schema.json``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from fusekit.builder.layers import EngineLayer, NetworkLayer, TensorInfo

SCHEMA = "fusekit.build-report/1"
COMPARISON_SCHEMA = "fusekit.build-comparison/1"


@dataclass
class BuildReport:
    """What TensorRT made of one model: network layers in, engine layers out, and which
    ONNX nodes each engine layer computes."""

    model: str
    backend: str
    backend_version: str
    optimized: bool
    onnx_ops: dict[str, str]  # node name -> op type, of the model handed to the parser
    network: list[NetworkLayer]
    engine: list[EngineLayer] | None  # None: neither inspector nor log gave the layers
    layer_source: str | None  # "engine-inspector" or "builder-log"
    vertical_fusions: int | None = None
    profile: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # optimize, parse, build
    engine_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # TensorRT's warnings during the build
    onnx_edges: list[tuple[str | None, str | None, str]] = field(default_factory=list)  # see ModelFacts.edges
    inputs: list[TensorInfo] = field(default_factory=list)  # the ONNX graph's inputs (-1: dynamic dim)
    outputs: list[TensorInfo] = field(default_factory=list)

    @property
    def engine_layers(self) -> int | None:
        return None if self.engine is None else len(self.engine)

    @property
    def compute_layers(self) -> int | None:
        return None if self.engine is None else sum(layer.kind == "compute" for layer in self.engine)

    def layer_of(self) -> dict[str, list[int]]:
        """ONNX node name -> indexes of the engine layers computing it."""
        where: dict[str, list[int]] = {}
        for i, layer in enumerate(self.engine or []):
            for node in layer.onnx_nodes:
                where.setdefault(node, []).append(i)
        return where

    def fused_nodes(self) -> set[str]:
        """ONNX nodes that share an engine layer with at least one other node."""
        return {n for layer in self.engine or [] if len(layer.onnx_nodes) > 1 for n in layer.onnx_nodes}

    def unmapped_nodes(self) -> list[str]:
        """ONNX nodes no engine layer names (folded, removed or absorbed without a trace)."""
        mapped = self.layer_of()
        return [n for n in self.onnx_ops if n not in mapped]

    def ops_of(self, layer: EngineLayer) -> list[str]:
        return [self.onnx_ops.get(n, "?") for n in layer.onnx_nodes]

    def to_dict(self) -> dict:
        engine = None
        if self.engine is not None:
            engine = {
                "layers": len(self.engine),
                "compute_layers": self.compute_layers,
                "sync_layers": sum(layer.kind == "sync" for layer in self.engine),
                "shape_layers": sum(layer.kind == "shape" for layer in self.engine),
                "types": dict(sorted(Counter(layer.type for layer in self.engine).items())),
                "precisions": dict(sorted(Counter(p for layer in self.engine for p in layer.precisions).items())),
                "vertical_fusions": self.vertical_fusions,
            }
        return {
            "schema": SCHEMA,
            "model": self.model,
            "backend": {"name": self.backend, "version": self.backend_version},
            "optimized": self.optimized,
            "layer_source": self.layer_source,
            "onnx": {"nodes": len(self.onnx_ops), "ops": dict(sorted(Counter(self.onnx_ops.values()).items())),
                     "graph": {"nodes": dict(self.onnx_ops), "edges": [list(e) for e in self.onnx_edges]},
                     "inputs": [asdict(t) for t in self.inputs], "outputs": [asdict(t) for t in self.outputs]},
            "network": {"layers": len(self.network),
                        "types": dict(sorted(Counter(layer.type for layer in self.network).items()))},
            "engine": engine,
            "layers": [{**layer.to_dict(), "onnx_ops": self.ops_of(layer)} for layer in self.engine or []],
            "network_layers": [asdict(layer) for layer in self.network],
            "unmapped_nodes": self.unmapped_nodes() if self.engine is not None else [],
            "profile": self.profile,
            "seconds": self.seconds,
            "engine_bytes": self.engine_bytes,
            "notes": self.notes,
            "warnings": self.warnings,
        }

    @classmethod
    def from_dict(cls, data: dict) -> BuildReport:
        """The report whose :meth:`to_dict` is ``data`` (as stored beside a reused engine)."""
        onnx, engine = data["onnx"], data["engine"]
        return cls(
            model=data["model"], backend=data["backend"]["name"], backend_version=data["backend"]["version"],
            optimized=data["optimized"], onnx_ops=dict(onnx["graph"]["nodes"]),
            network=[NetworkLayer(**layer) for layer in data["network_layers"]],
            engine=None if engine is None else [_engine_layer(layer) for layer in data["layers"]],
            layer_source=data["layer_source"], vertical_fusions=None if engine is None else engine["vertical_fusions"],
            profile=data["profile"], seconds=data["seconds"], engine_bytes=data["engine_bytes"],
            notes=data["notes"], warnings=data["warnings"], onnx_edges=[tuple(e) for e in onnx["graph"]["edges"]],
            inputs=[TensorInfo(**t) for t in onnx["inputs"]], outputs=[TensorInfo(**t) for t in onnx["outputs"]])


def _engine_layer(data: dict) -> EngineLayer:
    return EngineLayer(name=data["name"], type=data["type"], onnx_nodes=list(data["onnx_nodes"]),
                       inputs=[TensorInfo(**t) for t in data["inputs"]],
                       outputs=[TensorInfo(**t) for t in data["outputs"]], tactic=data["tactic"])


@dataclass
class Comparison:
    """Two builds side by side: layer counts and the nodes that fused in only one."""

    a: BuildReport
    b: BuildReport

    def fused_only_in(self, first: BuildReport, second: BuildReport) -> list[str]:
        """Nodes fused in ``first``, present in ``second``'s model but not fused there."""
        return sorted(n for n in first.fused_nodes() - second.fused_nodes() if n in second.onnx_ops)

    def to_dict(self) -> dict:
        a, b = self.a, self.b

        def side(r: BuildReport) -> dict:
            return {"model": r.model, "onnx_nodes": len(r.onnx_ops), "network_layers": len(r.network),
                    "engine_layers": r.engine_layers, "compute_layers": r.compute_layers,
                    "build_seconds": r.seconds.get("build")}

        diff = None if a.engine is None or b.engine is None else len(b.engine) - len(a.engine)
        return {
            "schema": COMPARISON_SCHEMA,
            "backend": {"name": a.backend, "version": a.backend_version},
            "a": side(a),
            "b": side(b),
            "engine_layers_difference": diff,
            "fused_only_in_a": self.fused_only_in(a, b),
            "fused_only_in_b": self.fused_only_in(b, a),
            "nodes_only_in_a": sorted(set(a.onnx_ops) - set(b.onnx_ops)),
            "nodes_only_in_b": sorted(set(b.onnx_ops) - set(a.onnx_ops)),
        }
