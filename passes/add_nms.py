"""Append NVIDIA's EfficientNMS_TRT to a YOLO-style detector head (opt-in: ``--add-nms``).

A plain export of a YOLO detector (Ultralytics' ``model.export(format="onnx")`` without
``nms``, YOLOX, ...) ends at one raw head output: per candidate box 4 box values then C
class scores, as ``[B, 4+C, N]`` (layout ``cn``, Ultralytics YOLOv5u/v8/11) or
``[B, N, 4+C]`` (``nc``). The pass moves the boxes and scores to EfficientNMS_TRT's
inputs (a Transpose for ``cn``, two Slices; center-size boxes ``xywh`` turned into corners
with ordinary nodes, so the plugin runs with box_coding 0), and the graph's outputs become
the plugin's: ``num_dets [B,1]`` int32, ``det_boxes [B,max,4]`` (corners),
``det_scores [B,max]``, ``det_classes [B,max]`` int32, zero past num_dets. This is the one
rewrite that changes the graph's output names: the model becomes an end-to-end detector
that runs in TensorRT (and no longer in onnxruntime).

Options (``score=0.25,iou=0.45,max=300`` plus, when detection is not enough,
``layout=cn|nc``, ``box=xywh|xyxy``, ``agnostic=0|1``): the layout is detected from the
head's shape (the static dim of the two is 4+C when the other, N, is dynamic; else the
smaller one); the box coding cannot be read from the graph and defaults to ``xywh``,
Ultralytics' raw head's. Heads with an objectness column (YOLOv5/v7 ``[B, N, 5+C]``) look
like ``nc`` heads with one more class: not supported.

Must not: change a model whose outputs are not exactly one rank-3 float head with a static
4+C >= 5 (it raises InputError with the reason, the option having been asked for), or whose
new output names are taken, or a model below opset 13; nor add a second NMS to a model
whose outputs already come from EfficientNMS_TRT.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.errors import InputError
from fusekit.graph_edit import fresh_name, make_constant
from fusekit.pass_infra import Decline, Finding, Match, Option, Pass, PassContext, Stage
from fusekit.passes._pattern import float_type
from fusekit.plugin_infra import PLUGIN_DOMAIN

PLUGIN = "EfficientNMS_TRT"
OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
LAYOUTS = ("auto", "cn", "nc")
BOXES = ("xywh", "xyxy")


@dataclass(frozen=True)
class NmsOptions:
    """``--add-nms`` settings: thresholds, boxes kept per image, how the head is laid out."""

    score: float = 0.25
    iou: float = 0.45
    max: int = 300
    layout: str = "auto"  # cn: [B, 4+C, N]; nc: [B, N, 4+C]
    box: str = "xywh"  # xywh: center and size; xyxy: corners
    agnostic: bool = False

    @classmethod
    def parse(cls, given: str | Mapping | NmsOptions) -> NmsOptions:
        """``"score=0.25,iou=0.45,max=300"`` (or a mapping of the same keys); ValueError names
        the bad key or value."""
        if isinstance(given, NmsOptions):
            return given
        if isinstance(given, str):
            pairs = [p.strip() for p in given.split(",") if p.strip()]
            bad = [p for p in pairs if "=" not in p]
            if bad:
                raise ValueError(f"{bad[0]!r} is not KEY=VALUE")
            given = dict(p.split("=", 1) for p in pairs)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; keys: {', '.join(known)}")
        values = {}
        for key, raw in given.items():
            text = str(raw).strip().lower()
            try:
                if key in ("score", "iou"):
                    values[key] = float(text)
                elif key == "max":
                    values[key] = int(text)
                elif key == "agnostic":
                    values[key] = {"1": True, "true": True, "yes": True, "0": False, "false": False,
                                   "no": False}[text]
                else:
                    values[key] = text
            except (ValueError, KeyError):
                raise ValueError(f"{key}={raw!r} is not a valid value") from None
        options = cls(**values)
        if not 0.0 <= options.iou <= 1.0:
            raise ValueError(f"iou={options.iou:g} is not within [0, 1]")
        if options.max < 1:
            raise ValueError(f"max={options.max} keeps no box")
        if options.layout not in LAYOUTS:
            raise ValueError(f"layout={options.layout!r}: one of {', '.join(LAYOUTS)}")
        if options.box not in BOXES:
            raise ValueError(f"box={options.box!r}: one of {', '.join(BOXES)}")
        return options

    def describe(self) -> str:
        return f"score {self.score:g}, iou {self.iou:g}, max {self.max}, boxes {self.box}" + \
            (", class-agnostic" if self.agnostic else "")


ADD_NMS = Option("add_nms", NmsOptions, None,
                 "Append EfficientNMS_TRT to a YOLO-style head ([B,4+C,N] or [B,N,4+C]): score=0.25,iou=0.45,max=300 "
                 "(also layout=cn|nc, box=xywh|xyxy, agnostic=0|1). The outputs become num_dets, det_boxes, "
                 "det_scores, det_classes.", parse=NmsOptions.parse, metavar="SETTINGS")


@dataclass(frozen=True)
class Head:
    """The recognised head output: its layout and number of classes."""

    output: gs.Variable
    layout: str
    classes: int


class AddNmsPass(Pass):
    """Append EfficientNMS_TRT to a raw YOLO-style head output (opt-in: --add-nms)."""

    name = "add-nms"
    stage = Stage.PLUGINS
    priority = 90
    enabled_by_default = False

    options = (ADD_NMS,)

    def inspect(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Finding]:
        if _done(graph) or len(graph.outputs) != 1 or not graph.outputs[0].inputs:
            return
        options = ctx.get(ADD_NMS) or NmsOptions()
        head = find_head(graph, options)
        node = graph.outputs[0].inputs[0]
        yield self.finding(node, head if isinstance(head, Decline) else Match(_message(head, options)))

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        if _done(graph):
            return 0
        options = ctx.get(ADD_NMS) or NmsOptions()
        head = find_head(graph, options)
        if isinstance(head, Decline):
            raise InputError(f"add-nms: {head.reason}")
        ctx.record(head.output.inputs[0], _message(head, options))
        graph.outputs = _append(graph, head, options)
        return 1


def _message(head: Head, options: NmsOptions) -> str:
    shape = ["B", "4+C", "N"] if head.layout == "cn" else ["B", "N", "4+C"]
    return f"{PLUGIN} appended to head {head.output.name!r} [{', '.join(shape)}] ({head.classes} classes; " \
           f"{options.describe()}); outputs {', '.join(OUTPUTS)}"


def _done(graph: gs.Graph) -> bool:
    """Whether the graph's outputs already come from EfficientNMS_TRT."""
    return any(t.inputs and t.inputs[0].op == PLUGIN for t in graph.outputs)


