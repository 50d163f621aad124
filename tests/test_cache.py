"""Identical runs computed once (resx/runs/cache.py, JobManager.request): the content address
changes with every field, the seed and the code; a second identical request attaches to the
queued/running run or opens the done one; "run again" computes anew; failures are not reused."""
import threading
import time

import pytest

from resx.core.config import RunConfig
from resx.core.records import Record
from resx.runs.cache import code_version, run_key
from resx.runs.jobs import JobManager
from resx.runs.store import SCHEMA_VERSION, Store

CONFIG = RunConfig()


def counting_runner(calls, gate=None, fail=False):
    def run(config, sink, cancel, out_dir):
        calls.append(config.seed)
        while gate is not None and not gate.is_set() and not cancel.is_set():
            time.sleep(0.005)
        if fail:
            raise ValueError("boom")
        sink(Record("base", 0, "S", "loss", 1.0 + config.seed))
        return {"seed": config.seed}
    return run


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "home")
    yield s
    s.close()


def test_key_depends_on_every_field_the_seed_and_the_code():
    """Equal configurations give one key whatever their field order; any changed field, seed or code version gives another."""
    d = CONFIG.to_dict()
    assert run_key(d) == run_key(dict(reversed(list(d.items()))))
    keys = {run_key(d)}
    for field, value in (("seed", d["seed"] + 1), ("lr", d["lr"] * 2), ("width", d["width"] + 1),
                         ("dataset", "shapes")):
        keys.add(run_key({**d, field: value}))
    keys.add(run_key(d, version="0" * 16))
    assert len(keys) == 6
    assert len(code_version()) == 16 and code_version() == code_version()


def test_second_identical_request_attaches_to_the_running_job(store):
    """While the first is running, an identical request returns its id (no second computation) and is counted as a hit."""
    calls, gate = [], threading.Event()
    m = JobManager(store, counting_runner(calls, gate), workers=2, flush_seconds=0.05)
    try:
        first = m.request(CONFIG)
        second = m.request(CONFIG)
        other = m.request(CONFIG.replace(seed=CONFIG.seed + 1))
        assert not first.cached and second.cached and second.run_id == first.run_id == second.same_as
        assert not other.cached and other.run_id != first.run_id
        gate.set()
        assert m.wait(first.run_id, 10).status == "done"
        assert m.wait(other.run_id, 10).status == "done"
        third = m.request(CONFIG)  # done now: opens the stored result
        assert third.cached and third.run_id == first.run_id
        assert sorted(calls) == sorted([CONFIG.seed, CONFIG.seed + 1])
        assert store.cache_hits() == {first.run_id: 2}
    finally:
        m.shutdown(timeout=5)


def test_concurrent_identical_requests_compute_once(store):
    """Ten threads requesting one configuration at once get one run and one computation."""
    calls = []
    m = JobManager(store, counting_runner(calls), workers=2, flush_seconds=0.05)
    try:
        out, start = [], threading.Barrier(10)

        def ask():
            start.wait()
            out.append(m.request(CONFIG).run_id)
        threads = [threading.Thread(target=ask) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(out)) == 1
        m.wait(out[0], 10)
        assert calls == [CONFIG.seed]
    finally:
        m.shutdown(timeout=5)


def test_run_again_and_failed_runs_compute_anew(store):
    """reuse=False makes a new run; a failed run is never served from the cache."""
    calls = []
    m = JobManager(store, counting_runner(calls, fail=True), workers=1, flush_seconds=0.05)
    try:
        first = m.request(CONFIG)
        assert m.wait(first.run_id, 10).status == "failed"
        second = m.request(CONFIG)
        assert not second.cached and second.run_id != first.run_id
        m.wait(second.run_id, 10)
        again = m.request(CONFIG, reuse=False)
        assert not again.cached and again.run_id not in (first.run_id, second.run_id)
        m.wait(again.run_id, 10)
        assert len(calls) == 3
    finally:
        m.shutdown(timeout=5)


def test_version_1_store_migrates_and_keeps_its_runs(tmp_path):
    """A version-1 store opens at the new version with its runs intact; they have no cache key and are never reused."""
    import sqlite3

    from resx.runs.store import _V1
    home = tmp_path / "old"
    home.mkdir()
    conn = sqlite3.connect(home / "resx.db")
    conn.executescript(_V1 + "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                       "INSERT INTO meta VALUES ('schema_version', '1');"
                       "INSERT INTO runs (id, status, config, source, name, created) "
                       "VALUES ('r1', 'done', '{}', 'cli', '', '2026-01-01');")
    conn.close()
    with Store(home) as s:
        assert s.schema_version() == SCHEMA_VERSION >= 2
        assert s.get_run("r1")["status"] == "done" and s.cache_key("r1") is None
        assert s.find_reusable(run_key(CONFIG.to_dict())) is None
