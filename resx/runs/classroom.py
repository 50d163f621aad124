"""A class: a short code that groups runs (it grants nothing), and what its board shows.

`check_code` and `check_student` validate what a link or a student types; `assignment` gives the
k-th student to join a class their own value of a field (`?assign=width:8,16,32`) and their own
seed, so that a class's runs add up to one experiment; `board_rows`, `spread` and `scaling_points`
aggregate the class's runs (Store.class_runs) for the board (design.md "Pages" 8).
"""
from __future__ import annotations

import csv
import io
import math
import re
import statistics

from ..core.config import ConfigError

CODE = re.compile(r"^[A-Za-z0-9-]{3,16}$")
STUDENT = re.compile(r"^[\w .'-]{1,32}$")
ASSIGNABLE = ("width", "n", "depth", "position", "seed")
BOARD_COLUMNS = ("student", "step", "prediction", "status", "width", "n", "seed", "Delta_R", "Delta_R_se",
                 "run_id")


def check_code(code: str) -> str:
    """A class code: 3-16 letters, digits or '-', upper-cased (codes are read aloud and typed)."""
    if not isinstance(code, str) or not CODE.match(code):
        raise ConfigError("class", code, "3 to 16 letters, digits or '-', e.g. PHYS-101")
    return code.upper()


def check_student(name: str) -> str:
    """A student's name as typed: 1-32 letters, digits, spaces, . ' - or _."""
    name = (name or "").strip()
    if not STUDENT.match(name):
        raise ConfigError("student", name, "1 to 32 letters, digits, spaces, or . ' - _")
    return name


def parse_assign(text: str | None) -> tuple[str, tuple[int, ...]] | None:
    """'width:8,16,32' -> ("width", (8, 16, 32)); None for no assignment."""
    if not text:
        return None
    name, sep, values = text.partition(":")
    if not sep or name not in ASSIGNABLE:
        raise ConfigError("assign", text, f"FIELD:V1,V2,... with FIELD one of {list(ASSIGNABLE)}")
    try:
        numbers = tuple(int(v) for v in values.split(",") if v.strip())
    except ValueError:
        raise ConfigError("assign", text, "comma-separated integers after the colon") from None
    if not numbers:
        raise ConfigError("assign", text, "at least one value after the colon")
    return name, numbers


def assignment(place: int, assign: tuple[str, tuple[int, ...]] | None) -> dict:
    """What the student who joined `place`-th (0 first) runs: their own seed, and their share of
    the assigned field, dealt round-robin so every value gets students before any gets two."""
    out = {"seed": place}
    if assign:
        name, values = assign
        out[name] = values[place % len(values)]
        if name != "seed":
            out["seed"] = place // len(values)  # students sharing a value differ in seed
    return out


def board_rows(runs: list[dict]) -> list[dict]:
    """One row per class run: who, which step, what they predicted, the run's width, n, seed, and
    Delta_R with its standard error."""
    rows = []
    for run in runs:
        cfg, result = run["config"], run.get("result") or {}
        terms = result.get("terms") or {}
        rows.append({"student": run["student"], "step": run["step"], "prediction": run["prediction"],
                     "status": run["status"], "width": cfg.get("width"), "n": cfg.get("n"),
                     "seed": cfg.get("seed"), "Delta_R": terms.get("Delta_R"),
                     "Delta_R_se": terms.get("Delta_R_se"), "run_id": run["id"]})
    return rows


def spread(values: list[float]) -> dict | None:
    """Mean, sample standard deviation and range of Delta_R across runs (seeds); None when empty."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"count": len(values), "mean": statistics.fmean(values), "sd": sd, "min": min(values),
            "max": max(values)}


def scaling_points(rows: list[dict], field: str) -> list[dict]:
    """Delta_R against `field` (width or n): per value, the mean over the runs that had it and its
    standard error across them (the spread over seeds, sd / sqrt(count)); None when one run."""
    by_value: dict[int, list[float]] = {}
    for row in rows:
        if row["Delta_R"] is not None and row[field] is not None:
            by_value.setdefault(row[field], []).append(row["Delta_R"])
    out = []
    for value in sorted(by_value):
        s = spread(by_value[value])
        se = s["sd"] / math.sqrt(s["count"]) if s["sd"] is not None else None
        out.append({field: value, "Delta_R": s["mean"], "se": se, "count": s["count"]})
    return out


def board_csv(rows: list[dict]) -> str:
    """The board as CSV with header BOARD_COLUMNS; None becomes an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(BOARD_COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else row[k] for k in BOARD_COLUMNS])
    return buffer.getvalue()


def predictions(runs: list[dict]) -> list[dict]:
    """Who predicted what: one row per (student, lesson step) with the prediction, the runs' answer
    (Step.answer on the student's own runs, once all are done) and whether the two agree."""
    from .lesson import STEP_KEYS, STEPS

    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        if run["step"] in STEP_KEYS:
            groups.setdefault((run["student"], run["step"]), []).append(run)
    out = []
    for (student, key), group in groups.items():
        step = STEPS[STEP_KEYS.index(key)]
        done = len(group) >= len(step.changes) and all(r["status"] == "done" and r.get("result") for r in group)
        answer = step.choices[step.answer([r["result"] for r in group[:len(step.changes)]])] if done else None
        prediction = group[0]["prediction"]
        out.append({"student": student, "step": key, "prediction": prediction, "answer": answer,
                    "right": None if answer is None else prediction == answer,
                    "status": "done" if done else ", ".join(sorted({r["status"] for r in group}))})
    order = {k: i for i, k in enumerate(STEP_KEYS)}
    return sorted(out, key=lambda r: (order[r["step"]], r["student"]))
