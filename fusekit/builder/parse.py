"""TensorRT's ONNX parser, with every error it reports collected (not just the first).

Each problem names the ONNX node, its op type and the parser's reason. A node whose op
has no TensorRT importer (or plugin) makes the failure ``unsupported``: the fix is a
substitution, not a different attribute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fusekit.errors import ParseFailedError
from fusekit.onnx_nodes import DEFAULT_DOMAINS


@dataclass(frozen=True)
class ParseProblem:
    node: str | None  # ONNX node name (None: not about one node)
    op: str | None  # op type, with its domain when not the default one
    reason: str
    code: str  # the parser's ErrorCode name, e.g. UNSUPPORTED_NODE
    unsupported: bool  # the op itself is unsupported (no importer or plugin)

    def describe(self) -> str:
        where = f"node {self.node} ({self.op})" if self.node else (f"op {self.op}" if self.op else "model")
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict:
        return {"node": self.node, "op": self.op, "reason": self.reason, "code": self.code,
                "unsupported": self.unsupported}


_UNSUPPORTED_CODES = {"UNSUPPORTED_NODE", "UNSUPPORTED_GRAPH"}


@dataclass(frozen=True)
class ParserError:
    """One error as TensorRT's ONNX parser reports it, read out of the parser (each caller
    words its own message from it)."""

    index: int  # the node's index in the graph (out of range: not about one node)
    node: str  # the node's name ("" when none)
    operator: str  # its op type ("" when none)
    func: str  # the parser function that failed
    code: str  # the ErrorCode name, e.g. UNSUPPORTED_NODE
    desc: str  # the description, cleaned (:func:`_clean`)


def parser_errors(parser) -> list[ParserError]:
    """Every error ``parser`` (a ``trt.OnnxParser`` after a parse) reports, in order."""
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        code = error.code()
        errors.append(ParserError(error.node(), error.node_name(), error.node_operator(), error.func(),
                                  getattr(code, "name", str(code)), _clean(error.desc())))
    return errors


def parse(backend, builder, trt_logger, path: Path, domains: dict[str, str] | None = None):
    """Parse the ONNX file at ``path`` into a new network; return ``(network, parser)``.

    Keep the parser alive as long as the network: it owns the weights. ``domains`` maps
    node names to their op domain (for messages). Raises :class:`ParseFailedError`
    listing every problem.
    """
    trt = backend.trt
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, trt_logger)
    ok = parser.parse_from_file(str(path))
    problems = [_problem(error, domains or {}) for error in parser_errors(parser)]
    if not ok or problems:
        problems = list(dict.fromkeys(problems)) or [ParseProblem(None, None, "the parser failed without "
                                                                  "saying why", "UNKNOWN", False)]
        count = len(problems)
        raise ParseFailedError(f"{path}: the ONNX parser of {backend.describe()} rejected the model "
                               f"({count} error{'s' if count > 1 else ''})",
                               [p.describe() for p in problems], any(p.unsupported for p in problems))
    return network, parser


def network_flags(trt) -> int:
    """Strongly typed: the graph's types decide every layer's precision. TensorRT 10 has the
    flag (weakly typed otherwise); TensorRT 11 and tensorrt_rtx removed it, every network
    being strongly typed there."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _problem(error: ParserError, domains: dict[str, str]) -> ParseProblem:
    code = error.code
    node = error.node or None
    op = error.operator or None
    domain = domains.get(node or "", "")
    if op and domain not in DEFAULT_DOMAINS:
        op = f"{domain}.{op}"
    desc = error.desc
    plugin_missing = "Plugin not found" in desc
    if plugin_missing:
        reason = (f"no TensorRT importer or plugin creator for this op ({desc.rstrip('?')}); the parser "
                  "looks custom-domain and unknown ops up as plugins")
    elif desc in ("", "false"):
        reason = f"not supported by this parser ({error.func} rejected it)"
    else:
        reason = desc
    return ParseProblem(node, op, reason, code, code in _UNSUPPORTED_CODES or plugin_missing)


def _clean(desc: str) -> str:
    """``creator && "Plugin not found, ..."`` (an assertion's text) -> ``Plugin not found, ...``."""
    desc = desc.strip()
    match = re.fullmatch(r'[\w.\->()]+\s*&&\s*"(.*)"', desc)
    return match.group(1) if match else desc
