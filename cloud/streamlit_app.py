"""Community Cloud's entrypoint (main file path: cloud/streamlit_app.py). Cloud installs the
requirements.txt beside this file (pinned CPU torch wheels) instead of the root one, so the same
branch deploys; this file only makes the checkout importable and runs the app itself (../app.py)."""
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
