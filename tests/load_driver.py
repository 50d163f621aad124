"""Many real browser sessions pressing Run at once on one `streamlit run` (issue 10), shared by
tests/test_load.py (CI, tiny runs) and benchmarks/bench_load.py (demo-mlp, figures).

Each session is its own Playwright browser context (its own Streamlit session, as separate
students' browsers are). Sessions open their URL, wait for the Lab form, then Run is pressed in
all of them within about a second; the driver polls every page until it shows a final status,
collecting exception boxes and the sidebar's navigation on the way. Beside them a probe session
measures the page latency a student would feel during the load: about once a second it moves
between the Lab and the Runs page through the app's menu (a page rerun: one script run over the
open websocket), timed from the click to the new page drawn and settled; every fifth time it
reloads the Lab instead (a new session: the browser boots the frontend again, most of it
browser work), reported apart. Server memory is the summed RSS of the server's
whole process tree (the Streamlit process and its worker processes), sampled every 0.25 s.
"""
from __future__ import annotations

import os
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from browser_util import page_errors, status_alert

FINAL = ("done", "failed", "cancelled", "diverged", "interrupted")
NAV_TITLES = {"Lab", "Lesson", "Class", "Signals", "Scaling", "Allocation", "Runs", "Theory"}  # app.py's st.navigation


@dataclass
class LoadReport:
    sessions: int
    finished: dict[int, float] = field(default_factory=dict)   # session -> seconds from its Run press
    statuses: dict[int, str] = field(default_factory=dict)
    run_ids: dict[int, str] = field(default_factory=dict)
    errors: dict[int, list[str]] = field(default_factory=dict)  # exception boxes seen
    bad_nav: dict[int, list[str]] = field(default_factory=dict) # sidebar entries that are not the app's
    cache_notes: int = 0                                         # sessions told "same as run X"
    latencies: list[float] = field(default_factory=list)         # probe: menu click -> page settled, s
    reload_latencies: list[float] = field(default_factory=list)  # probe: reload -> Lab form settled, s
    peak_rss_mb: float = 0.0
    wall_s: float = 0.0

    @property
    def all_done(self) -> bool:
        return len(self.statuses) == self.sessions and all(s == "done" for s in self.statuses.values())

    def p95_latency(self, reloads: bool = False) -> float | None:
        xs = sorted(self.reload_latencies if reloads else self.latencies)
        return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))] if xs else None

    def summary(self) -> dict:
        times = sorted(self.finished.values())
        return {"sessions": self.sessions, "all_done": self.all_done,
                "statuses": sorted(set(self.statuses.values())),
                "distinct_runs": len(set(self.run_ids.values())), "cache_notes": self.cache_notes,
                "last_done_s": round(max(times), 1) if times else None,
                "first_done_s": round(min(times), 1) if times else None,
                "median_done_s": round(statistics.median(times), 1) if times else None,
                "p95_latency_s": None if self.p95_latency() is None else round(self.p95_latency(), 2),
                "latency_samples": len(self.latencies),
                "p95_reload_latency_s": None if self.p95_latency(True) is None else round(self.p95_latency(True), 2),
                "reload_samples": len(self.reload_latencies), "peak_rss_mb": round(self.peak_rss_mb),
                "errors": sum(len(v) for v in self.errors.values()), "bad_nav": sum(map(len, self.bad_nav.values())),
                "wall_s": round(self.wall_s, 1)}


def lab_url(base: str, params: dict) -> str:
    return f"{base}/lab?{urlencode(params)}" if params else f"{base}/lab"


