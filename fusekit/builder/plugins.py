"""TensorRT plugins a model needs, and Python creators for those the backend lacks.

A model optimized with ``--plugins`` holds plugin nodes (op type = plugin name, with
``plugin_version`` / ``plugin_namespace`` attributes). Before parsing, :func:`prepare`
finds them, matches each to its plugin spec (``fusekit.plugins`` entry points), and, for
every plugin whose creator the installed TensorRT does not have, registers a Python
``IPluginV3`` + ``IPluginCreatorV3One`` generated from the spec: name, version, namespace,
fields (from the node's attributes), output shapes and types. That is enough for the
parse and the engine build (``enqueue`` is never called while building); running the
engine needs the real plugin library on the target, which the build report says.

Measured with tensorrt_rtx 1.7 on a CPU-only machine:
- ``register_creator(creator, "")`` makes the parser find the creator; the network gets a
  ``PLUGIN_V3`` layer and the build succeeds.
- The wheel ships ``libtensorrt_rtx.so.1`` while the parser dlopens ``libtensorrt_rtx.so``
  on the plugin path; without that name the process aborts. :func:`ensure_library_link`
  creates the symlink inside the ``tensorrt_rtx_libs`` package folder, or raises saying how.
- An exception in ``get_fields_to_serialize`` does not fail the build: the fields are then
  silently missing from the engine (the tests look for them in the engine bytes).
- TensorRT does not keep Python plugin objects alive: every creator and plugin handed to
  it is kept in :data:`_KEEP` for the life of the process.
- It ships ``ROIAlign_TRT`` version 2 (an IPluginV3), whose creation fails without a CUDA
  driver; version 1 is absent.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fusekit import registry
from fusekit.errors import TensorRTError

log = logging.getLogger(__name__)

_KEEP: list[Any] = []  # every creator and plugin object given to TensorRT
_REGISTERED: dict[tuple[str, str, str], Any] = {}

_ATTR_KINDS = {onnx.AttributeProto.INT: "int32", onnx.AttributeProto.FLOAT: "float32",
               onnx.AttributeProto.STRING: "char", onnx.AttributeProto.INTS: "int32[]",
               onnx.AttributeProto.FLOATS: "float32[]"}
_MARKS = ("plugin_version", "plugin_namespace")


@dataclass
class NeededPlugin:
    """A plugin the model's nodes ask for, and the spec that describes it (None: no spec)."""

    name: str
    version: str
    namespace: str
    nodes: list[str]
    spec: Any = None
    spec_name: str | None = None
    num_outputs: int = 1
    fields: dict[str, str] = field(default_factory=dict)  # field name -> kind
    source: str = ""  # "tensorrt", "fusekit python creator", or why neither

    def key(self) -> tuple[str, str, str]:
        return (self.name, self.version, self.namespace)

    def describe(self) -> str:
        ns = f", namespace {self.namespace!r}" if self.namespace else ""
        return f"{self.name} v{self.version}{ns} ({len(self.nodes)} node{'s' if len(self.nodes) > 1 else ''}; {self.source})"

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "namespace": self.namespace, "nodes": self.nodes,
                "spec": self.spec_name, "creator": self.source}


def needed_plugins(model: onnx.ModelProto) -> list[NeededPlugin]:
    """The plugins the plugin nodes of ``model`` need, each matched to its spec."""
    specs = [e.obj() for _, e in sorted(registry.discover_plugins()[0].items())]
    found: dict[tuple[str, str, str], NeededPlugin] = {}
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        spec = next((s for s in specs if s.handles(node.op_type, node.domain, attrs)), None)
        if spec is None and "plugin_version" not in attrs:
            continue
        version = _text(attrs.get("plugin_version", spec.version if spec else "1"))
        namespace = _text(attrs.get("plugin_namespace", spec.namespace if spec else ""))
        key = (node.op_type, version, namespace)
        need = found.setdefault(key, NeededPlugin(*key, nodes=[], spec=spec,
                                                  spec_name=getattr(spec, "name", None)))
        need.nodes.append(node.name)
        need.num_outputs = max(need.num_outputs, len(node.output))
        for a in node.attribute:
            if a.name not in _MARKS and a.type in _ATTR_KINDS:
                need.fields.setdefault(a.name, _ATTR_KINDS[a.type])
    return list(found.values())


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ensure_library_link(backend) -> str | None:
    """tensorrt_rtx: make ``libtensorrt_rtx.so`` exist next to ``libtensorrt_rtx.so.1`` in
    the ``tensorrt_rtx_libs`` package folder (the parser dlopens that name when it meets a
    plugin node, and the process aborts without it). Returns a note when it created it;
    raises :class:`TensorRTError` saying how when it cannot."""
    if not backend.is_rtx:
        return None
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        return None  # another layout (a system install): nothing fusekit knows to fix
    folder = Path(list(spec.submodule_search_locations)[0])
    link, target = folder / "libtensorrt_rtx.so", folder / "libtensorrt_rtx.so.1"
    if link.exists() or not target.exists():
        return None
    try:
        link.symlink_to(target.name)
    except OSError as exc:
        raise TensorRTError(
            f"tensorrt_rtx needs {link} to load plugins (the parser dlopens that name and aborts the process "
            f"without it), and fusekit cannot create it ({exc.strerror or exc}); create it once with: "
            f"ln -s {target.name} {link}") from None
    return f"created {link} -> {target.name} (tensorrt_rtx's parser loads that name for plugin nodes)"


