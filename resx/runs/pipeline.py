"""The whole run, as named steps: train base -> estimate margins -> insert -> jumpboard ->
fine-tune (new and control) -> terms and routes -> certify. Emits records; returns the result dict that
becomes `result.json`.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Optional

import torch

from ..core.config import RunConfig
from ..core.data import Split, load_data
from ..core.models import build_model, insert_block, new_block_parameter_names
from ..core.records import Record, RecordSink, discard
from ..core.train import (Evaluator, LossMemo, draw_population, per_sample_losses, resolve_device, risk,
                          same_prefix, train)
from ..core.weights import load_init_weights
from ..theory.bounds import complexity, loss_bound, make_terms, tighter_route
from ..theory.jumpboard import jump_margins, jumpboard_path
from ..theory.kink import best_of_positions
from ..theory.margins import descent_margins
from .certify import certificates, headline, not_certified

log = logging.getLogger(__name__)

CHECKPOINTS = ("old", "new", "control", "jumpboard")
MARGIN_SNAPSHOTS = 20   # columns of the live descent-margin heatmap during base training
SNAPSHOT_S = 512        # points of S that calibrate the candidates of a heatmap column


def risks_of(model, data, population, losses=per_sample_losses) -> dict:
    """L_S, L_T, L_P and the population risk with its standard error (None for real data)."""
    out = {"L_S": risk(model, data.S, losses).loss, "L_T": risk(model, data.T, losses).loss,
           "L_P": risk(model, data.P, losses).loss, "L_pop": None, "L_pop_se": None}
    if population is not None:
        r = risk(model, population, losses)
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
    losses = LossMemo()   # each final model's per-sample losses on each sample, computed once
    result: dict = {"config": cfg.to_dict(), "status": "running", "device": str(device),
                    "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                    "bayes_risk": data.bayes_risk[0] if data.bayes_risk else None,
                    "bayes_risk_se": data.bayes_risk[1] if data.bayes_risk else None}
    lap("load_data")

    old = build_model(cfg, data.input_shape, data.num_classes)
    if cfg.init_weights:   # the user's own network: checked key by key, read without unpickling
        load_init_weights(old, cfg.init_weights, cfg.arch)
    old = old.to(device)
    every = max(1, cfg.epochs // MARGIN_SNAPSHOTS)

    S_head = Split(data.S.x[:SNAPSHOT_S], data.S.y[:SNAPSHOT_S])

    def margin_snapshot(model, epoch, step):
        """The descent-margin heatmap: U_P at every position, every few epochs of base training.
        The heatmap shows P; S only calibrates the candidates, so a slice of it is enough here."""
        if epoch % every == 0 or epoch == cfg.epochs:
            for m in descent_margins(model, S_head, data.P, None, delta=cfg.delta, seed=cfg.seed, descent=False):
                for record in m.records(step):
                    sink(record)

    outcome = train(old, data, cfg, phase="base", epochs=cfg.epochs, sink=sink, cancel=cancel,
                    evaluator=evaluator, epoch_hook=margin_snapshot)
    lap("train_base")
    if outcome.status != "done":
        return _finish(result | {"status": outcome.status, "message": outcome.message}, timings, out_dir,
                       {"old": old})
    base_steps = outcome.steps

    # estimate margins: every estimator at every position, the population value where there is one
    sink(Record("margins", base_steps, "", "progress", 0.0))
    margins = descent_margins(old, data.S, data.P, population, delta=cfg.delta, seed=cfg.seed)
    result["margins"] = [m.to_dict() for m in margins]
    result["descent_best_position"] = best_of_positions({m.position: m.descent for m in margins}, cfg.delta)
    sink(Record("margins", base_steps, "", "progress", 1.0))
    lap("estimate_margins")

    # insert: the same seeded candidate block whose margin was measured
    new, report = insert_block(old, cfg.position, data.S.x, data.S.y, seed=cfg.seed)
    phi0 = copy.deepcopy(new)  # f_new at phi0: the reference the complexity terms measure distance from
    sink(Record("insert", 0, "S", "max_abs_logit_diff", report.max_abs_logit_diff, position=cfg.position))
    sink(Record("insert", 0, "S", "loss_diff", report.loss_diff, position=cfg.position))
    result["insertion"] = report.to_dict()
    lap("insert")

    # jumpboard: direction on P1, step on P2 (with no descent direction on P1: f_J = f_new, and a note).
    # The curve's L uses the live curves' population slice; Delta_R (guarantees) uses all n_pop points.
    sink(Record("jumpboard", 0, "", "progress", 0.0))
    tested = next(m.descent for m in margins if m.position == cfg.position)   # d_hat and its test, reused
    jump = jumpboard_path(new, cfg.position, data.S, data.P, data.T, evaluator.population, seed=cfg.seed,
                          delta=cfg.delta, test=tested)
    f_J = jump.model
    result["jumpboard"] = jump.to_dict()
    sink(Record("jumpboard", 0, "", "progress", 1.0))
    lap("jumpboard")

    # fine-tune the expanded model from phi0, and the control: f_old trained on as many steps
    block_names = set(new_block_parameter_names(new, cfg.position))
    params = [p for n, p in new.named_parameters() if n in block_names] if cfg.finetune == "block" else None
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
    models["jumpboard"] = f_J

    sharing = [old] + [m for m in (new, f_J) if same_prefix(old, m, cfg.position)]   # finetune="block"
    for sample in (data.S, data.T, data.P, population):
        if sample is not None and len(sharing) > 1:
            losses.fill(sharing, cfg.position, sample.x, sample.y)   # the blocks before the insertion once
    for name, model in models.items():
        result[name if name != "jumpboard" else "f_J"] = risks_of(model, data, population, losses)
    lap("evaluate")
    result.update(guarantees(cfg, data, population, old, f_J, new, phi0, result, losses))
    result["expansion_beats_control"] = expansion_against_control(new, control, data, population, cfg.delta,
                                                                  losses)
    final = {"old": old, "new": new, "control": control, "f_J": f_J}
    result["headline"] = headline(final, data, population, losses)   # reuses the evaluate step's losses
    lap("terms_and_routes")
    if cfg.certify:
        sink(Record("certify", 0, "", "progress", 0.0))   # hold-out and PAC-Bayes certificates
        result["certificates"] = certificates(cfg, data, population, final, result, losses)
        sink(Record("certify", 0, "", "progress", 1.0))
        lap("certify")
    else:
        result["certificates"] = not_certified()
    result["status"] = "done"
    return _finish(result, timings, out_dir, models)


def certify_saved_run(run_dir: Path, result: Optional[dict] = None) -> dict:
    """The certify step for a finished run, from its folder (result.json and the four checkpoints):
    the data and the population are drawn again from the run's seeds, the models loaded, nothing
    trained but what the certificates themselves train (the PAC-Bayes split). The same numbers as
    a run with certify=true. Writes the updated result.json; returns the result."""
    run_dir = Path(run_dir)
    if result is None:
        try:
            result = json.loads((run_dir / "result.json").read_text())
        except (OSError, ValueError) as e:
            raise CertifyError(f"{run_dir} holds no readable result.json ({e})") from None
    if result.get("status") != "done":
        raise CertifyError(f"only a finished run can be certified; this one is {result.get('status')!r}")
    missing = [f"{name}.pt" for name in CHECKPOINTS if not (run_dir / f"{name}.pt").is_file()]
    if missing:
        raise CertifyError(f"{run_dir} lacks the checkpoints {missing}: the run kept none to certify from "
                           "(run it again with certify=true)")
    cfg = RunConfig.from_dict(result["config"])
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)   # as run_pipeline: the same S, P, T and population
    data = load_data(cfg, device)
    population = draw_population(data, cfg.n_pop, seed=cfg.seed + 10_007)
    models = {("f_J" if name == "jumpboard" else name):
              load_checkpoint(run_dir, name, cfg, result["input_shape"], result["num_classes"]).to(device)
              for name in CHECKPOINTS}
    result = dict(result)
    result["certificates"] = certificates(cfg, data, population, models, result, LossMemo())
    result["timings"] = dict(result.get("timings") or {}) | {"certify": round(time.perf_counter() - start, 4)}
    (run_dir / "result.json").write_text(json.dumps(finite_json(result), indent=2, default=_jsonable))
    return result


def certify_stored_run(store, run_id: str) -> dict:
    """certify_saved_run for a run of the store (its folder is where its checkpoints were recorded);
    the store gets the new result, and result.json as an artifact if the run had none."""
    run = store.get_run(run_id)
    if run is None:
        raise CertifyError(f"no run {run_id!r} in the store at {store.path} (see 'runs list')")
    artifacts = store.artifacts(run_id)
    folders = [Path(a["path"]).parent for a in artifacts if a["name"] == "old.pt"]
    if not folders:
        raise CertifyError(f"run {run_id} kept no checkpoints to certify from (run it again with certify=true)")
    result = certify_saved_run(folders[0], run["result"] or {"status": run["status"]})
    store.set_result(run_id, result)
    if not any(a["name"] == "result.json" for a in artifacts):
        store.add_artifact(run_id, "result.json", folders[0] / "result.json")
    return result


class CertifyError(ValueError):
    """A run cannot be certified later: not finished, or no checkpoints kept; says which."""


def guarantees(cfg: RunConfig, data, population, old, f_J, new, phi0, result: dict,
               losses=per_sample_losses) -> dict:
    """Complexity terms, the three gains and routes A and B (theory.md 6-8)."""
    c = max(loss_bound(model, data.S.x, cfg.arch)["c"] for model in (old, f_J, new))
    jump = jump_margins(old, f_J, data.T, population, delta=cfg.delta, loss_bound=c, losses=losses)
    M = complexity(new, data.S.x, bound=cfg.bound, reference=phi0, new_block_position=cfg.position)
    K = complexity(f_J, data.S.x, bound=cfg.bound, reference=phi0, new_block_position=cfg.position)
    r_new, r_J = result["new"], result["f_J"]
    terms = make_terms(M=M, K=K, c=c, delta=cfg.delta, Delta_ERM=r_J["L_S"] - r_new["L_S"],
                       Delta_R=jump["Delta_R"], Delta_R_T=jump["Delta_R_T"], Delta_R_lower=jump["Delta_R_lower"],
                       Delta_R_T_lower=jump["Delta_R_T_lower"],
                       Delta_R_clipped=jump["Delta_R_clipped" if population is not None else "Delta_R_T_clipped"],
                       gap_new=abs(r_new["L_T"] - r_new["L_S"]), gap_J=abs(r_J["L_T"] - r_J["L_S"]), n=cfg.n)
    L_old = result["old"]["L_pop"] if population is not None else result["old"]["L_T"]
    route_A, route_B = terms.routes(L_old)
    tighter, reason = tighter_route(route_A, route_B)
    return {"terms": terms.to_dict() | {"Delta_R_se": jump["Delta_R_se"], "Delta_R_T_se": jump["Delta_R_T_se"],
                                        "Delta_R_T_hoeffding": jump["Delta_R_T_hoeffding"], "rho_M": M.rho,
                                        "rho_K": K.rho},
            "complexity": {"M": M.to_dict(), "K": K.to_dict()},
            "routes": {"A": route_A.to_dict(), "B": route_B.to_dict(), "tighter": tighter, "tighter_reason": reason}}


def expansion_against_control(new, control, data, population, delta: float, losses=per_sample_losses) -> dict:
    """L(control) - L(new) on L (synthetic) or L_T (real data), paired on one sample, with its se.

    "beats" when the difference is above 2 paired standard errors, "loses" when below -2, else "ties".
    """
    paired = jump_margins(control, new, data.T, population, delta=delta, losses=losses)
    key, diff, se = (("L_pop", paired["Delta_R"], paired["Delta_R_se"]) if population is not None
                     else ("L_T", paired["Delta_R_T"], paired["Delta_R_T_se"]))
    old_key = "pop" if population is not None else "T"
    verdict = "beats" if diff > 2 * se else "loses" if diff < -2 * se else "ties"
    return {"risk": key, "new": paired[f"L_{old_key}_J"], "control": paired[f"L_{old_key}_old"],
            "difference": diff, "difference_se": se, "beats": verdict == "beats", "verdict": verdict}


def _finish(result: dict, timings: dict, out_dir: Optional[Path], models: dict) -> dict:
    result["timings"] = timings
    result["torch_threads"] = torch.get_num_threads()   # at the end; the timings depend on it
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, model in models.items():
            torch.save(model.state_dict(), out_dir / f"{name}.pt")
        (out_dir / "result.json").write_text(json.dumps(finite_json(result), indent=2, default=_jsonable))
    return result


def finite_json(value):
    """JSON has no inf or NaN: non-finite numbers become null (e.g. n_nonvacuous = inf: never)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_checkpoint(out_dir: Path, which: str, cfg: RunConfig, input_shape, num_classes) -> torch.nn.Module:
    """Rebuild `old`, `new`, `control` or `jumpboard` (f_J) from a run folder; state dicts load with
    weights_only=True."""
    if which not in CHECKPOINTS:
        raise ValueError(f"which={which!r} is not allowed: one of {list(CHECKPOINTS)}")
    model = build_model(cfg, tuple(input_shape), num_classes)
    if which in ("new", "jumpboard"):
        model.blocks.insert(cfg.position, model.new_block(cfg.position))
    state = torch.load(Path(out_dir) / f"{which}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model
