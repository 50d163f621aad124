"""One figure per version across sessions, and a live chart redrawn at most every LIVE_REDRAW_S (issue 10)."""
import plotly.graph_objects as go

import ui.shared_figures as shared


class Builds:
    """A figure builder that counts its calls and tags each figure with its call number."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return go.Figure(layout=dict(title=f"build {self.calls}"))


def test_equal_versions_build_once_and_a_finished_run_gets_its_exact_version(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(shared.time, "monotonic", lambda: clock[0])
    build = Builds()
    first = shared.shared_figure("run-a", 1, "curves", build)
    assert shared.shared_figure("run-a", 1, "curves", build) is first and build.calls == 1
    assert shared.shared_figure("run-a", 2, "curves", build) is not first and build.calls == 2  # not live: exact
    assert shared.shared_figure("run-b", 1, "curves", build) is not first and build.calls == 3  # another run


def test_a_live_chart_keeps_its_last_figure_until_the_redraw_interval_passes(monkeypatch):
    clock = [5000.0]
    monkeypatch.setattr(shared.time, "monotonic", lambda: clock[0])
    build = Builds()
    v1 = shared.shared_figure("run-live", 1, "heatmap", build, live=True)
    clock[0] += shared.LIVE_REDRAW_S * 0.9
    assert shared.shared_figure("run-live", 2, "heatmap", build, live=True) is v1 and build.calls == 1
    clock[0] += shared.LIVE_REDRAW_S * 0.2           # now past the interval since v1 was built
    v3 = shared.shared_figure("run-live", 3, "heatmap", build, live=True)
    assert v3 is not v1 and build.calls == 2 and v3.layout.title.text == "build 2"
    clock[0] += 0.1
    assert shared.shared_figure("run-live", 4, "heatmap", build, live=True) is v3   # throttled from v3's build
    final = shared.shared_figure("run-live", 5, "heatmap", build)                   # the run ended: exact
    assert final is not v3 and build.calls == 3
