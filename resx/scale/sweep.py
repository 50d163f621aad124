"""Depth x width x data sweeps, the grid of figure 3 (theory.md 9; design.md "Scale-out").

A `SweepSpec` expands a base `RunConfig` into one validated cell per (depth, width, n, seed).
Each cell is one whole pipeline run, done by `run_cell(config_dict, cancel)` in a worker:
it loads its own data and seeds itself from the config, so a cell's numbers do not depend on
where it ran. Two executors behind one `map`: `LocalExecutor` (a process pool, the default) and
`RayExecutor` (an optional extra, requirements-ray.txt).

Every cell runs with the same torch thread count (1 by default) on both executors: the
intra-op thread count changes the last bits of reductions (measured: kappa2_U differs at 1e-8
between 1 and 2 threads), and a sweep must give the same numbers on a laptop and a cluster.

`run_sweep` keeps each finished cell in the store as a run (source "sweep", name
"sweep:<id>", result = the pipeline result plus the cell summary under "cell"), so the Runs page
lists them and a rerun with the same sweep id skips them (resume).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from collections.abc import Iterable
from pathlib import Path
from typing import Callable, Optional

from ..core.config import ConfigError, RunConfig, build_config
from ..core.records import Record
from ..runs.jobs import Cancelled
from ..theory.kink import best_of_margin_dicts
from .executors import CellFn, Executor, LocalExecutor, RayExecutor  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

POSITION_RULES = ("middle", "fixed")  # middle: num_positions // 2 of each cell; fixed: base.position
MAX_CELLS = 4096                      # one sweep's grid; beyond this, split it
FINISHED = ("done", "diverged")       # a cell in one of these is kept on resume (diverging is seeded too)
CELL_COLUMNS = (
    "key", "status", "message", "dataset", "arch", "depth", "width", "n", "seed", "position", "test_risk",
    "test_loss_old", "test_loss_new", "test_loss_control",
    "L_pop_old", "L_pop_new", "L_pop_control", "L_T_old", "L_T_new", "L_T_control",
    "L_S_old", "L_S_new", "L_S_control",
    "best_position", "best_kappa2_U", "best_kappa2_U_se", "best_kappa2_U_lcb", "best_sign", "best_observed",
    "best_slope", "best_slope_ucb", "best_delta_each",
    "inserted_kappa2_U_lcb", "inserted_observed",
    "route_A_bound", "route_A_verdict", "route_B_bound", "route_B_verdict", "tighter_route",
    "beats_control", "beats_difference", "seconds", "worker", "run_id", "config")
_AXES = {"depth": "depths", "width": "widths", "n": "ns", "seed": "seeds", "position": "position_rule"}


@dataclass(frozen=True)
class SweepSpec:
    """The grid: every (depth, width, n, seed) over `base`; None for ns/seeds means base's value."""
    base: RunConfig
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    ns: Optional[tuple[int, ...]] = None      # training sizes n (n_probe, n_test stay the base's)
    seeds: Optional[tuple[int, ...]] = None
    position_rule: str = "middle"             # one of POSITION_RULES
    certify: bool = False                     # the certify step in every cell (minutes each); off: cells
                                              # keep their checkpoints to be certified later

    def __post_init__(self):
        if not isinstance(self.base, RunConfig):
            raise ConfigError("base", type(self.base).__name__, "a RunConfig")
        defaults = {"ns": (self.base.n,), "seeds": (self.base.seed,)}
        for name in ("depths", "widths", "ns", "seeds"):
            value = getattr(self, name)
            value = defaults[name] if value is None else value
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise ConfigError(name, value, "a list of integers")
            value = tuple(value)
            if not value or any(not isinstance(v, int) or isinstance(v, bool) for v in value):
                raise ConfigError(name, list(value), "a non-empty list of integers")
            if len(set(value)) != len(value):
                raise ConfigError(name, list(value), "a list without repeated values")
            object.__setattr__(self, name, value)
        if not isinstance(self.certify, bool):
            raise ConfigError("certify", self.certify, "true or false")
        if self.position_rule not in POSITION_RULES:
            raise ConfigError("position_rule", self.position_rule, f"one of {list(POSITION_RULES)}")
        size = len(self.depths) * len(self.widths) * len(self.ns) * len(self.seeds)
        if size > MAX_CELLS:
            raise ConfigError("cells", size, f"at most {MAX_CELLS} cells (depths x widths x ns x seeds) per sweep")
        self.cells()  # every cell is checked now, not when a worker reaches it

    def cells(self) -> list[RunConfig]:
        """One RunConfig per cell, depth-major; a bad value raises ConfigError naming the sweep field."""
        out = []
        for depth, width, n, seed in itertools.product(self.depths, self.widths, self.ns, self.seeds):
            values = {"depth": depth, "width": width, "n": n, "seed": seed}
            try:
                blocks = depth if self.base.arch == "mlp" else 3 * depth
                position = (blocks + 1) // 2 if self.position_rule == "middle" else self.base.position
                out.append(self.base.replace(**values, position=position, certify=self.certify))
            except ConfigError as e:
                where = f"(in the cell depth={depth}, width={width}, n={n}, seed={seed})"
                if e.field in values:
                    raise ConfigError(_AXES[e.field], e.value, f"{e.allowed} {where}") from None
                raise ConfigError(_AXES.get(e.field, e.field), self.position_rule if e.field == "position"
                                  else e.value, f"{e.field}={e.value!r} is not allowed: {e.allowed} {where}") from None
        return out

    def to_dict(self) -> dict:
        return {"base": self.base.to_dict(), "depths": list(self.depths), "widths": list(self.widths),
                "ns": list(self.ns), "seeds": list(self.seeds), "position_rule": self.position_rule,
                "certify": self.certify}

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - known or {"base", "depths", "widths"} - set(d):
            raise ConfigError("sweep", d if not isinstance(d, dict) else sorted(set(d) ^ known),
                              f"a JSON object with keys from {sorted(known)}; base, depths, widths required")
        return cls(**{**d, "base": RunConfig.from_dict(d["base"])})


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cell_key(cfg: RunConfig | dict) -> str:
    """A stable name for a cell: 16 hex digits of sha256 over its config's canonical JSON."""
    return _digest(cfg.to_dict() if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg).to_dict())[:16]


