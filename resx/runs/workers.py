"""The pipeline in worker processes, so that no page can stall training (issue 10).

A `WorkerPool` is a `Runner` (jobs.py): the job manager's thread calls `pool(config, sink,
cancel, out_dir)` and blocks while one worker process runs `run_pipeline`. Records and the
result come back through that worker's queue and are handed to `sink` on the manager's thread;
the manager's cancel Event is forwarded to a process-shared Event that the pipeline checks
every batch, so a cancel still lands within one batch.

Why processes: a profile of the server (design.md "A server a class can share") found the
training threads waiting on the GIL that every session's script runs hold (Streamlit's
post-script `gc.collect`, figure building, JSON). A process has its own interpreter and GIL;
the server process only routes records.

Processes are started with "spawn" (never fork a process that runs threads), once, when the
pool is made, and reused job after job: importing torch costs seconds, a job should not pay it.
Each sets torch's threads to `torch_threads`, so processes x threads <= cores, and lowers its own
CPU priority by `nice` (WORKER_NICE): training is batch work that takes whatever CPU is idle,
while a page's script run is what a student waits for, so the server's threads go first when both
want a core (measured: bench_load's page-rerun latency); $RESX_WORKER_NICE sets it (0: the
server's priority, for a machine that does nothing but train). A worker whose
parent dies (the server killed with -9) exits within a second, leaving its run "running" in the
store for `Store.recover_interrupted`, as an in-process thread would. A worker that dies mid-job
fails that job with its exit code and is replaced.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import traceback
import types
from pathlib import Path

from ..core.config import RunConfig
from ..core.records import RecordSink

log = logging.getLogger(__name__)

WORKER_NICE = 10      # the workers' niceness above the server's (0 to 19; 10 is batch work's usual), or $RESX_WORKER_NICE
POLL_S = 0.1          # how often the manager's thread looks at the cancel Event and the process
_CTX = mp.get_context("spawn")
_start_lock = threading.Lock()
_BARE_MAIN = types.ModuleType("__main__")  # no __file__, no __spec__: spawn imports no main module


@contextlib.contextmanager
def spawn_without_main():
    """Processes spawned inside this block do not re-import the parent's `__main__`.

    Under `streamlit run` (and after an AppTest in the same process) `__main__` is the app script:
    spawn would run app.py again in every child, which builds a job manager and starts worker
    processes of its own there, before the child has finished bootstrapping (a RuntimeError). A
    child needs nothing from it. Used for the app's workers and the sweeps' process pool.
    """
    with _start_lock:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = _BARE_MAIN
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def _start(process) -> None:
    with spawn_without_main():
        process.start()


class WorkerDied(RuntimeError):
    """The worker process ended while it ran a job (killed, out of memory, a crash in C)."""


def worker_nice() -> int:
    """$RESX_WORKER_NICE, an integer 0-19, or WORKER_NICE when unset."""
    raw = os.environ.get("RESX_WORKER_NICE", "").strip()
    if not raw:
        return WORKER_NICE
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 19:
        raise ValueError(f"RESX_WORKER_NICE={raw!r} is not allowed: an integer from 0 (the server's "
                         f"priority) to 19 (the lowest)")
    return int(raw)


def _watch_parent(parent: int) -> None:
    """Exit when the parent process is gone (kill -9 of the server): no orphan keeps training."""
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(1.0)


def release_heap() -> None:
    """Hand the heap a finished job freed back to the system. glibc keeps freed chunks below its
    mmap threshold (a tensor of 64 KB, say) mapped for reuse: a worker was ~170 MiB larger after a
    demo-mlp run than before it, and two idle workers held that between runs (measured)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _worker_main(tasks, replies, cancel, torch_threads: int, parent: int, nice: int = 0) -> None:
    """The worker process: run one job per task message, forward its records, reply its result."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="resx-watch-parent").start()
    if nice:
        os.nice(nice)
    import torch
    torch.set_num_threads(torch_threads)
    from .pipeline import run_pipeline
    # The first optimizer of a process imports torch._dynamo (seconds); pay it here, once, not in
    # the first job's base training.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])

    replies.put(("ready", os.getpid()))
    while True:
        task = tasks.get()
        if task is None:
            return
        config, out_dir = task
        batch: list = []
        last = time.monotonic()

        def sink(record):
            nonlocal last
            batch.append(record)
            now = time.monotonic()
            if now - last >= 0.05 or len(batch) >= 256:  # few, larger messages: less pickling
                replies.put(("records", list(batch)))
                batch.clear()
                last = now
        try:
            result = run_pipeline(RunConfig.from_dict(config), sink, cancel, Path(out_dir))
            reply = ("result", result)
        except BaseException as exc:  # noqa: BLE001 (reported to the manager, which fails the job)
            reply = ("error", (type(exc).__name__, str(exc), traceback.format_exc()))
        if batch:
            replies.put(("records", list(batch)))
        replies.put(reply)
        release_heap()


class _Worker:
    def __init__(self, torch_threads: int, nice: int):
        self.tasks, self.replies, self.cancel = _CTX.Queue(), _CTX.Queue(), _CTX.Event()
        self.process = _CTX.Process(target=_worker_main, name="resx-worker",
                                    args=(self.tasks, self.replies, self.cancel, torch_threads, os.getpid(), nice),
                                    daemon=True)
        _start(self.process)
        self.ready = False

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            try:
                self.cancel.set()
                self.tasks.put(None)
            except (OSError, ValueError):
                pass
            self.process.join(timeout)
        if self.alive():
            self.process.kill()
            self.process.join(timeout)
        for q in (self.tasks, self.replies):
            q.close()
            q.cancel_join_thread()


class WorkerPool:
    """`processes` worker processes of `torch_threads` torch threads each, at niceness `nice` above
    the caller's (default worker_nice()); callable as a Runner.

    At most `processes` calls run at once (one per process); a further call waits for a free one.
    """

    def __init__(self, processes: int, torch_threads: int = 1, nice: int | None = None):
        if processes < 1:
            raise ValueError(f"processes={processes!r} is not allowed: an integer >= 1")
        nice = worker_nice() if nice is None else nice
        if not 0 <= nice <= 19:
            raise ValueError(f"nice={nice!r} is not allowed: an integer from 0 (the server's priority) to 19")
        self.processes, self.torch_threads, self.nice = processes, torch_threads, nice
        self._lock = threading.Condition()
        self._idle: list[_Worker] = [_Worker(torch_threads, nice) for _ in range(processes)]
        self._busy: set[_Worker] = set()
        self._closed = False

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in (*self._idle, *self._busy)]

    def __call__(self, config: RunConfig, sink: RecordSink, cancel: threading.Event, out_dir: Path) -> dict:
        worker = self._take()
        try:
            return self._run(worker, config, sink, cancel, out_dir)
        finally:
            self._give_back(worker)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every process (idle ones at once; busy ones are cancelled by their jobs first)."""
        with self._lock:
            self._closed = True
            workers = [*self._idle, *self._busy]
            self._idle.clear()
            self._lock.notify_all()
        for w in workers:
            w.stop(timeout)

    # -- internals ---------------------------------------------------------------------------
    def _take(self) -> _Worker:
        with self._lock:
            self._lock.wait_for(lambda: self._idle or self._closed)
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            worker = self._idle.pop()
            if not worker.alive():  # died while idle: replace it
                worker.stop(0)
                worker = _Worker(self.torch_threads, self.nice)
            self._busy.add(worker)
            return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._busy.discard(worker)
            if self._closed:
                closed = True
            else:
                closed = False
                if not worker.alive():
                    worker.stop(0)
                    worker = _Worker(self.torch_threads, self.nice)
                self._idle.append(worker)
                self._lock.notify_all()
        if closed:
            worker.stop()

    def _run(self, worker: _Worker, config: RunConfig, sink, cancel, out_dir) -> dict:
        worker.cancel.clear()
        worker.tasks.put((config.to_dict(), str(out_dir)))
        while True:
            if cancel is not None and cancel.is_set() and not worker.cancel.is_set():
                worker.cancel.set()  # the pipeline sees it at its next batch
            try:
                kind, payload = worker.replies.get(timeout=POLL_S)
            except queue.Empty:
                if not worker.alive():
                    raise WorkerDied(f"the worker process (pid {worker.process.pid}) ended with exit code "
                                     f"{worker.process.exitcode} during the run") from None
                continue
            if kind == "ready":
                worker.ready = True
            elif kind == "records":
                for record in payload:
                    sink(record)
            elif kind == "result":
                return payload
            elif kind == "error":
                name, message, tb = payload
                log.error("the worker process failed:\n%s", tb)
                raise _rebuilt(name, message)


def _rebuilt(name: str, message: str) -> Exception:
    """The worker's exception under its own type name, so that the job's error reads
    "DataError: ..." as it would in a thread: the builtin type itself where it is one."""
    import builtins
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:  # noqa: BLE001 (an exception type with another signature)
            pass
    return type(name, (RuntimeError,), {"__module__": __name__})(message)
