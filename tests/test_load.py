"""A class pressing Run at once (issue 10): 6 real Chromium sessions on one real `streamlit run`,
each with its own ?seed=, all reach done with no exception box and the app's own navigation; then
6 sessions with the identical default configuration (the Lab as it opens: demo-mlp), computed once
and served to all of them.

The own-seed runs are small (URL parameters) to keep CI to a few minutes on 2 cores; the figures
with ten and thirty demo-mlp sessions are benchmarks/bench_load.py's.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from browser_util import Server
from load_driver import drive, lab_url
from resx.core.config import DEFAULT_PRESET, PRESETS

pytestmark = pytest.mark.browser

TINY = dict(n=200, n_probe=100, n_test=100, n_pop=512, epochs=2, finetune_epochs=1, width=8, depth=2, position=1)
SESSIONS = 6
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def server(chromium):
    home = Path(tempfile.mkdtemp(prefix="resx-load-"))
    srv = Server(home=home, log_path=home / "streamlit.log").start(timeout=120)
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(home, ignore_errors=True)


def _store(server):
    from resx.runs.store import Store
    return Store(server.home)


def test_six_sessions_with_their_own_seeds_all_finish(browser, server):
    """Six sessions pressing Run together, each its own seed, all reach done: no exception box, no
    fallback navigation; the latency probe moves between pages meanwhile (its times are bench_load's)."""
    urls = [lab_url(server.url, {**TINY, "seed": 100 + k}) for k in range(SESSIONS)]
    report = drive(browser, server, urls, TIMEOUT_S, probe=True)
    print("\n", report.summary())
    assert not report.errors, report.errors
    assert not report.bad_nav, report.bad_nav
    assert report.all_done, (report.statuses, server.log_tail())
    assert len(set(report.run_ids.values())) == SESSIONS
    assert report.latencies, "the probe never completed a page rerun"
    with _store(server) as store:
        seeds = sorted(store.get_run(r)["config"]["seed"] for r in report.run_ids.values())
    assert seeds == [100 + k for k in range(SESSIONS)]  # ?seed= set each session's run


def test_six_identical_sessions_share_one_run(browser, server):
    """Six sessions on the Lab as it opens (the default configuration, nothing in the URL) press Run
    together: all reach done on one computation of it, and five are told which run they share."""
    urls = [lab_url(server.url, {})] * SESSIONS
    report = drive(browser, server, urls, TIMEOUT_S, probe=False)
    print("\n", report.summary())
    assert not report.errors, report.errors
    assert not report.bad_nav, report.bad_nav
    assert report.all_done, (report.statuses, server.log_tail())
    (run_id,) = set(report.run_ids.values())
    assert report.cache_notes == SESSIONS - 1
    with _store(server) as store:
        assert store.cache_hits([run_id]) == {run_id: SESSIONS - 1}
        assert store.get_run(run_id)["config"] == PRESETS[DEFAULT_PRESET].to_dict()
        assert [r["id"] for r in store.list_runs() if r["config"] == PRESETS[DEFAULT_PRESET].to_dict()] == [run_id]
