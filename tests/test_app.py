"""AppTest: one test per page, against a real job manager and store in a temporary RESX_HOME."""
import time

from streamlit.testing.v1 import AppTest

TIMEOUT = 120  # AppTest's default (3 s) is shorter than importing torch


def _small(at):
    for label, value in (("n", 200), ("n_probe", 200), ("n_test", 200), ("epochs", 2), ("finetune_epochs", 1),
                         ("width", 16), ("m_cert", 4096)):
        next(w for w in at.number_input if w.label == label).set_value(value)
    return at


def _wait_done(run_id, timeout=120):
    import ui
    manager = ui.MANAGERS[-1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = manager.snapshot(run_id)
        if not snap.is_active:
            return snap
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s")


def test_lab_runs_the_default_preset_and_draws_every_panel(app_home):
    """Run on the Lab submits a job, puts its id in the URL, and the finished run draws every panel."""
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT).run()
    assert not at.exception
    _small(at)
    next(b for b in at.button if b.label == "Run").click().run()
    run_id = at.query_params["run"][0] if isinstance(at.query_params["run"], list) else at.query_params["run"]
    snap = _wait_done(run_id)
    assert snap.status == "done", snap.message
    at.run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "preserved" in text and "gradient nonzero" in text.replace("not shown nonzero", "nonzero")
    assert "descent observable" in text or "descent not observable" in text
    assert "Did expansion lower the risk?" in text and "beat the control" not in text
    assert "finite-sample" in text and "asymptotic" in text and "1 - delta/3 = 0.9833" in text   # every badge states its level
    assert len(at.get("metric")) >= 6 and at.table        # margins (3) and the headline (3); the certificates table
    assert len(at.get("plotly_chart")) >= 5
    assert at.query_params["preset"] in ("demo-mlp", ["demo-mlp"])


def test_lab_shows_a_run_without_a_jumpboard_and_says_what_eta_zero_means(app_home):
    """A finished run whose jumpboard is None (G_P1 = 0 in an older result) and one with eta* = 0 and a note both draw without an exception (review B2); the note is on screen."""
    from resx.core.config import PRESETS
    from resx.runs.store import Store

    config = PRESETS["demo-resnet"].to_dict()
    note = "No step along the P1 direction lowered L_P2: eta* = 0, so f_J = f_new and Delta_R = 0 exactly."
    curve = [{"eta": 0.0, "L_S": 1.0, "L_P": 1.0, "L_T": 1.0, "L_pop": None, "L_pop_se": None,
              "first_order": 1.0, "quadratic": None}]
    with Store(app_home) as store:
        ids = []
        for jump in (None, {"eta": 0.0, "curve": curve, "note": note, "slope_P": 0.01}):
            run_id = store.create_run(config, source="cli")
            store.set_result(run_id, {"status": "done", "jumpboard": jump, "jumpboard_note": "G_P = 0"})
            store.set_status(run_id, "done")
            ids.append(run_id)
    for run_id, expected in zip(ids, ("No jumpboard", "No step along the P1 direction")):
        at = AppTest.from_file("../views/lab.py", default_timeout=TIMEOUT)
        at.query_params["run"] = run_id
        at.run()
        assert not at.exception, at.exception
        assert any(expected in m.value for m in at.info), [m.value for m in at.info]


def test_lab_rejects_a_bad_configuration_with_a_clear_message(app_home):
    """An invalid field shows an error naming the field and what is allowed, and submits nothing."""
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT).run()
    next(w for w in at.number_input if w.label == "position").set_value(40)
    next(b for b in at.button if b.label == "Run").click().run()
    assert any("position=40 is not allowed" in e.value for e in at.error)
    assert "run" not in at.query_params


def test_runs_page_lists_and_compares_runs(app_home):
    """The Runs page lists the store's runs; a run finished from the command line shows there."""
    from resx.core.config import RunConfig
    from resx.runs.pipeline import run_pipeline
    from resx.runs.store import RecordWriter, Store

    store = Store(app_home)
    cfg = RunConfig(n=100, n_probe=100, n_test=100, n_pop=512, m_cert=2048, epochs=1, finetune_epochs=1, width=8)
    run_id = store.create_run(cfg.to_dict(), source="cli")
    with RecordWriter(store, run_id) as writer:
        result = run_pipeline(cfg, sink=writer)
    store.set_result(run_id, result)
    store.set_status(run_id, "done")
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.switch_page("views/runs.py").run()
    assert not at.exception
    frames = at.dataframe
    assert frames and run_id in frames[0].value["id"].tolist()


