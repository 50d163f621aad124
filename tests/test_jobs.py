"""The job manager: queueing, cancellation, failure, bounded concurrency, shutdown (resx/runs/jobs.py)."""
import threading
import time

import pytest

from resx.core.config import RunConfig
from resx.runs.jobs import Cancelled, JobManager, default_workers
from resx.core.records import Record
from resx.runs.store import Store

CONFIG = RunConfig()


def loop_runner(batches=10, sleep=0.01, gate=None, started=None, concurrency=None):
    """A fake pipeline: per batch, check the event, emit a loss and a progress record, sleep."""
    def run(config, sink, cancel, out_dir):
        assert out_dir.is_dir()
        if started is not None:
            started.append(config.seed)
        if concurrency is not None:
            concurrency.enter()
        try:
            if gate is not None:
                while not gate.is_set():
                    if cancel.is_set():
                        raise Cancelled
                    time.sleep(0.005)
            for i in range(batches):
                if cancel.is_set():
                    raise Cancelled
                sink(Record("base", i, "S", "loss", 1.0 / (i + 1)))
                sink(Record("base", i, "", "progress", (i + 1) / batches))
                time.sleep(sleep)
            (out_dir / "result.json").write_text('{"ok": true}')
            return {"final_loss": 1.0 / batches, "seed": config.seed}
        finally:
            if concurrency is not None:
                concurrency.leave()
    return run


class Counter:
    def __init__(self):
        self.lock, self.now, self.peak = threading.Lock(), 0, 0

    def enter(self):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self):
        with self.lock:
            self.now -= 1


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("RESX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESX_MAX_JOBS", raising=False)
    s = Store()
    yield s
    s.close()


@pytest.fixture
def make(store):
    managers = []

    def build(runner, workers=1):
        m = JobManager(store, runner, workers=workers, flush_seconds=0.05)
        managers.append(m)
        return m
    yield build
    for m in managers:
        assert m.shutdown(timeout=5)


def test_submit_runs_to_done(make, store):
    """A submitted job ends "done" with its result, all its records and its files in the store, and progress 1."""
    m = make(loop_runner(batches=5))
    run_id = m.submit(CONFIG)
    snap = m.wait(run_id, timeout=5)
    assert snap.status == "done" and snap.progress == 1.0 and snap.error is None
    assert snap.result == {"final_loss": 0.2, "seed": 0}
    assert [r.step for r in snap.records] == list(range(5))  # progress records are not metrics
    run = store.get_run(run_id)
    assert run["status"] == "done" and run["result"] == snap.result and run["config"] == CONFIG.to_dict()
    assert run["source"] == "app" and run["started"] and run["finished"]
    assert len(store.records(run_id)) == 10  # loss + progress per batch, all stored
    (artifact,) = store.artifacts(run_id)  # files the runner left in out_dir are recorded
    assert artifact["name"] == "result.json"
    assert artifact["path"] == str((store.home / "runs" / run_id / "result.json").resolve())


def test_snapshot_from_store_when_not_in_memory(make, store):
    """A finished run another manager never held is snapshotted from the store with the same content."""
    m = make(loop_runner(batches=3))
    run_id = m.submit(CONFIG)
    live = m.wait(run_id, timeout=5)
    fresh = make(loop_runner()).snapshot(run_id)
    assert (fresh.status, fresh.records, fresh.result, fresh.progress) == (
        live.status, live.records, live.result, live.progress)
    assert (fresh.phase, fresh.step) == ("base", 2)
    assert m.snapshot("no-such-run") is None


def test_fifo_order_and_queue_positions(make):
    """With one worker, jobs start in submission order and report 1-based queue positions."""
    gate, started = threading.Event(), []
    m = make(loop_runner(batches=1, gate=gate, started=started))
    ids = [m.submit(CONFIG.replace(seed=k)) for k in range(4)]
    t0 = time.monotonic()
    while m.snapshot(ids[0]).status != "running":
        assert time.monotonic() - t0 < 5
        time.sleep(0.005)
    assert [m.queue_position(i) for i in ids] == [None, 1, 2, 3]
    assert m.snapshot(ids[2]).queue_position == 2 and m.snapshot(ids[2]).status == "queued"
    assert m.active() == ids
    gate.set()
    for i in ids:
        assert m.wait(i, timeout=5).status == "done"
    assert started == [0, 1, 2, 3]
    assert m.queue_position(ids[3]) is None and m.active() == []


