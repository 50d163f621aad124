"""The process-wide job manager (design.md "Runs, jobs and the store").

A bounded pool of worker threads takes runs from one FIFO queue. Each job calls the runner
(the pipeline) with a sink for its records and a cancel Event that the runner checks every
batch; the sink feeds both an in-memory state, read by the pages as an immutable `JobSnapshot`,
and a `RecordWriter` into the store. Worker threads never touch streamlit.

Threads: jobs x torch threads <= cores (design.md "Engineering facts"); torch's thread count is
set once per process, by the first manager. `RESX_MAX_JOBS` caps the number of workers (an
operator's cap: a shared server may lower it, never raise it past the cores).

Identical requests share one computation (cache.py): `request()` looks for a queued, running or
done run with the same content address (configuration, seed, code version) and, when there is
one, returns it instead of a new run, and notes the hit in the store. `submit()` always computes.

The runner may be a `workers.WorkerPool` (the app's: the pipeline in worker processes) or a
plain function run in the manager's thread (tests, benchmarks); either way the manager's threads
feed and supervise it, and `shutdown` closes a runner that has a `close()`.

Statuses a job ends in: "done"; "diverged" (the runner returned {"status": "diverged", ...});
"cancelled" (cancel() was called); "failed" (the runner raised; the message names the exception
type); "interrupted" (the manager shut down while the job was queued or running).
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch  # imported before any worker starts: a first import inside a thread can race

from ..core.config import RunConfig
from ..core.records import Record, RecordSink
from .cache import run_key
from .store import RecordWriter, Store, utc_now

log = logging.getLogger(__name__)

# runner(config, sink, cancel, out_dir) -> result; resx.runs.pipeline.run_pipeline fits as it is.
# It stops by raising Cancelled or by returning (then {"status": "cancelled"} or anything) once
# `cancel` is set; a result with "status": "diverged" (and a "message") ends the run diverged.
Runner = Callable[[RunConfig, RecordSink, threading.Event, Path], dict]
PROGRESS = "progress"  # records with this name carry progress in [0, 1], not a metric to plot
ACTIVE = ("queued", "running")


class Cancelled(Exception):
    """Raised by a runner that noticed its cancel Event was set."""


@dataclass(frozen=True)
class JobSnapshot:
    run_id: str
    status: str                      # queued running done failed cancelled diverged interrupted
    phase: str | None                # phase of the latest record
    step: int | None                 # step of the latest record
    progress: float | None           # latest "progress" record, 0..1 (1.0 once done)
    records: tuple[Record, ...]      # every record except progress, in arrival order
    result: dict | None
    error: str | None                # "ExceptionType: message" when status is "failed"
    message: str | None              # the store's message (failure, divergence, cancellation)
    queue_position: int | None       # 1 = next to start; None when not queued here
    config: dict
    created: str | None              # ISO UTC times
    started: str | None
    finished: str | None

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE


def usable_cores(root: Path | str = "/") -> int:
    """The cores this process may use: its CPU affinity, capped by the CPU quota of its cgroup and the
    cgroups above it (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded down, at least
    1. A container given a fraction of a host (Community Cloud) has a quota; os.cpu_count() sees the
    host. `root` is the filesystem root to read /proc and /sys/fs/cgroup under (tests use a fake tree)."""
    root = Path(root)
    try:
        cores = len(os.sched_getaffinity(0)) if str(root) == "/" else os.cpu_count() or 1
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(root)
    return max(1, min(cores, int(quota)) if quota is not None else cores)


def _cgroup_quota(root: Path) -> float | None:
    """The smallest quota/period along this process's cgroup paths, in cores; None when unlimited."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            base, files = root / "sys/fs/cgroup", ("cpu.max",)
        elif "cpu" in controllers.split(","):
            base = next((root / "sys/fs/cgroup" / d for d in ("cpu", "cpu,cpuacct", "cpuacct,cpu")
                         if (root / "sys/fs/cgroup" / d).is_dir()), None)
            if base is None:
                continue
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        here = base / path.lstrip("/")
        for folder in (here, *here.parents):  # the limit of any ancestor applies too
            limit = _read_limit(folder, files)
            if limit is not None:
                limits.append(limit)
            if folder == base:
                break
    return min(limits) if limits else None


def _read_limit(folder: Path, files: tuple[str, ...]) -> float | None:
    try:
        if len(files) == 1:
            quota, period = (folder / files[0]).read_text().split()[:2]
        else:
            quota, period = ((folder / f).read_text().strip() for f in files)
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _env_count(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
        if value < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not allowed: a positive integer") from None
    return value


def default_workers() -> int:
    """Worker count when none is asked for: $RESX_WORKERS, else the usable cores (usable_cores);
    either capped by $RESX_MAX_JOBS."""
    cores = _env_count("RESX_WORKERS") or usable_cores()
    cap = _env_cap()
    return min(cap, cores) if cap else cores


def default_torch_threads(workers: int) -> int:
    """Torch threads per worker: $RESX_TORCH_THREADS, else the usable cores shared among the workers."""
    return _env_count("RESX_TORCH_THREADS") or max(1, usable_cores() // workers)


def _env_cap() -> int | None:
    return _env_count("RESX_MAX_JOBS")


_torch_threads: int | None = None
_torch_threads_lock = threading.Lock()


def _set_torch_threads(n: int) -> int:
    """Set torch's intra-op threads once per process; later calls keep the first value."""
    global _torch_threads
    with _torch_threads_lock:
        if _torch_threads is None:
            torch.set_num_threads(n)
            _torch_threads = n
        elif _torch_threads != n:
            log.info("torch already uses %d thread(s) in this process; keeping it (asked %d)",
                     _torch_threads, n)
        return _torch_threads


@dataclass(frozen=True)
class Request:
    """What `JobManager.request` did: `run_id` is the run to show; `same_as` is set (to that id)
    when an existing identical run served the request instead of a new computation."""
    run_id: str
    same_as: str | None = None

    @property
    def cached(self) -> bool:
        return self.same_as is not None


class _Job:
    def __init__(self, run_id: str, config: RunConfig, created: str):
        self.run_id, self.config, self.created = run_id, config, created
        self.cancel = threading.Event()
        self.status = "queued"
        self.phase: str | None = None
        self.step: int | None = None
        self.progress: float | None = None
        self.records: list[Record] = []
        self.frozen: tuple[Record, ...] = ()   # cached tuple(records), rebuilt when stale
        self.result: dict | None = None
        self.error: str | None = None
        self.message: str | None = None
        self.started: str | None = None
        self.finished: str | None = None

    def snapshot(self, queue_position: int | None) -> JobSnapshot:
        if len(self.frozen) != len(self.records):
            self.frozen = tuple(self.records)
        return JobSnapshot(self.run_id, self.status, self.phase, self.step, self.progress,
                           self.frozen, None if self.result is None else dict(self.result),
                           self.error, self.message, queue_position, self.config.to_dict(),
                           self.created, self.started, self.finished)


class JobManager:
    def __init__(self, store: Store, runner: Runner, workers: int | None = None,
                 torch_threads: int | None = None, out_root: Path | None = None,
                 flush_seconds: float = 2.0, keep_finished: int = 64):
        cores = usable_cores()
        if workers is None:
            workers = default_workers() if torch_threads is None else max(1, cores // torch_threads)
        if workers < 1:
            raise ValueError(f"workers={workers!r} is not allowed: an integer >= 1")
        cap = _env_cap()
        if cap and workers > cap:
            log.info("RESX_MAX_JOBS=%d caps the workers (asked %d)", cap, workers)
            workers = cap
        if torch_threads is None:
            torch_threads = max(1, cores // workers)
        if workers * torch_threads > cores:
            log.warning("%d jobs x %d torch threads exceed the %d cores; jobs will contend",
                        workers, torch_threads, cores)
        self.store, self.runner = store, runner
        self.workers = workers
        self.torch_threads = _set_torch_threads(torch_threads)
        self.out_root = Path(out_root) if out_root is not None else store.home / "runs"
        self.flush_seconds, self.keep_finished = flush_seconds, keep_finished
        self._cond = threading.Condition()   # guards everything below and every _Job's fields
        self._queue: collections.deque[str] = collections.deque()
        self._jobs: dict[str, _Job] = {}     # submission order; finished ones trimmed
        self._closing = False
        self._request_lock = threading.Lock()  # look-up then submit, atomically: one run per key
        self._threads = [threading.Thread(target=self._work, name=f"resx-worker-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    # -- public ------------------------------------------------------------------------------
    def request(self, config: RunConfig, source: str = "app", reuse: bool = True) -> Request:
        """A run for `config`: an identical queued, running or done one when `reuse` (noted as a
        cache hit), else a new one (`submit`). reuse=False is the page's "run again"."""
        if isinstance(config, dict):
            config = RunConfig.from_dict(config)
        key = run_key(config.to_dict())
        with self._request_lock:
            if reuse:
                same = self.store.find_reusable(key)
                if same is not None:
                    self.store.add_cache_hit(same, source)
                    return Request(same, same_as=same)
            return Request(self.submit(config, source=source, _key=key))

    def submit(self, config: RunConfig, source: str = "app", name: str = "", _key: str | None = None) -> str:
        """Create the run in the store, queue it (FIFO) and return its id (always a new computation)."""
        if isinstance(config, dict):
            config = RunConfig.from_dict(config)
        if self._closing:
            raise RuntimeError("the job manager is shut down; no new jobs")
        run_id = self.store.create_run(config.to_dict(), source=source, name=name,
                                       cache_key=_key or run_key(config.to_dict()))
        run = self.store.get_run(run_id)
        with self._cond:
            if self._closing:  # shut down while we were writing the row
                closing = True
            else:
                closing = False
                self._jobs[run_id] = _Job(run_id, config, run["created"])
                self._queue.append(run_id)
                self._cond.notify_all()
        if closing:
            self.store.set_status(run_id, "interrupted", "the job manager shut down before it started")
            raise RuntimeError("the job manager is shut down; no new jobs")
        return run_id

    def certify_later(self, run_id: str) -> dict:
        """The certify step for a finished run that skipped it, from its checkpoints (no retraining):
        the store gets the certificates, and so does the job held here, so pages show them at once.
        Raises resx.runs.pipeline.CertifyError when the run is not finished or kept no checkpoints."""
        from .pipeline import certify_stored_run
        result = certify_stored_run(self.store, run_id)
        with self._cond:
            job = self._jobs.get(run_id)
            if job is not None:
                job.result = result
        return result

    def cancel(self, run_id: str) -> bool:
        """Cancel a queued or running job; False if it is unknown here or already finished.

        A queued job is dropped from the queue at once; a running one gets its Event set and
        ends "cancelled" when the runner next checks it (every batch).
        """
        with self._cond:
            job = self._jobs.get(run_id)
            if job is None or job.status not in ACTIVE:
                return False
            job.cancel.set()
            if job.status == "running":
                return True
            self._queue.remove(run_id)
            job.status, job.finished = "cancelled", utc_now()
            job.message = "cancelled before it started"
            self._cond.notify_all()
        self.store.set_status(run_id, "cancelled", job.message)
        return True

    def snapshot(self, run_id: str) -> JobSnapshot | None:
        """An immutable copy of the job's state; from the store for runs not held in memory."""
        with self._cond:
            job = self._jobs.get(run_id)
            if job is not None:
                return job.snapshot(self._position(run_id))
        return _snapshot_from_store(self.store, run_id)

    def wait(self, run_id: str, timeout: float | None = None) -> JobSnapshot | None:
        """Block until the job is no longer queued or running (or timeout); returns a snapshot."""
        with self._cond:
            job = self._jobs.get(run_id)
            if job is not None:
                self._cond.wait_for(lambda: job.status not in ACTIVE, timeout)
        return self.snapshot(run_id)

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next job to start, 2 for the one after, ...; None when not queued."""
        with self._cond:
            return self._position(run_id)

    def active(self) -> list[str]:
        """Ids of running jobs (in submission order), then queued ones (in queue order)."""
        with self._cond:
            running = [j.run_id for j in self._jobs.values() if j.status == "running"]
            return running + list(self._queue)

    def shutdown(self, wait: bool = True, timeout: float = 10) -> bool:
        """Stop: queued jobs and running ones end "interrupted"; join the workers.

        Returns True when every worker thread has ended (a runner that ignores its cancel Event
        past `timeout` leaves its daemon thread behind, and a warning in the log).
        """
        with self._cond:
            self._closing = True
            dropped = list(self._queue)
            self._queue.clear()
            for run_id in dropped:
                job = self._jobs[run_id]
                job.status, job.finished = "interrupted", utc_now()
                job.message = "the job manager shut down before it started"
                job.cancel.set()
            for job in self._jobs.values():
                if job.status == "running":
                    job.cancel.set()
            self._cond.notify_all()
        for run_id in dropped:
            self.store.set_status(run_id, "interrupted", "the job manager shut down before it started")
        if not wait:
            return not any(t.is_alive() for t in self._threads)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("worker thread(s) %s did not stop within %g s", alive, timeout)
        close = getattr(self.runner, "close", None)
        if close is not None:  # a WorkerPool: stop its processes
            close()
        return not alive

    # -- workers -----------------------------------------------------------------------------
    def _position(self, run_id: str) -> int | None:
        try:
            return self._queue.index(run_id) + 1
        except ValueError:
            return None

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                job = self._jobs[self._queue.popleft()]
                job.status, job.started = "running", utc_now()
                self._cond.notify_all()
            try:
                self._run(job)
            except Exception as exc:  # the store itself failed; keep the worker alive
                log.exception("job %s could not be run", job.run_id)
                with self._cond:
                    job.status, job.finished = "failed", job.finished or utc_now()
                    job.error = job.message = f"store error: {type(exc).__name__}: {exc}"
                    self._cond.notify_all()

    def _sink(self, job: _Job, writer: RecordWriter) -> RecordSink:
        def sink(record: Record) -> None:
            with self._cond:
                job.phase, job.step = record.phase, record.step
                if record.name == PROGRESS:
                    job.progress = float(record.value)
                else:
                    job.records.append(record)
            writer(record)
        return sink

    def _run(self, job: _Job) -> None:
        run_id = job.run_id
        self.store.set_status(run_id, "running")
        writer = RecordWriter(self.store, run_id, flush_seconds=self.flush_seconds)
        status, result, error, message = "done", None, None, None
        try:
            if job.cancel.is_set():
                raise Cancelled
            out_dir = self.out_root / run_id
            out_dir.mkdir(parents=True, exist_ok=True)
            result = self.runner(job.config, self._sink(job, writer), job.cancel, out_dir)
            if result is None:
                result = {}
            if not isinstance(result, dict):
                raise TypeError(f"the runner returned {type(result).__name__}, expected a dict")
            if job.cancel.is_set() or result.get("status") == "cancelled":
                raise Cancelled
            if result.get("status") == "diverged":
                status = "diverged"
                message = str(result.get("message") or "the run diverged")
        except Cancelled:
            status = "interrupted" if self._closing else "cancelled"
            message = (f"{'the job manager shut down' if self._closing else 'cancelled'} "
                       f"during {job.phase or 'start-up'} at step {job.step or 0}")
        except Exception as exc:
            log.exception("run %s failed", run_id)
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            message, result = error, None
        finally:
            try:
                writer.close()  # every record is in the store before the status says so
            except Exception as exc:
                log.exception("run %s: writing its records failed", run_id)
                status, error = "failed", f"records not stored: {type(exc).__name__}: {exc}"
                message = error
        if result is not None:
            self.store.set_result(run_id, result)
        self._register_artifacts(run_id)
        self.store.set_status(run_id, status, message)
        with self._cond:
            job.status, job.result, job.error, job.message = status, result, error, message
            job.finished = utc_now()
            if status == "done":
                job.progress = 1.0
            self._trim()
            self._cond.notify_all()

    def _register_artifacts(self, run_id: str) -> None:
        """Record every file the runner left in its out_dir (result.json, checkpoints) in the store."""
        out_dir = self.out_root / run_id
        try:
            for path in sorted(p for p in out_dir.iterdir() if p.is_file()):
                self.store.add_artifact(run_id, path.name, path)
        except FileNotFoundError:
            pass
        except Exception:
            log.exception("run %s: recording its files failed", run_id)

    def _trim(self) -> None:
        """Forget the oldest finished jobs past keep_finished (the store still has them)."""
        finished = [r for r, j in self._jobs.items() if j.status not in ACTIVE]
        for run_id in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[run_id]


def _snapshot_from_store(store: Store, run_id: str) -> JobSnapshot | None:
    run = store.get_run(run_id)
    if run is None:
        return None
    records = store.records(run_id)
    progress = next((r.value for r in reversed(records) if r.name == PROGRESS), None)
    if run["status"] == "done":
        progress = 1.0
    last = records[-1] if records else None
    return JobSnapshot(run_id, run["status"], last and last.phase, last and last.step, progress,
                       tuple(r for r in records if r.name != PROGRESS), run["result"],
                       run["message"] if run["status"] == "failed" else None, run["message"],
                       None, run["config"], run["created"], run["started"], run["finished"])


@dataclass(frozen=True)
class TaskSnapshot:
    task_id: str
    kind: str                        # "sweep" | "figures"
    status: str                      # queued running done failed cancelled
    lines: tuple[str, ...]           # progress messages, newest last
    result: object
    error: str | None

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE


class TaskRunner:
    """Sweeps and figure runs, one at a time, in one long-lived background thread.

    A task is fn(cancel: Event, say: Callable[[str], None]) -> result. The thread outlives every
    Streamlit script run, so a Ray cluster or process pool a task starts is owned by it, not by
    a page (design.md "Scale-out").
    """

    def __init__(self, keep: int = 32):
        self._cond = threading.Condition()
        self._tasks: dict[str, dict] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._keep, self._closing, self._count = keep, False, 0
        self._thread = threading.Thread(target=self._work, name="resx-tasks", daemon=True)
        self._thread.start()

    def submit(self, kind: str, fn: Callable[[threading.Event, Callable[[str], None]], object]) -> str:
        with self._cond:
            if self._closing:
                raise RuntimeError("the task runner is shut down")
            self._count += 1
            task_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{self._count}"
            self._tasks[task_id] = {"kind": kind, "fn": fn, "status": "queued", "lines": [], "result": None,
                                    "error": None, "cancel": threading.Event()}
            self._queue.append(task_id)
            self._cond.notify_all()
        return task_id

    def cancel(self, task_id: str) -> bool:
        with self._cond:
            task = self._tasks.get(task_id)
            if task is None or task["status"] not in ACTIVE:
                return False
            task["cancel"].set()
            if task["status"] == "queued":
                self._queue.remove(task_id)
                task["status"] = "cancelled"
            return True

    def snapshot(self, task_id: str) -> TaskSnapshot | None:
        with self._cond:
            t = self._tasks.get(task_id)
            if t is None:
                return None
            return TaskSnapshot(task_id, t["kind"], t["status"], tuple(t["lines"][-200:]), t["result"], t["error"])

    def latest(self, kind: str) -> TaskSnapshot | None:
        with self._cond:
            ids = [i for i, t in self._tasks.items() if t["kind"] == kind]
        return self.snapshot(ids[-1]) if ids else None

    def shutdown(self, timeout: float = 10) -> bool:
        with self._cond:
            self._closing = True
            for task in self._tasks.values():
                task["cancel"].set()
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                task_id = self._queue.popleft()
                task = self._tasks[task_id]
                task["status"] = "running"

            def say(line: str, task=task):
                with self._cond:
                    task["lines"].append(line)

            try:
                result = task["fn"](task["cancel"], say)
                status, error = ("cancelled" if task["cancel"].is_set() else "done"), None
            except Exception as e:  # noqa: BLE001 (a task's failure is shown, not raised)
                log.exception("task %s failed", task_id)
                result, status, error = None, "failed", f"{type(e).__name__}: {e}"
            with self._cond:
                task.update(result=result, status=status, error=error)
                finished = [i for i, t in self._tasks.items() if t["status"] not in ACTIVE]
                for old in finished[:-self._keep]:
                    del self._tasks[old]
