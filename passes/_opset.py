"""Raising a model's default-domain opset when no node changes meaning by it.

Not a pass: fuse-layer-norm and decompose-contrib-ops raise the opset to use an op that
older opsets lack, and ask :func:`opset_raise_blocker` first.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from fusekit.onnx_nodes import is_default_domain, walk_nodes

# Default-domain op versions between opsets 14 and 17 that leave every existing use of the
# op meaning what it meant: types added, or an attribute added whose default is the old
# behaviour. Checked against onnx.defs (type constraints and attributes of both versions).
# Not here, so raising across them is refused: RoiAlign-16 (new attribute
# coordinate_transformation_mode defaults to "half_pixel", the old behaviour is
# "output_half_pixel"), and every change of opset 13 or earlier.
_TYPES_ONLY = {
    ("Add", 14), ("Sub", 14), ("Mul", 14), ("Div", 14), ("Relu", 14), ("CumSum", 14), ("Identity", 14),
    ("BatchNormalization", 15), ("Pow", 15), ("GreaterOrEqual", 16), ("LessOrEqual", 16),
    ("LeakyRelu", 16), ("PRelu", 16), ("Where", 16), ("Identity", 16), ("If", 16), ("Loop", 16),
    ("Scan", 16),
}
_DEFAULTED_ATTRIBUTE = {
    ("GRU", 14): "layout", ("LSTM", 14): "layout", ("RNN", 14): "layout", ("Reshape", 14): "allowzero",
    ("Shape", 15): "start/end", ("ScatterElements", 16): "reduction", ("ScatterND", 16): "reduction",
}


def _bump_is_safe(node: gs.Node, op: str, version: int) -> bool:
    if (op, version) in _TYPES_ONLY or (op, version) in _DEFAULTED_ATTRIBUTE:
        return True
    if (op, version) == ("BatchNormalization", 14):
        # training_mode (default 0) is new; version 9's extra outputs were training-only.
        return len(node.outputs) == 1
    return False


def opset_raise_blocker(graph: gs.Graph, target: int) -> str | None:
    """Why the default-domain opset of ``graph`` cannot be raised to ``target`` without
    changing what a node means, or None if it can."""
    current = graph.opset
    if getattr(graph, "functions", None):
        return "the model has local functions, whose opset imports would have to change too"
    seen: set[tuple[str, int]] = set()
    for n in walk_nodes(graph):
        if not is_default_domain(n) or (n.op, len(n.outputs)) in seen:
            continue
        seen.add((n.op, len(n.outputs)))
        try:
            old = onnx.defs.get_schema(n.op, current).since_version
        except onnx.defs.SchemaError:
            return f"{n.op} has no ONNX schema at opset {current}"
        for version in range(old + 1, target + 1):
            try:
                changed = onnx.defs.get_schema(n.op, version).since_version == version
            except onnx.defs.SchemaError:
                return f"{n.op} has no ONNX schema at opset {version}"
            if changed and not _bump_is_safe(n, n.op, version):
                return f"{n.op} changed meaning in opset {version}"
    return None


def raise_opset(graph: gs.Graph, target: int) -> None:
    """Raise the default-domain opset (and the IR version if it predates it) to ``target``."""
    if graph.opset >= target:
        return
    graph.opset = target
    needed = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", target)])
    if graph.ir_version is not None and graph.ir_version < needed:
        graph.ir_version = needed
