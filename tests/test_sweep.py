"""Sweeps (resx.scale.sweep): grid validation, resume after cancel, local = Ray, the CLI's CSV.

Tiny cells (mlp, n = 128, one epoch) so that a whole cell takes ~0.1 s once a worker is warm;
the process pool and the Ray cluster are started once per module (Ray start-up is seconds).
"""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import statistics
import threading
import time
from pathlib import Path

import pytest

from resx import cli
from resx.core.config import ConfigError, RunConfig
from resx.runs.store import Store
from resx.scale.sweep import (CELL_COLUMNS, LocalExecutor, SweepSpec, add_sweep_parser, cell_key, run_cell,
                        run_sweep)

TINY = RunConfig(n=128, n_probe=128, n_test=128, n_pop=1024, m_cert=2048, epochs=1, finetune_epochs=1, width=8, depth=1,
                 position=1)
SPEC = SweepSpec(TINY, depths=[1, 2], widths=[8, 16])
ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--set", "n=128", "--set", "n_probe=128", "--set", "n_test=128", "--set", "n_pop=1024", "--set", "m_cert=2048",
             "--set", "epochs=1", "--set", "finetune_epochs=1"]


@pytest.fixture(scope="module")
def local():
    executor = LocalExecutor(workers=2)
    yield executor
    executor.shutdown()


@pytest.fixture(scope="module")
def ray_executor():
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Ray is not installed (pip install -r requirements-ray.txt); CI must have it")
    from resx.scale.sweep import RayExecutor
    executor = RayExecutor(num_cpus=2)
    yield executor
    executor.shutdown()


class Recording:
    """An executor that passes work to another and keeps every config it was asked to run."""

    def __init__(self, inner):
        self.inner, self.configs = inner, []

    def map(self, fn, configs, on_result, cancel=None):
        self.configs += configs
        self.inner.map(fn, configs, on_result, cancel)


def _numbers(store: Store, cell: dict) -> dict:
    result = store.get_run(cell["run_id"])["result"]
    return {k: result[k] for k in ("old", "new", "control", "f_J", "margins")} | {
        "routes": {r: (result["routes"][r]["bound"], result["routes"][r]["verdict"]) for r in ("A", "B")}}


def test_local_and_ray_give_identical_cells(tmp_path, local, ray_executor):
    """The same grid and seeds give float-identical risks, margins and bounds on the local pool and on Ray."""
    stores = {name: Store(tmp_path / name) for name in ("local", "ray")}
    on_local = run_sweep(SPEC, local, stores["local"])
    on_ray = run_sweep(SPEC, ray_executor, stores["ray"])
    assert [c["key"] for c in on_local] == [c["key"] for c in on_ray] == [cell_key(c) for c in SPEC.cells()]
    for a, b in zip(on_local, on_ray):
        assert a["status"] == b["status"] == "done"
        assert _numbers(stores["local"], a) == _numbers(stores["ray"], b)
        assert {k: a[k] for k in CELL_COLUMNS if k not in ("worker", "run_id", "seconds")} == \
               {k: b[k] for k in CELL_COLUMNS if k not in ("worker", "run_id", "seconds")}


