"""Many real browser sessions pressing Run at once on one `streamlit run` (issue 10), shared by
tests/test_load.py (CI, tiny runs) and benchmarks/bench_load.py (demo-mlp, figures).

Each session is its own Playwright browser context (its own Streamlit session, as separate
students' browsers are). Sessions open their URL and wait for the Lab form; then every page clicks
Run by its own timer at one common moment, and notes itself when its final status banner first
appears (FINAL_WATCH), so a session's time to done is what its page showed, not when the driver
got round to asking; the driver then collects exception boxes and the sidebar's navigation. Beside
them a probe session, in its own thread and normal-priority browser, measures the page latency a
student would feel during the load: about once a second it moves between the Lab and the Runs
page through the app's menu (a page rerun: one script run over the open websocket), timed from
the click to the new page drawn and settled; every fifth time it reloads the Lab instead (a new
session: the browser boots the frontend again, most of it browser work), reported apart. Server
memory is the summed RSS, and the summed PSS, of the server's whole process tree (the Streamlit
process and its worker processes), sampled every 0.25 s with the CPU seconds of each part.
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

from browser_util import full_screenshot, page_errors

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
    latencies: list[float] = field(default_factory=list)         # probe: menu click -> page settled, s, timed in the page
    driver_latencies: list[float] = field(default_factory=list)  # the same reruns timed by the driver (its round trips too)
    reload_latencies: list[float] = field(default_factory=list)  # probe: reload -> Lab form settled, s
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0                                     # the same tree's summed PSS
    peak_rss_parts_mb: dict[str, int] = field(default_factory=dict)  # the server's and the workers' own peaks
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds during the load: server, workers, browsers
    wall_s: float = 0.0
    unfinished: dict[int, list[str]] = field(default_factory=dict)  # session -> its status texts at the end
    crashed: list[int] = field(default_factory=list)                # sessions whose renderer crashed
    js_errors: dict[int, list[str]] = field(default_factory=dict)   # session -> uncaught errors, console errors
    press_spread_s: float | None = None   # the last page's click after the common press moment, s
    ws_frames: dict[int, list[float]] = field(default_factory=dict)  # session -> websocket frames in / out, times
    ws_sent: dict[int, list[float]] = field(default_factory=dict)

    @property
    def all_done(self) -> bool:
        return len(self.statuses) == self.sessions and all(s == "done" for s in self.statuses.values())

    def p95_latency(self, reloads: bool = False, driver: bool = False) -> float | None:
        xs = sorted(self.reload_latencies if reloads else self.driver_latencies if driver else self.latencies)
        return round(xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))], 2) if xs else None

    def summary(self) -> dict:
        times = sorted(self.finished.values())
        return {"sessions": self.sessions, "all_done": self.all_done,
                "statuses": sorted(set(self.statuses.values())),
                "distinct_runs": len(set(self.run_ids.values())), "cache_notes": self.cache_notes,
                "last_done_s": round(max(times), 1) if times else None,
                "first_done_s": round(min(times), 1) if times else None,
                "median_done_s": round(statistics.median(times), 1) if times else None,
                "p95_latency_s": self.p95_latency(), "latency_samples": len(self.latencies),
                "p95_latency_driver_s": self.p95_latency(driver=True), "p95_reload_latency_s": self.p95_latency(True),
                "reload_samples": len(self.reload_latencies), "peak_rss_mb": round(self.peak_rss_mb),
                "peak_pss_mb": round(self.peak_pss_mb), "peak_rss_parts_mb": self.peak_rss_parts_mb, "cpu_s": self.cpu_s,
                "errors": sum(len(v) for v in self.errors.values()), "bad_nav": sum(map(len, self.bad_nav.values())),
                "press_spread_s": None if self.press_spread_s is None else round(self.press_spread_s, 2),
                "unfinished": {str(k): v for k, v in self.unfinished.items()}, "crashed": self.crashed,
                "js_errors": {str(k): v[:3] for k, v in self.js_errors.items()}, "wall_s": round(self.wall_s, 1)}

    def websocket_activity(self, session: int, now: float, window_s: float = 10.0) -> str:
        """What a session's websocket did lately: frames the server sent and the page sent (each
        fragment tick is one rerun request out, its deltas in) in the last `window_s`, and the age
        of the last of each; a page whose timers stopped sends nothing."""
        def part(times):
            recent = sum(1 for t in times if t > now - window_s)
            last = f"{now - times[-1]:.1f} s ago" if times else "never"
            return f"{recent} in the last {window_s:g} s, last {last}"
        return (f"websocket: from the server {part(self.ws_frames.get(session, []))}; "
                f"from the page {part(self.ws_sent.get(session, []))}")


def lab_url(base: str, params: dict) -> str:
    return f"{base}/lab?{urlencode(params)}" if params else f"{base}/lab"


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


def _rss_mb(pid: int, pss: bool = False) -> float:
    """Resident MiB of `pid`; with `pss`, its proportional share (a page mapped by k processes
    counts 1/k in each: torch's libraries, mapped by every worker, then count once in a sum)."""
    path, key = (f"/proc/{pid}/smaps_rollup", "Pss:") if pss else (f"/proc/{pid}/status", "VmRSS:")
    try:
        with open(path) as f:
            return next((int(line.split()[1]) for line in f if line.startswith(key)), 0) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0


def _cpu_s(pid: int) -> float | None:
    """utime + stime of `pid` in seconds (fields 14 and 15 of /proc/pid/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class _MemorySampler(threading.Thread):
    """Every 0.25 s: the server tree's summed RSS and PSS (peaks kept), and the CPU seconds used since the
    start by three parts: the Streamlit process, its worker processes, and this driver's browsers
    (every other process under this Python process)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.peak_pss, self.stop = pid, 0.0, 0.0, threading.Event()
        self.peak_parts: dict[str, float] = {}   # each part's own peak (they need not peak together)
        self.cpu_start: dict[int, float] = {}
        self.cpu_last: dict[int, tuple[str, float]] = {}
        for pids in self._parts().values():
            for p in pids:
                if (c := _cpu_s(p)) is not None:
                    self.cpu_start[p] = c

    def _parts(self) -> dict[str, list[int]]:
        server = _tree(self.pid)
        browsers = [p for p in _tree(os.getpid())[1:] if p not in server]
        return {"server": server[:1], "workers": server[1:], "browsers": browsers}

    def run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.25)
        self.sample()

    def sample(self):
        parts = self._parts()
        server, workers = sum(map(_rss_mb, parts["server"])), sum(map(_rss_mb, parts["workers"]))
        self.peak = max(self.peak, server + workers)
        self.peak_pss = max(self.peak_pss, sum(_rss_mb(p, pss=True) for p in parts["server"] + parts["workers"]))
        self.peak_parts = {"server": max(self.peak_parts.get("server", 0), server),
                           "workers": max(self.peak_parts.get("workers", 0), workers)}
        for part, pids in parts.items():
            for p in pids:
                if (c := _cpu_s(p)) is not None:
                    self.cpu_last[p] = (part, c)

    def cpu_by_part(self) -> dict[str, float]:
        """CPU seconds per part since the sampler was made (a process gone before its last sample
        loses its final quarter second)."""
        out = {"server": 0.0, "workers": 0.0, "browsers": 0.0}
        for p, (part, c) in self.cpu_last.items():
            out[part] += c - self.cpu_start.get(p, 0.0)
        return {k: round(v, 1) for k, v in out.items()}


