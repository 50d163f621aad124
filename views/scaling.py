"""Scaling: the depth x width (x n) grid of figure 3, and theory against experiment (design.md "Pages" 3)."""
import pandas as pd
import plotly.express as px
import streamlit as st

import ui
from resx.core.config import PRESETS, ConfigError
from resx.scale.executors import InlineExecutor, LocalExecutor, RayExecutor
from resx.figures.cells import figure3_from_cells
from resx.scale.sweep import SweepSpec, run_sweep

st.title("Scaling")
st.caption("Each cell trains the base model, measures every descent margin, expands once at the middle "
           "position and records the old, new and control risks with the verdicts of both routes. "
           + ui.theory_link("9-scaling"))
tasks, store = ui.get_tasks(), ui.get_manager().store

with st.form("sweep"):
    cols = st.columns(4)
    preset = cols[0].selectbox("base preset", list(PRESETS))
    depths = cols[1].text_input("depths", "1,2,4")
    widths = cols[2].text_input("widths", "16,32,64")
    ns = cols[3].text_input("n (training sizes)", "")
    cols = st.columns(4)
    seeds = cols[0].text_input("seeds", "0,1")
    epochs = cols[1].number_input("epochs", value=PRESETS["demo-mlp"].epochs, step=1)
    executor = cols[2].selectbox("executor", ["this server, one cell at a time", "local processes", "Ray"])
    ray_address = ui.operator_setting("RESX_RAY_ADDRESS")  # the operator's cluster, never typed into the page
    cols[3].caption(f"Ray: {'the cluster at ' + ray_address if ray_address else 'a local one, started for the grid'} "
                    "(operator setting RESX_RAY_ADDRESS)")
    certify = st.checkbox("certify every cell", value=False,
                          help="the hold-out and PAC-Bayes certificates in each cell (the figure does not need "
                               "them; they can take longer than the cell). Off: each cell keeps its checkpoints "
                               "and can be certified later from the Lab")
    go = st.form_submit_button("Run the grid", type="primary")
if go:
    try:
        base = ui.caps().check(PRESETS[preset].replace(epochs=int(epochs)))
        spec = SweepSpec(base=base, depths=ui.ints(depths, "depths"), widths=ui.ints(widths, "widths"),
                         ns=ui.ints(ns, "ns") if ns.strip() else None, seeds=ui.ints(seeds, "seeds"),
                         certify=certify)
        for cell in spec.cells():
            ui.caps().check(cell)
    except ConfigError as e:
        st.error(str(e))
        st.stop()

    def job(cancel, say):
        ex = (InlineExecutor() if executor.startswith("this") else LocalExecutor(workers=2) if executor.startswith("local")
              else RayExecutor(address=ray_address or None, num_cpus=None if ray_address else 2))
        try:
            return run_sweep(spec, ex, store=store, cancel=cancel,
                             on_result=lambda c: say(f"cell depth={c['depth']} width={c['width']} n={c['n']} "
                                                     f"seed={c['seed']}: {c['status']}"))
        finally:
            ex.shutdown()

    st.session_state["sweep_task"] = tasks.submit("sweep", job)

sweeps = sorted({r["name"] for r in store.list_runs(limit=100_000) if r["name"].startswith("sweep:")})
task_id = st.session_state.get("sweep_task")
if task_id:
    first = tasks.snapshot(task_id)

    @st.fragment(run_every=2.0 if first and first.is_active else None)
    def progress():
        snap = ui.task_panel(task_id, "Stop the grid")
        if first and first.is_active and snap and not snap.is_active:
            st.rerun()  # finished: one full rerun draws the grid's figures and stops the polling

    progress()
shipped = ui.demo.precomputed()
if not sweeps and not (shipped and shipped.get("fig3_cells")):
    st.info("No grid yet. Run one here or with `python -m resx sweep --depths 1,2 --widths 16,32`.")
    st.stop()
if sweeps:
    name = st.selectbox("grid", sweeps[::-1])
    cells = [r["result"]["cell"] for r in store.list_runs(name=name, limit=100_000)
             if r["status"] in ("done", "diverged") and r["result"] and "cell" in r["result"]]
else:
    name, cells = "precomputed", shipped["fig3_cells"]
    st.info(ui.demo.precomputed_note(shipped, "a 2 x 2 x 2 grid of ResNets on shapes"))
if not cells:
    st.info("This grid has no finished cell yet.")
    st.stop()
fig3 = figure3_from_cells(cells)
st.subheader("Figure 3: test loss under depth and width scaling")
st.plotly_chart(fig3["scaling"], key="fig3")
st.subheader("Theory against experiment")
st.plotly_chart(fig3["theory"], key="theory")
st.subheader("Any recorded quantity")
frame = pd.DataFrame(cells)
numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and c not in ("depth", "width")]
quantity = st.selectbox("quantity", numeric, index=numeric.index("test_loss_old") if "test_loss_old" in numeric else 0)
grid = frame.groupby(["depth", "width"])[quantity].mean().unstack("width")
st.plotly_chart(px.imshow(grid, text_auto=".3g", labels=dict(color=quantity), aspect="auto"), key="heat")
st.download_button("cells CSV", frame.to_csv(index=False).encode(), f"{name.replace(':', '-')}.csv", "text/csv")
