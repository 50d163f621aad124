"""The lesson's own panels and the class board's scaling picture: results in, plotly Figure out.

Labels use HTML sub/superscripts (plotly draws them without MathJax): L<sub>S</sub>, ε<sub>K</sub>.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

RISK_NAMES = {"old": "f<sub>old</sub>", "f_J": "f<sub>J</sub> (jumpboard)", "new": "f<sub>new</sub> (fine-tuned)",
              "control": "control"}


def risk_bars(result: dict, which=("old", "f_J", "new", "control")) -> go.Figure:
    """Population risk L (test risk L_T where there is none) of each model, with ±2 standard errors."""
    names, values, errors = [], [], []
    for key in which:
        risks = result.get(key) or {}
        value = risks.get("L_pop") if risks.get("L_pop") is not None else risks.get("L_T")
        if value is None:
            continue
        names.append(RISK_NAMES.get(key, key))
        values.append(value)
        errors.append(2 * (risks.get("L_pop_se") or 0.0))
    values_np = np.asarray(values, dtype=np.float32)
    fig = go.Figure(go.Bar(x=names, y=values_np, error_y=dict(type="data", array=np.asarray(errors, np.float32)),
                           marker_color=["#7f7f7f", "#9467bd", "#1f77b4", "#ff7f0e"][:len(names)],
                           hovertemplate="%{x}: %{y:.4f} nats<extra></extra>"))
    low, high = (float(values_np.min()), float(values_np.max())) if len(values) else (0.0, 1.0)
    pad = max(high - low, 1e-3)
    fig.update_layout(yaxis_title="population risk L (nats)", height=340, showlegend=False,
                      yaxis=dict(range=[low - pad, high + pad]), margin=dict(l=10, r=10, t=30, b=10))
    return fig


def certificate_costs(results: list[dict]) -> go.Figure:
    """Per run (one per n): the gain Delta_R + Delta_ERM against the complexity cost 2 eps_K (route B)
    and the Hoeffding cost of route A, on a log scale, with the loss range c that makes a bound vacuous."""
    fig = go.Figure()
    labels = [f"n = {r['terms']['n']}" for r in results]
    series = (("gain Δ<sub>R</sub> + Δ<sub>ERM</sub>", lambda t: t["Delta_R"] + t["Delta_ERM"], "#2ca02c"),
              ("route A cost (Hoeffding for f<sub>J</sub>)", lambda t: t["hoeffding"], "#1f77b4"),
              ("route B cost 2ε<sub>K</sub>", lambda t: 2 * t["eps_K"], "#d62728"))
    for name, value, color in series:
        y = np.asarray([max(abs(value(r["terms"])), 1e-6) for r in results], dtype=np.float32)
        fig.add_bar(x=labels, y=y, name=name, marker_color=color)
    c = results[-1]["terms"]["c"]
    fig.add_hline(y=c, line_dash="dot", annotation_text=f"loss range c = {c:.3g}: above it, vacuous")
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="nats (log scale)", height=360,
                      yaxis_exponentformat="power",
                      legend=dict(orientation="h", y=-0.15), margin=dict(l=10, r=10, t=30, b=10))
    return fig


def class_scaling(points: list[dict], field: str) -> go.Figure:
    """The class's Delta_R against width or n: mean over the students who ran each value, ±1 SE
    across them (seeds), and each value's count as the marker's label."""
    x = np.asarray([p[field] for p in points], dtype=np.float32)
    y = np.asarray([p["Delta_R"] for p in points], dtype=np.float32)
    se = np.asarray([p["se"] or 0.0 for p in points], dtype=np.float32)
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines+markers+text", error_y=dict(type="data", array=se),
                               text=[f"{p['count']} run(s)" for p in points], textposition="top center"))
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(xaxis_title=field, xaxis_type="log", xaxis_exponentformat="power", yaxis_exponentformat="power", yaxis_title="Δ<sub>R</sub> = L(f<sub>old</sub>) − L(f<sub>J</sub>)",
                      height=340, margin=dict(l=10, r=10, t=30, b=10))
    return fig
