"""The Streamlit side that pages share, split by panel; streamlit lives here and in views/, never in resx/.

state (the job manager, task runner, operator settings) <- form (the Lab form and URL state),
run_panels, route_panels, task_panels, teacher (links: hide=, lock=, class=), lesson, class_board, demo;
text holds the on-screen number format and Theory links.
Imports point one way: pages -> ui -> resx.
"""
from .form import config_form, config_from_url, config_to_url, ints, upload_panel, weights_panel
from .route_panels import certificates_panel, headline_panel, routes_panel
from .run_panels import PHASE_LABELS, jumpboard_note, margin_panel, preservation_badge, status_banner
from .state import MANAGERS, TASK_RUNNERS, caps, get_manager, get_tasks, operator_setting, trace
from .task_panels import task_panel
from . import demo, teacher, watchdog
from .teacher import file_under_class
from .text import fmt, plain, readable, sentence, theory_link

__all__ = ["MANAGERS", "PHASE_LABELS", "TASK_RUNNERS", "caps", "certificates_panel", "config_form", "config_from_url",
           "config_to_url", "demo", "file_under_class", "fmt", "get_manager", "get_tasks", "headline_panel", "ints",
           "jumpboard_note", "margin_panel", "operator_setting", "plain", "preservation_badge", "readable",
           "routes_panel", "sentence", "status_banner", "task_panel", "teacher", "theory_link", "trace", "upload_panel",
           "watchdog", "weights_panel"]
