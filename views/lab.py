"""Lab: configure and launch a run, then watch it live (design.md "Pages" 1)."""
import streamlit as st

import ui
from resx.core.config import RunConfig
from resx.figures import live as plots
from ui.shared_figures import LIVE_REDRAW_S, shared_figure

# Seconds between status-line polls. A finished run's line still polls, slowly: its ticks are what
# tells the sidebar's watchdog (ui.watchdog) that this page's timers are alive.
POLL_S = {"queued": 3.0, "running": 1.5}
FINISHED_POLL_S = 8.0
PANELS_POLL_S = {"running": LIVE_REDRAW_S}  # the charts and panels of a running run (queued: nothing yet)

st.title("Lab")
st.caption("Train a post-normalized residual network, measure the descent margin at every insertion "
           "point, insert a zero-initialised block, and compare the expanded model with a control.")

manager = ui.get_manager()
ui.teacher.student_name(ui.teacher.class_code())  # ?class=...: the name that files runs on the board
# Streamlit reads st.query_params anew from every rerun's request, and a fragment's timer (the
# sidebar's job count) can send one with the URL from before this session's last Run: ?run= then
# vanishes server-side, the page redraws as if nothing ran, and under load the browser's element
# tree breaks (a blank page). So the run this session shows is kept in the session too, and put back.
if "run" not in st.query_params and st.session_state.get("lab_run"):
    st.query_params["run"] = st.session_state["lab_run"]
shown = ui.config_from_url()
linked = st.query_params.get("run")
if linked and set(st.query_params) <= {"run", "preset"} and (snap := manager.snapshot(linked)):
    shown = RunConfig.from_dict(snap.config)  # a shared ?run= link shows that run's configuration
cfg, preset, run_pressed = ui.config_form(shown, npz_path=ui.upload_panel(), weights_path=ui.weights_panel())
again = st.session_state.pop("run_again", None)  # the "Run again" button of a run served from the cache
if again is not None:
    cfg, preset, run_pressed = RunConfig.from_dict(again), st.query_params.get("preset", preset), True
if run_pressed and cfg is not None:
    mine = [r for r in st.session_state.setdefault("my_runs", []) if (s := manager.snapshot(r)) and s.is_active]
    if len(mine) >= ui.caps().max_running_per_session:
        st.error(f"You already have {len(mine)} runs going; this server allows "
                 f"{ui.caps().max_running_per_session} per session. Stop one or wait.")
    else:
        req = manager.request(cfg, source="app", reuse=again is None)
        served = st.session_state.setdefault("served_from_cache", set())
        (served.add if req.cached else served.discard)(req.run_id)
        if not req.cached:
            st.session_state["my_runs"].append(req.run_id)
        ui.file_under_class(req.run_id)  # ?class=...: the run appears on that class's board
        ui.config_to_url(cfg, preset)
        st.query_params["run"] = req.run_id

ui.watchdog.lab_started()
run_id = st.session_state["lab_run"] = st.query_params.get("run")
if not run_id:
    ui.trace("no-run", qs=",".join(st.query_params))
    st.info("Press **Run** to start. The run id goes into the URL, so a reload or a shared link reattaches.")
    st.stop()

first = manager.snapshot(run_id)
ui.trace("full", qs=",".join(st.query_params), run=run_id, first=first and first.status)
if first is None:
    st.warning(f"No run {ui.plain(repr(run_id))} in the store. Start a new one, or pick one on the Runs page.")
    st.stop()


if run_id in st.session_state.get("served_from_cache", ()):
    note, again_col = st.columns([5, 1])
    note.info(f"Same configuration, seed and code as run `{run_id}` ({first.status}), so this is that run: "
              f"{'watching it' if first.is_active else 'its stored result'}, computed once for everyone who asks.")
    if again_col.button("Run again", key="run_again_button", help="compute it anew, as a run of your own"):
        st.session_state["run_again"] = first.config
        st.rerun()


def panels_shown(snap) -> tuple:
    """Which charts and results the panels have to draw: when it changes, the page reruns whole,
    so a new panel appears within a status poll rather than at the panels' next redraw."""
    names = {(r.name, r.phase) for r in snap.records}
    return (any(n == "loss" for n, _ in names), any(ph == "margins" for _, ph in names), tuple(sorted(snap.result or ())))


