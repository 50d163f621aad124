"""Class: a teacher's board of every run filed under a class code, live (design.md "Pages" 8)."""
import streamlit as st

import ui
from ui import class_board, teacher
from resx.core.config import ConfigError
from resx.runs.classroom import board_rows, check_code

st.title("Class board")
st.caption("A class code groups the runs of a class; it grants nothing and needs no account. Students open "
           "the Lesson (or the Lab) with the code in the link; their runs and predictions appear here.")
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
        store.open_class(code)
        st.query_params["class"] = code
        st.rerun()
    st.info("Type a code to open a class (or to find one that is open).")
    st.stop()

info = store.open_class(code)
link = teacher.share_link({"class": code}, page="lesson")
st.markdown(f"Class **{code}**: opened {info['created'][:16].replace('T', ' ')} UTC"
            + (f", **closed** {info['closed'][:16].replace('T', ' ')} UTC." if info["closed"] else ", open."))
with st.popover("Copy link for the class", icon=":material/content_copy:"):
    st.caption("Students open the Lesson with this link; add `&assign=width:8,16,32` to give each student "
               "a width (or `n:`), dealt in the order they join.")
    st.code(link, language=None, wrap_lines=True)


@st.fragment(run_every=None if info["closed"] else 3.0)
def board():
    runs = store.class_runs(code)
    rows = board_rows(runs)
    st.caption(f"{len({r['student'] for r in rows})} student(s), {len({r['run_id'] for r in rows})} run(s)"
               + ("" if info["closed"] else "; refreshed every 3 s."))
    class_board.predictions_panel(runs)
    class_board.spread_panel(rows)
    class_board.scaling_panel(rows)
    class_board.runs_panel(rows, code)


board()
if not info["closed"]:
    with st.expander("Close the class"):
        st.caption("A closed class takes no more runs; the board and the export stay.")
        if st.button("Close the class", type="primary", key="close"):
            store.close_class(code)
            st.rerun()
