"""Pure figure functions: data in, plotly Figure out (design.md: `resx` never draws on a page).

Series are passed as float32 numpy arrays and long ones are downsampled to `MAX_POINTS`.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import plotly.graph_objects as go

from ..core.records import Record

MAX_POINTS = 2000
SPLIT_NAMES = {"S": "L<sub>S</sub> (train)", "T": "L<sub>T</sub> (test)", "pop": "L (population)", "P": "L<sub>P</sub> (probe)"}
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def number(v: float, signed: bool = False) -> str:
    """Three significant digits without e-notation (2.46×10⁵), for text drawn on a figure."""
    text = f"{v:+.3g}" if signed else f"{v:.3g}"
    if "e" in text:
        mantissa, exponent = f"{v:+.2e}" if signed else f"{v:.2e}", None
        mantissa, exponent = mantissa.split("e")
        text = f"{mantissa}×10{str(int(exponent)).translate(SUPERSCRIPT)}"
    return text
PHASE_DASH = {"base": "solid", "new": "dash", "control": "dot"}
AFTER_INSERT = ("insert", "jumpboard", "new", "control")   # phases once the block is in
SPLIT_COLORS = {"S": "#1f77b4", "T": "#d62728", "pop": "#2ca02c", "P": "#9467bd"}


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS):
    """Every k-th point, keeping the last, so a 10,000-step history costs at most max_points."""
    if len(x) <= max_points:
        return x, y
    idx = np.unique(np.r_[np.linspace(0, len(x) - 1, max_points).astype(int), len(x) - 1])
    return x[idx], y[idx]


def training_curves(records: Iterable[Record], insert_step: int | None = None) -> go.Figure:
    """L_S, L_T and L against global step, base (solid) then expanded (dashed) and control (dotted); the
    population curve carries a band of +-1 standard error; a vertical line marks the insertion
    once it has happened. Colour says the split, dash the phase."""
    records = list(records)
    inserted = any(r.phase in AFTER_INSERT for r in records)
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
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, legendgroup=f"{phase}{split}",
                                     line=dict(dash=PHASE_DASH[phase], color=SPLIT_COLORS[split]),
                                     marker=dict(color=SPLIT_COLORS[split], size=4)))
            if split == "pop" and all(r.stderr is not None for r in rs):
                se = np.array([r.stderr for r in rs], dtype=np.float32)
                xs, ys = downsample(np.array([r.step + offset for r in rs], dtype=np.float32),
                                    np.array([r.value for r in rs], dtype=np.float32))
                _, ses = downsample(np.array([r.step + offset for r in rs], dtype=np.float32), se)
                fig.add_trace(go.Scatter(x=np.r_[xs, xs[::-1]], y=np.r_[ys + ses, (ys - ses)[::-1]],
                                         fill="toself", line=dict(width=0), opacity=0.2, showlegend=False,
                                         fillcolor=SPLIT_COLORS[split],
                                         hoverinfo="skip", legendgroup=f"{phase}{split}"))
    if base_end and (inserted or insert_step is not None):
        fig.add_vline(x=insert_step if insert_step is not None else base_end, line_dash="dash",
                      annotation_text="insert block")
    fig.update_layout(xaxis_title="step", yaxis_title="cross-entropy (nats)", height=380,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def curves_version(records: Iterable[Record]) -> tuple[int, bool]:
    """What training_curves draws from: (loss records of a drawn phase, whether the block is in).
    Records only grow, so equal versions draw equal figures; batch losses and progress records,
    which arrive every tick, leave it unchanged (a page redraws the chart only when it changes)."""
    records = list(records)
    return (sum(r.name == "loss" and r.phase in PHASE_DASH for r in records),
            any(r.phase in AFTER_INSERT for r in records))


def heatmap_version(records: Iterable[Record], name: str = "kappa2_U") -> int:
    """What margin_heatmap draws from: its margin records (as curves_version)."""
    return sum(r.phase == "margins" and r.name == name and r.position is not None for r in records)


def margin_heatmap(records: Iterable[Record], name: str = "kappa2_U") -> go.Figure:
    """Descent margin estimate (default U_P) as a heatmap: insertion position x base-training step."""
    rs = [r for r in records if r.phase == "margins" and r.name == name and r.position is not None]
    steps = sorted({r.step for r in rs})
    positions = sorted({r.position for r in rs})
    z = np.full((len(positions), len(steps)), np.nan, dtype=np.float32)
    for r in rs:
        z[positions.index(r.position), steps.index(r.step)] = r.value
    fig = go.Figure(go.Heatmap(x=steps, y=positions, z=z, colorscale="Viridis",
                               colorbar=dict(title="κ²"),
                               hovertemplate="step %{x}<br>position %{y}<br>kappa^2 %{z:.3g}<extra></extra>"))
    fig.update_layout(xaxis_title="base-training step", yaxis_title="insertion position", height=300,
                      margin=dict(l=10, r=10, t=30, b=10), yaxis=dict(dtick=1))
    return fig


def margin_estimates(margins: list[dict], chosen: int | None = None, z: float = 1.645) -> go.Figure:
    """kappa^2 estimates per position: U_P and X_P (error bars +-z SE, z of the one-sided level),
    the training margin ||G_S||^2 on S, and the population value where there is a sampler."""
    pos = np.array([m["position"] for m in margins], dtype=np.float32)
    fig = go.Figure()
    series = [("kappa2_U", "kappa2_U_se", "U<sub>P</sub> (probe, unbiased)", -0.2),
              ("kappa2_cross", "kappa2_cross_se", "X<sub>P</sub> (probe, split-half)", -0.07),
              ("kappa2_train_naive", None, "‖G<sub>S</sub>‖² (training margin)", 0.07),
              ("kappa2_pop", "kappa2_pop_se", "κ² (population sample)", 0.2)]
    for key, se_key, label, shift in series:
        if any(m.get(key) is None for m in margins):
            continue
        y = np.array([m[key] for m in margins], dtype=np.float32)
        err = None
        if se_key:
            err = dict(type="data", array=np.array([z * m[se_key] for m in margins], dtype=np.float32))
        fig.add_trace(go.Scatter(x=pos + shift, y=y, error_y=err, mode="markers", name=label))
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dot", annotation_text="chosen")
    fig.add_hline(y=0, line_color="gray", line_width=1)
    fig.update_layout(xaxis_title="insertion position", yaxis_title="κ² = ‖G<sub>k</sub>‖²", height=340,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.3),
                      xaxis=dict(dtick=1))
    return fig


def jumpboard_curve(jumpboard: dict) -> go.Figure:
    """Line search along d_hat (theory.md 4b): L_S, L_P (= L_P2), L_T and L against the step eta (log axis),
    with the first-order prediction and the quadratic fit; eta* marked."""
    curve = [c for c in jumpboard["curve"] if c["eta"] > 0]
    eta = np.array([c["eta"] for c in curve], dtype=np.float32)
    fig = go.Figure()
    for key, label, dash in (("L_S", "L<sub>S</sub> (train)", "solid"), ("L_P", "L<sub>P</sub> (probe: chooses η)", "solid"),
                             ("L_T", "L<sub>T</sub> (test)", "solid"), ("L_pop", "L (population)", "solid"),
                             ("first_order", "first-order prediction", "dash"), ("quadratic", "quadratic fit", "dot")):
        if any(c.get(key) is None for c in curve):
            continue
        fig.add_trace(go.Scatter(x=eta, y=np.array([c[key] for c in curve], dtype=np.float32), name=label,
                                 mode="lines+markers" if dash == "solid" else "lines", line=dict(dash=dash)))
    if jumpboard.get("eta"):
        fig.add_vline(x=jumpboard["eta"], line_dash="dot")  # an annotation on a log axis takes log10(x)
        fig.add_annotation(x=float(np.log10(jumpboard["eta"])), y=1, yref="paper", text="η*",
                           showarrow=False, xanchor="left", yanchor="top")
    ys = [c[k] for c in curve for k in ("L_S", "L_P", "L_T", "L_pop") if c.get(k) is not None]
    if ys:  # keep the measured curves in view; the predictions may leave it
        lo, hi = min(ys), max(ys)
        pad = 0.1 * (hi - lo) + 1e-3
        fig.update_yaxes(range=[lo - pad, hi + pad])
    fig.update_layout(xaxis_type="log", xaxis_title="step η along d", yaxis_title="risk (nats)", height=360,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


# resx's plain-text symbol names -> plotly's HTML (drawn without MathJax)
HTML_SYMBOLS = (("Delta_ERM", "Δ<sub>ERM</sub>"), ("Delta_R", "Δ<sub>R</sub>"), ("eps_M", "ε<sub>M</sub>"),
                ("eps_K", "ε<sub>K</sub>"), ("f_old", "f<sub>old</sub>"), ("f_new", "f<sub>new</sub>"),
                ("f_J", "f<sub>J</sub>"), ("L_S", "L<sub>S</sub>"), ("L_T", "L<sub>T</sub>"))


def html_symbols(label: str) -> str:
    for plain, html in HTML_SYMBOLS:
        label = label.replace(plain, html)
    return label


def route_waterfall(route: dict, observed: float | None = None, title: str = "") -> go.Figure:
    """A route as a waterfall: start L(f_old), subtract the margins, add the terms, end at the
    bound; the observed L(f_new) as a line beside it. When the terms dwarf the risks (a vacuous
    bound, often by orders of magnitude), a waterfall would flatten the gains to nothing, so the
    signed steps are drawn as bars of their size on a log axis instead."""
    steps = route["steps"]
    labels = [html_symbols(s[0]) for s in steps]
    values = [float(s[1]) for s in steps]
    start, bound = values[0], values[-1]
    if abs(bound) > 10 * max(abs(start), 1e-12):
        colors = ["#636efa" if v >= 0 else "#ef553b" for v in values]
        text = [number(v) if i in (0, len(values) - 1) else number(v, signed=True) for i, v in enumerate(values)]
        fig = go.Figure(go.Bar(y=labels, x=np.abs(np.array(values, dtype=np.float64)), orientation="h",
                               marker_color=colors, text=text, textposition="auto"))
        fig.update_xaxes(type="log", title="size of each step (log scale; red: subtracted)", exponentformat="power")
        fig.update_yaxes(autorange="reversed")
        title = (title + " " if title else "") + "vacuous: the terms dwarf the gains"
    else:
        measures = ["absolute"] + ["relative"] * (len(steps) - 2) + ["total"]
        text = [number(v, signed=True) if 0 < i < len(steps) - 1 else number(v) for i, v in enumerate(values)]
        fig = go.Figure(go.Waterfall(x=labels, y=values, measure=measures, textposition="outside", text=text))
        fig.update_yaxes(title="risk (nats)")
        if observed is not None:
            fig.add_hline(y=observed, line_dash="dot", annotation_text=f"observed L(f_new) = {observed:.3g}")
    fig.update_layout(title=title, height=340, showlegend=False, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def runs_overlay(runs: dict[str, list[Record]], split: str = "pop") -> go.Figure:
    """One loss curve per run (population, or test where a run has none), base then fine-tune."""
    fig = go.Figure()
    for label, records in runs.items():
        use = split if any(r.split == split and r.name == "loss" for r in records) else "T"
        base_end = max((r.step for r in records if r.phase == "base" and r.name == "loss"), default=0)
        for phase in ("base", "new"):
            rs = [r for r in records if r.phase == phase and r.split == use and r.name == "loss"]
            if not rs:
                continue
            x = np.array([r.step + (0 if phase == "base" else base_end) for r in rs], dtype=np.float32)
            y = np.array([r.value for r in rs], dtype=np.float32)
            x, y = downsample(x, y)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"{label} ({'L' if use == 'pop' else 'L<sub>T</sub>'}, {phase})",
                                     legendgroup=label))
    fig.update_layout(title="Population risk (or test risk where there is none) of each selected run",
                      xaxis_title="step", yaxis_title="risk (nats)", height=380, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.25))
    return fig