def _nav_problems(page) -> list[str]:
    links = page.locator('[data-testid="stSidebarNav"] a')
    names = [t.strip().split("\n")[-1].strip() for t in links.all_inner_texts()]  # after the icon's ligature name
    return [n for n in names if n and n not in NAV_TITLES]


SETTLED = ("() => !document.querySelector('[data-stale=\"true\"]')"
           " && !document.querySelector('[data-testid=\"stSkeleton\"]')")


# A page rerun timed by the page itself (Date.now()), from the menu click to the new page in the
# DOM with nothing stale or loading: not the driver's round trips to a busy browser.
RERUN_TIMED = """([link, heading]) => new Promise(resolve => {
  const t0 = Date.now();
  const drawn = () => !document.querySelector('[data-stale="true"]') && !document.querySelector('[data-testid="stSkeleton"]')
    && (heading ? [...document.querySelectorAll('[data-testid="stHeading"]')].some(h => h.textContent.trim() === heading)
                : [...document.querySelectorAll('button')].some(b => b.textContent.trim() === 'Run'));
  const observer = new MutationObserver(() => { if (drawn()) { observer.disconnect(); resolve((Date.now() - t0) / 1000); } });
  observer.observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
  [...document.querySelectorAll('[data-testid="stSidebarNav"] a')].find(a => a.textContent.includes(link)).click();
})"""


