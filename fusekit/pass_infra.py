"""The pass contract: what a pass declares, how it runs, and how it explains itself.

A pass gets a graph and returns how many rewrites it made (0 means unchanged). Every
pass can also *inspect* a graph without changing it, yielding one :class:`Finding` per
candidate node: what it would rewrite, or why it declines. Lint and ``--trace`` are
built on ``inspect``.

Most passes are :class:`NodeRewritePass`: a set of root op types, a ``check`` that
returns a :class:`Match` or a :class:`Decline` (with the reason), and a ``rewrite`` that
applies a match. Nothing is mutated before ``check`` has succeeded.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator

import onnx_graphsurgeon as gs

log = logging.getLogger(__name__)


class Stage(enum.IntEnum):
    """Where a pass runs in the pipeline; the pipeline is sorted by (stage, priority, name)."""

    CLEANUP = 10
    SHAPES = 20
    FUSION = 30
    LEGALIZE = 40
    PLUGINS = 50
    PRECISION = 60


@dataclass(frozen=True)
class Match:
    """``check`` found a rewrite; ``message`` says what it will do, ``data`` feeds ``rewrite``."""

    message: str
    data: Any = None


@dataclass(frozen=True)
class Decline:
    """``check`` found no rewrite; ``reason`` says why (shown by lint and --trace)."""

    reason: str


@dataclass(frozen=True)
class Finding:
    """What one pass would do to one node, or why it would not."""

    pass_name: str
    node: str
    op: str
    applies: bool
    message: str


@dataclass(frozen=True)
class TraceEvent:
    """A node removed or replaced by a pass during a run."""

    node: str
    op: str
    pass_name: str
    action: str


@dataclass
class PassContext:
    """What the manager gives every pass: options, and a record of what was rewritten."""

    options: dict[str, Any] = field(default_factory=dict)
    events: list[TraceEvent] = field(default_factory=list)
    # What a pass leaves for the report, by key (e.g. "precision": the conversion's summary).
    results: dict[str, Any] = field(default_factory=dict)
    current_pass: str = ""
    # Set by whoever runs the passes (fusekit.api: the model's WeightSpill.relieve).
    relieve_memory: Callable[[gs.Graph], object] = lambda graph: None

    def record(self, node: gs.Node, action: str) -> None:
        """Note that the running pass removed or replaced ``node`` (for --trace and reports)."""
        self.events.append(TraceEvent(node.name, node.op, self.current_pass, action))

    def wrote_weights(self, graph: gs.Graph) -> None:
        """A pass that computes weights calls this between rewrites (NodeRewritePass does
        after each one): once they take much memory they are moved out of it."""
        self.relieve_memory(graph)


class Pass:
    """Base class of every pass. Subclasses set ``name``, ``stage`` and a docstring.

    The docstring says what the pass rewrites and when it must not.
    """

    name: ClassVar[str]
    stage: ClassVar[Stage]
    priority: ClassVar[int] = 100
    enabled_by_default: ClassVar[bool] = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        """Rewrite ``graph`` in place; return the number of rewrites (0: unchanged)."""
        raise NotImplementedError

    def inspect(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Finding]:
        """Yield what the pass would rewrite and why it declines, without changing ``graph``."""
        return iter(())

    def requires(self, graph: gs.Graph) -> None:
        """Precondition hook, checked by the manager in debug mode; raise to refuse."""

    def ensures(self, graph: gs.Graph) -> None:
        """Postcondition hook, checked by the manager in debug mode; raise on violation."""

    def finding(self, node: gs.Node, verdict: Match | Decline) -> Finding:
        if isinstance(verdict, Match):
            return Finding(self.name, node.name, node.op, True, verdict.message)
        return Finding(self.name, node.name, node.op, False, verdict.reason)


class NodeRewritePass(Pass):
    """A pass made of node-rooted rewrites: ``check`` a candidate, then ``rewrite`` it.

    Candidates are the nodes whose op type is in ``ops`` (default domain unless
    ``domains`` says otherwise), collected in one scan per run: no whole-graph rescans.
    """

    ops: ClassVar[frozenset[str]]
    domains: ClassVar[frozenset[str]] = frozenset({"", "ai.onnx"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match | Decline:
        raise NotImplementedError

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        raise NotImplementedError

    def candidates(self, graph: gs.Graph) -> Iterable[gs.Node]:
        return [n for n in graph.nodes if n.op in self.ops and (n.domain or "") in self.domains]

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        rewrites = 0
        for node in self.candidates(graph):
            if not node.outputs:  # removed by an earlier rewrite in this run
                continue
            verdict = self.check(graph, node, ctx)
            if isinstance(verdict, Match):
                self.rewrite(graph, node, verdict, ctx)
                ctx.record(node, verdict.message)
                ctx.wrote_weights(graph)
                rewrites += 1
        return rewrites

    def inspect(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Finding]:
        for node in self.candidates(graph):
            yield self.finding(node, self.check(graph, node, ctx))
