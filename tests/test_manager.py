"""The pass manager: fixed point, bounded rounds, statistics, and naming the pass that broke a graph."""

from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs
import pytest

from fusekit.errors import PassError
from fusekit.manager import PassManager
from fusekit.model_io import load_model
from fusekit.pass_infra import Pass, PassContext, Stage
from fusekit.validate import check_graph

MODEL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x) => (float[N,3] y) { a = Neg(x)  b = Neg(a)  y = Relu(b) }"""


def graph_and_shell():
    loaded = load_model(onnx.parser.parse_model(MODEL))
    return loaded.graph, loaded.shell


class FlipFlop(Pass):
    """Swaps the Neg nodes' names forever: never converges."""

    name = "flip-flop"
    stage = Stage.FUSION

    def run(self, graph, ctx):
        negs = [n for n in graph.nodes if n.op == "Neg"]
        negs[0].name, negs[1].name = negs[1].name, negs[0].name
        return 1


class AddUnknownOp(Pass):
    """Breaks the graph: inserts a default-domain op that does not exist."""

    name = "add-unknown-op"
    stage = Stage.FUSION

    def run(self, graph, ctx):
        if any(n.op == "NoSuchOp" for n in graph.nodes):
            return 0
        relu = next(n for n in graph.nodes if n.op == "Relu")
        mid = gs.Variable("mid", dtype=relu.inputs[0].dtype)
        graph.nodes.append(gs.Node("NoSuchOp", name="bad", inputs=[relu.inputs[0]], outputs=[mid]))
        relu.inputs[0] = mid
        return 1


class RemoveOneNeg(Pass):
    """Bypasses the first Neg pair once (removes two nodes)."""

    name = "remove-negs"
    stage = Stage.CLEANUP

    def run(self, graph, ctx):
        negs = [n for n in graph.nodes if n.op == "Neg"]
        if len(negs) < 2:
            return 0
        relu = next(n for n in graph.nodes if n.op == "Relu")
        relu.inputs[0] = negs[0].inputs[0]
        return 1


def test_runs_to_a_fixed_point_with_statistics():
    graph, _ = graph_and_shell()
    result = PassManager([RemoveOneNeg()]).run(graph, PassContext())
    assert result.converged and result.iterations == 2
    (stat,) = result.stats
    assert (stat.runs, stat.rewrites, stat.nodes_removed, stat.nodes_added) == (2, 1, 2, 0)
    assert [n.op for n in graph.nodes] == ["Relu"]
    assert {e.node for e in result.events} == {"Neg_0", "Neg_1"}
    assert all(e.pass_name == "remove-negs" for e in result.events)


def test_stops_after_max_iterations_and_says_so(caplog):
    graph, _ = graph_and_shell()
    with caplog.at_level(logging.WARNING):
        result = PassManager([FlipFlop()], max_iterations=3).run(graph, PassContext())
    assert not result.converged and result.iterations == 3
    assert result.stats[0].runs == 3
    assert "did not converge after 3 rounds" in caplog.text


def test_debug_mode_names_the_pass_that_broke_the_graph():
    graph, shell = graph_and_shell()

    def check(g, pass_name):
        check_graph(g, shell, f"pass {pass_name} left an invalid graph", error=PassError)

    with pytest.raises(PassError, match="pass add-unknown-op left an invalid graph: .*NoSuchOp"):
        PassManager([RemoveOneNeg(), AddUnknownOp()], check=check).run(graph, PassContext())


def test_without_debug_the_final_check_still_refuses_a_broken_result(monkeypatch):
    from fusekit import api

    class Registry:
        passes = {}
        problems: list[str] = []

        def select(self, enable, skip, options):
            from fusekit.registry import PassInfo
            return [PassInfo("add-unknown-op", AddUnknownOp, "tests", "add-unknown-op = tests")]

        def pipeline_options(self, selected, given):
            return dict(given)

    monkeypatch.setattr(api.registry, "discover", lambda: Registry())
    with pytest.raises(PassError, match="optimized model is invalid .*--debug"):
        api.optimize(onnx.parser.parse_model(MODEL))
