"""The classroom's core: lesson answers read from real runs, class tags in the store (schema 3),
assignments dealt to students, the board's aggregates, and text without e-notation."""
import copy
import math
import re
import sqlite3
import statistics

import pytest

from resx.core.config import ConfigError
from resx.runs import classroom
from resx.runs.lesson import LESSON_BASE, STEPS, step_index
from resx.runs.pipeline import run_pipeline
from resx.runs.store import SCHEMA_VERSION, Store

E_NOTATION = re.compile(r"\d\.?\d*e[+-]?\d")
# Smaller than the lesson's own configuration: the properties below hold at any size.
TINY = dict(n=200, n_probe=200, n_test=200, n_pop=2048, epochs=2)


@pytest.fixture(scope="module")
def lesson_results():
    """Each step's runs, on a tiny version of the lesson configuration (one real pipeline per config)."""
    base, cache, out = LESSON_BASE.replace(**TINY), {}, {}
    for step in STEPS:
        results = []
        for cfg in step.configs(base):
            key = tuple(sorted(cfg.to_dict().items()))
            if key not in cache:
                cache[key] = run_pipeline(cfg)
            results.append(cache[key])
        out[step.key] = results
    return out


def test_every_step_has_a_question_choices_and_runs_that_answer_it(lesson_results):
    """Each step's answer is one of its choices, and its reveal is prose without e-notation."""
    assert len(STEPS) >= 5
    for step in STEPS:
        results = lesson_results[step.key]
        assert all(r["status"] == "done" for r in results)
        answer = step.answer(results)
        assert 0 <= answer < len(step.choices)
        text = step.reveal(results)
        assert not E_NOTATION.search(text), text
        assert 2 <= text.count(". ") + text.endswith(".") <= 4, text  # two or three sentences


def test_answers_follow_the_runs_not_a_table(lesson_results):
    """Changing what a run measured changes the step's answer: the answer is read from the result."""
    preserve, jump, width, control = (STEPS[step_index(k)] for k in ("preserve", "jumpboard", "width", "control"))
    r = copy.deepcopy(lesson_results["preserve"][0])
    assert preserve.answer([r]) == 0  # a zero block preserves the function (up to float rounding)
    r["insertion"].update(max_abs_logit_diff=3.0, relative_diff=0.5)
    assert preserve.answer([r]) == 2
    r = copy.deepcopy(lesson_results["jumpboard"][0])
    r["terms"].update(Delta_R=-1.0, Delta_R_se=0.01)
    assert jump.answer([r]) == 2
    r["terms"].update(Delta_R=0.001, Delta_R_se=0.01)
    assert jump.answer([r]) == 1
    wide, narrow = copy.deepcopy(lesson_results["width"])
    for res, observed in ((wide, False), (narrow, True)):
        for m in res["margins"]:
            m["observed"] = observed
    assert width.choices[width.answer([wide, narrow])] == "only in the narrow network"
    r = copy.deepcopy(lesson_results["control"][0])
    r["expansion_beats_control"]["verdict"] = "ties"
    assert control.choices[control.answer([r])].startswith("a tie")


def test_the_preservation_answer_agrees_with_the_measured_change(lesson_results):
    """Step 1's answer is 'not at all' exactly when the measured max |f_new - f_old| is float rounding."""
    r = lesson_results["preserve"][0]
    assert r["insertion"]["max_abs_logit_diff"] < 1e-4
    assert STEPS[0].answer([r]) == 0


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path) as s:
        yield s


def test_class_runs_carry_student_step_and_prediction(store):
    """Tagged runs come back with their class, student, step and prediction; other classes stay apart."""
    a = store.create_run({"n": 1}, source="lesson")
    b = store.create_run({"n": 2}, source="lesson")
    store.tag_run(a, "PHYS-1", "ana", "preserve", "a lot")
    store.tag_run(a, "PHYS-1", "ana", "jumpboard", "it goes up")  # one run answers two steps
    store.tag_run(b, "OTHER", "bo", "preserve", "a little (about 1%)")
    runs = store.class_runs("PHYS-1")
    assert [(r["id"], r["student"], r["step"], r["prediction"]) for r in runs] == [
        (a, "ana", "preserve", "a lot"), (a, "ana", "jumpboard", "it goes up")]
    assert [r["id"] for r in store.class_runs("OTHER")] == [b]
    assert store.delete_run(a) and store.class_runs("PHYS-1") == []


