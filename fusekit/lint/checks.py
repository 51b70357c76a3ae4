"""The checks: each reads the model (never changes it) and yields :class:`LintFinding`.

The raw ``ModelProto`` is used for what loading would hide (node names, initializer
lists, opsets); the onnx-graphsurgeon graph, with inferred shapes, for what the passes
see. FK301 is one generic family over every registered pass's ``inspect()``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from fusekit import api, profiles, registry
from fusekit.builder.support import supported_opsets
from fusekit.errors import FusekitError
from fusekit.graph_edit import NONDETERMINISTIC_OPS
from fusekit.lint.rules import RULES, Severity
from fusekit.model_io import PROTOBUF_LIMIT, LoadedModel, MappedValues, resolve_external_path
from fusekit.onnx_nodes import is_default_domain, trt_node_name, walk_nodes
from fusekit.pass_infra import PassContext, Stage

log = logging.getLogger(__name__)

INT32 = np.iinfo(np.int32)
INT64_SENTINELS = {np.iinfo(np.int64).max, np.iinfo(np.int64).min}  # "to the end" in Slice
FP16_MAX = 65504.0
RANDOM_OPS = NONDETERMINISTIC_OPS - {"Dropout"}  # FK505 leaves Dropout alone (random only when training)
QDQ_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
INLINE_LIMIT = PROTOBUF_LIMIT  # tests lower it


@dataclass(frozen=True)
class LintFinding:
    """One problem in one model: rule code, severity (after overrides), node and message."""

    code: str
    severity: Severity
    message: str
    model: str
    node: str | None = None
    op: str | None = None
    key: str = ""  # what distinguishes findings of one rule on one node (FK301: the pass)
    fixable: bool = False

    @property
    def name(self) -> str:
        return RULES[self.code].name

    def fingerprint(self) -> str:
        """Stable across runs and machines: rule, model file name, node, key."""
        text = "\0".join((self.code, Path(self.model).name, self.node or "", self.key))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def to_dict(self) -> dict:
        return {"code": self.code, "name": self.name, "severity": str(self.severity),
                "message": self.message, "model": self.model, "node": self.node, "op": self.op,
                "key": self.key or None, "fixable": self.fixable, "fingerprint": self.fingerprint()}


@dataclass
class Target:
    """What every check gets: the model as stored and as loaded, and options."""

    name: str
    proto: onnx.ModelProto  # as stored (external data not loaded)
    loaded: LoadedModel  # shapes annotated
    path: Path | None = None
    opset_range: tuple[int, int] | None = None  # None: the installed TensorRT's range
    trt: bool = True  # ask TensorRT's parser or support table (FK101, FK102)
    notes: list[str] = field(default_factory=list)

    def finding(self, code: str, message: str, node: str | None = None, op: str | None = None,
                key: str = "") -> LintFinding:
        rule = RULES[code]
        return LintFinding(code, rule.severity, message, self.name, node, op, key, rule.fixable)


def _array(target: Target, t: onnx.TensorProto) -> np.ndarray | None:
    """The tensor's values; large weights memory-mapped from their file (the model's, or its
    external data's: the same locations loading accepts)."""
    try:
        if onnx.external_data_helper.uses_external_data(t):
            if target.path is None:
                return None
            source = resolve_external_path(t, target.path.parent.resolve(), str(target.path))
            return MappedValues(t, source).load()
        return onnx.numpy_helper.to_array(t)
    except Exception:  # a malformed or unreadable tensor is for the checker and loader to report
        return None


# -- FK1xx: TensorRT's parser -----------------------------------------------------------

def check_trt(t: Target) -> Iterator[LintFinding]:
    """FK101/FK102 from ``fusekit.api.check_trt`` (the installed parser, else the shipped
    support table): unsupported nodes without a substitution, and those that need a plugin.

    Unsupported nodes that a default-on LEGALIZE pass rewrites are left to FK301."""
    if not t.trt:
        return
    try:
        found = api.check_trt(t.path if t.path is not None else t.proto)
    except FusekitError as exc:
        t.notes.append(f"FK101/FK102 skipped: {exc}")
        return
    if found:
        t.notes.append(f"TensorRT support checked by the {found[0].checked_by}")
    passes = registry.discover().passes
    for u in found:
        op = u.op if is_default_domain(u) else f"{u.domain}.{u.op}"
        where = f"{u.node} ({op})" if u.node else "model"
        info = passes.get(u.pass_name) if u.pass_name else None
        plugin_offer = info is not None and (info.cls.stage == Stage.PLUGINS or not info.cls.enabled_by_default)
        if not is_default_domain(u) or plugin_offer:
            offer = f"; fusekit offers {u.substitution}" if u.substitution else ""
            yield t.finding("FK102", f"{where}: {u.reason}{offer}", u.node or None, op, key=op)
        elif not u.substitution:
            yield t.finding("FK101", f"{where}: {u.reason}; fusekit has no substitution", u.node or None,
                            op or None, key=op)


