"""Run history in SQLite (design.md "Runs, jobs and the store").

One database file, `<home>/resx.db`, in WAL mode so that readers (the app's pages, a second
process, the command line) never wait for the writer. Tables: `meta` (schema version), `runs`
(one row per run: status, config and result as JSON), `metrics` (records in long format) and
`artifacts` (files a run wrote, with their sha256); since version 2, `cache_hits` (a request
served by an existing identical run, cache.py) with `runs.cache_key`; since version 3, `classes`,
`class_members` and `class_runs` (a class code groups runs, with each student's prediction; it grants
nothing); since version 4, `classes.key_hash` (the SHA-256 of the class's teacher key: closing it,
exporting it and seeing its students' names need the key). Timestamps are ISO-8601 UTC strings.

Threads: every thread gets its own connection (closed when the thread ends or on `close()`);
writes within one process are serialised by a lock and run in `BEGIN IMMEDIATE` transactions, so
they never deadlock on a stale read snapshot; across processes `busy_timeout` waits instead.

A run that a process leaves `running` or `queued` when it dies is found by `recover_interrupted`:
each run remembers its owner (host, pid, and a token of the `Store` that created it), and a run
whose owner is gone becomes `interrupted`. Runs owned by a live process are left alone, so the
app starting up does not interrupt a run the command line is doing against the same store.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import socket
import sqlite3
import threading
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ..core.records import Record

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
STATUSES = ("queued", "running", "done", "failed", "cancelled", "diverged", "interrupted")
ACTIVE_STATUSES = ("queued", "running")
FINISHED_STATUSES = ("done", "failed", "cancelled", "diverged", "interrupted")
CSV_COLUMNS = ("phase", "step", "split", "name", "value", "stderr", "position")
BUSY_TIMEOUT_MS = 10_000

_V1 = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, message TEXT, config TEXT NOT NULL, result TEXT,
    source TEXT NOT NULL, name TEXT NOT NULL, owner TEXT,
    created TEXT NOT NULL, started TEXT, finished TEXT);
CREATE INDEX runs_created ON runs(created);
CREATE INDEX runs_status ON runs(status);
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs(id), phase TEXT NOT NULL, step INTEGER NOT NULL,
    split TEXT NOT NULL, name TEXT NOT NULL, value REAL, stderr REAL, position INTEGER);
CREATE INDEX metrics_run ON metrics(run_id);
CREATE TABLE artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id), name TEXT NOT NULL, path TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (run_id, name));
"""
# version 2: the content address of a run (resx.runs.cache.run_key) and the requests it served
_V2 = """
ALTER TABLE runs ADD COLUMN cache_key TEXT;
CREATE INDEX runs_cache_key ON runs(cache_key);
CREATE TABLE cache_hits (
    run_id TEXT NOT NULL REFERENCES runs(id), source TEXT NOT NULL, created TEXT NOT NULL);
CREATE INDEX cache_hits_run ON cache_hits(run_id);
"""
# Classes (issue 13): a class code groups runs and grants nothing. `classes` knows whether a class is
# closed; `class_members` fixes each student's join order (their assignment: a width, an n, a seed);
# `class_runs` tags a run with its class, its student, the lesson step and the student's prediction.
_V3 = """
CREATE TABLE classes (code TEXT PRIMARY KEY, created TEXT NOT NULL, closed TEXT);
CREATE TABLE class_members (
    code TEXT NOT NULL REFERENCES classes(code), student TEXT NOT NULL, joined TEXT NOT NULL,
    PRIMARY KEY (code, student));
CREATE TABLE class_runs (
    run_id TEXT NOT NULL REFERENCES runs(id), code TEXT NOT NULL REFERENCES classes(code),
    student TEXT NOT NULL, step TEXT NOT NULL, prediction TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (run_id, code, step));
CREATE INDEX class_runs_code ON class_runs(code);
"""
# version 4 (issue 28): a class's teacher key, stored as its SHA-256 (the key is 128 random bits, so an
# unsalted hash is as strong as a salted one); NULL for a class no teacher has taken yet.
_V4 = """
ALTER TABLE classes ADD COLUMN key_hash TEXT;
"""
# Migration k takes the schema from version k-1 to k; append, never edit a released one.
MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3, 4: _V4}

# Tokens of the Store objects open in this process; a run owned by this pid under a token not
# in here was left behind by a Store that has been closed.
_LIVE_TOKENS: set[str] = set()


