"""What a benchmark run shows: the terminal table (rich), the JSON file, the chart (matplotlib).

    python benchmarks/report.py results/benchmark.json [--markdown] [--chart results/benchmark.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ORIGINAL = "original"


def console(stderr: bool = False) -> Console:
    """A console as wide as the terminal, or 200 columns when writing to a file or pipe."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200)


def write_json(data: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _mib(nbytes) -> str:
    if nbytes is None:
        return ""
    mib = nbytes / 2**20
    return f"{mib:.1f}" if mib < 10 else f"{mib:.0f}"


def _num(value) -> str:
    return "" if value is None else str(value)


def _diff(accuracy: dict | None, batch: str) -> str:
    if not accuracy:
        return ""
    if accuracy.get("status", "ok") != "ok":
        return "[red]fail[/]"
    value = accuracy.get("max_abs_diff", {}).get(batch)
    if value is None:
        return "n/a"
    text = "0" if value == 0 else f"{value:.0e}"
    return text if value <= 1e-4 else f"[red]{text}[/]"


def _layers(trt: dict | None, key: str) -> str:
    if not trt:
        return ""
    if trt.get("status") != "ok":
        return f"[red]{trt.get('status')}[/]"
    return _num(trt.get(key))


def _best(rows: list[dict], key) -> set:
    values = [key(r) for r in rows if r["status"] == "ok" and key(r) is not None]
    return {min(values)} if values else set()


def table(data: dict) -> Table:
    batches = [str(b) for b in data["options"]["batch_sizes"]]
    out = Table(title="fusekit benchmark (lowest of the tools in green)", title_justify="left")
    for column in ("model", "tool", "status", "time s", "peak RSS MiB", "nodes",
                   *(f"max|Δ| b={b}" for b in batches), "net layers", "engine layers", "compute layers"):
        out.add_column(column, justify="left" if column in ("model", "tool", "status") else "right",
                       no_wrap=column != "status", overflow="fold")
    by_model: dict[str, list[dict]] = {}
    for r in data["results"]:
        by_model.setdefault(r["model"], []).append(r)
    for model in data["models"]:
        rows = by_model.get(model["name"], [])
        trt = model.get("trt")
        size = f"file {_mib(model['file_bytes'])}" if model.get("file_bytes") else ""
        out.add_row(model["name"], ORIGINAL, model["status"] if model["status"] != "ok" else "",
                    "", size, _num(model.get("nodes")), *("" for _ in batches),
                    _layers(trt, "network_layers"), _layers(trt, "engine_layers"), _layers(trt, "compute_layers"),
                    style="dim")
        best = {"seconds": _best(rows, lambda r: r.get("seconds")),
                "peak_rss": _best(rows, lambda r: r.get("peak_rss")),
                "nodes": _best(rows, lambda r: r.get("nodes")),
                "engine": _best(rows, lambda r: _engine_layers(r)),
                "compute": _best(rows, lambda r: _engine_layers(r, "compute_layers"))}

        def mark(text: str, value, which: str) -> str:
            return f"[green]{text}[/]" if value is not None and value in best[which] else text

        for r in rows:
            ok = r["status"] == "ok"
            status = "ok" if ok else f"[red]{r['status']}[/]: {(r.get('error') or '')[:60]}"
            out.add_row(
                "", r["tool"], status,
                mark(f"{r['seconds']:.2f}", r["seconds"], "seconds") if ok else "",
                mark(_mib(r.get("peak_rss")), r.get("peak_rss"), "peak_rss"),
                mark(_num(r.get("nodes")), r.get("nodes"), "nodes") if ok else "",
                *(_diff(r.get("accuracy"), b) for b in batches),
                _layers(r.get("trt"), "network_layers"),
                mark(_layers(r.get("trt"), "engine_layers"), _engine_layers(r), "engine"),
                mark(_layers(r.get("trt"), "compute_layers"), _engine_layers(r, "compute_layers"), "compute"),
                end_section=r is rows[-1])
    return out


def targets_table(data: dict) -> Table:
    out = Table(title="issue 9 targets (fusekit)", title_justify="left")
    for column in ("target", "model", "fusekit", "limit", "met", "note"):
        out.add_column(column)
    for t in data.get("targets", []):
        met = "[green]yes[/]" if t["met"] else "[red]no[/]"
        value = t["fusekit"]
        text = f"{value:.1e}" if isinstance(value, float) and value < 0.01 else _num(value)
        out.add_row(t["target"], t["model"], text, _num(t["limit"]), met, t.get("note") or "")
    return out


def print_tables(data: dict, out: Console | None = None) -> None:
    out = out or console()
    out.print(table(data))
    if data.get("targets"):
        out.print(targets_table(data))


def _engine_layers(result: dict, key: str = "engine_layers") -> int | None:
    """The result's engine (or ``key``: compute) layer count, if TensorRT built it."""
    trt = result.get("trt") or {}
    return trt.get(key) if trt.get("status") == "ok" else None


def chart(data: dict, path: Path) -> Path:
    """Wall time (log scale) and engine layers relative to the original model, per tool,
    one group of bars per model; an x marks a tool that failed, timed out or ran out of memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m["name"] for m in data["models"]]
    tools = list(data["tools"])
    results = {(r["model"], r["tool"]): r for r in data["results"]}
    original = {m["name"]: _engine_layers(m) for m in data["models"]}

    def relative_layers(r: dict) -> float | None:
        mine, raw = _engine_layers(r), original.get(r["model"])
        return mine / raw if mine is not None and raw else None

    panels = [("wall time (s)", lambda r: r.get("seconds") if r["status"] == "ok" else None, "log")]
    if data.get("trt_backend"):
        panels.append(("engine layers / original's", relative_layers, "linear"))
    size = (max(8.0, 0.25 * len(models) * len(tools) + 2), 4.2 * len(panels))
    fig, axes = plt.subplots(len(panels), 1, figsize=size, squeeze=False)
    width = 0.8 / max(1, len(tools))
    for ax, (label, value, scale) in zip(axes[:, 0], panels):
        for i, tool in enumerate(tools):
            xs, ys, failed = [], [], []
            for j, model in enumerate(models):
                r = results.get((model, tool))
                v = value(r) if r else None
                x = j - 0.4 + width * (i + 0.5)
                if v is not None and v > 0:
                    xs.append(x)
                    ys.append(v)
                elif r is not None:
                    failed.append(x)
            ax.bar(xs, ys, width, label=tool, color=f"C{i}")
            if failed:
                ax.scatter(failed, [0.02] * len(failed), marker="x", color=f"C{i}", zorder=3,
                           transform=ax.get_xaxis_transform())
        names = models
        if scale == "linear":
            ax.axhline(1.0, color="black", linestyle="dotted", linewidth=1)
            names = [f"{m}\n(raw: {original[m]})" if original.get(m) else m for m in models]
        ax.set_yscale(scale)
        ax.set_ylabel(label)
        ax.set_xticks(range(len(models)), names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0, 0].legend(ncol=min(len(tools), 6), fontsize=8, loc="upper left", bbox_to_anchor=(0, 1.12))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown(data: dict) -> str:
    """One Markdown table per measure (models down, tools across), for the README."""
    tools = list(data["tools"])
    results = {(r["model"], r["tool"]): r for r in data["results"]}

    def accuracy(r: dict) -> str | None:
        acc = r.get("accuracy") or {}
        if acc.get("status") != "ok":
            return "check failed" if acc else None
        worst = max(acc["max_abs_diff"].values(), default=0.0)
        return "0" if worst == 0 else f"{worst:.0e}"

    batches = ", ".join(map(str, data["options"]["batch_sizes"]))
    # (title, first column: header and value for the original model, value for a tool's result)
    measures = [
        ("wall time, s", None, lambda r: f"{r['seconds']:.2f}"),
        ("peak RSS, MiB", ("file MiB", lambda m: f"{m['file_bytes'] / 2**20:.1f}"),
         lambda r: f"{r['peak_rss'] / 2**20:.0f}" if r.get("peak_rss") else None),
        ("nodes", ("original", lambda m: m.get("nodes")), lambda r: r.get("nodes")),
        ("TensorRT network / engine / compute layers", ("original", lambda m: _layer_pair(m.get("trt"))),
         lambda r: _layer_pair(r.get("trt"))),
        (f"largest absolute output difference (batch sizes {batches})", None, accuracy),
    ]
    if not data.get("trt_backend"):
        del measures[3]
    parts = []
    for title, first, value in measures:
        head = ["model", *([first[0]] if first else []), *tools]
        lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for model in data["models"]:
            row = [model["name"]]
            if first:
                row.append(str(first[1](model)) if model["status"] == "ok" else model["status"])
            for tool in tools:
                r = results.get((model["name"], tool))
                row.append("" if r is None else r["status"] if r["status"] != "ok" else str(value(r) or ""))
            lines.append("| " + " | ".join(row) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _layer_pair(trt: dict | None) -> str | None:
    if not trt:
        return None
    if trt.get("status") != "ok":
        return trt.get("status")
    return f"{trt.get('network_layers')} / {trt.get('engine_layers')} / {trt.get('compute_layers')}"


if __name__ == "__main__":
    import targets

    parser = argparse.ArgumentParser(description="Print the tables of a benchmark run again.")
    parser.add_argument("json", type=Path)
    parser.add_argument("--chart", type=Path, help="also draw the chart to this image")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README) instead")
    args = parser.parse_args()
    loaded = json.loads(args.json.read_text())
    if "fusekit" in loaded["tools"]:
        loaded["targets"] = targets.evaluate(loaded)  # as this checkout defines them
    if args.markdown:
        print(markdown(loaded), end="")
    else:
        print_tables(loaded)
    if args.chart:
        chart(loaded, args.chart)