def _probe_once(page, cycle: int, report: LoadReport) -> None:
    """One latency sample: every fifth a reload of the Lab (timed by the driver), else a page
    rerun through the menu to the page the probe is not on (Lab <-> Runs; it is on the Lab after
    a reload), timed in the page (RERUN_TIMED)."""
    if cycle % 5 == 4:
        t0 = time.monotonic()
        page.goto(page.url.split("?")[0].rsplit("/", 1)[0] + "/lab")
        page.get_by_role("button", name="Run", exact=True).wait_for(timeout=120_000)
        page.wait_for_function(SETTLED, timeout=120_000)
        report.reload_latencies.append(time.monotonic() - t0)
    else:
        to_runs = page.url.split("?")[0].endswith("/lab")
        t0 = time.monotonic()
        report.latencies.append(page.evaluate(RERUN_TIMED, ["Runs", "Runs"] if to_runs else ["Lab", None]))
        report.driver_latencies.append(time.monotonic() - t0)


# Each session page notes, itself, when a final status banner first appears (Date.now(), the
# machine's clock): what the student sees, however long the driver takes to ask.
FINAL_WATCH = """(() => {
  const re = /:\\s*(%s)\\b/;
  const check = () => {
    if (window.__resxFinal) return;
    for (const el of document.querySelectorAll('[data-testid="stAlert"]')) {
      const m = (el.textContent || "").match(re);
      if (m) { window.__resxFinal = {status: m[1], at: Date.now()}; return; }
    }
  };
  new MutationObserver(check).observe(document, {subtree: true, childList: true, characterData: true});
})();""" % "|".join(FINAL)


# Run is pressed in every session at one moment: each page gets a timer for it (the driver's
# calls reach the pages one by one, slowly when their renderers are starved); a page's time to
# done counts from that moment, and the last page's delay in acting on the click is reported.
PRESS_LEAD_S = 3.0
PRESS = "(button, at) => setTimeout(() => { window.__resxPressed = Date.now(); button.click(); }, Math.max(0, at - Date.now()))"


class _Probe(threading.Thread):
    """The latency probe in its own thread, Playwright and normal-priority browser, so that it
    samples about once a second however slowly the session pages answer the driver."""

    def __init__(self, url: str, report: LoadReport, boost: bool = False):
        super().__init__(daemon=True)
        self.url, self.report, self.boost = url, report, boost
        self.ready, self.stop, self.error = threading.Event(), threading.Event(), None

    def run(self):
        from playwright.sync_api import sync_playwright

        from browser_util import launch_chromium
        try:
            with sync_playwright() as p:
                browser = launch_chromium(p, boost=self.boost)
                try:
                    page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
                    page.goto(self.url + "/lab")
                    page.get_by_role("button", name="Run", exact=True).wait_for(timeout=120_000)
                    self.ready.set()
                    cycle = 0
                    while not self.stop.is_set():
                        _probe_once(page, cycle, self.report)
                        cycle += 1
                        self.stop.wait(1.0)
                finally:
                    browser.close()
        except Exception as e:  # reported by drive(), not lost with the thread
            self.error = e
            self.ready.set()


def _console_error(errors: dict[int, list[str]], session: int, message) -> None:
    """A console error of `session`, once per distinct text (a failed resource with its URL)."""
    if message.type != "error":
        return
    text, url = message.text[:300], (message.location or {}).get("url", "")
    if re.search(r"//[^/]+/[^/]+/_stcore/(health|host-config)$", url):
        return  # the frontend first tries the page's path (/lab/_stcore/...) as the server's base: 404, then /
    if text.startswith("Failed to load resource"):
        text += " " + url
    if text not in errors.get(session, []):
        errors.setdefault(session, []).append(text)


