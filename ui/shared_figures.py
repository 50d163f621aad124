"""One figure per run snapshot version, shared by every session that watches the run (issue 10).

Ten students watching one run used to build ten copies of each figure every tick; here the
first session to see a new snapshot version builds it and the others reuse that object. A
version is (number of records, status): records only ever grow, so equal versions hold equal
data. Figures are never mutated after they are built (st.plotly_chart copies them to JSON).
"""
from __future__ import annotations

import collections
import threading
from typing import Callable

import plotly.graph_objects as go

MAX_FIGURES = 128   # ~ a few live runs x a few figures x a few versions still being drawn
_lock = threading.Lock()
_figures: collections.OrderedDict[tuple, go.Figure] = collections.OrderedDict()
_stats = {"built": 0, "shared": 0}


def snapshot_version(snap) -> tuple:
    """What identifies the data behind a snapshot's figures: (records so far, status)."""
    return (len(snap.records), snap.status)


def shared_figure(run_id: str, version: tuple, kind: str, build: Callable[[], go.Figure]) -> go.Figure:
    """The `kind` figure of `run_id` at `version`, built by `build()` once across all sessions."""
    key = (run_id, version, kind)
    with _lock:
        fig = _figures.get(key)
        if fig is not None:
            _figures.move_to_end(key)
            _stats["shared"] += 1
            return fig
    fig = build()  # outside the lock: another run's figures need not wait (a rare double build is harmless)
    with _lock:
        _figures[key] = fig
        _stats["built"] += 1
        while len(_figures) > MAX_FIGURES:
            _figures.popitem(last=False)
    return fig


def stats() -> dict:
    """{"built": figures built, "shared": times one was reused} since the server started."""
    with _lock:
        return dict(_stats)
