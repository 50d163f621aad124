"""What the pages share: the process-wide job manager, the configuration form bound to the URL,
and links to the Theory page. Streamlit lives here and in pages/, never in resx/.
"""
from __future__ import annotations

import atexit
import dataclasses
import os

import streamlit as st

import resx  # noqa: F401  (torch is imported on the main thread before any worker starts)
from resx.config import DEFAULT_PRESET, PRESETS, ConfigError, OperatorCaps, RunConfig
from resx.data import DataError
from resx.jobs import JobManager, TaskRunner
from resx.pipeline import run_pipeline
from resx.store import Store

FIELDS = {f.name: f.type for f in dataclasses.fields(RunConfig)}
# What the Lab form shows, in order; the rest keep the preset's value (and the URL's).
FORM_FIELDS = ("dataset", "arch", "depth", "width", "position", "n", "n_probe", "n_test", "optimizer", "lr",
               "weight_decay", "batch_size", "epochs", "finetune_epochs", "finetune", "bound", "delta", "seed")
CHOICES = {"dataset": ("teacher", "shapes", "cifar10", "cifar100", "mnist", "fashion-mnist"),
           "arch": ("mlp", "resnet"), "optimizer": ("sgd", "adamw"), "finetune": ("block", "all"),
           "bound": ("grs", "bft"), "schedule": ("constant", "cosine")}
HELP = {"position": "insert the new block after this block (0 = right after the stem)",
        "depth": "residual blocks (resnet: blocks per stage, 6*depth+2 layers)",
        "n": "training sample S", "n_probe": "probe sample P: chooses the jumpboard direction and step",
        "n_test": "test sample T", "finetune": "block: train only the new block; all: every parameter",
        "bound": "grs: Golowich-Rakhlin-Shamir 2018; bft: Bartlett-Foster-Telgarsky 2017",
        "delta": "the guarantees hold with probability at least 1 - delta"}


def operator_setting(name: str) -> str | None:
    """An operator setting: the environment first, then .streamlit/secrets.toml; never the UI."""
    if os.environ.get(name):
        return os.environ[name]
    try:
        value = st.secrets.get(name)
    except Exception:  # no secrets file: streamlit raises its own error type
        value = None
    return str(value) if value is not None else None


MANAGERS: list[JobManager] = []  # every manager this process made, so tests and exit can shut them down
TASK_RUNNERS: list[TaskRunner] = []


@st.cache_resource
def get_manager() -> JobManager:
    """One job manager and store per server process (design.md "Runs, jobs and the store")."""
    data_dir = operator_setting("RESX_DATA_DIR")
    if data_dir:
        os.environ["RESX_DATA_DIR"] = data_dir  # resx.data reads the environment
    store = Store()
    store.recover_interrupted()
    manager = JobManager(store, run_pipeline)
    MANAGERS.append(manager)
    atexit.register(manager.shutdown, wait=True, timeout=5)
    return manager


@st.cache_resource
def get_tasks() -> TaskRunner:
    """One background thread per server for sweeps and figure runs, one task at a time."""
    runner = TaskRunner()
    TASK_RUNNERS.append(runner)
    atexit.register(runner.shutdown, timeout=5)
    return runner


