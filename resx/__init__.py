"""resx: depth expansion in normalized residual networks, computed, checked and shown.

The public API; everything else is private by default. `torch` is imported here, at the top,
before any worker thread starts (design.md "Engineering facts").
"""
import torch  # noqa: F401  (first import on the main thread, never inside a worker)

from .core.config import PRESETS, ConfigError, RunConfig
from .core.data import DataError, load_data
from .core.models import PreservationReport, build_model, insert_block
from .core.records import Record
from .theory.diagnose import diagnose, expand
from .runs.pipeline import run_pipeline

__all__ = ["PRESETS", "ConfigError", "DataError", "RunConfig", "PreservationReport", "Record", "build_model",
           "diagnose", "expand", "insert_block", "load_data", "run_pipeline"]
__version__ = "0.1.0"
