"""One figure per version of its data, shared by every session that watches the run (issue 10).

Ten students watching one run used to build ten copies of each figure every tick; here the
first session to see a new version of a figure's data builds it and the others reuse that
object. A version counts the records the figure draws from (resx.figures.live's *_version):
records only ever grow, so equal versions hold equal data, and a tick that brought only batch
losses keeps every chart's version, so the pages get the same spec again, which Streamlit's
frontend does not re-plot. Figures are never mutated after they are built (st.plotly_chart copies
them to JSON).
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

import plotly.graph_objects as go

MAX_FIGURES = 128   # ~ a few live runs x a few figures x a few versions still being drawn
_lock = threading.Lock()
_figures: collections.OrderedDict[tuple, go.Figure] = collections.OrderedDict()
_latest: dict[tuple[str, str], tuple[float, object]] = {}   # (run, kind) -> (built at, version)
# A live chart is redrawn at most this often. Every redraw re-plots it on every page that watches
# (Plotly's layout and styling, then React: ~0.3 s of the page's main thread for the training
# curves on demo-mlp, measured with a CDP profile); the status line still moves every poll.
LIVE_REDRAW_S = 5.0
_stats = {"built": 0, "shared": 0}


def shared_figure(run_id: str, version, kind: str, build: Callable[[], go.Figure], live: bool = False) -> go.Figure:
    """The `kind` figure of `run_id` at `version`, built by `build()` once across all sessions.
    With `live` (the run is still going) a newer version is drawn at most every LIVE_REDRAW_S:
    until then every session gets the figure last built, the same spec, which the page does not
    re-plot. A finished run's figures are always its exact, final version."""
    key = (run_id, version, kind)
    with _lock:
        hit = key if key in _figures else None
        if hit is None and live:
            built_at, latest = _latest.get((run_id, kind), (-LIVE_REDRAW_S, None))
            if time.monotonic() - built_at < LIVE_REDRAW_S and (run_id, latest, kind) in _figures:
                hit = (run_id, latest, kind)
        if hit is not None:
            _figures.move_to_end(hit)
            _stats["shared"] += 1
            return _figures[hit]
    fig = build()  # outside the lock: another run's figures need not wait (a rare double build is harmless)
    with _lock:
        _figures[key] = fig
        _latest[(run_id, kind)] = (time.monotonic(), version)
        _stats["built"] += 1
        while len(_figures) > MAX_FIGURES:
            _figures.popitem(last=False)
        while len(_latest) > MAX_FIGURES:
            _latest.pop(next(iter(_latest)))
    return fig


def stats() -> dict:
    """{"built": figures built, "shared": times one was reused} since the server started."""
    with _lock:
        return dict(_stats)
