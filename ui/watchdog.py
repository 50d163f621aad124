"""The Lab's lost-poll watchdog (issue 28: the lost session).

Why: Streamlit (seen in 1.67, app_session.py) delivers a script run's messages to the browser through
callbacks queued on the server's event loop, and ignores the queued messages of a ScriptRunner that is no
longer the session's current one. When a fragment's timer asks for a rerun just after a run ended, before
the loop has sent that run's messages (under load the loop lags by seconds), the ended runner has already
stopped, so the session makes a new ScriptRunner for the fragment and the rest of the ended run's messages
are dropped: its timers ("auto_rerun" messages), its status line, its final banner. The browser had cleared
its timers at that run's start; the sidebar's job-count fragment, registered first, keeps ticking. The page
then never polls again and never shows the end: the lost session.

What: the Lab's status line always polls (a finished run slowly) and notes each poll here; the sidebar's
fragment (app.py), registered at the top of every full run, counts its own ticks, and when STALLED_TICKS of
its ticks pass on the Lab with no status-line poll in between, it reruns the page, which registers every
timer again. Both timers live in the same browser, so a starved browser slows both alike and does not
trigger it; only a timer that is gone does.
"""
from __future__ import annotations

import streamlit as st

from .state import trace

STALLED_TICKS = 4   # sidebar ticks (5 s each) with no status-line poll (which comes every 1.5-8 s): its timer is gone


def lab_started() -> None:
    """A full run of the Lab began: no status line is expected until lab_drawn()."""
    st.session_state["lab_watch"] = None


def lab_drawn() -> None:
    """The full run drew the status line: from now on it polls."""
    st.session_state["lab_watch"] = st.session_state.get("watch_ticks", 0)


def lab_polled() -> None:
    if st.session_state.get("lab_watch") is not None:
        st.session_state["lab_watch"] = st.session_state.get("watch_ticks", 0)


def check(on_lab: bool) -> None:
    """One sidebar tick: rerun the whole page when the Lab's status line has stopped polling."""
    ticks = st.session_state["watch_ticks"] = st.session_state.get("watch_ticks", 0) + 1
    if not on_lab:
        st.session_state["lab_watch"] = None  # another page: nothing to watch until the Lab draws again
        return
    seen = st.session_state.get("lab_watch")
    if seen is not None and ticks - seen >= STALLED_TICKS:
        st.session_state["lab_watch"] = ticks  # one rerun per stall, not one per tick
        trace("watchdog-rerun", ticks=ticks, seen=seen)
        st.rerun()
