"""Allocation: the paper's table 3 (GPT-3 against the Levine et al. 2020 depth-width law), and the
same law fitted to the user's own grid (design.md "Pages" 4)."""
import pandas as pd
import streamlit as st

import ui
from resx.figures import paper as fp
from resx.figures.allocation import LEVINE_2020, fit_allocation, table3

st.title("Allocation")
law = LEVINE_2020.to_dict()
st.caption("Levine et al. 2020 find that the optimal depth grows like the log of the width. "
           + ui.theory_link("9-scaling", "The form, the constants and their source"))
rows = table3(LEVINE_2020)
st.dataframe(pd.DataFrame(rows), hide_index=True, key="table3",
             column_config={"n_params": st.column_config.NumberColumn(format="compact")})
st.plotly_chart(fp.allocation_table_figure(rows, law), key="table3_fig")
with st.expander("Constants of the law and their source"):
    st.json(law)

st.subheader("The same law on your grid")
store = ui.get_manager().store
sweeps = sorted({r["name"] for r in store.list_runs(limit=100_000) if r["name"].startswith("sweep:")})
if not sweeps:
    st.info("Run a grid on the Scaling page first.")
    st.stop()
name = st.selectbox("grid", sweeps[::-1])
cells = [r["result"]["cell"] for r in store.list_runs(name=name, limit=100_000)
         if r["status"] == "done" and r["result"] and "cell" in r["result"]]
try:
    fit = fit_allocation(cells).to_dict()
except ValueError as e:
    st.warning(f"No fit on this grid: {e}")
    st.stop()
st.plotly_chart(fp.allocation_fit_figure(fit), key="fit")
with st.expander("The fitted constants with their standard errors"):
    st.json(fit)
