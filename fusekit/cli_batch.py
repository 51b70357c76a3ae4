"""``fusekit optimize A.onnx B.onnx DIR/ ... --output-dir OUT [-j N]``: many models at once.

Every model is tried (one failing never stops the others), each is written to
``OUT/<stem>.onnx`` through a temp file, a progress bar runs on stderr, one summary table
is printed at the end, and the exit code is the most severe one among the models (as
``fusekit lint`` does for many files). With ``-j N`` the models run in N worker processes.
Paths are all checked before any model is read: OUT must be an existing folder, and no two
models may share a stem (their outputs would clash).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fusekit.errors import InputError


@dataclass(frozen=True)
class Job:
    """One model to optimize: where it is, where it goes, and api.run's keyword arguments."""

    model: Path
    output: Path
    options: dict[str, Any] = field(default_factory=dict)
    external_data: bool | None = None


@dataclass
class Outcome:
    """What became of one model: its exit code (0 ok), an error line, and the report's numbers."""

    model: str
    output: str
    code: int = 0
    error: str = ""
    nodes_before: int | None = None
    nodes_after: int | None = None
    seconds: float = 0.0
    written: list[str] = field(default_factory=list)
    report: dict | None = None


def expand_models(paths: Sequence[Path]) -> list[Path]:
    """The models named: files as given, a folder's ``*.onnx`` files (sorted, not recursive).
    InputError for a missing path or a folder without models."""
    models: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.glob("*.onnx") if p.is_file())
            if not found:
                raise InputError(f"{path}: folder holds no .onnx model")
            models.extend(found)
        elif path.exists():
            models.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return list(dict.fromkeys(models))


def plan(models: Sequence[Path], output_dir: Path) -> list[tuple[Path, Path]]:
    """(model, OUT/<stem>.onnx) pairs; InputError when OUT is not a folder, two models share
    a stem, or an output would be one of the inputs."""
    if not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir}: no such folder (create it first)")
    by_stem: dict[str, list[Path]] = {}
    for model in models:
        by_stem.setdefault(model.stem, []).append(model)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        stem, paths = next(iter(clashes.items()))
        raise InputError(f"--output-dir {output_dir}: {', '.join(map(str, paths))} would all be written to "
                         f"{output_dir / (stem + '.onnx')}; give models with distinct file names")
    pairs = [(model, output_dir / f"{model.stem}.onnx") for model in models]
    inputs = {model.resolve() for model in models}
    for model, output in pairs:
        if output.resolve() in inputs:
            raise InputError(f"{output}: is an input model; fusekit never overwrites its input, "
                             "choose another --output-dir")
    return pairs


def optimize_paths(paths: Sequence[Path], output: Path | None, output_dir: Path | None, workers: int,
                   trace: str | None, as_json: bool, external_data: bool | None, options: dict[str, Any],
                   out, err) -> int:
    """``fusekit optimize`` given several models, a folder or ``--output-dir``: check every
    path, then optimize each model with api.run's ``options``; return the exit code."""
    if output is not None:
        raise InputError(f"-o {output}: names one model's output; for several models or a folder give "
                         "--output-dir FOLDER")
    if output_dir is None:
        raise InputError("several models or a folder: give --output-dir FOLDER (outputs are FOLDER/<stem>.onnx)")
    if trace is not None:
        raise InputError(f"--trace {trace}: traces a node of one model; give one model and -o")
    jobs = [Job(model, target, options, external_data) for model, target in plan(expand_models(paths), output_dir)]
    return optimize_many(jobs, workers, as_json, out, err)


def optimize_one(job: Job) -> Outcome:
    """Optimize and write one model; never raises (a worker process runs it)."""
    from fusekit import api
    from fusekit.cli import EXIT_INTERNAL, exit_code
    from fusekit.errors import FusekitError

    outcome = Outcome(str(job.model), str(job.output))
    start = time.perf_counter()
    try:
        result = api.run(job.model, **job.options)
        try:
            written = result.save(job.output, external_data=job.external_data)
        except OSError as exc:
            raise InputError(f"{job.output}: cannot write the optimized model: {exc.strerror or exc}") from None
        report = result.report
        outcome.nodes_before, outcome.nodes_after = report.before.nodes, report.after.nodes
        outcome.written = [str(p) for p in written]
        outcome.report = report.to_dict()
    except FusekitError as exc:
        outcome.code, outcome.error = exit_code(exc), str(exc)
    except Exception as exc:  # a bug in fusekit or a pass: the other models still run
        outcome.code = EXIT_INTERNAL
        outcome.error = f"internal error: {type(exc).__name__}: {exc} (a bug: please report it)"
    outcome.seconds = time.perf_counter() - start
    return outcome


def run(jobs: Sequence[Job], workers: int, on_done: Callable[[Outcome], None]) -> list[Outcome]:
    """Run every job (``workers`` > 1: in that many processes); ``on_done`` hears of each as it
    finishes. Outcomes come back in the jobs' order."""
    done: dict[int, Outcome] = {}
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            done[i] = optimize_one(job)
            on_done(done[i])
    else:
        # spawn, not fork: the parent may hold onnxruntime's threads
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(optimize_one, job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                on_done(done[futures[future]])
    return [done[i] for i in range(len(jobs))]


def optimize_many(jobs: Sequence[Job], workers: int, as_json: bool, out, err) -> int:
    """Run ``jobs`` with a progress bar on ``err`` (a terminal only), print one summary (a
    table, or JSON with ``as_json``) on ``out``; return the most severe exit code."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=True, disable=not err.is_terminal)

    def on_done(outcome: Outcome) -> None:
        if outcome.code:
            bar.console.print(f"fusekit: error: {outcome.error}", markup=False, highlight=False, soft_wrap=True)
        bar.advance(task)

    with bar:
        task = bar.add_task(f"optimizing {len(jobs)} models", total=len(jobs))
        outcomes = run(jobs, workers, on_done)
    code = max((o.code for o in outcomes), default=0)
    if as_json:
        print(json.dumps({"models": [asdict(o) for o in outcomes], "exit_code": code}, indent=2))
    else:
        print_summary(outcomes, out)
    return code


def print_summary(outcomes: Sequence[Outcome], out) -> None:
    table = Table(title=Text(f"fusekit optimize: {len(outcomes)} models"), title_justify="left")
    for column in ("model", "nodes", "time", "result"):
        table.add_column(column, justify="right" if column in ("nodes", "time") else "left")
    for o in outcomes:
        nodes = "" if o.nodes_before is None else f"{o.nodes_before} -> {o.nodes_after}"
        result = f"wrote {', '.join(o.written)}" if not o.code else f"exit {o.code}: {o.error}"
        table.add_row(Text(o.model), nodes, f"{o.seconds:.2f} s", Text(result, style="" if not o.code else "red"))
    out.print(table)
    failed = [o for o in outcomes if o.code]
    out.print(f"{len(outcomes) - len(failed)} of {len(outcomes)} models optimized"
              + (f"; {len(failed)} failed" if failed else ""), markup=False, highlight=False)
