"""Run a pipeline of passes to a fixed point, with per-pass statistics.

The pipeline is sorted by (stage, priority, name), never by discovery order. After a
pass changes the graph, the manager removes dead nodes and re-sorts topologically (in
linear time, :mod:`fusekit.graph_order`), then attributes removed nodes to that pass. The loop stops when a whole round changes
nothing, or after ``max_iterations`` rounds (and says so). A pass that changed nothing
is not run again until another pass changes the graph (passes are deterministic).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import onnx_graphsurgeon as gs

from fusekit.errors import FusekitError, PassError
from fusekit.graph_order import prune_and_sort, sort_topologically
from fusekit.pass_infra import Finding, NodeRewritePass, Pass, PassContext, TraceEvent, resolve_options

log = logging.getLogger(__name__)


@dataclass
class PassStats:
    """What one pass did over the whole run."""

    name: str
    package: str
    runs: int = 0
    rewrites: int = 0
    nodes_removed: int = 0
    nodes_added: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class TraceStep:
    """What one pass made of the traced node when it ran: ``rewrote`` it (``message`` is
    what it did), ``declined`` (why), or ``matched`` it but did not rewrite it."""

    round: int
    pass_name: str
    verdict: str
    message: str


@dataclass
class PipelineResult:
    stats: list[PassStats]
    iterations: int
    converged: bool
    events: list[TraceEvent] = field(default_factory=list)
    trace: list[TraceStep] = field(default_factory=list)  # the traced node's story, in pipeline order


def pipeline_key(p: Pass | type[Pass]) -> tuple:
    """Where a pass (or pass class) runs: by stage, priority, then name; never discovery order."""
    return p.stage, p.priority, p.name


def sort_pipeline(passes: Sequence[Pass]) -> list[Pass]:
    return sorted(passes, key=pipeline_key)


class PassManager:
    """Runs passes to a fixed point. ``check`` (debug mode) validates after every pass."""

    def __init__(self, passes: Sequence[Pass], *, packages: dict[str, str] | None = None,
                 max_iterations: int = 10, check: Callable[[gs.Graph, str], None] | None = None,
                 progress: Callable[[str], None] | None = None, trace: str | None = None) -> None:
        self.passes = sort_pipeline(passes)
        self.packages = packages or {}
        self.max_iterations = max_iterations
        self.check = check
        self.progress = progress
        self.trace = trace  # a node name: each pass's verdict on it is taken as the pass runs
        self.steps: list[TraceStep] = []

    def context(self, options: Mapping[str, Any] | None = None, **fields: Any) -> PassContext:
        """A context for one run of this pipeline: ``options`` checked against what its
        passes declare (InputError naming an unknown option or a bad value), defaults filled."""
        return PassContext(options=resolve_options(self.passes, options or {}), **fields)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PipelineResult:
        ctx.options = resolve_options(self.passes, ctx.options)
        with _graph_frozen_for_gc():
            return self._run(graph, ctx)

    def _run(self, graph: gs.Graph, ctx: PassContext) -> PipelineResult:
        stats = {p.name: PassStats(p.name, self.packages.get(p.name, "")) for p in self.passes}
        self.steps = []
        sort_topologically(graph)
        version = 0  # how many pass runs changed the graph so far
        clean_at: dict[str, int] = {}  # pass -> the version it last ran on and left unchanged
        for iteration in range(1, self.max_iterations + 1):
            changed = False
            for p in self.passes:
                if clean_at.get(p.name) == version:
                    continue  # nothing changed since it found nothing to do: it would find nothing again
                if self.progress:
                    self.progress(f"round {iteration}: {p.name}")
                if self._run_one(p, graph, ctx, stats[p.name], iteration):
                    version += 1
                    changed = True
                else:
                    clean_at[p.name] = version
            if not changed:
                return PipelineResult(list(stats.values()), iteration, True, ctx.events, self.steps)
        log.warning("pipeline did not converge after %d rounds; the model is still valid",
                    self.max_iterations)
        return PipelineResult(list(stats.values()), self.max_iterations, False, ctx.events, self.steps)

    def _run_one(self, p: Pass, graph: gs.Graph, ctx: PassContext, stat: PassStats, iteration: int = 1) -> bool:
        verdicts = self._verdicts(p, graph, ctx)
        before = {id(n): n for n in graph.nodes}
        ctx.current_pass = p.name
        recorded = len(ctx.events)
        start = time.perf_counter()
        try:
            rewrites = p.run(graph, ctx)
            if rewrites:
                prune_and_sort(graph)
                ctx.wrote_weights(graph)
        except FusekitError:
            raise
        except Exception as exc:
            origin = f" (from {stat.package})" if stat.package else ""
            raise PassError(f"pass {p.name}{origin} failed: {type(exc).__name__}: {exc}") from exc
        stat.seconds += time.perf_counter() - start
        stat.runs += 1
        if not rewrites:
            self._record(iteration, p, verdicts, [], changed=False)
            return False
        stat.rewrites += rewrites
        after = {id(n) for n in graph.nodes}
        removed = [n for key, n in before.items() if key not in after]
        stat.nodes_removed += len(removed)
        stat.nodes_added += len(after - before.keys())
        explained = {e.node for e in ctx.events[recorded:]}
        ctx.events.extend(TraceEvent(n.name, n.op, p.name, "removed: its outputs became unused")
                          for n in removed if n.name not in explained)
        self._record(iteration, p, verdicts, ctx.events[recorded:], changed=True)
        if self.check:
            self.check(graph, p.name)
        return True

    def _verdicts(self, p: Pass, graph: gs.Graph, ctx: PassContext) -> list[Finding]:
        """What ``p`` thinks of the traced node now, just before it runs (nothing when the
        node is gone). A node-rewrite pass checks that node only."""
        if self.trace is None:
            return []
        node = next((n for n in graph.nodes if n.name == self.trace), None)
        if node is None:
            return []
        if isinstance(p, NodeRewritePass):
            candidate = any(c is node for c in p.candidates(graph))
            return [p.finding(node, p.check(graph, node, ctx))] if candidate else []
        return [f for f in p.inspect(graph, ctx) if f.node == self.trace]

    def _record(self, iteration: int, p: Pass, verdicts: list[Finding], events: list[TraceEvent],
                changed: bool) -> None:
        """Add the traced node's part of ``p``'s run: what it did to the node (its events, or
        the verdict that applied when the run changed the graph), else its verdict (a decline
        is not repeated while it stays the same)."""
        if self.trace is None:
            return
        done = [TraceStep(iteration, p.name, "rewrote", e.action) for e in events if e.node == self.trace]
        steps = done or [TraceStep(iteration, p.name, "declined" if not f.applies else
                                   "rewrote" if changed else "matched", f.message) for f in verdicts]
        for step in steps:
            last = next((s for s in reversed(self.steps) if s.pass_name == p.name), None)
            if step.verdict == "rewrote" or last is None or (last.verdict, last.message) != (step.verdict,
                                                                                             step.message):
                self.steps.append(step)


@contextlib.contextmanager
def _graph_frozen_for_gc():
    """Keep Python's cyclic garbage collector from walking the loaded graph (every object
    alive when the pipeline starts) at each full collection: on a 40k-node graph those walks
    cost a sixth of the run, and more the larger the graph. Only when the process has
    frozen nothing itself (gc.freeze is process-wide); garbage among the frozen objects is
    collected after the run."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
