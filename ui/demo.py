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
