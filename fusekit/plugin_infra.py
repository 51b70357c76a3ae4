"""The plugin-spec contract: which ONNX pattern a TensorRT plugin replaces, and what it is.

A spec (one per file in ``plugins/``, found through the ``fusekit.plugins`` entry-point
group) says:

- ``plugin`` / ``version`` / ``namespace``: the TensorRT plugin the pattern becomes;
- ``match(graph, node)``: the pattern rooted at ``node`` as a :class:`PluginMatch` (the
  nodes it replaces, the plugin's inputs and outputs, and the plugin fields built from
  the matched nodes' attributes), or a ``Decline`` saying why not;
- ``output_dims`` / ``output_types``: the plugin's outputs, from its fields and inputs
  (what a generated creator answers TensorRT's builder with);
- ``reference(inputs, fields)``: a NumPy reference of what the plugin computes, which the
  tests compare with onnxruntime on the original pattern.

Specs never import TensorRT. The substitution node carries the fields as attributes plus
``plugin_version`` / ``plugin_namespace`` (how TensorRT's ONNX parser finds a creator by
op type); ``fusekit.builder.plugins`` registers a Python creator made from the spec when
the installed TensorRT has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.pass_infra import Decline

PLUGIN_DOMAIN = "trt.plugins"  # the ONNX domain of substituted plugin nodes
FIELD_KINDS = ("int32", "float32", "char", "int32[]", "float32[]")

# An output dim: a constant, or (input index, axis) of one of the plugin's inputs.
Dim = int | tuple[int, int]
# An output type: an ONNX-style name ("float32", "int32"), or ("input", i): input i's type.
OutType = str | tuple[str, int]


@dataclass
class PluginMatch:
    """A pattern found: replace ``nodes`` by one plugin node reading ``inputs`` and writing
    ``outputs`` (the pattern's tensors, whose readers then read the plugin's)."""

    nodes: list[gs.Node]
    inputs: list[gs.Tensor]
    outputs: list[gs.Tensor]
    fields: dict[str, Any]
    message: str
    casts: dict[int, np.dtype] = field(default_factory=dict)  # input index -> type the plugin needs
    keep: bool = False  # True: the node stays as it is (op type, domain) and is only marked
    # Writes nodes after the plugin: ``outputs`` are then placeholders these nodes read (the
    # plugin's outputs take their place), and it rewires the pattern's graph outputs itself.
    # Called once, by the substitution; matching never changes the graph.
    build_after: Callable[[], None] | None = None


class PluginSpec:
    """Base class of every plugin spec; subclasses set the class attributes below."""

    name: ClassVar[str]  # the spec's name, for --plugins NAME
    plugin: ClassVar[str]  # the TensorRT plugin name, e.g. ROIAlign_TRT
    version: ClassVar[str] = "1"
    namespace: ClassVar[str] = ""
    ops: ClassVar[frozenset[str]]  # root op types of the pattern
    domains: ClassVar[frozenset[str]] = frozenset({"", "ai.onnx"})
    fields: ClassVar[dict[str, str]] = {}  # field name -> kind (one of FIELD_KINDS)

    def roots(self, node: gs.Node) -> bool:
        """Whether ``node`` can root this spec's pattern (default: ``ops`` in ``domains``)."""
        return node.op in self.ops and (node.domain or "") in self.domains

    def match(self, graph: gs.Graph, node: gs.Node) -> PluginMatch | Decline:
        raise NotImplementedError

    def plugin_name(self, match: PluginMatch) -> str:
        """The plugin (op type) a match becomes; a passthrough spec keeps the op's own."""
        return self.plugin

    def handles(self, op_type: str, domain: str, attrs: dict) -> bool:
        """Whether a node of the (already substituted) model is this spec's plugin."""
        return op_type == self.plugin

    def output_dims(self, fields: dict[str, Any], input_ranks: list[int]) -> list[list[Dim]]:
        raise NotImplementedError

    def output_types(self, fields: dict[str, Any], num_inputs: int) -> list[OutType]:
        raise NotImplementedError

    def reference(self, inputs: list[np.ndarray], fields: dict[str, Any]) -> list[np.ndarray]:
        raise NotImplementedError


def validate_spec_class(obj: object) -> str | None:
    """Why ``obj`` is not a usable plugin spec class, or None."""
    if not isinstance(obj, type) or not issubclass(obj, PluginSpec):
        return f"{obj!r} is not a subclass of fusekit.plugin_infra.PluginSpec"
    for attr in ("name", "plugin", "version"):
        if not isinstance(getattr(obj, attr, None), str) or not getattr(obj, attr):
            return f"{obj.__name__} has no {attr}"
    if not isinstance(getattr(obj, "ops", None), frozenset):
        return f"{obj.__name__}.ops is not a frozenset of op types"
    bad = [k for k, kind in obj.fields.items() if kind not in FIELD_KINDS]
    if bad:
        return f"{obj.__name__}: field {bad[0]!r} has a kind not in {', '.join(FIELD_KINDS)}"
    for method in ("match", "output_dims", "output_types", "reference"):
        if getattr(obj, method) is getattr(PluginSpec, method):
            return f"{obj.__name__} does not implement {method}()"
    return None
