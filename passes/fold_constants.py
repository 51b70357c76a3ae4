"""Fold constant subgraphs into initializers.

Rewrites every node whose inputs are all constants (initializers, ``Constant`` nodes or
outputs of other folded nodes): the constant region is evaluated in onnxruntime, in
batches of its independent parts (at most ``BATCH_INPUT_BYTES`` of inputs each, so weights
and their folded copies are never all in memory at once), or by the onnx reference
evaluator where onnxruntime cannot run a batch; each value that leaves the region becomes
an initializer. A region value that is a graph output is kept by a ``Constant`` node of
the same name (unless its node writes several graph outputs: folding never adds nodes);
a node that stays for its other outputs keeps an unused placeholder in that output's place.

Must not fold: nondeterministic ops (``Random*``, ``Multinomial``, ``Bernoulli``), ops of
other domains, nodes with subgraphs, sequence/optional ops, DequantizeLinear of a quantized
constant (explicit quantization is what TensorRT builds INT8 layers from; of INT32 it
folds), or a value larger than ``fold_max_bytes`` (default 1 MiB) that is also larger than
the largest constant it is computed from, except a weight: a value read only where
TensorRT wants constant weights (``WEIGHT_INPUTS``), directly or through layout ops, folds
whatever its size (TensorRT stores it in the engine anyway, and left computed it keeps the
layer from fusing).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from fusekit.graph_edit import (NONDETERMINISTIC_OPS, constant_array, constant_of, held_values, is_constant,
                                itemsize)
from fusekit.onnx_nodes import is_default_domain
from fusekit.pass_infra import Decline, Match, Option, Pass, PassContext, Stage
from fusekit.passes._folding import record_folded, replace_with_constant

log = logging.getLogger(__name__)

MAX_BYTES = Option("fold_max_bytes", int, 1 << 20, "Fold a constant subgraph into at most this many bytes "
                   "(unless no larger than its inputs, or read only as a weight).", metavar="BYTES")
# Ops whose output may be far larger than their inputs: folded only with a known output shape.
GENERATORS = frozenset({"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad",
                        "OneHot", "EyeLike"})
# Inputs (by position) that TensorRT's layer for the op takes as constant weights.
WEIGHT_INPUTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2), "GroupNormalization": (1, 2), "PRelu": (1,),
}
# Ops whose output holds the elements of their first input, rearranged: a weight through them
# is still a weight of the same size.
LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"})


class FoldConstantsPass(Pass):
    """Evaluate constant subgraphs once and store their results as initializers."""

    name = "fold-constants"
    stage = Stage.CLEANUP
    priority = 10
    options = (MAX_BYTES,)

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        weights = weight_values(graph)
        cap = _max_bytes(ctx)
        region, _, largest = self._region(graph, cap, weights)
        if not region:
            return 0
        folded = 0
        outputs = {id(t) for t in graph.outputs}
        touched: dict[int, gs.Node] = {}
        for nodes in batches(region, BATCH_INPUT_BYTES, weights):
            frontier = self._frontier(nodes, outputs)
            values = evaluate(graph, nodes, frontier)
            for tensor in frontier:
                value = values.get(tensor.name)
                node = tensor.inputs[0]
                if value is None or _over_cap(value.nbytes, cap, largest[id(node)], id(tensor) in weights):
                    continue
                if replace_with_constant(graph, tensor, value, outputs):
                    touched.setdefault(id(node), node)
                    folded += 1
            del values  # this batch's inputs (maps of the model file) are released before the next
            ctx.wrote_weights(graph)
        record_folded(ctx, touched.values(), outputs)
        return folded

    def inspect(self, graph: gs.Graph, ctx: PassContext):
        region, declined, _ = self._region(graph, _max_bytes(ctx), weight_values(graph))
        for node in region:
            if node.op != "Constant":
                yield self.finding(node, Match("fold into a constant"))
        for node, reason in declined:
            yield self.finding(node, Decline(reason))

    def _region(self, graph: gs.Graph, cap: int, weights: set[int]):
        """Nodes computable from constants alone (in order), (node, reason) refusals, and
        for each region node (by id) the bytes of the largest constant it is computed from.
        ``weights``: ids of the tensors read only as weights (exempt from the ``cap``)."""
        source_bytes: dict[int, int] = {}  # region tensor -> largest constant it comes from
        region, declined, largest = [], [], {}
        for node in graph.nodes:
            inputs_constant = all(not t.name or is_constant(t) or id(t) in source_bytes for t in node.inputs)
            if not inputs_constant:
                continue
            largest[id(node)] = max((max(source_bytes.get(id(t), 0), constant_nbytes(t))
                                     for t in node.inputs if t.name), default=0)
            reason = self._why_not(node, cap, largest[id(node)], id(node.outputs[0]) in weights)
            if reason:
                if node.op != "Constant":
                    declined.append((node, reason))
                continue
            region.append(node)
            source_bytes.update((id(t), largest[id(node)]) for t in node.outputs)
        return region, declined, largest

    @staticmethod
    def _why_not(node: gs.Node, cap: int, largest_input: int, weight: bool) -> str | None:
        if not is_default_domain(node):
            return f"op of domain {node.domain!r} is not evaluated"
        if node.op in NONDETERMINISTIC_OPS:
            return f"{node.op} is nondeterministic"
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return "node has a subgraph"
        if "Sequence" in node.op or "Optional" in node.op:
            return "sequence/optional values are not folded"
        if node.op == "Constant" and ("value" not in node.attrs):
            return "Constant with sparse or list value"
        if node.op == "DequantizeLinear" and node.inputs[0].dtype != np.int32:
            return ("a quantized weight stays quantized: TensorRT builds INT8/FP8 layers from its "
                    "DequantizeLinear (an INT32 bias, which TensorRT rejects, is folded)")
        if node.op in GENERATORS:
            size = _predicted_nbytes(node)
            if size is None:
                return f"{node.op} output size is unknown"
            if _over_cap(size, cap, largest_input, weight):
                return f"result would be {size} bytes (over fold_max_bytes={cap}) and is not only read as a weight"
        return None

    @staticmethod
    def _frontier(region: list[gs.Node], outputs: set[int]) -> list[gs.Tensor]:
        """The region's results read outside it (``outputs``: ids of the graph outputs)."""
        in_region = {id(n) for n in region}
        frontier = []
        for node in region:
            for t in node.outputs:
                if id(t) in outputs or any(id(c) not in in_region for c in t.outputs):
                    if not (node.op == "Constant" and id(t) in outputs):
                        frontier.append(t)
        return frontier


