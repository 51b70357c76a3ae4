"""Which ONNX nodes TensorRT cannot parse, and why: asked of the real parser, else a table.

With a backend installed, the whole model goes through the ONNX parser once; the parser
reports every failing node (it goes on after a failure) with the node's index, which maps
each error back to its node. Without a backend, the shipped support table of one release
is used (``fusekit/data/trt_support/*.json``: onnx-tensorrt's ``docs/operators.md`` for
TensorRT 10.0, 10.1 (made by ``tools/trt_support_table.py``) and 10.15, and what the
tensorrt_rtx 1.7 parser was measured to reject; :func:`table_for` picks the one of the
installed release), with the
restrictions fusekit can check without TensorRT (a MaxPool ``Indices`` output in use,
reduction axes that are not constant, TopK's K limit, pooling windows and strides over
:mod:`fusekit.trt_limits`).

Custom-domain ops (``com.microsoft`` and any other) are looked up by the parser as plugins
named after the op type: unsupported unless a creator of that name is registered.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx.shape_inference
from onnx import numpy_helper

from fusekit.builder import backend as backends
from fusekit.builder.parse import parser_errors
from fusekit.errors import InputError
from fusekit.onnx_nodes import is_default_domain, trt_node_name
from fusekit.trt_limits import POOL_OPS, pool_window_problem

log = logging.getLogger(__name__)

TABLES = Path(__file__).resolve().parent.parent / "data" / "trt_support"
DEFAULT_TABLE = "tensorrt-10.15"
_TOPK_LIMIT = 3840


@dataclass(frozen=True)
class UnsupportedNode:
    """One node TensorRT cannot parse: why, and what fusekit can replace it with (or None)."""

    node: str  # the node's name (TensorRT's ``node_of_OUTPUT`` when unnamed)
    op: str
    domain: str
    reason: str
    substitution: str | None = None  # "pass-name: what it does", filled in by fusekit.api
    pass_name: str | None = None  # the pass that makes the substitution (None: none, or the pipeline)
    checked_by: str = ""  # "tensorrt_rtx 1.7.1 parser" or "table tensorrt-10.15"
    output: str = ""  # the node's first output (identifies unnamed nodes)

    @classmethod
    def of(cls, node: onnx.NodeProto, reason: str, checked_by: str) -> "UnsupportedNode":
        """``node`` rejected for ``reason`` by ``checked_by``."""
        return cls(trt_node_name(node), node.op_type, node.domain, reason, checked_by=checked_by,
                   output=node.output[0] if node.output else "")

    def to_dict(self) -> dict:
        return asdict(self)


class TrtCheck(list):
    """The unsupported nodes (a plain list of :class:`UnsupportedNode`, empty when the model
    parses) and what answered: ``checked_by`` ("tensorrt_rtx 1.7.1 parser", "table tensorrt-10.15")."""

    def __init__(self, nodes=(), checked_by: str = "") -> None:
        super().__init__(nodes)
        self.checked_by = checked_by


def _release(version: str) -> tuple[int, ...]:
    """A version's (major, minor): "10.15.1.29" -> (10, 15), so 10.8 sorts before 10.15."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _table_key(name: str) -> tuple[str, tuple[int, ...]]:
    backend, _, version = name.rpartition("-")
    return backend, _release(version)


def table_names() -> list[str]:
    """The shipped tables, by backend and then release (tensorrt-10.0, tensorrt-10.1, ... tensorrt-10.15)."""
    return sorted((p.stem for p in TABLES.glob("*.json")), key=_table_key)


@lru_cache(maxsize=None)
def load_table(name: str) -> dict:
    path = TABLES / f"{name}.json"
    if not path.is_file():
        raise InputError(f"no TensorRT support table {name!r}; known tables: {', '.join(table_names())}")
    return json.loads(path.read_text())


