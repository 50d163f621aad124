"""Helpers for the browser end-to-end tests (tests/test_browser.py) and benchmarks/bench_app.py:
start a real `streamlit run app.py` on a free localhost port, and drive the system Chromium
through Playwright (design.md "Engineering facts": nothing downloads a browser).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("RESX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
PLOTLY = '[data-testid="stPlotlyChart"] .js-plotly-plot'
# a drawn line of the training-curves chart (the first chart on the Lab page)
LIVE_POINT = ('() => { const c = document.querySelector(\'[data-testid="stPlotlyChart"] .js-plotly-plot\');'
              ' return !!c && c.querySelectorAll(".scatterlayer .trace").length > 0; }')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A `streamlit run app.py` subprocess in its own process group."""
    home: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def start(self, timeout: float = 120.0, extra_env: dict | None = None) -> "Server":
        env = {**os.environ, "RESX_HOME": str(self.home), "PYTHONUNBUFFERED": "1",
               "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", **(extra_env or {})}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port),
             "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200 and r.read().strip() == b"ok":
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"streamlit did not answer /_stcore/health within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after `grace` seconds."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            try:  # the leader may be gone while children of the group linger
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        finally:
            self._log.close()
            self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


CPU_SHARES_LOW = 2   # the load benchmark's low-share browsers, against 1024 for every other process


def launch_chromium(playwright, nice: int = 0, boost: bool = False):
    """System Chromium, at the server's priority. Run as root, Chromium raises its own browser,
    GPU, compositor and IO threads to nice -8 (it has CAP_SYS_NICE), above every process of the
    server it is meant to test; so it is started without that capability and each of its threads
    stays at nice 0, unless `boost` (the root default, kept for the A/B in bench_load).
    With `nice` > 0 the load benchmark's sessions stand for students' own machines: on the
    server's cores they should take only what the server leaves idle. The browser's whole tree
    goes into a cgroup of CPU_SHARES_LOW shares (against 1024 for everything else) where the
    cgroup-v1 cpu controller is writable, and is niced as well."""
    executable, wrap = CHROMIUM, []
    if not boost and os.geteuid() == 0 and shutil.which("setpriv"):
        wrap.append(f'exec setpriv --bounding-set -sys_nice --inh-caps -sys_nice "{CHROMIUM}" "$@"')
    if nice:
        group = _low_cpu_group()
        wrap = ([f'echo $$ > "{group}/cgroup.procs"'] if group else []) + [
            f'exec nice -n {int(nice)} ' + (wrap[0][len("exec "):] if wrap else f'"{CHROMIUM}" "$@"')]
    if wrap:
        executable = Path(tempfile.mkdtemp(prefix="resx-chromium-")) / "chromium"
        executable.write_text("#!/bin/sh\n" + "\n".join(wrap) + "\n")
        executable.chmod(0o755)
    return playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)


def _low_cpu_group() -> Path | None:
    group = Path("/sys/fs/cgroup/cpu/resx-browsers")
    try:
        group.mkdir(exist_ok=True)
        (group / "cpu.shares").write_text(str(CPU_SHARES_LOW))
        return group
    except OSError:
        return None


# -- page helpers --------------------------------------------------------------------------------
def wait_app_ready(page, timeout_ms: int = 60_000) -> None:
    """The script has run once: the Lab form's inputs, or any heading, are on the page."""
    page.locator('[data-testid="stHeading"]').first.wait_for(timeout=timeout_ms)


def fill_lab_form(page, values: dict, timeout_ms: int = 60_000) -> None:
    """Type values into the Lab form's number inputs (labelled by the RunConfig field names)."""
    page.locator('[data-testid="stNumberInput"]').first.wait_for(timeout=timeout_ms)
    for name, value in values.items():
        box = page.get_by_label(name, exact=True)
        box.fill(str(value))
        if box.input_value() != str(value):
            raise AssertionError(f"the {name!r} input holds {box.input_value()!r} after typing {value!r}")


def press_run(page, timeout_ms: int = 30_000) -> str:
    """Press the form's Run button; return the run id Streamlit put into the URL."""
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_url(re.compile(r"[?&]run="), timeout=timeout_ms)
    return run_id_from_url(page.url)


def run_id_from_url(url: str) -> str:
    m = re.search(r"[?&]run=([^&#]+)", url)
    if not m:
        raise AssertionError(f"no run id in {url}")
    return m.group(1)


def status_alert(page, status: str):
    """The Lab's final status banner ("Run `<id>`: **<status>**")."""
    return page.locator('[data-testid="stAlert"]', has_text=re.compile(rf":\s*{status}\b"))


