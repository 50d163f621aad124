"""The timing and reporting helpers every benchmark shares: arms side by side, spreads, ratios,
the machine (style.md "Output, not printing": every figure states the machine, the versions and
the spread). The method is `benchmarks/suite.py`'s docstring.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

# The tests' small run: the whole pipeline in a few seconds on 2 cores (tests/test_browser.py).
SMALL = dict(n=300, n_probe=300, n_test=300, epochs=3, finetune_epochs=1, width=16)


@dataclass(frozen=True)
class Sizes:
    """Problem sizes. The full mode is realistic; --quick runs the suite in under a minute on 2 cores."""
    train_epochs: int = 3               # epochs of demo-mlp's S (n = 2000) per timed round
    resnet_epochs: int = 1              # epochs of demo-resnet (ResNet-8, 3x16x16 shapes) a round; 0: skip
    cifar_per_file: int = 10_000        # images per CIFAR-10 train file (5 files: 50,000 as shipped)
    loader_workers: tuple[int, ...] = (0, 2)
    margins_n: int = 2000               # all_positions: mlp depth 9, width 64, 10 positions
    stats_n: int = 500                  # per_sample_stats: samples looped over by autograd
    own_train: int = 512                # own_network: resnet18's train points (BN calibration, preservation)
    own_probe: int = 512                # own_network: probe points (the size)
    history_steps: int = 10_000         # panel_render: base steps in the history
    apptest: bool = True                # panel_render: also a full AppTest run of the Lab page
    server_run: tuple = ()              # server_memory: form values typed over demo-mlp's
    memory_baseline: bool = True        # server_memory: also the same job in a process without Streamlit


FULL = Sizes()
QUICK = Sizes(train_epochs=3, resnet_epochs=0, cifar_per_file=400, loader_workers=(0,), margins_n=512,
              stats_n=200, apptest=False, memory_baseline=False, own_train=64, own_probe=64)


# ---------------------------------------------------------------------------------------------
# timing and reporting

def interleaved(arms: dict[str, Callable], reps: int, setup: Callable | None = None, min_round_s: float = 0.05
                ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds per call of each arm over `reps` rounds (order reversed every other round), after
    one untimed warm-up each. An arm whose warm-up took less than `min_round_s` is called enough
    times a round to fill it, and its time is per call. `setup()`, untimed, makes each call's
    argument (e.g. a fresh model; then one call a round). Returns the times and each arm's warm-up
    output (to check that the arms agree)."""
    first, number = {}, {}
    for name, fn in arms.items():
        start = time.perf_counter()
        first[name] = fn(setup()) if setup else fn()
        number[name] = 1 if setup else max(1, math.ceil(min_round_s / max(time.perf_counter() - start, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            arg = setup() if setup else None
            start = time.perf_counter()
            for _ in range(number[name]):
                arms[name](arg) if setup else arms[name]()
            times[name].append((time.perf_counter() - start) / number[name])
    return times, first


def spread(xs: list[float], scale: float = 1.0, unit: str = "s") -> dict:
    """Median, min and max of a series (times scale), with its count and unit."""
    ys = [scale * x for x in xs]
    return {"median": statistics.median(ys), "min": min(ys), "max": max(ys), "n": len(ys), "unit": unit}


def ratio(slow: list[float], fast: list[float]) -> dict:
    """median(slow) / median(fast), with the min - max of the per-round ratios slow_r / fast_r, and
    min(slow) / min(fast) ("best_of"): a load burst only lengthens a round, so best-of is the check
    when the spread is wide."""
    per_round = [s / f for s, f in zip(slow, fast)]
    return {"median": statistics.median(slow) / statistics.median(fast), "min": min(per_round),
            "max": max(per_round), "n": len(per_round), "unit": "x", "best_of": min(slow) / min(fast)}


# glibc raises its mmap threshold each time a large block is freed, so after a benchmark that frees
# big tensors the next one page-faults less: measured 2x on all_positions' baseline, which made a
# figure depend on which benchmarks ran before it. Fixed thresholds make every order alike.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # mallopt parameters, glibc's malloc.h
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 128 << 20


def pin_allocator() -> str:
    """Fix glibc's mmap and trim thresholds for this process (mallopt); says what it did."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        ok = False
    return (f"glibc malloc pinned: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
            f"{TRIM_THRESHOLD >> 20} MiB" if ok else "allocator left as it is (no glibc mallopt)")


def machine_info() -> dict:
    """CPU model, cores, versions, torch threads and the load average."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), cpu)
    versions = {}
    for package in ("torch", "torchvision", "numpy", "plotly", "streamlit"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(), "python": platform.python_version(), **versions,
            "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def format_figure(v: Any) -> str:
    if isinstance(v, dict) and "median" in v:
        best = f"; best-of {v['best_of']:.4g}" if "best_of" in v else ""
        return f"{v['median']:.4g} {v['unit']} ({v['min']:.4g} - {v['max']:.4g}, n={v['n']}{best})"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