@st.fragment(run_every=POLL_S.get(first.status, FINISHED_POLL_S))
def status_line():
    """Queue position, progress or final status: small, so it can poll often. It draws what it
    reads (the final banner too) before it asks for the whole page's rerun, so the end shows at
    the first poll that sees it even if that rerun's messages never reach the browser."""
    ui.watchdog.lab_polled()
    snap = manager.snapshot(run_id) if first.is_active else first  # a finished run is read once
    ui.trace("status_line", first=first.status, snap=snap.status, qs=",".join(st.query_params))
    head, stop = st.columns([5, 1])
    if snap.status == "queued":
        head.info(f"Run `{run_id}` is queued: position {snap.queue_position} of {len(manager.active())} "
                  f"on this server ({manager.workers} run at a time). This page checks every few seconds.")
    elif snap.is_active:
        head.progress(snap.progress or 0.0, text=f"Run `{run_id}`: {ui.PHASE_LABELS.get(snap.phase, snap.phase or 'starting')}")
    else:
        ui.status_banner(head, snap)
    if snap.is_active and run_id in st.session_state.get("my_runs", ()) and stop.button("Stop run", key="stop", help="cancels the training job; the records so far are kept"):
        manager.cancel(run_id)
    if snap.status != first.status or panels_shown(snap) != panels_shown(first):
        st.rerun()  # queued -> running -> finished sets the new polling cadence; a new panel appears at once


@st.fragment(run_every=PANELS_POLL_S.get(first.status))
def panels():
    """The answer, the charts and the theory panels: redrawn as often as a live chart is (every
    redraw costs each watching page its React and Plotly work), then once more when the run ends."""
    snap = manager.snapshot(run_id) if first.is_active else first
    result = snap.result or {}
    ui.headline_panel(result)  # the answer first, once the run has one

    st.subheader("Training curves")
    if any(r.name == "loss" for r in snap.records):
        st.plotly_chart(shared_figure(run_id, plots.curves_version(snap.records), "curves",
                                      lambda: plots.training_curves(snap.records), live=snap.is_active), key="curves")
    else:
        st.caption("The first point appears when the first evaluation ends.")
    st.caption("L_S on the training sample, L_T on the test sample, L on a fresh population sample "
               "(band: one standard error); dotted: the control. " + ui.theory_link("1-setting"))

    left, right = st.columns(2)
    with left:
        st.subheader("Descent margins")
        if any(r.phase == "margins" for r in snap.records):
            st.plotly_chart(shared_figure(run_id, plots.heatmap_version(snap.records), "heatmap",
                                          lambda: plots.margin_heatmap(snap.records), live=snap.is_active), key="heatmap")
        else:
            st.caption("Measured every few epochs during base training; the first map appears after the first epoch.")
        ui.margin_panel(result, snap.config)
    with right:
        st.subheader("Function preservation")
        ui.preservation_badge(result, snap.records)
        st.subheader("Jumpboard line search")
        if result.get("jumpboard"):
            st.plotly_chart(shared_figure(run_id, 0, "jumpboard", lambda: plots.jumpboard_curve(result["jumpboard"])),
                            key="jumpboard")
            st.caption("Direction chosen on half P1 of the probe sample, step on half P2. " + ui.theory_link("6-jumpboard"))
        if "jumpboard" in result:
            ui.jumpboard_note(result)
        else:
            st.caption("Appears when the run reaches the jumpboard step.")

    st.subheader("Certificates")
    ui.certificates_panel(result)
    st.subheader("The two test-risk guarantees (the paper's norm-based routes)")
    ui.routes_panel(result)


def certify_later():
    """A finished run that skipped the certify step (a sweep cell, certify=false): a button that
    certifies it from its saved checkpoints, then its progress; the page redraws when it is done."""
    tasks, key = ui.get_tasks(), f"certify_task_{run_id}"
    if key not in st.session_state:
        note, button = st.columns([5, 1])
        note.info("This run did not certify (certify=false). Its certificates can be computed now from its saved "
                  "checkpoints; nothing is trained again but the PAC-Bayes route's own split.")
        if button.button("Certify this run", key="certify_later"):
            st.session_state[key] = tasks.submit("certify", lambda cancel, say: manager.certify_later(run_id))
            st.rerun()
        return
    task_id = st.session_state[key]
    first_task = tasks.snapshot(task_id)

    @st.fragment(run_every=2.0 if first_task and first_task.is_active else None)
    def progress():
        snap = tasks.snapshot(task_id)
        if snap is None or snap.is_active:
            st.info(f"Certifying run `{run_id}` from its checkpoints ...")
        elif snap.status == "failed":
            st.error(f"Certifying failed: {snap.error}")
        if first_task and first_task.is_active and snap and not snap.is_active:
            st.rerun()  # done: one full rerun draws the certificates

    progress()


status_line()
if first.status == "done" and not ((first.result or {}).get("certificates") or {}).get("computed", True):
    certify_later()
ui.watchdog.lab_drawn()  # from here on the sidebar's watchdog expects the status line to poll
panels()
