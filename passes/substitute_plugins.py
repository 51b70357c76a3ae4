"""Replace ONNX patterns by TensorRT plugins, as the plugin specs in ``fusekit.plugins`` say.

Opt-in (``fusekit optimize --plugins auto|NAME,...``; ``plugins=`` in the API): the result
runs in TensorRT (with the plugin library on the target) but no longer in onnxruntime.
For each node a selected spec roots, the spec's ``match`` gives the nodes to replace and
the plugin fields built from their attributes; the pass writes one node of op type
``plugin`` in the ``trt.plugins`` domain (or, for a pass-through spec, marks the node in
place) with the fields as attributes plus ``plugin_version`` / ``plugin_namespace``,
which is how TensorRT's ONNX parser finds the creator. Inputs the plugin needs in
another type get a Cast (RoiAlign's int64 batch indices -> int32).

Must not: rewrite when a spec declines (its reason is shown by --trace), or rename a
graph output (the plugin node writes the output tensor itself).
"""

from __future__ import annotations

from typing import Iterator

import onnx_graphsurgeon as gs

from fusekit import registry
from fusekit.graph_edit import fresh_name, onnx_type, remove, replace_uses
from fusekit.pass_infra import Decline, Finding, Match, Pass, PassContext, Stage
from fusekit.plugin_infra import PLUGIN_DOMAIN, PluginMatch, PluginSpec


def selected_specs(choice) -> list[PluginSpec]:
    """The spec instances ``choice`` ("auto" or a list of spec names) selects."""
    found, _ = registry.discover_plugins()
    if choice in (None, "none"):
        return []
    names = sorted(found) if choice == "auto" else list(choice)
    return [found[n].obj() for n in names if n in found]


class SubstitutePluginsPass(Pass):
    """Swap patterns TensorRT cannot parse for TensorRT plugins (opt-in: --plugins)."""

    name = "substitute-plugins"
    stage = Stage.PLUGINS
    priority = 100
    enabled_by_default = False

    def _verdicts(self, graph: gs.Graph, ctx: PassContext):
        specs = selected_specs(ctx.options.get("plugins", "auto"))
        for node in list(graph.nodes):
            for spec in specs:
                if node.outputs and spec.roots(node):
                    yield node, spec, spec.match(graph, node)

    def inspect(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Finding]:
        for node, spec, verdict in self._verdicts(graph, ctx):
            yield self.finding(node, Match(verdict.message) if isinstance(verdict, PluginMatch)
                               else Decline(f"{spec.name}: {verdict.reason}"))

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        done = 0
        for node, spec, verdict in list(self._verdicts(graph, ctx)):
            if not isinstance(verdict, PluginMatch) or not node.outputs:
                continue
            ctx.record(node, verdict.message)
            _substitute(graph, spec, verdict)
            done += 1
        return done


def _substitute(graph: gs.Graph, spec: PluginSpec, m: PluginMatch) -> None:
    marks = {"plugin_version": spec.version, "plugin_namespace": spec.namespace}
    if m.keep:
        m.nodes[0].attrs.update(marks)
        return
    inputs = list(m.inputs)
    for i, dtype in m.casts.items():
        if onnx_type(inputs[i].dtype) == onnx_type(dtype):
            continue
        cast = gs.Variable(fresh_name(graph, f"{inputs[i].name}_{dtype.name}"), dtype=dtype, shape=inputs[i].shape)
        graph.nodes.append(gs.Node("Cast", fresh_name(graph, f"{m.nodes[0].name}/Cast"),
                                   attrs={"to": onnx_type(dtype)}, inputs=[inputs[i]], outputs=[cast]))
        inputs[i] = cast
    outputs = [gs.Variable(fresh_name(graph, f"{t.name}_plugin"), dtype=t.dtype, shape=t.shape) for t in m.outputs]
    name = m.nodes[0].name or fresh_name(graph, spec.plugin)  # the plugin node takes the root's name
    graph.nodes.append(gs.Node(spec.plugin_name(m), name,
                               attrs={**m.fields, **marks}, inputs=inputs, outputs=outputs, domain=PLUGIN_DOMAIN))
    if m.build_after is not None:
        m.build_after()
    for old, new in zip(m.outputs, outputs):
        replace_uses(graph, old, new)
    for n in m.nodes:
        remove(n)