def ints(text: str, field: str) -> tuple[int, ...]:
    """'1, 2,4' -> (1, 2, 4); anything else raises ConfigError naming the field."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(field, text, "comma-separated integers, e.g. 1,2,4") from None
    if not values:
        raise ConfigError(field, text, "at least one integer")
    return values


def task_panel(task_id: str, stop_label: str):
    """A background task's state (last progress line, error, cancellation) with its Stop button;
    returns its snapshot. Call inside a fragment that ticks."""
    tasks = get_tasks()
    snap = tasks.snapshot(task_id)
    if snap is None:
        st.warning(f"Task `{task_id}` is no longer known to this server.")
        return None
    if snap.is_active:
        st.info(f"`{snap.task_id}` {snap.status}: {snap.lines[-1] if snap.lines else 'starting'}")
        if st.button(stop_label, key=f"stop_{task_id}"):
            tasks.cancel(task_id)
    elif snap.status == "failed":
        st.error(f"`{snap.task_id}` failed: {snap.error}")
    elif snap.status == "cancelled":
        st.warning(f"`{snap.task_id}` was cancelled; what finished is kept.")
    return snap


def caps() -> OperatorCaps:
    return OperatorCaps.from_env()


def plain(text) -> str:
    """Text from a link or a user, shown as a code span: never drawn as Markdown (no links)."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def theory_link(anchor: str, text: str = "how this is computed") -> str:
    """Markdown link to a section of the Theory page."""
    return f"[{text}](theory#{anchor})"  # relative: works under server.baseUrlPath


def config_from_url() -> RunConfig:
    """The configuration in the URL (`?preset=...&depth=...`), or the default preset."""
    params = st.query_params
    preset = params.get("preset", DEFAULT_PRESET)
    base = PRESETS.get(preset, PRESETS[DEFAULT_PRESET]).to_dict()
    for key in FIELDS:
        if key in params and key != "npz_path":
            raw = params[key]
            try:
                base[key] = {"int": int, "float": float, "bool": lambda v: v == "true", "str": str}[FIELDS[key]](raw)
            except ValueError:
                st.warning(f"Ignored {key}={plain(repr(raw))} from the link: not a {FIELDS[key]}.")
    try:
        return RunConfig.from_dict(base)
    except ConfigError as e:
        st.warning(f"The link's configuration was not valid ({plain(e)}); showing the {plain(preset)} preset instead.")
        return PRESETS.get(preset, PRESETS[DEFAULT_PRESET])


def config_to_url(cfg: RunConfig, preset: str):
    """Put the fields that differ from the preset into the URL, so a shared link reproduces the screen."""
    base = PRESETS[preset].to_dict()
    run = st.query_params.get("run")
    st.query_params.clear()
    st.query_params["preset"] = preset
    for key, value in cfg.to_dict().items():
        if value != base[key]:
            st.query_params[key] = str(value).lower() if isinstance(value, bool) else str(value)
    if run:
        st.query_params["run"] = run


def upload_panel() -> str | None:
    """An .npz upload (arrays X and y), validated and kept under RESX_HOME/uploads; its path or None."""
    from resx.data import save_upload

    with st.expander("Your own arrays (.npz)"):
        st.caption("An .npz holding X of shape (n, d), (n, H, W) or (n, C, H, W) and integer labels y (n,). "
                   "Read without unpickling; size-limited.")
        upload = st.file_uploader("Upload .npz", type=["npz"], key="npz_upload")
        if upload is not None:
            try:
                path = save_upload(upload.getvalue(), get_manager().store.home / "uploads")
            except DataError as e:
                st.error(f"The upload was not used: {e}")
                return None
            st.session_state["npz_path"] = str(path)
        path = st.session_state.get("npz_path")
        if path and st.checkbox("Train on the uploaded arrays", value=True, key="use_npz"):
            return path
    return None


def config_form(current: RunConfig, npz_path: str | None = None) -> tuple[RunConfig | None, str, bool]:
    """Preset and field widgets; returns (config or None when invalid, preset name, Run pressed)."""
    preset = st.query_params.get("preset", DEFAULT_PRESET)
    names = list(PRESETS)
    chosen = st.selectbox("Preset", names, index=names.index(preset) if preset in names else 0, key="preset_select")
    if chosen != preset:
        st.query_params.clear()
        st.query_params["preset"] = chosen
        st.rerun()
    values = current.to_dict()
    with st.form("config"):
        cols = st.columns(3)
        for i, name in enumerate(FORM_FIELDS):
            col, kind, value = cols[i % 3], FIELDS[name], values[name]
            if name in CHOICES:
                options = CHOICES[name]  # "npz" is not offered: uploaded arrays come from upload_panel
                index = options.index(value) if value in options else 0
                values[name] = col.selectbox(name, options, index=index, help=HELP.get(name))
            elif kind == "int":
                values[name] = int(col.number_input(name, value=value, min_value=0, step=1, help=HELP.get(name)))
            elif kind == "float":
                values[name] = float(col.number_input(name, value=float(value), min_value=0.0, format="%g",
                                                      help=HELP.get(name)))
        submitted = st.form_submit_button("Run", type="primary")
    if npz_path:
        values["dataset"], values["npz_path"] = "npz", npz_path
    try:
        cfg = caps().check(RunConfig.from_dict(values))
    except (ConfigError, DataError) as e:
        st.error(f"{e}")
        return None, chosen, False
    return cfg, chosen, submitted


