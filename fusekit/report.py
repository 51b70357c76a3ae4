"""What an optimize run did, as data: model summaries, per-pass statistics, trace, verify."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import onnx_graphsurgeon as gs

from fusekit.graph_edit import held_values
from fusekit.manager import PassStats, TraceStep
from fusekit.model_io.values import values_nbytes
from fusekit.pass_infra import TraceEvent
from fusekit.verify import VerifyResult


@dataclass
class ModelSummary:
    nodes: int
    ops: dict[str, int]
    weight_bytes: int

    @classmethod
    def of(cls, graph: gs.Graph) -> "ModelSummary":
        ops = Counter(n.op for n in graph.nodes)
        weights = sum(values_nbytes(held_values(t)) for t in graph.tensors().values() if isinstance(t, gs.Constant))
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
    trace_steps: list[TraceStep] = field(default_factory=list)  # the --trace node's story, in pipeline order
    trace_kept: bool = True  # whether the --trace node is still in the optimized model
    verify: VerifyResult | None = None
    warnings: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    precision: dict | None = None  # fp16/bf16 conversion: kept nodes and reasons, output errors

    def trace(self, node: str) -> dict:
        """The --trace ``node``'s story: each pass's verdict on it when that pass ran (round,
        pass, ``rewrote``/``declined``/``matched``, message), in pipeline order, then its fate."""
        return {
            "node": node,
            "steps": [asdict(s) for s in self.trace_steps],
            "events": [asdict(e) for e in self.events if e.node == node],
            "fate": self.trace_fate(),
        }

    def trace_fate(self) -> str:
        """What became of the --trace node, said last."""
        done = [s for s in self.trace_steps if s.verdict == "rewrote"]
        if self.trace_kept:
            changed = f" (rewritten by {', '.join(dict.fromkeys(s.pass_name for s in done))})" if done else ""
            return f"still in the optimized model{changed}"
        if not done:
            return "not in the optimized model"
        last = done[-1]
        return f"gone from the optimized model: {last.pass_name}, round {last.round}: {last.message}"

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
            "trace_steps": [asdict(s) for s in self.trace_steps],
            "verify": self.verify.to_dict() if self.verify else None,
            "warnings": self.warnings,
            "outputs": self.outputs,
            "precision": self.precision,
        }
