"""Run history in SQLite: concurrency, recovery, export, schema (resx/runs/store.py)."""
import csv
import hashlib
import json
import math
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from resx.core.records import Record
from resx.runs.store import CSV_COLUMNS, SCHEMA_VERSION, RecordWriter, Store, default_home


def _records(n, phase="base"):
    return [Record(phase, i, "S" if i % 2 else "T", "loss", 1.0 / (i + 1),
                   stderr=None if i % 3 else 0.01 * i, position=None if i % 4 else i % 5)
            for i in range(n)]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("RESX_HOME", str(tmp_path / "home"))
    s = Store()
    yield s
    s.close()


def test_default_home_reads_env(tmp_path, monkeypatch):
    """RESX_HOME picks the folder, and Store() creates it with the database inside."""
    monkeypatch.setenv("RESX_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    with Store() as s:
        assert s.path == tmp_path / "h" / "resx.db" and s.path.exists()


def test_concurrent_writer_and_readers(store):
    """A writer thread adding batches while three reader threads read never errors, readers only
    ever see whole batches in growing counts, and the final count is exact."""
    run_id = store.create_run({"depth": 4})
    batches, size = 40, 25
    done, errors, seen = threading.Event(), [], [[] for _ in range(3)]

    def write():
        try:
            for b in range(batches):
                store.add_records(run_id, _records(size, phase=f"b{b}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    def read(k):
        try:
            while not done.is_set():
                seen[k].append(len(store.records(run_id)))
                store.list_runs()
                store.get_run(run_id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert len(store.records(run_id)) == batches * size
    for counts in seen:
        assert counts == sorted(counts) and all(c % size == 0 for c in counts)


def test_second_process_reads_while_writing(store):
    """Another process reads the run without waiting while this one holds an exclusive write
    transaction (true in WAL mode only; a rollback journal would block the reader)."""
    run_id = store.create_run({"depth": 2})
    store.add_records(run_id, _records(10))
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("INSERT INTO metrics VALUES (?, 'base', 99, 'S', 'loss', 1.0, NULL, NULL)", (run_id,))
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0); "
            "print(c.execute('SELECT COUNT(*) FROM metrics WHERE run_id = ?', (sys.argv[2],)).fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", code, str(store.path), run_id],
                         capture_output=True, text=True, timeout=60)
    conn.execute("COMMIT")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10"  # the uncommitted row is invisible, and nothing blocked
    assert len(store.records(run_id)) == 11


def test_recover_interrupted(tmp_path):
    """A run left "running" or "queued" by a closed Store or a dead process becomes "interrupted";
    a run owned by a live Store is left alone."""
    home = tmp_path / "home"
    a = Store(home)
    left_running = a.create_run({"k": 1})
    a.set_status(left_running, "running")
    left_queued = a.create_run({"k": 2})
    finished = a.create_run({"k": 3})
    a.set_status(finished, "done")
    a.close()

    live = Store(home)
    still_running = live.create_run({"k": 4})
    live.set_status(still_running, "running")

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    by_dead_pid = live.create_run({"k": 5})
    live.set_status(by_dead_pid, "running")
    with sqlite3.connect(live.path) as conn:
        conn.execute("UPDATE runs SET owner = ? WHERE id = ?",
                     (f"{live.owner.split('|')[0]}|{dead}|x", by_dead_pid))

    b = Store(home)
    assert b.recover_interrupted() == 3
    status = {r["id"]: r["status"] for r in b.list_runs()}
    assert status[left_running] == status[left_queued] == status[by_dead_pid] == "interrupted"
    assert status[finished] == "done" and status[still_running] == "running"
    run = b.get_run(left_running)
    assert run["finished"] and "running" in run["message"]
    assert b.recover_interrupted() == 0
    live.close(); b.close()


def test_status_timestamps_and_listing(store):
    """Statuses stamp started/finished, list_runs is newest first and filters by status, and a bad
    status is refused by name."""
    ids = [store.create_run({"i": i}, source="app", name=f"r{i}") for i in range(3)]
    store.set_status(ids[0], "running")
    store.set_status(ids[0], "failed", "ValueError: boom")
    run = store.get_run(ids[0])
    assert run["status"] == "failed" and run["message"] == "ValueError: boom"
    assert run["created"] <= run["started"] <= run["finished"] and run["created"].endswith("+00:00")
    assert [r["id"] for r in store.list_runs()] == ids[::-1]
    assert [r["id"] for r in store.list_runs(status="queued")] == ids[:0:-1]
    assert len(store.list_runs(limit=2)) == 2
    assert run["config"] == {"i": 0} and run["source"] == "app" and run["name"] == "r0"
    with pytest.raises(ValueError, match="status='finished'"):
        store.set_status(ids[1], "finished")


def test_unknown_run_raises_keyerror(store):
    """Every per-run call on an unknown id raises KeyError naming the id (get/delete answer None/False)."""
    for call in (lambda: store.set_status("nope", "done"), lambda: store.add_records("nope", _records(1)),
                 lambda: store.records("nope"), lambda: store.set_result("nope", {}),
                 lambda: store.artifacts("nope"), lambda: store.export_json("nope", "x.json")):
        with pytest.raises(KeyError, match="nope"):
            call()
    assert store.get_run("nope") is None and store.delete_run("nope") is False


def test_export_json_round_trip(store, tmp_path):
    """Exported JSON loads back to the same records, config and result."""
    config = {"depth": 4, "lr": 3e-3, "dataset": "teacher"}
    run_id = store.create_run(config)
    records = _records(17) + [Record("new", 3, "T", "loss", math.inf)]
    store.add_records(run_id, records)
    store.set_result(run_id, {"route_a": {"holds": True, "terms": [0.1, 0.2]}})
    path = tmp_path / "run.json"
    store.export_json(run_id, path)
    doc = json.loads(path.read_text())
    assert doc["id"] == run_id and doc["schema_version"] == SCHEMA_VERSION
    assert doc["config"] == config
    assert doc["result"] == {"route_a": {"holds": True, "terms": [0.1, 0.2]}}
    assert [Record(**m) for m in doc["metrics"]] == records


def test_nan_value_survives(store):
    """A NaN loss (a diverged run) comes back as NaN, not None (SQLite stores NaN as NULL)."""
    run_id = store.create_run({})
    store.add_records(run_id, [Record("base", 5, "S", "loss", math.nan)])
    (r,) = store.records(run_id)
    assert math.isnan(r.value) and r.stderr is None


def test_export_csv(store, tmp_path):
    """The CSV has the long-format header and one row per record, with None as an empty cell."""
    run_id = store.create_run({})
    store.add_records(run_id, _records(13))
    path = tmp_path / "m.csv"
    store.export_csv(run_id, path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS == ("phase", "step", "split", "name", "value", "stderr", "position")
    assert len(rows) == 1 + 13
    assert rows[2][5] == "" and float(rows[4][4]) == pytest.approx(1 / 4)


def test_metrics_frame(store):
    """metrics_frame is the long format: one row per record, the record's columns and values."""
    run_id = store.create_run({})
    store.add_records(run_id, _records(9))
    frame = store.metrics_frame(run_id)
    assert list(frame.columns) == list(CSV_COLUMNS) and len(frame) == 9
    assert frame["value"].tolist() == pytest.approx([1 / (i + 1) for i in range(9)])
    assert frame["position"].isna().sum() == 9 - 3  # positions only at steps 0, 4, 8


def test_delete_removes_rows_not_files(store, tmp_path):
    """delete_run drops the run, its metrics and artifact rows, leaving other runs and the files."""
    keep, gone = store.create_run({}), store.create_run({})
    for run_id in (keep, gone):
        store.add_records(run_id, _records(5))
    f = tmp_path / "fig.html"
    f.write_text("<html></html>")
    store.add_artifact(gone, "figure", f)
    assert store.delete_run(gone) is True
    assert store.get_run(gone) is None and f.exists()
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics WHERE run_id = ?", (gone,)).fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM artifacts WHERE run_id = ?", (gone,)).fetchone()[0] == 0
    assert len(store.records(keep)) == 5


def test_artifact_hash(store, tmp_path):
    """An artifact is stored with its resolved path, size and the file's sha256."""
    run_id = store.create_run({})
    f = tmp_path / "result.json"
    f.write_bytes(b'{"a": 1}')
    store.add_artifact(run_id, "result", f)
    (a,) = store.artifacts(run_id)
    assert a["sha256"] == hashlib.sha256(b'{"a": 1}').hexdigest() and a["size"] == 8
    assert a["path"] == str(f.resolve()) and a["name"] == "result"


def test_schema_version_and_wal(store):
    """The meta table records the schema version and the database is in WAL mode."""
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_version() == SCHEMA_VERSION


def test_newer_schema_refused(tmp_path):
    """A database written by a newer resx is refused with a message naming both versions."""
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / "resx.db") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(RuntimeError, match=f"version {SCHEMA_VERSION + 1}"):
        Store(tmp_path)


def test_record_writer_flushes_by_time(store):
    """Records given to a RecordWriter are visible to a second connection within flush_seconds
    plus a margin, before close(); close() writes the rest and stops its thread."""
    run_id = store.create_run({})
    other = Store(store.home)
    writer = RecordWriter(store, run_id, flush_seconds=0.2)
    for r in _records(7):
        writer(r)
    t0 = time.monotonic()
    while len(other.records(run_id)) < 7:
        assert time.monotonic() - t0 < 0.2 + 1.0, "records not flushed in time"
        time.sleep(0.02)
    writer(Record("new", 0, "T", "acc", 0.5))
    writer.close()
    assert not writer._thread.is_alive()
    assert len(other.records(run_id)) == 8
    with pytest.raises(RuntimeError):
        writer(Record("new", 1, "T", "acc", 0.5))
    other.close()