def find_head(graph: gs.Graph, options: NmsOptions) -> Head | Decline:
    """The one head output and its layout, or why the graph has none."""
    if len(graph.outputs) != 1:
        return Decline(f"the model has {len(graph.outputs)} outputs "
                       f"({', '.join(repr(t.name) for t in graph.outputs)}); a YOLO-style head has one")
    out = graph.outputs[0]
    shape = list(out.shape) if out.shape is not None else None
    where = f"output {out.name!r} {shape}"
    if not out.inputs:
        return Decline(f"{where} is not computed by any node")
    if shape is None or len(shape) != 3:
        return Decline(f"{where} is not [B, 4+C, N] or [B, N, 4+C]")
    if float_type(out) is None:
        return Decline(f"{where} is not a float tensor")
    if (graph.opset or 0) < 13:
        return Decline(f"opset {graph.opset} < 13")
    taken = [n for n in OUTPUTS if n in graph.tensors()]
    if taken:
        return Decline(f"the output name {taken[0]!r} is already used in the model")
    layout = options.layout if options.layout != "auto" else _layout(shape[1], shape[2])
    if isinstance(layout, Decline):
        return Decline(f"{where}: {layout.reason} (say layout=cn for [B, 4+C, N] or layout=nc for [B, N, 4+C])")
    width = shape[1] if layout == "cn" else shape[2]
    if not isinstance(width, int) or width < 5:
        return Decline(f"{where}: layout {layout} puts {width!r} values per box; a head needs a static 4 box "
                       "values + at least 1 class score")
    return Head(out, layout, width - 4)


def _layout(d1, d2) -> str | Decline:
    static1, static2 = isinstance(d1, int) and d1 > 0, isinstance(d2, int) and d2 > 0
    if static1 and not static2:
        return "cn"
    if static2 and not static1:
        return "nc"
    if static1 and static2 and d1 != d2:
        return "cn" if d1 < d2 else "nc"
    return Decline("cannot tell which dim holds the 4+C values per box")


def _append(graph: gs.Graph, head: Head, options: NmsOptions) -> list[gs.Variable]:
    """The nodes from the head output to the plugin; returns the plugin's outputs."""
    out, dtype = head.output, head.output.dtype
    nodes: list[gs.Node] = []

    def op(kind: str, inputs: list, **attrs) -> gs.Variable:
        result = gs.Variable(fresh_name(graph, f"{out.name}_nms_{kind.lower()}"), dtype=dtype)
        nodes.append(gs.Node(kind, fresh_name(graph, f"add_nms/{kind}"), attrs=attrs, inputs=inputs,
                             outputs=[result]))
        return result

    def last_axis(x, start: int, end: int) -> gs.Variable:
        return op("Slice", [x] + [make_constant(graph, name, np.array([v], np.int64))
                                  for name, v in (("starts", start), ("ends", end), ("axes", 2))])

    rows = op("Transpose", [out], perm=[0, 2, 1]) if head.layout == "cn" else out  # [B, N, 4+C]
    boxes, scores = last_axis(rows, 0, 4), last_axis(rows, 4, 4 + head.classes)
    if options.box == "xywh":
        half = op("Mul", [last_axis(boxes, 2, 4), make_constant(graph, "half", np.array(0.5, np.dtype(dtype)))])
        center = last_axis(boxes, 0, 2)
        boxes = op("Concat", [op("Sub", [center, half]), op("Add", [center, half])], axis=2)
    batch, k = out.shape[0], options.max
    outputs = [gs.Variable("num_dets", dtype=np.int32, shape=[batch, 1]),
               gs.Variable("det_boxes", dtype=dtype, shape=[batch, k, 4]),
               gs.Variable("det_scores", dtype=dtype, shape=[batch, k]),
               gs.Variable("det_classes", dtype=np.int32, shape=[batch, k])]
    fields = {"background_class": -1, "max_output_boxes": k, "score_threshold": float(options.score),
              "iou_threshold": float(options.iou), "score_activation": 0, "class_agnostic": int(options.agnostic),
              "box_coding": 0, "plugin_version": "1", "plugin_namespace": ""}
    nodes.append(gs.Node(PLUGIN, fresh_name(graph, "add_nms/EfficientNMS_TRT"), attrs=fields,
                         inputs=[boxes, scores], outputs=outputs, domain=PLUGIN_DOMAIN))
    graph.nodes.extend(nodes)
    return outputs
