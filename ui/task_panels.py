"""A background task's panel (sweeps and figure runs on Signals and Scaling)."""
from __future__ import annotations

import streamlit as st

from .state import get_tasks

def task_panel(task_id: str, stop_label: str):
    """A background task's state (last progress line, error, cancellation) with its Stop button;
    returns its snapshot. Call inside a fragment that ticks."""
    tasks = get_tasks()
    snap = tasks.snapshot(task_id)
    if snap is None:
        st.warning(f"Task `{task_id}` is no longer known to this server.")
        return None
    if snap.is_active:
        st.info(f"`{snap.task_id}` {snap.status}: {snap.lines[-1] if snap.lines else 'starting'}")
        if st.button(stop_label, key=f"stop_{task_id}"):
            tasks.cancel(task_id)
    elif snap.status == "failed":
        st.error(f"`{snap.task_id}` failed: {snap.error}")
    elif snap.status == "cancelled":
        st.warning(f"`{snap.task_id}` was cancelled; what finished is kept.")
    return snap
