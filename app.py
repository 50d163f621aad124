"""resx app entry point. Until the full explorer lands: run the default preset and show its curves."""
import streamlit as st

import resx  # noqa: F401  (imports torch on the main thread first)
from resx.config import DEFAULT_PRESET, PRESETS
from resx.pipeline import run_pipeline
from resx.plots import training_curves

st.set_page_config(page_title="resx", layout="wide")
st.title("resx: depth expansion in normalized residual networks")
st.write("Train a post-normalized residual network, insert a zero-initialised block, "
         "and fine-tune it against a control that simply trains on.")

name = st.selectbox("Preset", list(PRESETS), index=list(PRESETS).index(DEFAULT_PRESET))
st.json(PRESETS[name].to_dict(), expanded=False)
if st.button("Run", type="primary"):
    records = []
    with st.status(f"Running {name}...", expanded=False) as status:
        result = run_pipeline(PRESETS[name], sink=records.append)
        status.update(label=f"{name}: {result['status']}", state="complete")
    st.plotly_chart(training_curves(records), key="curves")
    if result["status"] == "done":
        cols = st.columns(3)
        for col, which in zip(cols, ("old", "new", "control")):
            r = result[which]
            value = r["L_pop"] if r["L_pop"] is not None else r["L_T"]
            col.metric(f"{which}: {'L (population)' if r['L_pop'] is not None else 'L_T'}", f"{value:.4f}")
    else:
        st.error(result.get("message", result["status"]))
