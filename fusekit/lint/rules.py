"""The rule catalogue: stable codes, a severity each, and the ``--explain`` text.

Codes never change meaning once released (like ruff/flake8). Families:

- FK1xx: what TensorRT makes of the model (unsupported ops, plugins, opset).
- FK2xx: shapes (dynamic dims without a profile, missing shape information).
- FK3xx: rewrites a fusekit pass would make (fusion blocked until they are made) and
  Q/DQ placement.
- FK4xx: numeric ranges (INT64 beyond INT32, FP32 beyond FP16).
- FK5xx: the file itself (size, names, unused initializers, non-deterministic ops).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fusekit.errors import InputError


class Severity(enum.IntEnum):
    """Ordered: a finding fails the run when its severity is at or above ``--fail-on``."""

    INFO = 1
    WARNING = 2
    ERROR = 3

    @classmethod
    def parse(cls, text: str) -> "Severity":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise InputError(f"unknown severity {text!r}; expected one of "
                             f"{', '.join(s.name.lower() for s in cls)}") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Rule:
    code: str
    name: str  # kebab-case, named after the problem
    severity: Severity
    summary: str  # one line
    explanation: str  # why it matters for TensorRT, and how to fix it
    fixable: bool = False  # fusekit lint --fix can remove it


_RULES = [
    Rule("FK101", "unsupported-op", Severity.ERROR,
         "TensorRT cannot parse this node and fusekit has no substitution for it",
         "TensorRT's ONNX parser rejects the node (no importer for the op, or attributes, "
         "types or shapes it does not support), and no fusekit pass rewrites it into "
         "something that parses. The build fails. Asked of the installed parser (tensorrt or "
         "tensorrt_rtx), else of the support table shipped with fusekit; the reason is the "
         "parser's own (`fusekit check-trt MODEL` shows the same list). Fix: change the "
         "export (other ops, a supported opset or dtype), or provide a TensorRT plugin. "
         "Unsupported nodes a default fusekit pass rewrites are reported as FK301 instead."),
    Rule("FK102", "needs-plugin", Severity.ERROR,
         "TensorRT can import this node only as a plugin",
         "TensorRT's parser looks ops of custom domains (com.microsoft, your own, ...) up as "
         "plugins named after the op type; the same holds for ops whose only substitution in "
         "fusekit is a plugin. Without that plugin registered at build time (and shipped with "
         "the engine), the build fails. Fix: replace the op with standard ONNX ops in the "
         "export, apply fusekit's plugin substitution when it offers one "
         "(`fusekit optimize --plugins auto`), or load your plugin library before building."),
    Rule("FK104", "opset-out-of-range", Severity.WARNING,
         "the model's default-domain opset is outside the installed TensorRT's range",
         "Opsets TensorRT's parser was not written for are a source of silent semantic "
         "differences (ops whose meaning changed between opsets) or refused nodes. The default "
         "range is the one documented for the installed TensorRT release, from fusekit's support "
         "table of that release (onnx-tensorrt's operators.md: opset 9 to 24 for TensorRT 10.15; "
         "tensorrt_rtx 1.7 follows it), or of the newest release shipped when no TensorRT is "
         "installed. The parser itself does not enforce it: tensorrt_rtx 1.7 was measured to "
         "parse single-Relu models of opset 7 and 25 without a word. `opset = [LOW, HIGH]` under "
         "[tool.fusekit.lint] sets another range. Fix: re-export with a "
         "supported opset (torch.onnx.export(..., opset_version=N)) or convert it with "
         "onnx.version_converter."),
    Rule("FK201", "dynamic-dim-without-profile", Severity.WARNING,
         "a dynamic input dim has no optimization-profile range",
         "TensorRT builds an engine for a range (min, opt, max) of every dynamic dim; without "
         "one, `fusekit build` and trtexec refuse or fall back to a guess. Fix: record a range "
         "in the model with `fusekit optimize MODEL -o OUT --dynamic DIM=MIN:OPT:MAX`, or fix "
         "the dim with `--dim DIM=SIZE` when it never varies."),
    Rule("FK202", "missing-shape", Severity.WARNING,
         "a graph input or output, or a tensor a node reads, has no shape (unknown rank)",
         "TensorRT needs the rank of every network input; a tensor of unknown rank after ONNX "
         "shape inference (a custom op, a shape computed from data) marks where inference "
         "stopped, and everything after it is invisible to shape-based rewrites and fusions. "
         "Fix: export with shapes, give them with `fusekit optimize --input-shape "
         "NAME:1x3x224x224`, or register shape inference for the custom op."),
    Rule("FK301", "pass-would-rewrite", Severity.WARNING,
         "a fusekit pass would rewrite this node (BatchNorm, Identity, constant subgraph, ...)",
         "One rule family for every registered pass: lint runs the default pipeline to its fixed "
         "point on its own copy of the model (never saved) and names, for each node of the model "
         "a pass removed or replaced, that pass, so --fix and optimize change exactly these nodes. Until it is rewritten TensorRT sees an extra layer (a BatchNorm "
         "not folded into its Conv, an Identity, a subgraph of constants computed at run "
         "time) that can block its own fusions. The message names the pass. Fix: "
         "`fusekit lint --fix MODEL -o OUT` (runs exactly those passes) or `fusekit optimize`.",
         fixable=True),
    Rule("FK302", "qdq-blocks-int8-fusion", Severity.WARNING,
         "a Q/DQ placement prevents TensorRT's INT8 fusion",
         "TensorRT fuses QuantizeLinear->DequantizeLinear pairs into the INT8 layer around "
         "them. A QuantizeLinear not followed by a DequantizeLinear cannot be fused, and a "
         "Conv/ConvTranspose/MatMul/Gemm whose activation input is dequantized while its "
         "weights are plain float runs in float (no INT8 kernel). Fix: quantize both inputs "
         "(e.g. with TensorRT Model Optimizer) and keep every Q immediately followed by its DQ."),
    Rule("FK401", "int64-beyond-int32", Severity.WARNING,
         "an INT64 initializer holds values outside the INT32 range",
         "TensorRT computes most integer tensors in INT32; values beyond +-2^31 are clamped "
         "when the parser casts them down (a slice end of INT64_MAX is fine as a sentinel, "
         "other values change meaning). Fix: store such constants in range, e.g. clamp slice "
         "ends to the dim size."),
    Rule("FK402", "fp32-overflows-fp16", Severity.WARNING,
         "an FP32 initializer holds finite values beyond the FP16 range (|x| > 65504)",
         "Built with FP16 enabled, TensorRT may run the consuming layer in FP16, where these "
         "values become inf (a mask of -1e9 or -3.4e38 turns into -inf, then NaN after a "
         "softmax of an all-masked row). Fix: use -65504 / finfo(float16).min for masks, or "
         "keep the layer in FP32."),
    Rule("FK501", "large-model-inline-weights", Severity.ERROR,
         "the model's inline weights exceed the 2 GB protobuf limit",
         "A protobuf message cannot exceed 2 GB: such a model cannot be saved, loaded or "
         "parsed by TensorRT in one file. Fix: save with external data "
         "(onnx.save(model, path, save_as_external_data=True) or "
         "`fusekit optimize --external-data`)."),
    Rule("FK502", "unused-initializer", Severity.INFO,
         "an initializer no node uses",
         "Dead weights make the file larger and slower to load; TensorRT ignores them. "
         "Fix: `fusekit optimize` (or onnx.utils / onnxsim) removes them."),
    Rule("FK503", "duplicate-name", Severity.ERROR,
         "two nodes share a name, or two nodes produce the same tensor",
         "ONNX requires each tensor to be produced once (SSA); TensorRT names layers after "
         "nodes, so duplicate node names make its errors and the fused-layer report ambiguous. "
         "Fix: rename in the exporter, or with onnx-graphsurgeon."),
    Rule("FK504", "empty-name", Severity.INFO,
         "a node has no name",
         "TensorRT names the layer of an unnamed node after its first output "
         "(node_of_OUTPUT); error messages and profiles are harder to map back to the "
         "exporter's code. Fix: export with node names (torch.onnx does by default)."),
    Rule("FK505", "nondeterministic-op", Severity.WARNING,
         "a random op (RandomNormal, RandomUniform, Multinomial, Bernoulli, ...)",
         "Random ops give different results per run and per backend, so outputs cannot be "
         "verified against onnxruntime, and fusekit never folds them. TensorRT supports only "
         "some of them. Fix: export in eval mode, or pass the random tensor as an input."),
]

RULES: dict[str, Rule] = {r.code: r for r in _RULES}


def explain(code: str) -> str:
    """The ``--explain`` text of ``code`` (InputError for an unknown code)."""
    rule = RULES.get(code.strip().upper())
    if rule is None:
        raise InputError(f"unknown rule {code!r}; known rules: {', '.join(RULES)}")
    fix = " Fixable with --fix." if rule.fixable else ""
    return (f"{rule.code} {rule.name} ({rule.severity})\n\n{rule.summary}.\n\n"
            f"{rule.explanation}{fix}\n")


def matches(code: str, patterns) -> bool:
    """True if ``code`` is selected by any of ``patterns`` (a code or a prefix: FK3, FK, ALL)."""
    return any(p == "ALL" or code.startswith(p) for p in patterns)
