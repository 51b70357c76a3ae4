"""The Python API: ``fusekit.optimize(model)``, in the manner of onnxsim/onnxslim."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs

from fusekit import profiles, registry
from fusekit.builder import backend as backends
from fusekit.builder import engine as engines
from fusekit.builder import inspection, reuse, support
from fusekit.builder.facts import ModelFacts
from fusekit.builder.options import BuildOptions
from fusekit.builder.options import check as check_options
from fusekit.builder.report import Comparison
from fusekit.errors import InputError, PassError, VerificationError
from fusekit.manager import PassManager
from fusekit.model_io import (LoadedModel, export_weightless, load_model, read_model_file, save_graph,
                               save_model, to_model_proto)
from fusekit.model_io.repair import check_input, check_output
from fusekit.pass_infra import Stage
from fusekit.report import ModelSummary, OptimizeReport
from fusekit.shapes import (Dim, apply_input_shapes,
                            tensorrt_shape_problems)
from fusekit.validate import check_graph, first_line
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

    def save(self, path: str | os.PathLike, *, external_data: bool | None = None) -> list[Path]:
        """Write the optimized model (weights streamed, see :func:`fusekit.model_io.save_graph`);
        return the files written."""
        return save_graph(self.loaded.graph, self.loaded.shell, path, external_data=external_data)


def optimize(model: ModelSource, *, passes: Iterable[str] | None = None, skip: Iterable[str] = (),
             input_shapes: Mapping[str, Sequence[Dim]] | None = None, verify: bool = False,
             tolerance: Tolerance = Tolerance(), max_iterations: int = 10, debug: bool = False,
             options: Mapping[str, Any] | None = None, return_report: bool = False,
             dims: Mapping[str, int] | None = None, dynamic: Iterable[str] = (),
             **pass_options: Any,
             ) -> onnx.ModelProto | tuple[onnx.ModelProto, OptimizeReport]:
    """Optimize an ONNX model (a path or a ``ModelProto``, never modified) for TensorRT.

    Args:
        passes: pass names to run instead of the default pipeline.
        skip: pass names to leave out.
        input_shapes: override input shapes, e.g. ``{"images": [1, 3, 640, 640]}`` (a dim
            may also be a name, or None for dynamic); every other dim stays as declared.
        dims: fix named dims everywhere, e.g. ``{"batch": 1, "seq": 128}``.
        dynamic: optimization-profile ranges to record in the model's ``fusekit.profiles``
            metadata for ``fusekit build``, e.g. ``["batch=1:8:32", "images:2=224:640:1280"]``
            (see :mod:`fusekit.profiles`); they replace stored ranges of the same dims.
        verify: run original and result through onnxruntime and raise
            :class:`~fusekit.errors.VerificationError` if outputs differ beyond ``tolerance``.
        debug: check the graph after every pass and name the pass that broke it.
        options: pass options (e.g. ``{"fold_max_bytes": 1 << 20}``), as declared by the
            passes (``fusekit passes --json`` lists them); also taken as keywords
            (``fold_max_bytes=1 << 20``). An option no pass in the pipeline takes is an
            InputError; giving an opt-in pass's option turns that pass on.
        return_report: also return the :class:`~fusekit.report.OptimizeReport`.

    ``plugins="auto"`` (or spec names) is substitute-plugins' option: TensorRT plugin
    substitutions, opt-in; the result then no longer runs in onnxruntime. ``precision="fp16"``
    (or ``"bf16"``) is convert-precision's: convert the model (opt-in); ``precision_io``
    converts its inputs and outputs too, ``keep_float`` keeps these node names / op types in
    FP32, ``data`` (.npy/.npz of sample inputs) keeps nodes whose values leave the type's
    range. The report's ``precision`` holds what was kept and why, and each output's largest
    error against the original on ``data`` (or generated inputs).
    """
    result = run(model, passes=passes, skip=skip, input_shapes=input_shapes, verify=verify,
                 tolerance=tolerance, max_iterations=max_iterations, debug=debug, options=options,
                 dims=dims, dynamic=dynamic, **pass_options)
    proto = result.to_proto()
    return (proto, result.report) if return_report else proto


def run(model: ModelSource, *, passes: Iterable[str] | None = None, skip: Iterable[str] = (),
        input_shapes: Mapping[str, Sequence[Dim]] | None = None, verify: bool = False,
        tolerance: Tolerance = Tolerance(), max_iterations: int = 10, debug: bool = False,
        options: Mapping[str, Any] | None = None, trace: str | None = None,
        progress: Callable[[str], None] | None = None, dims: Mapping[str, int] | None = None,
        dynamic: Iterable[str] = (), strict: bool = False, **pass_options: Any) -> Optimized:
    """Load, run the pass pipeline to a fixed point, validate and optionally verify.

    ``strict``: refuse what loading would repair or accept (see ``fusekit.model_io.repair``).
    Pass options come in ``options`` or as keywords, as :func:`optimize` takes them."""
    start = time.perf_counter()
    source = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
    name = "<ModelProto>" if isinstance(model, onnx.ModelProto) else str(source)
    found = registry.discover()
    given = {**(options or {}), **pass_options}
    selected = found.select(passes, skip, given)
    instances = [info.cls() for info in selected]
    manager = PassManager(instances, packages={i.name: i.package for i in selected},
                          max_iterations=max_iterations, progress=progress)
    ctx = manager.context(found.pipeline_options(selected, given))  # InputError for a bad option, before loading
    ranges = profiles.parse_dynamic_args(dynamic)
    loaded = load_model(model)
    graph, shell = loaded.graph, loaded.shell
    acceptance = check_input(graph, shell, name, loaded.repairs, strict)
    if input_shapes or dims:
        apply_input_shapes(graph, input_shapes, dims)
    report = OptimizeReport(source=name, before=ModelSummary.of(graph), warnings=list(found.problems))
    ctx.relieve_memory = loaded.spill.relieve
    if trace is not None and not any(n.name == trace for n in graph.nodes):
        raise InputError(f"--trace {trace}: no node of that name in the model")

    def check_after(g: gs.Graph, pass_name: str) -> None:
        check_graph(g, shell, f"pass {pass_name} left an invalid graph", error=PassError)

    manager.check, manager.trace = (check_after if debug else None), trace
    pipeline = manager.run(graph, ctx)
    check_output(graph, shell, acceptance)
    report.after = ModelSummary.of(graph)
    report.passes, report.iterations, report.converged = pipeline.stats, pipeline.iterations, pipeline.converged
    report.events = pipeline.events
    if trace is not None:
        report.trace_steps = pipeline.trace
        report.trace_kept = any(n.name == trace for n in graph.nodes)
    report.outputs = [t.name for t in graph.outputs]
    report.warnings.extend(tensorrt_shape_problems(graph))
    report.warnings.extend(_record_profiles(loaded, ranges, dims or {}, name, bool(input_shapes or dims)))
    result = Optimized(loaded, report)
    if PRECISION_RESULT in ctx.results:
        report.precision = _precision_report(ctx.results[PRECISION_RESULT], loaded.path or source, result,
                                             ctx.options.get("data"))
    if verify:
        with tempfile.TemporaryDirectory(prefix="fusekit-verify-") as folder:  # streamed, not built in memory
            report.verify = compare(loaded.path or source, result.save(Path(folder) / "optimized.onnx")[0], tolerance)
        if not report.verify.ok:
            failures = report.verify.failures() or list(report.verify.skipped.values())
            raise VerificationError(f"{name}: optimized model does not match the original: "
                                    + "; ".join(failures[:3]))
    report.seconds = time.perf_counter() - start
    return result


PRECISION_PASS = "convert-precision"
PRECISION_RESULT = "precision"


def _precision_report(summary: dict, original, result: Optimized, data) -> dict:
    """The pass's summary plus each output's largest error against the original model, on
    ``data`` (or generated inputs, every dynamic dim at 1 and 2), under onnxruntime."""
    from fusekit.precision_data import input_ranks, load_samples, output_errors

    report = {**summary, "error_inputs": "data" if data else "generated (dynamic dims 1 and 2)"}
    with tempfile.TemporaryDirectory(prefix="fusekit-precision-") as folder:
        converted = result.save(Path(folder) / "converted.onnx", external_data=True)[0]  # mapped by onnxruntime
        samples = load_samples(data, input_ranks(original)) if data else None
        try:
            report["outputs"] = output_errors(original, converted, samples)
        except Exception as exc:  # e.g. bf16 kernels onnxruntime lacks: the model is still written
            report["outputs"] = {}
            report["error_skipped"] = f"onnxruntime cannot run the comparison: {first_line(exc)}"
    return report


def _record_profiles(loaded: LoadedModel, given: list, dims: Mapping[str, int], name: str,
                     overridden: bool) -> list[str]:
    """Store the ranges ``given`` (with the model's own) in its ``fusekit.profiles``
    metadata; a given range that applies to no dynamic dim is an InputError, a stored one
    is dropped (only when ranges are given or input shapes were ``overridden``; otherwise
    the metadata is left untouched). Returns warnings (stored ranges dropped, dims still
    without a range)."""
    for spec in given:
        if spec.axis is None and spec.key in dims:
            raise InputError(f"--dynamic {spec.target}={spec.range}: the dim {spec.key!r} is fixed at "
                             f"{dims[spec.key]} by --dim {spec.key}={dims[spec.key]}")
    if not given and not overridden:
        return []  # the model's own metadata stays exactly as it is
    try:
        stored = profiles.read_profiles(loaded.shell, name)
    except InputError as exc:
        if not given:
            return [f"{exc}; left as it is"]
        stored, note = [], [f"{exc}; replaced by the --dynamic ranges"]
    else:
        note = []
    if not given and not stored:
        return []
    inputs = [(t.name, None if t.shape is None else
               [d if isinstance(d, str) else (int(d) if d is not None and d >= 0 else None) for d in t.shape])
              for t in loaded.graph.inputs]
    merged = profiles.merge(stored, given)
    resolution = profiles.resolve(inputs, merged)
    profiles.reject_unused_given(resolution, given)
    dropped = {(spec.key, spec.axis) for spec, _ in resolution.unused}
    profiles.write_profiles(loaded.shell, [s for s in merged if (s.key, s.axis) not in dropped])
    warnings = note + [f"stored profile range {spec.target}={spec.range} dropped: {why}"
                       for spec, why in resolution.unused]
    if given and resolution.missing:
        warnings.append("dynamic dims without a profile range (fusekit build will ask for them): "
                        + "; ".join(m.describe() for m in resolution.missing))
    return warnings


# -- TensorRT engines ----------------------------------------------------------------

def build(model: ModelSource, output: str | os.PathLike | None = None, *, optimize: bool = True,
          dynamic: Iterable[str] = (), workspace_mib: int | None = None, opt_level: int | None = None,
          fp16: bool = False, bf16: bool = False, timing_cache: str | os.PathLike | None = None,
          compute_capabilities: Iterable[str] = (), passes: Iterable[str] | None = None,
          skip: Iterable[str] = (), progress: Callable[[Any], None] | None = None,
          status: Callable[[str], None] | None = None, force: bool = False,
          reuse_at: str | os.PathLike | None = None, strict: bool = False, **pass_options: Any):
    """Build a TensorRT engine from ``model`` (a path or a ``ModelProto``, never modified).

    Runs the optimize pipeline first unless ``optimize=False``, resolves the optimization
    profile (ranges stored in the model's ``fusekit.profiles`` metadata, overridden by
    ``dynamic`` strings such as ``"batch=1:8:32"``; see :mod:`fusekit.profiles`), parses
    and builds with the installed TensorRT, and, given ``output``, writes the engine and
    its JSON sidecar atomically. Pass options (with ``optimize``; ``plugins`` among them:
    plugin substitutions) as :func:`optimize` takes them; plugin nodes in the model get a
    generated creator when the installed TensorRT has none (``.plugins`` lists what the
    engine needs). An engine at ``reuse_at`` (default: ``output``) built from the same model,
    settings and backend is returned as it is (``.reused``; see :mod:`fusekit.builder.reuse`)
    unless ``force``. Returns a :class:`fusekit.builder.engine.EngineBuild`
    (``.engine`` bytes, ``.report`` the fused-layer report, ``.sidecar``, ``.written``).

    Raises:
        BackendMissingError: no ``tensorrt`` nor ``tensorrt_rtx`` imports.
        InputError: bad model or option, or a dynamic dim without a range.
        TensorRTError: TensorRT rejected the model (``ParseFailedError`` lists every node).
    """
    options = BuildOptions(workspace_mib=workspace_mib, opt_level=opt_level, fp16=fp16, bf16=bf16,
                           timing_cache=Path(timing_cache) if timing_cache is not None else None,
                           compute_capabilities=tuple(compute_capabilities))
    given = profiles.parse_dynamic_args(dynamic)
    source = model if isinstance(model, onnx.ModelProto) else Path(model)
    name = "<ModelProto>" if isinstance(source, onnx.ModelProto) else str(source)
    if output is not None:
        if not isinstance(source, onnx.ModelProto) and Path(output).resolve() == source.resolve():
            raise InputError(f"{output}: is the input model; choose another path for the engine")
        if not Path(output).parent.is_dir():
            raise InputError(f"{output}: output folder {Path(output).parent} does not exist")
    backend = backends.load()
    check_options(backend, options)  # say what cannot work before spending time on the model
    say = status or (lambda text: None)
    skip, passes = tuple(skip), None if passes is None else tuple(passes)  # read twice
    key, source_sha256 = reuse.build_key(source, backend, options, given, optimize=optimize, passes=passes,
                                         skip=skip, pass_options=pass_options)
    reuse_at = output if reuse_at is None else reuse_at
    found = None if force or reuse_at is None or key is None else reuse.lookup(Path(reuse_at), key)
    if found is not None:
        return found
    seconds: dict[str, float] = {}
    optimized = conversion = None
    precision = "fp16" if fp16 else "bf16" if bf16 else None  # converted in the graph: networks are strongly typed
    if optimize or precision:
        say("optimizing" if optimize else f"converting to {precision}")
        start = time.perf_counter()
        optimized = run(source, passes=passes if optimize else [PRECISION_PASS], skip=skip, progress=status,
                        strict=strict, **({**pass_options, "precision": precision} if precision else pass_options))
        seconds["optimize"] = time.perf_counter() - start
        header = export_weightless(optimized.loaded.graph, optimized.loaded.shell)
        conversion = optimized.report.precision
    elif isinstance(source, onnx.ModelProto):
        header = source
    else:
        header = read_model_file(source, map_weights=True)  # weights stay in the file
    stored = profiles.read_profiles(header, name)
    resolution = profiles.resolve(profiles.model_inputs(header), profiles.merge(stored, given))
    profiles.require_complete(resolution, name, given)
    for spec, why in resolution.unused:
        log.warning("%s: stored profile range %s=%s ignored: %s", name, spec.target, spec.range, why)
    facts = ModelFacts.of(header, name, source, optimize, source_sha256)
    del header
    with tempfile.TemporaryDirectory(prefix="fusekit-build-") as tmp:
        onnx_path = source
        if optimized is not None:
            onnx_path = Path(tmp) / "model.onnx"
            optimized.save(onnx_path)  # streamed: the optimized model is never whole in memory
            del optimized
        elif isinstance(source, onnx.ModelProto):
            onnx_path = Path(tmp) / "model.onnx"
            copy = onnx.ModelProto()
            copy.CopyFrom(source)
            save_model(copy, onnx_path)
        say("parsing")
        result = engines.build(onnx_path, facts, resolution.shapes, resolution.to_json(), options,
                               progress=progress, seconds=seconds, cache_key=key)
    if conversion is not None:
        result.report.notes.append(
            f"converted to {conversion['type']} in the graph (strongly typed build): {conversion['converted_nodes']} "
            f"nodes converted, {conversion['kept_nodes']} kept in FP32, {conversion['casts_added']} Casts added")
    if output is not None:
        say("saving")
        result.written = result.save(Path(output))
    return result


def check_trt(model: ModelSource, *, table: str | None = None, passes: Iterable[str] | None = None,
              strict: bool = False):
    """The nodes of ``model`` TensorRT cannot parse, each with the reason and the substitution
    fusekit offers, or None: what ``fusekit optimize`` (``passes``, default: the default
    pipeline, plus every plugin substitution, which is opt-in) does about it, found by running
    it on a copy and asking again: the pass that replaced the node, or that the node parses
    once the pipeline has run (e.g. reduction axes folded to a constant).

    Asks the installed parser (``tensorrt`` or ``tensorrt_rtx``); without one, or when
    ``table`` names a shipped support table (e.g. ``"tensorrt-10.15"``), the table decides.
    Returns a list of :class:`fusekit.builder.support.UnsupportedNode` (empty: the model
    parses as is), a :class:`~fusekit.builder.support.TrtCheck` whose ``checked_by`` says
    whether the parser or a shipped table answered. Raises :class:`~fusekit.errors.InputError` for a bad model.
    """
    name = "<ModelProto>" if isinstance(model, onnx.ModelProto) else os.fspath(model)
    loaded = load_model(model)
    check_input(loaded.graph, loaded.shell, name, loaded.repairs, strict)
    with tempfile.TemporaryDirectory(prefix="fusekit-check-") as folder:
        found = _unsupported(loaded, Path(folder), table)
    if not found:
        return found
    offers = _offers(model, found, name, table, passes)
    return support.TrtCheck([replace(u, substitution=offers[u.node][1], pass_name=offers[u.node][0])
                             if u.node in offers else u for u in found], found.checked_by)


def _unsupported(loaded: LoadedModel, folder: Path, table: str | None):
    """What TensorRT rejects in ``loaded``. The parser reads it from a file in ``folder``,
    written when the parser is asked (weights streamed from where they live; the support
    table needs none); the whole model is built in memory only when a rejected node must
    be cut out to parse the rest. Every node is named, as the report names them."""
    found, checked_by = support.check(export_weightless(loaded.graph, loaded.shell), table,
                                      write=lambda: save_graph(loaded.graph, loaded.shell, folder / "model.onnx")[0],
                                      whole=lambda: to_model_proto(loaded.graph, loaded.shell))
    return support.TrtCheck(found, checked_by)


def _offers(model: ModelSource, found, name: str, table: str | None,
            passes: Iterable[str] | None) -> dict[str, tuple[str | None, str]]:
    """Node name -> (the pass, what the optimize pipeline does about that unsupported node),
    with every option that declares an ``offer`` (``--plugins auto``) given it."""
    infos = registry.discover().passes
    offered = {o.name: o for info in infos.values() for o in info.cls.options if o.offer is not None}
    try:
        result = run(model, passes=passes, options={n: o.offer for n, o in offered.items()})
        with tempfile.TemporaryDirectory(prefix="fusekit-check-") as folder:
            after = _unsupported(result.loaded, Path(folder), table)
    except PassError as exc:
        log.warning("%s: the substitutions could not be worked out: %s", name, exc)
        return {}
    still = {u.node for u in after}
    events = {}
    for event in result.report.events:
        events.setdefault(event.node, event)
    offers = {}
    for u in found:
        event = events.get(u.node)
        info = infos.get(event.pass_name) if event is not None else None
        plugin = info is not None and info.cls.stage == Stage.PLUGINS  # its result is a plugin node
        if event is not None and (u.node not in still or plugin):
            flags = [f"{o.cli_flag} {o.offer}" for o in info.cls.options if o.offer is not None] if info else []
            opt_in = "" if info is None or info.cls.enabled_by_default else f" (opt-in: {', '.join(flags)}" + (
                "; fusekit build registers a creator if TensorRT lacks one)" if plugin else ")")
            offers[u.node] = (event.pass_name, f"{event.pass_name}{opt_in}: {event.action}")
        elif u.node not in still:
            offers[u.node] = (None, "fusekit optimize: the node parses once the default passes have run")
    return offers


def compare_builds(a: ModelSource, b: ModelSource, *, optimize: bool = False, **options):
    """Build ``a`` and ``b`` (no engine written) and compare what TensorRT made of them:
    layer counts and the ONNX nodes fused in only one. Options are :func:`build`'s."""
    first = build(a, optimize=optimize, **options)
    second = build(b, optimize=optimize, **options)
    return Comparison(first.report, second.report)


def inspect_engine(engine: str | os.PathLike):
    """Read an engine's sidecar; refuse (``EngineMismatchError``) an engine built for another
    GPU architecture or TensorRT version before deserializing it; inspect it where this
    machine can load it. Returns a :class:`fusekit.builder.inspection.Inspection`."""
    return inspection.inspect_engine(Path(engine))
