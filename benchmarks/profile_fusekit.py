"""Where fusekit spends time and memory on one model: cProfile, tracemalloc and RSS by stage.

    python benchmarks/profile_fusekit.py MODEL.onnx [--top 25] [--tracemalloc]

Runs ``fusekit optimize MODEL -o TMP`` in this process three ways: under cProfile (top
functions by own and by cumulative time), under a sampler that reads the resident set
every few milliseconds and charges it to the fusekit function running at that moment
(peak RSS per stage: load, each pass, check, export, save), and, with ``--tracemalloc``,
under tracemalloc (the lines holding the most Python/numpy memory at the peak; protobuf's
C++ allocations are not traced, the RSS sampler sees them).
"""

from __future__ import annotations

import argparse
import cProfile
import contextlib
import io
import pstats
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from child import memory

_OURS = ("/fusekit/", "/passes/")
_SKIP = {"main", "optimize", "run", "__call__", "invoke", "_main", "<module>"}  # CLI and click plumbing


def optimize(model: Path) -> None:
    from fusekit.cli import main

    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        code = main(["optimize", str(model), "-o", str(Path(folder) / "out.onnx")])
    if code:
        raise SystemExit(f"fusekit optimize exited with {code}")


def stage_of(frame) -> str:
    """The two outermost fusekit functions on the stack under the CLI, and the pass running
    if any, e.g. ``run > PassManager.run > DedupeInitializersPass.run``."""
    chain = []
    while frame is not None:
        code = frame.f_code
        if any(part in code.co_filename for part in _OURS):
            owner = frame.f_locals.get("self")
            chain.append(("" if owner is None else type(owner).__name__, code.co_name))
        frame = frame.f_back
    chain.reverse()
    names = [f"{owner}.{name}" if owner else name for owner, name in chain if name not in _SKIP or owner]
    stage = names[:2]
    running = next((f"{owner}.{name}" for owner, name in chain if owner.endswith("Pass")), None)
    if running and running not in stage:
        stage.append(running)
    return " > ".join(stage) or "(outside fusekit)"


def rss_by_stage(model: Path, interval: float = 0.005) -> tuple[list[tuple[str, int, float]], int]:
    """(stage, peak RSS, seconds sampled in it) in order of first appearance, and the overall peak."""
    main_id = threading.get_ident()
    stages: dict[str, list] = {}
    done = threading.Event()

    def sample() -> None:
        last = time.perf_counter()
        while not done.is_set():
            frame = sys._current_frames().get(main_id)
            now = time.perf_counter()
            if frame is not None:
                entry = stages.setdefault(stage_of(frame), [0, 0.0])
                entry[0] = max(entry[0], memory()[0])
                entry[1] += now - last
            last = now
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        optimize(model)
    finally:
        done.set()
        thread.join()
    return [(s, peak, seconds) for s, (peak, seconds) in stages.items()], memory()[1]


def profile_time(model: Path, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.runcall(optimize, model)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def profile_python_memory(model: Path, top: int) -> str:
    """The Python/numpy allocations alive at the traced peak, by allocating line and the
    fusekit function that asked for them (a snapshot is taken at each new peak)."""
    tracemalloc.start(25)
    best: list = [0, None]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            current = tracemalloc.get_traced_memory()[0]
            if current > best[0] + (16 << 20):
                best[:] = [current, tracemalloc.take_snapshot()]
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        optimize(model)
    finally:
        done.set()
        thread.join()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    lines = [f"tracemalloc: peak {peak / 2**20:.0f} MiB traced; at the last snapshot near it "
             f"({best[0] / 2**20:.0f} MiB):"]
    if best[1] is not None:
        for stat in best[1].statistics("traceback")[:top]:
            ours = next((f for f in reversed(stat.traceback) if any(p in f.filename for p in _OURS)), None)
            where = f"{Path(ours.filename).name}:{ours.lineno}" if ours else "-"
            lines.append(f"  {stat.size / 2**20:8.1f} MiB  {stat.traceback[-1]}  (from {where})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slow)")
    args = parser.parse_args()
    import fusekit.cli  # noqa: F401  imports are not what is measured

    print(f"after imports: {memory()[1] / 2**20:.0f} MiB resident (high-water mark)")
    stages, peak = rss_by_stage(args.model)
    print(f"\nresident memory by stage (model file {args.model.stat().st_size / 2**20:.0f} MiB, "
          f"peak {peak / 2**20:.0f} MiB):")
    for stage, rss, seconds in stages:
        print(f"  {rss / 2**20:8.0f} MiB  {seconds:6.2f} s  {stage}")
    print("\n" + profile_time(args.model, args.top))
    if args.tracemalloc:
        print(profile_python_memory(args.model, args.top))


if __name__ == "__main__":
    main()