def table_for(backend) -> str:
    """The shipped table closest to ``backend``'s release: of the same backend, the newest whose
    major.minor is at most the installed one (tensorrt 10.8 -> tensorrt-10.1, tensorrt 10.15.1
    -> tensorrt-10.15); the oldest when every table is newer; DEFAULT_TABLE when no backend
    imports or none of its tables is shipped."""
    if backend is None:
        return DEFAULT_TABLE
    mine = [name for name in table_names() if _table_key(name)[0] == backend.name]
    if not mine:
        return DEFAULT_TABLE
    installed = _release(backend.version)
    older = [name for name in mine if _table_key(name)[1] <= installed]
    if not older:
        log.warning("%s is older than every shipped support table of it; using %s", backend.describe(), mine[0])
    return older[-1] if older else mine[0]


def supported_opsets() -> tuple[tuple[int, int], str]:
    """The default-domain opsets the installed TensorRT parses (from its support table, or the
    newest shipped one when no backend imports), and the table they come from."""
    name = table_for(backends.installed())
    low, high = load_table(name)["opset"]
    return (low, high), name


def check_with_parser(model: onnx.ModelProto, backend, max_rounds: int = 8, *,
                      write: Callable[[], Path] | None = None,
                      whole: Callable[[], onnx.ModelProto] | None = None) -> list[UnsupportedNode]:
    """Every node the real parser of ``backend`` rejects, with the parser's reason.

    The parser checks every node before importing any (``check*`` functions), and stops
    before the import phase when a check fails; an importer failure also ends the parse.
    So after each parse the rejected nodes are cut out (their outputs become network
    inputs, typed by shape inference) and the rest is parsed again, until no new node is
    rejected or the cut leaves nothing to parse.

    ``write``: writes ``model`` with its weights and returns the file, parsed first (then
    ``model`` may be weightless: its nodes name what the parser rejects); ``whole``: the
    model with its weights, made only when a node is rejected and must be cut out
    (default: a copy of ``model``).
    """
    by = f"{backend.describe()} parser"
    current = None  # the whole model, made before the first cut: a model that parses is never copied
    found: dict[str, UnsupportedNode] = {}
    for _ in range(max_rounds):
        if current is None:
            errors = _parse_errors(model, backend, write() if write is not None else None)
        else:
            errors = _parse_errors(current, backend)
        fresh = [(n, reason) for n, reason in errors if n is None or trt_node_name(n) not in found]
        if not fresh:
            break
        for n, reason in fresh:
            if n is None:
                found.setdefault(f"<model>{reason}", UnsupportedNode("", "", "", reason, checked_by=by))
            else:
                found[trt_node_name(n)] = UnsupportedNode.of(n, reason, by)
        if current is None:
            if whole is not None:
                current = whole()
            else:
                current = onnx.ModelProto()
                current.CopyFrom(model)
        if not _cut(current, {trt_node_name(n) for n, _ in fresh if n is not None}):
            break
    for n, reason in _build_time_problems(model):
        found.setdefault(trt_node_name(n), UnsupportedNode.of(n, reason, by))
    order = {trt_node_name(n): i for i, n in enumerate(model.graph.node)}
    return sorted(found.values(), key=lambda u: order.get(u.node, -1))


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    return constants


def _build_time_problems(model: onnx.ModelProto):
    """Nodes the parser accepts but the builder rejects (measured with tensorrt_rtx 1.7: a
    TopK with K >= 3840 fails in build_serialized_network, "K exceeds the maximum value
    allowed (3840)")."""
    constants = _constants(model)
    for n in model.graph.node:
        if n.op_type == "TopK" and is_default_domain(n) and len(n.input) > 1 and n.input[1] in constants:
            k = _topk_k_over_limit(constants[n.input[1]])
            if k is not None:
                yield n, (f"K = {k}: the parser accepts it, but the engine build fails (K must be less than "
                          f"{_TOPK_LIMIT})")


def _topk_k_over_limit(k: onnx.TensorProto) -> int | None:
    """TopK's constant K when the builder rejects it (K >= ``_TOPK_LIMIT``), else None."""
    value = int(np.asarray(numpy_helper.to_array(k)).ravel()[0])
    return value if value >= _TOPK_LIMIT else None


