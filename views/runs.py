"""Runs: the history in the store; compare, export, delete (design.md "Pages" 5)."""
import functools
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from resx.figures import live as plots

st.title("Runs")
store = ui.get_manager().store

status = st.selectbox("Status", ["all", "done", "running", "queued", "diverged", "failed", "cancelled", "interrupted"])
runs = store.list_runs(status=None if status == "all" else status)
if not runs:
    st.info("No runs yet. Start one on the Lab page or with `python -m resx run`.")
    st.stop()

hits = store.cache_hits(r["id"] for r in runs)  # requests an identical earlier run served (resx/runs/cache.py)
table = pd.DataFrame([{
    "id": r["id"], "status": r["status"], "source": r["source"], "served from cache": hits.get(r["id"], 0),
    "dataset": r["config"].get("dataset"),
    "arch": r["config"].get("arch"), "depth": r["config"].get("depth"), "width": r["config"].get("width"),
    "position": r["config"].get("position"), "created": pd.to_datetime(r["created"]),
} for r in runs])
picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="multi-row", key="runs_table",
                      column_config={"created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm:ss"),
                                     "served from cache": st.column_config.NumberColumn(
                                         "served from cache", help="requests with the same configuration, seed and "
                                         "code answered by this run instead of a new computation")})
if hits:
    st.caption(f"{sum(hits.values())} request(s) were served from the cache by {len(hits)} run(s): the same "
               "configuration, seed and code version, computed once.")
ids = [table.iloc[i]["id"] for i in picked.selection.rows]
if not ids:
    st.caption("Select one or more rows to compare, export or delete.")
    st.stop()

st.subheader("Risk curves")
st.plotly_chart(plots.runs_overlay({i: store.records(i) for i in ids}), key="overlay")
configs = pd.DataFrame({i: {k: ui.fmt(v) if isinstance(v, float) else str(v) for k, v in store.get_run(i)["config"].items()}
                        for i in ids})  # floats as 0.0001 or 1×10⁻⁵, never 1e-05
if len(ids) > 1:
    differs = configs.nunique(axis=1) > 1
    st.subheader("Where the configurations differ")
    st.dataframe(configs[differs] if differs.any() else configs, key="config_diff")
else:
    st.subheader("Configuration")
    st.dataframe(configs, key="config_one")


def exported(run_id: str, kind: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{run_id}.{kind}"
        (store.export_json if kind == "json" else store.export_csv)(run_id, path)
        return path.read_bytes()


for run_id in ids:
    cols = st.columns([2, 1, 1, 1])
    cols[0].page_link("views/lab.py", label=f"open {run_id} in the Lab", query_params={"run": run_id})
    cols[1].download_button("metrics CSV", functools.partial(exported, run_id, "csv"), f"{run_id}.csv", "text/csv",
                            key=f"csv{run_id}", on_click="ignore")
    cols[2].download_button("run JSON", functools.partial(exported, run_id, "json"), f"{run_id}.json",
                            "application/json", key=f"json{run_id}", on_click="ignore")
    confirm = cols[3].checkbox("confirm", key=f"confirm{run_id}", help="tick, then Delete: the run's records go too")
    if cols[3].button("Delete", key=f"del{run_id}", disabled=not confirm):
        snap = ui.get_manager().snapshot(run_id)
        if snap is not None and snap.is_active:
            st.error(f"{run_id} is still {snap.status}; stop it in the Lab first.")
        else:
            store.delete_run(run_id)
            st.rerun()
