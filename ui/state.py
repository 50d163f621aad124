"""The process-wide services every session shares: the job manager and store, the background task
runner, and the operator's settings and caps (design.md "Runs, jobs and the store")."""
from __future__ import annotations

import atexit
import os

import streamlit as st

import resx  # noqa: F401  (torch is imported on the main thread before any worker starts)
from resx.core.config import OperatorCaps
from resx.runs.jobs import JobManager, TaskRunner
from resx.runs.pipeline import run_pipeline
from resx.runs.store import Store


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
    manager = JobManager(store, run_pipeline)
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
