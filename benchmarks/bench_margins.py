"""Speed of the one-pass closed-form descent margins (theory.md 4), against the alternatives.

(a) all 10 positions of an mlp (depth 9, width 64) in one forward/backward pass, n = 2000,
    against inserting one block at a time and taking torch.func per-sample gradients
    (block_gradients_reference), both followed by the U-statistic;
(b) at one position, n = 500: the closed-form per-sample statistics (factored, never (n, w, w))
    against a Python loop of one autograd backward per sample, both followed by the U-statistic.

Usage: python benchmarks/bench_margins.py [--reps 5] [--threads 1]. Prints the machine, the
versions, and the median (min - max) of each timing over the repetitions, then the speed ratios.
One torch thread by default: on a 2-core machine whose other core is busy, two OpenMP threads
make small matrix products stall (measured ~400x slower for a (500, 64) x (64, 64) product).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resx.margins import block_gradients, block_gradients_reference, u_statistic  # noqa: E402
from resx.models import MLP, candidate_block, insert_block, live_parameter_names  # noqa: E402


def timed(fn, reps: int) -> list[float]:
    fn()   # warm-up
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summary(times: list[float]) -> str:
    return f"{statistics.median(times):8.4f} s  ({min(times):.4f} - {max(times):.4f})"


def problem(n: int, depth: int = 9, width: int = 64, d: int = 32, classes: int = 10, seed: int = 0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = MLP(d, width, depth, classes).eval()
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    candidates = {k: candidate_block(model, k, x, seed) for k in range(depth + 1)}
    return model, x, y, candidates


def bench_positions(reps: int) -> float:
    model, x, y, candidates = problem(2000)
    positions = list(candidates)

    def one_pass():
        grads = block_gradients(model, x, y, positions, candidates)
        return [u_statistic(grads[k]) for k in positions]

    def one_at_a_time():
        return [u_statistic(block_gradients_reference(model, x, y, k, candidates[k])) for k in positions]

    a, b = timed(one_pass, reps), timed(one_at_a_time, reps)
    print(f"(a) 10 positions, n=2000, mlp depth 9 width 64 (p = 4160 per position)")
    print(f"    one pass, closed form      {summary(a)}")
    print(f"    one block at a time, func  {summary(b)}")
    ratio = statistics.median(b) / statistics.median(a)
    print(f"    speed ratio (median)       {ratio:8.1f}x")
    return ratio


def bench_statistics(reps: int, position: int = 5) -> float:
    model, x, y, candidates = problem(500)
    f_new, _ = insert_block(model, position, x, y, block=candidates[position])
    f_new.eval()
    live = [f_new.get_parameter(n) for n in live_parameter_names(f_new, position)]

    def closed_form():
        return u_statistic(block_gradients(model, x, y, [position], candidates)[position])

    def loop():
        rows = []
        for i in range(len(x)):
            loss = F.cross_entropy(f_new(x[i:i + 1]), y[i:i + 1], reduction="sum")
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, live)]))
        return u_statistic(torch.stack(rows))

    a, b = timed(closed_form, reps), timed(loop, reps)
    assert abs(closed_form().value - loop().value) <= 1e-3 * abs(loop().value) + 1e-9
    print(f"(b) per-sample statistics at position {position}, n=500")
    print(f"    closed form (factored)     {summary(a)}")
    print(f"    Python loop of autograd    {summary(b)}")
    ratio = statistics.median(b) / statistics.median(a)
    print(f"    speed ratio (median)       {ratio:8.1f}x")
    return ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"Python {platform.python_version()}; float32, CPU; {args.reps} repetitions after a warm-up")
    bench_positions(args.reps)
    bench_statistics(args.reps)


if __name__ == "__main__":
    main()
