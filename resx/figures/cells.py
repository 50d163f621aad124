"""Grid cells from results, and Figure 3 from cells (theory.md 9): reads results, never trains.

`cell_from_result` summarises one `run_pipeline` result; `figure3_from_cells` aggregates cells (from
`resx.scale.paper_data.figure3_data` or a sweep's `resx.scale.sweep.summarize`) into Figure 3, the
theory-vs-experiment map and the allocation fit.
"""
from __future__ import annotations

import statistics
from typing import Optional, Sequence

from . import paper as fp
from .allocation import fit_allocation

CELL_KEYS = ("depth", "width", "n", "seed", "test_loss_old", "test_loss_new")


def cell_from_result(result: dict) -> dict:
    """A grid cell's summary from a `run_pipeline` result (theory.md 9), in the column names of
    `resx.scale.sweep.summarize` where the two overlap, so that Figure 3 draws either.

    test_loss_* is figure 3's test loss: the population risk L_pop for synthetic tasks, L_T for
    real data (`test_risk` names which; L_S_*, L_T_*, L_pop_* are all kept);
    predicted_improvement = Delta_R + Delta_ERM (the gain before the generalization terms);
    certified_improvement_A/B = L(f_old) - the route's bound (> 0 iff the route certifies a strict
    improvement); inserted_* at the inserted position. best_position, best_observed: the corrected
    descent test over positions (theory.md 4b; each of K positions at delta/K, Bonferroni, as
    `descent_best_position`; an asymptotic z-bound), with best_kappa2_U_lcb U_P's bound there (shown);
    positions_observed: how many positions pass that corrected descent test. A result without
    `descent_best_position` (older runs) has no best_* entries.
    """
    cfg = result["config"]
    cell = {"depth": cfg["depth"], "width": cfg["width"], "n": cfg["n"], "seed": cfg["seed"],
            "dataset": cfg["dataset"], "arch": cfg["arch"], "position": cfg["position"],
            "status": result.get("status"), "message": result.get("message")}
    synthetic = (result.get("old") or {}).get("L_pop") is not None
    cell["test_risk"] = "L_pop" if synthetic else "L_T"
    for name in ("old", "new", "control"):
        r = result.get(name) or {}
        cell[f"test_loss_{name}"] = r.get(cell["test_risk"])
        for risk_name in ("L_S", "L_T", "L_pop"):
            cell[f"{risk_name}_{name}"] = r.get(risk_name)
    terms, routes = result.get("terms"), result.get("routes")
    if terms and routes:
        L_old = routes["B"]["steps"][0][1]
        cell.update(Delta_R=terms["Delta_R_used"], Delta_R_source=terms["Delta_R_source"],
                    Delta_ERM=terms["Delta_ERM"], eps_M=terms["eps_M"], eps_K=terms["eps_K"],
                    predicted_improvement=terms["Delta_R_used"] + terms["Delta_ERM"],
                    route_A_bound=routes["A"]["bound"], route_B_bound=routes["B"]["bound"],
                    certified_improvement_A=L_old - routes["A"]["bound"],
                    certified_improvement_B=L_old - routes["B"]["bound"],
                    route_A_verdict=routes["A"]["verdict"], route_B_verdict=routes["B"]["verdict"])
    margins = [m for m in result.get("margins") or [] if m["kappa2_U_lcb"] == m["kappa2_U_lcb"]]  # drop NaN
    at = [m for m in margins if m["position"] == cfg["position"]]
    if at:
        cell.update(inserted_observed=at[0]["observed"], inserted_kappa2_U=at[0]["kappa2_U"],
                    inserted_kappa2_U_lcb=at[0]["kappa2_U_lcb"])
    pick = result.get("descent_best_position")    # the pipeline's corrected pick (kink.best_of_positions)
    if pick and pick.get("position") is not None:
        best = next((m for m in margins if m["position"] == pick["position"]), {})
        z = statistics.NormalDist().inv_cdf(1.0 - pick["delta_each"])
        cell.update(best_position=pick["position"], best_kappa2_U_lcb=best.get("kappa2_U_lcb"),
                    best_observed=bool(pick["observable"]), best_slope_ucb=pick["ucb"],
                    positions_observed=sum(m["slope_cross"] + z * m["slope_cross_se"] < 0 for m in result["margins"]
                                           if _finite(m.get("slope_cross")) and _finite(m.get("slope_cross_se"))))
    return cell


def _finite(v) -> bool:
    return v is not None and v == v and abs(v) != float("inf")


def check_cells(cells: Sequence[dict]) -> list[dict]:
    """Every cell has the keys depth, width, n, seed, test_loss_old, test_loss_new (values may be None
    for the losses); raises ValueError naming the first cell and key that is missing."""
    cells = list(cells)
    if not cells:
        raise ValueError("no cells: Figure 3 needs at least one cell with keys " + ", ".join(CELL_KEYS))
    for i, c in enumerate(cells):
        missing = [k for k in CELL_KEYS if k not in c]
        if missing:
            raise ValueError(f"cell {i} lacks {missing}; every cell needs keys {list(CELL_KEYS)}")
    return cells


def with_certified_improvement(cells: Sequence[dict]) -> list[dict]:
    """Cells with `certified_improvement_B` (and _A) filled in from `route_B_bound` where a cell
    has the bound but not the difference (a sweep's cells): L(f_old) - bound, with L(f_old) the
    cell's test_loss_old (the routes' L(f_old): L_pop for synthetic tasks, L_T for real data)."""
    out = []
    for c in cells:
        c = dict(c)
        for route in ("A", "B"):
            bound = c.get(f"route_{route}_bound")
            if c.get(f"certified_improvement_{route}") is None and bound is not None and c.get("test_loss_old") is not None:
                c[f"certified_improvement_{route}"] = float(c["test_loss_old"]) - float(bound)
        out.append(c)
    return out


def figure3_from_cells(cells: Sequence[dict], n: Optional[int] = None) -> dict:
    """Figure 3 from cell summaries: this module's grid (`cell_from_result`) or a sweep's
    (`resx.scale.sweep.summarize`).

    `cells`: dicts with depth, width, n, seed, test_loss_old, test_loss_new (optional extra keys:
    predicted_improvement, certified_improvement_B or route_B_bound, route_B_verdict, ...).
    Returns {"summary": mean, sd and seed count per (depth, width, n), "scaling": the two-panel
    figure, "theory": predicted against measured improvement (predicted_improvement where the
    cells have it, else certified_improvement_B; a note in the figure when they have neither),
    "predicted": which of the two, "allocation": the log law fitted to the cells' best depths
    (None with fewer than two widths that have two depths each), "allocation_note"}.
    """
    cells = with_certified_improvement(check_cells(cells))
    keys = ["test_loss_old", "test_loss_new", "test_loss_control", "predicted_improvement",
            "certified_improvement_B"]
    summary = fp.aggregate_cells(cells, keys)
    predicted = ("predicted_improvement" if any(c.get("predicted_improvement") is not None for c in cells)
                 else "certified_improvement_B")
    out = {"summary": summary, "scaling": fp.fig3_scaling(cells, n=n),
           "theory": fp.theory_vs_experiment(cells, predicted=predicted), "predicted": predicted,
           "allocation": None, "allocation_note": None}
    try:
        out["allocation"] = fit_allocation(cells, n=n).to_dict()
    except ValueError as e:
        out["allocation_note"] = str(e)
    return out
