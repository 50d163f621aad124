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
st.subheader("Table 3: GPT-3 against the depth-width law")
st.dataframe(pd.DataFrame(rows), hide_index=True, key="table3", column_config={
    "model": "model", "n_params": st.column_config.NumberColumn("parameters N", format="compact"),
    "n_layers": "layers L", "d_model": "width d", "n_heads": "heads", "d_head": "head width",
    "L_opt_for_width": st.column_config.NumberColumn("L_opt(d)", format="%.1f"),
    "d_opt_for_depth": st.column_config.NumberColumn("d_opt(L)", format="%.0f"),
    "L_star": st.column_config.NumberColumn("L* (same N)", format="%.1f"),
    "d_star": st.column_config.NumberColumn("d* (same N)", format="%.0f"), "verdict": "GPT-3 against the law"})
st.markdown(r"$L_{\mathrm{opt}}(d)$: the law's best depth for width $d$; $(L^*, d^*)$: its optimum at GPT-3's "
            r"size, $12 L d^2 = N$. " + ", ".join(f"{r['model']} is {r['verdict']}" for r in rows[-1:]) + ".")
st.plotly_chart(fp.allocation_table_figure(rows, law, with_table=False), key="table3_fig")
with st.expander("Constants of the law and their source"):
    st.json(law)

st.subheader("The same law on your grid")
store = ui.get_manager().store
sweeps = sorted({r["name"] for r in store.list_runs(limit=100_000) if r["name"].startswith("sweep:")})
shipped = ui.demo.precomputed()
if not sweeps and not (shipped and shipped.get("fig3_cells")):
    st.info("Run a grid on the Scaling page first.")
    st.stop()
if sweeps:
    name = st.selectbox("grid", sweeps[::-1])
    cells = [r["result"]["cell"] for r in store.list_runs(name=name, limit=100_000)
             if r["status"] == "done" and r["result"] and "cell" in r["result"]]
else:
    cells = [c for c in shipped["fig3_cells"] if c.get("status", "done") == "done"]
    st.info(ui.demo.precomputed_note(shipped, "the Scaling page's 2 x 2 x 2 grid").replace(
        "with the form above", "with a grid on the Scaling page"))
try:
    fit = fit_allocation(cells).to_dict()
except ValueError as e:
    st.warning(f"No fit on this grid: {e}")
    st.stop()
st.plotly_chart(fp.allocation_fit_figure(fit), key="fit")
with st.expander("The fitted constants with their standard errors"):
    st.json(fit)
