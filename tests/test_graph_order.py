"""Dead-node removal and topological order in linear time (fusekit.graph_order)."""

from __future__ import annotations

import onnx_graphsurgeon as gs
import pytest

from fusekit.graph_order import dead_nodes, prune_and_sort, sort_topologically
from fusekit.model_io import load_model
from tests.helpers import parse

CHAIN = """
g (float[2] x) => (float[2] y) {
  a = Relu(x)
  b = Neg(a)
  unused = Sigmoid(a)
  y = Abs(b)
}"""


def graph_of(text: str) -> gs.Graph:
    return load_model(parse(text)).graph


def names(graph: gs.Graph) -> list[str]:
    return [n.outputs[0].name for n in graph.nodes]


def test_dead_nodes_are_removed_and_disconnected():
    graph = graph_of(CHAIN)
    sigmoid = next(n for n in graph.nodes if n.op == "Sigmoid")
    relu_out = sigmoid.inputs[0]
    assert dead_nodes(graph) == [sigmoid]
    assert prune_and_sort(graph) == [sigmoid]
    assert names(graph) == ["a", "b", "y"]
    assert not sigmoid.inputs and not sigmoid.outputs
    assert [c.op for c in relu_out.outputs] == ["Neg"]  # the consumer list no longer names it


def test_order_is_kept_where_dependencies_allow():
    graph = graph_of(CHAIN)
    graph.nodes.reverse()  # y, unused, b, a
    sort_topologically(graph)
    assert names(graph) == ["a", "b", "y", "unused"]
    independent = graph_of("""
        g (float[2] x) => (float[2] y, float[2] z) { z = Neg(x)  y = Relu(x) }""")
    sort_topologically(independent)
    assert names(independent) == ["z", "y"]  # nothing forces a move: nothing moves


def test_a_cycle_is_an_error_naming_a_node():
    graph = graph_of(CHAIN)
    relu = next(n for n in graph.nodes if n.op == "Relu")
    relu.inputs[0] = next(n for n in graph.nodes if n.op == "Abs").outputs[0]
    with pytest.raises(ValueError, match="cycle through node"):
        sort_topologically(graph)


def test_a_graph_with_subgraphs_keeps_outer_reads_alive():
    graph = graph_of("""
        g (bool c, float[2] x) => (float[2] y) {
          a = Relu(x)
          b = Neg(x)
          y = If (c) <then_branch = t () => (float[2] o) { o = Identity(a) },
                      else_branch = e () => (float[2] o) { o = Identity(x) }>
        }""")
    removed = prune_and_sort(graph)
    assert [n.op for n in removed] == ["Neg"]
    assert [n.op for n in graph.nodes] == ["Relu", "If"]  # Relu is read only inside the branch
