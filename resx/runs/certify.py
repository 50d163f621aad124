"""The "certify" step of a run: the hold-out paired certificates, the PAC-Bayes route for the new
block, and the norm-based routes, as one `certificates` section (theory.md 8b; THEORY.md 8b); and
the headline differences, which every run computes. Runs after fine-tuning; reads the run's models,
never trains them (the PAC-Bayes route trains its own split re-run). A run with certify=false gets
`not_certified()` instead, and `resx.runs.pipeline.certify_saved_run` certifies it later.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

import torch

from ..core.config import RunConfig
from ..core.data import Split, TaskData
from ..core.models import build_model, insert_block
from ..core.train import losses_of, per_sample_losses, train
from ..theory.bounds import loss_bound
from ..theory.certificates import certificate_from_losses, clip_level, paired_difference, sample_losses
from ..theory.pacbayes import pac_bayes_block

CERT_CHUNK = 16384        # points per chunk of the fresh certification sample (memory: images)
M_CERT_MIN = 8192         # the fewest fresh points a certificate is computed on
PILOT_MARGIN = 1.5        # m covers 1.5x the pilot's predicted m_to_certify: its mean is noisy too
PILOT_M = 32768           # population points of the pilot that predicts m_to_certify
PAC_POP = 32768           # fresh points for the observed risk of the PAC-Bayes posterior
PAIRS = (("old", "f_J", "L(f_J) < L(f_old)", "f_J and f_old"),
         ("old", "new", "L(f_new) < L(f_old)", "f_new and f_old"),
         ("control", "new", "L(f_new) < L(control)", "f_new and the control"))
HEADLINE = (("new", "L(f_new) - L(f_old)"), ("f_J", "L(f_J) - L(f_old)"), ("control", "L(control) - L(f_old)"))


def certification_size(cfg: RunConfig, data: TaskData, population: Optional[Split], models: dict,
                       ranges: dict, averaged: bool, losses=per_sample_losses) -> dict:
    """m, the size of the fresh certification sample, fixed before it is drawn (synthetic tasks).

    A pilot on the population sample (drawn apart from the certification sample) predicts, for
    each pair, the m at which its mean difference and variance would give UCB < 0 (`m_to_certify`,
    with the losses the certificate will use: label-averaged on the first PILOT_M points, or the
    labels' losses the evaluate step computed, from `losses`, the run's LossMemo). m covers the
    largest prediction within the cap m_cert, times PILOT_MARGIN for the pilot's own noise; at
    least M_CERT_MIN (a pair that cannot certify within the cap needs no more to say so). m
    depends only on a sample independent of the certification sample, so the certificates hold as
    stated (THEORY.md 8b). Real data: m = |T|, no choice."""
    if data.sampler is None:
        return {"m": len(data.T), "rule": "the test sample T (real data: no fresh draws)"}
    if population is None:
        return {"m": cfg.m_cert, "rule": "m_cert (no population sample to predict from)"}
    pilot = population.head(min(PILOT_M, len(population))).expected() if averaged else population
    each = cfg.delta / len(PAIRS)
    pilot_losses = {name: sample_losses(model, pilot, losses) for name, model in models.items()}
    predicted = {}
    for a, b, statement, _ in PAIRS:
        cert = certificate_from_losses(pilot_losses[a], pilot_losses[b], each, clip_level(ranges).range(a, b),
                                       statement)   # the range the certificate will use (one level c* for resnet)
        predicted[statement] = cert.m_to_certify
    within = [m for m in predicted.values() if m is not None and m <= cfg.m_cert]
    m = min(cfg.m_cert, max(M_CERT_MIN, math.ceil(PILOT_MARGIN * max(within)) if within else M_CERT_MIN))
    return {"m": int(m), "cap": cfg.m_cert, "pilot_m": len(pilot), "predicted_m_to_certify": predicted,
            "rule": (f"{PILOT_MARGIN:g} x the largest m_to_certify predicted on {len(pilot)} population points, "
                     f"within the cap m_cert = {cfg.m_cert}; at least {M_CERT_MIN}")}


def certification_chunks(cfg: RunConfig, data: TaskData, m: int) -> Iterator[Split]:
    """Synthetic tasks: a fresh draw of m points (seeded, never used for any choice), chunk by chunk,
    each chunk drawn when it is needed. Real data: the test sample T (nothing is chosen on T)."""
    if data.sampler is None:
        yield data.T
        return
    g = torch.Generator().manual_seed(cfg.seed + 20_011)
    left = m
    while left > 0:
        k = min(CERT_CHUNK, left)
        yield Split(*data.sampler(k, g))
        left -= k


def headline(models: dict, data: TaskData, population: Optional[Split], losses=per_sample_losses) -> dict:
    """Did expansion lower the risk? L(f) - L(f_old) for f_new, f_J and the control, paired on one
    sample (population on synthetic tasks, T on real data), with standard errors."""
    sample, risk = (population, "L") if population is not None else (data.T, "L_T")
    per_sample = {name: sample_losses(model, sample, losses) for name, model in models.items()}
    rows = []
    for name, label in HEADLINE:
        diff, se = paired_difference(per_sample["old"], per_sample[name])
        rows.append({"model": name, "label": label.replace("L(", f"{risk}(") if risk != "L" else label,
                     "difference": diff, "se": se, "lower": diff < -2 * se, "higher": diff > 2 * se})
    return {"risk": risk, "m": len(sample), "rows": rows,
            "sample": "population sample" if population is not None else "test sample T"}


def holdout_certificates(cfg: RunConfig, data: TaskData, models: dict, population: Optional[Split] = None,
                         losses=per_sample_losses) -> dict:
    """The three pairs at delta/3 each (union bound), on the certification sample: its size from
    `certification_size`, each chunk drawn once and every model's losses on it in that one pass
    (f_new and f_J share f_old's blocks before the insertion when only the new block was trained).

    Where c bounds every loss (mlp), each point's loss is its label-averaged loss E[l | x_i] =
    -sum_c p_ic log softmax_c (Split.expected): D_i = E[l_b - l_a | x_i] are i.i.d. in [-c, c] with the
    same mean L(f_b) - L(f_a) and a third of the labels' variance on demo-mlp (the bound's variance
    term; its range term is unchanged, THEORY.md 8b). Where c was measured (the clip can bind), labels."""
    ranges = {name: loss_bound(model, data.S.x, cfg.arch) for name, model in models.items()}
    level = clip_level(ranges)   # one clip level c* where c was measured (resnet); none for mlp
    measured = any(r["B_h_measured"] for r in ranges.values())
    averaged = not measured and data.sampler is not None   # E[l | x] <= c too: the clip never binds
    size = certification_size(cfg, data, population, models, ranges, averaged, losses)
    per_model: dict[str, list] = {name: [] for name in models}
    for chunk in certification_chunks(cfg, data, size["m"]):
        chunk = chunk.expected() if averaged else chunk
        for name, value in losses_of(models, cfg.position, chunk.x, chunk.y).items():
            per_model[name].append(value.double().cpu())
    per_sample = {name: torch.cat(parts) for name, parts in per_model.items()}
    where = (f"the test sample T ({len(data.T)} points)" if data.sampler is None
             else f"a fresh sample of m = {size['m']} points")
    each = cfg.delta / len(PAIRS)
    pairs = []
    for a, b, statement, who in PAIRS:
        cert = certificate_from_losses(per_sample[a], per_sample[b], each, level.range(a, b),
                                       level.statement(statement), level.loss, level.clip)
        pairs.append(cert.to_dict() | {"a": a, "b": b, "model": f"{who} (deterministic)"})
    return {"sample": where, "label_averaged": averaged, "m": int(len(per_sample["old"])), "size": size,
            "delta": cfg.delta, "delta_each": each,
            "loss_range": {name: r["c"] for name, r in ranges.items()}, "range_measured": measured,
            "clip_level": level.clip, "range_note": level.note,
            "pairs": pairs}


def pac_bayes_route(cfg: RunConfig, data: TaskData, population: Optional[Split], **kw) -> dict:
    """Split S: theta_old' on the first half S_a, the new block on S_b (the PAC-Bayes bound's
    sample), prior N(phi0, sigma^2 I) fixed by theta_old' and the seed. A re-run of the
    expansion on the split, not the run's own f_new (which saw all of S)."""
    if cfg.arch != "mlp":
        return {"available": False, "note": "the PAC-Bayes route is implemented for the mlp only"}
    n_a = len(data.S) // 2
    S_a, S_b = Split(data.S.x[:n_a], data.S.y[:n_a]), Split(data.S.x[n_a:], data.S.y[n_a:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 30_011)
        old_a = build_model(cfg, data.input_shape, data.num_classes).to(data.S.x.device)
    outcome = train(old_a, dataclasses.replace(data, S=S_a), cfg, phase="pac_bayes_base", epochs=cfg.epochs,
                    seed=cfg.seed + 2)
    if outcome.status != "done":
        return {"available": False, "note": f"training theta_old on S_a ended as {outcome.status}"}
    new_a, _ = insert_block(old_a, cfg.position, S_a.x, S_a.y, seed=cfg.seed)
    pop = Split(population.x[:PAC_POP], population.y[:PAC_POP]) if population is not None else None
    out = pac_bayes_block(new_a, cfg.position, S_b, cfg.delta, lr=cfg.lr, seed=cfg.seed, population=pop, **kw)
    return out | {"available": True, "n_a": n_a}


def summary(result: dict, holdout: dict, pac: dict) -> dict:
    """Every certificate as one row (bound, verdict, what it certifies, where it would certify),
    and the tightest: the smallest slack, bound minus the observed value of what it bounds."""
    rows = []
    for p in holdout["pairs"]:
        rows.append({"name": f"hold-out {p['statement']}", "kind": "hold-out paired", "certifies": p["statement"],
                     "model": p["model"], "stochastic": False, "bounds": f"{p['statement'].split(' < ')[0]} - "
                     f"{p['statement'].split(' < ')[1]}", "bound": p["ucb"], "observed": p["mean"],
                     "slack": p["ucb"] - p["mean"], "certified": p["certified"], "valid": True,
                     "would_certify_at": {"m": p["m_to_certify"]}})
    if pac.get("available"):
        observed = pac.get("L_pop_Q_smoothed", pac["L_Sb_mc"])
        rows.append({"name": "PAC-Bayes new block", "kind": "PAC-Bayes", "certifies": "L(Q_new) < log K",
                     "model": "Q_new: the expanded model with a Gaussian new block (stochastic), re-trained on "
                              "the S_a / S_b split", "stochastic": True, "bounds": "L(Q_new), smoothed CE",
                     "bound": pac["bound"], "observed": observed, "slack": pac["bound"] - observed,
                     "certified": pac["informative"], "valid": True,
                     "would_certify_at": {"n_b": pac.get("n_b_to_certify")}})
    new = result.get("new", {})
    L_new = new.get("L_pop") if new.get("L_pop") is not None else new.get("L_T")
    terms = result.get("terms", {})
    for key, route in (result.get("routes") or {}).items():
        if key not in ("A", "B"):
            continue
        rows.append({"name": f"route {key} (norm-based, {terms.get('bound_name', '')})", "kind": "norm-based route",
                     "certifies": "L(f_new) < L(f_old)", "model": "f_new (deterministic)", "stochastic": False,
                     "bounds": "L(f_new)", "bound": route["bound"], "observed": L_new,
                     "slack": route["bound"] - L_new if L_new is not None else None,
                     "certified": route["verdict"] in ("strict", "no_worse"), "valid": route.get("valid", False),
                     "would_certify_at": {"n_nonvacuous": max(v for v in (terms.get("n_nonvacuous_M"), terms.get("n_nonvacuous_K"))
                                                   if v is not None) if terms else None}})
    scored = [r for r in rows if r["slack"] is not None and math.isfinite(r["slack"])]
    tightest = min(scored, key=lambda r: r["slack"]) if scored else None
    return {"items": rows, "tightest": tightest["name"] if tightest else None,
            "tightest_reason": (f"smallest slack (bound minus the observed value of what it bounds): "
                                f"{tightest['slack']:.4g}") if tightest else ""}


def certificates(cfg: RunConfig, data: TaskData, population: Optional[Split], models: dict, result: dict,
                 losses=per_sample_losses) -> dict:
    """The `certificates` section of result.json. `models`: old, new, control, f_J; `result`: the
    run's result so far (its routes join the summary); `losses`: the run's LossMemo."""
    holdout = holdout_certificates(cfg, data, models, population, losses)
    pac = pac_bayes_route(cfg, data, population)
    return {"computed": True, "holdout": holdout, "pac_bayes": pac} | summary(result, holdout, pac)


NOT_CERTIFIED_NOTE = ("This run did not certify (certify=false: sweep and figure cells skip the step unless "
                      "asked). Certify it from its saved checkpoints, without retraining: the Lab's "
                      "'Certify this run' button or `python -m resx certify RUN_ID`.")


def not_certified() -> dict:
    """What stands where the certificates would be when the run skipped the certify step."""
    return {"computed": False, "note": NOT_CERTIFIED_NOTE}