def test_cancelled_sweep_resumes_without_redoing_finished_cells(tmp_path, local):
    """After a cancel, a rerun with the same id runs exactly the unfinished cells and keeps the finished runs."""
    store, cancel = Store(tmp_path), threading.Event()
    first = run_sweep(SPEC, local, store, sweep_id="resume", cancel=cancel, on_result=lambda cell: cancel.set())
    assert 1 <= len(first) <= 2 < len(SPEC.cells())  # at most the cells already running when it stopped
    finished = {c["key"]: c["run_id"] for c in first if c["status"] == "done"}
    assert finished

    recording = Recording(local)
    second = run_sweep(SPEC, recording, store, sweep_id="resume")
    assert sorted(cell_key(c) for c in recording.configs) == sorted(
        cell_key(c) for c in SPEC.cells() if cell_key(c) not in finished)
    assert [c["status"] for c in second] == ["done"] * 4
    assert {c["key"]: c["run_id"] for c in second if c["key"] in finished} == finished
    done = [r for r in store.list_runs(status="done") if r["name"] == "sweep:resume"]
    assert len(done) == 4 and {r["source"] for r in done} == {"sweep"}

    for cell in second:  # the summary's best position: the corrected descent test (delta/K each), recomputed
        result = store.get_run(cell["run_id"])["result"]
        margins, K = result["margins"], len(result["margins"])
        z = statistics.NormalDist().inv_cdf(1 - result["config"]["delta"] / K)
        ucb = {m["position"]: m["slope_cross"] + z * m["slope_cross_se"] for m in margins}
        best = min(ucb, key=ucb.get)
        at = next(m for m in margins if m["position"] == best)
        assert (cell["best_position"], cell["best_kappa2_U_lcb"]) == (best, at["kappa2_U_lcb"])
        assert cell["best_observed"] == (ucb[best] < 0) and cell["best_delta_each"] == result["config"]["delta"] / K

    recording.configs.clear()  # a third run has nothing left to do
    assert [c["run_id"] for c in run_sweep(SPEC, recording, store, sweep_id="resume")] == \
           [c["run_id"] for c in second]
    assert recording.configs == []


def test_cancel_stops_a_running_cell(local):
    """A cancel reaches a cell already running in a worker process, which ends "cancelled" within seconds."""
    slow = SweepSpec(TINY.replace(n=1024, epochs=400), depths=[2], widths=[32])
    cancel = threading.Event()
    timer = threading.Timer(2.0, cancel.set)
    timer.start()
    start = time.monotonic()
    cells = run_sweep(slow, local, cancel=cancel)
    timer.cancel()
    assert [c["status"] for c in cells] == ["cancelled"]
    assert time.monotonic() - start < 10
    assert "cancelled at step" in cells[0]["message"]


def test_cancel_stops_a_running_ray_task(ray_executor):
    """On Ray a cancel stops the running tasks (reported "cancelled") and starts no further cell."""
    slow = SweepSpec(TINY.replace(n=1024, epochs=400), depths=[2], widths=[32, 16, 8])
    cancel = threading.Event()
    timer = threading.Timer(2.0, cancel.set)
    timer.start()
    cells = run_sweep(slow, ray_executor, cancel=cancel)
    timer.cancel()
    assert [c["status"] for c in cells] == ["cancelled", "cancelled"]  # 2 CPUs: the third never started


RAY_CANCELS = """
import json, sys, threading
sys.path.insert(0, "tests")
from resx.scale.sweep import RayExecutor, SweepSpec, run_sweep
from test_sweep import SPEC, TINY
executor = RayExecutor(num_cpus=2)
slow = SweepSpec(TINY.replace(n=1024, epochs=400), depths=[2], widths=[32, 16])
out = []
for delay in (0.05, 0.1, 0.2, 0.3, 0.5, 0.8):
    cancel = threading.Event()
    threading.Timer(delay, cancel.set).start()
    out.append([c["status"] + ": " + (c.get("message") or "") for c in run_sweep(slow, executor, cancel=cancel)])
out.append([c["status"] + ": " + (c.get("message") or "") for c in run_sweep(SPEC, executor)])
executor.shutdown()
print(json.dumps(out))
"""


