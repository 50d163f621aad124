"""What the Lab costs a user and the server: measured, not asserted.

(a) Time from pressing Run to the first live point of the training curves:
    - in-process: `JobManager.submit` to the first "loss" record in `snapshot()` (no browser, no
      fragment tick), for the demo-mlp preset as shipped and for the small test configuration;
    - in the browser (system Chromium, a real `streamlit run`): the click on Run to the first
      drawn line of the training chart (includes the 1 s `run_every` tick of the live fragment).
(b) One tick of the live fragment with a 10,000-step history: `plots.training_curves` +
    `plots.margin_heatmap` on a snapshot-like tuple of Records, then `Figure.to_json()` (what
    `st.plotly_chart` serialises), with the JSON payload size.

Usage: python benchmarks/bench_app.py [--reps 10] [--run-reps 3] [--no-browser]
Prints the machine, the versions, the load, and median (min - max) of each timing.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

import resx  # noqa: E402,F401  (torch first, on the main thread)
from resx import plots  # noqa: E402
from resx.config import PRESETS, RunConfig  # noqa: E402
from resx.records import Record  # noqa: E402

SMALL = dict(n=300, n_probe=300, n_test=300, epochs=3, finetune_epochs=1, width=16)


def summary(times: list[float], unit: str = "s", scale: float = 1.0) -> str:
    t = [x * scale for x in times]
    return f"{statistics.median(t):8.3f} {unit}  ({min(t):.3f} - {max(t):.3f}, n={len(t)})"


def machine() -> str:
    import plotly
    import streamlit
    import torch
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.platform()}; {cpu}; {os.cpu_count()} cores; load avg {load}\n"
            f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"streamlit {streamlit.__version__}, plotly {plotly.__version__}, numpy {np.__version__}")


# -- (a) in-process ------------------------------------------------------------------------------
def first_record_in_process(cfg: RunConfig, reps: int) -> tuple[list[float], list[float]]:
    """Seconds from submit to the first record of any kind, and to the first base 'loss' record."""
    from resx.jobs import JobManager
    from resx.pipeline import run_pipeline
    from resx.store import Store

    home = Path(tempfile.mkdtemp(prefix="resx-bench-"))
    store = Store(home)
    manager = JobManager(store, run_pipeline, workers=1)
    any_rec, loss_rec = [], []
    try:
        for _ in range(reps):
            start = time.perf_counter()
            run_id = manager.submit(cfg, source="bench")
            t_any = t_loss = None
            deadline = start + 300
            while time.perf_counter() < deadline:
                snap = manager.snapshot(run_id)
                now = time.perf_counter() - start
                if t_any is None and snap.records:
                    t_any = now
                if any(r.name == "loss" and r.phase == "base" for r in snap.records):
                    t_loss = now
                    break
                if not snap.is_active:
                    break
                time.sleep(0.002)
            manager.cancel(run_id)
            manager.wait(run_id, timeout=60)
            if t_loss is not None:
                any_rec.append(t_any)
                loss_rec.append(t_loss)
    finally:
        manager.shutdown(wait=True, timeout=30)
        store.close()
        shutil.rmtree(home, ignore_errors=True)
    return any_rec, loss_rec


# -- (a) in the browser --------------------------------------------------------------------------
def first_point_in_browser(reps: int) -> tuple[list[float], list[float]] | None:
    from browser_util import CHROMIUM, LIVE_POINT, Server, fill_lab_form, launch_chromium, main_button, press_run
    if not CHROMIUM.exists():
        print(f"  (skipped: no Chromium at {CHROMIUM}; apt-get install chromium)")
        return None
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="resx-bench-"))
    server = Server(home=home, log_path=home / "streamlit.log")
    t0 = time.perf_counter()
    server.start(timeout=180)
    print(f"  streamlit run: healthy after {time.perf_counter() - t0:.1f} s")
    default, small = [], []
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            for i in range(reps):
                for values, out in (({}, default), (SMALL, small)):
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(server.url + "/")
                    fill_lab_form(page, values)
                    start = time.perf_counter()
                    press_run(page)
                    page.wait_for_function(LIVE_POINT, timeout=180_000, polling=20)
                    out.append(time.perf_counter() - start)
                    stop = main_button(page, "Stop")
                    if stop.count():
                        try:
                            stop.click(timeout=5_000)
                        except Exception:
                            pass  # the small run may have ended meanwhile
                    page.close()
                    time.sleep(1.0)  # let the cancelled job end before the next one starts
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    return default, small


# -- (b) a fragment tick with a long history -----------------------------------------------------
def long_history(steps: int = 10_000, positions: int = 5, margin_every: int = 200) -> tuple[Record, ...]:
    """Like a snapshot after `steps` base steps evaluated at every step: S/T/pop loss (pop with
    stderr), S/T accuracy, and U_P/X_P/||G_S||^2 margins at every position every `margin_every` steps."""
    rng = np.random.default_rng(0)
    out: list[Record] = []
    for step in range(steps):
        base = 2.3 * np.exp(-step / 3000) + 0.5
        out.append(Record("base", step, "S", "loss", float(base - 0.1 + 0.01 * rng.standard_normal()), 0.02))
        out.append(Record("base", step, "T", "loss", float(base + 0.01 * rng.standard_normal()), 0.02))
        out.append(Record("base", step, "pop", "loss", float(base + 0.005 * rng.standard_normal()), 0.004))
        out.append(Record("base", step, "S", "acc", float(0.5 + step / (4 * steps))))
        out.append(Record("base", step, "T", "acc", float(0.45 + step / (4 * steps))))
        if step % margin_every == 0:
            for k in range(positions):
                for name in ("kappa2_U", "kappa2_cross", "kappa2_train_naive"):
                    out.append(Record("margins", step, "P", name, float(abs(rng.normal(0.02, 0.01))), 0.005, k))
    return tuple(out)


def fragment_tick(records: tuple[Record, ...], reps: int) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {"training_curves": [], "margin_heatmap": [], "to_json": [], "total": [],
                                   "kb_curves": [], "kb_heatmap": []}
    for i in range(reps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        curves = plots.training_curves(records)
        t1 = time.perf_counter()
        heat = plots.margin_heatmap(records)
        t2 = time.perf_counter()
        j1, j2 = curves.to_json(), heat.to_json()
        t3 = time.perf_counter()
        if i == 0:
            continue
        res["training_curves"].append(t1 - t0)
        res["margin_heatmap"].append(t2 - t1)
        res["to_json"].append(t3 - t2)
        res["total"].append(t3 - t0)
        res["kb_curves"].append(len(j1) / 1024)
        res["kb_heatmap"].append(len(j2) / 1024)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=10, help="repetitions of the fragment tick")
    ap.add_argument("--run-reps", type=int, default=3, help="runs started per time-to-first-point figure")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--steps", type=int, default=10_000)
    args = ap.parse_args()
    print(machine())

    print("\n(b) one live-fragment tick with a long history")
    records = long_history(args.steps)
    print(f"  {len(records)} records ({args.steps} base steps)")
    r = fragment_tick(records, args.reps)
    for key in ("training_curves", "margin_heatmap", "to_json", "total"):
        print(f"  {key:16s}{summary(r[key], 'ms', 1000)}")
    print(f"  payload: training curves {statistics.median(r['kb_curves']):.0f} KB, "
          f"heatmap {statistics.median(r['kb_heatmap']):.0f} KB (JSON)")

    print("\n(a) Run -> first live point")
    for label, cfg in (("demo-mlp as shipped", PRESETS["demo-mlp"]),
                       ("small (tests' values)", RunConfig.from_dict({**PRESETS["demo-mlp"].to_dict(), **SMALL}))):
        any_rec, loss = first_record_in_process(cfg, args.run_reps)
        print(f"  in-process, {label}: first record {summary(any_rec)}; first base loss {summary(loss)}")
    if not args.no_browser:
        got = first_point_in_browser(args.run_reps)
        if got:
            default, small = got
            print(f"  browser, demo-mlp as shipped: click Run -> first drawn point {summary(default)}")
            print(f"  browser, small (tests' values): click Run -> first drawn point {summary(small)}")


if __name__ == "__main__":
    main()
