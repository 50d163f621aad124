"""Streamlit's pages/ folder mode must never run (app.py's st.navigation owns the pages).

Streamlit decides per process: `PagesManager.uses_pages_directory` is True while a `pages/` folder
exists beside app.py, until the first `st.navigation` call sets it False. Until then every script
run executes the requested page file on its own (`_mpa_v1`), without app.py: when a server's first
visitor opens /lesson (a teacher's link), that page ran with the automatic menu of file names, and
the flag stayed True for every later session, because app.py never ran. Every page imports `ui`,
so here the flag is cleared, and the script run that found it set starts over (st.rerun), now
through app.py.
"""
from __future__ import annotations


def leave_pages_directory_mode() -> None:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    was = PagesManager.uses_pages_directory
    PagesManager.uses_pages_directory = False
    if was and get_script_run_ctx() is not None:
        import streamlit as st
        st.rerun()  # this run was the pages/ folder's; the rerun goes through app.py