def test_theory_page_renders_every_formula(app_home):
    """The Theory page renders THEORY.md with headers carrying anchors and formulas through st.latex."""
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.switch_page("views/theory.py").run()
    assert not at.exception
    assert len(at.get("latex")) >= 10
    assert any("Descent" in h.value for h in at.header)


def test_scaling_page_runs_a_grid_and_draws_figure_3(app_home):
    """A 1x2 grid run from the Scaling page lands in the store and draws figure 3, the theory map and a heatmap."""
    import ui

    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.switch_page("views/scaling.py").run()
    assert not at.exception
    for label, value in (("depths", "1"), ("widths", "8,16"), ("seeds", "0")):
        next(w for w in at.text_input if w.label == label).set_value(value)
    next(w for w in at.number_input if w.label == "epochs").set_value(1)
    next(b for b in at.button if b.label == "Run the grid").click().run()
    runner = ui.TASK_RUNNERS[-1]
    deadline = time.monotonic() + 180
    while (snap := runner.latest("sweep")).is_active and time.monotonic() < deadline:
        time.sleep(0.5)
    assert snap.status == "done", snap.error
    assert [c["width"] for c in snap.result] == [8, 16]
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 3


def test_scaling_page_rejects_a_bad_grid(app_home):
    """Depths that are not integers give an error naming the field; nothing is submitted."""
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.switch_page("views/scaling.py").run()
    next(w for w in at.text_input if w.label == "depths").set_value("1,two")
    next(b for b in at.button if b.label == "Run the grid").click().run()
    assert any("depths" in e.value and "integers" in e.value for e in at.error)


def test_allocation_page_shows_table_3(app_home):
    """The Allocation page shows the eight GPT-3 configurations beside the law's projection."""
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.switch_page("views/allocation.py").run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 8


def test_signals_page_offers_the_figures(app_home):
    """The Signals page renders its form and explains what it computes before anything runs."""
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.switch_page("views/signals.py").run()
    assert not at.exception
    assert any(b.label.startswith("Compute figures") for b in at.button)


def test_lesson_asks_first_runs_then_tells_whether_the_prediction_was_right(app_home):
    """Step 1 of the Lesson: Run waits for a prediction; the finished run shows the answer and files the
    prediction on the class board named in the URL."""
    import ui

    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.query_params.update({"class": "APPTEST", "student": "ana"})
    at.switch_page("views/lesson.py").run()
    assert not at.exception
    run = next(b for b in at.button if b.label == "Lock in my prediction and run")
    assert run.disabled
    at.radio[0].set_value(2).run()  # "a lot": wrong for a zero-initialised block
    next(b for b in at.button if b.label == "Lock in my prediction and run").click().run()
    store = ui.MANAGERS[-1].store
    (tagged,) = store.class_runs("APPTEST")
    assert tagged["student"] == "ana" and tagged["prediction"] == "a lot"
    assert _wait_done(tagged["id"]).status == "done"
    at.run()
    assert not at.exception
    assert any("not right" in e.value and "not at all" in e.value for e in at.error)
    at.switch_page("views/class_board.py").run()
    assert not at.exception
    assert any("1 student(s), 1 run(s)" in c.value for c in at.caption)


def test_lab_offers_digits_torchvision_archs_and_a_weights_upload(app_home):
    """The Lab's pickers offer digits and resnet18/resnet34, the digits preset credits its source
    (CC BY 4.0) under the form, and a weights uploader sits beside the .npz one."""
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.query_params["preset"] = "digits-mlp"
    at.run()
    assert not at.exception
    dataset = next(w for w in at.selectbox if w.label == "dataset")
    arch = next(w for w in at.selectbox if w.label == "arch")
    assert dataset.value == "digits" and {"resnet18", "resnet34"} <= set(arch.options)
    assert {"digits-mlp", "digits-resnet"} <= set(next(w for w in at.selectbox if w.label == "Preset").options)
    assert any("CC BY 4.0" in c.value and "1797" in c.value for c in at.caption)
    assert any("Your own weights" in e.label for e in at.expander)
