"""The Lab's configuration form, bound to the URL (`?preset=...&depth=...`), the .npz upload and the
weights upload (a state dict for arch=resnet18|resnet34|..., read without unpickling)."""
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
CHOICES = {"dataset": ("teacher", "shapes", "digits", "cifar10", "cifar100", "mnist", "fashion-mnist"),
           "arch": ("mlp", "resnet", "resnet18", "resnet34"), "optimizer": ("sgd", "adamw"), "finetune": ("block", "all"),
           "bound": ("grs", "bft"), "schedule": ("constant", "cosine")}
HELP = {"position": "insert the new block after this block (0 = right after the stem)",
        "dataset": "digits: 1797 handwritten 8x8 digits bundled with scikit-learn (no download; CC BY 4.0)",
        "arch": "resnet18 / resnet34: torchvision's, with a 3x3 stride-1 first conv and no max-pool for small "
                "images (depth and width do not apply)",
        "depth": "residual blocks (resnet: blocks per stage, 6*depth+2 layers)",
        "n": "training sample S", "n_probe": "probe sample P: chooses the jumpboard direction and step",
        "n_test": "test sample T", "finetune": "block: train only the new block; all: every parameter",
        "bound": "grs: Golowich-Rakhlin-Shamir 2018; bft: Bartlett-Foster-Telgarsky 2017",
        "delta": "each certificate family holds with probability at least 1 - delta: the three hold-out pairs together "
                 "(delta/3 each), the PAC-Bayes bound, and each route (delta/3 for each of its three steps); "
                 "each badge of the descent tests is an asymptotic z-bound at delta",
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
        if key in params and key not in ("npz_path", "init_weights"):   # server paths never come from a link
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
        return _kept_upload("Upload .npz", ["npz"], "npz", save_upload, "uploads", "The upload was not used",
                            "Train on the uploaded arrays")


def weights_panel() -> str | None:
    """An optional state dict upload (torch.save(model.state_dict())), read with weights_only=True
    (nothing but tensors is unpickled), size-capped, kept as RESX_HOME/weights/<sha256>.pt; its path
    or None. It is checked against the architecture when the run starts (one line naming the key)."""
    from resx.core.weights import MAX_WEIGHTS_BYTES, save_weights

    cap_mb = min(MAX_WEIGHTS_BYTES // 2**20, int(st.get_option("server.maxUploadSize")))
    with st.expander("Your own weights (.pt state dict)"):
        st.caption(f"A state dict saved with torch.save(model.state_dict(), path) for the architecture chosen "
                   f"below (resnet18 / resnet34 adapted to small images: conv1 3x3 stride 1, no max-pool). "
                   f"Read without unpickling; at most {cap_mb} MB here (resnet18's is 45 MB; larger files: "
                   f"`python -m resx run --init-weights`). The old model starts from it; base training then "
                   f"runs `epochs` more (0: none).")
        return _kept_upload("Upload weights", ["pt", "pth"], "weights", save_weights, "weights",
                            "The weights were not used", "Start from the uploaded weights")


def _kept_upload(label: str, types: list, key: str, save, folder: str, refused: str, use: str) -> str | None:
    """A file uploader whose file `save(bytes, RESX_HOME/folder)` validates and keeps (raising
    DataError, shown as one line); the kept path stays in the session, offered by a checkbox."""
    upload = st.file_uploader(label, type=types, key=f"{key}_upload")
    if upload is not None:
        try:
            st.session_state[f"{key}_path"] = str(save(upload.getvalue(), get_manager().store.home / folder))
        except DataError as e:
            st.error(f"{refused}: {e}")
            return None
    path = st.session_state.get(f"{key}_path")
    return path if path and st.checkbox(use, value=True, key=f"use_{key}") else None


def config_form(current: RunConfig, npz_path: str | None = None,
                weights_path: str | None = None) -> tuple[RunConfig | None, str, bool]:
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
    if weights_path:
        values["init_weights"] = weights_path
    if values["dataset"] == "digits":
        from resx.core.data import DIGITS_CREDIT
        st.caption(f"Data: {DIGITS_CREDIT}. S, P and T are disjoint parts of the 1797 images; "
                   f"n + n_probe + n_test must not exceed 1797, and T stands in for the population.")
    try:
        cfg = caps().check(RunConfig.from_dict(values))
    except (ConfigError, DataError) as e:
        st.error(f"{e}")
        return None, chosen, False
    return cfg, chosen, submitted
