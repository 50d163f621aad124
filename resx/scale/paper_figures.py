"""The paper's figures as files, and `python -m resx figures` (design.md "Pages" 2-4).

`make_figures` computes every figure of `resx.scale.paper_data` and writes interactive HTML (with one
plotly.min.js beside it, so the folder works offline), static PNG through kaleido and the
system Chromium, `table3.csv`, `cells.csv` and `figures.json` (every number shown, timings).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..core.config import TORCHVISION_DATASETS, ConfigError
from ..figures import paper as fp
from ..figures.allocation import LEVINE_2020, table3, write_table3_csv
from ..figures.cells import figure3_from_cells
from .paper_data import (FigureError, Progress, FigureSettings, ModelBank, figure1_data, figure2_data, figure3_data, observability_data)

log = logging.getLogger(__name__)


BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> Optional[str]:
    """The Chrome/Chromium kaleido 1.x will drive: $BROWSER_PATH (read by its `choreographer`
    package), else the first of BROWSER_NAMES on PATH; None when there is none."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def plotly_version() -> str:
    import plotly
    return plotly.__version__


def write_pngs(figures: dict, out_dir: Path, width: int = 1100) -> dict:
    """Static PNGs of `figures` ({stem: Figure}) through kaleido, in one browser session.

    Returns {"ok", "files", "browser", "reason"}: never raises; `reason` says why PNGs are
    missing (kaleido not installed, no Chrome/Chromium, or kaleido's own error).
    """
    status = {"ok": False, "files": [], "browser": find_browser(), "reason": None}
    try:
        import kaleido  # noqa: F401
        import plotly.io as pio
    except ImportError as e:
        status["reason"] = (f"kaleido is not installed ({e}): the PNG export is optional; "
                            "pip install 'kaleido>=1' 'plotly>=6.1.1' (both in requirements-dev.txt)")
        return status
    if not hasattr(pio, "write_images"):  # plotly < 6.1: no kaleido 1.x support
        status["reason"] = f"plotly {plotly_version()} cannot drive kaleido 1.x: pip install 'plotly>=6.1.1'"
        return status
    if status["browser"] is None:
        log.warning("no Chrome/Chromium on PATH and BROWSER_PATH unset; kaleido may still find its own copy")
    paths = [Path(out_dir) / f"{stem}.png" for stem in figures]
    figs = list(figures.values())
    try:
        pio.write_images(figs, paths, format="png", width=width,
                         height=[int(f.layout.height or 500) for f in figs])
    except Exception as e:  # kaleido reports a missing or broken browser as various errors
        status["reason"] = (f"{type(e).__name__}: {e}. kaleido 1.x needs a Chrome/Chromium: install one "
                            f"(apt-get install chromium) or set BROWSER_PATH to its executable")
        return status
    status.update(ok=True, files=[p.name for p in paths])
    return status


def write_html(figures: dict, out_dir: Path) -> list[str]:
    """One HTML file per figure; plotly.js is written once beside them (include_plotlyjs="directory"),
    so the files work offline as long as plotly.min.js stays in the same folder."""
    names = []
    for stem, fig in figures.items():
        path = Path(out_dir) / f"{stem}.html"
        fig.write_html(path, include_plotlyjs="directory", full_html=True)
        names.append(path.name)
    return names