def _max_bytes(ctx: PassContext) -> int:
    return ctx.get(MAX_BYTES)


def _over_cap(size: int, cap: int, largest_input: int, weight: bool) -> bool:
    """Whether a folded value of ``size`` bytes is refused: over ``cap``, larger than the
    largest constant it is computed from, and not only read as a weight."""
    return size > cap and size > largest_input and not weight


# Constant inputs evaluated together, at most (one larger independent part goes alone):
# inputs and results of the whole model's constant region are never all in memory at once.
BATCH_INPUT_BYTES = 64 << 20


def weight_values(graph: gs.Graph) -> set[int]:
    """Ids of the tensors read only as weights (``WEIGHT_INPUTS``), directly or through
    ``LAYOUT_OPS`` whose outputs are in turn read only as weights; never a graph output."""
    outputs = {id(t) for t in graph.outputs}
    weights: set[int] = set()
    for node in reversed(graph.nodes):  # consumers come after their inputs' producers
        for t in node.outputs:
            if not t.outputs or id(t) in outputs:
                continue
            if all(_reads_as_weight(c, t, weights) for c in t.outputs):
                weights.add(id(t))
    return weights


def _reads_as_weight(consumer: gs.Node, tensor: gs.Tensor, weights: set[int]) -> bool:
    if not is_default_domain(consumer):
        return False
    slots = [i for i, t in enumerate(consumer.inputs) if t is tensor]
    if consumer.op in LAYOUT_OPS:
        return slots == [0] and all(id(t) in weights for t in consumer.outputs)
    return all(i in WEIGHT_INPUTS.get(consumer.op, ()) for i in slots)


