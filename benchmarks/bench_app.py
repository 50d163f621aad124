"""What the Lab costs the server and a user: the benchmarks that drive Streamlit.

Two of the suite's benchmarks (`python -m benchmarks`), here because resx itself never imports
Streamlit (README "Architecture"):
- panel_render: the Lab's live panels over a 10,000-step history, built and serialised; in full
  mode also an AppTest run of the Lab page on that finished run;
- server_memory: peak resident memory of a real `streamlit run app.py` while the Lab runs
  demo-mlp, pressed in the system Chromium (tests/browser_util.py starts and drives both).

Run as a script, it measures the time from pressing Run to the first live point of the training
curves: in-process (`JobManager.submit` to the first base "loss" record in `snapshot()`) and in
the browser (the click to the first drawn line, including the live fragment's 1 s tick).

Usage: python -m benchmarks.bench_app [--run-reps 3] [--no-browser]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import resx  # noqa: E402,F401  (torch first, on the main thread)
from resx.core.config import PRESETS, RunConfig  # noqa: E402
from resx.core.records import Record  # noqa: E402

from benchmarks.harness import SMALL, Sizes, format_figure, machine_info, spread  # noqa: E402


# -- panel_render: the whole Lab page ------------------------------------------------------------
def apptest_lab(records, result: dict, reps: int) -> dict:
    """Seconds per script run of the Lab page (AppTest) showing a finished run read from a fresh
    store: the snapshot from SQLite, every panel, Streamlit's serialisation."""
    import streamlit as st
    import torch
    from streamlit.testing.v1 import AppTest

    from resx.runs.store import RecordWriter, Store

    threads = torch.get_num_threads()
    # "missing ScriptRunContext" warnings, for the cache cleared outside a page; a filter, because
    # AppTest resets streamlit's log levels
    quiet = logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context")
    no_context = logging.Filter("-")   # passes nothing (no logger is named "-")
    quiet.addFilter(no_context)
    try:
        with tempfile.TemporaryDirectory(prefix="resx-bench-home-") as home, \
                mock.patch.dict(os.environ, {"RESX_HOME": home}):
            store = Store(home)
            run_id = store.create_run(result["config"], source="bench")
            with RecordWriter(store, run_id) as writer:
                for r in records:
                    writer(r)
            store.set_result(run_id, result)
            store.set_status(run_id, "done")
            start = time.perf_counter()
            stored = len(store.records(run_id))
            read_s = time.perf_counter() - start
            store.close()
            st.cache_resource.clear()
            times = []
            try:
                for _ in range(reps + 1):   # the first warms up
                    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
                    at.switch_page("views/lab.py")
                    at.query_params["run"] = run_id
                    start = time.perf_counter()
                    at.run()
                    times.append(time.perf_counter() - start)
                    if at.exception:
                        raise RuntimeError(f"the Lab page raised: {at.exception[0].message}")
            finally:
                import ui
                while ui.MANAGERS:
                    ui.MANAGERS.pop().shutdown(wait=True, timeout=10)
                st.cache_resource.clear()
    finally:
        torch.set_num_threads(threads)   # the page's job manager sets torch's threads for the process
        quiet.removeFilter(no_context)
    return {"run_s": spread(times[1:]), "charts": len(at.get("plotly_chart")),
            "store_records_read_s": read_s, "records_read": stored}


