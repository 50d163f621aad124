"""The user's own weights: a state dict file the old model starts from (issue 26; design.md "What bad
input gets").

Read with `torch.load(weights_only=True)`: PyTorch's restricted unpickler builds tensors, dicts,
lists and numbers only and refuses any other global (a pickle whose `__reduce__` calls os.system
is refused before anything runs). Size-capped, then checked key by key against the architecture;
every failure is one DataError line naming what was wrong (the first mismatched key) and what is
allowed. `save_weights` keeps an upload or a CLI file as <sha256>.pt, so a run's configuration,
and with it its content address (runs/cache.py), names the weights by their hash.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from .data import DataError

MAX_WEIGHTS_BYTES = 200 * 2**20   # resnet34's state dict is ~85 MB


def read_state_dict(source, where: str = "the weights file", max_bytes: int = MAX_WEIGHTS_BYTES) -> dict:
    """{key: tensor} from a path or bytes, without unpickling anything but tensors and containers."""
    if isinstance(source, (bytes, bytearray)):
        size, stream = len(source), io.BytesIO(source)
    else:
        p = Path(source)
        if not p.is_file():
            raise DataError(f"{where}: {p} does not exist; expected a file written by torch.save(model.state_dict(), path)")
        size, stream = p.stat().st_size, p
    if size > max_bytes:
        raise DataError(f"{where} is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")
    try:
        state = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as e:   # UnpicklingError for a forbidden global, RuntimeError / EOFError for junk
        forbidden = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        why = (f"it asks to call or build {forbidden.group(1)}, which a state dict never needs" if forbidden else
               f"{type(e).__name__}: {_first_line(e)}")   # torch's own advice (load unsafely) is not repeated
        raise DataError(f"{where} could not be read as weights only ({why}); expected a state dict saved with "
                        f"torch.save(model.state_dict(), path); nothing else is unpickled") from None
    if isinstance(state, dict) and set(state) == {"state_dict"} and isinstance(state["state_dict"], dict):
        state = state["state_dict"]   # a common checkpoint wrapper
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DataError(f"{where} holds a {type(state).__name__}, not a state dict; expected "
                        f"{{parameter name: tensor}} from model.state_dict()")
    return state


def _first_line(e: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0][:160] if text else "unreadable"


def check_state_dict(model: nn.Module, state: dict, arch: str, where: str = "the weights file"):
    """Raise DataError naming the first key (in the model's order) that is missing, has another shape,
    or is not the model's; return None when `state` fits `model` exactly."""
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            raise DataError(f"{where} does not fit arch={arch}: key {key!r} is missing ({len(state)} keys in the "
                            f"file, {len(own)} expected)")
        if tuple(state[key].shape) != tuple(value.shape):
            raise DataError(f"{where} does not fit arch={arch}: key {key!r} has shape {tuple(state[key].shape)} "
                            f"in the file and {tuple(value.shape)} in the model (small-image resnets have a 3x3 "
                            f"stride-1 conv1 and no max-pool; the head has one output per class)")
    extra = next((k for k in state if k not in own), None)
    if extra is not None:
        raise DataError(f"{where} does not fit arch={arch}: key {extra!r} is not in the model")


def load_init_weights(model: nn.Module, path: str, arch: str):
    """Load the state dict at `path` into `model` (in place), after `check_state_dict`."""
    state = read_state_dict(path, "init_weights")
    check_state_dict(model, state, arch, "init_weights")
    model.load_state_dict(state)


def save_weights(content: bytes, folder: Path, max_bytes: int = MAX_WEIGHTS_BYTES) -> Path:
    """Validate weights bytes (read_state_dict) and keep them as folder/<sha256>.pt; return the path.
    The same bytes twice give the same path; nothing invalid is kept."""
    read_state_dict(bytes(content), "the uploaded weights", max_bytes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{hashlib.sha256(content).hexdigest()}.pt"
    if not final.exists():
        tmp = folder / f".{final.stem}.{os.getpid()}.tmp"
        tmp.write_bytes(content)
        os.replace(tmp, final)
    return final


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
