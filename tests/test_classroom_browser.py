"""Browser end-to-end tests of the classroom (issue 13): the Lesson walked step by step, three
students on one class board, a teacher link's hide= and lock=, and the public demo (RESX_DEMO=1)
opening on the Lesson with precomputed figures. One real `streamlit run app.py` in demo mode
serves them all (the demo is the tightest setting: one job at a time), driven by the system Chromium.

Screenshots of every lesson step and every page go to $RESX_SCREENSHOTS (else pytest's temp folder).
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from browser_util import PLOTLY, Server, full_screenshot, main_text, page_errors, wait_app_ready, wait_settled

from resx.runs.lesson import STEPS

pytestmark = pytest.mark.browser
RUN_MS = 300_000  # a wait, not a speed claim: the shared CI machine may be slow
VERDICT = '[data-testid="stAlert"]:has-text("prediction was")'
CLOSED_AT = re.compile(r"closed \d{4}-\d\d-\d\d \d\d:\d\d UTC")  # the board's status line once closed
PAGES = ("lab", "lesson", "class", "signals", "scaling", "allocation", "runs", "theory")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("RESX_SCREENSHOTS") or tmp_path_factory.mktemp("classroom-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def demo(chromium, shots):
    """`streamlit run app.py` with RESX_DEMO=1 and a fresh RESX_HOME."""
    home = Path(tempfile.mkdtemp(prefix="resx-classroom-"))
    srv = Server(home=home, log_path=home / "streamlit.log").start(timeout=120, extra_env={"RESX_DEMO": "1"})
    try:
        yield srv
    finally:
        srv.stop()
        shutil.copyfile(home / "streamlit.log", shots / "classroom-streamlit.log")
        shutil.rmtree(home, ignore_errors=True)


def _page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    ctx.set_default_timeout(30_000)
    return ctx, ctx.new_page()


def _predict_and_run(pg, choice: int) -> None:
    wait_settled(pg, 30_000)
    pg.locator('[data-testid="stRadio"] [role="radiogroup"] label').nth(choice).click()
    wait_settled(pg, 30_000)
    pg.get_by_role("button", name="Lock in my prediction and run").click()


def test_a_servers_first_visitor_on_a_deep_link_gets_the_apps_menu(browser, demo):
    """The first request a fresh server gets is a teacher's /lesson link: the page runs through app.py
    (the app's menu: Lab, Lesson, Class, ...), not as a lone page file with Streamlit's automatic menu of file names."""
    ctx, pg = _page(browser)
    try:
        pg.goto(demo.url + "/lesson?step=width")
        wait_app_ready(pg)
        pg.get_by_role("heading", name=re.compile("^Step 3 of")).wait_for(timeout=60_000)
        wait_settled(pg, 30_000)
        menu = [t.split("\n")[-1].strip() for t in pg.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]
        assert "Class" in menu and "Lesson" in menu, menu
        assert not {"app", "class board", "lesson"} & set(menu), menu
    finally:
        ctx.close()


def test_demo_opens_on_the_lesson(browser, demo, shots):
    """In demo mode '/' lands on the Lesson; every page opens without an error (a screenshot of each)."""
    ctx, pg = _page(browser)
    try:
        pg.goto(demo.url + "/")
        wait_app_ready(pg)
        pg.get_by_role("heading", name=re.compile("^Lesson")).wait_for(timeout=60_000)
        assert "/lesson" in pg.url
        for name in PAGES:  # a screenshot of every page, as a visitor first sees it
            pg.goto(f"{demo.url}/{name}")
            wait_app_ready(pg)
            wait_settled(pg, 60_000)
            pg.wait_for_timeout(500)
            assert not page_errors(pg), f"{name}: {page_errors(pg)}"
            full_screenshot(pg, shots / f"demo_{name}.png")
    finally:
        ctx.close()


def test_demo_signals_scaling_allocation_show_precomputed_figures_without_a_click(browser, demo):
    """Signals, Scaling and Allocation draw the shipped figures on first open, marked as precomputed."""
    from resx.scale.demo_assets import DEFAULT_OUT
    if not DEFAULT_OUT.exists():
        pytest.fail(f"{DEFAULT_OUT} is missing: make it with `python -m resx assets` and commit it")
    ctx, pg = _page(browser)
    try:
        for name in ("signals", "scaling", "allocation"):
            pg.goto(f"{demo.url}/{name}")
            wait_app_ready(pg)
            pg.locator(PLOTLY).first.wait_for(timeout=60_000)
            wait_settled(pg, 60_000)
            assert "precomputed" in main_text(pg).lower(), name
            assert not page_errors(pg), page_errors(pg)
    finally:
        ctx.close()


def test_a_student_walks_the_whole_lesson(browser, demo, shots):
    """Every step: the prediction is asked first, the runs finish, the answering panel and the reveal
    appear, and the student is told whether the prediction was right."""
    ctx, pg = _page(browser)
    try:
        pg.goto(demo.url + "/lesson")
        wait_app_ready(pg)
        for i, step in enumerate(STEPS):
            pg.get_by_role("heading", name=re.compile(f"^Step {i + 1} of {len(STEPS)}")).wait_for(timeout=30_000)
            run = pg.get_by_role("button", name="Lock in my prediction and run")
            assert run.is_disabled(), "Run must wait for a prediction"
            _predict_and_run(pg, i % len(step.choices))
            pg.locator(VERDICT).wait_for(timeout=RUN_MS)
            wait_settled(pg, 30_000)
            text = main_text(pg)
            assert re.search(r"Your prediction was (right|not right)", text)
            assert "Theory page" in text
            assert not re.search(r"\d\.\d+e[+-]\d", text), "e-notation on screen"
            assert not page_errors(pg), page_errors(pg)
            full_screenshot(pg, shots / f"lesson_step{i + 1}_{step.key}.png")
            if i + 1 < len(STEPS):
                pg.get_by_role("button", name=re.compile("^Next:")).click()
    finally:
        ctx.close()


def _create_class(browser, url: str, code: str):
    """The teacher creates the class on the Class page; returns (context, page, the teacher's link)."""
    ctx, pg = _page(browser)
    pg.goto(f"{url}/class?class={code}")
    wait_app_ready(pg)
    pg.get_by_role("button", name=f"Create class {code}: I am its teacher").click()
    pg.get_by_text("Keep your teacher's link").wait_for(timeout=30_000)
    wait_settled(pg)
    link = next(t.strip() for t in pg.locator('[data-testid="stCode"]').all_inner_texts() if "key=" in t)
    assert link.startswith(f"{url}/class?") and f"class={code}" in link
    assert "key=" not in pg.url  # the key is kept in the session, not shown in the address bar
    return ctx, pg, link


def test_three_students_on_one_class_board(browser, demo, shots):
    """The teacher creates a class; three sessions with its code (and a width each) run step 1; the teacher's
    board shows the three runs with each student's prediction, the class's scaling picture, and exports them as CSV."""
    link = "/lesson?class=TRIO-1&step=preserve&assign=width:8,16,32&hide=config,nav"
    step = STEPS[0]
    ctx, board, teacher_link = _create_class(browser, demo.url, "TRIO-1")
    sessions = [ctx]
    try:
        for i in range(3):
            ctx, pg = _page(browser)
            sessions.append(ctx)
            pg.goto(f"{demo.url}{link}&student=student{i + 1}")
            wait_app_ready(pg)
            _predict_and_run(pg, i % len(step.choices))
        for ctx in sessions[1:]:
            ctx.pages[0].locator(VERDICT).wait_for(timeout=RUN_MS)
        board.goto(teacher_link)  # as on another browser: the link alone makes it the teacher's board
        wait_app_ready(board)
        board.get_by_text("3 student(s), 3 run(s)").wait_for(timeout=30_000)
        board.locator(PLOTLY).first.wait_for(timeout=30_000)  # Delta_R against the assigned widths
        wait_settled(board)
        full_screenshot(board, shots / "class_board.png")
        with board.expect_download() as info:
            board.get_by_role("button", name="Export the board as CSV").click()
        rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
        assert sorted(r["student"] for r in rows) == ["student1", "student2", "student3"]
        assert sorted(r["width"] for r in rows) == ["16", "32", "8"]
        assert [r["prediction"] for r in sorted(rows, key=lambda r: r["student"])] == list(step.choices[:3])
        assert all(r["status"] == "done" and r["Delta_R"] for r in rows)
        board.get_by_text("Close the class").first.click()
        board.get_by_role("button", name="Close the class").click()
        board.locator('[data-testid="stMarkdownContainer"]', has_text=CLOSED_AT).first.wait_for(timeout=30_000)
    finally:
        for ctx in sessions:
            ctx.close()


def test_without_the_teachers_key_a_session_cannot_close_the_class_or_see_names(browser, demo, shots):
    """A class with a run filed by a named student: a session with the class link but no key, and one with
    a wrong key (told so), see the class's aggregate but not the name, and have no export and no close;
    the class stays open. The teacher's link, in a third session, shows the name and closes the class."""
    from resx.runs.store import Store

    code, name = "KEYS-1", "zelda-secret"
    ctx_t, teacher, teacher_link = _create_class(browser, demo.url, code)
    with Store(demo.home) as store:
        run = store.create_run({"n": 1, "width": 8, "seed": 0}, source="test")
        store.set_status(run, "running")
        store.tag_run(run, code, name, "preserve", "a lot")
    sessions = [ctx_t]
    try:
        for query, told in ((f"class={code}", False), (f"class={code}&key=not-the-key", True)):
            ctx, pg = _page(browser)
            sessions.append(ctx)
            pg.goto(f"{demo.url}/class?{query}")
            wait_app_ready(pg)
            pg.get_by_text("1 student(s), 1 run(s)").wait_for(timeout=30_000)
            pg.get_by_text("How the class predicted").wait_for(timeout=30_000)
            wait_settled(pg)
            assert name not in pg.content(), query  # nowhere in the page, drawn or not
            assert (pg.get_by_text("does not open class").count() > 0) == told, query
            assert pg.get_by_role("button", name="Close the class").count() == 0
            assert pg.get_by_text("Close the class").count() == 0
            assert pg.get_by_role("button", name="Export the board as CSV").count() == 0
            assert not page_errors(pg), page_errors(pg)
            full_screenshot(pg, shots / f"class_board_student{'_wrong_key' if told else ''}.png")
        with Store(demo.home) as store:
            assert store.class_info(code)["closed"] is None
        teacher.goto(teacher_link)
        wait_app_ready(teacher)
        teacher.get_by_text("1 student(s), 1 run(s)").wait_for(timeout=30_000)
        wait_settled(teacher)
        teacher.wait_for_function(f"() => document.documentElement.outerHTML.includes({name!r})", timeout=30_000)
        with teacher.expect_download() as info:
            teacher.get_by_role("button", name="Export the board as CSV").click()
        assert name in Path(info.value.path()).read_text()
        teacher.get_by_text("Close the class").first.click()
        teacher.get_by_role("button", name="Close the class").click()
        teacher.locator('[data-testid="stMarkdownContainer"]', has_text=CLOSED_AT).first.wait_for(timeout=30_000)
        with Store(demo.home) as store:
            assert store.class_info(code)["closed"]
    finally:
        for ctx in sessions:
            ctx.close()


def test_teacher_link_hides_and_locks_fields(browser, demo, shots):
    """?hide= removes those Lab fields (their values still come from the link); ?lock= shows a field disabled."""
    ctx, pg = _page(browser)
    try:
        pg.goto(f"{demo.url}/lab?preset=demo-mlp&width=24&hide=width,seed,lr&lock=depth")
        wait_app_ready(pg)
        pg.locator('[data-testid="stNumberInput"]').first.wait_for(timeout=60_000)
        for name in ("width", "seed", "lr"):
            assert pg.get_by_label(name, exact=True).count() == 0, f"{name} is not hidden"
        assert pg.get_by_label("depth", exact=True).is_disabled()
        assert pg.get_by_label("n", exact=True).is_enabled()
        full_screenshot(pg, shots / "teacher_link_lab.png")
        pg.goto(f"{demo.url}/lesson?step=width&hide=config,nav,teacher")
        wait_app_ready(pg)
        pg.get_by_role("heading", name=re.compile("^Step 3 of")).wait_for(timeout=30_000)
        assert pg.get_by_text("The network and the data").count() == 0
        assert pg.get_by_text("For the teacher").count() == 0
        assert pg.get_by_text("1. Insertion preserves the function").count() == 0
    finally:
        ctx.close()
