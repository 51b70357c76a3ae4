"""The ``fusekit`` command line: options in, report out. Exit codes are mapped here only.

| code | meaning |
|---|---|
| 0 | success |
| 1 | findings, or a --verify mismatch |
| 2 | usage or input error |
| 3 | no TensorRT backend installed |
| 4 | TensorRT rejected the model |
| 70 | internal error (a bug: please report it) |
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from fusekit import __version__, api, registry
from fusekit.errors import (BackendMissingError, FindingsError, FusekitError, InputError, PassError,
                            TensorRTError)
from fusekit.model_io import save_model
from fusekit.report import OptimizeReport
from fusekit.shapes import parse_shape
from fusekit.verify import Tolerance
from typer.exceptions import TyperException

EXIT_CODES: dict[type[FusekitError], int] = {
    FindingsError: 1,
    InputError: 2,
    BackendMissingError: 3,
    TensorRTError: 4,
    PassError: 70,
}
EXIT_INTERNAL = 70

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Get ONNX models ready for NVIDIA TensorRT, and prove it.")
out = Console()
err = Console(stderr=True)


def exit_code(exc: FusekitError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_INTERNAL


def _version(value: bool) -> None:
    if value:
        out.print(f"fusekit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the passes do.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="fusekit: %(levelname)s: %(message)s", stream=sys.stderr)


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="The ONNX model to optimize (never modified).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the optimized model.")],
    passes: Annotated[Optional[list[str]], typer.Option("--passes", help="Run only these passes (comma-separated).")] = None,
    skip: Annotated[Optional[list[str]], typer.Option("--skip", help="Leave out these passes (comma-separated).")] = None,
    input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape", help="Fix an input's shape: NAME:1x3x224x224 (repeatable).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Compare outputs with the original under onnxruntime.")] = False,
    rtol: Annotated[float, typer.Option(help="Relative tolerance for --verify.")] = 1e-4,
    atol: Annotated[float, typer.Option(help="Absolute tolerance for --verify.")] = 1e-5,
    trace: Annotated[Optional[str], typer.Option("--trace", help="Say which pass removed or replaced NODE, and why others declined it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Check the graph after every pass.")] = False,
    max_iterations: Annotated[int, typer.Option(min=1, help="Rounds of the pipeline at most.")] = 10,
    external_data: Annotated[Optional[bool], typer.Option("--external-data/--no-external-data", help="Write weights to OUTPUT.data (default: only when over 2 GB).")] = None,
) -> None:
    """Optimize MODEL and write the result to OUTPUT."""
    if output.resolve() == model.resolve():
        raise InputError(f"{output}: is the input model; fusekit never overwrites its input, choose another path")
    shapes = dict(parse_shape(s) for s in input_shape or [])
    with err.status("optimizing", spinner="dots") as status:
        result = api.run(model, passes=_split(passes), skip=_split(skip) or (), input_shapes=shapes,
                         verify=verify, tolerance=Tolerance(rtol, atol), max_iterations=max_iterations,
                         debug=debug, trace=trace, progress=lambda text: status.update(text))
        status.update("saving")
        try:
            written = save_model(result.to_proto(), output, external_data=external_data)
        except OSError as exc:
            raise InputError(f"{output}: cannot write the optimized model: {exc.strerror or exc}") from None
    report = result.report
    if as_json:
        data = report.to_dict()
        data["written"] = [str(p) for p in written]
        if trace is not None:
            data["trace"] = report.trace(trace)
        print(json.dumps(data, indent=2))
        return
    print_report(report)
    if trace is not None:
        print_trace(report, trace)
    out.print(f"wrote {', '.join(str(p) for p in written)}")


def print_report(report: OptimizeReport) -> None:
    before, after = report.before, report.after
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    summary = Table(title=f"fusekit optimize: {report.source}", title_justify="left")
    summary.add_column("")
    summary.add_column("before", justify="right")
    summary.add_column("after", justify="right")
    summary.add_row("nodes", str(before.nodes), str(after.nodes))
    summary.add_row("weights", _size(before.weight_bytes), _size(after.weight_bytes))
    for op in sorted(set(before.ops) | set(after.ops)):
        b, a = before.ops.get(op, 0), after.ops.get(op, 0)
        if a != b:
            summary.add_row(f"  {op}", str(b), str(a))
    out.print(summary)
    passes = Table(title=f"passes ({report.iterations} rounds"
                         f"{'' if report.converged else ', did not converge'}, {report.seconds:.2f} s)",
                   title_justify="left")
    for column in ("pass", "rewrites", "removed", "added", "time"):
        passes.add_column(column, justify="left" if column == "pass" else "right", no_wrap=True)
    for p in report.passes:
        origin = "" if p.package == "fusekit" else f" ({p.package})"
        passes.add_row(p.name + origin, str(p.rewrites), str(p.nodes_removed), str(p.nodes_added),
                       f"{p.seconds * 1000:.1f} ms")
    out.print(passes)
    if report.verify is not None:
        v = report.verify
        out.print(f"verify: outputs match (max abs diff {v.max_abs_diff:.3g} at dynamic dims "
                  f"{', '.join(map(str, v.runs))})")


def print_trace(report: OptimizeReport, node: str) -> None:
    trace = report.trace(node)
    if not trace["events"] and not trace["findings"]:
        out.print(f"trace {node}: no pass touched or considered it; it is still in the model")
    for event in trace["events"]:
        out.print(f"trace {node}: {event['pass_name']}: {event['action']}")
    for finding in trace["findings"]:
        verdict = "would rewrite" if finding["applies"] else "declined"
        out.print(f"trace {node}: {finding['pass_name']} {verdict}: {finding['message']}")


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


@app.command("passes")
def list_passes(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the passes found through entry points, in pipeline order."""
    found = registry.discover()
    infos = sorted(found.passes.values(), key=lambda i: (i.cls.stage, i.cls.priority, i.name))
    if as_json:
        print(json.dumps([{"name": i.name, "stage": i.cls.stage.name.lower(), "priority": i.cls.priority,
                           "default": i.cls.enabled_by_default, "package": i.package,
                           "entry_point": i.entry_point, "summary": i.summary} for i in infos], indent=2))
        return
    table = Table(title="fusekit passes", title_justify="left")
    for column in ("name", "stage", "priority", "default", "package", "what it does"):
        table.add_column(column)
    for i in infos:
        table.add_row(i.name, i.cls.stage.name.lower(), str(i.cls.priority),
                      "on" if i.cls.enabled_by_default else "off", i.package, i.summary)
    out.print(table)
    for problem in found.problems:
        err.print(f"[yellow]warning:[/] {problem}")


def _fail(message: str) -> None:
    print(f"fusekit: {message}", file=sys.stderr)  # one unwrapped line, whatever the terminal


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app and map errors to exit codes."""
    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except FusekitError as exc:
        _fail(f"error: {exc}")
        if isinstance(exc, PassError):
            _fail("this is a bug in the pass named above; please report it")
        return exit_code(exc)
    except TyperException as exc:  # usage errors: bad option, missing argument
        if isinstance(exc, typer.Abort):
            _fail("aborted")
            return 130
        exc.show()
        return 2
    except Exception as exc:  # anything else is a bug in fusekit
        _fail(f"internal error: {type(exc).__name__}: {exc} (a bug: please report it with the model and command)")
        return EXIT_INTERNAL
