"""Shared pytest set-up: make `resx` importable from the repository root."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# One torch thread in the test process: tiny matrices gain nothing from two, and with the other
# core busy (a streamlit server, a subprocess) two threads can stall each other badly.
torch.set_num_threads(1)
