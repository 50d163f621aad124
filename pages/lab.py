"""Lab: configure and launch a run, then watch it live (design.md "Pages" 1)."""
import streamlit as st

import ui
from resx.core.config import RunConfig
from resx.figures import live as plots

st.title("Lab")
st.caption("Train a post-normalized residual network, measure the descent margin at every insertion "
           "point, insert a zero-initialised block, and compare the expanded model with a control.")

manager = ui.get_manager()
ui.teacher.student_name(ui.teacher.class_code())  # ?class=...: the name that files runs on the board
shown = ui.config_from_url()
linked = st.query_params.get("run")
if linked and set(st.query_params) <= {"run", "preset"} and (snap := manager.snapshot(linked)):
    shown = RunConfig.from_dict(snap.config)  # a shared ?run= link shows that run's configuration
cfg, preset, run_pressed = ui.config_form(shown, npz_path=ui.upload_panel())
if run_pressed and cfg is not None:
    mine = [r for r in st.session_state.setdefault("my_runs", []) if (s := manager.snapshot(r)) and s.is_active]
    if len(mine) >= ui.caps().max_running_per_session:
        st.error(f"You already have {len(mine)} runs going; this server allows "
                 f"{ui.caps().max_running_per_session} per session. Stop one or wait.")
    else:
        run_id = manager.submit(cfg, source="app")
        st.session_state["my_runs"].append(run_id)
        ui.file_under_class(run_id)  # ?class=...: the run appears on that class's board
        ui.config_to_url(cfg, preset)
        st.query_params["run"] = run_id

run_id = st.query_params.get("run")
if not run_id:
    st.info("Press **Run** to start. The run id goes into the URL, so a reload or a shared link reattaches.")
    st.stop()

first = manager.snapshot(run_id)
if first is None:
    st.warning(f"No run {ui.plain(repr(run_id))} in the store. Start a new one, or pick one on the Runs page.")
    st.stop()


@st.fragment(run_every=1.0 if first.is_active else None)
def live():
    snap = manager.snapshot(run_id) if first.is_active else first  # a finished run is read once
    if first.is_active and not snap.is_active:
        st.rerun()  # the job ended: one full rerun redraws the page without polling
    result = snap.result or {}
    head, stop = st.columns([5, 1])
    if snap.status == "queued":
        head.info(f"Run `{run_id}` is queued: position {snap.queue_position}.")
    elif snap.is_active:
        head.progress(snap.progress or 0.0, text=f"Run `{run_id}`: {ui.PHASE_LABELS.get(snap.phase, snap.phase or 'starting')}")
    else:
        ui.status_banner(head, snap)
    if snap.is_active and stop.button("Stop run", key="stop", help="cancels the training job; the records so far are kept"):
        manager.cancel(run_id)

    st.subheader("Training curves")
    if any(r.name == "loss" for r in snap.records):
        st.plotly_chart(plots.training_curves(snap.records), key="curves")
    else:
        st.caption("The first point appears when the first evaluation ends.")
    st.caption("L_S on the training sample, L_T on the test sample, L on a fresh population sample "
               "(band: one standard error); dotted: the control. " + ui.theory_link("1-setting"))

    left, right = st.columns(2)
    with left:
        st.subheader("Descent margins")
        if any(r.phase == "margins" for r in snap.records):
            st.plotly_chart(plots.margin_heatmap(snap.records), key="heatmap")
        else:
            st.caption("Measured every few epochs during base training; the first map appears after the first epoch.")
        ui.margin_panel(result, snap.config)
    with right:
        st.subheader("Function preservation")
        ui.preservation_badge(result, snap.records)
        st.subheader("Jumpboard line search")
        if "jumpboard" in result:
            st.plotly_chart(plots.jumpboard_curve(result["jumpboard"]), key="jumpboard")
            st.caption("Direction and step chosen on the probe sample P only. " + ui.theory_link("6-jumpboard"))
        else:
            st.caption("Appears when the run reaches the jumpboard step.")

    st.subheader("The two test-risk guarantees")
    ui.routes_panel(result)


live()