def check_opset(t: Target) -> Iterator[LintFinding]:
    """FK104: the default-domain opset against the configured range."""
    if t.opset_range is None:
        (low, high), table = supported_opsets()
        source = f"the range of support table {table}"
    else:
        (low, high), source = t.opset_range, "the configured range"
    for entry in t.proto.opset_import:
        if is_default_domain(entry) and not low <= entry.version <= high:
            side = "older" if entry.version < low else "newer"
            yield t.finding("FK104", f"opset {entry.version} is {side} than {source} "
                                     f"{low}..{high}", key=str(entry.version))


# -- FK2xx: shapes ----------------------------------------------------------------------

def check_profiles(t: Target) -> Iterator[LintFinding]:
    """FK201: dynamic input dims with no range in the model's ``fusekit.profiles``."""
    try:
        stored = profiles.read_profiles(t.proto, t.name)
    except FusekitError as exc:
        t.notes.append(f"FK201: stored profiles ignored: {exc}")
        stored = []
    resolution = profiles.resolve(profiles.model_inputs(t.proto), stored)
    for missing in resolution.missing:
        first = missing.where[0][0]
        yield t.finding("FK201", missing.describe(), first, None, key=missing.name or missing.suggestion)


def check_shapes(t: Target) -> Iterator[LintFinding]:
    """FK202: graph inputs and outputs, and tensors some node reads, of unknown rank after
    shape inference (an unused optional output is not reported)."""
    graph = t.loaded.graph
    ends = set()
    for kind, tensors in (("input", graph.inputs), ("output", graph.outputs)):
        for tensor in tensors:
            ends.add(tensor.name)
            if tensor.shape is None:
                yield t.finding("FK202", f"graph {kind} {tensor.name!r} has no shape (unknown rank)",
                                tensor.name, key=kind)
    for node in graph.nodes:
        for tensor in node.outputs:
            if tensor.shape is None and tensor.outputs and tensor.name not in ends:
                yield t.finding("FK202", f"{node.name} ({node.op}): output {tensor.name!r} has no inferred shape; "
                                         "shape inference stops here", node.name, node.op, key=tensor.name)


# -- FK3xx: rewrites and Q/DQ --------------------------------------------------------------

def check_passes(t: Target) -> Iterator[LintFinding]:
    """FK301: what the default pipeline really changes, node by node: the pipeline is run to
    its fixed point on lint's own loaded graph (never saved; weights it computes spill as in
    optimize) and every node of the model a pass removed or replaced is reported with that
    pass, so ``lint --fix`` and ``optimize`` change exactly what lint says. It runs last: the
    graph is the rewritten one afterwards."""
    from fusekit.manager import PassManager

    found = registry.discover()
    selected = found.select()
    named = {n.name for n in walk_nodes(t.proto.graph) if n.name}
    ops = {n.name: n.op for n in t.loaded.graph.nodes}
    # nodes unnamed in the file got a name when loaded; say the one TensorRT will use
    shown = {n.name: f"node_of_{n.outputs[0].name}" for n in t.loaded.graph.nodes
             if n.name not in named and n.outputs}
    ctx = PassContext(relieve_memory=t.loaded.spill.relieve)
    manager = PassManager([i.cls() for i in selected], packages={i.name: i.package for i in selected})
    try:
        manager.run(t.loaded.graph, ctx)
    except Exception as exc:  # a broken (third-party) pass must not stop the lint
        t.notes.append(f"FK301: the pipeline could not run on the model: {type(exc).__name__}: {exc}")
        return
    seen: set[tuple[str, str]] = set()
    for e in ctx.events:
        if ops.get(e.node) == e.op and (e.pass_name, e.node) not in seen:
            seen.add((e.pass_name, e.node))
            node = shown.get(e.node, e.node)
            yield t.finding("FK301", f"{node} ({e.op}): {e.pass_name}: {e.action}", node, e.op, key=e.pass_name)


def check_qdq(t: Target) -> Iterator[LintFinding]:
    """FK302: a Q not followed only by DQs; a compute op with a dequantized activation and
    float weights."""
    graph = t.proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    for n in graph.node:
        name = n.name or (n.output[0] if n.output else "")
        if n.op_type == "QuantizeLinear" and is_default_domain(n):
            users = consumers.get(n.output[0], [])
            bad = [u for u in users if u.op_type != "DequantizeLinear"]
            if bad or not users or n.output[0] in outputs:
                what = ", ".join(f"{u.op_type}" for u in bad) or "a graph output"
                yield t.finding("FK302", f"{name} (QuantizeLinear) feeds {what}, not a DequantizeLinear: "
                                         "the Q/DQ pair cannot be fused", name, "QuantizeLinear", key="q-without-dq")
        elif n.op_type in QDQ_COMPUTE_OPS and len(n.input) >= 2:
            act, weight = (producers.get(n.input[0]), producers.get(n.input[1]))
            act_q = act is not None and act.op_type == "DequantizeLinear"
            weight_q = weight is not None and weight.op_type == "DequantizeLinear"
            if act_q and not weight_q:
                yield t.finding("FK302", f"{name} ({n.op_type}): input is dequantized but the weights "
                                         f"({n.input[1]}) are not: runs in float, no INT8 fusion",
                                name, n.op_type, key="float-weights")


