"""TensorRT network and engine layer counts of one model (parse + build), or which backend.

    python benchmarks/trt_layers.py probe RESULT.json
    python benchmarks/trt_layers.py build MODEL.onnx MAX_BATCH RESULT.json

The build uses ``ProfilingVerbosity.DETAILED`` and a VERBOSE logger; the builder then logs
"After vertical fusions: N layers" and a "Layers:" record with one line per engine layer.
Dynamic axes get one optimization profile: the first axis from 1 to MAX_BATCH, any other
from 1 to ``MAX_LENGTH`` (optimum ``accuracy.LENGTH``). Kept small and local on purpose:
the benchmark must not depend on fusekit's own builder, which it helps to judge.
"""

from __future__ import annotations

import importlib
import re
import time

from accuracy import LENGTH
from child import job_main

BACKENDS = ("tensorrt", "tensorrt_rtx")
MAX_LENGTH = 128
NON_COMPUTE_TYPES = {"shape_call", "signal", "wait"}  # stream sync and the shape program


def load_backend():
    problems = []
    for name in BACKENDS:
        try:
            return name, importlib.import_module(name)
        except Exception as exc:  # ImportError, or a broken install (missing CUDA library)
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    raise ImportError("no TensorRT backend imports (" + "; ".join(problems) + ")")


def probe() -> dict:
    name, trt = load_backend()
    return {"backend": name, "version": trt.__version__}


def build(path: str, max_batch: str) -> dict:
    name, trt = load_backend()
    messages: list[str] = []

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            messages.append(msg)

    logger = Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    if not parser.parse_from_file(path):
        errors = [_describe(parser.get_error(i)) for i in range(parser.num_errors)]
        return {"status": "failed", "error": "parse failed: " + "; ".join(dict.fromkeys(errors))[:500]}
    parse_seconds = time.perf_counter() - start
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    _add_profile(builder, network, config, int(max_batch))
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - start
    if serialized is None:
        errors = [m for m in messages if "Error" in m or "error" in m][-3:]
        return {"status": "failed", "error": "build failed: " + " | ".join(errors)[:500]}
    engine_types = _engine_layer_types(messages)
    return {
        "backend": f"{name} {trt.__version__}",
        "network_layers": network.num_layers,
        "after_vertical_fusions": _vertical_fusions(messages),
        "engine_layers": None if engine_types is None else len(engine_types),
        "engine_compute_layers": None if engine_types is None
        else sum(t not in NON_COMPUTE_TYPES for t in engine_types),
        "parse_seconds": parse_seconds,
        "build_seconds": build_seconds,
    }


def _describe(error) -> str:
    node = getattr(error, "node_name", lambda: "")() or f"node {error.node()}"
    return f"{node}: {error.desc()}"


def _add_profile(builder, network, config, max_batch: int) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if not any(-1 in tuple(t.shape) for t in inputs):
        return
    profile = builder.create_optimization_profile()
    for tensor in inputs:
        dims = tuple(tensor.shape)
        low = [1 if d == -1 else d for d in dims]
        opt = [d if d != -1 else 1 if axis == 0 else LENGTH for axis, d in enumerate(dims)]
        high = [d if d != -1 else max_batch if axis == 0 else MAX_LENGTH for axis, d in enumerate(dims)]
        profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)


def _vertical_fusions(messages: list[str]) -> int | None:
    for message in reversed(messages):
        match = re.match(r"After vertical fusions: (\d+) layers", message)
        if match:
            return int(match.group(1))
    return None


def _engine_layer_types(messages: list[str]) -> list[str] | None:
    """LayerType of each line of the last "Layers:" record (one line per engine layer)."""
    record = next((m for m in reversed(messages) if m.startswith("Layers:")), None)
    if record is None:
        return None
    body = record.split("\n\n", 1)[0]  # "I/O Tensors:" and more follow a blank line
    return [m.group(1) for line in body.splitlines()[1:]
            if (m := re.match(r"Name: .*?, LayerType: (\w+)", line))]


def work(args: list[str]) -> dict:
    command, *rest = args
    if command == "probe":
        return probe()
    if command == "build":
        return build(*rest)
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    job_main(work)
