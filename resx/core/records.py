"""Metric records: what the training loop and the expansion steps emit (style.md "Output").

A record is one number at one step of one phase, with its standard error where it is an estimate.
Phases, one name each everywhere: "base" (train the old model), "margins" (estimate descent
margins), "insert", "jumpboard", "new" (fine-tune the expanded model), "control" (train the old
model on for as many steps).
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Callable, Optional

PHASES = ("base", "margins", "insert", "jumpboard", "new", "control")


@dataclass(frozen=True)
class Record:
    phase: str             # one of PHASES
    step: int              # optimisation step within the phase (0 before the first step)
    split: str             # "S", "P", "T", "pop", or "" for run-level numbers
    name: str              # e.g. "loss", "acc", "lr", "kappa2_U"
    value: float
    stderr: Optional[float] = None
    position: Optional[int] = None   # insertion position, for per-position numbers

    def to_dict(self) -> dict:
        return asdict(self)


RecordSink = Callable[[Record], None]


def discard(_record: Record) -> None:
    """A sink that keeps nothing."""
