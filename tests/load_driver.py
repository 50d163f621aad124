"""Many real browser sessions pressing Run at once on one `streamlit run` (issue 10), shared by
tests/test_load.py (CI, tiny runs) and benchmarks/bench_load.py (demo-mlp, figures).

Each session is its own Playwright browser context (its own Streamlit session, as separate
students' browsers are). Sessions open their URL, wait for the Lab form, then Run is pressed in
all of them within about a second; the driver polls every page until it shows a final status,
collecting exception boxes and the sidebar's navigation on the way. Beside them a probe session
reloads the Lab again and again: the time from reload to the form drawn and settled is the page
latency a student would feel during the load. Server memory is the summed RSS of the server's
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
    latencies: list[float] = field(default_factory=list)         # probe: reload -> form settled, s
    peak_rss_mb: float = 0.0
    wall_s: float = 0.0

    @property
    def all_done(self) -> bool:
        return len(self.statuses) == self.sessions and all(s == "done" for s in self.statuses.values())

    def p95_latency(self) -> float | None:
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]

    def summary(self) -> dict:
        times = sorted(self.finished.values())
        return {"sessions": self.sessions, "all_done": self.all_done,
                "statuses": sorted(set(self.statuses.values())),
                "distinct_runs": len(set(self.run_ids.values())), "cache_notes": self.cache_notes,
                "last_done_s": round(max(times), 1) if times else None,
                "first_done_s": round(min(times), 1) if times else None,
                "median_done_s": round(statistics.median(times), 1) if times else None,
                "p95_latency_s": None if self.p95_latency() is None else round(self.p95_latency(), 2),
                "latency_samples": len(self.latencies), "peak_rss_mb": round(self.peak_rss_mb),
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


def _final_status(page) -> str | None:
    for status in FINAL:
        if status_alert(page, status).count():
            return status
    return None


def drive(browser, server, urls: list[str], timeout_s: float, probe: bool = True,
          screenshot: Path | None = None) -> LoadReport:
    """Open one session per URL, press Run in all at once, wait until each shows a final status."""
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
            ctx = browser.new_context(viewport={"width": 1300, "height": 900})
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
        next_probe = time.monotonic()
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
                t0 = time.monotonic()
                probe_page.reload()
                probe_page.get_by_role("button", name="Run", exact=True).wait_for(timeout=120_000)
                probe_page.wait_for_function(
                    "() => !document.querySelector('[data-stale=\"true\"]')"
                    " && !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=120_000)
                report.latencies.append(time.monotonic() - t0)
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
