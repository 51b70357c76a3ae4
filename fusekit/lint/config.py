"""Lint configuration: ``[tool.fusekit.lint]`` in the nearest ``pyproject.toml``, then flags.

Found from the model's folder upward (the first ``pyproject.toml`` that has a
``[tool.fusekit.lint]`` table wins)::

    [tool.fusekit.lint]
    select = ["FK"]                 # codes or prefixes (default: every rule)
    ignore = ["FK504"]
    fail-on = "warning"             # info | warning | error
    severity = {FK502 = "warning"}  # per-rule overrides
    opset = [9, 23]                 # FK104's range
    trt = true                      # FK101-FK103: ask the installed TensorRT parser

    [tool.fusekit.lint.per-model."models/legacy/*.onnx"]   # globs, relative to pyproject.toml
    ignore = ["FK104"]
    severity = {FK301 = "info"}

Precedence, lowest first: defaults, the global table, each matching per-model table (in
file order), command-line flags. ``--select`` replaces the selection, ``--ignore`` adds to
the ignored codes, ``--fail-on`` replaces the threshold.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable


from fusekit.errors import InputError
from fusekit.lint.rules import RULES, Severity, matches

_KEYS = {"select", "ignore", "fail-on", "severity", "opset", "trt", "per-model"}


@dataclass(frozen=True)
class LintConfig:
    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()
    fail_on: Severity = Severity.WARNING
    severity: dict[str, Severity] = field(default_factory=dict)
    opset: tuple[int, int] | None = None  # None: the installed TensorRT's range (support table)
    trt: bool = True
    source: str | None = None  # the pyproject.toml it came from

    def enabled(self, code: str) -> bool:
        return matches(code, self.select) and not matches(code, self.ignore)


def _codes(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: expected a list of rule codes")
    codes = tuple(v.strip().upper() for v in value if v.strip())
    for code in codes:
        if code != "ALL" and not any(r.startswith(code) for r in RULES):
            raise InputError(f"{where}: no rule code starts with {code!r}; known rules: {', '.join(RULES)}")
    return codes


def parse_codes(values: Iterable[str] | None, where: str) -> tuple[str, ...] | None:
    """Comma-separated codes from the command line (None when the flag was not given)."""
    if values is None:
        return None
    return _codes([c for v in values for c in v.split(",")], where)


def _apply(config: LintConfig, table: dict, where: str) -> LintConfig:
    unknown = set(table) - _KEYS
    if unknown:
        raise InputError(f"{where}: unknown key {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KEYS))}")
    changes: dict[str, Any] = {}
    if "select" in table:
        changes["select"] = _codes(table["select"], f"{where}.select")
    if "ignore" in table:
        changes["ignore"] = config.ignore + _codes(table["ignore"], f"{where}.ignore")
    if "fail-on" in table:
        changes["fail_on"] = Severity.parse(str(table["fail-on"]))
    if "severity" in table:
        if not isinstance(table["severity"], dict):
            raise InputError(f"{where}.severity: expected a table of CODE = \"severity\"")
        overrides = dict(config.severity)
        for code, level in table["severity"].items():
            if code.upper() not in RULES:
                raise InputError(f"{where}.severity: unknown rule {code!r}")
            overrides[code.upper()] = Severity.parse(str(level))
        changes["severity"] = overrides
    if "opset" in table:
        value = table["opset"]
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)
                and value[0] <= value[1]):
            raise InputError(f"{where}.opset: expected [LOW, HIGH] (integers, LOW <= HIGH)")
        changes["opset"] = (value[0], value[1])
    if "trt" in table:
        if not isinstance(table["trt"], bool):
            raise InputError(f"{where}.trt: expected true or false")
        changes["trt"] = table["trt"]
    return replace(config, **changes)


def find_pyproject(start: Path) -> tuple[Path, dict] | None:
    """The nearest ``pyproject.toml`` from ``start`` upward with a [tool.fusekit.lint] table."""
    folder = start.resolve()
    for candidate in [folder, *folder.parents]:
        path = candidate / "pyproject.toml"
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: not valid TOML: {exc}") from None
            table = data.get("tool", {}).get("fusekit", {}).get("lint")
            if table is not None:
                if not isinstance(table, dict):
                    raise InputError(f"{path}: [tool.fusekit.lint] must be a table")
                return path, table
    return None


def for_model(model: Path | None, *, select: tuple[str, ...] | None = None, ignore: tuple[str, ...] = (),
              fail_on: Severity | None = None, use_pyproject: bool = True) -> LintConfig:
    """The configuration for one model: pyproject (global, then per-model tables), then flags."""
    config = LintConfig()
    if use_pyproject and model is not None:
        found = find_pyproject(model.parent)
        if found is not None:
            path, table = found
            where = f"{path} [tool.fusekit.lint]"
            config = replace(_apply(config, {k: v for k, v in table.items() if k != "per-model"}, where),
                             source=str(path))
            per_model = table.get("per-model", {})
            if not isinstance(per_model, dict):
                raise InputError(f"{where}.per-model: expected tables keyed by glob pattern")
            relative = _relative(model, path.parent)
            for pattern, sub in per_model.items():
                if not isinstance(sub, dict):
                    raise InputError(f"{where}.per-model.{pattern!r}: expected a table")
                if fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(model.name, pattern):
                    config = _apply(config, sub, f"{where}.per-model.{pattern!r}")
    if select is not None:
        config = replace(config, select=select)
    if ignore:
        config = replace(config, ignore=config.ignore + tuple(ignore))
    if fail_on is not None:
        config = replace(config, fail_on=fail_on)
    return config


def _relative(model: Path, root: Path) -> str:
    try:
        return model.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return model.as_posix()