def tree_rss_mb(pid: int) -> float:
    """Summed RSS (MiB) of `pid` and all its descendants, read from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024


class _MemorySampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self.stop.wait(0.25)


def _nav_problems(page) -> list[str]:
    links = page.locator('[data-testid="stSidebarNav"] a')
    names = [t.strip().split("\n")[-1].strip() for t in links.all_inner_texts()]  # after the icon's ligature name
    return [n for n in names if n and n not in NAV_TITLES]


SETTLED = ("() => !document.querySelector('[data-stale=\"true\"]')"
           " && !document.querySelector('[data-testid=\"stSkeleton\"]')")


def _probe_once(page, cycle: int, report: LoadReport) -> None:
    """One latency sample: every fifth a reload of the Lab, else a page rerun through the menu to
    the page the probe is not on (Lab <-> Runs; it is on the Lab after a reload)."""
    t0 = time.monotonic()
    if cycle % 5 == 4:
        page.goto(page.url.split("?")[0].rsplit("/", 1)[0] + "/lab")
        target, into = page.get_by_role("button", name="Run", exact=True), report.reload_latencies
    else:
        to_runs = page.url.split("?")[0].endswith("/lab")
        page.locator('[data-testid="stSidebarNav"] a', has_text="Runs" if to_runs else "Lab").click()
        page.wait_for_url("**/runs*" if to_runs else "**/lab*", timeout=120_000)
        target = (page.get_by_role("heading", name="Runs") if to_runs
                  else page.get_by_role("button", name="Run", exact=True))
        into = report.latencies
    target.wait_for(timeout=120_000)
    page.wait_for_function(SETTLED, timeout=120_000)
    into.append(time.monotonic() - t0)


def _final_status(page) -> str | None:
    for status in FINAL:
        if status_alert(page, status).count():
            return status
    return None


def drive(browser, server, urls: list[str], timeout_s: float, probe: bool = True,
          screenshot: Path | None = None, probe_browser=None) -> LoadReport:
    """Open one session per URL, press Run in all at once, wait until each shows a final status.
    The probe session opens in `probe_browser` (default: the same browser)."""
    report = LoadReport(len(urls))
    contexts, pages = [], []
    try:
        for url in urls:
            ctx = browser.new_context(viewport={"width": 1300, "height": 900})
            ctx.set_default_timeout(60_000)
            page = ctx.new_page()
            page.goto(url)
            contexts.append(ctx)
            pages.append(page)
        for page in pages:
            page.get_by_role("button", name="Run", exact=True).wait_for(timeout=120_000)
        probe_page = None
        if probe:
            ctx = (probe_browser or browser).new_context(viewport={"width": 1300, "height": 900})
            contexts.append(ctx)
            probe_page = ctx.new_page()
            probe_page.goto(server.url + "/lab")
            probe_page.get_by_role("button", name="Run", exact=True).wait_for(timeout=120_000)
        sampler = _MemorySampler(server.proc.pid)
        sampler.start()
        start = time.monotonic()
        pressed = {}
        for i, page in enumerate(pages):
            page.get_by_role("button", name="Run", exact=True).click()
            pressed[i] = time.monotonic()
        deadline = start + timeout_s
        next_probe, cycle = time.monotonic(), 0
        while len(report.statuses) < len(pages) and time.monotonic() < deadline:
            for i, page in enumerate(pages):
                if i in report.statuses:
                    continue
                status = _final_status(page)
                if status is not None:
                    report.finished[i] = time.monotonic() - pressed[i]
                    report.statuses[i] = status
                    m = re.search(r"[?&]run=([^&#]+)", page.url)
                    report.run_ids[i] = m.group(1) if m else ""
            if probe_page is not None and time.monotonic() >= next_probe:
                _probe_once(probe_page, cycle, report)
                cycle += 1
                next_probe = time.monotonic() + 1.0
            else:
                time.sleep(0.25)
        report.wall_s = time.monotonic() - start
        sampler.stop.set()
        sampler.join()
        report.peak_rss_mb = sampler.peak
        for i, page in enumerate(pages):
            page.wait_for_timeout(200)
            errors = page_errors(page)
            if errors:
                report.errors[i] = errors
            nav = _nav_problems(page)
            if nav:
                report.bad_nav[i] = nav
            if page.locator('[data-testid="stAlert"]', has_text="Same configuration, seed and code").count():
                report.cache_notes += 1
        if screenshot is not None and pages:  # a session that never finished, if any: what it shows
            unfinished = [page for i, page in enumerate(pages) if i not in report.statuses]
            (unfinished or pages)[-1].screenshot(path=str(screenshot), full_page=True)
        return report
    finally:
        for ctx in contexts:
            ctx.close()
