"""What the ``fusekit`` commands print: report tables, traces, build progress (rich)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from fusekit.report import OptimizeReport

out = Console()
err = Console(stderr=True)


def print_report(report: OptimizeReport) -> None:
    before, after = report.before, report.after
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    out.print(f"fusekit optimize: {report.source}", markup=False, highlight=False, soft_wrap=True)
    summary = Table()
    summary.add_column("")
    summary.add_column("before", justify="right")
    summary.add_column("after", justify="right")
    summary.add_row("nodes", str(before.nodes), str(after.nodes))
    summary.add_row("weights", size(before.weight_bytes), size(after.weight_bytes))
    for op in sorted(set(before.ops) | set(after.ops)):
        b, a = before.ops.get(op, 0), after.ops.get(op, 0)
        if a != b:
            summary.add_row(Text(f"  {op}"), str(b), str(a))
    out.print(summary)
    passes = Table(title=f"passes ({report.iterations} rounds"
                         f"{'' if report.converged else ', did not converge'}, {report.seconds:.2f} s)",
                   title_justify="left")
    for column in ("pass", "rewrites", "removed", "added", "time"):
        passes.add_column(column, justify="left" if column == "pass" else "right", no_wrap=column != "pass")
    for p in report.passes:
        origin = "" if p.package == "fusekit" else f" ({p.package})"
        passes.add_row(Text(p.name + origin), str(p.rewrites), str(p.nodes_removed), str(p.nodes_added),
                       f"{p.seconds * 1000:.1f} ms")
    out.print(passes)
    if report.verify is not None:
        v = report.verify
        out.print(f"verify: outputs match (max abs diff {v.max_abs_diff:.3g}, {v.where()})", markup=False)


def print_passes(infos) -> None:
    """``fusekit passes``: the pipeline, one line per pass and its summary below it,
    wrapped at word boundaries (never cut) whatever the terminal's width."""
    width = max((len(i.name) for i in infos), default=0)
    row = "{:<%d}  {:<8} {:>3}  {:<3}  {}" % width
    out.print(Text(row.format("pass (pipeline order)", "stage", "pri", "on", "package"), style="bold"))
    for i in infos:
        out.print(Text(row.format(i.name, i.cls.stage.name.lower(), i.cls.priority,
                                  "on" if i.cls.enabled_by_default else "off", i.package)))
        out.print(Padding(Text(i.summary, style="dim"), (0, 0, 0, 4), expand=False))


def passes_markdown(infos) -> str:
    """``fusekit passes --markdown``: the pipeline as the README's Markdown table (made from the
    registry only: name, stage, priority, on by default, and the docstring's first sentence)."""
    rows = ["| pass | stage | priority | default | what it rewrites |", "|---|---|---|---|---|"]
    for i in infos:
        summary = i.summary.replace("|", "\\|")
        rows.append(f"| {i.name} | {i.cls.stage.name.lower()} | {i.cls.priority} | "
                    f"{'on' if i.cls.enabled_by_default else 'off'} | {summary} |")
    return "\n".join(rows) + "\n"


def print_trace(report: OptimizeReport, node: str) -> None:
    """``--trace NODE``: each pass's verdict on the node as it ran, in pipeline order, then its fate."""
    for step in report.trace_steps:
        verdict = "" if step.verdict == "rewrote" else f" {step.verdict}"
        out.print(f"trace {node}: round {step.round}: {step.pass_name}{verdict}: {step.message}",
                  markup=False, highlight=False, soft_wrap=True)
    if not report.trace_steps:
        out.print(f"trace {node}: no pass touched or considered it", markup=False, highlight=False, soft_wrap=True)
    out.print(f"trace {node}: fate: {report.trace_fate()}", markup=False, highlight=False, soft_wrap=True)


def size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


class BuildDisplay:
    """Build status and the builder's progress phases, on stderr when it is a terminal."""

    def __init__(self) -> None:
        self.live = err.is_terminal
        self.bars = None
        self.tasks: dict[str, object] = {}

    def __enter__(self) -> "BuildDisplay":
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err, transient=True)
            self.bars.__enter__()
            self.tasks["status"] = self.bars.add_task("starting", total=None)
        return self

    def __exit__(self, *exc) -> None:
        if self.bars is not None:
            self.bars.__exit__(*exc)

    def status(self, text: str) -> None:
        if self.bars is not None:
            self.bars.update(self.tasks["status"], description=text)

    def progress(self, event) -> None:
        if self.bars is None:
            return
        if event.kind == "start":
            indent = "  " * (1 + sum(1 for k in self.tasks if k != "status"))
            self.tasks[event.phase] = self.bars.add_task(indent + event.phase, total=event.steps or None)
        elif event.kind == "step" and event.phase in self.tasks:
            self.bars.update(self.tasks[event.phase], completed=event.step + 1)
        elif event.kind == "finish" and event.phase in self.tasks:
            self.bars.remove_task(self.tasks.pop(event.phase))


def print_build_summary(report, written: list[Path]) -> None:
    for note in report.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    engine = "?" if report.engine_layers is None else str(report.engine_layers)
    compute = "" if report.compute_layers is None else f" ({report.compute_layers} computing)"
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in report.seconds.items())
    out.print(f"{report.backend} {report.backend_version}: {len(report.onnx_ops)} ONNX nodes -> "
              f"{len(report.network)} network layers -> {engine} engine layers{compute} [{timing}]", soft_wrap=True,
              markup=False)
    if report.engine is None:
        out.print("the builder's log had no layer record; engine layers unknown")
    if written:
        out.print(f"wrote {', '.join(str(p) for p in written)} ({size(report.engine_bytes)} engine)", soft_wrap=True,
                  markup=False)