def wait_settled(page, timeout_ms: int = 20_000) -> None:
    """No script run in progress (no stale, greyed elements; no "Stop" in Streamlit's header) and
    every lazily loaded element drawn (no loading skeletons left)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-stale=\"true\"]')"
        " && !document.querySelector('[data-testid=\"stBaseButton-header\"]')"
        " && !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=timeout_ms)


def main_button(page, name):
    """A button of the app (in the main area), not one of Streamlit's own in the header (while a
    script runs, Streamlit shows its own "Stop" there). `name`: exact text or a compiled regex."""
    return page.locator('[data-testid="stMain"]').get_by_role("button", name=name, exact=isinstance(name, str) or None)


def count_charts(page) -> int:
    return page.locator(PLOTLY).count()


def main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


def full_screenshot(page, path: Path, max_height: int = 6000) -> Path:
    """A screenshot of the whole main area: Streamlit scrolls an inner element, not the page, so
    `full_page=True` stops at the viewport; grow the viewport to the content for one shot."""
    height = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                           " return m ? m.scrollHeight : document.body.scrollHeight; }")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": int(min(max(height, size["height"]), max_height))})
    try:
        page.wait_for_timeout(300)  # one layout pass for plotly's responsive resize
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
    return path


def page_errors(page) -> list[str]:
    """Streamlit exception boxes and the 'Page not found' dialog, as text."""
    out = [page.locator('[data-testid="stException"]').nth(i).inner_text()
           for i in range(page.locator('[data-testid="stException"]').count())]
    dialog = page.get_by_role("dialog")
    out += [dialog.nth(i).inner_text() for i in range(dialog.count())
            if "not found" in dialog.nth(i).inner_text().lower()]
    return out


def select_grid_row(page, grid, text: str, check, timeout_ms: int = 10_000) -> None:
    """Select the row of an st.dataframe(on_select=...) whose cells contain `text`.

    The Glide data grid draws on a canvas; its accessibility table gives each row's
    aria-rowindex (1 = header) but no geometry. Click the row-marker checkbox at the computed
    position (rows are equally tall while the grid does not scroll); if `check()` is still false,
    fall back to the keyboard: click a cell of the row, then Shift+Space (Glide's "select row").
    """
    grid.wait_for(timeout=timeout_ms)
    rows = grid.locator('[role="row"]')
    rows.first.wait_for(state="attached", timeout=timeout_ms)
    index = grid.evaluate(
        """(el, text) => { const rows = [...el.querySelectorAll('[role="row"]')];
             const r = rows.find(r => r.innerText.includes(text));
             return r ? Number(r.getAttribute('aria-rowindex')) : null; }""", text)
    if index is None:
        raise AssertionError(f"no row containing {text!r} in the grid: {rows.all_inner_texts()}")
    count = rows.count()
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    row_h = (box["height"] - 2) / count  # header + data rows, 1 px border top and bottom
    y = box["y"] + 1 + row_h * (index - 1) + row_h / 2
    page.mouse.click(box["x"] + min(17, row_h / 2), y)
    if _wait(check, timeout_ms / 1000):
        return
    page.mouse.click(box["x"] + 60, y)          # focus a cell of the row (not the marker)
    page.keyboard.press("Shift+Space")
    if not _wait(check, timeout_ms / 1000):
        raise AssertionError(f"could not select the grid row containing {text!r}")


def wait_until(check, seconds: float) -> bool:
    """Poll `check()` every 0.2 s until it is truthy (True) or `seconds` pass (False)."""
    return _wait(check, seconds)


def _wait(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


# -- fault injection and network checks (tests/test_reliability.py, tests/test_security.py) -----
def kill_server(server: Server) -> None:
    """SIGKILL the server's whole process group at once (no shutdown hooks run), reap it, close its log."""
    if server.proc is None:
        return
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        server.proc.wait(10)  # reaped: a zombie would still answer os.kill(pid, 0)
    except subprocess.TimeoutExpired:
        pass
    server.stop()  # nothing left to signal; waits and closes the log


def health_ok(url: str, timeout: float = 5.0) -> bool:
    """Whether `url`/_stcore/health answers 200 "ok"."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=timeout) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the TCP sockets LISTENing on `port` (e.g. ['127.0.0.1', '::1']), read
    from /proc/net/tcp and /proc/net/tcp6 (Linux): '0.0.0.0' or '::' would mean every interface."""
    import ipaddress

    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: TCP_LISTEN
                continue
            raw = bytes.fromhex(addr_hex)  # 32-bit words in host byte order
            if sys.byteorder == "little":
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(str(ipaddress.ip_address(raw)))
    return found


def upload_to_lab(page, path: Path, timeout_ms: int = 30_000) -> None:
    """Open the Lab's "Your own arrays (.npz)" expander and put the file at `path` into its uploader."""
    expander = page.locator('[data-testid="stExpander"]', has_text="Your own arrays")
    expander.first.wait_for(timeout=timeout_ms)
    opened = expander.first.locator("details[open]")
    for _ in range(5):  # open it (a closed expander hides its errors); a rerun may redraw it closed
        if opened.count():
            break
        expander.first.locator("summary").first.click()
        try:
            opened.wait_for(timeout=2_000)
        except Exception:  # noqa: BLE001 (playwright's TimeoutError: click again)
            pass
    expander.first.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(
        str(path), timeout=timeout_ms)
