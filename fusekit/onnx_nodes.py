"""Reading the nodes of an ONNX graph: default domain, every node with its subgraphs' nodes,
and the name TensorRT's parser gives a node's layer.

Each helper takes an ``onnx`` proto (``GraphProto``, ``NodeProto``) or its
onnx-graphsurgeon counterpart alike, and the module imports neither, so lint, the builder,
the CLI and the passes share it without loading more than they use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Protocol

if TYPE_CHECKING:
    import onnx
    import onnx_graphsurgeon as gs

DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


class HasDomain(Protocol):
    domain: str | None


def is_default_domain(item: HasDomain) -> bool:
    """Whether a node (or opset import, or anything with a ``domain``) is in the default ONNX
    domain, spelt ``""`` or ``"ai.onnx"`` (a missing domain counts as ``""``)."""
    return (item.domain or "") in DEFAULT_DOMAINS


def walk_nodes(graph: onnx.GraphProto | gs.Graph) -> Iterator[Any]:
    """Every node of ``graph`` and of its subgraphs (If/Loop/Scan bodies), depth first, each
    node before its subgraphs' nodes: ``NodeProto``s of a ``GraphProto``, or ``gs.Node``s of
    a ``gs.Graph``."""
    if not _is_gs_graph(graph):  # onnx.GraphProto
        for node in graph.node:
            yield node
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from walk_nodes(sub)
        return
    for node in graph.nodes:
        yield node
        for value in node.attrs.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if _is_gs_graph(sub):
                    yield from walk_nodes(sub)


def _is_gs_graph(value: object) -> bool:
    return hasattr(value, "nodes")  # gs.Graph (and gs.Function); protos, tensors and nodes have no ``nodes``


def trt_node_name(node: onnx.NodeProto) -> str:
    """The name TensorRT's parser gives a node's layer (``node_of_OUTPUT`` when unnamed;
    empty for an unnamed node without outputs)."""
    return node.name or (f"node_of_{node.output[0]}" if node.output else "")
