"""Signals: the paper's figures 1 and 2, and observability against width and n (design.md "Pages" 2)."""
import streamlit as st

import ui
from resx.core.config import ConfigError
from resx.scale.paper_figures import make_figures
from resx.scale.paper_data import FigureSettings
from resx.figures import paper as fp

st.title("Signals")
st.caption("Activation-gradient statistics of trained ResNets: the covariance before the head (figure 1), "
           "the decay of the first-order average signal with depth (figure 2), and how width and n make a "
           "weak mean gradient observable. " + ui.theory_link("5-signals"))

tasks = ui.get_tasks()
with st.form("signals"):
    cols = st.columns(3)
    dataset = cols[0].selectbox("dataset", ["shapes", "cifar10", "cifar100", "mnist", "fashion-mnist"])
    size = cols[1].radio("size", ["quick (minutes on a CPU)", "paper (hours on a CPU)"])
    seed = cols[2].number_input("seed", value=0, step=1)
    go = st.form_submit_button("Compute figures 1, 2 and observability", type="primary")
if go:
    make = FigureSettings.quick if size.startswith("quick") else FigureSettings.paper
    try:
        settings = make(dataset=dataset, seed=int(seed))
    except ConfigError as e:
        st.error(str(e))
        st.stop()
    out = ui.get_manager().store.home / "figures"

    def job(cancel, say):
        return make_figures(out, settings, only=["fig1", "fig2", "observability"], png=False, progress=say,
                            cancel=cancel)

    st.session_state["signals_task"] = tasks.submit("figures", job)



def draw(data: dict):
    f1, curves, rows = data["fig1"], data["fig2"], data["observability"]
    st.subheader("Figure 1: covariance of the activation gradient before the head")
    st.plotly_chart(fp.fig1_covariance(f1["main"]["cov"], title=f1["main"]["label"],
                                       num_classes=f1["main"]["num_classes"]), key="fig1")
    st.plotly_chart(fp.fig1_offdiag(f1["wide"]["cov"], title=f1["wide"]["label"]), key="fig1d")
    st.subheader("Figure 2: first-order average signal against block index")
    st.plotly_chart(fp.fig2_signal_decay(curves), key="fig2")
    st.subheader("Observability of a weak mean gradient")
    left, right = st.columns(2)
    left.plotly_chart(fp.observability_plot(rows, x="n"), key="obs_n")
    right.plotly_chart(fp.observability_plot(rows, x="width"), key="obs_w")
    st.markdown(r"$z = \|\bar g\|^2 / \sqrt{\bar g^\top \Sigma \bar g / n}$; $z_{\mathrm{unbiased}}$ removes the "
                r"$\operatorname{tr}(\Sigma)/n$ bias of $\|\bar g\|^2$. " + ui.theory_link("5-signals"))


task_id = st.session_state.get("signals_task")
if not task_id:
    shipped = ui.demo.precomputed()
    if shipped is None or "fig1" not in shipped:
        st.info("Press the button to train the models and measure their gradients.")
        st.stop()
    st.info(ui.demo.precomputed_note(shipped, "shapes, ResNet-8 to ResNet-20"))
    draw(shipped)
    st.stop()


first = tasks.snapshot(task_id)


@st.fragment(run_every=2.0 if first and first.is_active else None)
def panels():
    snap = ui.task_panel(task_id, "Stop the figures")
    if first and first.is_active and snap and not snap.is_active:
        st.rerun()  # finished: one full rerun draws the figures and stops the polling
    if snap is None or snap.status != "done":
        return
    draw(snap.result)


panels()
