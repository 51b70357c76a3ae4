"""``fusekit lint --fix``: run the passes behind the fixable (FK301) findings and write the
result atomically. The input is never overwritten unless asked (``in_place``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from fusekit import api, registry
from fusekit.errors import InputError
from fusekit.lint import LintResult, lint_model
from fusekit.model_io import save_model
from fusekit.pass_infra import Stage


@dataclass
class Fixed:
    source: Path
    written: list[Path]
    passes: list[str]  # the passes run (empty: nothing to fix, model written unchanged)
    # the lint of the written file by the last round (same config); None when none ran
    remaining: LintResult | None = None


def output_for(model: Path, *, output: Path | None, output_dir: Path | None, in_place: bool,
               count: int) -> Path:
    """Where the fixed ``model`` goes; InputError for a combination that is unsafe or ambiguous."""
    chosen = sum(x is not None and x is not False for x in (output, output_dir, in_place or None))
    if chosen != 1:
        raise InputError("--fix needs exactly one of -o FILE (one model), --output-dir DIR or --in-place")
    if output is not None:
        if count != 1:
            raise InputError(f"-o {output}: {count} models given; use --output-dir DIR for several")
        target = output
    elif output_dir is not None:
        if not output_dir.is_dir():
            raise InputError(f"--output-dir {output_dir}: no such folder")
        target = output_dir / model.name
    else:
        return model
    if target.resolve() == model.resolve():
        raise InputError(f"{target}: is the input model; fusekit lint --fix overwrites it only with --in-place")
    return target


MAX_ROUNDS = 4


def fix(result: LintResult, target: Path) -> Fixed:
    """Run the passes named by ``result``'s fixable findings on its model; write ``target``.

    The shape passes run too (lint inspects with inferred shapes, so the passes must see
    them). A rewrite can open the way for another pass (a folded constant makes two
    initializers equal): the fixed model is linted again and, while new passes show up,
    the source is fixed again with the larger set, at most ``MAX_ROUNDS`` times.
    """
    source = Path(result.model)
    shapes = {i.name for i in registry.discover().select() if i.cls.stage == Stage.SHAPES}
    wanted = _fixable(result)
    passes: set[str] = set()
    written: list[Path] = []
    remaining: LintResult | None = None
    for _ in range(MAX_ROUNDS):
        if wanted <= passes and written:
            break
        passes |= wanted
        chosen = sorted(passes | shapes) if passes else []
        fixed = api.run(source, passes=chosen)
        try:
            written = save_model(fixed.to_proto(), target)
        except OSError as exc:
            raise InputError(f"{target}: cannot write the fixed model: {exc.strerror or exc}") from None
        if not passes:
            break
        remaining = relint(target, result.config)
        wanted = _fixable(remaining)
    return Fixed(source, written, sorted(passes), remaining)


def relint(target: Path, config) -> LintResult:
    """Lint the fixed model just written to ``target`` (read from its temp file until the
    command's outputs are renamed into place), reported under ``target``'s name."""
    from fusekit.lint import lint_model
    from fusekit.outputs import readable

    staged = readable(target)
    remaining = lint_model(staged, config)
    remaining.model = str(target)
    remaining.findings = [replace(f, model=str(target)) if f.model == str(staged) else f for f in remaining.findings]
    return remaining


def _fixable(result: LintResult) -> set[str]:
    return {f.key for f in result.findings if f.fixable and f.key}
