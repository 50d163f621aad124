"""The whole run, as named steps: train base -> estimate margins -> insert -> jumpboard ->
fine-tune (new and control) -> terms and routes. Emits records; returns the result dict that
becomes `result.json`.
"""
from __future__ import annotations

import copy
import json
import logging
import threading
import time
from pathlib import Path
from typing import Optional

import torch

from .config import RunConfig
from .data import load_data
from .models import build_model, insert_block, new_block_parameter_names
from .records import Record, RecordSink, discard
from .train import Evaluator, draw_population, resolve_device, risk, train

log = logging.getLogger(__name__)

CHECKPOINTS = ("old", "new", "control")


def risks_of(model, data, population) -> dict:
    """L_S, L_T, L_P and the population risk with its standard error (None for real data)."""
    out = {"L_S": risk(model, data.S).loss, "L_T": risk(model, data.T).loss, "L_P": risk(model, data.P).loss,
           "L_pop": None, "L_pop_se": None}
    if population is not None:
        r = risk(model, population)
        out["L_pop"], out["L_pop_se"] = r.loss, r.stderr
    return out


def run_pipeline(cfg: RunConfig, sink: RecordSink = discard, cancel: Optional[threading.Event] = None,
                 out_dir: Optional[Path] = None) -> dict:
    """Run `cfg` end to end; write `result.json` and checkpoints to `out_dir` when given.

    The result's "status" is "done", "diverged" (with "message": step and loss) or "cancelled".
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, device)
    population = draw_population(data, cfg.n_pop, seed=cfg.seed + 10_007)
    evaluator = Evaluator(data, population)
    result: dict = {"config": cfg.to_dict(), "status": "running", "device": str(device),
                    "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                    "bayes_risk": data.bayes_risk[0] if data.bayes_risk else None,
                    "bayes_risk_se": data.bayes_risk[1] if data.bayes_risk else None}
    lap("load_data")

    old = build_model(cfg, data.input_shape, data.num_classes).to(device)
    outcome = train(old, data, cfg, phase="base", epochs=cfg.epochs, sink=sink, cancel=cancel,
                    evaluator=evaluator)
    lap("train_base")
    if outcome.status != "done":
        return _finish(result | {"status": outcome.status, "message": outcome.message}, timings, out_dir,
                       {"old": old})

    new, report = insert_block(old, cfg.position, data.S.x, data.S.y, seed=cfg.seed)
    sink(Record("insert", 0, "S", "max_abs_logit_diff", report.max_abs_logit_diff, position=cfg.position))
    sink(Record("insert", 0, "S", "loss_diff", report.loss_diff, position=cfg.position))
    result["insertion"] = report.to_dict()
    lap("insert")

    block_params = [p for n, p in new.named_parameters() if n in set(new_block_parameter_names(new, cfg.position))]
    params = block_params if cfg.finetune == "block" else None
    outcome = train(new, data, cfg, phase="new", epochs=cfg.finetune_epochs, params=params, sink=sink,
                    cancel=cancel, evaluator=evaluator, seed=cfg.seed + 1)
    lap("finetune_new")
    control = copy.deepcopy(old)
    if outcome.status == "done":
        outcome = train(control, data, cfg, phase="control", epochs=cfg.finetune_epochs, sink=sink,
                        cancel=cancel, evaluator=evaluator, seed=cfg.seed + 1)
        lap("finetune_control")
    models = {"old": old, "new": new, "control": control}
    if outcome.status != "done":
        return _finish(result | {"status": outcome.status, "message": outcome.message}, timings, out_dir, models)

    for name, model in models.items():
        result[name] = risks_of(model, data, population)
    lap("evaluate")
    result["status"] = "done"
    return _finish(result, timings, out_dir, models)


def _finish(result: dict, timings: dict, out_dir: Optional[Path], models: dict) -> dict:
    result["timings"] = timings
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, model in models.items():
            torch.save(model.state_dict(), out_dir / f"{name}.pt")
        (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=_jsonable))
    return result


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_checkpoint(out_dir: Path, which: str, cfg: RunConfig, input_shape, num_classes) -> torch.nn.Module:
    """Rebuild `old`, `new` or `control` from a run folder; state dicts load with weights_only=True."""
    if which not in CHECKPOINTS:
        raise ValueError(f"which={which!r} is not allowed: one of {list(CHECKPOINTS)}")
    model = build_model(cfg, tuple(input_shape), num_classes)
    if which == "new":
        model.blocks.insert(cfg.position, model.new_block(cfg.position))
    state = torch.load(Path(out_dir) / f"{which}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model
