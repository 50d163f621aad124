"""The class board's panels (design.md "Pages" 8): who predicted what, the spread of Delta_R across
seeds, the class's scaling picture, CSV export (the teacher's), and a student's own rows with the
class's aggregate (what a session without the teacher's key sees: no other student's name)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from resx.runs import classroom
from resx.runs.lesson import STEP_KEYS, STEPS

from .text import fmt, theory_link


def predictions_panel(runs: list[dict]):
    """Students down, lesson steps across: each cell the prediction, marked right or wrong once the
    student's runs are done."""
    rows = classroom.predictions(runs)
    st.subheader("Who predicted what")
    if not rows:
        st.caption("No predictions yet: students open the Lesson with this class code and press Run.")
        return
    mark = {True: "✓ ", False: "✗ ", None: "… "}
    table = {}
    for r in rows:
        table.setdefault(r["student"], {})[r["step"]] = mark[r["right"]] + r["prediction"]
    steps = [k for k in STEP_KEYS if any(k in v for v in table.values())]
    frame = pd.DataFrame([{"student": s, **{k: v.get(k, "") for k in steps}} for s, v in sorted(table.items())])
    st.dataframe(frame, hide_index=True, key="predictions",
                 column_config={k: st.column_config.TextColumn(f"{i + 1}. {STEPS[STEP_KEYS.index(k)].title}")
                                for i, k in enumerate(steps)})
    counts = []
    for k in steps:
        judged = [r for r in rows if r["step"] == k and r["right"] is not None]
        if judged:
            counts.append(f"step {STEP_KEYS.index(k) + 1}: {sum(r['right'] for r in judged)} of {len(judged)} right")
    st.caption("✓ right, ✗ not right, … the run is still going. " + "; ".join(counts))


def spread_panel(rows: list[dict]):
    """Delta_R across the class's runs of one configuration (they differ in seed): mean, sd, range."""
    st.subheader(r"The spread of $\Delta_R$ across seeds")
    unique = {r["run_id"]: r for r in rows if r["Delta_R"] is not None}
    groups: dict[tuple, list[float]] = {}
    for r in unique.values():
        groups.setdefault((r["width"], r["n"]), []).append(r["Delta_R"])
    if not groups:
        st.caption("Appears when the first run is done.")
        return
    table = []
    for (width, n), values in sorted(groups.items()):
        s = classroom.spread(values)
        table.append({"width": width, "n": n, "runs (seeds)": s["count"], "mean Δ_R": fmt(s["mean"], digits=3),
                      "sd across seeds": fmt(s["sd"], digits=2) if s["sd"] is not None else "one run",
                      "range": f"{fmt(s['min'], digits=3)} to {fmt(s['max'], digits=3)}"})
    st.dataframe(pd.DataFrame(table), hide_index=True, key="spread")
    st.caption(r"$\Delta_R = L(f_{\mathrm{old}}) - L(f_J)$, the population risk the jumpboard removes; each "
               "student's seed draws their own data and initialisation. " + theory_link("6-jumpboard"))


def scaling_panel(rows: list[dict]):
    """When the class was assigned different widths or n: Delta_R against them, one point per value."""
    from resx.figures import lesson as lf

    unique = list({r["run_id"]: r for r in rows if r["Delta_R"] is not None}.values())
    for field in ("width", "n"):
        if len({r[field] for r in unique}) > 1:
            st.subheader(f"The class's scaling picture: $\\Delta_R$ against {field}")
            st.plotly_chart(lf.class_scaling(classroom.scaling_points(unique, field), field), key=f"scale_{field}")
            st.caption("Each point: the mean over the students who ran that value; bars: one standard error "
                       "across them. " + theory_link("9-scaling"))


def runs_panel(rows: list[dict], code: str):
    st.subheader("Every run of the class")
    shown = [{**r, "Delta_R": fmt(r["Delta_R"], r["Delta_R_se"], digits=3) if r["Delta_R"] is not None else ""}
             for r in rows]
    st.dataframe(pd.DataFrame(shown, columns=[c for c in classroom.BOARD_COLUMNS if c != "Delta_R_se"]),
                 hide_index=True, key="class_runs")
    st.download_button("Export the board as CSV", classroom.board_csv(rows), file_name=f"class-{code}.csv",
                       mime="text/csv", key="csv")


def aggregate_panel(runs: list[dict]):
    """How the class predicted, without names: per lesson step, how many predictions were right."""
    rows = classroom.predictions(runs)
    st.subheader("How the class predicted")
    lines = []
    for i, key in enumerate(STEP_KEYS):
        step_rows = [r for r in rows if r["step"] == key]
        judged = [r for r in step_rows if r["right"] is not None]
        if step_rows:
            lines.append(f"- Step {i + 1}, {STEPS[i].title.lower()}: {len(step_rows)} prediction(s)"
                         + (f", {sum(r['right'] for r in judged)} of {len(judged)} right" if judged else ", runs going"))
    st.markdown("\n".join(lines) if lines else "No predictions yet.")


def own_panel(rows: list[dict]):
    """The rows of this session's own runs (its student name, its run ids)."""
    st.subheader("Your runs in this class")
    if not rows:
        st.caption("None yet: runs you start from the Lesson or the Lab with this class's link appear here.")
        return
    shown = [{**r, "Delta_R": fmt(r["Delta_R"], r["Delta_R_se"], digits=3) if r["Delta_R"] is not None else ""}
             for r in rows]
    st.dataframe(pd.DataFrame(shown, columns=[c for c in classroom.BOARD_COLUMNS if c not in ("Delta_R_se", "student")]),
                 hide_index=True, key="own_runs")
