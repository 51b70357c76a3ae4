"""A custom-domain op passed through as a TensorRT plugin of the same name, with its fields.

TensorRT's parser looks any op of a domain it does not know up as a plugin named after
the op type, with the version and namespace of its ``plugin_version`` /
``plugin_namespace`` attributes and the other attributes as plugin fields. This spec
marks such a node (version "1", default namespace, unless it says otherwise): its
attributes become the fields as they are. What the op computes is the user's: fusekit
assumes each output has the shape and type of the input of the same index, which is
what the creator it generates (so the engine builds without the plugin library) tells
the builder; it declines when the model's declared shapes say otherwise.

Not passed through: onnxruntime's ``com.microsoft`` ops (decompose-contrib-ops handles
those it can), ``ai.onnx.ml``, and nodes already marked.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.pass_infra import Decline
from fusekit.plugin_infra import PLUGIN_DOMAIN, PluginMatch, PluginSpec

_NOT_CUSTOM = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training", PLUGIN_DOMAIN})


class CustomOpSpec(PluginSpec):
    """A custom-domain op kept as a TensorRT plugin of the same name (shape-preserving ops)."""

    name = "custom-op"
    plugin = "<the op type>"
    ops = frozenset()
    domains = frozenset()

    def roots(self, node: gs.Node) -> bool:
        return (node.domain or "") not in _NOT_CUSTOM and "plugin_version" not in node.attrs

    def handles(self, op_type: str, domain: str, attrs: dict) -> bool:
        return domain not in _NOT_CUSTOM and "plugin_version" in attrs

    def plugin_name(self, match: PluginMatch) -> str:
        return match.nodes[0].op

    def match(self, graph: gs.Graph, node: gs.Node) -> PluginMatch | Decline:
        if len(node.outputs) > len(node.inputs):
            return Decline("more outputs than inputs: no input gives each output's shape")
        for i, out in enumerate(node.outputs):
            src = node.inputs[i]
            if out.shape is not None and src.shape is not None and list(out.shape) != list(src.shape):
                return Decline(f"output {out.name!r} {list(out.shape)} is not shaped like input {src.name!r} "
                               f"{list(src.shape)}")
        fields = {k: v for k, v in node.attrs.items() if isinstance(v, (int, float, str, list, tuple))}
        bad = [k for k, v in fields.items() if isinstance(v, (list, tuple)) and
               not all(isinstance(e, (int, float)) for e in v)]
        if bad:
            return Decline(f"attribute {bad[0]!r} is not a number, a string or a list of numbers")
        return PluginMatch([node], list(node.inputs), list(node.outputs), fields,
                           f"{node.domain}.{node.op} passed through as plugin {node.op!r} v1 "
                           f"with {len(fields)} field{'s' if len(fields) != 1 else ''}", keep=True)

    def output_dims(self, fields, input_ranks):
        return [[(i, a) for a in range(rank)] for i, rank in enumerate(input_ranks)]

    def output_types(self, fields, num_inputs):
        return [("input", i) for i in range(num_inputs)]

    def reference(self, inputs, fields):
        return [np.asarray(x) for x in inputs]  # the shapes and types the generated creator promises