def batches(region: list[gs.Node], budget: int, weights: set[int] = frozenset()) -> list[list[gs.Node]]:
    """The region cut into independent parts (no value of one is read by another), packed
    in order into batches whose constant inputs total at most ``budget`` bytes each.
    Generated weights (``weights``: tensor ids) count as inputs, by their predicted size."""
    index = {id(n): i for i, n in enumerate(region)}
    parent = list(range(len(region)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    input_bytes = [0] * len(region)
    for i, node in enumerate(region):
        for t in node.inputs:
            producer = t.inputs[0] if t.inputs else None
            if producer is not None and id(producer) in index:
                parent[root(i)] = root(index[id(producer)])
            elif t.name:
                input_bytes[i] += constant_nbytes(t)
        if node.op in GENERATORS and id(node.outputs[0]) in weights:
            input_bytes[i] += _predicted_nbytes(node) or 0
    parts: dict[int, list[int]] = {}
    for i in range(len(region)):
        parts.setdefault(root(i), []).append(i)
    result: list[list[int]] = []
    size = 0
    for members in sorted(parts.values(), key=lambda m: m[0]):
        part = sum(input_bytes[i] for i in members)
        if not result or size + part > budget:
            result.append([])
            size = 0
        result[-1].extend(members)
        size += part
    return [[region[i] for i in sorted(batch)] for batch in result]


def constant_nbytes(tensor: gs.Tensor) -> int:
    """Bytes of a constant's values, from its metadata: a weight is not read to size it."""
    const = constant_of(tensor)
    return 0 if const is None else int(held_values(const).nbytes)


def _predicted_nbytes(node: gs.Node) -> int | None:
    out = node.outputs[0]
    size = itemsize(out.dtype)
    if out.shape is not None and all(isinstance(d, int) and d >= 0 for d in out.shape) and size is not None:
        return int(np.prod(out.shape, dtype=np.int64)) * size
    if node.op == "ConstantOfShape":
        shape = constant_array(node.inputs[0])
        return None if shape is None else int(np.prod(shape, dtype=np.int64)) * 8
    return None


def evaluate(graph: gs.Graph, region: list[gs.Node], frontier: list[gs.Tensor]) -> dict[str, np.ndarray] | None:
    """Values of ``frontier`` computed from the region's constant inputs."""
    produced = {id(t) for n in region for t in n.outputs}
    feeds: dict[str, np.ndarray] = {}
    for node in region:
        for t in node.inputs:
            if t.name and id(t) not in produced and t.name not in feeds:
                feeds[t.name] = np.asarray(constant_array(t))
    try:
        return _run_onnxruntime(_region_model(graph, region, frontier, feeds), feeds, frontier)
    except Exception as exc:
        log.debug("onnxruntime could not fold the region (%s); using the reference evaluator", exc)
    return _run_reference(region, feeds, frontier)


def _region_model(graph: gs.Graph, region: list[gs.Node], frontier: list[gs.Tensor],
                  feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    inputs = [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for name, v in feeds.items()]
    outputs = [onnx.helper.make_empty_tensor_value_info(t.name) for t in frontier]
    g = onnx.helper.make_graph([OnnxExporter.export_node(n) for n in region], "fold", inputs, outputs)
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", graph.opset)],
                                  ir_version=min(graph.ir_version or 8, onnx.IR_VERSION))


def _run_onnxruntime(model, feeds, frontier) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    opts.enable_cpu_mem_arena = False  # results freed once spilled must go back to the system
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [t.name for t in frontier]
    return dict(zip(names, sess.run(names, feeds)))


def _run_reference(region, feeds, frontier) -> dict[str, np.ndarray]:
    """Node by node with onnx.reference; a node that fails leaves its results unfolded."""
    from onnx.reference import ReferenceEvaluator

    values = dict(feeds)
    for node in region:
        names = [t.name for t in node.inputs]
        if any(n and n not in values for n in names):
            continue
        try:
            results = ReferenceEvaluator(OnnxExporter.export_node(node)).run(None, {n: values[n] for n in names if n})
        except Exception as exc:
            log.debug("not folding %s: %s", node.name, exc)
            continue
        values.update((t.name, np.asarray(r)) for t, r in zip(node.outputs, results) if t.name)
    return {t.name: values[t.name] for t in frontier if t.name in values}
