"""The process-wide services every session shares: the job manager and store, the background task
runner, and the operator's settings and caps (design.md "Runs, jobs and the store")."""
from __future__ import annotations

import atexit
import os

# Every module a script thread can touch, imported once here, on the first script run, before
# two sessions' threads can race to import one: two threads importing pandas through plotly at
# once raised "partially initialized module 'pandas' has no attribute 'Series'" (issue 10).
import numpy  # noqa: F401
import pandas  # noqa: F401
import plotly.graph_objects  # noqa: F401
import plotly.io  # noqa: F401
import streamlit as st

import resx  # noqa: F401  (torch is imported on the main thread before any worker starts)
import resx.core.data  # noqa: F401
import resx.figures.live  # noqa: F401
from resx.core.config import OperatorCaps
from resx.runs.jobs import JobManager, TaskRunner, default_torch_threads, default_workers
from resx.runs.store import Store
from resx.runs.workers import WorkerPool


def operator_setting(name: str) -> str | None:
    """An operator setting: the environment first, then .streamlit/secrets.toml; never the UI."""
    if os.environ.get(name):
        return os.environ[name]
    try:
        value = st.secrets.get(name)
    except Exception:  # no secrets file: streamlit raises its own error type
        value = None
    return str(value) if value is not None else None


MANAGERS: list[JobManager] = []  # every manager this process made, so tests and exit can shut them down
TASK_RUNNERS: list[TaskRunner] = []


@st.cache_resource
def get_manager() -> JobManager:
    """One job manager and store per server process (design.md "Runs, jobs and the store")."""
    data_dir = operator_setting("RESX_DATA_DIR")
    if data_dir:
        os.environ["RESX_DATA_DIR"] = data_dir  # resx.core.data reads the environment
    store = Store()
    store.recover_interrupted()
    # the pipeline runs in worker processes (resx/runs/workers.py): no page can stall it. Each
    # process gets cores // processes torch threads; the server process itself needs one. The cores are
    # the affinity and cgroup quota's (usable_cores); RESX_WORKERS and RESX_TORCH_THREADS override.
    processes = default_workers()
    pool = WorkerPool(processes, torch_threads=default_torch_threads(processes))
    manager = JobManager(store, pool, workers=processes, torch_threads=1)
    MANAGERS.append(manager)
    atexit.register(manager.shutdown, wait=True, timeout=5)
    return manager


@st.cache_resource
def get_tasks() -> TaskRunner:
    """One background thread per server for sweeps and figure runs, one task at a time."""
    runner = TaskRunner()
    TASK_RUNNERS.append(runner)
    atexit.register(runner.shutdown, timeout=5)
    return runner


def caps() -> OperatorCaps:
    return OperatorCaps.from_env()


def trace(event: str, **fields) -> None:
    """With $RESX_TRACE_LAB set to a file: one line per Lab script or fragment run (the load driver's
    session, from its X-Resx-Session header), to follow a session that never showed its run's end."""
    path = os.environ.get("RESX_TRACE_LAB")
    if not path:
        return
    import time
    _trace_dropped_messages(path)
    who = (st.context.headers or {}).get("X-Resx-Session", "?")
    with open(path, "a") as f:
        f.write(f"{time.time():.3f} s{who} {event} " + " ".join(f"{k}={v}" for k, v in fields.items()) + "\n")


_TRACING_DROPS: list[str] = []


def _trace_dropped_messages(path: str) -> None:
    """Also note, once per process, each message Streamlit drops because it came from a ScriptRunner
    that is no longer its session's current one (app_session logs these at debug level only)."""
    if _TRACING_DROPS:
        return
    import logging
    import time

    class Dropped(logging.Handler):
        def emit(self, record):
            if "non-current ScriptRunner" in record.getMessage():
                with open(path, "a") as f:
                    f.write(f"{time.time():.3f} dropped {record.getMessage()}\n")

    log = logging.getLogger("streamlit.runtime.app_session")
    log.setLevel(logging.DEBUG)
    log.addHandler(Dropped(logging.DEBUG))
    _TRACING_DROPS.append(path)
