"""Executors for sweeps: one `map` over config dicts, local processes or Ray (design.md "Scale-out").

Tasks carry a config dict and seed themselves, so a cell's numbers do not depend on where it ran.
Every cell runs with the same torch thread count (1 by default) on both executors: the intra-op
thread count changes the last bits of reductions.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Optional, Protocol

import torch  # before any worker starts (design.md "Engineering facts")

from ..core.config import ConfigError
from ..runs.jobs import Cancelled, default_workers
from ..runs.workers import spawn_without_main

log = logging.getLogger(__name__)


CellFn = Callable[[dict, object], dict]                              # (config dict, cancel) -> payload
OnResult = Callable[[dict, Optional[dict], Optional[BaseException]], None]  # (config, payload, error)


class Executor(Protocol):
    def map(self, fn: CellFn, configs: list[dict], on_result: OnResult,
            cancel: Optional[threading.Event] = None) -> None:
        """Run fn on every config; call on_result in the calling thread as each ends. Once `cancel`
        is set, start no more (those are never reported) and stop the running ones where the
        executor can: a stopped cell reports its own result, or the error `Cancelled`."""

    def shutdown(self) -> None: ...


class InlineExecutor:
    """Cells one after another in the calling thread: the app's default on a small shared server
    (one job at a time, no extra processes). The thread's torch thread count is left alone."""

    def map(self, fn, configs, on_result, cancel=None) -> None:
        for config in configs:
            if cancel is not None and cancel.is_set():
                return
            try:
                payload, error = fn(config, cancel), None
            except BaseException as e:  # noqa: BLE001 (reported, like the other executors)
                payload, error = None, e
            on_result(config, payload, error)

    def shutdown(self) -> None:
        pass


RAY_CANCEL_RETRY_S = 0.5  # a cancel is sent again this often to Ray tasks that still run
_WORKER_CANCEL = None  # the pool's multiprocessing Event, in each worker process


def _init_worker(cancel, threads: int) -> None:
    global _WORKER_CANCEL
    _WORKER_CANCEL = cancel
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it cancels


def _call_in_worker(fn: CellFn, config: dict) -> dict:
    return fn(config, _WORKER_CANCEL)


class LocalExecutor:
    """A pool of `workers` processes (spawned once, reused across sweeps), `threads` torch threads each.

    Processes, not threads: small cells are mostly Python overhead, which threads would serialise
    on the GIL, and torch's thread count is per process, so each worker can pin its own. Spawned,
    not forked: forking a process that has started OpenMP or app threads is unsafe.
    """

    def __init__(self, workers: Optional[int] = None, threads: int = 1):
        cores = os.cpu_count() or 1
        self.threads = max(1, int(threads))
        self.workers = int(workers) if workers is not None else max(1, default_workers() // self.threads)
        if self.workers < 1:
            raise ConfigError("workers", workers, "an integer >= 1")
        if self.workers * self.threads > cores:
            log.warning("%d workers x %d torch threads exceed the %d cores; cells will contend",
                        self.workers, self.threads, cores)
        self._pool: Optional[ProcessPoolExecutor] = None
        self._cancel = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._cancel = ctx.Event()
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                             initargs=(self._cancel, self.threads))
        return self._pool

    def map(self, fn, configs, on_result, cancel=None) -> None:
        todo, running = list(configs), {}
        self._ensure_pool()
        self._cancel.clear()
        try:
            while todo or running:
                if cancel is not None and cancel.is_set():
                    self._cancel.set()  # running cells stop at their next batch; no new ones
                    todo = []
                while todo and len(running) < self.workers:  # at most one cell per worker: cancel is prompt
                    config = todo.pop(0)
                    with spawn_without_main():  # the pool spawns its processes on submit
                        running[self._ensure_pool().submit(_call_in_worker, fn, config)] = config
                done, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
                self._report(done, running, on_result)
        except KeyboardInterrupt:  # Ctrl-C: the running cells stop and are reported, then it goes up
            self._cancel.set()
            self._report(wait(running, timeout=30).done, running, on_result)
            raise

    def _report(self, done, running: dict, on_result) -> None:
        for future in done:
            config, payload, error = running.pop(future), None, None
            try:
                payload = future.result()
            except Exception as e:  # a worker process died (segfault, out of memory) or pickling failed
                error = e
                if isinstance(e, BrokenProcessPool) and self._pool is not None:
                    self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None  # the next submit spawns a fresh pool
            on_result(config, payload, error)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._cancel.set()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


_RAY_INTERRUPTED = False  # in a Ray worker: a cancel interrupted a task of this process


def _sigint_hook():
    """The hook each Ray worker runs as it starts (runtime_env worker_process_setup_hook): it gives
    SIGINT back to Python's handler. A driver started in the background (`cmd &`: the shell ignores
    SIGINT for it) hands the ignore on to Ray's workers, and a cancel, which interrupts the task with
    SIGINT, then did nothing (every cancelled cell trained to the end) or failed the cell ("'Handlers'
    object is not callable"). A closure, which Ray ships by value (its name is not importable): the
    hook runs before the driver's sys.path reaches the worker, where `resx` need not import yet."""
    def default_sigint() -> None:
        import signal
        import threading
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
    return default_sigint