def _parse_errors(model: onnx.ModelProto, backend, file: Path | None = None
                  ) -> list[tuple[onnx.NodeProto | None, str]]:
    """What the parser says of ``file`` (``model`` as written), or of ``model``."""
    trt = backend.trt
    logger = trt.Logger(trt.Logger.INTERNAL_ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if file is not None:
        parser.parse_from_file(str(file))
    else:
        with tempfile.TemporaryDirectory(prefix="fusekit-check-") as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save_model(model, str(path), save_as_external_data=model.ByteSize() > (1 << 30))
            parser.parse_from_file(str(path))
    nodes = list(model.graph.node)
    errors = []
    for error in parser_errors(parser):
        index, desc = error.index, error.desc
        if "Plugin not found" in desc:
            reason = (f"no TensorRT importer: the parser looked {error.operator!r} up as a plugin and no "
                      f"creator of that name is registered ({error.func})")
        elif desc in ("", "false"):
            reason = f"{error.func} rejects it"
        else:
            reason = f"{error.func}: {desc}"
        errors.append((nodes[index] if 0 <= index < len(nodes) else None, reason))
    del parser, network, builder
    return errors


def _cut(model: onnx.ModelProto, names: set[str]) -> bool:
    """Remove the nodes ``names``; their outputs become graph inputs. False: nothing left
    to parse, or an output's type is unknown."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference cannot read: parse what was found so far
        return False
    types = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    keep = [n for n in model.graph.node if trt_node_name(n) not in names]
    cut_outputs = [o for n in model.graph.node if trt_node_name(n) in names for o in n.output if o]
    new_inputs = []
    for name in cut_outputs:
        vi = types.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return False
        new_inputs.append(vi)
    outputs = [o for o in model.graph.output if o.name not in set(cut_outputs)]
    if not keep or not outputs:
        return False
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.input.extend(new_inputs)
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    return True


def check_with_table(model: onnx.ModelProto, table: str = DEFAULT_TABLE) -> list[UnsupportedNode]:
    """Every node the support table ``table`` says TensorRT rejects (no TensorRT needed)."""
    data = load_table(table)
    supported, unsupported = set(data["supported"]), set(data["unsupported"])
    reasons, by = data.get("reasons", {}), f"table {table}"
    constants = _constants(model)
    used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    found = []
    for n in model.graph.node:
        reason = _table_reason(n, supported, unsupported, reasons, data, constants, used)
        if reason:
            found.append(UnsupportedNode.of(n, reason, by))
    return found


def _table_reason(n, supported, unsupported, reasons, data, constants, used) -> str | None:
    label = f"TensorRT {data['version']}" if data["backend"] == "tensorrt" else \
        f"{data['backend']} {data['version']}"
    if not is_default_domain(n):
        return (f"custom-domain op ({n.domain}): the parser looks it up as a plugin named {n.op_type!r}, "
                "and fails unless a creator of that name is registered")
    if n.op_type in unsupported:
        return f"not supported by {label}" + (f" ({reasons[n.op_type]})" if n.op_type in reasons else "")
    if n.op_type not in supported:
        return f"not in the support table of {label}"
    if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1] and n.output[1] in used:
        return "the Indices output of MaxPool is unsupported"
    if n.op_type in POOL_OPS:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        problem = pool_window_problem(attrs.get("kernel_shape", []), attrs.get("strides"))
        if problem:
            return problem
    if n.op_type.startswith("Reduce") and len(n.input) > 1 and n.input[1] and n.input[1] not in constants:
        return "axes must be a build-time constant; here they are computed"
    if n.op_type == "TopK" and len(n.input) > 1:
        k = constants.get(n.input[1])
        if k is None:
            return "K must be a build-time constant"
        if _topk_k_over_limit(k) is not None:
            return f"K must be less than {_TOPK_LIMIT}"
    return None


def check(model: onnx.ModelProto, table: str | None = None, *, write: Callable[[], Path] | None = None,
          whole: Callable[[], onnx.ModelProto] | None = None) -> tuple[list[UnsupportedNode], str]:
    """Unsupported nodes, and what said so: the installed parser, else (or when ``table``
    is given) the support table ``table`` (default: the newest TensorRT release shipped).
    ``write`` / ``whole``: see :func:`check_with_parser` (the table needs neither)."""
    found = backends.installed() if table is None else None
    if found is not None:
        return check_with_parser(model, found, write=write, whole=whole), f"{found.describe()} parser"
    name = table or DEFAULT_TABLE
    return check_with_table(model, name), f"table {name}"
