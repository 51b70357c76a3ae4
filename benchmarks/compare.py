"""Benchmark fusekit against its peers on real architectures, each tool in its own process.

    python benchmarks/compare.py                      # every zoo model and light model, every tool
    python benchmarks/compare.py --quick              # tiny models only: a smoke run
    python benchmarks/compare.py --models bert-base --tools fusekit,onnxslim,ort-basic

For every model and tool: wall time of the tool's own work (load and save included), peak
RSS of its process, node count, the largest output difference against the original under
onnxruntime at two batch sizes, and, when a TensorRT backend imports, network and engine
layer counts. A tool that fails, times out or runs out of memory on a model is reported as
such. Writes DIR/benchmark.json and DIR/benchmark.png and prints the table
(``python benchmarks/report.py DIR/benchmark.json`` prints it again).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
from rich.console import Console

import child
import models as model_set
import report
import targets
import tools

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
SCHEMA = "fusekit.benchmark/1"
EXPORT_TIMEOUT = 1800.0  # seconds to export one zoo model (torch), whatever --timeout says


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated model names or groups (zoo, tiny, light, all); "
                        "default: zoo and light models (tiny ones with --quick)")
    parser.add_argument("--tools", default=",".join(tools.TOOLS),
                        help=f"comma-separated, from {', '.join(tools.TOOLS)} (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per job before it is killed")
    parser.add_argument("--quick", action="store_true", help="tiny models only (a smoke run)")
    parser.add_argument("--batch-sizes", default="1,3", help="two batch sizes for the output check")
    parser.add_argument("--max-rss-mb", type=int, default=child.default_max_rss() >> 20,
                        help="kill a job above this resident memory and report it as out of memory")
    parser.add_argument("--no-trt", action="store_true", help="skip the TensorRT layer counts")
    parser.add_argument("--no-chart", action="store_true", help="skip the chart image")
    parser.add_argument("--keep-outputs", action="store_true", help="keep each tool's optimized model")
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tools if t not in tools.TOOLS]
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(tools.TOOLS)}")
    try:
        args.models = model_set.select(args.models.split(",") if args.models else None, args.quick)
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    return args


class Bench:
    """One run: the jobs it starts, and the JSON it fills (written after every model)."""

    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args, self.console = args, console
        self.out = args.out.resolve()  # absolute: each job runs in its own folder
        self.work = self.out / "work"
        self.models_dir = self.out / "models"
        for folder in (self.work, self.models_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.json_path = self.out / "benchmark.json"
        self.data = {
            "schema": SCHEMA,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "memory_bytes": _memory_bytes(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "options": {"timeout": args.timeout, "max_rss_bytes": args.max_rss_mb << 20,
                        "batch_sizes": args.batch_sizes, "quick": args.quick, "trt": not args.no_trt},
            "tools": {t: {"command": tools.COMMANDS[t], "version": None} for t in args.tools},
            "fusekit_commit": _git_commit(),
            "trt_backend": None,
            "models": [],
            "results": [],
        }

    def job(self, script: str, *argv, name: str) -> child.Outcome:
        return child.python_job(HERE / script, *argv, result=self.work / f"{name}.json",
                                log=self.work / f"{name}.log", timeout=self.args.timeout,
                                max_rss=self.args.max_rss_mb << 20)

    def run(self) -> dict:
        if not self.args.no_trt:
            probe = self.job("trt_layers.py", "probe", name="trt-probe")
            if probe.ok:
                self.data["trt_backend"] = f"{probe.result['backend']} {probe.result['version']}"
            else:
                self.console.print(f"no TensorRT layer counts: {probe.error}")
        for model in self.args.models:
            self.bench_model(model)
            self.save()
        self.data["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        self.data["targets"] = targets.evaluate(self.data) if "fusekit" in self.args.tools else []
        self.save()
        return self.data

    def save(self) -> None:
        report.write_json(self.data, self.json_path)

    def bench_model(self, model: model_set.Model) -> None:
        entry = {"name": model.name, "source": model.source, "status": "ok", "error": None}
        self.data["models"].append(entry)
        try:
            path = model_set.materialize(model, self.models_dir, max(self.args.timeout, EXPORT_TIMEOUT))
        except RuntimeError as exc:
            entry.update(status="failed", error=str(exc))
            self.console.print(f"[red]{model.name}: {exc}[/]")
            return
        entry.update(path=str(path), file_bytes=path.stat().st_size, nodes=_count_nodes(path))
        folder = self.work / model.name
        shutil.rmtree(folder, ignore_errors=True)
        ref = folder / "reference"
        ref.mkdir(parents=True)
        batches = ",".join(map(str, self.args.batch_sizes))
        reference = self.job("accuracy.py", "reference", path, ref, batches, name=f"{model.name}/reference")
        entry["reference"] = {"status": reference.status, "error": reference.error,
                              "batches": reference.result.get("batches"),
                              "fixed_batch": reference.result.get("fixed_batch")}
        entry["trt"] = self.trt(path, f"{model.name}/original-trt")
        self.console.print(f"[bold]{model.name}[/] ({entry['file_bytes'] / 2**20:.1f} MiB, {entry['nodes']} nodes)"
                           f"{_trt_text(entry['trt'])}")
        for tool in self.args.tools:
            self.data["results"].append(self.bench_tool(model, path, tool, folder, reference.ok))
            self.save()
        if not self.args.keep_outputs:
            shutil.rmtree(ref, ignore_errors=True)

    def bench_tool(self, model: model_set.Model, path: Path, tool: str, folder: Path, have_reference: bool) -> dict:
        out = folder / f"{tool}.onnx"
        name = f"{model.name}/{tool}"
        run = self.job("tools.py", tool, path, out, name=name)
        result = {"model": model.name, "tool": tool, "status": run.status, "error": run.error,
                  "seconds": run.result.get("seconds") if run.ok else None, "process_seconds": run.seconds,
                  "peak_rss": run.peak_rss, "rss_after_import": run.result.get("rss_after_import"),
                  "nodes": None, "output_bytes": None, "accuracy": None, "trt": None}
        if run.result.get("version"):
            self.data["tools"][tool]["version"] = run.result["version"]
        if run.ok:
            result["output_bytes"] = sum(p.stat().st_size for p in folder.glob(f"{tool}.onnx*"))
            result["nodes"] = _count_nodes(out)
            if have_reference:
                check = self.job("accuracy.py", "check", out, folder / "reference", name=f"{name}-check")
                result["accuracy"] = {"status": check.status, "error": check.error, **check.result}
            result["trt"] = self.trt(out, f"{name}-trt")
        self.console.print(_progress_line(result))
        if not self.args.keep_outputs:
            for p in folder.glob(f"{tool}.onnx*"):
                p.unlink()
        return result

    def trt(self, path: Path, name: str) -> dict | None:
        if self.data["trt_backend"] is None:
            return None
        build = self.job("trt_layers.py", "build", path, max(self.args.batch_sizes), name=name)
        return {"status": build.status, "error": build.error, "peak_rss": build.peak_rss, **build.result}


def _count_nodes(path: Path) -> int | None:
    """Nodes of the model, subgraphs and local functions included (None if it does not load)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None

    def count(graph: onnx.GraphProto) -> int:
        total = len(graph.node)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    total += count(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    total += sum(count(g) for g in attr.graphs)
        return total

    return count(model.graph) + sum(len(f.node) for f in model.functions)


def _trt_text(trt: dict | None) -> str:
    if not trt:
        return ""
    if trt["status"] != "ok":
        return f", TensorRT: [red]{trt['status']}[/] {trt.get('error') or ''}"[:200]
    return (f", TensorRT: {trt['network_layers']} network / {trt['engine_layers']} engine / "
            f"{trt.get('compute_layers')} compute layers")


def _progress_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"  {r['tool']:<14} [red]{r['status']}[/] after {r['process_seconds']:.1f} s: {r['error']}"
    acc = r.get("accuracy") or {}
    diffs = acc.get("max_abs_diff") or {}
    diff = ", ".join(f"b{b} {d:.0e}" for b, d in diffs.items()) if acc.get("status") == "ok" \
        else f"[red]check {acc.get('status')}[/]: {acc.get('error')}" if acc else ""
    return (f"  {r['tool']:<14} {r['seconds']:7.2f} s {r['peak_rss'] / 2**20:7.0f} MiB {r['nodes']} nodes, "
            f"{diff}{_trt_text(r.get('trt'))}")


def _git_commit() -> str | None:
    """The fusekit commit measured, with "+changes" when the work tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fusekit", "passes", "plugins"], cwd=HERE.parent,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = report.console(stderr=True)
    start = time.perf_counter()
    data = Bench(args, console).run()
    report.print_tables(data, report.console())
    written = [args.out / "benchmark.json"]
    if not args.no_chart:
        try:
            written.append(report.chart(data, args.out / "benchmark.png"))
        except ImportError as exc:
            console.print(f"no chart: {exc} (pip install matplotlib)")
    console.print(f"wrote {', '.join(map(str, written))} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
