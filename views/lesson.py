"""Lesson: the paper's argument in five steps; predict, run, reveal (design.md "Pages" 7)."""
import streamlit as st

import ui
from ui import lesson, teacher
from resx.runs.classroom import assignment
from resx.runs.lesson import LESSON_BASE, STEP_KEYS, STEPS, step_index

st.title("Lesson: when does a new residual block help?")
st.caption("Each step asks you to predict before you run. The run takes a few seconds; then the panel "
           "that answers, and whether you were right.")
hide, lock = teacher.hidden(), teacher.locked()
manager = ui.get_manager()
code = teacher.class_code()
student = teacher.student_name(code)

index = step_index(st.query_params.get("step"))
if "nav" not in hide:
    chosen = st.segmented_control("Step", range(len(STEPS)), format_func=lambda i: f"{i + 1}. {STEPS[i].title}",
                                  default=index, key=f"nav_{index}", label_visibility="collapsed")
    if chosen is not None and chosen != index:
        st.query_params["step"] = STEP_KEYS[chosen]
        st.rerun()

fixed = {k: int(st.query_params[k]) for k in lesson.LESSON_FIELDS if st.query_params.get(k, "").isdigit()}
place, closed = None, False
if code and student:
    try:
        place = manager.store.join_class(code, student)
        fixed = assignment(place, teacher.assigned_field()) | fixed  # the link's own fields win
    except ValueError:
        closed = True
        st.warning(f"Class `{code}` is closed: your runs are not filed on its board.")
cfg = lesson.lesson_config(LESSON_BASE, hide, lock, fixed)
step = lesson.step_header(index)
if cfg is None:
    st.stop()

mine = st.session_state.setdefault("lesson_step_runs", {}).get(step.key)
started = bool(mine) and mine["config"] == lesson.config_key(cfg)
choice = lesson.prediction_widget(step, started)
if not started:
    if code and not student and not closed:
        st.info(f"Type your name in the sidebar to file your prediction on class `{code}`'s board.")
    if st.button("Lock in my prediction and run", type="primary", disabled=choice is None):
        st.session_state["lesson_predictions"][step.key] = choice
        ids = lesson.start_runs(step, cfg)
        if code and student and not closed:
            for run_id in ids:
                manager.store.tag_run(run_id, code, student, step.key, step.choices[choice])
                teacher.remember_filed(run_id)
        st.session_state["lesson_step_runs"][step.key] = {"config": lesson.config_key(cfg), "ids": ids}
        st.rerun()
    st.stop()

ids = mine["ids"]


@st.fragment(run_every=1.0)
def wait_for_runs():
    snaps = lesson.progress(step, ids)
    if snaps is not None:
        st.rerun()  # all finished: one full rerun draws the reveal and stops the polling


snaps = [manager.snapshot(i) for i in ids]
if any(s is None or s.is_active for s in snaps):
    wait_for_runs()
    st.stop()
failed = [s for s in snaps if s.status != "done"]
if failed:
    for s in failed:
        ui.status_banner(st, s)
    st.stop()
results = [s.result for s in snaps]
lesson.panel(step, results)
lesson.verdict(step, results, st.session_state["lesson_predictions"].get(step.key))
if index + 1 < len(STEPS) and "nav" not in hide:
    if st.button(f"Next: {STEPS[index + 1].title}", key="next"):
        st.query_params["step"] = STEP_KEYS[index + 1]
        st.rerun()
elif index + 1 == len(STEPS):
    st.success("That was the whole argument. The Lab runs any configuration with every panel.")

if "teacher" not in hide:
    teacher.link_builder(lesson.LESSON_FIELDS + ("config", "nav", "teacher"),
                         {"step": step.key, **({"class": code} if code else {}),
                          **{k: st.query_params[k] for k in lesson.LESSON_FIELDS if k in st.query_params}},
                         page="lesson", steps=STEP_KEYS)
