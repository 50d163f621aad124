"""The public demo (RESX_DEMO=1, design.md "Who uses it": about 2 cores and 2.7 GB): one job at a
time, small caps, the Lesson as the landing page, and precomputed figures on first open."""
from __future__ import annotations

import os

from .state import operator_setting


def demo_mode() -> bool:
    """RESX_DEMO=1 (environment or .streamlit/secrets.toml)."""
    return (operator_setting("RESX_DEMO") or "").strip().lower() in ("1", "true", "yes")


def apply_demo_settings() -> bool:
    """Before the job manager is made: one worker (RESX_MAX_JOBS=1) and the demo caps, which
    OperatorCaps.from_env reads from RESX_DEMO. Returns whether the demo mode is on."""
    if not demo_mode():
        return False
    os.environ["RESX_DEMO"] = "1"
    os.environ.setdefault("RESX_MAX_JOBS", "1")
    return True


def precomputed() -> dict | None:
    """assets/precomputed.json (made by `python -m resx assets`), read once per process."""
    import streamlit as st

    @st.cache_resource(show_spinner=False)
    def load(path: str, mtime: float):
        from resx.scale.demo_assets import load_assets
        return load_assets(path)

    from resx.scale.demo_assets import DEFAULT_OUT
    if not DEFAULT_OUT.exists():
        return None
    return load(str(DEFAULT_OUT), DEFAULT_OUT.stat().st_mtime)


def precomputed_note(data: dict, what: str) -> str:
    """The caption that marks a precomputed figure and says how to recompute it."""
    made = data.get("made_by", {})
    return (f"**Precomputed** ({what}, by `{made.get('command', 'python -m resx assets')}` on {made.get('made', '?')}, "
            "quick settings on a CPU); recompute here with the form above.")