def test_a_closed_class_takes_no_runs_and_keeps_its_board(store):
    """After close_class, tag_run and join_class refuse; the runs already filed stay on the board."""
    run = store.create_run({"n": 1})
    store.tag_run(run, "CLOSE-ME", "ana")
    store.close_class("CLOSE-ME", store.create_class("CLOSE-ME"))
    assert store.class_info("CLOSE-ME")["closed"]
    with pytest.raises(ValueError, match="closed"):
        store.tag_run(store.create_run({"n": 2}), "CLOSE-ME", "bo")
    with pytest.raises(ValueError, match="closed"):
        store.join_class("CLOSE-ME", "cy")
    assert [r["id"] for r in store.class_runs("CLOSE-ME")] == [run]


def test_join_order_is_stable(store):
    """A student's place is their join order, the same on every call."""
    assert [store.join_class("ORDER", s) for s in ("c", "a", "b")] == [0, 1, 2]
    assert store.join_class("ORDER", "a") == 1


def test_a_version_1_store_migrates_and_keeps_its_runs(tmp_path):
    """A store written by schema 1 opens at the current schema with its runs intact and the class tables added."""
    from resx.runs.store import MIGRATIONS
    conn = sqlite3.connect(tmp_path / "resx.db")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.executescript(MIGRATIONS[1])
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO runs (id, status, config, source, name, created) "
                 "VALUES ('old-run', 'done', '{}', 'cli', '', '2026-01-01T00:00:00+00:00')")
    conn.commit()
    conn.close()
    with Store(tmp_path) as s:
        assert s.schema_version() == SCHEMA_VERSION >= 2
        assert s.get_run("old-run")["status"] == "done"
        s.tag_run("old-run", "LATER", "ana", "preserve", "a lot")
        assert s.class_runs("LATER")[0]["id"] == "old-run"


def test_a_teacher_key_is_random_stored_hashed_and_needed_to_close(store, tmp_path):
    """create_class returns a fresh random key; the database holds its SHA-256 and never the key; a wrong
    key or none cannot close the class (PermissionError, the class unchanged); the right one can."""
    import hashlib

    keys = [store.create_class(f"KEY-{i}") for i in range(3)]
    assert len(set(keys)) == 3 and all(len(k) >= 20 for k in keys)
    with sqlite3.connect(tmp_path / "resx.db") as conn:
        stored = dict(conn.execute("SELECT code, key_hash FROM classes").fetchall())
    assert stored["KEY-0"] == hashlib.sha256(keys[0].encode()).hexdigest()
    assert not any(k in str(stored) for k in keys)
    for wrong in (None, "", keys[1], keys[0][:-1] + ("A" if keys[0][-1] != "A" else "B")):
        assert not store.check_teacher_key("KEY-0", wrong)
        with pytest.raises(PermissionError, match="teacher key"):
            store.close_class("KEY-0", wrong)
        assert store.class_info("KEY-0")["closed"] is None
    assert store.check_teacher_key("KEY-0", keys[0])
    store.close_class("KEY-0", keys[0])
    assert store.class_info("KEY-0")["closed"]


