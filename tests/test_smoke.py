"""The app's smoke test (issue 28): every page opens through app.py without an exception, with no run.
CI runs it twice: with the installed versions, and with the lowest versions requirements.txt allows
(.ci/lowest-constraints.txt), so that a floor below what the code needs fails here, not at a user's start.
The last test keeps the constraints file's versions equal to requirements.txt's floors."""
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("views/lab.py", "views/lesson.py", "views/class_board.py", "views/signals.py", "views/scaling.py",
         "views/allocation.py", "views/runs.py", "views/theory.py")


def test_every_page_opens(app_home, monkeypatch):
    """Each page in turn, in one session (one job manager: a few seconds in all), in demo mode so that
    Signals, Scaling and Allocation draw their precomputed plotly figures."""
    monkeypatch.setenv("RESX_DEMO", "1")
    at = AppTest.from_file("../app.py", default_timeout=120)
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert at.title, f"{page} drew no title"
        if page in ("views/signals.py", "views/allocation.py"):
            assert len(at.get("plotly_chart")) >= 1, f"{page} drew no figure"


def _floors(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+?)(\[[^\]]*\])?\s*(?:>=\s*([\w.]+))", line.split("#")[0])
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def test_the_lowest_versions_tested_are_the_floors():
    """Each package pinned in .ci/lowest-constraints.txt is pinned at its requirements.txt floor."""
    floors = _floors((ROOT / "requirements.txt").read_text())
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([\w.]+)", (ROOT / ".ci/lowest-constraints.txt").read_text(), re.M))
    assert {"streamlit", "plotly"} <= set(pins)
    from packaging.version import Version
    for name, version in pins.items():
        floor = floors.get(name.lower())
        assert floor is not None and Version(floor) == Version(version), (name, version, floor)


def test_an_uncaught_error_shows_no_traceback_even_when_the_host_forces_full_details(app_home, monkeypatch):
    """Community Cloud sets client.showErrorDetails to "full"; app.py sets it back to "type": an error
    the app did not catch shows its type, not its message (here a path) or its traceback."""
    from streamlit import config

    import ui

    def broken():
        raise RuntimeError("/secret/server/path")

    config.set_option("client.showErrorDetails", "full")
    monkeypatch.setattr(ui, "get_manager", broken)
    at = AppTest.from_file("../app.py", default_timeout=120)
    at.run()
    assert at.exception, "the forced error did not happen"
    shown = " ".join(str(e.value) + " ".join(e.stack_trace) for e in at.exception)
    assert "/secret/server/path" not in shown and "Traceback" not in shown and "app.py" not in shown, shown


def test_the_community_cloud_entrypoint_runs_the_app(app_home, monkeypatch):
    """cloud/streamlit_app.py (Cloud's main file, beside its own requirements.txt) opens the same pages."""
    monkeypatch.setenv("RESX_DEMO", "1")
    at = AppTest.from_file("../cloud/streamlit_app.py", default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title][:1] == ["Lesson: when does a new residual block help?"]  # the demo opens there
    for page in ("views/lab.py", "views/class_board.py"):
        at.switch_page(f"../{page}").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert at.title, page


def test_the_cloud_requirements_pin_every_root_requirement_within_its_bounds():
    from packaging.requirements import Requirement
    from packaging.version import Version

    def reqs(path):
        out = {}
        for line in (ROOT / path).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                r = Requirement(line)
                out[r.name.lower()] = r
        return out

    root, cloud = reqs("requirements.txt"), reqs("cloud/requirements.txt")
    assert set(root) <= set(cloud), f"not in cloud/requirements.txt: {sorted(set(root) - set(cloud))}"
    for name, req in root.items():
        (pin,) = [s for s in cloud[name].specifier if s.operator == "=="]
        assert Version(Version(pin.version).public) in req.specifier, (name, pin.version, str(req.specifier))
    assert str(cloud["torch"].specifier).endswith("+cpu") and str(cloud["torchvision"].specifier).endswith("+cpu")
