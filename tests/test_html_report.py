"""--report-html: one self-contained page, the ONNX graph laid out by Graphviz with each node
coloured by the engine layer it ended in, loaded in a real headless browser (chromium): no
console message, and a screenshot that shows the graph. Real engines from tensorrt_rtx."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import onnx
import pytest

from fusekit import html_report
from fusekit.builder.report import Comparison
from fusekit.cli import main
from tests import browser
from tests.test_builder import built
from tests.zoo_models import zoo_model

pytestmark = pytest.mark.trt
SVG = "{http://www.w3.org/2000/svg}"
# B also outputs the Conv's result, so TensorRT cannot fuse the Conv with the Relu there.
PAIR = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,16,16] x) => (float[1,8,16,16] y{extra}) {{
    w = Constant<value = float[8,3,1,1] {{1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24}}>()
    c = Conv<pads = [0,0,0,0]>(x, w)
    y = Relu(c)
}}"""


def svg_nodes(page: str) -> dict[str, dict]:
    """SVG node id -> its classes, fill and stroke style, from every inline SVG of ``page``."""
    nodes = {}
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.DOTALL):
        for g in ET.fromstring(svg).iter(f"{SVG}g"):
            classes = g.get("class", "").split()
            if "node" not in classes:
                continue
            shape = next(e for e in g.iter() if e.tag in (f"{SVG}path", f"{SVG}polygon", f"{SVG}ellipse"))
            nodes[g.get("id")] = {"classes": classes, "fill": shape.get("fill"), "stroke": shape.get("stroke"),
                                  "dashed": shape.get("stroke-dasharray") is not None,
                                  "text": " ".join(t.text or "" for t in g.iter(f"{SVG}text"))}
    return nodes


def by_onnx_name(report, nodes: dict) -> dict[str, dict]:
    return {name: nodes[f"onnx-n{i}"] for i, name in enumerate(report.onnx_ops)}


def assert_self_contained(page: str) -> None:
    for needle in ("<script", "<link", " src=", 'href="http', "url(", "@import"):
        assert needle not in page, needle


def test_build_page_colours_each_node_by_its_engine_layer():
    report = built("resnet-tiny", False).report
    page = html_report.build_page(report)
    assert_self_contained(page)
    nodes = by_onnx_name(report, svg_nodes(page))
    assert len(nodes) == len(report.onnx_ops)
    stem = [nodes[f"/stem/stem.{i}/{op}"] for i, op in ((0, "Conv"), (1, "BatchNormalization"), (2, "Relu"))]
    assert len({n["fill"] for n in stem}) == 1 and all("fused" in n["classes"] for n in stem)
    colours = html_report.layer_colours(report)
    for i, layer in enumerate(report.engine):
        if i in colours:
            firsts = [n for n in layer.onnx_nodes if report.layer_of()[n][0] == i]
            assert {nodes[n]["fill"] for n in firsts} <= {colours[i]}
            assert all(f"#{i} " in nodes[n]["text"] for n in firsts)  # the label names the layer
    fused_fills = [colours[i] for i in sorted(colours)]
    assert all(a != b for a, b in itertools.pairwise(fused_fills))  # neighbours never share a colour
    pool = nodes["/stem/stem.3/MaxPool"]
    assert "unfused" in pool["classes"] and pool["dashed"] and pool["fill"] == "white"
    for name in report.unmapped_nodes():
        assert "unmapped" in nodes[name]["classes"] and nodes[name]["fill"] == html_report.UNMAPPED_FILL
    assert page.count("<tr>") == len(report.engine) + 1  # the layer table, with its header
    kinds = [n["classes"] for n in svg_nodes(page).values()]
    assert sum("graph-input" in c for c in kinds) == len(report.inputs) == 1
    assert sum("graph-output" in c for c in kinds) == len(report.outputs)


def test_cli_build_page_loads_in_chromium_and_shows_the_graph(tmp_path, record_property):
    model = zoo_model("resnet-tiny")
    page = tmp_path / "report.html"
    argv = ["build", str(model), "-o", str(tmp_path / "m.engine"), "--dynamic", "batch=1:2:4", "--no-optimize"]
    assert main([*argv, "--report-html", str(page)]) == 0
    loaded = browser.load(page, tmp_path)
    assert loaded.console == []
    drawn = [n for n in svg_nodes(page.read_text()).values() if "onnx-node" in n["classes"]]
    assert loaded.dom.count('class="node onnx-node') == len(drawn) == 55
    assert "engine layer" in loaded.dom
    record_property("ink", round(browser.ink(loaded.screenshot), 3))
    assert browser.ink(loaded.screenshot) > 0.05
    colours = {f"#{r:02x}{g:02x}{b:02x}" for _, (r, g, b) in loaded.screenshot.getcolors(1 << 24)}
    assert set(html_report.PALETTE[:4]) <= colours  # the first fused layers' fills are on screen
    # a cache hit draws the same page from the stored report
    again = tmp_path / "again.html"
    assert main([*argv, "--report-html", str(again)]) == 0
    assert again.read_text() == page.read_text()


def test_cli_compare_page_has_both_panels_and_outlines_what_fused_on_one_side(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(onnx.parser.parse_model(PAIR.format(extra="")), a)
    onnx.save(onnx.parser.parse_model(PAIR.format(extra=", float[1,8,16,16] c")), b)
    page = tmp_path / "compare.html"
    assert main(["compare", str(a), str(b), "--report-html", str(page)]) == 0
    text = page.read_text()
    assert_self_contained(text)
    assert text.count("<section>") == 2 and text.count("<svg") == 2
    ids = re.findall(r' id="([^"]+)"', text)
    assert len(ids) == len(set(ids))  # two graphs, no id twice
    ra, rb = built_pair(a, b)
    only_a = Comparison(ra, rb).fused_only_in(ra, rb)
    assert only_a  # the Conv and Relu fuse in A only
    outlined = [i for i, n in svg_nodes(text).items() if "only-here" in n["classes"]]
    assert len(outlined) == len(only_a) and all(svg_nodes(text)[i]["stroke"] == html_report.ONLY_HERE for i in outlined)
    loaded = browser.load(page, tmp_path)
    assert loaded.console == [] and browser.ink(loaded.screenshot) > 0.02
    red = tuple(int(html_report.ONLY_HERE[k:k + 2], 16) for k in (1, 3, 5))
    assert any(colour == red for _, colour in loaded.screenshot.getcolors(1 << 24))


def built_pair(a: Path, b: Path):
    import fusekit.api as fk

    return fk.build(a, optimize=False).report, fk.build(b, optimize=False).report


def test_console_messages_are_caught(tmp_path):
    """The browser check sees a page's errors (so an empty list means something)."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>x</p><script>notDefined();</script></body></html>')
    assert any("notDefined" in m for m in browser.load(bad, tmp_path).console)


@pytest.mark.parametrize("problem", ["missing folder", "no dot"])
def test_report_html_problems_exit_2_before_any_build(problem, tmp_path, capsys, monkeypatch):
    model = zoo_model("resnet-tiny")
    page = tmp_path / ("missing" if problem == "missing folder" else ".") / "r.html"
    if problem == "no dot":
        monkeypatch.setattr(html_report.shutil, "which", lambda name: None)
    assert main(["build", str(model), "-o", str(tmp_path / "m.engine"), "--report-html", str(page)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("does not exist" if problem == "missing folder" else "apt-get install graphviz") in err[0]
    assert not (tmp_path / "m.engine").exists()