PHASE_LABELS = {"base": "train base", "margins": "estimate margins", "insert": "insert",
                "jumpboard": "jumpboard", "new": "fine-tune (expanded)", "control": "fine-tune (control)"}
VERDICTS = {"strict": ("strict improvement certified", "green"), "no_worse": ("no-worse certified", "blue"),
            "not_certified": ("not certified", "orange")}


def status_banner(container, snap):
    """The final status of a run, with its message (divergence step and loss, failure, cancellation)."""
    text = f"Run `{snap.run_id}`: **{snap.status}**"
    if snap.message:
        message = snap.message
        if message.lower().startswith(snap.status):  # "cancelled during base at step 784"
            message = message[len(snap.status):].lstrip(" :.")
        for phase, label in PHASE_LABELS.items():
            message = message.replace(f"during {phase} ", f"during {label} ").replace(f"of {phase}:", f"of {label}:")
        text += f": {message}"
    {"done": container.success, "cancelled": container.warning, "interrupted": container.warning}.get(
        snap.status, container.error)(text)


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def fmt(value, se=None, digits=4) -> str:
    """A number for reading: 0.0123, 1.34 ± 0.003, 6.69×10⁴ (no e-notation on screen)."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        text = f"{float(mantissa):.{digits}g}×10{str(int(exponent)).translate(SUPERSCRIPT)}"
    return f"{text} ± {se:.2g}" if se is not None else text


def margin_panel(result: dict, config: dict):
    """The chosen position's margin estimates with their one-sided bounds and the 'observed' badge."""
    margins = result.get("margins")
    if not margins:
        return
    from resx import plots
    chosen = config.get("position")
    st.plotly_chart(plots.margin_estimates(margins, chosen), key="margins")
    m = next((m for m in margins if m["position"] == chosen), None)
    if m is None:
        return
    badge = ":green-badge[descent condition observed]" if m["observed"] else ":orange-badge[descent condition not observed]"
    st.markdown(f"Position **{chosen}**: {badge}")
    cols = st.columns(3)
    cols[0].metric("U_P (probe)", fmt(m["kappa2_U"], digits=3), help="one-sided lower bound " + fmt(m.get("kappa2_U_lcb")))
    cols[0].caption(f"± {fmt(m['kappa2_U_se'], digits=2)} (1 SE)")
    cols[1].metric("||G_S||^2 (training)", fmt(m["kappa2_train_naive"], digits=3))
    cols[2].metric("kappa^2 (population)", fmt(m.get("kappa2_pop"), digits=3))
    if m.get("kappa2_pop_se") is not None:
        cols[2].caption(f"± {fmt(m['kappa2_pop_se'], digits=2)} (1 SE)")
    st.caption("Observed means the one-sided lower confidence bound of U_P is above 0. The training margin is "
               "smaller because the old model was fit on S. " + theory_link("4-descent-margins"))