def print_engine_layers(report) -> None:
    _layer_table(f"engine layers of {report.model} (from the {report.layer_source or '?'})",
                 report.engine or [], report.ops_of)
    unmapped = report.unmapped_nodes()
    if unmapped:
        out.print(f"ONNX nodes in no engine layer ({len(unmapped)}; folded or removed by TensorRT): "
                  f"{_names(unmapped)}", soft_wrap=True, markup=False)


def _layer_table(title: str, layers, ops_of=None) -> None:
    table = Table(title=Text(title), title_justify="left")
    for column in ("#", "type", "precision", "ONNX ops", "ONNX nodes"):
        table.add_column(column, justify="right" if column == "#" else "left")
    for i, layer in enumerate(layers):
        if layer.kind != "sync":
            table.add_row(str(i), Text(layer.type), ",".join(layer.precisions),
                          Text("+".join(ops_of(layer)) if ops_of else ""), Text(_names(layer.onnx_nodes, limit=3)))
    out.print(table)
    syncs = sum(layer.kind == "sync" for layer in layers)
    if syncs:
        out.print(f"(and {syncs} stream signal/wait layers, not shown)")


def _names(names: list[str], limit: int = 8) -> str:
    if not names:
        return "-"
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _num(value) -> str:
    return "?" if value is None else str(value)


def print_comparison(data: dict, a: Path, b: Path) -> None:
    """``fusekit compare``: layer counts of A and B, and the nodes fused in only one."""
    table = Table(title=f"fusekit compare, {data['backend']['name']} {data['backend']['version']}",
                  title_justify="left")
    for column in ("", "A", "B", "B - A"):
        table.add_column(column, justify="left" if not column else "right")
    for key, label in (("onnx_nodes", "ONNX nodes"), ("network_layers", "network layers"),
                       ("engine_layers", "engine layers"), ("compute_layers", "  compute layers")):
        va, vb = data["a"][key], data["b"][key]
        table.add_row(label, _num(va), _num(vb), "" if va is None or vb is None else f"{vb - va:+d}")
    out.print(table)
    out.print(f"A = {a}\nB = {b}", soft_wrap=True, markup=False)
    for key, label in (("fused_only_in_a", "fused in A only"), ("fused_only_in_b", "fused in B only"),
                       ("nodes_only_in_a", "nodes of A not in B"), ("nodes_only_in_b", "nodes of B not in A")):
        nodes = data[key]
        out.print(f"{label} ({len(nodes)}): {_names(nodes)}", soft_wrap=True, markup=False)


def print_engine_info(result, engine: Path) -> None:
    """``fusekit inspect``: what the engine was built for (its sidecar), and its layers."""
    side = result.sidecar
    cc = side["compute_capability"]
    table = Table(title=Text(f"fusekit inspect: {engine}"), title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("backend", f"{side['backend'].get('name')} {side['backend'].get('version')}")
    table.add_row("compute capability", ", ".join(cc.get("targets") or ["unknown"])
                  + (" or later" if cc.get("or_later") else "") + f" ({cc.get('chosen_by', '?')})")
    table.add_row("precision", str(side.get("precision")))
    for i, profile in enumerate(side.get("profiles") or []):
        for entry in profile:
            table.add_row(f"profile {i}: {entry['input']}",
                          " / ".join("x".join(map(str, entry[k])) for k in ("min", "opt", "max")))
    source = side.get("source_model") or {}
    table.add_row("source model", Text(f"{source.get('path')} (sha256 {str(source.get('sha256'))[:12]}…"
                  f"{', optimized by fusekit' if source.get('optimized') else ''})"))
    table.add_row("engine", f"{size(side['engine'].get('bytes') or 0)}, built {side.get('created')} "
                  f"by fusekit {side.get('fusekit_version')}")
    for note in result.notes:  # before the table: "what follows is its sidecar" and the like
        out.print(f"note: {note}", soft_wrap=True, markup=False)
    out.print(table)
    if result.layers is not None:
        _layer_table(f"engine layers ({len(result.layers)}, from the engine inspector)", result.layers)


def print_precision(summary: dict) -> None:
    """The fp16/bf16 conversion: counts, each node kept in FP32 and why, each output's error."""
    out.print(f"precision: {summary['type']} ({summary['converted_nodes']} nodes converted, "
              f"{summary['kept_nodes']} kept in FP32, {summary['casts_added']} Casts added; I/O {summary['io']}"
              + (f"; ranges observed on {summary['data_samples']} samples" if summary.get("data_samples") else "")
              + ")",
              soft_wrap=True, markup=False, highlight=False)
    for kept in summary["kept"]:
        out.print(f"  kept FP32: {kept['node']} ({kept['op']}): {kept['reason']}",
                  soft_wrap=True, markup=False, highlight=False)
    for name, error in summary.get("outputs", {}).items():
        out.print(f"  output {name}: max |error| {error['max_abs_error']:.3g}, relative "
                  f"{error['relative_error']:.3g} (on {summary['error_inputs']})",
                  soft_wrap=True, markup=False, highlight=False)
    if summary.get("error_skipped"):
        out.print(f"  output error not measured: {summary['error_skipped']}", soft_wrap=True, markup=False,
                  highlight=False)
