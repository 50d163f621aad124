"""Benchmarks: each fast path of resx timed beside the baseline it replaces, in one process.

`python -m resx bench [--quick] [--json] [--only NAME,...] [--reps N] [--threads T]`

A ratio is measured side by side: one untimed warm-up of each arm, then `reps` rounds in which
every arm runs once, the order reversed every other round (A B, B A, ...), so that a change in
the machine's load falls on both alike. A time is the median over the rounds with its min - max;
a ratio is baseline / candidate of the medians, with the min - max of the per-round ratios.
Every report states the machine, the versions, the threads and the load (style.md "Output").

  name                    headline                                                    target
  trainer_overhead.ratio  resx.train throughput / a bare PyTorch loop's                >= 0.95
  data_pipeline.ratio     iterate_batches(augment=True) against a torchvision
                          DataLoader with PIL transforms on CIFAR-10 files: speed-up  >= 5
  all_positions.ratio     margins at 10 positions in one pass against one at a time   >= 3
  per_sample_stats.ratio  closed-form per-sample statistics against an autograd loop  >= 20
  panel_render.ms         the Lab's live panels over a 10,000-step history, to JSON   <= 150
  server_memory.mb        peak RSS (MiB) of `streamlit run app.py` running demo-mlp   <= 1024

One torch thread by default: on a 2-core machine whose other core is busy, two OpenMP threads
make small matrix products stall (measured ~400x slower for a (500, 64) x (64, 64) product).
glibc's malloc thresholds are pinned, so that a figure does not depend on which benchmarks ran
before it (`pin_allocator`).
The two benchmarks that drive Streamlit (server_memory, and panel_render's AppTest run) live in
benchmarks/bench_app.py of the checkout, since resx never imports Streamlit. `cmd_bench` prints.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from .config import PRESETS, ConfigError, RunConfig
from .records import Record

ROOT = Path(__file__).resolve().parents[1]   # the checkout: app.py, benchmarks/bench_app.py
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
    history_steps: int = 10_000         # panel_render: base steps in the history
    apptest: bool = True                # panel_render: also a full AppTest run of the Lab page
    server_run: tuple = ()              # server_memory: form values typed over demo-mlp's
    memory_baseline: bool = True        # server_memory: also the same job in a process without Streamlit


FULL = Sizes()
QUICK = Sizes(train_epochs=3, resnet_epochs=0, cifar_per_file=400, loader_workers=(0,), margins_n=512,
              stats_n=200, apptest=False, memory_baseline=False)


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


# ---------------------------------------------------------------------------------------------
# trainer_overhead: resx.train against a bare loop, same model, data, batches and optimizer

def bare_loop(model: torch.nn.Module, S, cfg: RunConfig, epochs: int) -> torch.nn.Module:
    """The baseline: a plain PyTorch loop over S in memory; the same seeded batches as resx.train."""
    from .train import make_optimizer

    optimizer = make_optimizer(list(model.parameters()), cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(S), generator=generator).split(cfg.batch_size):
            loss = F.cross_entropy(model(S.x[idx]), S.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def bench_trainer_overhead(sizes: Sizes, reps: int) -> tuple[float, dict]:
    """Throughput of resx.train (no evaluator) over a bare loop's; the smaller over the models."""
    from .data import load_data
    from .models import build_model
    from .train import train

    raw = {}
    cases = {"demo-mlp": (PRESETS["demo-mlp"], sizes.train_epochs),
             "demo-resnet": (PRESETS["demo-resnet"], sizes.resnet_epochs)}
    for name, (preset, epochs) in cases.items():
        if not epochs:
            continue
        cfg = preset.replace(schedule="constant", device="cpu")  # the bare loop keeps lr constant too
        data = load_data(cfg)
        torch.manual_seed(cfg.seed)
        model0 = build_model(cfg, data.input_shape, data.num_classes)
        arms = {"bare": lambda m: bare_loop(m, data.S, cfg, epochs),
                "resx": lambda m: (train(m, data, cfg, phase="base", epochs=epochs), m)[1]}
        times, first = interleaved(arms, reps, setup=lambda: copy.deepcopy(model0))
        steps = epochs * -(-len(data.S) // cfg.batch_size)
        same = max((a - b).abs().max().item() for a, b in zip(first["bare"].state_dict().values(),
                                                             first["resx"].state_dict().values())
                   if a.is_floating_point())
        raw[name] = {"what": f"{cfg.arch} depth {cfg.depth} width {cfg.width}, n={len(data.S)}, batch "
                             f"{cfg.batch_size}, {cfg.optimizer}, {epochs} epoch(s) = {steps} steps a round",
                     "bare_steps_per_s": spread([steps / t for t in times["bare"]], unit="steps/s"),
                     "resx_steps_per_s": spread([steps / t for t in times["resx"]], unit="steps/s"),
                     "throughput_resx_over_bare": ratio(times["bare"], times["resx"]),
                     "max_abs_weight_difference": same}
    return min(r["throughput_resx_over_bare"]["median"] for r in raw.values()), raw


# ---------------------------------------------------------------------------------------------
# data_pipeline: tensors in memory against torchvision's DataLoader, on CIFAR-10 files

def write_cifar10(root: Path, per_file: int, test: int = 100, seed: int = 0) -> dict:
    """CIFAR-10 in its on-disk format under root/cifar-10-batches-py: five pickled train batches of
    `per_file` images (uint8 (n, 3072), R, G, B planes), a test batch, batches.meta. Returns the
    md5 constants torchvision checks, for these files (as tests/test_data.py pins them)."""
    import torchvision.datasets as tvd

    rng = np.random.default_rng(seed)
    folder = root / tvd.CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for name, n in [(f, per_file) for f, _ in tvd.CIFAR10.train_list] + [(f, test) for f, _ in tvd.CIFAR10.test_list]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist(), "filenames": [f"{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    meta = tvd.CIFAR10.meta["filename"]
    (folder / meta).write_bytes(pickle.dumps({"label_names": [f"class_{k}" for k in range(10)]}, protocol=2))
    md5[meta] = hashlib.md5((folder / meta).read_bytes()).hexdigest()
    return md5


@contextlib.contextmanager
def cifar10_folder(per_file: int):
    """RESX_DATA_DIR on a temporary synthetic CIFAR-10, and torchvision's md5 constants for its
    files (undone on exit): both resx and the baseline read it through torchvision.datasets.CIFAR10."""
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10
    with tempfile.TemporaryDirectory(prefix="resx-bench-cifar-") as tmp:
        md5 = write_cifar10(Path(tmp), per_file)
        with mock.patch.dict(os.environ, {"RESX_DATA_DIR": tmp}), \
                mock.patch.object(cls, "train_list", [[n, md5[n]] for n, _ in cls.train_list]), \
                mock.patch.object(cls, "test_list", [[n, md5[n]] for n, _ in cls.test_list]), \
                mock.patch.object(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]}):
            yield Path(tmp)


