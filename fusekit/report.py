"""What an optimize run did, as data: model summaries, per-pass statistics, trace, verify."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import onnx_graphsurgeon as gs

from fusekit.manager import PassStats
from fusekit.model_io.values import values_nbytes
from fusekit.pass_infra import Finding, TraceEvent
from fusekit.verify import VerifyResult


@dataclass
class ModelSummary:
    nodes: int
    ops: dict[str, int]
    weight_bytes: int

    @classmethod
    def of(cls, graph: gs.Graph) -> "ModelSummary":
        ops = Counter(n.op for n in graph.nodes)
        weights = sum(values_nbytes(t._values) for t in graph.tensors().values() if isinstance(t, gs.Constant))
        return cls(len(graph.nodes), dict(sorted(ops.items())), weights)


@dataclass
class OptimizeReport:
    """Everything ``fusekit optimize`` prints, and its JSON form (``to_dict``)."""

    source: str
    before: ModelSummary
    after: ModelSummary | None = None
    passes: list[PassStats] = field(default_factory=list)
    iterations: int = 0
    converged: bool = True
    seconds: float = 0.0
    events: list[TraceEvent] = field(default_factory=list)
    trace_findings: list[Finding] = field(default_factory=list)
    verify: VerifyResult | None = None
    warnings: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    precision: dict | None = None  # fp16/bf16 conversion: kept nodes and reasons, output errors

    def trace(self, node: str) -> dict:
        """Which pass removed or replaced ``node``, and why others declined it."""
        return {
            "node": node,
            "events": [asdict(e) for e in self.events if e.node == node],
            "findings": [asdict(f) for f in self.trace_findings if f.node == node],
        }

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "before": asdict(self.before),
            "after": asdict(self.after) if self.after else None,
            "passes": [asdict(p) for p in self.passes],
            "iterations": self.iterations,
            "converged": self.converged,
            "seconds": self.seconds,
            "events": [asdict(e) for e in self.events],
            "trace_findings": [asdict(f) for f in self.trace_findings],
            "verify": self.verify.to_dict() if self.verify else None,
            "warnings": self.warnings,
            "outputs": self.outputs,
            "precision": self.precision,
        }