def test_cancel_running_job(make, store):
    """Cancelling a running job ends it "cancelled" within 1.5 s, and its records so far stay stored."""
    m = make(loop_runner(batches=100_000))
    run_id = m.submit(CONFIG)
    t0 = time.monotonic()
    while len(m.snapshot(run_id).records) < 5:
        assert time.monotonic() - t0 < 5
        time.sleep(0.005)
    t_cancel = time.monotonic()
    assert m.cancel(run_id) is True
    while m.snapshot(run_id).status == "running":
        assert time.monotonic() - t_cancel < 1.5
        time.sleep(0.005)
    assert time.monotonic() - t_cancel < 1.5
    snap = m.snapshot(run_id)
    assert snap.status == "cancelled" and "base" in snap.message
    run = store.get_run(run_id)
    assert run["status"] == "cancelled" and run["finished"]
    stored = [r for r in store.records(run_id) if r.name == "loss"]
    assert len(stored) == len(snap.records) >= 5
    assert m.cancel(run_id) is False  # already finished


def test_cancel_queued_job(make, store):
    """A queued job cancelled before it starts is removed from the queue, never run, and the
    jobs behind it move up and still run."""
    gate, started = threading.Event(), []
    m = make(loop_runner(batches=1, gate=gate, started=started))
    ids = [m.submit(CONFIG.replace(seed=k)) for k in range(3)]
    assert m.cancel(ids[1]) is True
    assert m.snapshot(ids[1]).status == "cancelled" and store.get_run(ids[1])["status"] == "cancelled"
    assert m.queue_position(ids[2]) in (1, 2)  # 1 once job 0 has left the queue
    gate.set()
    assert m.wait(ids[2], timeout=5).status == "done"
    assert started == [0, 2]
    assert store.records(ids[1]) == []


def test_failure_surfaces_message(make, store):
    """A runner raising ValueError ends "failed" with the exception type and message, in the
    snapshot and in the store; the worker lives on for the next job."""
    def boom(config, sink, cancel, out_dir):
        sink(Record("base", 0, "S", "loss", 2.3))
        raise ValueError("learning rate 10 is too large")
    m = make(boom)
    run_id = m.submit(CONFIG)
    snap = m.wait(run_id, timeout=5)
    assert snap.status == "failed" and snap.error == "ValueError: learning rate 10 is too large"
    run = store.get_run(run_id)
    assert run["status"] == "failed" and run["message"] == snap.error and run["result"] is None
    assert len(store.records(run_id)) == 1
    assert m.wait(m.submit(CONFIG), timeout=5).status == "failed"  # the worker survived


def test_diverged_result(make, store):
    """A runner returning {"status": "diverged"} ends "diverged" with its message and result stored."""
    def diverge(config, sink, cancel, out_dir):
        sink(Record("base", 3, "S", "loss", float("nan")))
        return {"status": "diverged", "message": "loss nan at step 3", "step": 3}
    m = make(diverge)
    run_id = m.submit(CONFIG)
    snap = m.wait(run_id, timeout=5)
    assert snap.status == "diverged" and snap.message == "loss nan at step 3" and snap.error is None
    run = store.get_run(run_id)
    assert run["status"] == "diverged" and run["result"]["step"] == 3


def test_bounded_concurrency(make):
    """With workers=2 and 6 jobs, exactly 2 run at once at the peak, never more."""
    counter = Counter()
    m = make(loop_runner(batches=5, concurrency=counter), workers=2)
    ids = [m.submit(CONFIG) for _ in range(6)]
    assert all(m.wait(i, timeout=10).status == "done" for i in ids)
    assert counter.peak == 2 and counter.now == 0


def test_shutdown_joins_every_thread(store):
    """After shutdown no worker or writer thread is left, and jobs it stopped end "interrupted"."""
    before = set(threading.enumerate())
    m = JobManager(store, loop_runner(batches=100_000), workers=2, flush_seconds=0.05)
    ids = [m.submit(CONFIG) for _ in range(3)]
    t0 = time.monotonic()
    while m.snapshot(ids[0]).status != "running" or m.snapshot(ids[1]).status != "running":
        assert time.monotonic() - t0 < 5
        time.sleep(0.005)
    assert m.shutdown(timeout=5) is True
    assert set(threading.enumerate()) == before
    assert [store.get_run(i)["status"] for i in ids] == ["interrupted"] * 3
    with pytest.raises(RuntimeError, match="shut down"):
        m.submit(CONFIG)


def test_worker_cap_from_env(store, monkeypatch):
    """RESX_MAX_JOBS caps the workers (default and asked for); a bad value is refused by name."""
    monkeypatch.setenv("RESX_MAX_JOBS", "1")
    assert default_workers() == 1
    m = JobManager(store, loop_runner(), workers=4)
    try:
        assert m.workers == 1 and m.torch_threads >= 1
    finally:
        m.shutdown()
    monkeypatch.setenv("RESX_MAX_JOBS", "0")
    with pytest.raises(ValueError, match="RESX_MAX_JOBS"):
        default_workers()
