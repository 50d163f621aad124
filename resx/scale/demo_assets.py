"""The demo's precomputed results (`python -m resx assets`): the quick figures 1, 2, observability
and the small figure-3 grid, as one JSON file under assets/ so that Signals, Scaling and Allocation
show figures on first open (design.md "A public demo"). JSON only (no pickles), a few hundred kB.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from .paper_data import FigureSettings
from .paper_figures import make_figures, to_jsonable

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "assets" / "precomputed.json"
COMMAND = "python -m resx assets"
PARTS = ("fig3", "fig1", "fig2", "observability")


def make_assets(out: Path = DEFAULT_OUT, dataset: str = "shapes", seed: int = 0, progress=None) -> dict:
    """Run the quick figures (FigureSettings.quick) and write what the pages draw to `out`."""
    settings = FigureSettings.quick(dataset=dataset, device="cpu", seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_figures(Path(tmp), settings, only=list(PARTS), png=False, progress=progress)
    keep = {k: data[k] for k in ("settings", "timings", "fig1", "fig2", "observability", "fig3_cells",
                                 "fig3_summary", "allocation_fit", "allocation_fit_note") if k in data}
    keep["made_by"] = {"command": COMMAND, "made": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "torch": torch.__version__}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_jsonable(keep), separators=(",", ":")))
    return keep


def load_assets(path: Path = DEFAULT_OUT) -> dict | None:
    """The precomputed results, or None when the file is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def cmd_assets(args) -> int:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = make_assets(Path(args.out), dataset=args.dataset, seed=args.seed,
                       progress=lambda msg: print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr))
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 1e3:.0f} kB; {data['timings'].get('total', 0):.0f} s of compute)")
    return 0


def add_assets_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("assets", help="precompute the demo's figures (quick figures 1, 2, observability "
                                             "and a small grid) into assets/precomputed.json")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"output JSON (default {DEFAULT_OUT})")
    p.add_argument("--dataset", default="shapes", help="shapes (default) or a torchvision dataset in RESX_DATA_DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.set_defaults(func=cmd_assets)
    return p