def test_ray_cancels_as_cells_start_cancel_them_and_leave_the_workers_sound(ray_executor):
    """A driver started as `cmd &` is (SIGINT ignored) on a fresh Ray: cancels sent as the cells reach
    their workers cancel every cell (the workers get Python's SIGINT handler back; Ray drops a cancel
    that lands before a task starts, so it is sent again), and the next sweep on the workers they
    interrupted runs every cell to done (an interrupt inside a lazy import once left each later cell
    there failing: "module 'sympy' has no attribute 'logic'")."""
    # its own process: a fresh Ray (cold workers) and a driver that ignores SIGINT; the fixture is
    # only asked for its check that Ray is installed
    proc = subprocess.run([sys.executable, "-c", RAY_CANCELS], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.returncode == 0, proc.stderr[-3000:]
    *cancelled, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(status.startswith("cancelled") for cells in cancelled for status in cells), cancelled
    assert [status.split(":")[0] for status in after] == ["done"] * 4, after


@pytest.mark.parametrize("kwargs, field, value", [
    (dict(depths=[1, 0], widths=[8]), "depths", 0),
    (dict(depths=[1, 65], widths=[8]), "depths", 65),
    (dict(depths=[], widths=[8]), "depths", []),
    (dict(depths="1,2", widths=[8]), "depths", "1,2"),
    (dict(depths=[1, 1], widths=[8]), "depths", [1, 1]),
    (dict(depths=[1], widths=[8, 0]), "widths", 0),
    (dict(depths=[1], widths=[8], ns=[1]), "ns", 1),
    (dict(depths=[1], widths=[8], seeds=[-1]), "seeds", -1),
    (dict(depths=[4, 1], widths=[8], position_rule="fixed"), "position_rule", "fixed"),  # base position 3
    (dict(depths=[1], widths=[8], position_rule="best"), "position_rule", "best"),
])
def test_bad_grid_raises_config_error_naming_the_sweep_field(kwargs, field, value):
    """A grid with a value no cell allows raises ConfigError naming the sweep field and the bad value."""
    base = TINY.replace(depth=4, position=3)
    with pytest.raises(ConfigError) as info:
        SweepSpec(base, **kwargs)
    assert (info.value.field, info.value.value) == (field, value)


def test_cells_cover_the_grid_at_the_middle_position():
    """cells() is the full product, each at num_positions // 2, and to_dict/from_dict round-trips the spec."""
    spec = SweepSpec(TINY, depths=[1, 4], widths=[8, 16], ns=[128, 256], seeds=[0, 1])
    cells = spec.cells()
    assert len(cells) == 16 and len({cell_key(c) for c in cells}) == 16
    assert all(c.position == c.num_positions // 2 for c in cells)
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    assert cell_key(cells[0]) == cell_key(cells[0].to_dict()) != cell_key(cells[0].replace(seed=7))


def test_a_failing_cell_reports_failed_and_the_sweep_goes_on():
    """run_cell turns an exception inside the pipeline into a "failed" summary instead of raising."""
    payload = run_cell(TINY.replace(dataset="npz", npz_path="/nonexistent/x.npz").to_dict())
    assert payload["cell"]["status"] == "failed" and payload["cell"]["test_loss_new"] is None
    assert "npz" in payload["cell"]["message"].lower()


def _main(argv):
    """resx.cli.main with `sweep` registered (until cli.make_parser registers it itself)."""
    make_parser = cli.make_parser

    def with_sweep():
        parser = make_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "sweep" not in sub.choices:
            add_sweep_parser(sub)
        return parser
    cli.make_parser = with_sweep
    try:
        return cli.main(argv)
    finally:
        cli.make_parser = make_parser


def test_cli_csv_has_one_row_per_cell(tmp_path, monkeypatch, capsys):
    """`sweep` writes a CSV with one row per cell of the grid, and records each cell in the store."""
    monkeypatch.setenv("RESX_HOME", str(tmp_path / "home"))
    out = tmp_path / "cells.csv"
    code = _main(["sweep", *TINY_ARGS, "--depths", "1,2", "--widths", "8", "--seeds", "0,1",
                  "--workers", "2", "--out", str(out)])
    assert code == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and tuple(rows[0]) == CELL_COLUMNS
    assert sorted((r["depth"], r["seed"]) for r in rows) == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]
    assert {r["status"] for r in rows} == {"done"}
    assert len(Store(tmp_path / "home").list_runs(status="done")) == 4
    assert "4/4 cells finished" in capsys.readouterr().err


def test_cli_bad_list_exits_2_naming_the_flag(tmp_path, monkeypatch, capsys):
    """A malformed or out-of-range list prints one error line naming the flag or field, exit code 2."""
    monkeypatch.setenv("RESX_HOME", str(tmp_path))
    assert _main(["sweep", "--depths", "1,x", "--widths", "8"]) == 2
    assert "--depths" in capsys.readouterr().err
    assert _main(["sweep", "--depths", "1", "--widths", "8,99999"]) == 2
    assert "widths=99999" in capsys.readouterr().err
    assert _main(["sweep", "--depths", "1", "--widths", "8", "--sweep-id", "a b"]) == 2
    assert "sweep_id" in capsys.readouterr().err
