"""resx: the Streamlit entry point. Navigation is declared once here; pages stay thin."""
from pathlib import Path

import streamlit as st

import ui
from ui.demo import apply_demo_settings

# An emoji favicon is drawn in the page; a material icon would be fetched from fonts.gstatic.com
# (the current page's icon is the favicon otherwise): no request leaves a server with no network.
st.set_page_config(page_title="resx: depth expansion explorer", page_icon="🧪", layout="wide")
# An uncaught error shows its type only, as .streamlit/config.toml says; set here as well because Community
# Cloud forces client.showErrorDetails to "full" (tracebacks with the server's paths) over the config file.
st.set_option("client.showErrorDetails", "type")
DEMO = apply_demo_settings()  # RESX_DEMO=1: one job at a time, small caps, the Lesson first

HERE = Path(__file__).resolve().parent  # pages by absolute path: cloud/streamlit_app.py runs this file too
LAB = st.Page(HERE / "views/lab.py", title="Lab", icon=":material/science:", url_path="lab")
LESSON = st.Page(HERE / "views/lesson.py", title="Lesson", icon=":material/school:", url_path="lesson")


def home():
    """'/' opens the Lab at /lab (the Lesson in the demo), keeping the query (?run=..., the configuration)."""
    st.switch_page(LESSON if DEMO else LAB, query_params=st.query_params.to_dict())


pages = [
    st.Page(home, title="Lab", url_path="home", default=True, visibility="hidden"),
    *([LESSON, LAB] if DEMO else [LAB, LESSON]),
    st.Page(HERE / "views/class_board.py", title="Class", icon=":material/groups:", url_path="class"),
    st.Page(HERE / "views/signals.py", title="Signals", icon=":material/monitoring:", url_path="signals"),
    st.Page(HERE / "views/scaling.py", title="Scaling", icon=":material/grid_on:", url_path="scaling"),
    st.Page(HERE / "views/allocation.py", title="Allocation", icon=":material/table_chart:", url_path="allocation"),
    st.Page(HERE / "views/runs.py", title="Runs", icon=":material/history:", url_path="runs"),
    st.Page(HERE / "views/theory.py", title="Theory", icon=":material/functions:", url_path="theory"),
]
page = st.navigation(pages)

manager = ui.get_manager()
with st.sidebar:
    st.caption("Jobs on this server")

    @st.fragment(run_every=5.0)
    def job_count():
        st.write(f"{len(manager.active())} running or queued, {manager.workers} at a time")
        ui.watchdog.check(page.url_path == "lab")  # the Lab's status line still polls, or the page reruns

    job_count()
    st.caption("resx explores arXiv 2605.08297: inserting a zero-initialised residual block "
               "into a trained post-normalized network. Every number links to its formula.")
page.run()