def default_home() -> Path:
    """The store's folder: $RESX_HOME, else ~/.resx."""
    env = os.environ.get("RESX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".resx"


def utc_now() -> str:
    """Now as an ISO-8601 UTC string with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION, one migration per transaction; returns the version."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"the store's schema is version {version}, newer than this resx "
                           f"understands ({SCHEMA_VERSION}); upgrade resx or use another RESX_HOME")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-read inside the write lock: another process may have migrated meanwhile
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if (int(row[0]) if row else 0) >= target:
                conn.execute("COMMIT")
                continue
            for statement in MIGRATIONS[target].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(target),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


class _Holder:
    """Owns one thread's connection; dropped (and the connection closed) when the thread ends."""
    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __del__(self):
        try:
            self.conn.close()
        except Exception:  # interpreter shutdown
            pass


class Store:
    def __init__(self, home: Path | str | None = None):
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "resx.db"
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._write_lock = threading.Lock()
        self._closed = False
        self._token = secrets.token_hex(4)
        self.owner = f"{socket.gethostname()}|{os.getpid()}|{self._token}"
        _LIVE_TOKENS.add(self._token)
        weakref.finalize(self, _LIVE_TOKENS.discard, self._token)
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("SQLite refused WAL mode for %s (got %r); readers may wait for writers",
                        self.path, mode)
        migrate(conn)

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"the store at {self.path} is closed")
        holder = getattr(self._local, "holder", None)
        if holder is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
            conn.execute("PRAGMA foreign_keys=ON")
            holder = self._local.holder = _Holder(conn)
            self._holders.add(holder)
        return holder.conn

    def _write(self, fn):
        """Run fn(conn) in one immediate transaction, serialised within this process."""
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._conn().execute(sql, args).fetchall()

    def _require(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise KeyError(f"no run with id {run_id!r} in the store at {self.path}")

    def close(self) -> None:
        """Close every connection this Store opened; later calls raise RuntimeError."""
        self._closed = True
        _LIVE_TOKENS.discard(self._token)
        for holder in list(self._holders):
            holder.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs --------------------------------------------------------------------------------
    def create_run(self, config: dict, source: str = "cli", name: str = "", cache_key: str | None = None) -> str:
        """A new run in status "queued"; returns its id, e.g. "20261129-003412-ab12cd" (UTC).
        `cache_key`: its content address (resx.runs.cache.run_key), for `find_reusable`."""
        config_json = _dumps(config)
        now = datetime.now(timezone.utc)
        for _ in range(10):
            run_id = f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
            try:
                self._write(lambda c: c.execute(
                    "INSERT INTO runs (id, status, config, source, name, owner, created, cache_key) "
                    "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                    (run_id, config_json, source, name, self.owner, now.isoformat(timespec="microseconds"),
                     cache_key)))
                return run_id
            except sqlite3.IntegrityError:
                continue
        raise RuntimeError("could not draw a fresh run id")  # 10 collisions of 24 random bits

    def set_status(self, run_id: str, status: str, message: str | None = None) -> None:
        """Move a run to `status`; "running" stamps started, a finished status stamps finished."""
        if status not in STATUSES:
            raise ValueError(f"status={status!r} is not allowed: one of {list(STATUSES)}")
        sets, args = ["status = ?"], [status]
        if message is not None:
            sets.append("message = ?"); args.append(message)
        if status == "running":
            sets += ["started = ?", "owner = ?"]; args += [utc_now(), self.owner]
        elif status in FINISHED_STATUSES:
            sets.append("finished = ?"); args.append(utc_now())

        def update(c):
            if c.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*args, run_id)).rowcount == 0:
                self._require(c, run_id)
        self._write(update)

    def set_result(self, run_id: str, result: dict) -> None:
        """Store the run's result (what result.json holds) as JSON."""
        text = _dumps(result)

        def update(c):
            if c.execute("UPDATE runs SET result = ? WHERE id = ?", (text, run_id)).rowcount == 0:
                self._require(c, run_id)
        self._write(update)

    def get_run(self, run_id: str) -> dict | None:
        """The run's row with config and result decoded, or None if there is no such run."""
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return _run_dict(rows[0]) if rows else None

    def list_runs(self, status: str | None = None, limit: int = 200, name: str | None = None) -> list[dict]:
        """Runs newest first (without metrics), optionally only those with `status` and/or `name`."""
        conditions = [(c, v) for c, v in (("status = ?", status), ("name = ?", name)) if v]
        where = ("WHERE " + " AND ".join(c for c, _ in conditions)) if conditions else ""
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs {where} "
                           f"ORDER BY created DESC, id DESC LIMIT ?", (*[v for _, v in conditions], int(limit)))
        return [_run_dict(r) for r in rows]

    def delete_run(self, run_id: str) -> bool:
        """Remove the run and its metric and artifact rows (files stay); False if it was absent."""
        def delete(c):
            c.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            c.execute("DELETE FROM cache_hits WHERE run_id = ?", (run_id,))
            c.execute("DELETE FROM artifacts WHERE run_id = ?", (run_id,))
            c.execute("DELETE FROM class_runs WHERE run_id = ?", (run_id,))
            return c.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount > 0
        return self._write(delete)

    # -- the result cache (resx/runs/cache.py) -------------------------------------------------
    def find_reusable(self, cache_key: str, statuses: Iterable[str] = ("queued", "running", "done")) -> str | None:
        """The newest run with this content address in one of `statuses` (done ones first), or None."""
        statuses = tuple(statuses)
        marks = ", ".join("?" * len(statuses))
        rows = self._query(f"SELECT id FROM runs WHERE cache_key = ? AND status IN ({marks}) "
                           f"ORDER BY status = 'done' DESC, created DESC LIMIT 1", (cache_key, *statuses))
        return rows[0][0] if rows else None

    def cache_key(self, run_id: str) -> str | None:
        rows = self._query("SELECT cache_key FROM runs WHERE id = ?", (run_id,))
        return rows[0][0] if rows else None

    def add_cache_hit(self, run_id: str, source: str = "app") -> None:
        """Note that a request was served by the existing run `run_id` instead of a new computation."""
        def insert(c):
            self._require(c, run_id)
            c.execute("INSERT INTO cache_hits VALUES (?, ?, ?)", (run_id, source, utc_now()))
        self._write(insert)

    def cache_hits(self, run_ids: Iterable[str] | None = None) -> dict[str, int]:
        """{run id: requests it served from the cache} for the runs that served any."""
        rows = self._query("SELECT run_id, COUNT(*) FROM cache_hits GROUP BY run_id")
        wanted = None if run_ids is None else set(run_ids)
        return {r: n for r, n in rows if wanted is None or r in wanted}

    def recover_interrupted(self) -> int:
        """Runs left "running" or "queued" by a process (or Store) that is gone become "interrupted"."""
        host = socket.gethostname()

        def recover(c):
            count = 0
            for run_id, status, owner in c.execute(
                    "SELECT id, status, owner FROM runs WHERE status IN ('running', 'queued')").fetchall():
                if not _owner_gone(owner, host):
                    continue
                c.execute("UPDATE runs SET status = 'interrupted', message = ?, finished = ? WHERE id = ?",
                          (f"the process that owned this run ended while it was {status}",
                           utc_now(), run_id))
                count += 1
            return count
        count = self._write(recover)
        if count:
            log.info("marked %d run(s) interrupted in %s", count, self.path)
        return count

    # -- metrics -----------------------------------------------------------------------------
    def add_records(self, run_id: str, records: Iterable[Record]) -> None:
        rows = [(run_id, str(r.phase), int(r.step), str(r.split), str(r.name), float(r.value),
                 None if r.stderr is None else float(r.stderr),
                 None if r.position is None else int(r.position)) for r in records]
        if not rows:
            return

        def insert(c):
            self._require(c, run_id)
            c.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._write(insert)

    def records(self, run_id: str) -> list[Record]:
        """The run's records in the order they were added."""
        rows = self._query("SELECT phase, step, split, name, value, stderr, position FROM metrics "
                           "WHERE run_id = ? ORDER BY rowid", (run_id,))
        if not rows and self.get_run(run_id) is None:
            raise KeyError(f"no run with id {run_id!r} in the store at {self.path}")
        # SQLite stores NaN as NULL; a diverged loss comes back as NaN
        return [Record(p, s, sp, n, math.nan if v is None else v, e, pos)
                for p, s, sp, n, v, e, pos in rows]

    def metrics_frame(self, run_id: str):
        """The run's records as a long-format pandas DataFrame, one row per record."""
        import pandas as pd
        frame = pd.DataFrame([r.to_dict() for r in self.records(run_id)], columns=list(CSV_COLUMNS))
        frame["step"] = frame["step"].astype("int64")
        frame["value"] = frame["value"].astype("float64")
        frame["stderr"] = frame["stderr"].astype("float64")
        frame["position"] = frame["position"].astype("Int64")
        return frame

    # -- artifacts ---------------------------------------------------------------------------
    def add_artifact(self, run_id: str, name: str, path: Path | str) -> None:
        """Record a file the run wrote, with its size and sha256 (the file itself stays put)."""
        path = Path(path).resolve()
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        row = (run_id, name, str(path), digest.hexdigest(), path.stat().st_size, utc_now())

        def insert(c):
            self._require(c, run_id)
            c.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?)", row)
        self._write(insert)

    def artifacts(self, run_id: str) -> list[dict]:
        rows = self._query("SELECT name, path, sha256, size, created FROM artifacts "
                           "WHERE run_id = ? ORDER BY created, name", (run_id,))
        if not rows and self.get_run(run_id) is None:
            raise KeyError(f"no run with id {run_id!r} in the store at {self.path}")
        return [dict(zip(("name", "path", "sha256", "size", "created"), r)) for r in rows]

    # -- export ------------------------------------------------------------------------------
    def export_csv(self, run_id: str, path: Path | str) -> None:
        """Metrics as CSV with header CSV_COLUMNS; None is written as an empty cell."""
        records = self.records(run_id)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for r in records:
                writer.writerow(["" if v is None else v for v in (getattr(r, k) for k in CSV_COLUMNS)])

    def export_json(self, run_id: str, path: Path | str) -> None:
        """The run row (with config and result), its artifacts and its metrics as one JSON object.

        NaN and infinite values are written as the tokens NaN/Infinity, which Python's json reads.
        """
        run = self.get_run(run_id)
        if run is None:
            raise KeyError(f"no run with id {run_id!r} in the store at {self.path}")
        doc = {"schema_version": SCHEMA_VERSION, **run, "artifacts": self.artifacts(run_id),
               "metrics": [r.to_dict() for r in self.records(run_id)]}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, default=_json_default)

    # -- classes (a code groups runs; its teacher's key opens its names, closing and export) ----
    def open_class(self, code: str) -> dict:
        """The class `code`, created open if it is new; returns {"code", "created", "closed"}."""
        self._write(lambda c: c.execute("INSERT OR IGNORE INTO classes (code, created, closed) VALUES (?, ?, NULL)", (code, utc_now())))
        return self.class_info(code)

    def class_info(self, code: str) -> dict | None:
        rows = self._query("SELECT code, created, closed FROM classes WHERE code = ?", (code,))
        return dict(zip(("code", "created", "closed"), rows[0])) if rows else None

    def create_class(self, code: str, reissue: bool = False) -> str:
        """Give class `code` a teacher: a new random key, returned once and stored only as its hash.

        A new code, or one no teacher has taken (made by a student's link, or before keys existed),
        gets a key; one that has a teacher raises ValueError unless `reissue` (the server's operator,
        `python -m resx serve --class CODE`), which replaces the key: the old teacher link stops working."""
        key = secrets.token_urlsafe(16)

        def claim(c):
            c.execute("INSERT OR IGNORE INTO classes (code, created, closed) VALUES (?, ?, NULL)", (code, utc_now()))
            taken = c.execute("SELECT key_hash FROM classes WHERE code = ?", (code,)).fetchone()[0]
            if taken is not None and not reissue:
                raise ValueError(f"class {code!r} already has a teacher: open it with the teacher's link, "
                                 "or pick another code")
            c.execute("UPDATE classes SET key_hash = ? WHERE code = ?", (_key_hash(key), code))
        self._write(claim)
        return key

    def has_teacher(self, code: str) -> bool:
        rows = self._query("SELECT key_hash IS NOT NULL FROM classes WHERE code = ?", (code,))
        return bool(rows and rows[0][0])

    def check_teacher_key(self, code: str, key: str | None) -> bool:
        """Whether `key` is class `code`'s teacher key (compared in constant time); False for a class
        with no teacher, an unknown class, or no key."""
        rows = self._query("SELECT key_hash FROM classes WHERE code = ?", (code,))
        if not key or not rows or rows[0][0] is None:
            return False
        return hmac.compare_digest(rows[0][0], _key_hash(key))

    def close_class(self, code: str, key: str) -> None:
        """A closed class takes no more runs; its runs and board stay readable. Needs the teacher's key
        (PermissionError otherwise: nothing changes)."""
        if not self.check_teacher_key(code, key):
            raise PermissionError(f"that is not class {code!r}'s teacher key: the class stays as it is")
        self._write(lambda c: c.execute("UPDATE classes SET closed = ? WHERE code = ? AND closed IS NULL",
                                        (utc_now(), code)))

    def join_class(self, code: str, student: str) -> int:
        """The student's place in the class in join order (0 for the first); joins on first call."""
        if (self.open_class(code) or {}).get("closed"):
            raise ValueError(f"class {code!r} is closed: it takes no new students or runs")
        self._write(lambda c: c.execute("INSERT OR IGNORE INTO class_members VALUES (?, ?, ?)",
                                        (code, student, utc_now())))
        students = [r[0] for r in self._query(
            "SELECT student FROM class_members WHERE code = ? ORDER BY joined, rowid", (code,))]
        return students.index(student)

    def tag_run(self, run_id: str, code: str, student: str, step: str = "", prediction: str = "") -> None:
        """File the run under the class with who ran it and what they predicted; a closed class refuses."""
        info = self.open_class(code)
        if info["closed"]:
            raise ValueError(f"class {code!r} is closed: it takes no new runs")

        def insert(c):
            self._require(c, run_id)
            c.execute("INSERT OR IGNORE INTO class_members VALUES (?, ?, ?)", (code, student, utc_now()))
            c.execute("INSERT OR REPLACE INTO class_runs VALUES (?, ?, ?, ?, ?, ?)",
                      (run_id, code, student, step, prediction, utc_now()))
        self._write(insert)

    def class_runs(self, code: str) -> list[dict]:
        """The class's tagged runs, oldest first: the run's row plus student, step and prediction (a run
        that answers two lesson steps appears once per step)."""
        rows = self._query(f"SELECT {', '.join('r.' + c for c in _RUN_COLUMNS.split(', '))}, "
                           "t.student, t.step, t.prediction FROM class_runs t JOIN runs r ON r.id = t.run_id "
                           "WHERE t.code = ? ORDER BY t.created, r.id", (code,))
        return [_run_dict(row[:-3]) | dict(zip(("student", "step", "prediction"), row[-3:])) for row in rows]

    def schema_version(self) -> int:
        return int(self._query("SELECT value FROM meta WHERE key = 'schema_version'")[0][0])


