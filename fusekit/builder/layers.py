"""Engine layers, from the engine inspector or from the builder's log, and network layers.

With ``ProfilingVerbosity.DETAILED`` and a VERBOSE logger, the builder logs a message
starting ``Layers:`` with one line per engine layer::

    Name: __myl_CorrMulAddRelu_myl0_2, LayerType: runtime_fusion, Inputs: [ { Name: x,
    Dimensions: [-1,3,64,64], ..., Datatype: Float, Format: ... }], Constants: [...],
    Outputs: [...], TacticName: ..., StreamId: 0, Metadata: [ONNX Layer: /stem/Conv]\\x1f[ONNX Layer: ...]

(``\\x1f`` separates metadata entries). Where a runtime can deserialize the engine, the
engine inspector gives the same facts as JSON. Both become :class:`EngineLayer` values.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

# Engine layers that do no computation: stream synchronization and the shape program.
SYNC_TYPES = frozenset({"signal", "wait"})
SHAPE_TYPES = frozenset({"shape_call"})

_DTYPES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16", "int8": "int8", "int32": "int32", "int64": "int64",
           "bool": "bool", "uint8": "uint8", "fp8": "float8", "int4": "int4", "fp4": "float4", "e8m0": "e8m0"}


@dataclass
class TensorInfo:
    name: str
    dims: list[int] | None = None
    dtype: str | None = None


@dataclass
class EngineLayer:
    """One layer of the built engine and the ONNX nodes it computes."""

    name: str
    type: str
    onnx_nodes: list[str] = field(default_factory=list)
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    tactic: str | None = None

    @property
    def kind(self) -> str:
        """``compute``, ``sync`` (stream signal/wait) or ``shape`` (the shape program)."""
        t = self.type.lower()
        return "sync" if t in SYNC_TYPES else "shape" if t in SHAPE_TYPES else "compute"

    @property
    def precisions(self) -> list[str]:
        """Element types of the layer's outputs (its inputs if it has no outputs)."""
        tensors = self.outputs or self.inputs
        return sorted({t.dtype for t in tensors if t.dtype})

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "kind": self.kind, "onnx_nodes": list(self.onnx_nodes),
                "precisions": self.precisions, "inputs": [asdict(t) for t in self.inputs],
                "outputs": [asdict(t) for t in self.outputs], "tactic": self.tactic}


@dataclass
class NetworkLayer:
    """A layer of the parsed network (before the builder fuses anything)."""

    name: str
    type: str
    onnx_nodes: list[str]


def normalize_dtype(text: str | None) -> str | None:
    if not text:
        return None
    return _DTYPES.get(text.strip().lower(), text.strip().lower())


def onnx_nodes(metadata: str | None) -> list[str]:
    """``[ONNX Layer: a]\\x1f[ONNX Layer: b]`` -> ``["a", "b"]`` (order kept, duplicates removed)."""
    if not metadata:
        return []
    found: dict[str, None] = {}
    for entry in re.split(r"\x1f|\](?=\[ONNX Layer: )", metadata.strip()):
        entry = entry.strip()
        if not entry:
            continue
        if entry.startswith("[ONNX Layer: "):
            entry = entry[len("[ONNX Layer: "):]
            entry = entry[:-1] if entry.endswith("]") else entry
        found.setdefault(entry)
    return list(found)


# -- from the builder's log ---------------------------------------------------------

_FIELDS = ("Name: ", ", LayerType: ", ", Inputs: ", ", Constants: ", ", Outputs: ", ", TacticName: ",
           ", StreamId: ", ", Metadata: ")
_TENSOR = re.compile(r"\{ Name: (?P<name>.*?), Dimensions: \[(?P<dims>[^\]]*)\].*?Datatype: (?P<dtype>\w+)")


def from_log(messages: list[str]) -> list[EngineLayer] | None:
    """Engine layers from the last ``Layers:`` message of a build's log, or None if absent."""
    record = next((m for m in reversed(messages) if m.startswith("Layers:")), None)
    if record is None:
        return None
    body = record.split("\n\n", 1)[0]  # "I/O Tensors:" and "Engine Metadata:" follow a blank line
    return [layer for line in body.splitlines()[1:] if (layer := parse_log_line(line)) is not None]


def parse_log_line(line: str) -> EngineLayer | None:
    if not line.startswith("Name: "):
        return None
    values, rest = {}, line
    for key, following in zip(_FIELDS, _FIELDS[1:] + (None,)):
        start = rest.find(key)
        if start < 0:
            return None
        rest = rest[start + len(key):]
        end = rest.find(following) if following else len(rest)
        if end < 0:
            return None
        values[key.strip(", :")] = rest[:end]
        rest = rest[end:]
    return EngineLayer(name=values["Name"], type=values["LayerType"], onnx_nodes=onnx_nodes(values["Metadata"]),
                       inputs=_tensors(values["Inputs"]), outputs=_tensors(values["Outputs"]),
                       tactic=values["TacticName"] or None)


def _tensors(text: str) -> list[TensorInfo]:
    return [TensorInfo(m["name"], _dims(m["dims"]), normalize_dtype(m["dtype"])) for m in _TENSOR.finditer(text)]


def _dims(text: str) -> list[int] | None:
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        return None


def vertical_fusions(messages: list[str]) -> int | None:
    """N of the last "After vertical fusions: N layers" message (with Myelin, 1 per foreign node)."""
    for message in reversed(messages):
        match = re.match(r"After vertical fusions: (\d+) layers", message)
        if match:
            return int(match.group(1))
    return None


# -- from the engine inspector ------------------------------------------------------

_INSPECTOR_DTYPE = re.compile(r"\b(FP32|FP16|BF16|INT8|INT32|INT64|BOOL|UINT8|FP8|INT4|FP4|E8M0|Float|Half|BFloat16)\b")


def from_inspector(text: str) -> list[EngineLayer]:
    """Engine layers from ``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``."""
    data = json.loads(text)
    layers = []
    for item in data.get("Layers", []):
        if isinstance(item, str):  # ProfilingVerbosity.LAYER_NAMES_ONLY
            layers.append(EngineLayer(name=item, type="unknown"))
            continue
        layers.append(EngineLayer(
            name=str(item.get("Name", "")), type=str(item.get("LayerType", "unknown")),
            onnx_nodes=onnx_nodes(item.get("Metadata")),
            inputs=[_inspector_tensor(t) for t in item.get("Inputs", []) if isinstance(t, dict)],
            outputs=[_inspector_tensor(t) for t in item.get("Outputs", []) if isinstance(t, dict)],
            tactic=item.get("TacticName") or None))
    return layers


def _inspector_tensor(t: dict) -> TensorInfo:
    dtype = t.get("Datatype")
    if dtype is None:
        match = _INSPECTOR_DTYPE.search(str(t.get("Format/Datatype", "")))
        dtype = match.group(1) if match else None
    dims = t.get("Dimensions")
    return TensorInfo(str(t.get("Name", "")), list(dims) if isinstance(dims, list) else None, normalize_dtype(dtype))


# -- the parsed network -------------------------------------------------------------

def network_layers(network) -> list[NetworkLayer]:
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = getattr(layer.type, "name", str(layer.type))
        layers.append(NetworkLayer(layer.name, kind, onnx_nodes(getattr(layer, "metadata", ""))))
    return layers
