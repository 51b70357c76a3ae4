"""Run a model holding EfficientNMS_TRT nodes with onnxruntime, the plugin computed by the
efficient-nms spec's NumPy reference: how the tests prove a substitution or an appended NMS
equals what it replaces."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit import registry
from tests.helpers import run_ort


def run_with_reference(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    """``model`` run by onnxruntime with each EfficientNMS_TRT node's outputs computed by the
    spec's NumPy reference from its inputs (the plugin nodes cut out: their outputs become
    graph inputs; one run of what they read finds their inputs, a second runs the rest)."""
    graph = gs.import_onnx(model)
    plugins = [n for n in graph.nodes if n.op == "EfficientNMS_TRT"]
    cut = []
    for node in plugins:
        fields = {k: v.decode() if isinstance(v, bytes) else v for k, v in node.attrs.items()}
        cut.append((list(node.inputs), list(node.outputs), fields))
        node.inputs.clear()
        node.outputs.clear()
    graph.nodes = [n for n in graph.nodes if n.op != "EfficientNMS_TRT"]
    for ins, outs, _ in cut:
        graph.inputs += outs
        graph.outputs += [t for t in ins if t not in graph.outputs]
    plain = gs.export_onnx(graph.cleanup())
    probe = gs.import_onnx(plain)  # only what the plugins read
    tensors = probe.tensors()
    probe.outputs = [tensors[t.name] for ins, _, _ in cut for t in ins]
    first = run_ort(gs.export_onnx(probe.cleanup(remove_unused_graph_inputs=True)), feeds)
    given = dict(feeds)
    for ins, outs, fields in cut:
        reference = registry.discover_plugins()[0]["efficient-nms"].obj().reference([first[t.name] for t in ins], fields)
        given.update({t.name: v for t, v in zip(outs, reference)})
    return run_ort(plain, given)
