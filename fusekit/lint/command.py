"""What ``fusekit lint`` does between parsing flags and choosing an exit code (the CLI maps
the :class:`Outcome` to a code, as it does for every command)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from fusekit.errors import InputError
from fusekit.lint import LintResult, explain, lint_model
from fusekit.lint.config import for_model, parse_codes
from fusekit.lint.fix import fix, output_for, relint
from fusekit.lint.output import FORMATS, render
from fusekit.lint.rules import Severity
from fusekit.outputs import reserve


@dataclass
class Outcome:
    results: list[LintResult] = field(default_factory=list)
    input_errors: list[str] = field(default_factory=list)

    @property
    def failing(self) -> bool:
        return any(r.failing() for r in self.results)


@dataclass
class LintOptions:
    select: list[str] | None = None
    ignore: list[str] | None = None
    fail_on: str | None = None
    fmt: str = "text"
    fix: bool = False
    output: Path | None = None
    output_dir: Path | None = None
    in_place: bool = False
    strict: bool = False  # refuse what loading would repair (see fusekit.model_io.repair)


def run(models: Sequence[Path], options: LintOptions, out: Console, err: Console) -> Outcome:
    """Lint (and with ``fix``, fix) every model; print in the chosen format.

    An unreadable model is an input error (listed, the others still linted); a bad flag
    raises InputError before any model is read.
    """
    if options.fmt not in FORMATS:
        raise InputError(f"--format {options.fmt}: expected one of {', '.join(FORMATS)}")
    if not models:
        raise InputError("no model given (fusekit lint MODEL... or fusekit lint --explain CODE)")
    select = parse_codes(options.select, "--select")
    ignore = parse_codes(options.ignore, "--ignore") or ()
    fail_on = Severity.parse(options.fail_on) if options.fail_on else None
    if not options.fix and (options.output or options.output_dir or options.in_place):
        raise InputError("-o, --output-dir and --in-place write a fixed model: add --fix")
    targets = {}
    if options.fix:
        targets = {m: output_for(m, output=options.output, output_dir=options.output_dir,
                                 in_place=options.in_place, count=len(models)) for m in models}
        option = "-o" if options.output else "--output-dir" if options.output_dir else "--in-place"
        for target in targets.values():
            reserve(target, option)
            reserve(target.with_name(target.name + ".data"), option)
    outcome = Outcome()
    for model in models:
        try:
            config = for_model(model, select=select, ignore=ignore, fail_on=fail_on)
            result = lint_model(model, config, strict=options.strict)
            if options.fix:
                result = _fix(result, targets[model], err)
        except InputError as exc:
            outcome.input_errors.append(str(exc))
            err.print(f"fusekit: [red]error:[/] {escape(str(exc))}", soft_wrap=True)
            continue
        outcome.results.append(result)
    text = render(outcome.results, options.fmt, out)
    if text is not None:
        sys.stdout.write(text)
        sys.stdout.flush()
    return outcome


def _fix(result: LintResult, target: Path, err: Console) -> LintResult:
    """Fix ``result``'s model into ``target``; return the findings left in ``target``."""
    fixed = fix(result, target)
    written = ", ".join(map(str, fixed.written))
    if fixed.passes:
        err.print(f"fixed {escape(result.model)} with {', '.join(fixed.passes)} -> {escape(written)}", soft_wrap=True)
    else:
        err.print(f"{escape(result.model)}: nothing to fix; written as it is to {escape(written)}", soft_wrap=True)
    remaining = fixed.remaining if fixed.remaining is not None else relint(target, result.config)
    remaining.notes = list(dict.fromkeys(result.notes + remaining.notes
                                         + [f"findings are those left after --fix, in {target}"]))
    return remaining


def explain_text(code: str) -> str:
    return explain(code)