# -- FK4xx: numeric ranges ------------------------------------------------------------------

def _initializers(t: Target):
    """(tensor, how to name it): initializers, and the values of Constant nodes."""
    for x in t.proto.graph.initializer:
        yield x, f"initializer {x.name!r}", x.name
    for n in walk_nodes(t.proto.graph):
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    name = trt_node_name(n) or "?"
                    yield a.t, f"Constant {name}", name


def check_ranges(t: Target) -> Iterator[LintFinding]:
    """FK401 (INT64 beyond INT32, sentinels excepted) and FK402 (FP32 beyond FP16)."""
    for tensor, label, node in _initializers(t):
        if tensor.data_type == onnx.TensorProto.INT64:
            values = _array(t, tensor)
            if values is None or values.size == 0:
                continue
            flat = values.ravel()
            out = flat[((flat > INT32.max) | (flat < INT32.min))]
            out = out[~np.isin(out, list(INT64_SENTINELS))]
            if out.size:
                yield t.finding("FK401", f"INT64 {label} holds {out.size} value(s) outside INT32, "
                                         f"e.g. {int(out[0])}", node, key=node)
        elif tensor.data_type == onnx.TensorProto.FLOAT:
            values = _array(t, tensor)
            if values is None or values.size == 0:
                continue
            finite = np.abs(values[np.isfinite(values)])
            big = finite[finite > FP16_MAX]
            if big.size:
                yield t.finding("FK402", f"FP32 {label} holds {big.size} value(s) beyond the FP16 range, "
                                         f"largest magnitude {float(big.max()):.4g}", node, key=node)


# -- FK5xx: the file ---------------------------------------------------------------------

def check_size(t: Target) -> Iterator[LintFinding]:
    """FK501: the model as stored (external data excluded) over the protobuf limit."""
    size = t.path.stat().st_size if t.path is not None else t.proto.ByteSize()
    if size > INLINE_LIMIT:
        yield t.finding("FK501", f"{size / 2**30:.2f} GiB in one protobuf, over the 2 GB limit; "
                                 "save the weights as external data")


def check_initializers(t: Target) -> Iterator[LintFinding]:
    """FK502: initializers no node (nor subgraph, nor graph output) reads."""
    used = {i for n in walk_nodes(t.proto.graph) for i in n.input}
    used |= {o.name for o in t.proto.graph.output}
    for x in t.proto.graph.initializer:
        if x.name not in used:
            yield t.finding("FK502", f"initializer {x.name!r} is not used by any node", x.name, key=x.name)


def check_names(t: Target) -> Iterator[LintFinding]:
    """FK503 (duplicate node names, tensors produced twice) and FK504 (unnamed nodes)."""
    nodes = list(walk_nodes(t.proto.graph))
    names = Counter(n.name for n in nodes if n.name)
    for name, count in names.items():
        if count > 1:
            yield t.finding("FK503", f"{count} nodes are named {name!r}", name, key=f"node:{name}")
    produced = Counter(o for n in t.proto.graph.node for o in n.output if o)
    produced.update(i.name for i in t.proto.graph.input)
    inputs = {i.name for i in t.proto.graph.input}
    produced.update(x.name for x in t.proto.graph.initializer if x.name not in inputs)
    for name, count in produced.items():
        if count > 1:
            yield t.finding("FK503", f"tensor {name!r} is produced {count} times", name, key=f"tensor:{name}")
    for n in nodes:
        if not n.name:
            label = trt_node_name(n) or "?"
            yield t.finding("FK504", f"unnamed {n.op_type} node (TensorRT calls it {label})", label,
                            n.op_type, key=label)


def check_random(t: Target) -> Iterator[LintFinding]:
    """FK505: random ops."""
    for n in walk_nodes(t.proto.graph):
        if n.op_type in RANDOM_OPS and is_default_domain(n):
            name = trt_node_name(n) or "?"
            yield t.finding("FK505", f"{name} ({n.op_type}) is non-deterministic", name, n.op_type)


CHECKS = (check_trt, check_opset, check_profiles, check_shapes, check_qdq, check_ranges, check_size,
          check_initializers, check_names, check_random, check_passes)  # check_passes rewrites t.loaded: last
# which codes each check can yield, so unselected checks are not run
CHECK_CODES = {check_trt: ("FK101", "FK102"), check_opset: ("FK104",),
               check_profiles: ("FK201",), check_shapes: ("FK202",), check_passes: ("FK301",),
               check_qdq: ("FK302",), check_ranges: ("FK401", "FK402"), check_size: ("FK501",),
               check_initializers: ("FK502",), check_names: ("FK503", "FK504"), check_random: ("FK505",)}
