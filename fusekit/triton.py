"""A Triton Inference Server model repository entry for a built engine: a face over the
builder's report (``fusekit build MODEL --triton-repo DIR --model-name NAME``)::

    DIR/NAME/config.pbtxt          platform "tensorrt_plan", inputs/outputs, batching
    DIR/NAME/1/model.plan          the engine
    DIR/NAME/1/model.plan.json     its sidecar (and model.plan.report.json, its build report)

``config.pbtxt`` is protobuf text format of Triton's ``inference.ModelConfig``. When every
input's first dim is in the optimization profile and every output's first dim is dynamic,
that dim is the batch: ``max_batch_size`` is the profile's max batch, the dims listed leave
it out, and ``dynamic_batching`` prefers the profile's opt and max batch. Otherwise
``max_batch_size`` is 0 and the dims are the whole shapes (-1: dynamic).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fusekit.builder.engine import EngineBuild
from fusekit.builder.layers import TensorInfo
from fusekit.builder.report import BuildReport
from fusekit.errors import InputError
from fusekit.model_io import atomic_write

log = logging.getLogger(__name__)

PLAN = "model.plan"
CONFIG = "config.pbtxt"
VERSION = "1"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# element types as the build report names them -> Triton's DataType
DATA_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
              "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
              "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
              "string": "TYPE_STRING", "bfloat16": "TYPE_BF16"}
RTX_WARNING = ("{backend} plans do not load in Triton's tensorrt_plan backend (it runs engines of the "
               "tensorrt package): rebuild with tensorrt on the serving machine's TensorRT version")


def plan_path(repo: Path, name: str) -> Path:
    """Where the engine of model ``name`` goes in ``repo``; InputError (before any build) if
    ``repo`` is not an existing folder or ``name`` is not a plain folder name."""
    if not Path(repo).is_dir():
        raise InputError(f"--triton-repo {repo}: not an existing folder")
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise InputError(f"--model-name {name!r}: expected letters, digits, '_', '-' or '.' (it names a folder)")
    return Path(repo) / name / VERSION / PLAN


def write(result: EngineBuild, plan: Path, name: str) -> list[Path]:
    """Write ``result``'s engine (unless it was reused from ``plan``), its sidecar and report,
    and ``config.pbtxt``; return every file written. The config is made first (a tensor Triton
    cannot type fails before anything is written) and folders only now, after the build."""
    report = result.report
    if report.backend == "tensorrt_rtx":
        log.warning(RTX_WARNING.format(backend=report.backend))
    text = config_text(report, name)
    plan.parent.mkdir(parents=True, exist_ok=True)
    written = result.written if result.reused else result.save(plan)
    config = plan.parent.parent / CONFIG
    try:
        atomic_write(config, lambda f: f.write(text.encode()))
    except OSError as exc:
        raise InputError(f"{config}: cannot write the Triton config: {exc.strerror or exc}") from None
    return [*written, config]


def batching(report: BuildReport) -> tuple[int, list[int]]:
    """``(max_batch_size, preferred batch sizes)``; ``(0, [])`` when the first dim is not a batch."""
    by_input = {entry["input"]: entry for entry in report.profile}
    batched = (report.inputs and report.outputs
               and all(t.name in by_input and t.dims and t.dims[0] == -1 for t in report.inputs)
               and all(t.dims and t.dims[0] == -1 for t in report.outputs))
    if not batched:
        return 0, []
    entries = [by_input[t.name] for t in report.inputs]
    largest = min(e["max"][0] for e in entries)
    if any(e["min"][0] > 1 for e in entries):
        log.warning("the profile's smallest batch is %d: Triton may send smaller batches, which the engine refuses",
                    max(e["min"][0] for e in entries))
    return largest, sorted({min(e["opt"][0], largest) for e in entries} | {largest})


def config_text(report: BuildReport, name: str) -> str:
    """``config.pbtxt`` for the engine ``report`` describes, as model ``name``."""
    max_batch, preferred = batching(report)
    lines = [f"name: {_quote(name)}", 'platform: "tensorrt_plan"', f"max_batch_size: {max_batch}"]
    for field, tensors in (("input", report.inputs), ("output", report.outputs)):
        lines.append(f"{field} [")
        lines.append(",\n".join(_tensor(t, drop_batch=max_batch > 0) for t in tensors))
        lines.append("]")
    if max_batch > 0:
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]", "}"]
    return "\n".join(lines) + "\n"


def _tensor(t: TensorInfo, drop_batch: bool) -> str:
    if t.dtype not in DATA_TYPES:
        raise InputError(f"{t.name}: element type {t.dtype} has no Triton data type")
    if t.dims is None:
        raise InputError(f"{t.name}: unknown rank; Triton's config needs its dims (fix it with --input-shape)")
    dims = t.dims[1:] if drop_batch else t.dims
    # Triton wants at least one dim: a batched scalar per item is [1] with a reshape to []
    shown, reshape = (dims, "") if dims else ([1], "\n    reshape: { shape: [ ] }")
    return (f"  {{\n    name: {_quote(t.name)}\n    data_type: {DATA_TYPES[t.dtype]}\n"
            f"    dims: [ {', '.join(map(str, shown))} ]{reshape}\n  }}")


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
