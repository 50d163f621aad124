"""Benchmarks: each fast path of resx timed beside the baseline it replaces, in one process.

`python -m benchmarks [--quick] [--json] [--only NAME,...] [--reps N] [--threads T]`, the same as
`python -m resx bench ...` from a checkout.

A ratio is measured side by side: one untimed warm-up of each arm, then `reps` rounds in which
every arm runs once, the order reversed every other round (A B, B A, ...), so that a change in
the machine's load falls on both alike. A time is the median over the rounds with its min - max;
a ratio is baseline / candidate of the medians, with the min - max of the per-round ratios.
Every report states the machine, the versions, the threads and the load (style.md "Output").

  name                    headline                                                    target
  trainer_overhead.ratio  resx.core.train throughput / a bare PyTorch loop's           >= 0.95
  data_pipeline.ratio     iterate_batches(augment=True) against a torchvision
                          DataLoader with PIL transforms on CIFAR-10 files: speed-up  >= 5
  all_positions.ratio     margins at 10 positions in one pass against one at a time   >= 3
  per_sample_stats.ratio  closed-form per-sample statistics against an autograd loop  >= 20
  own_network.ratio       resx.diagnose on torchvision resnet18 (32x32, 512 probe
                          points): all 9 positions in one pass / one at a time       >= 3
  panel_render.ms         the Lab's live panels over a 10,000-step history, to JSON   <= 150
  server_memory.mb        peak RSS (MiB) of `streamlit run app.py` running demo-mlp   <= 1024

One torch thread by default: on a 2-core machine whose other core is busy, two OpenMP threads
make small matrix products stall (measured ~400x slower for a (500, 64) x (64, 64) product).
glibc's malloc thresholds are pinned, so that a figure does not depend on which benchmarks ran
before it (`harness.pin_allocator`). Each area's benchmarks live in their own file beside this one:
bench_train.py, bench_theory.py, bench_app.py (the ones that drive Streamlit), bench_sweep.py
(a script of its own: local pool against Ray).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from resx.core.config import ConfigError

from .bench_app import bench_panel_render, bench_server_memory
from .bench_theory import bench_all_positions, bench_own_network, bench_per_sample_stats
from .bench_train import bench_data_pipeline, bench_trainer_overhead
from .harness import FULL, QUICK, Sizes, format_figure, machine_info, pin_allocator

# ---------------------------------------------------------------------------------------------
# the suite

@dataclass(frozen=True)
class Benchmark:
    name: str
    unit: str
    target: str                 # "OP VALUE", OP one of >=, <=
    run: Callable[[Sizes, int], tuple[float, dict]]


BENCHMARKS = {b.name: b for b in (
    Benchmark("trainer_overhead.ratio", "x (throughput resx / bare)", ">= 0.95", bench_trainer_overhead),
    Benchmark("data_pipeline.ratio", "x (speed-up)", ">= 5", bench_data_pipeline),
    Benchmark("all_positions.ratio", "x (speed-up)", ">= 3", bench_all_positions),
    Benchmark("per_sample_stats.ratio", "x (speed-up)", ">= 20", bench_per_sample_stats),
    Benchmark("own_network.ratio", "x (speed-up)", ">= 3", bench_own_network),
    Benchmark("panel_render.ms", "ms", "<= 150", bench_panel_render),
    Benchmark("server_memory.mb", "MiB", "<= 1024", bench_server_memory),
)}


def select(only: str | None) -> list[str]:
    """Benchmark names from 'a,b' (full names or the part before the dot); all when None."""
    if not only:
        return list(BENCHMARKS)
    short = {name.split(".")[0]: name for name in BENCHMARKS}
    out = []
    for part in (p.strip() for p in only.split(",") if p.strip()):
        name = part if part in BENCHMARKS else short.get(part)
        if name is None:
            raise ConfigError("--only", part, f"comma-separated names from {', '.join(BENCHMARKS)}")
        out.append(name)
    return out


def met(value: float, target: str) -> bool:
    op, bound = target.split()
    return value >= float(bound) if op == ">=" else value <= float(bound)


def run_suite(names: list[str], quick: bool = False, reps: int | None = None, threads: int = 1,
              on_result: Callable[[str, dict], None] | None = None) -> dict:
    """Run the named benchmarks; each failure is caught and reported in its entry, and the rest go on.
    Returns {"machine", "settings", "benchmarks": {name: {headline, unit, target, met, raw[, error]}}}."""
    if threads > 0:
        torch.set_num_threads(threads)
    sizes = QUICK if quick else FULL
    reps = reps or (3 if quick else 5)
    allocator = pin_allocator()
    out = {"machine": machine_info(),
           "settings": {"mode": "quick" if quick else "full", "reps": reps, "warm_up": 1, "interleaved": True,
                        "min_round_s": 0.05, "allocator": allocator,
                        "sizes": {k: v for k, v in sizes.__dict__.items()}},
           "benchmarks": {}}
    for name in names:
        bench = BENCHMARKS[name]
        start = time.perf_counter()
        entry = {"headline": None, "unit": bench.unit, "target": bench.target, "met": None, "raw": {}}
        try:
            headline, entry["raw"] = bench.run(sizes, reps)
            entry["headline"], entry["met"] = float(headline), met(float(headline), bench.target)
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc(limit=6)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        out["benchmarks"][name] = entry
        if on_result:
            on_result(name, entry)
    out["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return out


def format_entry(name: str, entry: dict) -> str:
    """A benchmark's headline against its target, then its raw figures, one a line."""
    if entry["headline"] is None:
        lines = [f"{name}: FAILED ({entry['seconds']} s): {entry['error']}"]
    else:
        verdict = "meets" if entry["met"] else "MISSES"
        lines = [f"{name}: {entry['headline']:.4g} {entry['unit']}, target {entry['target']}: {verdict} "
                 f"({entry['seconds']} s)"]

    def walk(d: dict, indent: str):
        for key, v in d.items():
            if isinstance(v, dict) and "median" not in v:
                lines.append(f"{indent}{key}:")
                walk(v, indent + "  ")
            else:
                lines.append(f"{indent}{key}: {format_figure(v)}")
    walk(entry["raw"], "    ")
    return "\n".join(lines)