def to_jsonable(value):
    """numpy arrays and scalars, tensors, Paths -> JSON types; non-finite floats -> None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_cells_csv(cells: Sequence[dict], path: Path) -> Path:
    keys: list = []
    for c in cells:
        keys += [k for k in c if k not in keys and not isinstance(c[k], (dict, list))]
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for c in cells:
            w.writerow({k: c.get(k) for k in keys})
    return Path(path)


STEPS = ("fig3", "fig1", "fig2", "observability", "table3")


def make_figures(out_dir: Path, settings: FigureSettings, only: Optional[Sequence[str]] = None, png: bool = True,
                 progress: Optional[Progress] = None, cancel: Optional[threading.Event] = None,
                 keep_runs: bool = False) -> dict:
    """Compute and write every figure of `only` (default all of STEPS) into `out_dir`.

    Figure 3 runs first so that its base models serve figures 1, 2 and observability where the
    configurations coincide. Writes <stem>.html (+ plotly.min.js), <stem>.png when kaleido works,
    table3.csv, cells.csv and figures.json (settings, every number shown, timings, PNG status).
    `keep_runs` keeps the grid's run folders (result.json, checkpoints) under out_dir/fig3_runs.
    Returns the figures.json content.
    """
    only = list(STEPS if only is None else only)
    unknown = [s for s in only if s not in STEPS]
    if unknown:
        raise ConfigError("only", unknown, f"a subset of {list(STEPS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = progress or (lambda msg: log.info(msg))
    bank = ModelBank(cancel=cancel, progress=progress)
    figures: dict = {}
    data: dict = {"settings": settings.to_dict(), "timings": {}}
    started = time.perf_counter()

    def lap(name, t0):
        data["timings"][name] = round(time.perf_counter() - t0, 2)

    if "fig3" in only:
        t0 = time.perf_counter()
        cells = figure3_data(bank, settings, out_dir / "fig3_runs" if keep_runs else None)
        f3 = figure3_from_cells(cells)
        figures["fig3_scaling"] = fp.fig3_scaling(cells, title=f"Figure 3: test loss under depth x width scaling "
                                                               f"({settings.base.dataset})")
        if settings.fig3_expand:
            figures["fig3_theory_vs_experiment"] = fp.theory_vs_experiment(
                cells, title="Theory against experiment: predicted and measured improvement per cell")
        if f3["allocation"] is not None:
            figures["allocation_fit"] = fp.allocation_fit_figure(f3["allocation"], title="Depth-width law on this grid")
        data.update(fig3_cells=cells, fig3_summary=f3["summary"], allocation_fit=f3["allocation"],
                    allocation_fit_note=f3["allocation_note"])
        write_cells_csv(cells, out_dir / "cells.csv")
        lap("fig3", t0)
    if "fig1" in only:
        t0 = time.perf_counter()
        f1 = figure1_data(bank, settings)
        figures["fig1_covariance"] = fp.fig1_covariance(f1["main"]["cov"], title=f"Figure 1: {f1['main']['label']}",
                                                        num_classes=f1["main"]["num_classes"])
        figures["fig1_offdiag"] = fp.fig1_offdiag(f1["wide"]["cov"], title=f"Figure 1 (d): {f1['wide']['label']}")
        data["fig1"] = f1
        lap("fig1", t0)
    if "fig2" in only:
        t0 = time.perf_counter()
        curves = figure2_data(bank, settings)
        figures["fig2_signal_decay"] = fp.fig2_signal_decay(
            curves, title=f"Figure 2: first-order average signal against block index ({settings.base.dataset})")
        data["fig2"] = curves
        lap("fig2", t0)
    if "observability" in only:
        t0 = time.perf_counter()
        rows = observability_data(bank, settings)
        where = f"at position {rows[0]['position']}" if len({r["position"] for r in rows}) == 1 else "at the middle position"
        figures["observability_n"] = fp.observability_plot(
            rows, x="n", title=f"Observability of the mean activation gradient {where} against n")
        figures["observability_width"] = fp.observability_plot(
            rows, x="width", title=f"Observability of the mean activation gradient {where} against width")
        data["observability"] = rows
        lap("observability", t0)
    if "table3" in only:
        t0 = time.perf_counter()
        rows3 = table3(LEVINE_2020)
        write_table3_csv(out_dir / "table3.csv", rows3)
        figures["table3"] = fp.allocation_table_figure(rows3, LEVINE_2020.to_dict(),
                                                       title="Table 3: depth-width allocation")
        data.update(table3=rows3, levine_fit=LEVINE_2020.to_dict())
        lap("table3", t0)

    progress(f"writing {len(figures)} figures to {out_dir}")
    t0 = time.perf_counter()
    data["html"] = write_html(figures, out_dir)
    lap("html", t0)
    t0 = time.perf_counter()
    data["png"] = write_pngs(figures, out_dir) if png else {"ok": False, "files": [], "reason": "PNG export not asked for"}
    lap("png", t0)
    data["timings"]["total"] = round(time.perf_counter() - started, 2)
    (out_dir / "figures.json").write_text(json.dumps(to_jsonable(data), indent=1))
    return data


# ---------------------------------------------------------------------------------------------
# the command line

def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError("--grid", text, "comma-separated integers, e.g. 1,2,3") from None


def settings_from_args(args) -> FigureSettings:
    """--quick or paper-size settings for --dataset, with the optional grid overrides."""
    make = FigureSettings.quick if args.quick else FigureSettings.paper
    settings = make(dataset=args.dataset, device=args.device, seed=args.seed)
    changes = {}
    if args.depths:
        changes["fig3_depths"] = _csv_ints(args.depths)
    if args.widths:
        changes["fig3_widths"] = _csv_ints(args.widths)
    if args.seeds:
        changes["fig3_seeds"] = _csv_ints(args.seeds)
    if args.no_expand:
        changes["fig3_expand"] = False
    if args.certify:
        changes["base"] = settings.base.replace(certify=True)
    if changes:
        settings = replace(settings, **changes)
    return settings


def cmd_figures(args) -> int:
    """`python -m resx figures --out DIR [--quick]`: write the figures; progress on stderr."""
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    t0 = time.perf_counter()

    def progress(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        result = make_figures(Path(args.out), settings, only=only, png=not args.no_png, progress=progress,
                              keep_runs=args.keep_runs)
    except FigureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    png = result["png"]
    if not png["ok"]:
        print(f"PNG export skipped: {png['reason']}", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "html": result["html"], "png": png["files"],
                      "timings": result["timings"]}, indent=2))
    return 0


def add_figures_parser(subparsers) -> argparse.ArgumentParser:
    """Register `figures` on the CLI's subparsers; the handler is `cmd_figures` (args.func)."""
    p = subparsers.add_parser("figures", help="reproduce the paper's figures 1-3, observability and table 3 "
                                              "from small trained models (HTML, PNG, CSV, JSON)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="small models and a 2 x 2 x 2 grid: a few minutes on 2 CPU cores (default: paper size, "
                        "hours on a CPU)")
    p.add_argument("--dataset", default="shapes", choices=["shapes", *TORCHVISION_DATASETS],
                   help="shapes (synthetic, default) or a torchvision dataset read from RESX_DATA_DIR")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--depths", help="figure 3 grid depths (blocks per stage), e.g. 1,2,3")
    p.add_argument("--widths", help="figure 3 grid widths, e.g. 4,8,16")
    p.add_argument("--seeds", help="figure 3 grid seeds, e.g. 0,1,2")
    p.add_argument("--no-expand", action="store_true", help="figure 3 from base models only (no pipeline)")
    p.add_argument("--certify", action="store_true", help="run the certify step in every figure 3 cell (hold-out "
                                                          "and PAC-Bayes certificates; off by default: minutes per cell)")
    p.add_argument("--seed", type=int, default=0, help="seed of the models of figures 1, 2 and observability")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: these small models gain little from more; 0 leaves torch's default)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG export (kaleido + Chromium)")
    p.add_argument("--keep-runs", action="store_true", help="keep each grid cell's result.json and checkpoints "
                                                            "under OUT/fig3_runs")
    p.set_defaults(func=cmd_figures)
    return p