def test_a_class_has_one_teacher_until_the_operator_reissues_its_key(store):
    """A code students' links made first (no teacher yet) can be taken once; a second create is refused
    and leaves the first key working; reissue (the operator's `serve --class`) replaces it."""
    run = store.create_run({"n": 1})
    store.tag_run(run, "EARLY", "ana")
    assert not store.has_teacher("EARLY") and not store.check_teacher_key("EARLY", "anything")
    first = store.create_class("EARLY")
    assert store.has_teacher("EARLY")
    with pytest.raises(ValueError, match="already has a teacher"):
        store.create_class("EARLY")
    assert store.check_teacher_key("EARLY", first)
    second = store.create_class("EARLY", reissue=True)
    assert store.check_teacher_key("EARLY", second) and not store.check_teacher_key("EARLY", first)
    assert [r["id"] for r in store.class_runs("EARLY")] == [run]  # the board is kept


def test_assignment_deals_every_value_before_any_repeats():
    """Round-robin: with values (8, 16, 32), students 0..5 get 8, 16, 32, 8, 16, 32, and students
    who share a value differ in seed."""
    assign = classroom.parse_assign("width:8,16,32")
    got = [classroom.assignment(k, assign) for k in range(6)]
    assert [g["width"] for g in got] == [8, 16, 32, 8, 16, 32]
    pairs = {(g["width"], g["seed"]) for g in got}
    assert len(pairs) == 6
    assert [classroom.assignment(k, None)["seed"] for k in range(3)] == [0, 1, 2]
    for bad in ("width", "lr:0.1", "width:a,b", "width:"):
        with pytest.raises(ConfigError):
            classroom.parse_assign(bad)


def test_codes_and_names_are_checked():
    """Codes are upper-cased and bounded; names that could carry markup are refused."""
    assert classroom.check_code("phys-101") == "PHYS-101"
    for bad in ("ab", "x" * 17, "a b c", "<b>x</b>"):
        with pytest.raises(ConfigError):
            classroom.check_code(bad)
    assert classroom.check_student("  Ana María ") == "Ana María"
    for bad in ("", "x" * 33, "[link](http://e)", "<img>"):
        with pytest.raises(ConfigError):
            classroom.check_student(bad)


def _run(run_id, student, step, prediction, width, seed, delta_r, result=None):
    terms = {"Delta_R": delta_r, "Delta_R_se": 0.001}
    return {"id": run_id, "student": student, "step": step, "prediction": prediction, "status": "done",
            "config": {"width": width, "n": 400, "seed": seed}, "result": result or {"terms": terms}}


def test_spread_and_scaling_points_match_an_independent_computation():
    """The board's spread is the sample sd over seeds, and the scaling point's SE is sd / sqrt(count)."""
    values = {8: [0.01, 0.03, 0.02], 32: [0.05, 0.07]}
    runs = [_run(f"r{w}-{i}", f"s{w}{i}", "jumpboard", "x", w, i, v)
            for w, vs in values.items() for i, v in enumerate(vs)]
    rows = classroom.board_rows(runs)
    s = classroom.spread([r["Delta_R"] for r in rows if r["width"] == 8])
    assert s["count"] == 3 and math.isclose(s["sd"], statistics.stdev(values[8]))
    points = classroom.scaling_points(rows, "width")
    assert [p["width"] for p in points] == [8, 32]
    assert math.isclose(points[1]["Delta_R"], 0.06)
    assert math.isclose(points[1]["se"], statistics.stdev(values[32]) / math.sqrt(2))
    text = classroom.board_csv(rows)
    assert text.splitlines()[0].split(",") == list(classroom.BOARD_COLUMNS) and len(text.splitlines()) == 6


def test_predictions_are_judged_against_each_students_own_run(lesson_results):
    """Who predicted what: right when the prediction is the choice the student's own run gives."""
    step = STEPS[0]
    result = lesson_results["preserve"][0]
    right = step.choices[step.answer([result])]
    wrong = next(c for c in step.choices if c != right)
    runs = [_run("a", "ana", "preserve", right, 32, 0, 0.0, result),
            _run("b", "bo", "preserve", wrong, 32, 1, 0.0, result)]
    rows = {r["student"]: r for r in classroom.predictions(runs)}
    assert rows["ana"]["right"] is True and rows["bo"]["right"] is False
    assert rows["bo"]["answer"] == right
