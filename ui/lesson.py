"""The Lesson's panels (design.md "Pages" 7): predict, run, reveal, and whether the prediction was right.

Session state: `lesson_predictions` {step key: choice index}; `lesson_runs` {config JSON: run id}, so a
configuration two steps share runs once per session (identical runs across sessions are the job
manager's to share); `lesson_step_runs` {step key: [run ids]} for the step's own runs.
"""
from __future__ import annotations

import json

import streamlit as st

from resx.core.config import ConfigError, RunConfig
from resx.runs.lesson import STEPS, Step

from .run_panels import PHASE_LABELS
from .state import caps, get_manager
from .text import fmt, readable, theory_link

LESSON_FIELDS = ("width", "depth", "position", "n", "epochs", "seed")  # what a student may change
PANEL_TITLES = {"preservation": "Function preservation", "jumpboard": "Jumpboard line search",
                "margins": "Descent margins at every insertion point", "certificates": "Gain against cost",
                "control": "Population risk of each model"}


def lesson_config(base: RunConfig, hide: set[str], lock: set[str], fixed: dict) -> RunConfig | None:
    """The lesson's configuration: the base, the link's fields (`fixed`), and what the student changes
    in the fields that are neither hidden nor locked."""
    values = base.to_dict() | fixed
    shown = [f for f in LESSON_FIELDS if f not in hide]
    if "config" not in hide and shown:
        with st.expander("The network and the data (change them, or keep the lesson's)"):
            cols = st.columns(len(shown))
            for col, name in zip(cols, shown):
                values[name] = int(col.number_input(name, value=int(values[name]), min_value=0, step=1,
                                                    disabled=name in lock, key=f"lesson_{name}"))
    try:
        return caps().check(RunConfig.from_dict(values))
    except ConfigError as e:
        st.error(f"{e}")
        return None


def config_key(cfg: RunConfig) -> str:
    """The configuration as canonical JSON: runs of equal keys are the same run."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


def start_runs(step: Step, cfg: RunConfig) -> list[str]:
    """Submit the step's runs, reusing this session's run of an identical configuration."""
    manager, memo = get_manager(), st.session_state.setdefault("lesson_runs", {})
    ids = []
    for c in step.configs(cfg):
        run_id = memo.get(config_key(c))
        snap = manager.snapshot(run_id) if run_id else None
        if snap is None or snap.status not in ("queued", "running", "done"):
            run_id = manager.submit(c, source="lesson", name=f"lesson:{step.key}")
            memo[config_key(c)] = run_id
        ids.append(run_id)
    return ids


def prediction_widget(step: Step, started: bool) -> int | None:
    """The question as a choice, locked once the runs start; the choice lives in the session."""
    predictions = st.session_state.setdefault("lesson_predictions", {})
    choice = st.radio(f"**{step.question}**", range(len(step.choices)), format_func=lambda i: step.choices[i],
                      index=predictions.get(step.key), disabled=started, key=f"predict_{step.key}_{started}")
    return choice


def progress(step: Step, ids: list[str]) -> list | None:
    """Progress of the step's runs while they go; their snapshots once all are finished."""
    manager = get_manager()
    snaps = [manager.snapshot(i) for i in ids]
    if any(s is None for s in snaps):
        st.warning("A run of this step is no longer in the store; press Run again.")
        return None
    if all(not s.is_active for s in snaps):
        return snaps
    for s in snaps:
        if s.status == "queued":
            st.info(f"Run `{s.run_id}` (width {s.config['width']}, n = {s.config['n']}) is queued: "
                    f"position {s.queue_position}.")
        elif s.is_active:
            st.progress(s.progress or 0.0, text=f"width {s.config['width']}, n = {s.config['n']}: "
                        f"{PHASE_LABELS.get(s.phase, s.phase or 'starting')}")
    return None


def panel(step: Step, results: list[dict]):
    """The one panel that answers the step's question."""
    from resx.figures import lesson as lf
    from resx.figures import live as plots

    st.subheader(PANEL_TITLES[step.panel])
    r = results[0]
    if step.panel == "preservation":
        ins = r["insertion"]
        cols = st.columns(3)
        cols[0].metric(r"$\max_x |f_{\mathrm{new}}(x) - f_{\mathrm{old}}(x)|$ on $S$", fmt(ins["max_abs_logit_diff"], digits=2))
        cols[1].metric(r"$|L_S(f_{\mathrm{new}}) - L_S(f_{\mathrm{old}})|$", fmt(ins.get("loss_diff"), digits=2))
        cols[2].metric("live parameters at $\\varphi_0$", str(len(ins["live_parameters"])))
    elif step.panel == "jumpboard":
        st.plotly_chart(plots.jumpboard_curve(r["jumpboard"]), key=f"lesson_{step.key}")
    elif step.panel == "margins":
        cols = st.columns(len(results))
        for col, res in zip(cols, results):
            col.markdown(f"width **{res['config']['width']}**")
            col.plotly_chart(plots.margin_estimates(res["margins"], res["config"]["position"]),
                             key=f"lesson_{step.key}_{res['config']['width']}")
    elif step.panel == "certificates":
        st.plotly_chart(lf.certificate_costs(results), key=f"lesson_{step.key}")
    elif step.panel == "control":
        st.plotly_chart(lf.risk_bars(r), key=f"lesson_{step.key}")


def verdict(step: Step, results: list[dict], choice: int | None):
    """Whether the prediction was right, in one sentence, and the reveal."""
    right = step.answer(results)
    st.markdown(readable(step.reveal(results)) + " " + theory_link(step.theory, "The formula on the Theory page."))
    if choice is None:
        st.info(f"The run's answer: **{step.choices[right]}**.")
    elif choice == right:
        st.success(f"Your prediction was right: **{step.choices[right]}**.")
    else:
        st.error(f"Your prediction was not right: you said *{step.choices[choice]}*; "
                 f"the run says **{step.choices[right]}**.")
    return right


def step_header(index: int):
    step = STEPS[index]
    st.header(f"Step {index + 1} of {len(STEPS)}: {step.title}")
    st.write(step.intro)
    return step