def bench_data_pipeline(sizes: Sizes, reps: int) -> tuple[float, dict]:
    """One epoch of augmented, normalised (128, 3, 32, 32) batches: resx against DataLoader(s)."""
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    from .data import TORCHVISION, iterate_batches, load_data

    _, _, _, mean, std = TORCHVISION["cifar10"]
    n = 5 * sizes.cifar_per_file
    cfg = PRESETS["cifar10-resnet8"].replace(n=n, n_probe=50, n_test=50, device="cpu")
    with cifar10_folder(sizes.cifar_per_file) as root:
        start = time.perf_counter()
        data = load_data(cfg)
        resx_load = time.perf_counter() - start
        start = time.perf_counter()
        dataset = tvd.CIFAR10(str(root), train=True, transform=T.Compose([
            T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]))
        tv_load = time.perf_counter() - start
    generator = torch.Generator().manual_seed(0)

    def epoch(batches):
        shapes = set()
        for x, y in batches:
            shapes.add((tuple(x.shape[1:]), x.dtype))
        return shapes

    arms = {"resx": lambda: epoch(iterate_batches(data.S, cfg.batch_size, generator, augment=True))}
    loaders = {}
    for w in sizes.loader_workers:  # persistent workers: the baseline at its best, no start-up per epoch
        loaders[w] = torch.utils.data.DataLoader(dataset, cfg.batch_size, shuffle=True, num_workers=w,
                                                 persistent_workers=w > 0)
        arms[f"dataloader_workers_{w}"] = (lambda loader: lambda: epoch(loader))(loaders[w])
    try:
        times, first = interleaved(arms, reps)
    finally:
        for loader in loaders.values():   # persistent workers end with their iterator
            if getattr(loader, "_iterator", None) is not None:
                loader._iterator._shutdown_workers()
    if len({frozenset(s) for s in first.values()}) != 1:
        raise AssertionError(f"the arms yield different batches: {first}")
    raw = {"what": f"one epoch of {n} CIFAR-10-format images, batch {cfg.batch_size}, random crop (pad 4) + "
                   f"flip + normalise; the DataLoader with PIL transforms (ToTensor, Normalize)",
           "load_s": {"resx (load_data: unpickle, select, to float32)": resx_load,
                      "torchvision.datasets.CIFAR10": tv_load},
           "resx_images_per_s": spread([n / t for t in times["resx"]], unit="images/s")}
    for w in sizes.loader_workers:
        arm = f"dataloader_workers_{w}"
        raw[f"{arm}_images_per_s"] = spread([n / t for t in times[arm]], unit="images/s")
        raw[f"speedup_over_{arm}"] = ratio(times[arm], times["resx"])
    best = min(sizes.loader_workers, key=lambda w: statistics.median(times[f"dataloader_workers_{w}"]))
    raw["headline_against"] = f"dataloader_workers_{best} (the fastest baseline)"
    return raw[f"speedup_over_dataloader_workers_{best}"]["median"], raw