_RAY_DEFAULT_SIGINT = _sigint_hook()


def _ray_cell(fn: CellFn, config: dict, threads: int) -> dict:
    """One cell in a Ray worker. A cancel is a KeyboardInterrupt raised wherever the task is, and
    Ray keeps the process for later tasks: one that lands in a lazy import (the first optimizer
    step imports torch._dynamo, and sympy with it) leaves a half-initialised module behind, and
    every later cell there failed ("module 'sympy' has no attribute 'logic'", measured). So a
    worker that was interrupted exits at its next task, which Ray then retries on a fresh one."""
    global _RAY_INTERRUPTED
    if _RAY_INTERRUPTED:
        os._exit(1)
    _RAY_DEFAULT_SIGINT()  # for a Ray this executor did not start, whose workers lack the hook
    torch.set_num_threads(threads)
    try:
        return fn(config, None)
    except KeyboardInterrupt:
        _RAY_INTERRUPTED = True
        raise


class RayExecutor:
    """Cells as Ray tasks (`threads` CPUs and torch threads each, 1 by default), on a cluster or a local one.

    address: "auto", "host:port" or "ray://host:10001" connects to a cluster started outside
    (`ray start --head`); resx and the data must be importable/readable on its nodes. Without an
    address, a local Ray is started with `num_cpus` (default: every core). Either way ray.init
    runs in a long-lived thread owned by this executor (design.md "Scale-out": Ray's processes die
    with the thread that started them), which also calls ray.shutdown() on `shutdown()`. If Ray is
    already initialised in this process, it is used as it is and left running.
    """

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None, threads: int = 1,
                 runtime_env: Optional[dict] = None, connect_timeout: float = 60.0):
        try:
            import ray
        except ImportError:
            raise ConfigError("executor", "ray", "an installed Ray: pip install -r requirements-ray.txt") from None
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError("num_cpus", num_cpus, "an integer >= 1 (a Ray without CPUs runs no cell)")
        self.ray, self.threads = ray, max(1, int(threads))
        self._ready, self._stop, self._error = threading.Event(), threading.Event(), None
        self._owned = not ray.is_initialized()
        if self._owned:
            runtime_env = {"worker_process_setup_hook": _RAY_DEFAULT_SIGINT, **(runtime_env or {})}
            kwargs = dict(address=address, runtime_env=runtime_env, log_to_driver=False)
            if address is None:
                kwargs.update(num_cpus=num_cpus, include_dashboard=False)
            self._thread = threading.Thread(target=self._own, args=(kwargs,), name="resx-ray-owner", daemon=True)
            self._thread.start()
            if not self._ready.wait(connect_timeout):  # ray.init retries an unreachable address for ever
                raise ConfigError("ray_address", address, f"a Ray cluster that answers within {connect_timeout:g} s")
            if self._error is not None:
                raise ConfigError("ray_address" if address else "executor", address or "ray",
                                  f"a reachable Ray cluster ({type(self._error).__name__}: {self._error})")
        self._task = ray.remote(num_cpus=self.threads)(_ray_cell)

    def _own(self, kwargs: dict) -> None:
        try:
            self.ray.init(**kwargs)
        except BaseException as e:  # handed to __init__, which raises it in the caller's thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._stop.wait()
        self.ray.shutdown()

    @property
    def cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)) // self.threads)

    def map(self, fn, configs, on_result, cancel=None) -> None:
        ray, todo, running, cancelled_at = self.ray, list(configs), {}, None
        limit = self.cpus  # one task per CPU, as locally: a cancel has nothing queued to undo
        try:
            while todo or running:
                if cancel is not None and cancel.is_set() and (
                        cancelled_at is None or time.monotonic() - cancelled_at >= RAY_CANCEL_RETRY_S):
                    # KeyboardInterrupt inside the task; it reports TaskCancelledError. Sent again
                    # while a task still runs: Ray drops a cancel that reaches a worker after it took
                    # the task but before it started it (ray-project/ray#24359, #52703), and the
                    # task would then train to the end; a cancel of a finished task does nothing.
                    cancelled_at = time.monotonic()
                    for ref in running:
                        ray.cancel(ref)
                    todo = []
                while todo and len(running) < limit:
                    config = todo.pop(0)
                    running[self._task.remote(fn, config, self.threads)] = config
                done, _ = ray.wait(list(running), num_returns=1, timeout=0.1)
                for ref in done:
                    config, payload, error = running.pop(ref), None, None
                    try:
                        payload = ray.get(ref)
                    except ray.exceptions.TaskCancelledError:
                        error = Cancelled("cancelled while running")
                    except Exception as e:  # the worker died, or the task could not be shipped
                        error = e
                    on_result(config, payload, error)
        except KeyboardInterrupt:
            for ref in running:
                ray.cancel(ref)
            raise

    def shutdown(self) -> None:
        if self._owned and self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=60)


