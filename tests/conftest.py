"""Shared pytest set-up: make `resx` importable from the repository root."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# One torch thread in the test process: tiny matrices gain nothing from two, and with the other
# core busy (a streamlit server, a subprocess) two threads can stall each other badly.
torch.set_num_threads(1)


import os  # noqa: E402

import pytest  # noqa: E402

CHROMIUM_PATH = "/usr/bin/chromium"


@pytest.fixture
def app_home(tmp_path, monkeypatch):
    """A fresh RESX_HOME for AppTest, the operator's data folder fixed, no operator caps, and no
    job manager or task runner cached from another test (cached resources outlive an AppTest)."""
    import streamlit as st

    monkeypatch.setenv("RESX_HOME", str(tmp_path))
    monkeypatch.setenv("RESX_DATA_DIR", str(tmp_path / "operator-data"))
    for var in ("RESX_MAX_WIDTH", "RESX_MAX_DEPTH", "RESX_MAX_N", "RESX_MAX_RUNNING", "RESX_MAX_JOBS"):
        monkeypatch.delenv(var, raising=False)
    st.cache_resource.clear()
    yield tmp_path
    import ui
    while ui.MANAGERS:
        ui.MANAGERS.pop().shutdown(wait=True, timeout=10)
    while ui.TASK_RUNNERS:
        ui.TASK_RUNNERS.pop().shutdown(timeout=30)
    st.cache_resource.clear()


@pytest.fixture(scope="module")
def chromium():
    """The system Chromium, or a skip (a failure on CI) saying how to get it."""
    from pathlib import Path

    path = Path(CHROMIUM_PATH)
    if not path.exists():
        message = (f"no Chromium at {path}: `apt-get install chromium` (the browser tests drive the system "
                   "Chromium; they never download one)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package only)")
    return path


@pytest.fixture(scope="module")
def browser(chromium):
    """One headless system Chromium per test module, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    from browser_util import launch_chromium

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()