def preservation_badge(result: dict, records):
    """max |f_new - f_old| on S: exact for resnet, about the LayerNorm epsilon for mlp."""
    ins = result.get("insertion")
    if ins is None:
        diff = next((r.value for r in records if r.phase == "insert" and r.name == "max_abs_logit_diff"), None)
        if diff is None:
            st.caption("Measured when the block is inserted.")
            return
        ins = {"max_abs_logit_diff": diff, "preserved": None, "live_parameters": []}
    ok = ins.get("preserved")
    badge = ":green-badge[preserved]" if ok or ok is None else ":red-badge[NOT preserved: a bug]"
    st.markdown(f"{badge} max |f_new(x) - f_old(x)| on S = `{ins['max_abs_logit_diff']:.2e}`"
                + (f", |L_S difference| = `{ins['loss_diff']:.2e}`" if "loss_diff" in ins else ""))
    if ins.get("live_parameters"):
        st.caption("Live parameters (nonzero gradient at phi0): " + ", ".join(f"`{p}`" for p in ins["live_parameters"])
                   + ". " + theory_link("3-depth-expansion"))


def routes_panel(result: dict):
    """Routes A and B as waterfalls with their verdicts, the gain against the cost, and which is tighter."""
    routes, terms = result.get("routes"), result.get("terms")
    if not routes or not terms:
        st.caption("Appear when the fine-tune and the control have finished.")
        return
    from resx import plots
    new = result.get("new", {})
    observed = new.get("L_pop") if new.get("L_pop") is not None else new.get("L_T")
    gain = (terms.get("Delta_R_used") or 0.0) + terms["Delta_ERM"]
    st.markdown(f"Gains: representational Delta_R = {fmt(terms.get('Delta_R_used'))} ({terms.get('Delta_R_source', '')}), "
                f"optimization Delta_ERM = {fmt(terms['Delta_ERM'])}. Complexity bound: **{terms['bound_name']}**, "
                f"loss range c = {fmt(terms['c'])}. " + theory_link("7-complexity-terms", "complexity terms"))
    cols = st.columns(2)
    for col, key, title in ((cols[0], "A", "Route A (population)"), (cols[1], "B", "Route B (train/test)")):
        route = routes[key]
        label, color = VERDICTS.get(route["verdict"], (route["verdict"], "gray"))
        with col:
            st.markdown(f"**{title}**: :{color}-badge[{label}]  \nbound on L(f_new): {fmt(route['bound'])}; "
                        f"gain {fmt(gain)} against cost {fmt(route['cost'])}")
            st.plotly_chart(plots.route_waterfall(route, observed), key=f"route{key}")
            if route.get("assumption"):
                st.caption(route["assumption"])
    vacuous = [name for name, flag in (("eps_M", terms.get("vacuous_M")), ("eps_K", terms.get("vacuous_K"))) if flag]
    if vacuous:
        need = [terms.get("n_nonvacuous_M"), terms.get("n_nonvacuous_K")]
        need = [n for n in need if n is not None]
        st.warning(f"The complexity terms are vacuous here (2 eps >= c = {fmt(terms['c'])}): a norm-based bound of this "
                   f"kind stops being vacuous only from n = {fmt(max(need)) if need else 'never'} "
                   f"(this run has n = {terms['n']}). Observed gaps |L_T - L_S|: f_new {fmt(terms.get('gap_new'))}, "
                   f"f_J {fmt(terms.get('gap_J'))}.")
    if routes.get("tighter_reason"):
        st.caption(routes["tighter_reason"].capitalize() + ". " + theory_link("8-the-two-test-risk-guarantees"))
    beats = result.get("expansion_beats_control")
    if beats:
        verdict = {"beats": "beat", "loses": "lost to", "ties": "tied with (within 2 paired standard errors)"}[
            beats["verdict"]]
        st.markdown(f"The fine-tuned expanded model **{verdict}** the control, which trained the old model on "
                    f"for as many steps: {beats['risk']} {fmt(beats['new'])} against {fmt(beats['control'])}, "
                    f"difference {fmt(beats['difference'], beats['difference_se'])}.")
    with st.expander("Every term"):
        st.table({k: [fmt(v) if isinstance(v, float) else str(v)] for k, v in terms.items()})
