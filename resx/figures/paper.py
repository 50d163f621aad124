"""Pure figure functions for the paper's Figures 1-3, observability and Table 3 (theory.md 5, 9).

Data in, plotly Figure out, as in `plots.py`: numbers arrive as plain dicts and lists (what
`resx.scale.paper_data` computes and `figures.json` stores), series go to plotly as float32 numpy arrays,
and nothing here trains, reads files or imports torch. Every data trace carries
`meta={"kind": ..., ...}` so that pages and tests can find it without parsing names.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")
VERDICT_COLORS = {"strict": "#2ca02c", "no_worse": "#1f77b4", "not_certified": "#7f7f7f", None: "#7f7f7f"}
LAYOUT = dict(margin=dict(l=10, r=10, t=60, b=10), template="plotly_white")
TOP = 110   # top margin (px) of multi-panel figures: title, subtitle, then the panel titles


def _title(title: str, sub: str) -> dict:
    return dict(text=f"{title}<br><sup>{sub}</sup>" if title else sub)


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _num(value) -> float:
    """A number from computed data or its JSON form, where non-finite values were stored as null."""
    return math.nan if value is None else float(value)


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def _band(x, lo, hi, color, group, kind, row=None, col=None, fig=None):
    """A filled band between lo and hi (one closed polygon); returns the trace."""
    x, lo, hi = _f32(x), _f32(lo), _f32(hi)
    trace = go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[hi, lo[::-1]], mode="lines", fill="toself", line=dict(width=0),
                       fillcolor=_rgba(color, 0.18), hoverinfo="skip", showlegend=False, legendgroup=group,
                       meta={"kind": kind})
    if fig is not None:
        fig.add_trace(trace, row=row, col=col)
    return trace


# ---------------------------------------------------------------------------------------------
# Figure 1: covariance of the activation gradient before the head

def fig1_covariance(cov: dict, title: str = "", num_classes: Optional[int] = None) -> go.Figure:
    """Figure 1 (a)-(c) [paper]: heatmap of Sigma = Cov(g) at the head input, and its eigenvalues.

    `cov`: `signals.gradient_covariance` output (or its JSON form): "Sigma" (D, D), "eigenvalues"
    (descending), "ratio", "n". The colour scale is symmetric about 0. Eigenvalues below 1e-9 of
    the largest are numerical zeros and are not drawn; with `num_classes` K the subtitle recalls
    why there are at least D - (K - 1) of them at the head input: g = (softmax(z) - e_y)' W_head,
    and softmax(z) - e_y sums to 0, so Sigma has rank at most K - 1.
    """
    Sigma = _f32(cov["Sigma"])
    eig = np.asarray(cov["eigenvalues"], dtype=np.float64)
    D = Sigma.shape[0]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], horizontal_spacing=0.2,
                        subplot_titles=(f"Sigma = Cov(g), D = {D}", "eigenvalues of Sigma (descending)"))
    vmax = float(np.abs(Sigma).max()) or 1.0
    fig.add_trace(go.Heatmap(z=Sigma, zmin=-vmax, zmax=vmax, zmid=0.0, colorscale="RdBu_r",
                             colorbar=dict(title=dict(text="Sigma_ij", side="right"), x=0.41, xanchor="left",
                                           thickness=12, len=0.85),
                             hovertemplate="i %{y}<br>j %{x}<br>Sigma %{z:.3g}<extra></extra>",
                             meta={"kind": "covariance"}), row=1, col=1)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain", row=1, col=1)
    fig.update_xaxes(constrain="domain", row=1, col=1)
    top = float(eig.max()) if len(eig) else 0.0
    keep = eig > 1e-9 * top if top > 0 else np.zeros(len(eig), dtype=bool)
    fig.add_trace(go.Scatter(x=np.arange(1, keep.sum() + 1, dtype=np.float32), y=_f32(eig[keep]), mode="lines+markers",
                             name="eigenvalue", showlegend=False, meta={"kind": "eigenvalues"}), row=1, col=2)
    fig.update_yaxes(type="log", dtick="D2", tickformat="~g", title_text="eigenvalue", row=1, col=2)
    fig.update_xaxes(title_text="index", range=[0.5, D + 0.5], row=1, col=2)
    sub = f"mean|off-diag| / mean diag = {_num(cov['ratio']):.3g}, n = {cov['n']}"
    if keep.sum() < D:
        sub += f"; {D - int(keep.sum())} eigenvalues are numerically 0"
        if num_classes is not None:
            sub += f" (rank <= K - 1 = {num_classes - 1} at the head input)"
    fig.update_layout(title=_title(title, sub), height=460, **{**LAYOUT, "margin": dict(l=10, r=10, t=TOP, b=10)})
    return fig


def fig1_offdiag(cov: dict, title: str = "", bins: int = 60) -> go.Figure:
    """Figure 1 (d) [paper]: distribution of sampled off-diagonal entries of Sigma against the diagonal.

    Both are divided by the mean diagonal entry, so the diagonal sits near 1 and weak correlation
    shows as an off-diagonal mass concentrated near 0 (Assumption 3).
    """
    mean_diag = _num(cov["mean_diag"]) or 1.0
    off = _f32(cov["offdiag"]) / mean_diag
    diag = _f32(cov["diag"]) / mean_diag
    fig = go.Figure()
    lo = float(min(off.min(initial=0.0), diag.min(initial=0.0)))
    hi = float(max(off.max(initial=0.0), diag.max(initial=1.0)))
    size = (hi - lo) / bins if hi > lo else 1.0
    xbins = dict(start=lo, end=hi + size, size=size)
    fig.add_trace(go.Histogram(x=off, xbins=xbins, histnorm="probability", name=f"off-diagonal ({len(off)} sampled)",
                               marker_color=_color(0), opacity=0.75, meta={"kind": "offdiag"}))
    fig.add_trace(go.Histogram(x=diag, xbins=xbins, histnorm="probability", name=f"diagonal ({len(diag)})",
                               marker_color=_color(1), opacity=0.75, meta={"kind": "diag"}))
    fig.add_vline(x=float(np.mean(np.abs(off))), line_dash="dot",
                  annotation_text=f"mean |off-diag| = {np.mean(np.abs(off)):.3g}", annotation_position="top")
    sub = f"D = {cov['D']}, n = {cov['n']}; entries divided by the mean diagonal ({mean_diag:.3g})"
    fig.update_layout(barmode="overlay", xaxis_title="Sigma_ij / mean_i Sigma_ii", yaxis_title="fraction of entries",
                      title=_title(title, sub), height=400,
                      legend=dict(orientation="h", y=-0.2), **{**LAYOUT, "margin": dict(l=10, r=10, t=90, b=10)})
    return fig


# ---------------------------------------------------------------------------------------------
# Figure 2: first-order average signal against block index, one curve per depth

def fig2_signal_decay(curves: Sequence[dict], log_y: bool = True, show_floor: bool = True,
                      title: str = "") -> go.Figure:
    """Figure 2 [paper]: s_k = ||mean_i g_k,i|| against block index k, one curve per network depth.

    `curves`: [{"label", "depth", "s" (num_blocks + 1 values, k = 0..num_blocks), "floor"
    (optional, sqrt(tr Sigma_k / n): the level the plug-in s_k reaches from noise alone)}].
    """
    fig = go.Figure()
    for i, c in enumerate(curves):
        s = _f32(c["s"])
        k = np.arange(len(s), dtype=np.float32)
        color = _color(i)
        fig.add_trace(go.Scatter(x=k, y=s, mode="lines+markers", name=c["label"], line=dict(color=color),
                                 legendgroup=c["label"], meta={"kind": "s_k", "depth": c["depth"]},
                                 hovertemplate="k %{x}<br>s_k %{y:.3g}<extra>" + c["label"] + "</extra>"))
        if show_floor and c.get("floor") is not None:
            fig.add_trace(go.Scatter(x=k, y=_f32(c["floor"]), mode="lines", line=dict(color=color, dash="dot", width=1),
                                     name=f"noise floor, {c['label']}", legendgroup=c["label"], showlegend=False,
                                     meta={"kind": "floor", "depth": c["depth"]},
                                     hovertemplate="k %{x}<br>sqrt(tr Sigma/n) %{y:.3g}<extra></extra>"))
    sub = "solid: s_k = ||mean g_k|| (conv maps summed over space); dotted: sqrt(tr Sigma_k / n), its noise level"
    fig.update_layout(xaxis_title="block index k (0 = stem output)", yaxis_title="s_k",
                      yaxis=dict(type="log" if log_y else "linear", dtick="D2" if log_y else None, tickformat="~g" if log_y else None), xaxis=dict(dtick=1),
                      title=_title(title, sub), height=400,
                      legend=dict(orientation="h", y=-0.2), **LAYOUT)
    return fig


# ---------------------------------------------------------------------------------------------
# observability against width and n

OBS_METRICS = (("z", "z = ||gbar||^2 / sqrt(gbar' Sigma gbar / n)", "log"),
               ("z_unbiased", "z_unbiased (tr Sigma / n removed)", "linear"),
               ("cosine_split", "split-half cosine of gbar", "linear"),
               ("snr", "n ||gbar||^2 / tr Sigma", "log"))


def observability_plot(rows: Sequence[dict], x: str = "n", title: str = "") -> go.Figure:
    """Observability [paper: width enhances the finite-sample observability of weak signals].

    `rows`: [{"width", "n", "D", "<metric>_mean", "<metric>_sd", "z_null_mean", ...}] for the
    metrics z, z_unbiased, cosine_split, snr (means and sds over repeated subsamples). `x="n"`:
    one line per width against n; `x="width"`: one line per n against width. Both axes log where
    the quantity is a ratio of scales; the z panel carries z_null = tr Sigma / ||Sigma||_F (dotted),
    the value z takes when the mean gradient is pure noise.
    """
    if x not in ("n", "width"):
        raise ValueError(f"x={x!r} is not allowed: 'n' or 'width'")
    group_key = "width" if x == "n" else "n"
    groups = sorted({r[group_key] for r in rows})
    fig = make_subplots(rows=2, cols=2, subplot_titles=[m[1] for m in OBS_METRICS], vertical_spacing=0.16,
                        horizontal_spacing=0.1)
    for gi, g in enumerate(groups):
        rs = sorted((r for r in rows if r[group_key] == g), key=lambda r: r[x])
        xs = _f32([r[x] for r in rs])
        color = _color(gi)
        label = f"width {g}" if group_key == "width" else f"n = {g}"
        for mi, (metric, _, _) in enumerate(OBS_METRICS):
            row, col = mi // 2 + 1, mi % 2 + 1
            y = _f32([r[f"{metric}_mean"] for r in rs])
            sd = _f32([r.get(f"{metric}_sd", 0.0) or 0.0 for r in rs])
            fig.add_trace(go.Scatter(x=xs, y=y, error_y=dict(type="data", array=sd, thickness=1),
                                     mode="lines+markers", name=label, legendgroup=label, showlegend=mi == 0,
                                     line=dict(color=color), meta={"kind": metric, group_key: g}),
                          row=row, col=col)
            if metric == "z" and all(r.get("z_null_mean") is not None for r in rs):
                fig.add_trace(go.Scatter(x=xs, y=_f32([r["z_null_mean"] for r in rs]), mode="lines",
                                         line=dict(color=color, dash="dot", width=1), name=f"z_null, {label}",
                                         legendgroup=label, showlegend=False, meta={"kind": "z_null", group_key: g}),
                              row=row, col=col)
    for mi, (metric, _, ytype) in enumerate(OBS_METRICS):
        row, col = mi // 2 + 1, mi % 2 + 1
        fig.update_xaxes(type="log", title_text="n (samples)" if x == "n" else "width w", row=row, col=col)
        fig.update_yaxes(type=ytype, dtick="D2" if ytype == "log" else None, tickformat="~g" if ytype == "log" else None, row=row, col=col)
    fig.add_hline(y=0, line_color="gray", line_width=1, row=1, col=2)
    fig.add_hline(y=1, line_color="gray", line_width=1, line_dash="dot", row=2, col=2)
    sub = ("z grows like sqrt(width n) under weak off-diagonal correlation; dotted: z_null. "
           "Error bars: sd over repeated subsamples")
    fig.update_layout(title=_title(title, sub), height=680, legend=dict(orientation="h", y=-0.12),
                      **{**LAYOUT, "margin": dict(l=10, r=10, t=TOP, b=10)})
    return fig


# ---------------------------------------------------------------------------------------------
# Figure 3: test loss under joint depth x width scaling

def aggregate_cells(cells: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Mean, sd (ddof 1; 0 for one seed) and count over seeds per (depth, width, n), for each key.

    Missing or None values are skipped per key; rows sorted by (n, width, depth).
    """
    groups: dict = defaultdict(list)
    for c in cells:
        groups[(int(c["depth"]), int(c["width"]), c.get("n"))].append(c)
    out = []
    for (depth, width, n), cs in sorted(groups.items(), key=lambda kv: (kv[0][2] or 0, kv[0][1], kv[0][0])):
        row = {"depth": depth, "width": width, "n": n, "seeds": sorted(c.get("seed") for c in cs
                                                                       if c.get("seed") is not None)}
        for k in keys:
            v = [float(c[k]) for c in cs if c.get(k) is not None and math.isfinite(float(c[k]))]
            row[f"{k}_mean"] = float(np.mean(v)) if v else None
            row[f"{k}_sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 if v else None
            row[f"{k}_count"] = len(v)
        out.append(row)
    return out


def _pick_n(cells: Sequence[dict], n: Optional[int]) -> tuple[list, Optional[int]]:
    ns = sorted({c.get("n") for c in cells if c.get("n") is not None})
    if n is None and ns:
        n = ns[-1]
    return [c for c in cells if c.get("n") in (None, n)], n


def fig3_scaling(cells: Sequence[dict], n: Optional[int] = None, title: str = "") -> go.Figure:
    """Figure 3 [paper]: test loss against depth at fixed width (left) and against width at fixed
    depth (right); solid = base model (test_loss_old), dashed = expanded (test_loss_new) when the
    cells have it; bands = mean +- 1 sd over seeds where a cell has more than one seed.

    `cells`: dicts with depth, width, n, seed, test_loss_old and optionally test_loss_new. With
    several n, the figure shows `n` (default the largest) and says so.
    """
    cells, n = _pick_n(cells, n)
    rows = aggregate_cells(cells, ("test_loss_old", "test_loss_new"))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("(a) test loss against depth, one line per width",
                                        "(b) test loss against width, one line per depth"))
    for col, (group_key, x_key) in enumerate((("width", "depth"), ("depth", "width")), start=1):
        offset = 0 if col == 1 else len({r["width"] for r in rows})   # widths and depths never share a colour
        for gi, g in enumerate(sorted({r[group_key] for r in rows})):
            rs = sorted((r for r in rows if r[group_key] == g), key=lambda r: r[x_key])
            color = _color(offset + gi)
            label = f"{group_key} {g}"
            xs = [r[x_key] for r in rs]
            for key, dash, suffix in (("test_loss_old", "solid", "base"), ("test_loss_new", "dash", "expanded")):
                pts = [(x, r[f"{key}_mean"], r[f"{key}_sd"], r[f"{key}_count"]) for x, r in zip(xs, rs)
                       if r[f"{key}_mean"] is not None]
                if not pts:
                    continue
                px, pm, ps, pc = (list(t) for t in zip(*pts))
                if max(pc) > 1:
                    _band(px, np.subtract(pm, ps), np.add(pm, ps), color, f"{col}{label}", "band",
                          row=1, col=col, fig=fig)
                fig.add_trace(go.Scatter(x=_f32(px), y=_f32(pm), mode="lines+markers", line=dict(color=color, dash=dash),
                                         name=f"{label} ({suffix})", legendgroup=f"{col}{label}",
                                         meta={"kind": key, "panel": "depth" if col == 1 else "width", group_key: g},
                                         customdata=_f32(pc),
                                         hovertemplate=f"{x_key} %{{x}}<br>loss %{{y:.4g}}<br>seeds %{{customdata}}"
                                                       f"<extra>{label} ({suffix})</extra>"),
                              row=1, col=col)
    fig.update_xaxes(title_text="depth (blocks per stage)", dtick=1, row=1, col=1)
    fig.update_xaxes(title_text="width w", type="log", row=1, col=2)
    fig.update_yaxes(title_text="test loss (nats)", row=1, col=1)
    seeds = max((len(r["seeds"]) for r in rows), default=0)
    sub = f"n = {n}; solid: base model, dashed: expanded; bands: +-1 sd over {seeds} seeds" if seeds > 1 else \
        f"n = {n}; solid: base model, dashed: expanded; one seed (no band)"
    fig.update_layout(title=_title(title, sub), height=460, legend=dict(orientation="h", y=-0.22),
                      **{**LAYOUT, "margin": dict(l=10, r=10, t=TOP, b=10)})
    return fig


