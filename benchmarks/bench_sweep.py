"""Sweep throughput, local process pool against Ray, and Ray's overhead per task (design.md "Scale-out").

(a) cells per minute for one grid (depths x widths x seeds of a small mlp on the teacher task), run
    in-process one cell after another (the baseline), on LocalExecutor(workers) and on a local Ray
    with num_cpus=workers; pools are warmed by one untimed pass, start-up is timed apart;
(b) one trivial task's round trip: a plain call, a LocalExecutor process-pool submit/result, and
    ray.get(f.remote()), each `--calls` times one after another.

(c) with --certify-cost: the issue-25 grid's cells against the bare pipeline without the certify step.

Usage: python -m benchmarks.bench_sweep [--reps 3] [--workers 2] [--calls 50] [--cell tiny|small] [--certify-cost].
Prints the machine, the versions, and the median (min - max) over the repetitions; the timing and
reporting helpers are benchmarks/harness.py's (`python -m benchmarks` runs the suite).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import format_figure, interleaved, machine_info, ratio, spread  # noqa: E402
from resx.core.config import RunConfig  # noqa: E402
from resx.scale.sweep import LocalExecutor, RayExecutor, SweepSpec, run_cell, run_sweep  # noqa: E402

CELLS = {  # the per-cell cost decides how much the executor's overhead matters
    "tiny": RunConfig(n=128, n_probe=128, n_test=128, n_pop=1024, epochs=1, finetune_epochs=1),
    "small": RunConfig(n=1000, n_probe=500, n_test=500, n_pop=8192, epochs=5, finetune_epochs=2),
}


def noop(config, cancel=None):
    return {"cell": config}


def throughput(spec: SweepSpec, executors: dict, reps: int) -> dict[str, list[float]]:
    """Cells per minute of each executor, interleaved (benchmarks.harness.interleaved): the executors take
    turns within each repetition, so that a change in the machine's load falls on all of them alike;
    the untimed warm-up starts the workers, imports torch and pays the first-call costs."""
    arms = {name: (lambda ex: lambda: run_sweep(spec, ex))(ex) for name, ex in executors.items()}
    times, first = interleaved(arms, reps)
    for cells in first.values():
        assert all(c["status"] == "done" for c in cells), [c["message"] for c in cells]
    return {name: [60 * len(spec.cells()) / t for t in ts] for name, ts in times.items()}


class Serial:
    """In this process, one cell after another: what a pool is measured against."""

    def map(self, fn, configs, on_result, cancel=None):
        for config in configs:
            on_result(config, fn(config, cancel), None)


def round_trips(executor, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        executor.map(noop, [{}], lambda *a: None)
        out.append(time.perf_counter() - start)
    return out


def certify_cost(reps: int) -> None:
    """(c) What a sweep cell costs against the bare pipeline without the certify step (issue 25): the
    4-cell demo-mlp grid depths 1,2 x widths 16,32, in this process, the arms interleaved. A cell
    (run_cell) adds the summary and keeps its checkpoints; --certify adds the certify step."""
    from resx.core.config import PRESETS
    from resx.runs.pipeline import run_pipeline
    cells = SweepSpec(PRESETS["demo-mlp"], depths=[1, 2], widths=[16, 32]).cells()
    arms = {"pipeline, certify off": lambda: [run_pipeline(c) for c in cells],
            "sweep cells (run_cell)": lambda: [run_cell(c.to_dict()) for c in cells],
            "sweep cells, --certify": lambda: [run_cell(c.replace(certify=True).to_dict()) for c in cells]}
    times, first = interleaved(arms, reps)
    assert all(p["cell"]["status"] == "done" for p in first["sweep cells (run_cell)"] + first["sweep cells, --certify"])
    print(f"(c) {len(cells)} demo-mlp cells (depths 1,2 x widths 16,32), one after another, {reps} interleaved reps")
    rates = {name: [60 * len(cells) / t for t in ts] for name, ts in times.items()}
    for name, xs in rates.items():
        print(f"    {name:<28}{format_figure(spread(xs, unit='cells/min'))}")
    bare, cell, certified = (times[name] for name in arms)
    print(f"    sweep cell / bare pipeline: {format_figure(ratio(cell, bare))} (target <= 1.2); "
          f"with --certify: {format_figure(ratio(certified, bare))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--cell", choices=sorted(CELLS), default="small")
    parser.add_argument("--certify-cost", action="store_true", help="only (c): sweep cells against the bare "
                                                                     "pipeline without the certify step")
    args = parser.parse_args()
    if args.certify_cost:
        torch.set_num_threads(1)
        certify_cost(args.reps)
        return
    import ray

    torch.set_num_threads(1)  # the serial baseline runs like one worker (one torch thread)
    spec = SweepSpec(CELLS[args.cell], depths=[1, 2], widths=[16, 32], seeds=[0, 1, 2])
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; python {m['python']}, torch {m['torch']}, "
          f"ray {ray.__version__}; load average {m['load_average']} at start; {args.reps} reps, "
          f"{args.workers} workers, 1 torch thread per cell")
    print(f"(a) {len(spec.cells())} cells of '{args.cell}' {CELLS[args.cell].to_dict()}")
    start = time.perf_counter()
    local = LocalExecutor(args.workers)
    local.map(noop, [{}] * args.workers, lambda *a: None)
    local_up = time.perf_counter() - start
    start = time.perf_counter()
    rayx = RayExecutor(num_cpus=args.workers)
    rayx.map(noop, [{}] * args.workers, lambda *a: None)
    ray_up = time.perf_counter() - start
    print(f"    start-up: local pool {local_up:.2f} s, local Ray {ray_up:.2f} s (to first answers)")
    rates = throughput(spec, {"serial, in-process": Serial(), f"LocalExecutor({args.workers})": local,
                              f"RayExecutor(num_cpus={args.workers})": rayx}, args.reps)
    for name, xs in rates.items():
        print(f"    {name:<28}{format_figure(spread(xs, unit='cells/min'))}")
    serial, on_local, on_ray = (statistics.median(xs) for xs in rates.values())
    print(f"    speed-up over serial: local {on_local / serial:.2f}x, Ray {on_ray / serial:.2f}x; "
          f"Ray / local {on_ray / on_local:.2f}")

    print(f"(b) round trip of a trivial task, {args.calls} calls one after another")
    plain = []
    for _ in range(args.calls):
        start = time.perf_counter()
        noop({})
        plain.append(time.perf_counter() - start)
    print(f"    plain call                  {format_figure(spread(plain, 1e6, 'us'))}")
    print(f"    LocalExecutor (process)     {format_figure(spread(round_trips(local, args.calls), 1e6, 'us'))}")
    print(f"    Ray remote task             {format_figure(spread(round_trips(rayx, args.calls), 1e6, 'us'))}")
    timed_cell = []
    for _ in range(max(3, args.reps)):
        start = time.perf_counter()
        run_cell(spec.cells()[0].to_dict())
        timed_cell.append(time.perf_counter() - start)
    print(f"    for scale: one '{args.cell}' cell in-process {format_figure(spread(timed_cell, 1e3, 'ms'))}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other work on the machine skews every figure)")
    local.shutdown()
    rayx.shutdown()


if __name__ == "__main__":
    main()
