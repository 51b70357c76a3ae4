"""The pass contract: what a pass declares, how it runs, and how it explains itself.

A pass gets a graph and returns how many rewrites it made (0 means unchanged). Every
pass can also *inspect* a graph without changing it, yielding one :class:`Finding` per
candidate node: what it would rewrite, or why it declines. Lint and ``--trace`` are
built on ``inspect``.

Most passes are :class:`NodeRewritePass`: a set of root op types, a ``check`` that
returns a :class:`Match` (its typed ``data`` feeds ``rewrite``) or a :class:`Decline`
(with the reason), and a ``rewrite`` that applies a match. Nothing is mutated before
``check`` has succeeded.

Settings a pass takes are declared on it as :class:`Option` objects, and read with
``ctx.get(OPTION)`` (typed; the default when not given)::

    K_LIMIT = Option("topk_k_limit", int, 3840, "split TopK whose K is at least this")

    class SplitTopKPass(NodeRewritePass):
        options = (K_LIMIT,)
        def check(self, graph, node, ctx):
            limit = ctx.get(K_LIMIT)

Given values (``fusekit.optimize(model, topk_k_limit=100)``, ``options={...}``, or the
CLI flag ``--topk-k-limit`` that ``fusekit optimize`` generates from the declaration)
are checked by the manager against the pipeline's passes: an option no pass in it takes,
or a value of the wrong type, is an :class:`~fusekit.errors.InputError` naming it. Giving
an option of a pass that is off by default a value other than its default turns that
pass on.

Per-run state has a named home: what the checks of one ``run`` (or ``inspect``) share is
set up in ``NodeRewritePass.start``; what passes share about the graph across rounds (e.g.
exact values of constants a decomposition wrote) lives in
``fusekit.graph_edit.notes(graph).state(Kind)``; nothing else is added to a graph.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generic, Iterable, Iterator, Mapping, TypeVar

from fusekit.errors import InputError

if TYPE_CHECKING:  # the contract needs no onnx at run time: a pass module imports it anyway
    import onnx_graphsurgeon as gs

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stage(enum.IntEnum):
    """Where a pass runs in the pipeline; the pipeline is sorted by (stage, priority, name)."""

    CLEANUP = 10
    SHAPES = 20
    FUSION = 30
    LEGALIZE = 40
    PLUGINS = 50
    PRECISION = 60


@dataclass(frozen=True)
class Match(Generic[T]):
    """``check`` found a rewrite; ``message`` says what it will do, ``data`` feeds ``rewrite``
    (``Match[Bound]``: a pass's own record of what it matched)."""

    message: str
    data: T = None  # type: ignore[assignment]  # a Match without data is Match[None]


@dataclass(frozen=True)
class Decline:
    """``check`` found no rewrite; ``reason`` says why (shown by lint and --trace)."""

    reason: str


@dataclass(frozen=True)
class Option(Generic[T]):
    """A setting a pass takes: ``name`` (the key in ``options`` and the Python keyword),
    ``type`` and ``default`` of its value, ``help`` (one line, for the CLI).

    ``parse`` turns a given value (CLI text or a Python value) into the option's value and
    raises ``ValueError`` saying what is wrong; without it a Python value must be an
    instance of ``type`` and CLI text is converted by ``type`` (int, float, str; a bool
    option is a ``--flag/--no-flag`` pair). ``flag`` (default ``--name-with-dashes``) and
    ``metavar`` are for the CLI. ``offer``: the value ``check-trt`` gives it when working
    out what fusekit can do about an unsupported node (None: left at the default)."""

    name: str
    type: type
    default: T
    help: str
    parse: Callable[[Any], T] | None = None
    flag: str | None = None
    metavar: str | None = None
    offer: T | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def convert(self, value: Any) -> T:
        """``value`` as this option's value, or an InputError naming the option."""
        if self.parse is not None:
            try:
                return self.parse(value)
            except (ValueError, TypeError) as exc:
                raise InputError(f"option {self.name} ({self.cli_flag}): {exc}") from None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            raise InputError(f"option {self.name} ({self.cli_flag}): expected {self.type.__name__}, "
                             f"got {type(value).__name__} {value!r}")
        return value


def declared_options(passes: Iterable[Pass | type[Pass]]) -> dict[str, Option]:
    """Every option the ``passes`` declare, by name; two passes may share an option only by
    declaring the same one."""
    found: dict[str, tuple[Option, str]] = {}
    for p in passes:
        for option in p.options:
            seen = found.setdefault(option.name, (option, p.name))
            if seen[0] != option:
                raise InputError(f"option {option.name}: declared differently by passes {seen[1]} and {p.name}")
    return {name: option for name, (option, _) in found.items()}


def resolve_options(passes: Iterable[Pass | type[Pass]], given: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``passes`` with the ``given`` values checked and converted, defaults
    filled in. A given option no pass takes, or a bad value, is an InputError naming it."""
    declared = declared_options(passes)
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise InputError(f"unknown option {', '.join(unknown)}: no pass in the pipeline takes it "
                         f"(options they take: {', '.join(sorted(declared)) or 'none'})")
    return {name: option.convert(given[name]) if name in given else option.default
            for name, option in declared.items()}


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
    """What the manager gives every pass: option values, and a record of what was rewritten.
    One context serves one pipeline run (one graph)."""

    options: dict[str, Any] = field(default_factory=dict)  # name -> value, checked by the manager
    events: list[TraceEvent] = field(default_factory=list)
    # What a pass leaves for the report, by key (e.g. "precision": the conversion's summary).
    results: dict[str, Any] = field(default_factory=dict)
    current_pass: str = ""
    # Set by whoever runs the passes (fusekit.api: the model's WeightSpill.relieve).
    relieve_memory: Callable[[gs.Graph], object] = lambda graph: None

    def get(self, option: Option[T]) -> T:
        """The value of a declared ``option`` in this run (its default when not given)."""
        return self.options.get(option.name, option.default)

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
    options: ClassVar[tuple[Option, ...]] = ()  # the settings it takes, read with ctx.get

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        """Rewrite ``graph`` in place; return the number of rewrites (0: unchanged)."""
        raise NotImplementedError

    def inspect(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Finding]:
        """Yield what the pass would rewrite and why it declines, without changing ``graph``."""
        return iter(())

    def finding(self, node: gs.Node, verdict: Match[Any] | Decline) -> Finding:
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

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match[Any] | Decline:
        raise NotImplementedError

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match[Any], ctx: PassContext) -> None:
        raise NotImplementedError

    def candidates(self, graph: gs.Graph) -> Iterable[gs.Node]:
        return [n for n in graph.nodes if n.op in self.ops and (n.domain or "") in self.domains]

    def start(self, graph: gs.Graph, ctx: PassContext) -> None:
        """Called at the start of every ``run`` and ``inspect``, before any ``check``: where a
        pass sets up what the checks of that one run share (e.g. a verdict about the graph)."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        self.start(graph, ctx)
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
        self.start(graph, ctx)
        for node in self.candidates(graph):
            yield self.finding(node, self.check(graph, node, ctx))
