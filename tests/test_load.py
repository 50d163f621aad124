"""A class pressing Run at once (issues 10, 28): 6 real Chromium sessions on one real `streamlit run`,
each with its own ?seed=, all reach done with no exception box and the app's own navigation; then
6 sessions with the identical default configuration (the Lab as it opens: demo-mlp), computed once
and served to all of them. Each scenario runs twice (the second time smaller), and a page that loses
its status line's timer still shows done (the sidebar's watchdog, ui/watchdog.py).

The own-seed runs are small (URL parameters) to keep CI to a few minutes on 2 cores; the figures
with ten and thirty demo-mlp sessions are benchmarks/bench_load.py's.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from browser_util import Server
from load_driver import FINAL_WATCH, drive, lab_url
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


@pytest.mark.parametrize("round_", [0, 1])
def test_sessions_with_their_own_seeds_all_finish(browser, server, round_):
    """Six sessions pressing Run together, each its own seed, all reach done: no exception box, no
    fallback navigation; the latency probe moves between pages meanwhile (its times are bench_load's).
    Twice (issue 28: a session lost in one load of several), the second time four sessions, no probe."""
    sessions = (SESSIONS, 4)[round_]
    seeds = [100 * (round_ + 1) + k for k in range(sessions)]
    urls = [lab_url(server.url, {**TINY, "seed": seed}) for seed in seeds]
    report = drive(browser, server, urls, TIMEOUT_S, probe=round_ == 0)
    print("\n", report.summary())
    assert not report.errors, report.errors
    assert not report.bad_nav, report.bad_nav
    assert report.all_done, (report.statuses, report.unfinished, server.log_tail())
    assert len(set(report.run_ids.values())) == sessions
    if round_ == 0:
        assert report.latencies, "the probe never completed a page rerun"
    with _store(server) as store:
        got = sorted(store.get_run(r)["config"]["seed"] for r in report.run_ids.values())
    assert got == seeds  # ?seed= set each session's run


def test_six_identical_sessions_share_one_run(browser, server):
    """Six sessions on the Lab as it opens (the default configuration, nothing in the URL) press Run
    together: all reach done on one computation of it, and five are told which run they share."""
    urls = [lab_url(server.url, {})] * SESSIONS
    report = drive(browser, server, urls, TIMEOUT_S, probe=False)
    print("\n", report.summary())
    assert not report.errors, report.errors
    assert not report.bad_nav, report.bad_nav
    assert report.all_done, (report.statuses, report.unfinished, server.log_tail())
    (run_id,) = set(report.run_ids.values())
    assert report.cache_notes == SESSIONS - 1
    with _store(server) as store:
        assert store.cache_hits([run_id]) == {run_id: SESSIONS - 1}
        assert store.get_run(run_id)["config"] == PRESETS[DEFAULT_PRESET].to_dict()
        assert [r["id"] for r in store.list_runs() if r["config"] == PRESETS[DEFAULT_PRESET].to_dict()] == [run_id]


def test_identical_sessions_again_on_a_new_configuration(browser, server):
    """The identical scenario a second time (issue 28), four sessions on one small configuration: one run."""
    urls = [lab_url(server.url, {**TINY, "seed": 77})] * 4
    report = drive(browser, server, urls, TIMEOUT_S, probe=False)
    print("\n", report.summary())
    assert not report.errors, report.errors
    assert report.all_done, (report.statuses, report.unfinished, server.log_tail())
    assert len(set(report.run_ids.values())) == 1 and report.cache_notes == 3


# Every timer the page makes is noted (id, period), so the test can take the Lab status line's away:
# its polls are 1.5 s (running) and 3 s (queued) (views/lab.py POLL_S); the sidebar's is 5 s.
NOTE_TIMERS = """(() => { const real = window.setInterval.bind(window); window.__timers = [];
  window.setInterval = (fn, ms, ...rest) => { const id = real(fn, ms, ...rest); window.__timers.push([id, ms]); return id; };
})();"""
LOSE_STATUS_POLL = """() => setInterval(() => window.__timers.filter(([id, ms]) => ms === 1500 || ms === 3000)
  .forEach(([id]) => clearInterval(id)), 100)"""


def test_a_page_whose_status_poll_is_lost_still_shows_done(browser, server):
    """The lost session (issue 28): Streamlit can drop the messages of a script run that ended just as a
    fragment's timer fired, and with them the status line's timer. Here the page loses that timer for
    the whole run (every status-line timer the browser gets is cleared at once); the sidebar's watchdog
    sees the status line stop polling, reruns the page, and the page shows done."""
    ctx = browser.new_context(viewport={"width": 1300, "height": 900})
    try:
        ctx.add_init_script(NOTE_TIMERS)
        ctx.add_init_script(FINAL_WATCH)
        page = ctx.new_page()
        # long enough (8 epochs) that the run outlasts the reruns the Run press itself sets off
        page.goto(lab_url(server.url, {**TINY, "epochs": 8, "seed": 4242}))
        page.get_by_role("button", name="Run", exact=True).wait_for(timeout=120_000)
        page.evaluate(LOSE_STATUS_POLL)
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_function("() => window.__resxFinal", timeout=120_000)
        assert page.evaluate("() => window.__resxFinal.status") == "done"
        assert page.evaluate("() => window.__timers.filter(([id, ms]) => ms === 1500 || ms === 3000).length") > 0, \
            "the status line never had a timer: nothing was taken away"
    finally:
        ctx.close()
