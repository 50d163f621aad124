"""resx: depth expansion in normalized residual networks, computed, checked and shown.

The public API; everything else is private by default. `torch` is imported here, at the top,
before any worker thread starts (design.md "Engineering facts").
"""
import torch  # noqa: F401  (first import on the main thread, never inside a worker)

from .config import PRESETS, ConfigError, RunConfig
from .models import PreservationReport, build_model, insert_block
from .records import Record

__all__ = ["PRESETS", "ConfigError", "RunConfig", "PreservationReport", "build_model", "insert_block", "Record"]
__version__ = "0.1.0"
