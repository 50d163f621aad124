"""A class on one server (issue 10): many real Chromium sessions press Run on demo-mlp at once.

`python -m benchmarks.bench_load [--scenario seeds|identical|single] [--sessions N] [--json]`

  seeds      N sessions, each its own ?seed=: every one reaches done; targets (10 sessions): the
             last within 150 s, page latency p95 under 1 s, peak server memory under 2.7 GB
  identical  N sessions with the identical default configuration: computed once, served to all;
             target (10 sessions): the last done within 30 s
  single     one session, Run -> done, beside `python -m resx run --preset demo-mlp --no-store`
             (wall time of the process, imports included) on the same machine; target <= 1.3x

Each scenario starts its own `streamlit run app.py` (fresh RESX_HOME, workers = cores) and one
headless system Chromium; tests/load_driver.py drives the sessions and measures: per-session
time from its Run press to "done", a probe session's reload -> form-settled latency every ~1 s
during the load, and the summed RSS of the server's process tree (Streamlit + worker processes;
Chromium not counted). The machine, versions and load average are printed with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from .harness import machine_info  # noqa: E402

TIMEOUT_S = {"seeds": 1800, "identical": 600, "single": 300}


def _server():
    from browser_util import Server
    home = Path(tempfile.mkdtemp(prefix="resx-bench-load-"))
    return Server(home=home, log_path=home / "streamlit.log").start(timeout=180)


def scenario(name: str, sessions: int, probe: bool = True) -> dict:
    from playwright.sync_api import sync_playwright

    from browser_util import launch_chromium
    from load_driver import drive, lab_url

    server = _server()
    try:
        time.sleep(5)  # the worker processes finish importing torch (as they would on a server up for a while)
        if name == "seeds":
            urls = [lab_url(server.url, {"seed": 1000 + k}) for k in range(sessions)]
        else:
            urls = [lab_url(server.url, {})] * sessions
        load_before = os.getloadavg()
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                report = drive(browser, server, urls, TIMEOUT_S[name], probe=probe)
            finally:
                browser.close()
        out = {"scenario": name, **report.summary(), "loadavg_before": [round(x, 2) for x in load_before],
               "loadavg_after": [round(x, 2) for x in os.getloadavg()],
               "exceptions": {str(k): v[:1] for k, v in report.errors.items()}}
        return out
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)


def cli_seconds(threads: int | None = None) -> float:
    """Wall time of `python -m resx run --preset demo-mlp --no-store` in a fresh process; with
    `threads`, OMP_NUM_THREADS pins torch's intra-op threads (the CLI itself leaves torch's default)."""
    home = tempfile.mkdtemp(prefix="resx-bench-cli-")
    env = {**os.environ, "RESX_HOME": home, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    try:
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "resx", "run", "--preset", "demo-mlp", "--no-store",
                        "--out", str(Path(home) / "out")], cwd=ROOT, check=True, capture_output=True, env=env)
        return time.monotonic() - t0
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_load", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=("seeds", "identical", "single"), action="append")
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    print(json.dumps({"machine": machine_info()}), flush=True)
    for name in args.scenario or ["single", "seeds", "identical"]:
        if name == "single":
            app = scenario("single", 1, probe=False)
            load = os.getloadavg()
            cli = cli_seconds()
            cli1 = cli_seconds(threads=1)
            fig = {"scenario": "single", "app_run_to_done_s": app["last_done_s"], "cli_wall_s": round(cli, 1),
                   "cli_wall_1thread_s": round(cli1, 1),
                   "ratio_app_over_cli": round(app["last_done_s"] / cli, 2) if app["last_done_s"] else None,
                   "ratio_app_over_cli_1thread": round(app["last_done_s"] / cli1, 2) if app["last_done_s"] else None,
                   "loadavg_app": app["loadavg_before"], "loadavg_cli": [round(x, 2) for x in load],
                   "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
        else:
            fig = scenario(name, args.sessions)
        print(json.dumps(fig), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
