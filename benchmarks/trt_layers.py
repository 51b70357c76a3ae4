"""TensorRT network and engine layer counts of one model (parse + build), or which backend.

    python benchmarks/trt_layers.py probe RESULT.json
    python benchmarks/trt_layers.py build MODEL.onnx MAX_BATCH RESULT.json

The build is ``fusekit.api.build(MODEL, optimize=False)``: the model is parsed and built
as it is (whichever tool wrote it), with profiling verbosity DETAILED and a VERBOSE log,
from which fusekit's builder reads "After vertical fusions: N layers" and the "Layers:"
record (one line per engine layer); compute layers are the engine layers less the
stream-sync ``signal``/``wait`` ones and the shape program (the builder's own count). Every dynamic axis of an input gets a range: the
first from 1 to MAX_BATCH (optimum 1), any other from 1 to ``MAX_LENGTH`` (optimum
``accuracy.LENGTH``), given per input and axis, so renamed or unnamed dims get one too.
"""

from __future__ import annotations

import onnx

from accuracy import LENGTH, input_specs
from child import job_main

MAX_LENGTH = 128


def probe() -> dict:
    from fusekit.builder import backend

    found = backend.load()  # BackendMissingError says what failed to import
    return {"backend": found.name, "version": found.version}


def dynamic_ranges(path: str, max_batch: int) -> list[str]:
    """``INPUT:AXIS=MIN:OPT:MAX`` for every dynamic axis of the model's inputs."""
    model = onnx.load(path, load_external_data=False)
    ranges = []
    for name, _, dims in input_specs(model):
        for axis, dim in enumerate(dims):
            if not isinstance(dim, int) or dim <= 0:
                size = f"1:1:{max_batch}" if axis == 0 else f"1:{LENGTH}:{MAX_LENGTH}"
                ranges.append(f"{name}:{axis}={size}")
    return ranges


def build(path: str, max_batch: str) -> dict:
    import fusekit.api as fk

    built = fk.build(path, optimize=False, dynamic=dynamic_ranges(path, int(max_batch)))
    report = built.report
    return {
        "backend": f"{report.backend} {report.backend_version}",
        "network_layers": len(report.network),
        "after_vertical_fusions": report.vertical_fusions,
        "engine_layers": report.engine_layers,
        "compute_layers": report.compute_layers,  # engine layers less stream sync and the shape program
        "layer_source": report.layer_source,
        "parse_seconds": report.seconds.get("parse"),
        "build_seconds": report.seconds.get("build"),
    }


def work(args: list[str]) -> dict:
    command, *rest = args
    if command == "probe":
        return probe()
    if command == "build":
        return build(*rest)
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    job_main(work)
