"""How fusekit's optimization time grows with graph size: generated graphs of 10k, 30k and
100k nodes (or the sizes given), each optimized in a process of its own.

    python benchmarks/scaling.py                  # 10000,30000,100000 nodes
    python benchmarks/scaling.py --nodes 1000,3000 --repeat 3

The graph is a chain of blocks of five nodes, each with its own small weights: ``Add``
(weight), ``Relu``, ``Identity`` (removed), ``Mul`` (weight), ``Transpose`` (perm 1,0,2,
its own inverse: the transpose passes move and cancel them), so the passes have work
everywhere, not only a graph to walk. Prints a table: nodes before and after, seconds
(load, passes, checks and save: ``fusekit optimize`` without the interpreter start),
microseconds per node, and the ratio to the smallest size's time per node (1.0 =
linear growth).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 8  # elements per weight: the graph, not the weights, is what grows


def chain_model(nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A chain of about ``nodes`` nodes (a multiple of 10) of the kinds described above."""
    rng = np.random.default_rng(seed)
    made, inits, x = [], [], "x"
    for b in range(max(1, nodes // 5)):
        w, s = f"w{b}", f"s{b}"
        inits += [numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), w),
                  numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), s)]
        made += [helper.make_node("Add", [x, w], [f"a{b}"]), helper.make_node("Relu", [f"a{b}"], [f"r{b}"]),
                 helper.make_node("Identity", [f"r{b}"], [f"i{b}"]), helper.make_node("Mul", [f"i{b}", s], [f"m{b}"]),
                 helper.make_node("Transpose", [f"m{b}"], [f"t{b}"], perm=[1, 0, 2])]
        x = f"t{b}"
    made.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(made, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run_one(path: Path) -> dict:
    """Optimize ``path`` in this process; seconds of fusekit's own work and node counts."""
    from fusekit import api

    start = time.perf_counter()
    result = api.run(path)
    result.save(path.with_name("out.onnx"))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "before": result.report.before.nodes, "after": result.report.after.nodes}


def measure(nodes: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fusekit-scaling-") as tmp:
        path = Path(tmp, "chain.onnx")
        onnx.save(chain_model(nodes), path)
        runs = []
        for _ in range(repeat):
            out = subprocess.run([sys.executable, __file__, "--one", str(path)], capture_output=True, text=True,
                                 check=True)
            runs.append(json.loads(out.stdout.splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    return {"nodes": nodes, **best, "all_seconds": [r["seconds"] for r in runs]}


def table(rows: list[dict]) -> str:
    base = rows[0]["seconds"] / rows[0]["before"]
    lines = ["| nodes | after | seconds | µs per node | vs linear |", "|---|---|---|---|---|"]
    for r in rows:
        per = r["seconds"] / r["before"]
        lines.append(f"| {r['before']} | {r['after']} | {r['seconds']:.2f} | {per * 1e6:.0f} | {per / base:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="10000,30000,100000", help="comma-separated graph sizes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (the fastest is shown)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: one run in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    rows = []
    for n in (int(v) for v in args.nodes.split(",")):
        rows.append(measure(n, args.repeat))
        print(f"{n} nodes: {rows[-1]['seconds']:.2f} s", file=sys.stderr)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
