"""ui.watchdog: the sidebar's tick reruns the Lab when its status line stopped polling, and only then."""
import pytest

import ui.watchdog as watchdog


class Rerun(Exception):
    pass


@pytest.fixture
def state(monkeypatch):
    session = {}
    monkeypatch.setattr(watchdog.st, "session_state", session)
    monkeypatch.setattr(watchdog.st, "rerun", lambda: (_ for _ in ()).throw(Rerun()))
    monkeypatch.setattr(watchdog, "trace", lambda *a, **k: None)
    return session


def _ticks(n, on_lab=True):
    """How many of n sidebar ticks asked for a rerun."""
    reruns = 0
    for _ in range(n):
        try:
            watchdog.check(on_lab)
        except Rerun:
            reruns += 1
    return reruns


def test_a_polling_status_line_never_triggers_a_rerun(state):
    watchdog.lab_started()
    watchdog.lab_drawn()
    for _ in range(50):
        assert _ticks(watchdog.STALLED_TICKS - 1) == 0
        watchdog.lab_polled()


def test_a_stopped_status_line_gets_one_rerun_per_stall(state):
    watchdog.lab_started()
    watchdog.lab_drawn()
    assert _ticks(watchdog.STALLED_TICKS - 1) == 0
    assert _ticks(1) == 1                                  # the STALLED_TICKS-th tick without a poll
    assert _ticks(watchdog.STALLED_TICKS - 1) == 0         # not again at once
    assert _ticks(1) == 1


def test_no_rerun_off_the_lab_or_before_a_status_line_is_drawn(state):
    assert _ticks(20) == 0                                 # no Lab run yet
    watchdog.lab_started()                                 # a Lab run that stopped before its status line
    watchdog.lab_polled()
    assert _ticks(20) == 0
    watchdog.lab_drawn()
    assert _ticks(20, on_lab=False) == 0                   # on another page
    assert _ticks(watchdog.STALLED_TICKS + 2) == 0         # back on the Lab before it drew: nothing stale
