"""Lint output formats: text (grouped by model and rule, coloured on a terminal), JSON,
SARIF 2.1.0 (for GitHub code scanning) and GitHub workflow annotations.

SARIF is built as plain dicts (the PyPI packages for it, sarif-om 1.0.4 of 2020 among
them, add little over a dict); tests validate it against the official schema.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from fusekit import __version__
from fusekit.lint import LintResult
from fusekit.lint.rules import RULES, Severity

FORMATS = ("text", "json", "sarif", "github")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
_GITHUB = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
TEXT_LIMIT = 10  # findings shown per (model, rule, key) group before "... and N more"


def render_text(results: Sequence[LintResult], console: Console, show_all: bool = False) -> None:
    """Per model, per rule: a header with the count, then one line per finding."""
    total = defaultdict(int)
    for result in results:
        for note in result.notes:
            console.print(f"[dim]{escape(result.model)}: note: {escape(note)}[/]", soft_wrap=True)
        if not result.findings:
            continue
        console.print(f"[bold]{escape(result.model)}[/]", soft_wrap=True)
        groups: dict[tuple[str, str], list] = defaultdict(list)
        for f in result.findings:
            groups[(f.code, f.key if f.code == "FK301" else "")].append(f)
            total[f.severity] += 1
        for (code, key), findings in groups.items():
            rule = RULES[code]
            severity = max(f.severity for f in findings)
            label = rule.name + (f" [{key}]" if key else "")
            fix = " (fixable with --fix)" if rule.fixable else ""
            console.print(f"  [{_STYLE[severity]}]{code}[/] {escape(label)}: {len(findings)} "
                          f"{severity}{'s' if len(findings) > 1 else ''}{fix}", soft_wrap=True)
            shown = findings if show_all else findings[:TEXT_LIMIT]
            for f in shown:
                console.print(f"    {escape(f.message)}", soft_wrap=True, highlight=False)
            if len(findings) > len(shown):
                console.print(f"    [dim]... and {len(findings) - len(shown)} more (--format json lists all)[/]")
    if total:
        parts = ", ".join(f"{total[s]} {s}{'s' if total[s] > 1 else ''}" for s in sorted(total, reverse=True))
        console.print(f"found {parts} in {sum(1 for r in results if r.findings)} of {len(results)} "
                      f"model{'s' if len(results) > 1 else ''}; `fusekit lint --explain CODE` says why and how to fix",
                      soft_wrap=True)
    elif results:
        console.print(f"[green]no findings[/] in {len(results)} model{'s' if len(results) > 1 else ''}")


def to_json(results: Sequence[LintResult]) -> dict:
    """The ``--format json`` report (schema: fusekit/schemas/lint-report.schema.json)."""
    return {"version": 1, "tool": {"name": "fusekit", "version": __version__},
            "models": [{"model": r.model, "seconds": round(r.seconds, 3), "notes": r.notes,
                        "fail_on": str(r.config.fail_on), "config": r.config.source,
                        "findings": [f.to_dict() for f in r.findings]} for r in results]}


def _uri(model: str) -> str:
    path = Path(model)
    if path.is_absolute():
        try:
            return path.relative_to(Path.cwd()).as_posix()
        except ValueError:
            return path.as_uri()
    return path.as_posix()


def to_sarif(results: Sequence[LintResult]) -> dict:
    """One run, every rule in the driver (stable ``ruleIndex``), one result per finding."""
    codes = list(RULES)
    rules = [{"id": r.code, "name": r.name,
              "shortDescription": {"text": r.summary},
              "fullDescription": {"text": r.explanation},
              "help": {"text": r.explanation},
              "defaultConfiguration": {"level": _SARIF_LEVEL[r.severity]},
              "properties": {"fixable": r.fixable, "tags": ["tensorrt", "onnx"]}} for r in RULES.values()]
    sarif_results = []
    for result in results:
        for f in result.findings:
            location = {"physicalLocation": {"artifactLocation": {"uri": _uri(f.model)},
                                             "region": {"startLine": 1}}}
            if f.node:
                location["logicalLocations"] = [{"name": f.node, "kind": "member",
                                                 "fullyQualifiedName": f"{Path(f.model).name}::{f.node}"}]
            item = {"ruleId": f.code, "ruleIndex": codes.index(f.code), "level": _SARIF_LEVEL[f.severity],
                    "message": {"text": f.message}, "locations": [location],
                    "partialFingerprints": {"fusekitFinding/v1": f.fingerprint()},
                    "fingerprints": {"fusekitFinding/v1": f.fingerprint()}}
            props = {k: v for k, v in (("op", f.op), ("key", f.key or None)) if v}
            if props:
                item["properties"] = props
            sarif_results.append(item)
    notes = [{"level": "note", "message": {"text": f"{r.model}: {n}"}} for r in results for n in r.notes]
    invocation = {"executionSuccessful": True}
    if notes:
        invocation["toolExecutionNotifications"] = notes
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0",
            "runs": [{"tool": {"driver": {"name": "fusekit", "version": __version__,
                                          "rules": rules}},
                      "invocations": [invocation], "results": sarif_results}]}


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def to_github(results: Sequence[LintResult]) -> str:
    """``::error file=M,title=FK101 unsupported-op::message`` lines (workflow commands)."""
    lines = []
    for result in results:
        for f in result.findings:
            title = f"{f.code} {f.name}"
            lines.append(f"::{_GITHUB[f.severity]} file={_escape_property(_uri(f.model))},line=1,"
                         f"title={_escape_property(title)}::{_escape_data(f.message)}")
        for note in result.notes:
            lines.append(f"::notice file={_escape_property(_uri(result.model))},title=fusekit lint::"
                         f"{_escape_data(note)}")
    return "\n".join(lines) + ("\n" if lines else "")


def render(results: Sequence[LintResult], fmt: str, console: Console) -> str | None:
    """Text goes to ``console``; other formats are returned as a string for stdout."""
    if fmt == "text":
        render_text(results, console)
        return None
    if fmt == "json":
        return json.dumps(to_json(results), indent=2) + "\n"
    if fmt == "sarif":
        return json.dumps(to_sarif(results), indent=2) + "\n"
    return to_github(results)
