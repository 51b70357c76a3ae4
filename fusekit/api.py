"""The Python API: ``fusekit.optimize(model)``, in the manner of onnxsim/onnxslim."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs

from fusekit import registry
from fusekit.errors import InputError, PassError, VerificationError
from fusekit.manager import PassManager
from fusekit.model_io import LoadedModel, load_model, to_model_proto
from fusekit.pass_infra import PassContext
from fusekit.report import ModelSummary, OptimizeReport
from fusekit.shapes import Dim, annotate_shapes, apply_input_shapes
from fusekit.validate import check_graph
from fusekit.verify import Tolerance, compare

log = logging.getLogger(__name__)

ModelSource = str | os.PathLike | onnx.ModelProto


@dataclass
class Optimized:
    """The result of a run: the optimized graph (exportable) and the report."""

    loaded: LoadedModel
    report: OptimizeReport

    def to_proto(self) -> onnx.ModelProto:
        return to_model_proto(self.loaded.graph, self.loaded.shell)


def optimize(model: ModelSource, *, passes: Iterable[str] | None = None, skip: Iterable[str] = (),
             input_shapes: Mapping[str, Sequence[Dim]] | None = None, verify: bool = False,
             tolerance: Tolerance = Tolerance(), max_iterations: int = 10, debug: bool = False,
             options: Mapping[str, Any] | None = None, return_report: bool = False,
             ) -> onnx.ModelProto | tuple[onnx.ModelProto, OptimizeReport]:
    """Optimize an ONNX model (a path or a ``ModelProto``, never modified) for TensorRT.

    Args:
        passes: pass names to run instead of the default pipeline.
        skip: pass names to leave out.
        input_shapes: override input shapes, e.g. ``{"images": [1, 3, 640, 640]}``.
        verify: run original and result through onnxruntime and raise
            :class:`~fusekit.errors.VerificationError` if outputs differ beyond ``tolerance``.
        debug: check the graph after every pass and name the pass that broke it.
        options: pass options (e.g. ``{"fold_max_bytes": 1 << 20}``).
        return_report: also return the :class:`~fusekit.report.OptimizeReport`.
    """
    result = run(model, passes=passes, skip=skip, input_shapes=input_shapes, verify=verify,
                 tolerance=tolerance, max_iterations=max_iterations, debug=debug, options=options)
    proto = result.to_proto()
    return (proto, result.report) if return_report else proto


def run(model: ModelSource, *, passes: Iterable[str] | None = None, skip: Iterable[str] = (),
        input_shapes: Mapping[str, Sequence[Dim]] | None = None, verify: bool = False,
        tolerance: Tolerance = Tolerance(), max_iterations: int = 10, debug: bool = False,
        options: Mapping[str, Any] | None = None, trace: str | None = None,
        progress: Callable[[str], None] | None = None) -> Optimized:
    """Load, run the pass pipeline to a fixed point, validate and optionally verify."""
    start = time.perf_counter()
    source = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
    name = "<ModelProto>" if isinstance(model, onnx.ModelProto) else str(source)
    found = registry.discover()
    selected = found.select(passes, skip)
    loaded = load_model(model)
    graph, shell = loaded.graph, loaded.shell
    check_graph(graph, shell, f"{name}: invalid model")
    if input_shapes:
        apply_input_shapes(graph, input_shapes)
    report = OptimizeReport(source=name, before=ModelSummary.of(graph), warnings=list(found.problems))
    ctx = PassContext(options=dict(options or {}))
    instances = [info.cls() for info in selected]
    if trace is not None:
        annotate_shapes(graph, shell)  # so the findings see the shapes the passes will see
        report.trace_findings = _inspect_node(instances, graph, ctx, trace)

    def check_after(g: gs.Graph, pass_name: str) -> None:
        check_graph(g, shell, f"pass {pass_name} left an invalid graph", error=PassError)

    manager = PassManager(instances, packages={i.name: i.package for i in selected},
                          max_iterations=max_iterations, check=check_after if debug else None,
                          progress=progress)
    pipeline = manager.run(graph, ctx)
    check_graph(graph, shell, "the optimized model is invalid (rerun with --debug to find the pass)",
                error=PassError)
    report.after = ModelSummary.of(graph)
    report.passes, report.iterations, report.converged = pipeline.stats, pipeline.iterations, pipeline.converged
    report.events = pipeline.events
    report.outputs = [t.name for t in graph.outputs]
    result = Optimized(loaded, report)
    if verify:
        report.verify = compare(loaded.path or source, result.to_proto(), tolerance)
        if not report.verify.ok:
            failures = report.verify.failures() or list(report.verify.skipped.values())
            raise VerificationError(f"{name}: optimized model does not match the original: "
                                    + "; ".join(failures[:3]))
    report.seconds = time.perf_counter() - start
    return result


def _inspect_node(instances, graph: gs.Graph, ctx: PassContext, node_name: str):
    if not any(n.name == node_name for n in graph.nodes):
        raise InputError(f"--trace {node_name}: no node of that name in the model")
    return [f for p in instances for f in p.inspect(graph, ctx) if f.node == node_name]