# -- server_memory -------------------------------------------------------------------------------
def proc_status_kib(pid: int, key: str) -> int | None:
    """A field of /proc/<pid>/status in KiB (VmRSS: now, VmHWM: the peak so far)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RSSSampler:
    """Samples VmRSS (MiB) of a process every `every` seconds on a thread, until stopped."""

    def __init__(self, pid: int, every: float = 0.1):
        self.pid, self.every, self.samples = pid, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            if (kib := proc_status_kib(self.pid, "VmRSS")) is not None:
                self.samples.append(kib / 1024)
            self._stop.wait(self.every)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.samples


def server_memory(sizes) -> tuple[float, dict]:
    """Peak RSS (VmHWM, MiB) of `streamlit run app.py` (headless, a free port, RESX_HOME temporary)
    from start-up until the Lab's run of demo-mlp (with `sizes.server_run` typed over it) is done.
    Raises ImportError / FileNotFoundError without Playwright or Chromium."""
    from browser_util import CHROMIUM, Server, fill_lab_form, launch_chromium, press_run, status_alert
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise FileNotFoundError(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    values = dict(sizes.server_run)
    with tempfile.TemporaryDirectory(prefix="resx-bench-server-") as home:
        server = Server(home=Path(home), log_path=Path(home) / "streamlit.log")
        start = time.perf_counter()
        server.start(timeout=180)
        pid, raw = server.proc.pid, {"healthy_after_s": time.perf_counter() - start}
        sampler = RSSSampler(pid)
        from load_driver import _MemorySampler   # the process tree: the server and its worker processes
        tree = _MemorySampler(pid)
        tree.start()
        try:
            raw["rss_healthy_mib"] = proc_status_kib(pid, "VmRSS") / 1024
            with sync_playwright() as p:
                browser = launch_chromium(p)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(server.url + "/")
                fill_lab_form(page, values)
                raw["rss_page_loaded_mib"] = proc_status_kib(pid, "VmRSS") / 1024
                start = time.perf_counter()
                press_run(page)
                status_alert(page, "done").wait_for(timeout=300_000)
                raw["run_s"] = time.perf_counter() - start
                page.wait_for_timeout(1000)   # the finished page's last rerun
                raw["rss_after_run_mib"] = proc_status_kib(pid, "VmRSS") / 1024
                peak = proc_status_kib(pid, "VmHWM") / 1024
                browser.close()
        finally:
            samples = sampler.stop()
            tree.stop.set()
            tree.join()
            server.stop()
    raw["tree_peak_sampled_mib"] = tree.peak   # the pipeline runs in worker processes (resx/runs/workers.py)
    raw.update(method="streamlit run app.py, Run pressed in Chromium; peak = the server process's VmHWM "
                      "(/proc), its RSS sampled every 0.1 s beside it; tree_peak_sampled_mib: the summed RSS "
                      "of the server and its worker processes, sampled every 0.25 s",
               run=f"demo-mlp {'with ' + str(values) if values else 'as shipped'}",
               rss_sampled_mib=spread(samples, unit="MiB") | {"max_sampled": max(samples)}, peak_mib=peak)
    return peak, raw


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
    from resx.runs.pipeline import run_pipeline

    return run_pipeline(PRESETS["demo-mlp"].replace(**SMALL, n_pop=4096, device="cpu"))


def render_panels(records: tuple[Record, ...], result: dict, position: int) -> dict[str, tuple[float, int]]:
    """Each live panel built by resx.figures.live and serialised by Figure.to_json (what st.plotly_chart
    sends): {panel: (seconds, payload bytes)}."""
    from resx.figures import live as plots

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
            raw["apptest_lab"] = apptest_lab(records, result, reps)
        except Exception as e:  # optional: the figure above is the headline
            raw["apptest_error"] = f"{type(e).__name__}: {e}"
    return raw["total_ms"]["median"], raw


# ---------------------------------------------------------------------------------------------
# server_memory: peak RSS of a real server running demo-mlp, driven by Chromium

def bench_server_memory(sizes: Sizes, reps: int) -> tuple[float, dict]:
    """Peak resident memory (MiB) of `streamlit run app.py` while the Lab runs demo-mlp, pressed in
    the system Chromium (benchmarks/bench_app.py); without a checkout, Playwright or Chromium,
    the peak of a process that runs the same job without Streamlit (a lower bound, so marked)."""
    try:
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
from resx.core.config import PRESETS
from resx.runs.jobs import JobManager
from resx.runs.pipeline import run_pipeline
from resx.runs.store import Store
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
    values = dict(sizes.server_run)
    out = subprocess.run([sys.executable, "-c", PIPELINE_CHILD, json.dumps(values)], capture_output=True,
                         text=True, timeout=600, cwd=ROOT, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    if child["status"] != "done":
        raise RuntimeError(f"the run ended {child['status']}")
    return {"method": "a child process running demo-mlp through resx.jobs.JobManager without Streamlit; "
                      "peak = its VmHWM", "run": f"demo-mlp {values or 'as shipped'}",
            "peak_mib": child["peak_kib"] / 1024}


# -- Run -> first live point ---------------------------------------------------------------------
def first_record_in_process(cfg: RunConfig, reps: int) -> tuple[list[float], list[float]]:
    """Seconds from submit to the first record of any kind, and to the first base 'loss' record."""
    from resx.runs.jobs import JobManager
    from resx.runs.pipeline import run_pipeline
    from resx.runs.store import Store

    home = Path(tempfile.mkdtemp(prefix="resx-bench-"))
    store = Store(home)
    manager = JobManager(store, run_pipeline, workers=1)
    any_rec, loss_rec = [], []
    try:
        for _ in range(reps):
            start = time.perf_counter()
            run_id = manager.submit(cfg, source="bench")
            t_any = None
            while time.perf_counter() < start + 300:
                snap = manager.snapshot(run_id)
                now = time.perf_counter() - start
                if t_any is None and snap.records:
                    t_any = now
                if any(r.name == "loss" and r.phase == "base" for r in snap.records):
                    any_rec.append(t_any)
                    loss_rec.append(now)
                    break
                if not snap.is_active:
                    break
                time.sleep(0.002)
            manager.cancel(run_id)
            manager.wait(run_id, timeout=60)
    finally:
        manager.shutdown(wait=True, timeout=30)
        store.close()
        shutil.rmtree(home, ignore_errors=True)
    return any_rec, loss_rec


def first_point_in_browser(reps: int) -> tuple[list[float], list[float]] | None:
    """Seconds from the click on Run to the first drawn line: demo-mlp as shipped, and SMALL."""
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
            for _ in range(reps):
                for values, out in (({}, default), (SMALL, small)):
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(server.url + "/")
                    fill_lab_form(page, values)
                    start = time.perf_counter()
                    press_run(page)
                    page.wait_for_function(LIVE_POINT, timeout=180_000, polling=20)
                    out.append(time.perf_counter() - start)
                    stop = main_button(page, "Stop run")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-reps", type=int, default=3, help="runs started per time-to-first-point figure")
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average']}; python {m['python']}, "
          f"torch {m['torch']} ({m['torch_threads']} threads), streamlit {m['streamlit']}, plotly {m['plotly']}")
    print("Run -> first live point")
    for label, cfg in (("demo-mlp as shipped", PRESETS["demo-mlp"]),
                       ("small (tests' values)", PRESETS["demo-mlp"].replace(**SMALL))):
        any_rec, loss = first_record_in_process(cfg, args.run_reps)
        print(f"  in-process, {label}: first record {format_figure(spread(any_rec))}; "
              f"first base loss {format_figure(spread(loss))}")
    if not args.no_browser and (got := first_point_in_browser(args.run_reps)):
        default, small = got
        print(f"  browser, demo-mlp as shipped: click Run -> first drawn point {format_figure(spread(default))}")
        print(f"  browser, small (tests' values): click Run -> first drawn point {format_figure(spread(small))}")


if __name__ == "__main__":
    main()