# ---------------------------------------------------------------------------------------------
# all_positions and per_sample_stats: the closed-form margins (theory.md 4) against autograd

def margin_problem(n: int, depth: int = 9, width: int = 64, d: int = 32, classes: int = 10, seed: int = 0):
    """An mlp (depth 9: 10 positions), n Gaussian points with random labels, a candidate per position."""
    from .models import MLP, candidate_block

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = MLP(d, width, depth, classes).eval()
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return model, x, y, {k: candidate_block(model, k, x, seed) for k in range(depth + 1)}


def bench_all_positions(sizes: Sizes, reps: int) -> tuple[float, dict]:
    """U-statistics at all 10 positions: one pass (block_gradients) against inserting each block
    and taking torch.func per-sample gradients (block_gradients_reference)."""
    from .margins import block_gradients, block_gradients_reference, u_statistic

    model, x, y, candidates = margin_problem(sizes.margins_n)
    positions = list(candidates)
    arms = {"one_at_a_time": lambda: [u_statistic(block_gradients_reference(model, x, y, k, candidates[k]))
                                      for k in positions],
            "one_pass": lambda: [u_statistic(v) for v in block_gradients(model, x, y, positions, candidates).values()]}
    times, first = interleaved(arms, reps)
    worst = max(abs(a.value - b.value) / (abs(b.value) + 1e-12)
                for a, b in zip(first["one_pass"], first["one_at_a_time"]))
    return ratio(times["one_at_a_time"], times["one_pass"])["median"], {
        "what": f"{len(positions)} positions of an mlp (depth 9, width 64), n={len(x)}, U-statistic at each",
        "one_pass_s": spread(times["one_pass"]), "one_at_a_time_s": spread(times["one_at_a_time"]),
        "speedup": ratio(times["one_at_a_time"], times["one_pass"]), "max_relative_difference_of_U": worst}


def bench_per_sample_stats(sizes: Sizes, reps: int, position: int = 5) -> tuple[float, dict]:
    """U at one position: closed-form factored per-sample statistics against one autograd backward
    per sample on the inserted model."""
    from .margins import block_gradients, u_statistic
    from .models import insert_block, live_parameter_names

    model, x, y, candidates = margin_problem(sizes.stats_n)
    f_new, _ = insert_block(model, position, x, y, block=candidates[position])
    f_new.eval()
    live = [f_new.get_parameter(name) for name in live_parameter_names(f_new, position)]

    def loop():
        rows = []
        for i in range(len(x)):
            loss = F.cross_entropy(f_new(x[i:i + 1]), y[i:i + 1], reduction="sum")
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, live)]))
        return u_statistic(torch.stack(rows))                                    # rows: (n, p)

    arms = {"autograd_loop": loop,
            "closed_form": lambda: u_statistic(block_gradients(model, x, y, [position], candidates)[position])}
    times, first = interleaved(arms, reps)
    a, b = first["closed_form"].value, first["autograd_loop"].value
    return ratio(times["autograd_loop"], times["closed_form"])["median"], {
        "what": f"U at position {position} of an mlp (depth 9, width 64), n={len(x)}",
        "closed_form_s": spread(times["closed_form"]), "autograd_loop_s": spread(times["autograd_loop"]),
        "speedup": ratio(times["autograd_loop"], times["closed_form"]),
        "relative_difference_of_U": abs(a - b) / (abs(b) + 1e-12)}


