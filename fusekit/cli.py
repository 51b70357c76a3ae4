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

# The heavy modules (api, model_io, shapes, ... all import onnx) are imported in the
# commands that use them, so that --help and --version answer without loading onnx.

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from fusekit import __version__, registry
from fusekit import cli_pass_options as pass_options
from fusekit.cli_help import HelpGroup
from fusekit.cli_pass_options import PassOptionsCommand
from fusekit.cli_output import (BuildDisplay, err, out, print_build_summary, print_comparison,
                                passes_markdown, print_engine_info, print_engine_layers, print_passes, print_precision,
                                print_report,
                                print_trace)
from fusekit.errors import (BackendMissingError, FindingsError, FusekitError, InputError, ParseFailedError,
                            PassError, TensorRTError)
from fusekit.onnx_nodes import is_default_domain
from fusekit.pass_infra import Stage
from fusekit.outputs import reserve, transactional
from typer.exceptions import TyperException

EXIT_CODES: dict[type[FusekitError], int] = {
    FindingsError: 1,
    InputError: 2,
    BackendMissingError: 3,
    TensorRTError: 4,
    PassError: 70,
}
EXIT_INTERNAL = 70

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=HelpGroup,
                  rich_markup_mode=None, help="Get ONNX models ready for NVIDIA TensorRT, and prove it.")


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


StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Refuse models that need repair (unsorted, unnamed, contradictory value_info, outputs of "
                     "unknown rank, unknown ops, weightless) instead of repairing them with a warning (exit 2).")]


