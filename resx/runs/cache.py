"""Identical runs computed once: the content address of a run (issue 10, item 3).

A run is a pure function of its configuration (the seed is a field of it), the code that runs it
and the library versions beneath; `run_key` hashes exactly those, so two requests with the same
key would compute the same numbers and the second can be served by the first: attach to it while
it is queued or running, or open its stored result once it is done (jobs.JobManager.request).

code version: the sha256 of every `.py` file of the `resx` package (path and bytes), so that any
edit to the code makes a new key and never serves a stale result; plus the torch version, and
the CPU/CUDA device named in the configuration ("auto" resolves per machine and is hashed as
the device it resolved to).
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parents[1]   # the resx package folder
REUSABLE = ("queued", "running", "done")         # failed, cancelled, interrupted runs are not reused


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 over the resx package's sources (relative path and bytes of each .py, sorted) and the
    torch version; 16 hex digits."""
    digest = hashlib.sha256(f"torch {torch.__version__}\n".encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def run_key(config: dict, version: str | None = None) -> str:
    """The content address of a run: sha256 of the canonical JSON of (config, code version).

    Keys are sorted and floats written by repr, so equal configurations give equal keys whatever
    the order their fields came in; an uploaded array's path is content-addressed already
    (resx.core.data.save_upload names the file by its sha256). Initial weights (`init_weights`)
    enter by the sha256 of the file's bytes, whatever its path (a missing file: by its path).
    """
    config = dict(config)
    if config.get("init_weights"):
        from ..core.weights import file_sha256
        try:
            config["init_weights_sha256"] = file_sha256(config["init_weights"])
        except OSError:
            config["init_weights_sha256"] = None
    if config.get("device") == "auto":
        from ..core.train import resolve_device
        config["device"] = str(resolve_device("auto"))
    text = json.dumps({"config": config, "code": version or code_version()}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
