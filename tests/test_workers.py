"""The pipeline in worker processes (resx/runs/workers.py): same numbers as in-process, records
through the queue, cancel within a batch, a dead worker fails its job and is replaced, and a
worker whose server is killed with -9 exits."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from resx.core.config import RunConfig
from resx.runs.jobs import JobManager
from resx.runs.pipeline import run_pipeline
from resx.runs.store import Store
from resx.runs.workers import WorkerPool

TINY = RunConfig(n=200, n_probe=100, n_test=100, n_pop=512, epochs=2, finetune_epochs=1, width=8, depth=2,
                 position=1)
LONG = TINY.replace(epochs=400)  # minutes: only ever cancelled


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(1, torch_threads=1)
    yield p
    p.close()


@pytest.fixture
def manager(tmp_path, pool):
    store = Store(tmp_path / "home")
    m = JobManager(store, pool, workers=1, torch_threads=1, flush_seconds=0.05)
    m.runner = pool
    yield m
    m.runner = None  # the module's pool outlives each manager (closed by its own fixture)
    m.shutdown(timeout=30)
    store.close()


def test_worker_matches_in_process_run(manager, tmp_path):
    """A run in a worker process gives the in-process pipeline's numbers and records exactly (same seed)."""
    run_id = manager.submit(TINY, source="test")
    snap = manager.wait(run_id, timeout=300)
    assert snap.status == "done", snap.message
    here = []
    expected = run_pipeline(TINY, here.append, None, tmp_path / "here")
    assert snap.result["old"] == expected["old"] and snap.result["new"] == expected["new"]
    assert snap.result["terms"] == expected["terms"]
    stored = manager.store.records(run_id)
    assert [(r.phase, r.step, r.name, r.value) for r in stored] == [(r.phase, r.step, r.name, r.value) for r in here]
    assert {a["name"] for a in manager.store.artifacts(run_id)} >= {"result.json", "old.pt", "new.pt"}


def test_cancel_reaches_the_worker_within_a_batch(manager):
    """Cancelling a running job in a worker ends it "cancelled" within seconds, with its records kept."""
    run_id = manager.submit(LONG, source="test")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        snap = manager.snapshot(run_id)
        if any(r.name == "loss" for r in snap.records):
            break
        time.sleep(0.1)
    else:
        pytest.fail("no loss record from the worker within 120 s")
    pressed = time.monotonic()
    assert manager.cancel(run_id)
    snap = manager.wait(run_id, timeout=30)
    took = time.monotonic() - pressed
    assert snap.status == "cancelled", snap.message
    assert took < 5, f"cancel took {took:.1f} s"
    assert any(r.name == "loss" for r in manager.store.records(run_id))


def test_dead_worker_fails_its_job_and_is_replaced(manager):
    """A worker killed mid-run fails that job with its exit code; the next job runs on a fresh worker."""
    run_id = manager.submit(LONG, source="test")
    deadline = time.monotonic() + 120
    while manager.snapshot(run_id).status != "running" or not manager.snapshot(run_id).records:
        assert time.monotonic() < deadline, "the long run never started"
        time.sleep(0.1)
    (pid,) = manager.runner.pids()
    os.kill(pid, signal.SIGKILL)
    snap = manager.wait(run_id, timeout=30)
    assert snap.status == "failed" and "exit code -9" in snap.message, snap.message
    again = manager.wait(manager.submit(TINY, source="test"), timeout=300)
    assert again.status == "done", again.message
    assert manager.runner.pids() != [pid]


def test_worker_exits_when_its_server_is_killed(tmp_path):
    """kill -9 of the process that owns the pool leaves no worker behind: each exits within seconds."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from resx.runs.workers import WorkerPool
        pool = WorkerPool(2)
        time.sleep(1)
        print(" ".join(map(str, pool.pids())), flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 30
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _alive(p)]
            time.sleep(0.2)
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False



def test_workers_run_at_lower_priority_than_the_server(pool):
    """Each worker lowers its own priority by WORKER_NICE (the kernel's niceness of its pid, read
    from outside), so a page's script run goes first when both want a core."""
    from resx.runs.workers import WORKER_NICE
    deadline = time.monotonic() + 60
    (pid,) = pool.pids()
    while os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0):
        assert time.monotonic() < deadline, "the worker never lowered its priority"
        time.sleep(0.1)
    assert os.getpriority(os.PRIO_PROCESS, pid) - os.getpriority(os.PRIO_PROCESS, 0) == WORKER_NICE


@pytest.mark.parametrize("raw", ["-1", "20", "ten", "1.5"])
def test_a_bad_worker_niceness_is_refused_with_what_is_allowed(monkeypatch, raw):
    from resx.runs.workers import worker_nice
    monkeypatch.setenv("RESX_WORKER_NICE", raw)
    with pytest.raises(ValueError, match=r"RESX_WORKER_NICE=.*an integer from 0"):
        worker_nice()


def test_worker_niceness_from_the_environment(monkeypatch):
    from resx.runs.workers import WORKER_NICE, worker_nice
    monkeypatch.setenv("RESX_WORKER_NICE", "0")
    assert worker_nice() == 0
    monkeypatch.delenv("RESX_WORKER_NICE")
    assert worker_nice() == WORKER_NICE


def test_release_heap_returns_a_freed_heap_to_the_system():
    """~200 MB of 64 KB tensors (below glibc's mmap threshold: kept mapped once freed) stays resident
    after `del`; release_heap gives most of it back. Run in a fresh process, so that this test's
    RSS is not another test's."""
    code = textwrap.dedent("""
        import gc, torch
        from resx.runs.workers import release_heap
        rss = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
        base = rss()
        xs = [torch.ones(16000) for _ in range(3200)]
        grown = rss()
        del xs
        gc.collect()
        freed = rss()
        release_heap()
        print(base, grown, freed, rss())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    base, grown, freed, released = map(float, out.stdout.split())
    assert grown - base > 150                 # the tensors were resident
    assert freed - base > 150                 # and stayed so after del: the case release_heap is for
    assert released - base < 50, (base, grown, freed, released)