def cmd_bench(args) -> int:
    """Print the machine, then each benchmark as it finishes (or one JSON object with --json).
    Exits 1 when a benchmark failed to run; a missed target is reported, not an error (the
    machines are shared and noisy)."""
    names = select(args.only)
    if args.reps is not None and args.reps < 1:
        raise ConfigError("--reps", args.reps, "an integer >= 1")
    if not args.json:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        m, allocator = machine_info(), pin_allocator()
        print(f"machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average']}; {m['platform']}\n"
              f"python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), torchvision "
              f"{m['torchvision']}, numpy {m['numpy']}, plotly {m['plotly']}, streamlit {m['streamlit']}; {allocator}\n"
              f"{'quick' if args.quick else 'full'} mode, {args.reps or (3 if args.quick else 5)} interleaved "
              f"repetitions after a warm-up; figures: median (min - max, n)\n", flush=True)
    report = run_suite(names, args.quick, args.reps, args.threads,
                       on_result=None if args.json else lambda n, e: print(format_entry(n, e) + "\n", flush=True))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"load average at the end: {report['machine']['load_average_end']}")
    return 1 if any(e["headline"] is None for e in report["benchmarks"].values()) else 0


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on the CLI's subparsers; the handler is `cmd_bench` (args.func)."""
    p = subparsers.add_parser("bench", help="time resx's fast paths against their baselines, side by side")
    p.add_argument("--quick", action="store_true", help="small sizes: the suite in under a minute on 2 cores (CI)")
    p.add_argument("--json", action="store_true", help="print one JSON object: machine, settings, benchmarks")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)} (the part before the dot "
                                  f"is enough)")
    p.add_argument("--reps", type=int, help="timed repetitions of each arm (default 5; 3 with --quick)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, see the module's docstring; 0 leaves torch's default)")
    p.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks ARGS`, the same as `python -m resx bench ARGS`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