def _watch_socket(report: LoadReport, session: int, ws) -> None:
    """Note the time of every frame on the session's Streamlit websocket, both ways."""
    if "_stcore/stream" not in ws.url:
        return
    ws.on("framereceived", lambda _f: report.ws_frames.setdefault(session, []).append(time.monotonic()))
    ws.on("framesent", lambda _f: report.ws_sent.setdefault(session, []).append(time.monotonic()))


def drive(browser, server, urls: list[str], timeout_s: float, probe: bool = True,
          screenshot: Path | None = None, probe_boost: bool = False) -> LoadReport:
    """Open one session per URL, press Run in all at once, wait until each shows a final status
    (timed by the page itself, FINAL_WATCH). With `probe`, a probe session in its own browser
    measures page latency meanwhile."""
    report = LoadReport(len(urls))
    contexts, pages = [], []
    prober = _Probe(server.url, report, probe_boost) if probe else None
    try:
        for url in urls:
            ctx = browser.new_context(viewport={"width": 1300, "height": 900},
                                      extra_http_headers={"X-Resx-Session": str(len(pages))})  # ui.state.trace's name
            ctx.set_default_timeout(60_000)
            ctx.add_init_script(FINAL_WATCH)
            page = ctx.new_page()
            page.on("crash", lambda _page, i=len(pages): report.crashed.append(i))
            page.on("pageerror", lambda e, i=len(pages): report.js_errors.setdefault(i, []).append(f"uncaught: {e}"))
            page.on("console", lambda m, i=len(pages): _console_error(report.js_errors, i, m))
            page.on("websocket", lambda ws, i=len(pages): _watch_socket(report, i, ws))
            page.goto(url)
            contexts.append(ctx)
            pages.append(page)
        for page in pages:
            page.get_by_role("button", name="Run", exact=True).wait_for(timeout=120_000)
        if prober is not None:
            prober.start()
            prober.ready.wait(180)
            if prober.error is not None:
                raise RuntimeError("the latency probe could not start") from prober.error
        sampler = _MemorySampler(server.proc.pid)
        sampler.start()
        start = time.monotonic()
        press_at = time.time() + PRESS_LEAD_S  # every page clicks Run itself at this moment (PRESS)
        for page in pages:
            page.get_by_role("button", name="Run", exact=True).evaluate(PRESS, press_at * 1000)
        deadline = start + timeout_s
        while len(report.statuses) < len(pages) and time.monotonic() < deadline:
            for i, page in enumerate(pages):
                if i in report.statuses:
                    continue
                final = page.evaluate("() => window.__resxFinal || null")
                if final is not None:
                    report.finished[i] = final["at"] / 1000 - press_at
                    report.statuses[i] = final["status"]
                    m = re.search(r"[?&]run=([^&#]+)", page.url)
                    report.run_ids[i] = m.group(1) if m else ""
            time.sleep(0.5)
        report.wall_s = time.monotonic() - start
        clicks = [page.evaluate("() => window.__resxPressed || null") for page in pages]
        report.press_spread_s = max((c / 1000 - press_at for c in clicks if c), default=None)
        sampler.stop.set()
        sampler.join()
        report.peak_rss_mb, report.cpu_s = sampler.peak, sampler.cpu_by_part()
        report.peak_rss_parts_mb = {k: round(v) for k, v in sampler.peak_parts.items()}
        report.peak_pss_mb = sampler.peak_pss
        if prober is not None:
            prober.stop.set()
            prober.join(180)
            if prober.error is not None:
                raise RuntimeError("the latency probe failed during the load") from prober.error
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
        for i, page in enumerate(pages):  # what a session that never finished shows
            if i not in report.statuses:
                report.unfinished[i] = page.locator('[data-testid="stProgress"], [data-testid="stAlert"]').all_inner_texts()[:3] + [
                    page.url.split("/", 3)[-1], page.evaluate("() => `body: ${document.body.innerText.length} chars`"),
                    report.websocket_activity(i, time.monotonic())]
        if screenshot is not None and pages:  # a session that never finished, if any: what it shows
            unfinished = [page for i, page in enumerate(pages) if i not in report.statuses]
            full_screenshot((unfinished or pages)[-1], screenshot)  # the whole scrolled page
        return report
    finally:
        if prober is not None:
            prober.stop.set()
        for ctx in contexts:
            ctx.close()