def theory_vs_experiment(cells: Sequence[dict], predicted: str = "predicted_improvement",
                         measured: tuple[str, str] = ("test_loss_old", "test_loss_new"),
                         verdict_key: str = "route_B_verdict", title: str = "") -> go.Figure:
    """Predicted against measured improvement per grid cell, with seed error bars (theory.md 9).

    Predicted: the cell's `predicted` key, by default Delta_R + Delta_ERM (the routes' gain before
    the generalization terms); `certified_improvement_B` = L_old - route B's bound is the other
    natural choice. Measured: L_old - L_new from the two `measured` keys (default test losses).
    Marker colour: route B's verdict where cells carry `verdict_key`. The diagonal is y = x.
    """
    old_key, new_key = measured
    with_diff = []
    for c in cells:
        d = dict(c)
        if c.get(old_key) is not None and c.get(new_key) is not None:
            d["_measured"] = float(c[old_key]) - float(c[new_key])
        with_diff.append(d)
    rows = aggregate_cells(with_diff, (predicted, "_measured"))
    verdicts = defaultdict(list)
    for c in cells:
        verdicts[(int(c["depth"]), int(c["width"]), c.get("n"))].append(c.get(verdict_key))
    fig = go.Figure()
    pts = [r for r in rows if r[f"{predicted}_mean"] is not None and r["_measured_mean"] is not None]
    by_verdict: dict = defaultdict(list)
    for r in pts:
        vs = [v for v in verdicts[(r["depth"], r["width"], r["n"])] if v is not None]
        verdict = max(set(vs), key=vs.count) if vs else None
        by_verdict[verdict].append(r)
    for verdict, rs in by_verdict.items():
        label = f"route B: {verdict}" if verdict else "cells"
        fig.add_trace(go.Scatter(
            x=_f32([r[f"{predicted}_mean"] for r in rs]), y=_f32([r["_measured_mean"] for r in rs]),
            error_x=dict(type="data", array=_f32([r[f"{predicted}_sd"] for r in rs]), thickness=1),
            error_y=dict(type="data", array=_f32([r["_measured_sd"] for r in rs]), thickness=1),
            mode="markers+text", text=[f"d{r['depth']} w{r['width']}" for r in rs], textposition="top center",
            marker=dict(size=10, color=VERDICT_COLORS.get(verdict, "#7f7f7f")), name=label,
            meta={"kind": "cells", "verdict": verdict},
            hovertemplate="predicted %{x:.4g}<br>measured %{y:.4g}<br>%{text}<extra></extra>"))
    if pts:
        vals = [r[f"{predicted}_mean"] for r in pts] + [r["_measured_mean"] for r in pts]
        lo, hi = min(vals + [0.0]), max(vals + [0.0])
        pad = 0.05 * (hi - lo) + 1e-6
        fig.add_trace(go.Scatter(x=_f32([lo - pad, hi + pad]), y=_f32([lo - pad, hi + pad]), mode="lines",
                                 line=dict(color="gray", dash="dash", width=1), name="measured = predicted",
                                 meta={"kind": "diagonal"}))
    else:
        fig.add_annotation(text=f"no cell carries both {predicted!r} and {old_key} / {new_key}",
                           showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.add_hline(y=0, line_color="gray", line_width=1)
    fig.add_vline(x=0, line_color="gray", line_width=1)
    sub = f"x: {predicted} (mean +- sd over seeds); y: {old_key} - {new_key}"
    fig.update_layout(xaxis_title=f"predicted improvement ({predicted})", yaxis_title="measured improvement (nats)",
                      title=_title(title, sub), height=430,
                      legend=dict(orientation="h", y=-0.2), **LAYOUT)
    return fig


# ---------------------------------------------------------------------------------------------
# Table 3: depth-width allocation

def allocation_table_figure(rows: Sequence[dict], law: Optional[dict] = None, title: str = "",
                            with_table: bool = True) -> go.Figure:
    """Table 3 [paper]: GPT-3 configurations beside the depth-width law's projections (table), and
    the same on axes: layers against d_model for GPT-3, the law's optimal-depth curve L_opt(d),
    and the size-matched optimum (L*, d*) for each GPT-3 size.

    `rows`: `allocation.table3()`; `law`: `DepthWidthLaw.to_dict()` (slope, intercept, source);
    `with_table=False` draws the axes alone (a page that shows the table itself shows it once).
    """
    if not with_table:
        full = allocation_table_figure(rows, law, title, with_table=True)
        fig = go.Figure([t.update(xaxis="x", yaxis="y") for t in full.data if t.type != "table"])
        fig.update_xaxes(type="log", title_text="width d<sub>model</sub>", tickformat=".2s")
        fig.update_yaxes(title_text="layers")
        fig.update_layout(title=full.layout.title, height=560, legend=dict(orientation="h", y=-0.15),
                          **{**LAYOUT, "margin": dict(l=10, r=10, t=90, b=10)})
        return fig
    fig = make_subplots(rows=2, cols=1, row_heights=[0.34, 0.66], vertical_spacing=0.04,
                        specs=[[{"type": "table"}], [{"type": "xy"}]])
    header = ["model", "params", "GPT-3 layers", "GPT-3 d_model", "L_opt(d_model)", "d_opt(layers)", "L* (same size)",
              "d* (same size)", "GPT-3 vs L*"]
    cols = [[r["model"] for r in rows], [f"{r['n_params']:.3g}" for r in rows], [r["n_layers"] for r in rows],
            [r["d_model"] for r in rows], [f"{r['L_opt_for_width']:.1f}" for r in rows],
            [f"{r['d_opt_for_depth']:.0f}" for r in rows], [f"{r['L_star']:.1f}" for r in rows],
            [f"{r['d_star']:.0f}" for r in rows], [r["verdict"].split()[0] for r in rows]]
    fig.add_trace(go.Table(header=dict(values=header, fill_color="#e8eef7", align="left", font=dict(size=11)),
                           cells=dict(values=cols, align="left", font=dict(size=11), height=22),
                           meta={"kind": "table3"}), row=1, col=1)
    d = _f32([r["d_model"] for r in rows])
    fig.add_trace(go.Scatter(x=d, y=_f32([r["n_layers"] for r in rows]), mode="markers+text",
                             text=[r["model"].replace("GPT-3 ", "") for r in rows], textposition="top left",
                             marker=dict(size=9, color=_color(1)), name="GPT-3 (Brown et al. 2020)",
                             meta={"kind": "gpt3"}), row=2, col=1)
    fig.add_trace(go.Scatter(x=_f32([r["d_star"] for r in rows]), y=_f32([r["L_star"] for r in rows]),
                             mode="markers", marker=dict(size=9, symbol="diamond", color=_color(0)),
                             name="fit optimum at the same size (12 L d^2 = N)", meta={"kind": "size_matched"}),
                  row=2, col=1)
    for r in rows:
        fig.add_trace(go.Scatter(x=_f32([r["d_model"], r["d_star"]]), y=_f32([r["n_layers"], r["L_star"]]),
                                 mode="lines", line=dict(color="lightgray", width=1), showlegend=False,
                                 hoverinfo="skip", meta={"kind": "link"}), row=2, col=1)
    if law is not None:
        grid = np.geomspace(float(d.min()) / 1.5, float(max(d.max(), max(r["d_star"] for r in rows))) * 1.5, 100)
        fig.add_trace(go.Scatter(x=_f32(grid), y=_f32(law["slope"] * np.log(grid) + law["intercept"]), mode="lines",
                                 line=dict(color=_color(0), dash="dash"),
                                 name=f"L_opt(d) = {law['slope']:.2f} ln d {law['intercept']:+.1f}",
                                 meta={"kind": "law"}), row=2, col=1)
    fig.update_xaxes(type="log", title_text="width d_model", tickformat=".2s", row=2, col=1)
    fig.update_yaxes(title_text="layers", row=2, col=1)
    src = "GPT-3: Brown et al. 2020, Table 2.1; fit: Levine et al. 2020 (constants and their source in resx.figures.allocation)"
    fig.update_layout(title=_title(title, src), height=900, legend=dict(orientation="h", y=-0.08),
                      **{**LAYOUT, "margin": dict(l=10, r=10, t=90, b=10)})
    return fig


def allocation_fit_figure(fit: dict, title: str = "") -> go.Figure:
    """The log law fitted to a user's grid: best depth per width (markers), the least-squares line
    best_depth = slope ln(width) + intercept, and a +-1 se band of the fitted line where defined.

    `fit`: `AllocationFit.to_dict()`.
    """
    law, points = {k: _num(fit["law"][k]) for k in ("slope", "intercept", "slope_se", "intercept_se", "cov")}, fit["points"]
    w = _f32([p["width"] for p in points])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=w, y=_f32([p["best_depth"] for p in points]), mode="markers",
                             marker=dict(size=10, color=_color(1)),
                             name="best depth per width (lowest mean loss)", meta={"kind": "points"}))
    grid = np.geomspace(float(w.min()) / 1.3, float(w.max()) * 1.3, 60)
    line = law["slope"] * np.log(grid) + law["intercept"]
    x = np.log(grid)
    se = np.sqrt(x**2 * law["slope_se"]**2 + law["intercept_se"]**2 + 2 * x * law["cov"])
    if np.all(np.isfinite(se)):
        _band(grid, line - se, line + se, _color(0), "fit", "band", fig=fig)
    fig.add_trace(go.Scatter(x=_f32(grid), y=_f32(line), mode="lines", line=dict(color=_color(0)),
                             name=f"{law['slope']:.3g} ln w {law['intercept']:+.3g}", meta={"kind": "fit"}))
    se_txt = (f"slope {law['slope']:.3g} +- {law['slope_se']:.2g}, intercept {law['intercept']:.3g} +- "
              f"{law['intercept_se']:.2g}" if math.isfinite(law["slope_se"]) else
              "standard errors need at least 3 widths")
    sub = f"{fit['loss_key']}, n = {fit['n']}; {se_txt}"
    fig.update_layout(xaxis_type="log", xaxis_title="width w", yaxis_title="best depth",
                      title=_title(title, sub), height=380,
                      legend=dict(orientation="h", y=-0.25), **LAYOUT)
    return fig
