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

from typing import Iterable, Iterator

import onnx_graphsurgeon as gs

from fusekit import registry
from fusekit.graph_edit import fresh_name, onnx_type, remove, replace_uses
from fusekit.pass_infra import Decline, Finding, Match, Option, Pass, PassContext, Stage
from fusekit.plugin_infra import PLUGIN_DOMAIN, PluginMatch, PluginSpec

ALL = "auto"


def parse_choice(value: str | Iterable[str] | None) -> str:
    """``"auto"``, ``"none"`` (or None), ``"NAME,..."`` or spec names -> that text, names checked."""
    names = [] if value is None else value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"expected auto, none or spec names, got {value!r}")
    names = [n.strip() for n in names if n.strip()]
    if names in ([ALL], ["none"]):
        return names[0]
    if not names:
        return "none"
    specs, _ = registry.discover_plugins()
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown plugin spec {', '.join(unknown)}; known specs: "
                         f"{', '.join(sorted(specs)) or 'none'} (or auto, none)")
    return ",".join(names)


PLUGINS = Option("plugins", str, "none", "Swap patterns TensorRT cannot parse for TensorRT plugins: auto (every "
                 "spec that matches), NAME,... (those specs) or none. The result no longer runs in onnxruntime.",
                 parse=parse_choice, metavar="SPECS", offer=ALL)


def selected_specs(choice: str) -> list[PluginSpec]:
    """The spec instances ``choice`` (a :data:`PLUGINS` value) selects."""
    found, _ = registry.discover_plugins()
    names = [] if choice == "none" else sorted(found) if choice == ALL else choice.split(",")
    return [found[n].obj() for n in names if n in found]


class SubstitutePluginsPass(Pass):
    """Swap patterns TensorRT cannot parse for TensorRT plugins (opt-in: --plugins)."""

    name = "substitute-plugins"
    stage = Stage.PLUGINS
    priority = 100
    enabled_by_default = False
    options = (PLUGINS,)

    def inspect(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Finding]:
        specs = selected_specs(ctx.get(PLUGINS) if PLUGINS.name in ctx.options else ALL)
        for node in list(graph.nodes):
            for spec in specs:
                if node.outputs and spec.roots(node):
                    verdict = spec.match(graph, node)
                    yield self.finding(node, Match(verdict.message) if isinstance(verdict, PluginMatch)
                                       else Decline(f"{spec.name}: {verdict.reason}"))

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        """Each candidate is matched against the graph as it is at that moment (earlier
        substitutions of this run included), so no match is ever applied stale."""
        specs = selected_specs(ctx.get(PLUGINS))
        done = 0
        for node in list(graph.nodes):
            for spec in specs:
                if not node.outputs or not spec.roots(node):
                    continue  # removed or replaced by an earlier substitution
                verdict = spec.match(graph, node)
                if isinstance(verdict, PluginMatch):
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
