"""Pure figure functions: data in, plotly Figure out (design.md: `resx` never draws on a page).

Series are passed as float32 numpy arrays and long ones are downsampled to `MAX_POINTS`.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import plotly.graph_objects as go

from .records import Record

MAX_POINTS = 2000
SPLIT_NAMES = {"S": "L_S (train)", "T": "L_T (test)", "pop": "L (population)", "P": "L_P (probe)"}
PHASE_DASH = {"base": "solid", "new": "solid", "control": "dot"}


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS):
    """Every k-th point, keeping the last, so a 10,000-step history costs at most max_points."""
    if len(x) <= max_points:
        return x, y
    idx = np.unique(np.r_[np.linspace(0, len(x) - 1, max_points).astype(int), len(x) - 1])
    return x[idx], y[idx]


def training_curves(records: Iterable[Record], insert_step: int | None = None) -> go.Figure:
    """L_S, L_T and L against global step, base then new (solid) and control (dotted); the
    population curve carries a band of +-1 standard error; a vertical line marks the insertion."""
    records = [r for r in records if r.name == "loss" and r.phase in PHASE_DASH]
    base_end = max((r.step for r in records if r.phase == "base"), default=0)
    fig = go.Figure()
    for phase in PHASE_DASH:
        for split, label in SPLIT_NAMES.items():
            rs = [r for r in records if r.phase == phase and r.split == split]
            if not rs:
                continue
            offset = 0 if phase == "base" else base_end
            x = np.array([r.step + offset for r in rs], dtype=np.float32)
            y = np.array([r.value for r in rs], dtype=np.float32)
            x, y = downsample(x, y)
            name = label if phase != "control" else f"{label}, control"
            if phase == "new":
                name = f"{label}, expanded"
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name,
                                     line=dict(dash=PHASE_DASH[phase]), legendgroup=f"{phase}{split}"))
            if split == "pop" and all(r.stderr is not None for r in rs):
                se = np.array([r.stderr for r in rs], dtype=np.float32)
                xs, ys = downsample(np.array([r.step + offset for r in rs], dtype=np.float32),
                                    np.array([r.value for r in rs], dtype=np.float32))
                _, ses = downsample(np.array([r.step + offset for r in rs], dtype=np.float32), se)
                fig.add_trace(go.Scatter(x=np.r_[xs, xs[::-1]], y=np.r_[ys + ses, (ys - ses)[::-1]],
                                         fill="toself", line=dict(width=0), opacity=0.25, showlegend=False,
                                         hoverinfo="skip", legendgroup=f"{phase}{split}"))
    if base_end:
        fig.add_vline(x=insert_step if insert_step is not None else base_end, line_dash="dash",
                      annotation_text="insert block")
    fig.update_layout(xaxis_title="step", yaxis_title="cross-entropy (nats)", height=380,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.25))
    return fig