class RecordWriter:
    """Buffers one run's records and writes them to the store every `flush_seconds` and on close.

    Callable as a RecordSink (`writer(record)` only appends to a list, never waits on the
    database). A background thread does the flushing; `close()` stops it and flushes the rest.
    """

    def __init__(self, store: Store, run_id: str, flush_seconds: float = 2.0, max_buffer: int = 10_000):
        self.store, self.run_id = store, run_id
        self.flush_seconds, self.max_buffer = flush_seconds, max_buffer
        self._buffer: list[Record] = []
        self._lock = threading.Lock()        # guards the buffer
        self._flush_lock = threading.Lock()  # keeps flushes in order
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"resx-writer-{run_id}", daemon=True)
        self._thread.start()

    def __call__(self, record: Record) -> None:
        with self._lock:
            if self._stopping:
                raise RuntimeError(f"the record writer for run {self.run_id} is closed")
            self._buffer.append(record)
            full = len(self._buffer) >= self.max_buffer
        if full:
            self._wake.set()

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
            try:
                self.store.add_records(self.run_id, batch)
            except BaseException:
                with self._lock:  # keep them for the next try
                    self._buffer[:0] = batch
                raise

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.flush()
            except Exception:
                log.exception("flushing records of run %s failed; will retry", self.run_id)

    def close(self) -> None:
        """Stop the flusher thread and write whatever is buffered (raises if that fails)."""
        with self._lock:
            already = self._stopping
            self._stopping = True
        if already:
            return
        self._wake.set()
        self._thread.join()
        self.flush()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_RUN_KEYS = ("id", "status", "message", "config", "result", "source", "name", "owner",
             "created", "started", "finished")
_RUN_COLUMNS = ", ".join(_RUN_KEYS)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _run_dict(row: tuple) -> dict:
    d = dict(zip(_RUN_KEYS, row))
    d["config"] = json.loads(d["config"])
    d["result"] = None if d["result"] is None else json.loads(d["result"])
    return d


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):      # numpy and torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):    # small arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


def _owner_gone(owner: str | None, host: str) -> bool:
    """Whether the process/Store recorded in `owner` ("host|pid|token") no longer exists."""
    try:
        owner_host, pid_text, token = (owner or "").split("|")
        pid = int(pid_text)
    except ValueError:
        return True                   # no owner recorded: nobody can finish it
    if owner_host != host:
        return False                  # another machine's process; cannot tell, leave it
    if pid == os.getpid():
        return token not in _LIVE_TOKENS
    return not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return False  # no cheap check without extra packages; treat the owner as gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # exists, owned by someone else
    return True
