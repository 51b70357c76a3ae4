"""Dead-node removal and topological order in linear time.

The pass manager tidies the graph after every pass that changed it. onnx-graphsurgeon's
``cleanup().toposort()`` does that by recomputing node depths over the whole graph each
time (a tenth of a second per call on BERT-base); here one walk back from the outputs
finds the live nodes and one depth-first walk orders them, keeping the present order
wherever the dependencies allow it. Graphs with subgraphs (If/Loop/Scan bodies read
outer tensors implicitly) or local functions are left to onnx-graphsurgeon.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs


def dead_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Nodes that no graph output depends on, found by one walk back from the outputs."""
    live: set[int] = set()
    stack = list(graph.outputs)
    seen: set[int] = set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.inputs:
            if id(node) not in live:
                live.add(id(node))
                stack.extend(node.inputs)
                stack.extend(_outer_inputs(node))
    return [n for n in graph.nodes if id(n) not in live]


def prune(graph: gs.Graph) -> list[gs.Node]:
    """Remove (and disconnect) the dead nodes; return them. Graph inputs stay, used or
    not: they are the model's interface."""
    return _prune(graph, _nested(graph))


def _prune(graph: gs.Graph, nested: bool) -> list[gs.Node]:
    dead = dead_nodes(graph)
    if nested:
        graph.cleanup(remove_unused_graph_inputs=False)
        return dead
    for tensor in graph.inputs:
        tensor.inputs.clear()
    if dead:
        gone = {id(n) for n in dead}
        for node in dead:
            node.inputs.clear()
            node.outputs.clear()
        graph.nodes = [n for n in graph.nodes if id(n) not in gone]
    return dead


def prune_and_sort(graph: gs.Graph) -> list[gs.Node]:
    """:func:`prune`, then order the rest topologically; return the removed nodes."""
    nested = _nested(graph)  # asked once: it reads every node's attributes
    dead = _prune(graph, nested)
    _sort(graph, nested)
    return dead


def sort_topologically(graph: gs.Graph) -> None:
    """Order ``graph.nodes`` so every node follows the producers of its inputs, moving a
    node only when a producer comes after it. Raises ValueError on a cycle."""
    _sort(graph, _nested(graph))


def _sort(graph: gs.Graph, nested: bool) -> None:
    if nested:
        graph.toposort()
        return
    members = {id(n) for n in graph.nodes}
    done: set[int] = set()
    open_: set[int] = set()
    order: list[gs.Node] = []
    for root in graph.nodes:
        if id(root) in done:
            continue
        stack = [(root, iter(root.inputs))]
        open_.add(id(root))
        while stack:
            node, pending = stack[-1]
            for tensor in pending:
                before = tensor.inputs[0] if tensor.inputs else None
                if before is None or id(before) in done or id(before) not in members:
                    continue
                if id(before) in open_:
                    raise ValueError(f"the graph has a cycle through node {before.name!r} ({before.op})")
                open_.add(id(before))
                stack.append((before, iter(before.inputs)))
                break
            else:
                stack.pop()
                open_.discard(id(node))
                done.add(id(node))
                order.append(node)
    graph.nodes = order


def _nested(graph: gs.Graph) -> bool:
    return bool(getattr(graph, "functions", None)) or any(
        isinstance(value, gs.Graph) for node in graph.nodes for value in node.attrs.values())


def _outer_inputs(node: gs.Node) -> list[gs.Tensor]:
    """Every tensor a node's subgraphs read (outer-scope tensors among them)."""
    found = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            for inner in value.nodes:
                found.extend(inner.inputs)
                found.extend(_outer_inputs(inner))
    return found
