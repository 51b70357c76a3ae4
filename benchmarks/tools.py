"""The optimizers under comparison, each run as its user would, in a process of its own.

    python benchmarks/tools.py TOOL IN.onnx OUT.onnx RESULT.json

The tool's package is imported first; the clock then runs around its own work, load and
save included. RESULT gets ``seconds``, ``rss_after_import`` (bytes: the interpreter and
libraries alone) and the tool's version.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Callable

from child import job_main, memory

# tool name -> (modules imported before the clock starts, the package whose version is reported)
IMPORTS: dict[str, tuple[tuple[str, ...], str]] = {
    "fusekit": (("fusekit.cli",), "fusekit"),
    "onnxslim": (("onnx", "onnxslim"), "onnxslim"),
    "onnxsim": (("onnx", "onnxsim"), "onnxsim"),
    "polygraphy": (("onnx", "onnx_graphsurgeon", "onnxruntime", "polygraphy.tools"), "polygraphy"),
    "onnxoptimizer": (("onnx", "onnxoptimizer"), "onnxoptimizer"),
    "ort-basic": (("onnxruntime",), "onnxruntime"),
}
TOOLS = tuple(IMPORTS)
# What each tool runs, for the README and the JSON.
COMMANDS = {
    "fusekit": "fusekit optimize IN -o OUT",
    "onnxslim": "onnxslim.slim(IN, OUT)",
    "onnxsim": "onnxsim.simplify(onnx.load(IN)) + onnx.save",
    "polygraphy": "polygraphy surgeon sanitize IN --fold-constants -o OUT",
    "onnxoptimizer": "onnxoptimizer.optimize(onnx.load(IN), get_fuse_and_elimination_passes()) + onnx.save",
    "ort-basic": "onnxruntime InferenceSession, ORT_ENABLE_BASIC, optimized_model_filepath=OUT",
}


class ToolError(Exception):
    """The tool reported failure (its own message is in the job's log)."""


def run_fusekit(src: str, dst: str) -> None:
    from fusekit.cli import main

    code = main(["optimize", src, "-o", dst])
    if code:
        raise ToolError(f"fusekit optimize exited with {code}")


def run_onnxslim(src: str, dst: str) -> None:
    import onnxslim

    onnxslim.slim(src, dst)


def run_onnxsim(src: str, dst: str) -> None:
    import onnx
    import onnxsim

    model, _ = onnxsim.simplify(onnx.load(src))
    onnx.save(model, dst)


def run_polygraphy(src: str, dst: str) -> None:
    from polygraphy.tools import main

    code = main(["surgeon", "sanitize", src, "--fold-constants", "-o", dst])
    if code:
        raise ToolError(f"polygraphy surgeon sanitize exited with {code}")


def run_onnxoptimizer(src: str, dst: str) -> None:
    import onnx
    import onnxoptimizer

    model = onnxoptimizer.optimize(onnx.load(src), onnxoptimizer.get_fuse_and_elimination_passes())
    onnx.save(model, dst)


def run_ort_basic(src: str, dst: str) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = dst
    if os.path.getsize(src) > 1_800_000_000:  # protobuf's 2 GB limit: weights go beside the model
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         os.path.basename(dst) + ".data")
    ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])


RUNNERS: dict[str, Callable[[str, str], None]] = {
    "fusekit": run_fusekit, "onnxslim": run_onnxslim, "onnxsim": run_onnxsim,
    "polygraphy": run_polygraphy, "onnxoptimizer": run_onnxoptimizer, "ort-basic": run_ort_basic,
}


def version(tool: str) -> str:
    module = importlib.import_module(IMPORTS[tool][1])
    return str(getattr(module, "__version__", "?"))


def work(args: list[str]) -> dict:
    tool, src, dst = args
    for name in IMPORTS[tool][0]:
        importlib.import_module(name)
    rss_after_import = memory()[1]
    start = time.perf_counter()
    RUNNERS[tool](src, dst)
    seconds = time.perf_counter() - start
    if not os.path.isfile(dst):
        raise ToolError(f"{tool} finished without writing {dst}")
    return {"seconds": seconds, "rss_after_import": rss_after_import, "version": version(tool)}


if __name__ == "__main__":
    job_main(work)
