"""Class: a teacher's board of every run filed under a class code, live (design.md "Pages" 8).

Creating a class gives its teacher a secret link (`?class=CODE&key=...`); with the key the board shows
every student's name and prediction, exports the CSV and closes the class. Without it a session sees
its own runs and the class's aggregate (counts, how many predicted right, the spread of Delta_R)."""
import streamlit as st

import ui
from ui import class_board, teacher
from resx.core.config import ConfigError
from resx.runs.classroom import board_rows, check_code

st.title("Class board")
st.caption("A class code groups the runs of a class and needs no account. Students open the Lesson (or the "
           "Lab) with the code in the link; their runs and predictions appear here. The teacher's link, made "
           "when the class is created, shows names, exports and closes the class.")
store = ui.get_manager().store
code = teacher.class_code()
if not code:
    typed = st.text_input("Class code", placeholder="e.g. PHYS-101", help="3 to 16 letters, digits or '-'")
    if typed:
        try:
            code = check_code(typed)
        except ConfigError as e:
            st.error(str(e))
            st.stop()
        st.query_params["class"] = code
        st.rerun()
    st.info("Type a code to create a class (or to see the one you are in).")
    st.stop()

info = store.class_info(code)
is_teacher = teacher.teacher_key(code, store)
if not store.has_teacher(code) and not (info and info["closed"]):
    st.info(f"Class **{code}** has no teacher yet" + (" (students' links have filed runs under it)." if info else "."))
    if st.button(f"Create class {code}: I am its teacher", type="primary", key="create_class"):
        try:
            key = store.create_class(code)
        except ValueError as e:  # another teacher took it a moment ago
            st.error(str(e))
        else:
            st.session_state.setdefault("teacher_keys", {})[code] = key
            st.session_state["new_teacher_link"] = teacher.share_link({"class": code, "key": key})
            st.rerun()
    if info is None:
        st.stop()
info = store.class_info(code) or info
link = teacher.share_link({"class": code}, page="lesson")
st.markdown(f"Class **{code}**: opened {info['created'][:16].replace('T', ' ')} UTC"
            + (f", **closed** {info['closed'][:16].replace('T', ' ')} UTC." if info["closed"] else ", open."))
if is_teacher and (made := st.session_state.pop("new_teacher_link", None)):
    st.success("Class created. Keep **your teacher's link**: it is the only way to see names, export and close "
               "this class, on this or another browser. Do not share it; share the students' link below.")
    st.code(made, language=None, wrap_lines=True)
with st.popover("Copy link for the class", icon=":material/content_copy:"):
    st.caption("Students open the Lesson with this link; add `&assign=width:8,16,32` to give each student "
               "a width (or `n:`), dealt in the order they join.")
    st.code(link, language=None, wrap_lines=True)
    teacher.local_address_note(link)
if is_teacher:
    with st.popover("Your teacher's link", icon=":material/key:"):
        st.caption("Opens this board as its teacher (names, export, closing) on any browser. Keep it to yourself.")
        st.code(teacher.share_link({"class": code, "key": st.session_state["teacher_keys"][code]}), language=None,
                wrap_lines=True)


@st.fragment(run_every=None if info["closed"] else 3.0)
def board():
    runs = store.class_runs(code)
    rows = board_rows(runs)
    st.caption(f"{len({r['student'] for r in rows})} student(s), {len({r['run_id'] for r in rows})} run(s)"
               + ("" if info["closed"] else "; refreshed every 3 s."))
    if is_teacher:
        class_board.predictions_panel(runs)
    else:
        name, mine = st.session_state.get("student_name"), teacher.session_runs()
        class_board.own_panel([r for r in rows if r["run_id"] in mine and r["student"] == name])
        class_board.aggregate_panel(runs)
    class_board.spread_panel(rows)
    class_board.scaling_panel(rows)
    if is_teacher:
        class_board.runs_panel(rows, code)


board()
if is_teacher and not info["closed"]:
    with st.expander("Close the class"):
        st.caption("A closed class takes no more runs; the board and the export stay.")
        if st.button("Close the class", type="primary", key="close"):
            store.close_class(code, st.session_state["teacher_keys"][code])
            st.rerun()
elif not is_teacher:
    st.caption("Names, the export and closing the class are the teacher's: they open with the teacher's link.")