def default_sweep_id(spec: SweepSpec) -> str:
    """The same grid gets the same id, so rerunning a command resumes it."""
    return _digest(spec.to_dict())[:12]


def check_sweep_id(sweep_id: str) -> str:
    if not isinstance(sweep_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", sweep_id):
        raise ConfigError("sweep_id", sweep_id, "1 to 64 letters, digits, '.', '_' or '-'")
    return sweep_id


# ---------------------------------------------------------------------------------------------
# one cell, in a worker

def run_cell(config: dict, cancel=None) -> dict:
    """Run one cell's pipeline: {"cell": summary, "result": the pipeline result, "records": [tuples],
    "checkpoints": {file name: bytes}}. A cell that did not certify (certify=false, the sweep's
    default) carries its four checkpoints, so that the store can certify it later without retraining.

    Never raises for a failing run: an exception becomes status "failed" with its type and message.
    `cancel` is anything with is_set() (a threading or multiprocessing Event), checked every batch.
    """
    from ..runs.pipeline import run_pipeline
    records: list[tuple] = []
    checkpoints: dict[str, bytes] = {}
    start = time.perf_counter()
    try:
        cfg = RunConfig.from_dict(config)
        with tempfile.TemporaryDirectory(prefix="resx-cell-") as tmp:
            result = run_pipeline(cfg, sink=lambda r: records.append(dataclasses.astuple(r)), cancel=cancel,
                                  out_dir=None if cfg.certify else Path(tmp))
            if not cfg.certify and result["status"] == "done":   # kept, to certify the cell later
                checkpoints = {p.name: p.read_bytes() for p in sorted(Path(tmp).glob("*.pt"))}
    except Exception as e:  # a worker must report, not die: the sweep goes on
        log.exception("cell %s failed", config)
        result = {"config": config, "status": "failed", "message": f"{type(e).__name__}: {e}"}
    cell = summarize(result, seconds=time.perf_counter() - start)
    return {"cell": cell, "result": result, "records": records, "checkpoints": checkpoints}


def summarize(result: dict, seconds: Optional[float] = None) -> dict:
    """The cell summary (one CSV row) from a pipeline result; missing numbers are None.

    test_loss is figure 3's test loss: the population risk L_pop for synthetic tasks, L_T for real
    data (test_risk names which). best_*: the corrected descent test over positions (theory.md 4b,
    `kink.best_of_positions`): best_position has the least upper confidence bound of its one-sided
    slope D_P2(d_hat) with each of the K positions at delta/K (Bonferroni; best_delta_each), and
    best_observed says whether that bound is below 0 ("descent observable" for the pick, an
    asymptotic z-bound; on a resnet not "gradient nonzero"). best_slope, best_slope_ucb: the slope
    and its corrected bound; best_kappa2_U*, best_sign: U_P and its sign at that position (shown).
    """
    cfg = result["config"]
    cell: dict = {c: None for c in CELL_COLUMNS}
    cell.update({k: cfg[k] for k in ("dataset", "arch", "depth", "width", "n", "seed", "position")},
                key=cell_key(cfg), status=result.get("status"), message=result.get("message"),
                seconds=None if seconds is None else round(seconds, 4), config=cfg,
                worker=f"{socket.gethostname()}:{os.getpid()}")
    synthetic = (result.get("old") or {}).get("L_pop") is not None
    cell["test_risk"] = ("L_pop" if synthetic else "L_T") if "old" in result else None
    for model in ("old", "new", "control"):
        risks = result.get(model) or {}
        for name in ("L_S", "L_T", "L_pop"):
            cell[f"{name}_{model}"] = risks.get(name)
        cell[f"test_loss_{model}"] = risks.get(cell["test_risk"]) if cell["test_risk"] else None
    margins = [m for m in result.get("margins") or [] if m["kappa2_U_lcb"] == m["kappa2_U_lcb"]]  # drop NaN
    pick = result.get("descent_best_position") or (best_of_margin_dicts(result["margins"], cfg["delta"])
                                                   if result.get("margins") else None)
    if pick and pick.get("position") is not None:
        best = next((m for m in margins if m["position"] == pick["position"]), None) or {}
        U = best.get("kappa2_U")
        cell.update(best_position=pick["position"], best_observed=bool(pick["observable"]),
                    best_slope=best.get("slope_cross"), best_slope_ucb=pick["ucb"], best_delta_each=pick["delta_each"],
                    best_kappa2_U=U, best_kappa2_U_se=best.get("kappa2_U_se"), best_kappa2_U_lcb=best.get("kappa2_U_lcb"),
                    best_sign=None if U is None else (U > 0) - (U < 0))
        inserted = next((m for m in margins if m["position"] == cfg["position"]), None)
        if inserted:
            cell.update(inserted_kappa2_U_lcb=inserted["kappa2_U_lcb"], inserted_observed=inserted["observed"])
    routes = result.get("routes") or {}
    for name in ("A", "B"):
        if name in routes:
            cell[f"route_{name}_bound"], cell[f"route_{name}_verdict"] = routes[name]["bound"], routes[name]["verdict"]
    cell["tighter_route"] = routes.get("tighter")
    beats = result.get("expansion_beats_control") or {}
    cell["beats_control"], cell["beats_difference"] = beats.get("beats"), beats.get("difference")
    return cell


# ---------------------------------------------------------------------------------------------
# the sweep

def _finished_cells(store, sweep_id: str) -> dict[str, dict]:
    """{cell key: cell summary (with run_id)} of this sweep's runs that ended done or diverged."""
    out = {}
    for run in reversed(store.list_runs(name=f"sweep:{sweep_id}", limit=1_000_000)):  # oldest first
        cell = (run["result"] or {}).get("cell")
        if run["status"] in FINISHED and cell and cell.get("key"):
            out.setdefault(cell["key"], cell | {"run_id": run["id"]})
    return out


def run_sweep(spec: SweepSpec, executor: Executor, store=None, sweep_id: Optional[str] = None,
              cancel: Optional[threading.Event] = None, on_result: Optional[Callable[[dict], None]] = None,
              cell_fn: CellFn = run_cell) -> list[dict]:
    """Run every cell of `spec` not already finished in `store` under `sweep_id`; return all cells.

    The list is in grid order and holds the stored cells and this call's (cancelled and failed
    ones included, which a later call redoes); a cell never started is absent. on_result(cell) is
    called for each cell of this call as it ends, after the store has it.
    """
    sweep_id = check_sweep_id(sweep_id or default_sweep_id(spec))
    cells = spec.cells()
    stored = _finished_cells(store, sweep_id) if store is not None else {}
    todo = [c.to_dict() for c in cells if cell_key(c) not in stored]
    log.info("sweep %s: %d cells, %d already finished, %d to run", sweep_id, len(cells), len(stored), len(todo))
    fresh: dict[str, dict] = {}

    def ingest(config: dict, payload: Optional[dict], error: Optional[BaseException]) -> None:
        if payload is None:
            status = "cancelled" if isinstance(error, Cancelled) else "failed"
            result = {"config": config, "status": status, "message": f"{type(error).__name__}: {error}"}
            payload = {"cell": summarize(result), "result": result, "records": []}
        cell, result = payload["cell"], payload["result"]
        if store is not None:
            run_id = store.create_run(config, source="sweep", name=f"sweep:{sweep_id}")
            store.add_records(run_id, [Record(*r) for r in payload["records"]])
            store.set_result(run_id, result | {"cell": cell})
            if payload.get("checkpoints"):
                keep_checkpoints(store, run_id, payload["checkpoints"])
            status = result["status"] if result["status"] in ("done", "diverged", "cancelled") else "failed"
            store.set_status(run_id, status, result.get("message"))
            cell = cell | {"run_id": run_id}
        fresh[cell["key"]] = cell
        if on_result is not None:
            on_result(cell)

    if todo:
        executor.map(cell_fn, todo, ingest, cancel)
    found = stored | fresh
    return [found[k] for k in map(cell_key, cells) if k in found]


def keep_checkpoints(store, run_id: str, checkpoints: dict[str, bytes]) -> None:
    """Write a cell's checkpoints under the store's runs/<run id>/, as the Lab's runs keep theirs."""
    folder = store.home / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in checkpoints.items():
        (folder / name).write_bytes(blob)
        store.add_artifact(run_id, name, folder / name)


def write_csv(cells: list[dict], path) -> None:
    """One row per cell, columns CELL_COLUMNS; None is an empty cell, config is JSON."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CELL_COLUMNS)
        for cell in cells:
            row = [cell.get(c) for c in CELL_COLUMNS]
            writer.writerow(["" if v is None else json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
                             for v in row])


# ---------------------------------------------------------------------------------------------
# command line: `python -m resx sweep ...` (registered by resx.cli)

def _int_list(flag: str, text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(flag, text, "comma-separated integers, e.g. 1,2,4") from None


def cmd_sweep(args) -> int:
    """Run a grid, each cell recorded in the store (resumable), and write a CSV of the cells."""
    from ..runs.store import Store

    base = build_config(args.preset, args.config, args.set or [])
    asked = args.certify or (base.certify and any(a.partition("=")[0] == "certify" for a in args.set or []))
    spec = SweepSpec(base, _int_list("--depths", args.depths), _int_list("--widths", args.widths),
                     _int_list("--ns", args.ns), _int_list("--seeds", args.seeds), args.position_rule, certify=asked)
    sweep_id = check_sweep_id(args.sweep_id or default_sweep_id(spec))
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers", args.workers, "an integer >= 1")
    if args.executor == "ray":
        if args.ray_address and args.workers:
            raise ConfigError("--workers", args.workers, "not with --ray-address (the cluster's CPUs decide)")
        executor = RayExecutor(args.ray_address, num_cpus=args.workers)
    elif args.ray_address:
        raise ConfigError("--ray-address", args.ray_address, "only with --executor ray")
    else:
        executor = LocalExecutor(args.workers)
    store = None if args.no_store else Store()
    total, count = len(spec.cells()), [0]

    def progress(cell: dict) -> None:
        count[0] += 1
        loss = "" if cell["test_loss_new"] is None else \
            f" test loss old {cell['test_loss_old']:.4f} new {cell['test_loss_new']:.4f} control {cell['test_loss_control']:.4f}"
        print(f"[{count[0]}] depth={cell['depth']} width={cell['width']} n={cell['n']} seed={cell['seed']}: "
              f"{cell['status']}{loss} ({cell['seconds'] or 0:.1f} s)", file=sys.stderr, flush=True)

    print(f"sweep {sweep_id}: {total} cells on {args.executor}"
          f"{' (rerun the same command to resume)' if store else ''}", file=sys.stderr)
    try:
        cells = run_sweep(spec, executor, store, sweep_id, on_result=progress)
    finally:
        executor.shutdown()
    out = args.out or f"sweep-{sweep_id}.csv"
    write_csv(cells, out)
    complete = sum(c["status"] in FINISHED for c in cells)
    print(f"{complete}/{total} cells finished; wrote {out}", file=sys.stderr)
    return 0 if complete == total else 1


def add_sweep_parser(subparsers) -> None:
    """Register `sweep` on the CLI's subparsers (resx.cli.make_parser calls this)."""
    p = subparsers.add_parser("sweep", help="depth x width x data grid (figure 3); resumable; writes a CSV")
    p.add_argument("--preset", help="the base configuration's preset (default demo-mlp)")
    p.add_argument("--config", help="a JSON file of RunConfig fields for the base configuration")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one base field; repeatable")
    p.add_argument("--depths", required=True, help="comma-separated depths, e.g. 1,2,4")
    p.add_argument("--widths", required=True, help="comma-separated widths, e.g. 16,32")
    p.add_argument("--ns", help="comma-separated training sizes n (default: the base's n)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the base's seed)")
    p.add_argument("--position-rule", default="middle", choices=POSITION_RULES,
                   help="insert at the middle position of each cell, or at the base's position everywhere")
    p.add_argument("--certify", action="store_true",
                   help="run the certify step in every cell (hold-out and PAC-Bayes certificates; minutes per "
                        "cell). Without it, cells keep their checkpoints: `python -m resx certify RUN_ID` later")
    p.add_argument("--executor", default="local", choices=("local", "ray"))
    p.add_argument("--ray-address", help="a running Ray cluster: auto, host:port or ray://host:10001 "
                                         "(default: start a local one)")
    p.add_argument("--workers", type=int, help="local processes, or CPUs of a local Ray (default: the cores)")
    p.add_argument("--sweep-id", help="name of the sweep in the store; the same id resumes (default: from the grid)")
    p.add_argument("--out", help="CSV of the cells (default sweep-<id>.csv)")
    p.add_argument("--no-store", action="store_true", help="do not record the cells (no resume)")
    p.set_defaults(func=cmd_sweep)
