"""Build an engine end to end: parse, configure, build, report, and save with its sidecar."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from fusekit.builder import backend as backends
from fusekit.builder import device, layers, plugins, reuse, sidecar, timing_cache
from fusekit.builder.capture import make_logger
from fusekit.builder.facts import ModelFacts
from fusekit.builder.options import BuildOptions, apply, cc_key, supported_ccs
from fusekit.builder.parse import parse
from fusekit.builder.progress import ProgressCallback, make_monitor
from fusekit.builder.report import BuildReport
from fusekit.errors import InputError, TensorRTError
from fusekit.model_io import atomic_write

log = logging.getLogger(__name__)


@dataclass
class EngineBuild:
    """A built engine (bytes), its report and its sidecar (``reused``: found already built)."""

    engine: memoryview
    report: BuildReport
    sidecar: dict
    timing_cache: timing_cache.TimingCacheUse | None = None
    written: list[Path] = field(default_factory=list)  # engine and sidecar, once saved
    plugins: list[dict] = field(default_factory=list)  # TensorRT plugins the engine needs
    reused: bool = False

    def save(self, path: Path) -> list[Path]:
        """Write the engine, its sidecar and its report (each atomically); return the paths."""
        path = Path(path)
        if not path.parent.is_dir():
            raise InputError(f"{path}: output folder {path.parent} does not exist")
        data = {**self.sidecar, "engine": {**self.sidecar["engine"], "file": path.name}}
        try:
            atomic_write(path, lambda f: f.write(self.engine))
            return [path, sidecar.write(path, data), reuse.save_report(path, self.report)]
        except OSError as exc:
            raise InputError(f"{path}: cannot write the engine: {exc.strerror or exc}") from None


def build(onnx_path: Path, facts: ModelFacts, shapes: dict, profile: list[dict], options: BuildOptions,
          progress: ProgressCallback | None = None, seconds: dict[str, float] | None = None,
          cache_key: str | None = None) -> EngineBuild:
    """Parse ``onnx_path`` with TensorRT and build an engine for the profile ``shapes``
    (``cache_key``: see :mod:`fusekit.builder.reuse`)."""
    backend = backends.load()
    trt = backend.trt
    trt_logger, captured = make_logger(trt)
    builder = trt.Builder(trt_logger)
    if builder is None:
        raise TensorRTError(f"{backend.describe()} could not create a builder: "
                            + ("; ".join(captured.errors()) or "no reason given"))
    seconds = dict(seconds or {})
    needed, plugin_notes = plugins.prepare(backend, onnx.load(str(onnx_path), load_external_data=False))
    start = time.perf_counter()
    network, parser = parse(backend, builder, trt_logger, onnx_path, facts.domains)
    seconds["parse"] = time.perf_counter() - start
    network_layers = layers.network_layers(network)
    config = builder.create_builder_config()
    apply(backend, builder, network, config, options, shapes)
    cache, cache_use = (timing_cache.attach(backend, config, options.timing_cache)
                        if options.timing_cache else (None, None))
    monitor = make_monitor(trt, progress) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds["build"] = time.perf_counter() - start
    if monitor is not None and monitor.error is not None:
        raise monitor.error
    if serialized is None:
        errors = list(dict.fromkeys(captured.errors())) or ["no reason given"]
        raise TensorRTError(f"{facts.name}: {backend.describe()} failed to build the engine: " + "; ".join(errors))
    engine = memoryview(serialized)
    if cache_use is not None:
        timing_cache.save(cache, cache_use)
    del parser  # the network's weights are baked into the engine now
    messages = captured.messages()
    engine_layers, source = _engine_layers(backend, trt_logger, engine, messages)
    report = BuildReport(
        model=facts.name, backend=backend.name, backend_version=backend.version, optimized=facts.optimized,
        onnx_ops=facts.onnx_ops, network=network_layers, engine=engine_layers, layer_source=source,
        vertical_fusions=layers.vertical_fusions(messages), profile=profile,
        seconds={k: round(v, 4) for k, v in seconds.items()}, engine_bytes=engine.nbytes,
        notes=([cache_use.note] if cache_use and cache_use.note else []) + plugin_notes,
        warnings=list(dict.fromkeys(r.message for r in captured.records if r.severity == 2)),
        onnx_edges=facts.edges, inputs=facts.inputs, outputs=facts.outputs)
    data = sidecar.make(engine_file="", engine_bytes=engine.nbytes, engine_sha256=sidecar.sha256(engine),
                        backend=backend.name, version=backend.version,
                        compute_capability=_targets(backend, options), precision=facts.precision,
                        profile=profile, source_path=facts.source_path, source_sha256=facts.source_sha256,
                        optimized=facts.optimized, build_seconds=seconds["build"], cache_key=cache_key,
                        plugins=[n.to_dict() for n in needed])
    return EngineBuild(engine, report, data, cache_use, plugins=data["plugins"])


def _engine_layers(backend, trt_logger, engine: memoryview, messages: list[str]):
    """From the engine inspector where this machine can deserialize, else from the log."""
    if device.current_compute_capability() is not None:
        try:
            found = inspect_layers(backend, trt_logger, engine)
        except Exception as exc:  # the log still has the layers
            log.info("engine inspector failed (%s); reading layers from the builder's log", exc)
            found = None
        if found is not None:
            return found, "engine-inspector"
    found = layers.from_log(messages)
    return (found, "builder-log") if found is not None else (None, None)


def inspect_layers(backend, trt_logger, engine) -> list[layers.EngineLayer] | None:
    """Deserialize ``engine`` and read its layers with the engine inspector (needs a GPU)."""
    trt = backend.trt
    runtime = trt.Runtime(trt_logger)
    loaded = runtime.deserialize_cuda_engine(engine)
    if loaded is None:
        return None
    inspector = loaded.create_engine_inspector()
    return layers.from_inspector(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def _targets(backend, options: BuildOptions) -> dict:
    """Which GPU architectures the engine runs on, as the sidecar records it."""
    if options.compute_capabilities:
        return {"targets": sorted(options.compute_capabilities, key=cc_key), "or_later": False,
                "chosen_by": "--compute-capability"}
    if backend.is_rtx:
        # tensorrt_rtx's default: Ampere and later (not Turing, which must be asked for).
        defaults = [cc for cc in supported_ccs(backend) if cc_key(cc) >= (8, 0)]
        return {"targets": defaults, "or_later": True, "chosen_by": f"{backend.name} default"}
    current = device.current_compute_capability()
    return {"targets": [current] if current else [], "or_later": False, "chosen_by": "the GPU that built it"}
