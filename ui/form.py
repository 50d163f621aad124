"""The Lab's configuration form, bound to the URL (`?preset=...&depth=...`), and the .npz upload."""
from __future__ import annotations

import dataclasses

import streamlit as st

from resx.core.config import DEFAULT_PRESET, PRESETS, ConfigError, RunConfig
from resx.core.data import DataError

from .state import caps, get_manager
from .teacher import hidden, keep_teacher_params, locked
from .text import plain

FIELDS = {f.name: f.type for f in dataclasses.fields(RunConfig)}
# What the Lab form shows, in order; the rest keep the preset's value (and the URL's).
FORM_FIELDS = ("dataset", "arch", "depth", "width", "position", "n", "n_probe", "n_test", "optimizer", "lr",
               "weight_decay", "batch_size", "epochs", "finetune_epochs", "finetune", "bound", "delta", "m_cert", "seed",
               "certify")
CHOICES = {"dataset": ("teacher", "shapes", "cifar10", "cifar100", "mnist", "fashion-mnist"),
           "arch": ("mlp", "resnet"), "optimizer": ("sgd", "adamw"), "finetune": ("block", "all"),
           "bound": ("grs", "bft"), "schedule": ("constant", "cosine")}
HELP = {"position": "insert the new block after this block (0 = right after the stem)",
        "depth": "residual blocks (resnet: blocks per stage, 6*depth+2 layers)",
        "n": "training sample S", "n_probe": "probe sample P: chooses the jumpboard direction and step",
        "n_test": "test sample T", "finetune": "block: train only the new block; all: every parameter",
        "bound": "grs: Golowich-Rakhlin-Shamir 2018; bft: Bartlett-Foster-Telgarsky 2017",
        "delta": "every certificate holds with probability at least 1 - delta (the three hold-out pairs together)",
        "m_cert": "at most this many fresh points for the hold-out certificates on synthetic tasks (as many as a "
                  "pilot predicts they need; real data use T)",
        "certify": "the certify step after fine-tuning: hold-out and PAC-Bayes certificates (off: certify later "
                   "from the checkpoints)"}


def ints(text: str, field: str) -> tuple[int, ...]:
    """'1, 2,4' -> (1, 2, 4); anything else raises ConfigError naming the field."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(field, text, "comma-separated integers, e.g. 1,2,4") from None
    if not values:
        raise ConfigError(field, text, "at least one integer")
    return values


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
    kept = keep_teacher_params()  # a teacher link's hide=, lock=, class= survive a run
    st.query_params.clear()
    st.query_params.update(kept)
    st.query_params["preset"] = preset
    for key, value in cfg.to_dict().items():
        if value != base[key]:
            st.query_params[key] = str(value).lower() if isinstance(value, bool) else str(value)
    if run:
        st.query_params["run"] = run


def upload_panel() -> str | None:
    """An .npz upload (arrays X and y), validated and kept under RESX_HOME/uploads; its path or None."""
    from resx.core.data import save_upload

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
    hide, lock = hidden(), locked()  # a teacher link's ?hide=... and ?lock=... (fields keep the link's values)
    chosen = preset
    if "preset" not in hide:
        chosen = st.selectbox("Preset", names, index=names.index(preset) if preset in names else 0,
                              key="preset_select", disabled="preset" in lock)
    if chosen != preset:  # a new configuration: the run shown goes, as it does from the URL
        st.session_state.pop("lab_run", None)
        kept = keep_teacher_params()
        st.query_params.clear()
        st.query_params.update(kept)
        st.query_params["preset"] = chosen
        st.rerun()
    values = current.to_dict()
    with st.form("config"):
        cols = st.columns(3)
        for i, name in enumerate(f for f in FORM_FIELDS if f not in hide):
            col, kind, value, off = cols[i % 3], FIELDS[name], values[name], name in lock
            if name in CHOICES:
                options = CHOICES[name]  # "npz" is not offered: uploaded arrays come from upload_panel
                index = options.index(value) if value in options else 0
                values[name] = col.selectbox(name, options, index=index, help=HELP.get(name), disabled=off)
            elif kind == "int":
                values[name] = int(col.number_input(name, value=value, min_value=0, step=1, help=HELP.get(name),
                                                    disabled=off))
            elif kind == "float":
                values[name] = float(col.number_input(name, value=float(value), min_value=0.0, format="%g",
                                                      help=HELP.get(name), disabled=off))
            elif kind == "bool":
                values[name] = col.checkbox(name, value=bool(value), help=HELP.get(name), disabled=off)
        submitted = st.form_submit_button("Run", type="primary")
    if npz_path:
        values["dataset"], values["npz_path"] = "npz", npz_path
    try:
        cfg = caps().check(RunConfig.from_dict(values))
    except (ConfigError, DataError) as e:
        st.error(f"{e}")
        return None, chosen, False
    return cfg, chosen, submitted
