"""A picture of the fusion: one self-contained HTML page per build (``fusekit build
--report-html FILE``) or comparison (``fusekit compare --report-html FILE``), a face over
the builder's report.

The ONNX graph handed to the parser is drawn with each node filled with the colour of the
engine layer it ended in: nodes that share a colour run as one fused layer. A node alone in
its engine layer (unfused) has a white fill and a dashed outline; a node in no engine layer
(folded or removed by TensorRT) is grey and dotted. Below the graph, the engine layer table
with the same colours; each node's label gives its engine layer number (``#7``), so a colour
used twice is never ambiguous. A comparison shows both graphs side by side, the nodes fused in only
one side outlined in red.

Graphviz lays the graph out (``dot``, through the ``graphviz`` Python package) and renders
SVG, which is inlined: the page needs no script, no network and no other file.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

from fusekit.builder.report import BuildReport, Comparison
from fusekit.errors import InputError
from fusekit.model_io import atomic_write

# Fill colours of fused engine layers (cycled); light, so dark text stays readable.
# Each node's label also carries its engine layer number (#7), so a colour met twice is never ambiguous.
PALETTE = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
           "#9edae5", "#fdd0a2", "#c7e9c0", "#dadaeb", "#fdae6b", "#a1d99b", "#bcbddc", "#fcbba1",
           "#9ecae1", "#e7cb94", "#e7969c", "#de9ed6")
UNMAPPED_FILL = "#e0e0e0"
ONLY_HERE = "#d62728"

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
.panels { display: grid; grid-template-columns: repeat(auto-fit, minmax(28em, 1fr)); gap: 1.5em; }
.graph { overflow: auto; border: 1px solid #ccc; max-height: 90vh; background: #fff; }
.graph svg { display: block; }
table { border-collapse: collapse; margin-top: .5em; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
.swatch { display: inline-block; width: 1.2em; height: 1em; border: 1px solid #888; }
.legend span { margin-right: 1.5em; } .note { color: #555; }
"""


def check_available(option: str = "--report-html") -> None:
    """InputError (before any build) when Graphviz cannot lay the page out."""
    try:
        import graphviz  # noqa: F401
    except ImportError:
        raise InputError(f"{option}: needs the graphviz Python package: pip install graphviz") from None
    if shutil.which("dot") is None:
        raise InputError(f"{option}: needs Graphviz's dot program: apt-get install graphviz "
                         "(or brew install graphviz, conda install graphviz)")


def build_page(report: BuildReport) -> str:
    """The page of one build."""
    body = _summary(report) + _legend() + f'<div class="graph">{graph_svg(report)}</div>' + _layer_table(report)
    return _page(f"fusekit: {report.model}", body)


def compare_page(comparison: Comparison) -> str:
    """The page of a comparison: both graphs side by side, nodes fused in only one outlined."""
    a, b = comparison.a, comparison.b
    data = comparison.to_dict()
    diff = data["engine_layers_difference"]
    head = (f'<p>{html.escape(b.model)} has <b>{"?" if diff is None else f"{diff:+d}"}</b> engine layers against '
            f"{html.escape(a.model)}; fused in only one: {len(data['fused_only_in_a'])} in A, "
            f"{len(data['fused_only_in_b'])} in B (outlined in red).</p>")
    panels = []
    for side, report, other in (("A", a, b), ("B", b, a)):
        only = set(comparison.fused_only_in(report, other))
        svg = graph_svg(report, only, prefix=f"{side.lower()}-")
        panels.append(f"<section><h2>{side}: {html.escape(report.model)}</h2>{_summary(report)}"
                      f'<div class="graph">{svg}</div>{_layer_table(report)}</section>')
    return _page(f"fusekit: {a.model} vs {b.model}", head + _legend(compare=True)
                 + f'<div class="panels">{"".join(panels)}</div>')


def write(path: Path, page: str) -> Path:
    try:
        atomic_write(Path(path), lambda f: f.write(page.encode()))
    except OSError as exc:
        raise InputError(f"--report-html {path}: cannot write it: {exc.strerror or exc}") from None
    return Path(path)


def check_output(path: Path) -> None:
    if not Path(path).parent.is_dir():
        raise InputError(f"--report-html {path}: folder {Path(path).parent} does not exist")


def layer_colours(report: BuildReport) -> dict[int, str]:
    """Engine layer index -> fill colour, for the layers computing more than one ONNX node."""
    fused = [i for i, layer in enumerate(report.engine or []) if len(layer.onnx_nodes) > 1]
    return {i: PALETTE[k % len(PALETTE)] for k, i in enumerate(fused)}


