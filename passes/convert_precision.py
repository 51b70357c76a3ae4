"""Convert a float32 model to fp16 or bf16, keeping in FP32 only the nodes that need it.

Opt-in (``fusekit optimize --precision fp16|bf16``; ``precision=`` in the API; ``fusekit
build --fp16/--bf16``). Options: ``precision`` (``fp16`` or ``bf16``; fp16 when the pass is
asked for by name), ``precision_io`` (graph inputs and outputs take the target type too;
default: they keep float32), ``keep_float`` (node names or op types to keep in FP32),
``data`` (a .npy/.npz of sample inputs: tensors whose observed magnitude leaves the
target's range keep their nodes in FP32).

Every node that reads or writes float32 is decided (:mod:`._precision_rules` says which
stay FP32 and why: by the user, the ONNX spec, the op, the weights, the data); the graph
is then retyped with Casts only where a kept region meets a converted one
(:mod:`._precision_casts`). Integers (token ids, indices, shapes) are never touched; a
Gather's table is converted like any value. Runs once per pipeline: what it leaves is
the conversion's result, so later rounds do not convert it again.

Must not: change a graph input's or output's type or name unless ``precision_io``
(outputs are Cast back to float32); convert a node of a custom domain, a node with
subgraphs, or one whose tensor types are unknown.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx_graphsurgeon as gs

from fusekit.errors import InputError
from fusekit.graph_edit import onnx_type
from fusekit.pass_infra import Decline, Finding, Match, Option, Pass, PassContext, Stage
from fusekit.passes import _precision_rules as rules
from fusekit.passes._precision_casts import Plan, decide_flexible, retype
from fusekit.shapes import annotate_shapes

log = logging.getLogger(__name__)

RESULT_KEY = "precision"


def _target(given: str | None) -> str | None:
    name = None if given is None else str(given).strip().lower()
    if name in (None, "none"):
        return None
    if name not in rules.TARGETS:
        raise ValueError(f"expected {' or '.join(rules.TARGETS)} (or none), got {given!r}")
    return name


def _names(given: str | Iterable[str]) -> tuple[str, ...]:
    parts = given.split(",") if isinstance(given, str) else [part for item in given for part in str(item).split(",")]
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))


def _data_file(given: str | os.PathLike | None) -> str | None:
    if given is None:
        return None
    if not Path(given).is_file():
        raise ValueError(f"{given}: no such file")
    return os.fspath(given)


PRECISION = Option("precision", str, None, "Convert float32 to fp16 or bf16, keeping in FP32 only what needs it "
                   "(see --trace and the report).", parse=_target, metavar="fp16|bf16")
PRECISION_IO = Option("precision_io", bool, False, "--precision: graph inputs and outputs take the converted type "
                      "too (default: they stay float32).")
KEEP_FLOAT = Option("keep_float", tuple, (), "--precision: keep these nodes or op types in FP32.", parse=_names,
                    metavar="NODE_OR_OP,...")
DATA = Option("data", str, None, "--precision: sample inputs (.npz keyed by input name, or .npy for one input); "
              "values beyond the type's range keep their nodes in FP32, and output errors are measured on them.",
              parse=_data_file, metavar="FILE")


@dataclass
class Decisions:
    """Per node that touches float32 (by id): kept with a reason, or converted."""

    target: rules.Target
    kept: dict[int, tuple[gs.Node, str]] = field(default_factory=dict)
    plan: Plan | None = None
    samples: int = 0  # --data samples the ranges were observed on


def precision_options(ctx: PassContext) -> tuple[rules.Target, bool, frozenset[str], str | None]:
    """``(target, convert_io, keep_float, data)`` from the pass options."""
    name, convert_io, keep, data = ctx.get(PRECISION), ctx.get(PRECISION_IO), ctx.get(KEEP_FLOAT), ctx.get(DATA)
    if name is None and (convert_io or keep or data):
        raise InputError("--precision-io, --keep-float and --data need --precision fp16|bf16")
    return rules.TARGETS[name or "fp16"], convert_io, frozenset(keep), data


class ConvertPrecisionPass(Pass):
    """Convert float32 initializers and activations to fp16/bf16 (opt-in: --precision)."""

    name = "convert-precision"
    stage = Stage.PRECISION
    priority = 100
    enabled_by_default = False
    options = (PRECISION, PRECISION_IO, KEEP_FLOAT, DATA)

    def inspect(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Finding]:
        decisions = decide(graph, ctx)
        for node in graph.nodes:
            if id(node) in decisions.kept:
                yield self.finding(node, Decline(f"kept FP32: {decisions.kept[id(node)][1]}"))
            elif id(node) in decisions.plan.converted:
                yield self.finding(node, Match(f"converted to {decisions.target.name}"))

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        if RESULT_KEY in ctx.results:
            return 0  # converted in an earlier round
        decisions = decide(graph, ctx)
        plan = decisions.plan
        casts = retype(graph, plan)
        ctx.wrote_weights(graph)
        for node, reason in decisions.kept.values():
            ctx.record(node, f"kept FP32: {reason}")
        ctx.results[RESULT_KEY] = {
            "type": decisions.target.name,
            "io": decisions.target.name if plan.convert_io else "float32",
            "converted_nodes": len(plan.converted),
            "kept_nodes": len(decisions.kept),
            "casts_added": casts,
            "data_samples": decisions.samples,
            "kept": [{"node": n.name, "op": n.op, "reason": why} for n, why in decisions.kept.values()],
        }
        log.info("%s: %d nodes converted, %d kept in FP32, %d Casts added", decisions.target.name,
                 len(plan.converted), len(decisions.kept), casts)
        return len(plan.converted) + casts


def decide(graph: gs.Graph, ctx: PassContext) -> Decisions:
    """Which nodes keep FP32 (and why) and which convert, without changing the graph's nodes
    (tensor types unknown so far are filled in by shape inference)."""
    annotate_shapes(graph)
    target, convert_io, keep, data = precision_options(ctx)
    unknown_keep = keep - {n.name for n in graph.nodes} - {n.op for n in graph.nodes}
    if unknown_keep:
        log.warning("--keep-float: no node or op named %s", ", ".join(sorted(unknown_keep)))
    opset = graph.opset
    ranges, samples = _observed(graph, data) if data else ({}, 0)
    coordinates = rules.coordinate_path(graph)
    decisions = Decisions(target, samples=samples)
    plan = Plan(target, set(), convert_io=convert_io)
    for node in graph.nodes:
        if not rules.touches_float32(node) and not _unknown_types(node):
            continue
        reason = _keep_reason(node, target, opset, keep, coordinates, ranges)
        if reason is not None:
            decisions.kept[id(node)] = (node, reason)
        elif node.op not in rules.FLEXIBLE_OPS:
            verdict = rules.spec_verdict(node, target, opset)
            if verdict.reason is not None:
                decisions.kept[id(node)] = (node, verdict.reason)
                continue
            plan.converted.add(id(node))
            if verdict.pinned_inputs:
                plan.pinned_inputs[id(node)] = verdict.pinned_inputs
    decide_flexible(graph, plan)
    decisions.plan = plan
    return decisions


def _keep_reason(node: gs.Node, target: rules.Target, opset: int, keep: frozenset[str],
                 coordinates: dict[int, str], ranges: dict) -> str | None:
    if (node.domain or "") not in ("", "ai.onnx"):
        return f"op of the custom domain {node.domain!r}: its kernels' types are unknown"
    if node.op in rules.CONTROL_FLOW:
        return "has subgraphs, which are not converted"
    if _unknown_types(node):
        return "the type of one of its tensors is unknown"
    return (rules.user_reason(node, keep) or
            (None if node.op in rules.FLEXIBLE_OPS else
             rules.op_reason(node, target) or coordinates.get(id(node))
             or rules.weight_reason(node, target) or rules.data_reason(node, target, ranges)))


def _unknown_types(node: gs.Node) -> bool:
    return any(t.name and isinstance(t, gs.Variable) and onnx_type(t.dtype) is None
               for t in (*node.inputs, *node.outputs))


def _observed(graph: gs.Graph, data: str) -> tuple[dict, int]:
    """Observed ranges of the float32 tensors (inputs from the samples themselves), and
    the number of samples."""
    from fusekit.precision_data import Range, load_samples, observe_ranges

    ranks = {t.name: (len(t.shape) if t.shape is not None else None) for t in graph.inputs}
    samples = load_samples(data, ranks)
    inputs = {t.name for t in graph.inputs}
    names = [t.name for t in graph.tensors().values()
             if isinstance(t, gs.Variable) and rules.is_float32(t) and t.name not in inputs]
    ranges = observe_ranges(graph, names, samples)
    for t in graph.inputs:
        if rules.is_float32(t):
            ranges[t.name] = seen = Range()
            for sample in samples:
                seen.update(sample[t.name])
    log.info("observed %d float tensors over %d samples", len(ranges), len(samples))
    return ranges, len(samples)