# ---------------------------------------------------------------------------------------------
# panel_render: the Lab's live panels, server side, with a long history

def lab_history(steps: int, positions: int = 5, margin_every: int = 200, seed: int = 0) -> tuple[Record, ...]:
    """Records like a snapshot of a finished run of `steps` base steps: L_S, L_T, L (with its stderr),
    and accuracies evaluated at every step (a real run evaluates once per epoch: an upper bound), U_P,
    X_P and ||G_S||^2 at every position every `margin_every` steps (a real run: 20 columns), then
    steps // 4 steps each of the expanded model and the control."""
    rng = np.random.default_rng(seed)
    out: list[Record] = []
    for phase, length, floor in (("base", steps, 0.5), ("new", steps // 4, 0.45), ("control", steps // 4, 0.47)):
        for step in range(length):
            base = 2.3 * np.exp(-step / 3000) + floor
            out.append(Record(phase, step, "S", "loss", float(base - 0.1 + 0.01 * rng.standard_normal()), 0.02))
            out.append(Record(phase, step, "T", "loss", float(base + 0.01 * rng.standard_normal()), 0.02))
            out.append(Record(phase, step, "pop", "loss", float(base + 0.005 * rng.standard_normal()), 0.004))
            out.append(Record(phase, step, "S", "acc", float(0.5 + step / (4 * length))))
            out.append(Record(phase, step, "T", "acc", float(0.45 + step / (4 * length))))
            if phase == "base" and step % margin_every == 0:
                for k in range(positions):
                    for name in ("kappa2_U", "kappa2_cross", "kappa2_train_naive"):
                        out.append(Record("margins", step, "P", name, float(abs(rng.normal(0.02, 0.01))), 0.005, k))
    return tuple(out)


def small_result() -> dict:
    """result.json of a real, small demo-mlp run: margins, jumpboard and routes as the Lab gets them."""
    from .pipeline import run_pipeline

    return run_pipeline(PRESETS["demo-mlp"].replace(**SMALL, n_pop=4096, device="cpu"))


def render_panels(records: tuple[Record, ...], result: dict, position: int) -> dict[str, tuple[float, int]]:
    """Each live panel built by resx.plots and serialised by Figure.to_json (what st.plotly_chart
    sends): {panel: (seconds, payload bytes)}."""
    from . import plots

    panels = {"training_curves": lambda: plots.training_curves(records),
              "margin_heatmap": lambda: plots.margin_heatmap(records),
              "margin_estimates": lambda: plots.margin_estimates(result["margins"], position),
              "jumpboard_curve": lambda: plots.jumpboard_curve(result["jumpboard"]),
              "route_waterfall_A": lambda: plots.route_waterfall(result["routes"]["A"]),
              "route_waterfall_B": lambda: plots.route_waterfall(result["routes"]["B"])}
    out = {}
    for name, make in panels.items():
        start = time.perf_counter()
        payload = make().to_json()
        out[name] = (time.perf_counter() - start, len(payload))
    return out


def bench_panel_render(sizes: Sizes, reps: int) -> tuple[float, dict]:
    """Milliseconds for one tick of the Lab's panels over a 10,000-step history (median)."""
    records = lab_history(sizes.history_steps)
    result = small_result()
    position = result["config"]["position"]
    ticks = [render_panels(records, result, position) for _ in range(reps + 1)][1:]   # the first warms up
    raw = {"what": f"{len(records)} records: {sizes.history_steps} base steps (+ {sizes.history_steps // 4} "
                   f"each fine-tuned and control) evaluated at every step, 50 heatmap columns; the result "
                   f"of a small demo-mlp run; figure built and Figure.to_json()",
           "panels_ms": {name: spread([t[name][0] for t in ticks], 1000, "ms") for name in ticks[0]},
           "payload_kb": {name: ticks[0][name][1] / 1024 for name in ticks[0]},
           "total_ms": spread([sum(s for s, _ in t.values()) for t in ticks], 1000, "ms")}
    raw["payload_kb"]["total"] = sum(raw["payload_kb"].values())
    if sizes.apptest:
        try:
            raw["apptest_lab"] = app_benchmarks().apptest_lab(records, result, reps)
        except Exception as e:  # optional: the figure above is the headline
            raw["apptest_error"] = f"{type(e).__name__}: {e}"
    return raw["total_ms"]["median"], raw


# ---------------------------------------------------------------------------------------------
# server_memory: peak RSS of a real server running demo-mlp, driven by Chromium

@functools.lru_cache(maxsize=1)
def app_benchmarks():
    """benchmarks/bench_app.py of the checkout: the benchmarks that drive Streamlit (AppTest, a real
    server and Chromium), kept out of the package because resx never imports Streamlit."""
    path = ROOT / "benchmarks" / "bench_app.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not there: the app benchmarks need a source checkout")
    spec = importlib.util.spec_from_file_location("resx_bench_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_server_memory(sizes: Sizes, reps: int) -> tuple[float, dict]:
    """Peak resident memory (MiB) of `streamlit run app.py` while the Lab runs demo-mlp, pressed in
    the system Chromium (benchmarks/bench_app.py); without a checkout, Playwright or Chromium,
    the peak of a process that runs the same job without Streamlit (a lower bound, so marked)."""
    try:
        server_memory = app_benchmarks().server_memory
        peak, raw = server_memory(sizes)
    except (ImportError, FileNotFoundError) as e:
        raw = pipeline_memory(sizes) | {"why_proxy": f"{type(e).__name__}: {e}"}
        return raw["peak_mib"], raw
    if sizes.memory_baseline:   # what the same job costs without Streamlit, for comparison
        try:
            raw["pipeline_only"] = pipeline_memory(sizes)
        except Exception as e:
            raw["pipeline_only"] = f"failed: {type(e).__name__}: {e}"
    return peak, raw


PIPELINE_CHILD = """
import json, sys, tempfile
import resx
from resx.config import PRESETS
from resx.jobs import JobManager
from resx.pipeline import run_pipeline
from resx.store import Store
with tempfile.TemporaryDirectory(prefix="resx-bench-proxy-") as home:
    store = Store(home)
    manager = JobManager(store, run_pipeline)
    run_id = manager.submit(PRESETS["demo-mlp"].replace(**json.loads(sys.argv[1])), source="bench")
    snap = manager.wait(run_id, timeout=600)
    manager.shutdown()
    store.close()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec, so it would count the parent's RSS
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"status": snap.status, "peak_kib": peak}))
"""


def pipeline_memory(sizes: Sizes) -> dict:
    """Peak RSS (VmHWM) of a child process that runs demo-mlp through a JobManager, no Streamlit."""
    import subprocess

    values = dict(sizes.server_run)
    out = subprocess.run([sys.executable, "-c", PIPELINE_CHILD, json.dumps(values)], capture_output=True,
                         text=True, timeout=600, cwd=ROOT, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    if child["status"] != "done":
        raise RuntimeError(f"the run ended {child['status']}")
    return {"method": "a child process running demo-mlp through resx.jobs.JobManager without Streamlit; "
                      "peak = its VmHWM", "run": f"demo-mlp {values or 'as shipped'}",
            "peak_mib": child["peak_kib"] / 1024}


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


def format_figure(v: Any) -> str:
    if isinstance(v, dict) and "median" in v:
        best = f"; best-of {v['best_of']:.4g}" if "best_of" in v else ""
        return f"{v['median']:.4g} {v['unit']} ({v['min']:.4g} - {v['max']:.4g}, n={v['n']}{best})"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


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
    """`python -m resx.bench ARGS`, the same as `python -m resx bench ARGS` (for the scripts in benchmarks/)."""
    parser = argparse.ArgumentParser(prog="python -m resx.bench")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