def graph_svg(report: BuildReport, outlined: set[str] = frozenset(), prefix: str = "") -> str:
    """The ONNX graph as inline SVG: nodes coloured by engine layer, ``outlined`` in red;
    every SVG id starts with ``prefix`` (one page may hold two graphs)."""
    import graphviz

    colours, where = layer_colours(report), report.layer_of()
    dot = graphviz.Digraph(graph_attr={"rankdir": "TB", "nodesep": "0.25", "ranksep": "0.35", "id": f"{prefix}graph"},
                           node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                                      "fontsize": "10", "height": "0.3", "margin": "0.08,0.03"},
                           edge_attr={"arrowsize": "0.6", "color": "#777777"})
    ids = {name: f"n{i}" for i, name in enumerate(report.onnx_ops)}
    for name, op in report.onnx_ops.items():
        layers = where.get(name, [])
        fused = next((i for i in layers if i in colours), None)
        kind = "fused" if fused is not None else "unfused" if layers else "unmapped"
        attrs = {"fillcolor": colours[fused] if fused is not None else "white" if layers else UNMAPPED_FILL,
                 "style": {"fused": "rounded,filled", "unfused": "rounded,filled,dashed",
                           "unmapped": "rounded,filled,dotted"}[kind],
                 "class": f"onnx-node {kind}" + (f" layer-{fused}" if fused is not None else "")
                          + (" only-here" if name in outlined else ""),
                 "tooltip": graphviz.escape(_tooltip(report, name, op, layers))}
        if name in outlined:
            attrs.update(color=ONLY_HERE, penwidth="3")
        where_in = f"#{fused if fused is not None else layers[0]} " if layers else ""  # the layer its colour shows
        dot.node(ids[name], _label(op, name, where_in), id=f"{prefix}onnx-{ids[name]}", **attrs)
    ends: dict[tuple[str, str], str] = {}
    for kind, tensors in (("input", report.inputs), ("output", report.outputs)):
        for k, t in enumerate(tensors):
            ends[(kind, t.name)] = f"{kind}{k}"
            shape = "" if t.dims is None else "[" + ",".join("?" if d < 0 else str(d) for d in t.dims) + "]"
            dot.node(f"{kind}{k}", _label(t.name, f"{t.dtype or '?'}{shape}"), shape="ellipse", style="filled",
                     fillcolor="#f5f5f5", id=f"{prefix}{kind}-{k}", **{"class": f"graph-{kind}"})
    for k, (producer, consumer, tensor) in enumerate(report.onnx_edges):
        tail = ids.get(producer) if producer is not None else ends.get(("input", tensor))
        head = ids.get(consumer) if consumer is not None else ends.get(("output", tensor))
        if tail is not None and head is not None:
            dot.edge(tail, head, tooltip=graphviz.escape(tensor), id=f"{prefix}edge-{k}")
    svg = dot.pipe(format="svg", encoding="utf-8")
    return re.sub(r"^.*?(?=<svg)", "", svg, flags=re.DOTALL)  # drop the XML prolog and DOCTYPE


def _label(title: str, detail: str, lead: str = "") -> str:
    """A Graphviz HTML-like label: ``title`` over ``lead`` + ``detail`` in small grey type."""
    return (f"<{html.escape(title)}<BR/><FONT POINT-SIZE=\"8\" COLOR=\"#555555\">"
            f"{html.escape(lead + _shorten(detail))}</FONT>>")


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _tooltip(report: BuildReport, name: str, op: str, layers: list[int]) -> str:
    if not layers:
        return f"{name} ({op}): in no engine layer (folded or removed by TensorRT)"
    engine = report.engine or []
    return f"{name} ({op}) -> " + "; ".join(f"engine layer {i}: {engine[i].name} ({engine[i].type})" for i in layers)


def _summary(report: BuildReport) -> str:
    engine = "?" if report.engine_layers is None else str(report.engine_layers)
    compute = "" if report.compute_layers is None else f" ({report.compute_layers} computing)"
    fused = sum(len(layer.onnx_nodes) > 1 for layer in report.engine or [])
    return (f'<p>{html.escape(report.backend)} {html.escape(report.backend_version)}: {len(report.onnx_ops)} ONNX '
            f"nodes &rarr; {len(report.network)} network layers &rarr; <b>{engine}</b> engine layers{compute}; "
            f"fused layers: {fused}; ONNX nodes in no engine layer: "
            f"{len(report.unmapped_nodes()) if report.engine is not None else '?'}. "
            f"Engine layers from the {html.escape(report.layer_source or '?')}.</p>")


def _legend(compare: bool = False) -> str:
    items = [(f"background:{PALETTE[0]}", "fused: one colour per engine layer"),
             ("background:#fff;border-style:dashed", "unfused: alone in its engine layer"),
             (f"background:{UNMAPPED_FILL};border-style:dotted", "in no engine layer (folded or removed)")]
    if compare:
        items.append((f"border:3px solid {ONLY_HERE}", "fused only on this side"))
    spans = "".join(f'<span><span class="swatch" style="{style}"></span> {text}</span>' for style, text in items)
    return f'<p class="legend">{spans}</p>'


def _layer_table(report: BuildReport) -> str:
    if report.engine is None:
        return '<p class="note">The builder gave no engine layers; only the ONNX graph is shown.</p>'
    colours = layer_colours(report)
    rows = []
    for i, layer in enumerate(report.engine):
        swatch = f'<span class="swatch" style="background:{colours[i]}"></span>' if i in colours else ""
        cells = [str(i), swatch, layer.name, layer.type, layer.kind, ", ".join(layer.precisions),
                 " + ".join(report.ops_of(layer)), ", ".join(layer.onnx_nodes)]
        rows.append("<tr>" + "".join(f"<td>{c if k == 1 else html.escape(c)}</td>" for k, c in enumerate(cells))
                    + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("#", "", "engine layer", "type", "kind", "precision", "ONNX ops",
                                              "ONNX nodes"))
    unmapped = report.unmapped_nodes()
    tail = (f'<p class="note">In no engine layer: {html.escape(", ".join(unmapped))}</p>' if unmapped else "")
    return f'<table class="layers"><tr>{head}</tr>{"".join(rows)}</table>{tail}'


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
