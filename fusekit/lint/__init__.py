"""``fusekit lint``: find what will make a model fail to build, or build badly, in TensorRT.

Nothing here changes the model. One module per job:

- ``rules``: the catalogue (stable codes, severities, ``--explain`` texts).
- ``checks``: the checks (FK301 runs the default pipeline on lint's own copy and reads what it changed).
- ``config``: ``[tool.fusekit.lint]`` in pyproject.toml, per-model globs, flags.
- ``output``: text, JSON, SARIF 2.1.0 and GitHub workflow annotations.
- ``fix``: ``--fix``, which runs the passes behind fixable findings.

    import fusekit
    for finding in fusekit.lint("model.onnx"):
        print(finding.code, finding.message)
"""

from __future__ import annotations

import logging
import os
import sys
import time
import types
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx
import onnx.external_data_helper

from fusekit.lint.checks import CHECK_CODES, CHECKS, LintFinding, Target
from fusekit.lint.config import LintConfig, for_model
from fusekit.lint.rules import RULES, Severity, explain
from fusekit.model_io import load_model, read_model_file
from fusekit.model_io.repair import check_input
from fusekit.shapes import annotate_shapes

log = logging.getLogger(__name__)

__all__ = ["LintConfig", "LintFinding", "LintResult", "RULES", "Severity", "explain", "lint", "lint_model"]


@dataclass
class LintResult:
    """The findings for one model (sorted), notes about checks skipped, and the time taken."""

    model: str
    findings: list[LintFinding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: LintConfig = field(default_factory=LintConfig)
    seconds: float = 0.0

    def failing(self) -> list[LintFinding]:
        return [f for f in self.findings if f.severity >= self.config.fail_on]


def lint_model(model: str | os.PathLike | onnx.ModelProto, config: LintConfig | None = None,
               strict: bool = False) -> LintResult:
    """Lint one model (a path or a ``ModelProto``, never modified) and return everything found.

    Without ``config``, a path's configuration comes from the nearest pyproject.toml.
    Raises :class:`~fusekit.errors.InputError` for a missing or corrupt model; with
    ``strict``, also for what loading repairs or accepts (see ``fusekit.model_io.repair``).
    """
    start = time.perf_counter()
    if isinstance(model, onnx.ModelProto):
        name, path, proto = "<ModelProto>", None, model
        config = config or LintConfig()
    else:
        path = Path(model)
        name = str(model)
        config = config or for_model(path)
        proto = read_model_file(path, map_weights=True)  # large weights stay in the file
    loaded = load_model(path if path is not None else proto)
    if strict:
        check_input(loaded.graph, loaded.shell, name, loaded.repairs, strict=True)
    annotate_shapes(loaded.graph, loaded.shell)
    target = Target(name, proto, loaded, path, opset_range=config.opset, trt=config.trt)
    findings: list[LintFinding] = []
    for check in CHECKS:
        if not any(config.enabled(code) for code in CHECK_CODES[check]):
            continue
        for f in check(target):
            if config.enabled(f.code):
                findings.append(replace(f, severity=config.severity.get(f.code, f.severity)))
    findings.sort(key=lambda f: (f.code, f.node or "", f.key))
    repaired = [f"{problem}; {action}" for problem, action in loaded.repairs]
    return LintResult(name, findings, repaired + target.notes, config, time.perf_counter() - start)


def lint(model: str | os.PathLike | onnx.ModelProto, *, select=None, ignore=(),
         config: LintConfig | None = None) -> list[LintFinding]:
    """The findings for ``model`` (a path or ``ModelProto``), most severe rules first by code.

    ``select`` / ``ignore`` take codes or prefixes (``"FK3"``) and override the configuration
    found in pyproject.toml.
    """
    if config is None:
        path = None if isinstance(model, onnx.ModelProto) else Path(model)
        config = for_model(path, select=tuple(c.upper() for c in select) if select else None,
                           ignore=tuple(c.upper() for c in ignore))
    return lint_model(model, config).findings


class _CallableModule(types.ModuleType):
    """``fusekit.lint`` is both this package and the function :func:`lint`: the package
    is named after the command, and ``fusekit.lint(model)`` is the API the issue asks for."""

    def __call__(self, model, **kwargs) -> list[LintFinding]:
        return lint(model, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