@app.command(cls=PassOptionsCommand)
@transactional
def optimize(
    ctx: typer.Context,
    models: Annotated[list[Path], typer.Argument(metavar="MODEL", help="The ONNX model to optimize, or several, or folders of them (never modified).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the optimized model (one model).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", help="Existing folder for the optimized models, written as OUTPUT_DIR/<stem>.onnx (several models or folders).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="With --output-dir: optimize this many models at once, in worker processes.")] = 1,
    passes: Annotated[Optional[list[str]], typer.Option("--passes", help="Run only these passes (comma-separated).")] = None,
    skip: Annotated[Optional[list[str]], typer.Option("--skip", help="Leave out these passes (comma-separated).")] = None,
    input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape", help="Fix an input's shape: NAME:1x3x224x224 (repeatable).")] = None,
    dim: Annotated[Optional[list[str]], typer.Option("--dim", help="Fix a named dim everywhere: NAME=SIZE, e.g. batch=1 (repeatable).")] = None,
    dynamic: DynamicOpt = None,
    verify: Annotated[bool, typer.Option("--verify", help="Compare outputs with the original under onnxruntime.")] = False,
    rtol: Annotated[float, typer.Option(help="Relative tolerance for --verify.")] = 1e-4,
    atol: Annotated[float, typer.Option(help="Absolute tolerance for --verify.")] = 1e-5,
    trace: Annotated[Optional[str], typer.Option("--trace", help="Say which pass removed or replaced NODE, and why others declined it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Check the graph after every pass.")] = False,
    max_iterations: Annotated[int, typer.Option(min=1, help="Rounds of the pipeline at most.")] = 10,
    external_data: Annotated[Optional[bool], typer.Option("--external-data/--no-external-data", help="Write weights to OUTPUT.data (default: only when they pass ~1.8 GB).")] = None,
    strict: StrictOpt = False,
) -> int | None:
    """Optimize MODEL and write the result to OUTPUT (or many models into OUTPUT_DIR); pass
    options: see "Pass options"."""
    from fusekit import api
    from fusekit.shapes import parse_dims, parse_shape
    from fusekit.verify import Tolerance

    if output_dir is not None or len(models) > 1 or models[0].is_dir():
        from fusekit import cli_batch

        return cli_batch.optimize_paths(models, output, output_dir, jobs, trace, as_json, external_data, dict(
            passes=_split(passes), skip=_split(skip) or (), input_shapes=dict(parse_shape(s) for s in input_shape or []),
            dims=parse_dims(dim or []), dynamic=dynamic or (), verify=verify, tolerance=Tolerance(rtol, atol),
            max_iterations=max_iterations, debug=debug, strict=strict, **pass_options.given(ctx)), out, err)
    model = models[0]
    if output is None:
        raise InputError("give -o OUTPUT.onnx (one model) or --output-dir FOLDER (several models or folders)")
    if output.is_dir():
        raise InputError(f"-o {output}: names a folder; give a file name (or --output-dir {output} for several models)")
    if output.resolve() == model.resolve():
        raise InputError(f"{output}: is the input model; fusekit never overwrites its input, choose another path")
    reserve(output, "--output")
    reserve(output.with_name(output.name + ".data"), "--output")  # its weights, when written apart
    shapes = dict(parse_shape(s) for s in input_shape or [])
    dims = parse_dims(dim or [])
    with err.status("optimizing", spinner="dots") as status:
        result = api.run(model, passes=_split(passes), skip=_split(skip) or (), input_shapes=shapes, dims=dims,
                         dynamic=dynamic or (), **pass_options.given(ctx),
                         verify=verify, tolerance=Tolerance(rtol, atol), max_iterations=max_iterations,
                         debug=debug, trace=trace, progress=lambda text: status.update(text), strict=strict)
        status.update("saving")
        try:
            written = result.save(output, external_data=external_data)
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
    found = registry.discover().passes
    for event in report.events:
        if event.pass_name in found and found[event.pass_name].cls.stage == Stage.PLUGINS:
            out.print(f"plugin: {event.node}: {event.action}", soft_wrap=True, markup=False, highlight=False)
    if report.precision is not None:
        print_precision(report.precision)
    if trace is not None:
        print_trace(report, trace)
    out.print(f"wrote {', '.join(str(p) for p in written)}", markup=False, soft_wrap=True)



@app.command("passes")
def list_passes(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print as the README's Markdown table.")] = False,
) -> None:
    """List the passes found through entry points, in pipeline order."""
    from fusekit.manager import pipeline_key

    found = registry.discover()
    infos = sorted(found.passes.values(), key=lambda i: pipeline_key(i.cls))
    if markdown:
        sys.stdout.write(passes_markdown(infos))
        return
    if as_json:
        print(json.dumps([{"name": i.name, "stage": i.cls.stage.name.lower(), "priority": i.cls.priority,
                           "default": i.cls.enabled_by_default, "package": i.package,
                           "entry_point": i.entry_point, "summary": i.summary,
                           "options": [{"name": o.name, "flag": o.cli_flag, "type": o.type.__name__,
                                        "default": o.default, "help": o.help} for o in i.cls.options]}
                          for i in infos], indent=2))
        return
    print_passes(infos)
    for problem in found.problems:
        err.print(f"[yellow]warning:[/] {escape(problem)}", soft_wrap=True)


@app.command("check-trt")
def check_trt_cmd(
    model: Annotated[Path, typer.Argument(help="The ONNX model to check (never modified).")],
    table: Annotated[Optional[str], typer.Option("--table", help="Use this shipped support table (e.g. tensorrt-10.15) instead of the installed parser.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the unsupported nodes as JSON.")] = False,
    strict: StrictOpt = False,
) -> None:
    """Say which nodes TensorRT cannot parse, why, and what fusekit can replace them with.

    Exit 0 when the model parses as is, 1 when any node is unsupported, 2 on bad input."""
    from fusekit import api

    found = api.check_trt(model, table=table, strict=strict)
    if as_json:
        print(json.dumps({"model": str(model), "parses": not found, "checked_by": found.checked_by,
                          "unsupported": [u.to_dict() for u in found]}, indent=2))
    elif not found:
        out.print(f"{model}: every node parses (checked by the {found.checked_by})", markup=False, soft_wrap=True)
    else:
        out.print(f"{model}: {len(found)} node{'s' if len(found) > 1 else ''} TensorRT cannot parse "
                  f"(checked by the {found[0].checked_by}):", soft_wrap=True, markup=False, highlight=False)
        for u in found:
            op = u.op if is_default_domain(u) else f"{u.domain}.{u.op}"
            out.print(f"  {u.node} ({op}): {u.reason}", soft_wrap=True, markup=False, highlight=False)
            out.print(f"    substitution: {u.substitution or 'none (no rewrite or plugin in fusekit)'}",
                      soft_wrap=True, markup=False, highlight=False)
    if found:
        raise typer.Exit(1)


@app.command("lint")
@transactional
def lint_cmd(
    models: Annotated[Optional[list[Path]], typer.Argument(help="ONNX models to check (never modified without --in-place).")] = None,
    select: Annotated[Optional[list[str]], typer.Option("--select", help="Only these rule codes or prefixes, e.g. FK1,FK301 (replaces the config's).")] = None,
    ignore: Annotated[Optional[list[str]], typer.Option("--ignore", help="Leave out these rule codes or prefixes (added to the config's).")] = None,
    fail_on: Annotated[Optional[str], typer.Option("--fail-on", help="Exit 1 on findings of this severity or above: info, warning (default), error.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text, json, sarif or github.")] = "text",
    explain: Annotated[Optional[str], typer.Option("--explain", help="Say what rule CODE finds, why it matters for TensorRT, and how to fix it.")] = None,
    fix: Annotated[bool, typer.Option("--fix", help="Run the passes that remove fixable findings and write the result.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="--fix: where to write the fixed model (one model).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", help="--fix: folder for the fixed models (same file names).")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="--fix: overwrite each model (atomically).")] = False,
    exit_zero: Annotated[bool, typer.Option("--exit-zero", help="Exit 0 even with findings (input errors still exit 2).")] = False,
    strict: StrictOpt = False,
) -> int:
    """Check MODELs for what will make TensorRT fail or build badly (rules FKnnn; config: the
    tool.fusekit.lint table of the nearest pyproject.toml)."""
    from fusekit.lint import command

    if explain is not None:
        out.print(command.explain_text(explain), markup=False, highlight=False, soft_wrap=True)
        return 0
    outcome = command.run(models or [], command.LintOptions(
        select=select, ignore=ignore, fail_on=fail_on, fmt=fmt, fix=fix, output=output,
        output_dir=output_dir, in_place=in_place, strict=strict), out, err)
    if outcome.input_errors:
        return EXIT_CODES[InputError]
    return EXIT_CODES[FindingsError] if outcome.failing and not exit_zero else 0


# -- TensorRT engines ----------------------------------------------------------------

DynamicOpt = Annotated[Optional[list[str]], typer.Option(
    "--dynamic", help="Profile range of a dynamic dim: DIM=MIN:OPT:MAX (e.g. batch=1:8:32) or "
                      "INPUT:AXIS=MIN:OPT:MAX (repeatable; overrides ranges stored in the model).")]
WorkspaceOpt = Annotated[Optional[int], typer.Option("--workspace", help="Workspace memory-pool limit, MiB.")]
OptLevelOpt = Annotated[Optional[int], typer.Option("--opt-level", help="Builder optimization level, 0..5.")]
CcOpt = Annotated[Optional[list[str]], typer.Option(
    "--compute-capability", help="Target GPU architecture, e.g. 8.6 (repeatable; tensorrt_rtx).")]


ReportHtmlOpt = Annotated[Optional[Path], typer.Option(
    "--report-html", help="Write one self-contained HTML page: the ONNX graph coloured by engine layer, and the layer table.")]


def _check_report_html(path: Path | None) -> None:
    """Refuse --report-html before any build when Graphviz is missing or its folder is."""
    if path is not None:
        from fusekit import html_report

        html_report.check_available()
        html_report.check_output(path)


@app.command(cls=PassOptionsCommand)
@transactional
def build(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="The ONNX model (never modified).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the engine (and ENGINE.json).")] = None,
    no_optimize: Annotated[bool, typer.Option("--no-optimize", help="Build the model as it is.")] = False,
    dynamic: DynamicOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Convert the model to fp16 first (as optimize --precision fp16); strongly typed build.")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="Convert the model to bf16 first (as optimize --precision bf16); strongly typed build.")] = False,
    workspace: WorkspaceOpt = None,
    opt_level: OptLevelOpt = None,
    timing_cache: Annotated[Optional[Path], typer.Option("--timing-cache", help="Load and save the builder's timing cache here (tensorrt).")] = None,
    compute_capability: CcOpt = None,
    report: Annotated[bool, typer.Option("--report", help="Print every engine layer and the ONNX nodes it computes.")] = False,
    report_json: Annotated[Optional[Path], typer.Option("--report-json", help="Write the fused-layer report as JSON ('-': stdout).")] = None,
    triton_repo: Annotated[Optional[Path], typer.Option("--triton-repo", help="Write the engine into this Triton model repository (NAME/1/model.plan, NAME/config.pbtxt) instead of -o.")] = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="--triton-repo: the model's name there (default: MODEL's file stem).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Build even when the engine there was built from the same model, options and backend.")] = False,
    report_html: ReportHtmlOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Optimize MODEL (unless --no-optimize), build a TensorRT engine and say what fused."""
    from fusekit import api

    _check_report_html(report_html)
    plan = None
    if triton_repo is not None:
        from fusekit import triton

        if output is not None:
            raise InputError("-o and --triton-repo: give one (the engine goes to DIR/NAME/1/model.plan)")
        plan = triton.plan_path(triton_repo, model_name or model.stem)  # written after the build
    elif output is None:
        raise InputError("say where the engine goes: -o ENGINE or --triton-repo DIR")
    else:  # the Triton entry's folders are made after the build, so its files are not reserved here
        from fusekit.builder.reuse import report_path
        from fusekit.builder.sidecar import path_of

        for path in (output, path_of(output), report_path(output)):
            reserve(path, "--output")
    for path, option in ((report_json, "--report-json"), (timing_cache, "--timing-cache"),
                         (report_html, "--report-html")):
        reserve(path, option)
    with BuildDisplay() as display:
        result = api.build(model, output, optimize=not no_optimize, dynamic=dynamic or (), workspace_mib=workspace,
                           opt_level=opt_level, fp16=fp16, bf16=bf16, timing_cache=timing_cache,
                           compute_capabilities=_split(compute_capability) or (), **pass_options.given(ctx),
                           progress=display.progress, status=display.status, force=force, reuse_at=plan,
                           strict=strict)
    reused = set(result.written) if result.reused else set()
    if result.reused:
        err.print(f"reused {result.written[0]}: built from the same model, options and backend (--force rebuilds)",
                  soft_wrap=True, markup=False, highlight=False)
    if plan is not None:
        result.written = triton.write(result, plan, plan.parent.parent.name)
    if report_html is not None:
        from fusekit import html_report

        html_report.write(report_html, html_report.build_page(result.report))
    data = result.report.to_dict()
    if report_json is not None:
        _write_json(report_json, data)
    if report_json is not None and str(report_json) == "-":
        return
    if report:
        print_engine_layers(result.report)
    print_build_summary(result.report, [p for p in result.written if p not in reused])


@app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="First ONNX model (e.g. the raw export).")],
    b: Annotated[Path, typer.Argument(help="Second ONNX model (e.g. fusekit's output).")],
    optimize: Annotated[bool, typer.Option("--optimize", help="Run the optimize pipeline on both first.")] = False,
    dynamic: DynamicOpt = None,
    workspace: WorkspaceOpt = None,
    opt_level: OptLevelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    report_html: ReportHtmlOpt = None,
) -> None:
    """Build A and B and compare: engine layer counts, and ONNX nodes fused in only one of them."""
    from fusekit import api

    _check_report_html(report_html)
    with BuildDisplay() as display:
        comparison = api.compare_builds(a, b, optimize=optimize, dynamic=dynamic or (), workspace_mib=workspace,
                                        opt_level=opt_level, progress=display.progress, status=display.status)
    if report_html is not None:
        from fusekit import html_report

        html_report.write(report_html, html_report.compare_page(comparison))
    data = comparison.to_dict()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    print_comparison(data, a, b)


@app.command("inspect")
def inspect_cmd(
    engine: Annotated[Path, typer.Argument(help="An engine written by fusekit build (with ENGINE.json beside it).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Say what ENGINE was built for (its sidecar); refuse one this machine cannot load."""
    from fusekit import api

    result = api.inspect_engine(engine)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    print_engine_info(result, engine)


def _write_json(path: Path, data: dict) -> None:
    from fusekit.model_io import atomic_write

    text = json.dumps(data, indent=2) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    if not path.parent.is_dir():
        raise InputError(f"--report-json {path}: folder {path.parent} does not exist")
    atomic_write(path, lambda f: f.write(text.encode()))


PARSE_FAILURE_HINT = ("see each unsupported node and the substitution fusekit offers with `fusekit check-trt MODEL`, "
                      "then apply them with `fusekit optimize MODEL -o OUT --plugins auto`")


def _fail(message: str) -> None:
    print(f"fusekit: {message}", file=sys.stderr)  # one unwrapped line, whatever the terminal


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app and map errors to exit codes."""
    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except ParseFailedError as exc:
        _fail(f"error: {exc.summary}:")
        for problem in exc.problems:
            _fail(f"  {problem}")
        if exc.unsupported:
            _fail(f"hint: {PARSE_FAILURE_HINT}")
        return exit_code(exc)
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