def prepare(backend, model: onnx.ModelProto) -> tuple[list[NeededPlugin], list[str]]:
    """Register a generated creator for every needed plugin the backend lacks (and that a
    spec describes). Returns the needed plugins and notes for the build report."""
    needed = needed_plugins(model)
    notes: list[str] = []
    if not needed:
        return needed, notes
    link = ensure_library_link(backend)
    if link:
        notes.append(link)
    trt = backend.trt
    registry = trt.get_plugin_registry()
    for need in needed:
        if need.key() in _REGISTERED:
            need.source = "fusekit python creator (no kernel: build only)"
        elif registry.get_creator(need.name, need.version, need.namespace) is not None:
            need.source = f"{backend.name}'s own creator"
        elif need.spec is None:
            need.source = "no creator and no fusekit spec: the parse will fail"
        else:
            creator = make_creator(trt, need)
            if not registry.register_creator(creator, need.namespace):
                raise TensorRTError(f"{backend.describe()} refused the generated creator for {need.name} "
                                    f"v{need.version}")
            _KEEP.append(creator)
            _REGISTERED[need.key()] = creator
            need.source = "fusekit python creator (no kernel: build only)"
    notes.append("the engine needs TensorRT plugins (the target must have their libraries to run it): "
                 + "; ".join(n.describe() for n in needed))
    return needed, notes


def make_creator(trt, need: NeededPlugin):
    """A Python ``IPluginCreatorV3One`` for ``need``, made from its spec."""
    spec, num_outputs = need.spec, need.num_outputs
    kinds = {"int32": (trt.PluginFieldType.INT32, np.int32), "int32[]": (trt.PluginFieldType.INT32, np.int32),
             "float32": (trt.PluginFieldType.FLOAT32, np.float32),
             "float32[]": (trt.PluginFieldType.FLOAT32, np.float32), "char": (trt.PluginFieldType.CHAR, np.int8)}
    types = {"float32": trt.float32, "float16": trt.float16, "int32": trt.int32, "int64": trt.int64,
             "bool": trt.bool, "int8": trt.int8}

    class Plugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        def __init__(self, fields: dict[str, Any], raw: list):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name, self.plugin_version, self.plugin_namespace = need.name, need.version, need.namespace
            self.num_outputs = num_outputs
            self.fields, self.raw = fields, raw
            self.timing_cache_id = ""

        def get_capability_interface(self, type):
            return self

        def get_output_data_types(self, input_types):
            out = []
            for t in spec.output_types(self.fields, len(input_types))[:num_outputs]:
                out.append(input_types[t[1]] if isinstance(t, tuple) else types[t])
            return out

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            ranks = [len(d) for d in inputs]
            shapes = []
            for dims in spec.output_dims(self.fields, ranks)[:num_outputs]:
                exprs = trt.DimsExprs(len(dims))
                for i, d in enumerate(dims):
                    exprs[i] = inputs[d[0]][d[1]] if isinstance(d, tuple) else expr_builder.constant(int(d))
                shapes.append(exprs)
            return shapes

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([trt.PluginField(name, data, kind) for name, data, kind in self.raw])

        def configure_plugin(self, inp, out):
            pass

        def on_shape_change(self, inp, out):
            pass

        def supports_format_combination(self, pos, in_out, num_inputs):
            return in_out[pos].desc.format == trt.TensorFormat.LINEAR

        def get_valid_tactics(self):
            return []

        def set_tactic(self, tactic):
            pass

        def get_workspace_size(self, input_desc, output_desc):
            return 0

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            raise RuntimeError(f"{need.name}: fusekit's generated plugin has no kernel; install the real "
                               "plugin library to run this engine")

        def attach_to_context(self, context):
            return self.clone()

        def clone(self):
            copy = Plugin(self.fields, self.raw)
            _KEEP.append(copy)
            return copy

    class Creator(trt.IPluginCreatorV3One):
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_version, self.plugin_namespace = need.name, need.version, need.namespace
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField(n, np.array([], dtype=kinds[k][1]), kinds[k][0]) for n, k in need.fields.items()])
            self.received: list[dict[str, Any]] = []  # the fields of every create_plugin call (for tests)

        def create_plugin(self, name, fc, phase):
            fields, raw = {}, []
            for f in fc:
                data = np.array(f.data, copy=True)
                raw.append((f.name, data, f.type))
                if f.type == trt.PluginFieldType.CHAR:
                    fields[f.name] = data.astype(np.int8).tobytes().split(b"\0")[0].decode()
                else:
                    values = data.ravel().tolist()
                    fields[f.name] = values[0] if len(values) == 1 else values
            self.received.append(dict(fields))
            plugin = Plugin(fields, raw)
            _KEEP.append(plugin)
            return plugin

    return Creator()
