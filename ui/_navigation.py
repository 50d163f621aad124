"""Streamlit's pages/ folder mode must never run (app.py's st.navigation owns the pages).

Streamlit decides per process: `PagesManager.uses_pages_directory` is True while a `pages/` folder
exists beside app.py, until the first `st.navigation` call sets it False. Until then every script
run executes the requested page file on its own (`_mpa_v1`), without app.py: when a server's first
visitor opens /lesson (a teacher's link), that page ran with the automatic menu of file names, and
the flag stayed True for every later session, because app.py never ran. Every page imports `ui`,
so here the flag is cleared, and a script run of a pages/ file that found it set starts over
(st.rerun), now through app.py. (app.py itself, run as the folder's main page, just goes on to its
st.navigation.)
"""
from __future__ import annotations

import sys
from pathlib import Path

PAGES = Path(__file__).resolve().parents[1] / "pages"


def _importer_is_a_page() -> bool:
    frame = sys._getframe()
    while frame is not None:
        if Path(frame.f_code.co_filename).resolve().parent == PAGES:
            return True
        frame = frame.f_back
    return False


def leave_pages_directory_mode() -> None:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    was = PagesManager.uses_pages_directory
    PagesManager.uses_pages_directory = False
    if was and get_script_run_ctx() is not None and _importer_is_a_page():
        import streamlit as st
        st.rerun()  # this run was the pages/ folder's; the rerun goes through app.py
