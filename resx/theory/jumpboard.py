"""The jumpboard model, its line search, and the jump margins (theory.md section 6).

Named step "preview": f_J = f_new(.; theta_old, phi0 + eta* d_hat), d_hat the steepest one-sided
direction on the probe half P1 (mlp: -G_P1/||G_P1||; resnet: the exact kink-aware direction of
theory.md 4b, kink.steepest_direction), eta* = argmin of L_P2 over a log-spaced grid. P is
independent of theta_old, so the direction and the step see the population, not what the old
model memorised of S; S and T are evaluated along the path for display and never choose (for
resnet, S sets the candidate block's BatchNorm statistics, hence zhat: theory.md 4b, I6).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.models import PostLNBlock, live_parameters_of
from ..core.train import StackedSplits, per_sample_losses, risk
from .bounds import route_share
from .certificates import eb_upper
from .kink import DescentTest, KinkSample, descent_test, one_sided_terms, split_halves, steepest_direction
from .margins import live_gradients, normalised_branch

GRID_POINTS = 16           # log-spaced step sizes, plus eta = 0 as the reference
CURVE_POP = 4096   # population points behind the drawn curve's L_pop (the whole sample at eta*): paired along eta
CURVE_POP_EXPECTED = 2048   # the same with label distributions, E[l | x]: on demo-mlp the loss's variance
                            # is 2.9x smaller, so the se is 0.83x that of 4096 labels
GRID_RANGE = (1e-3, 1e1)   # in units of `step_scale`: from "no visible change" to "past any Taylor regime"
MIN_FIT_POINTS = 4         # the quadratic fit uses at least the 4 smallest steps


# ---------------------------------------------------------------------------------------------
# moving phi from phi0 along d: the finite-difference check (theory.md 4)

class DifferenceQuotient(NamedTuple):
    t: float
    quotient: float   # (L(phi0 + t d) - L(phi0)) / t
    slope: float      # the first-order prediction <G, d> = -||G||
    one_sided: float  # the exact one-sided derivative D(d) (= slope for mlp; resnet adds the kink term)


def mean_loss(model: nn.Module, x, y, batch_size: int = 4096) -> torch.Tensor:
    """Mean cross-entropy in the model's own dtype, eval mode (train.risk casts logits to float32,
    too coarse for a difference quotient at small t)."""
    was = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            total = total + F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum")
    model.train(was)
    return total / len(x)


def live_gradient(f_new: nn.Module, position: int, x, y, batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """G = grad of the mean loss over (x, y) w.r.t. the new block's live parameters, by autograd,
    eval mode, in the model's dtype: {name inside the block: tensor}."""
    block = f_new.blocks[position]
    names = live_parameters_of(block)
    params = [block.get_parameter(n) for n in names]
    flags = [p.requires_grad for p in params]
    was = f_new.training
    f_new.eval()
    total = [torch.zeros_like(p) for p in params]
    try:
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            for i in range(0, len(x), batch_size):
                loss = F.cross_entropy(f_new(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum")
                for acc, g in zip(total, torch.autograd.grad(loss, params)):
                    acc += g
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        f_new.train(was)
    return {n: g / len(x) for n, g in zip(names, total)}


@torch.no_grad()
def set_live_(f_new: nn.Module, position: int, phi0: dict, direction: dict, eta: float):
    """Live parameters of the new block := phi0 + eta d (in place)."""
    block = f_new.blocks[position]
    for name, p in phi0.items():
        block.get_parameter(name).copy_(p + eta * direction[name])


def one_sided_slope(f_new: nn.Module, position: int, x, y, direction: dict, batch_size: int = 1024) -> float:
    """D(d) = lim_{t -> 0+} (L(phi0 + t d) - L(phi0)) / t on (x, y), at phi0, in closed form (ours).

    mlp: the new block is smooth in (W2, b2) at phi0, so D(d) = <G, d>. resnet: the block's output
    ReLU(h + Delta) sits at its kink wherever h = 0 (a ReLU output: 38-50% of entries measured), and
    ReLU(0 + t Delta) = t max(Delta, 0), so D(d) = <G, d> + (1/n) sum_{i, h = 0} g max(Delta(d), 0)
    with Delta(d) = d_gamma zhat + d_beta the branch's response; autograd's G (ReLU'(0) = 0) omits
    that term. The loss is piecewise smooth, not differentiable, at a resnet phi0.
    """
    block = f_new.blocks[position]
    if any(block.get_parameter(n).detach().abs().max().item() != 0.0 for n in live_parameters_of(block)):
        raise ValueError(f"the block at position {position} is not at phi0; D(d) is derived there")
    G = live_gradient(f_new, position, x, y)
    linear = sum((G[n] * direction[n]).sum() for n in G).item()
    if isinstance(block, PostLNBlock):
        return linear
    kink = 0.0
    d_weight, d_bias = (direction[n] for n in live_parameters_of(block))    # the branch's last BN
    for h, g in _block_io(f_new, position, x, y, batch_size):
        with torch.no_grad():
            zhat = normalised_branch(block, h)                                # (n, C, H, W)
            response = d_weight[:, None, None] * zhat + d_bias[:, None, None]
            kink += (g * (h == 0) * F.relu(response)).sum().item()
    return linear + kink / len(x)


def finite_difference_check(f_new: nn.Module, position: int, x, y, t_values=(1e-2, 1e-3, 1e-4)
                            ) -> list[DifferenceQuotient]:
    """(L(phi0 + t d) - L(phi0)) / t along d = -G/||G|| on (x, y) (theory.md 4). It tends to the
    one-sided derivative D(d) with an error O(t): D(d) = -||G|| for mlp; for resnet D(d) adds the
    ReLU-kink term of `one_sided_slope`. f_new is restored afterwards.
    """
    block = f_new.blocks[position]
    G = live_gradient(f_new, position, x, y)
    norm = torch.sqrt(sum((g * g).sum() for g in G.values()))
    d = {n: -g / norm for n, g in G.items()}
    exact = one_sided_slope(f_new, position, x, y, d)
    phi0 = {n: block.get_parameter(n).detach().clone() for n in G}
    L0 = mean_loss(f_new, x, y)
    out = []
    try:
        for t in t_values:
            set_live_(f_new, position, phi0, d, t)
            quotient = ((mean_loss(f_new, x, y) - L0) / t).item()
            out.append(DifferenceQuotient(float(t), quotient, -norm.item(), exact))
    finally:
        set_live_(f_new, position, phi0, d, 0.0)
    return out


# ---------------------------------------------------------------------------------------------
# the line search (theory.md 6)

@dataclass
class JumpboardResult:
    """The line search along d and the jumpboard f_J at eta* (theory.md 6).

    curve: one dict per eta with L_S, L_P (= L_P2), L_T, L_pop, L_pop_se (None without a population;
    on the first CURVE_POP points of the population sample, or the first CURVE_POP_EXPECTED with
    the loss averaged over each point's label distribution; L_pop at eta* uses all of it, labels),
    first_order = L_P2(phi0) + eta D_P2(d_hat) (the one-sided derivative on P2, theory.md 4b),
    quadratic = a + b eta + c eta^2 fitted to L_P on the small-eta part (eta <= max(eta*, 4th
    smallest eta)).
    """
    eta: float                       # eta*, chosen on P only
    position: int
    direction: dict                  # {live name: tensor}, unit norm over all live parameters
    curve: list
    model: nn.Module                 # f_J
    L_S: float
    L_P: float
    L_T: float
    L_pop: Optional[float]
    L_pop_se: Optional[float]
    kappa_P: float                   # ||G_P1||, the direction half of P (autograd, ReLU'(0) = 0)
    slope_P: float                   # D_P2(d_hat), the exact initial rate of L_P2 along d_hat (the first-order line)
    step_scale: float                # the unit of the eta grid
    quadratic_coef: tuple = field(default=(math.nan, math.nan, math.nan))   # (a, b, c)
    slope_P1: float = math.nan       # D_P1(d_hat): in-sample, biased down (the steepest rate on P1)
    slope_P_se: float = math.nan     # standard error of slope_P (per-sample one-sided derivatives on P2)
    slope_P_ucb: float = math.nan    # slope_P + z_{1-delta} se; "descent observable" iff < 0
    descent_observable: bool = False
    probe_needed: Optional[int] = None   # n_probe at which this slope and spread would be observable
    n_probe: int = 0
    note: str = ""                   # what eta* = 0 means, or why there is no direction

    def to_dict(self) -> dict:
        """Everything but the model and the direction tensors (JSON-ready). The risks at eta* are the
        line search's own estimates, under `line_search` with names that say on what: L_P2 on the
        half of P that chose eta*, L_pop on the points the curve was drawn on. They are not f_J's
        risks (result.json's `f_J`: all of P, the whole population sample)."""
        at = ("L_S", "L_P", "L_T", "L_pop", "L_pop_se")
        d = {k: v for k, v in self.__dict__.items() if k not in ("model", "direction", *at)}
        d["quadratic_coef"] = list(self.quadratic_coef)
        d["line_search"] = {"L_S_at_eta": self.L_S, "L_P2_at_eta": self.L_P, "L_T_at_eta": self.L_T,
                            "L_pop_curve_at_eta": self.L_pop, "L_pop_curve_at_eta_se": self.L_pop_se,
                            "about": "the line search's estimates at eta*: L_P2 on half P2 of the probe sample "
                                     "(it chose eta*), L_pop_curve on the population points the curve is drawn "
                                     "on (label-averaged where the task has label distributions); f_J's own "
                                     "risks are result.json's f_J section"}
        return d


def step_scale(f_new: nn.Module, position: int) -> float:
    """sqrt(p_new) x the RMS of the old blocks' live parameters: the size a trained block's
    live parameters have, so the grid is in natural units (ours; 1.0 if that is zero)."""
    new = f_new.blocks[position]
    old = [b for i, b in enumerate(f_new.blocks) if i != position]
    values = [b.get_parameter(n).detach().reshape(-1) for b in old for n in live_parameters_of(b)]
    p_new = sum(new.get_parameter(n).numel() for n in live_parameters_of(new))
    rms = torch.cat(values).pow(2).mean().sqrt().item() if values else 0.0
    return math.sqrt(p_new) * rms if rms > 0 else 1.0


def default_etas(scale: float) -> list[float]:
    """0 and GRID_POINTS log-spaced steps from GRID_RANGE[0] to GRID_RANGE[1] times `scale`."""
    lo, hi = GRID_RANGE
    return [0.0] + [float(e) * scale for e in np.logspace(math.log10(lo), math.log10(hi), GRID_POINTS)]


def _block_io(f_new: nn.Module, position: int, x, y, batch_size: int = 1024):
    """Yields (h, g) per chunk: the new block's input h and g = d(sum_i l_i)/d(block output), eval mode."""
    block = f_new.blocks[position]
    grabbed = {}
    handles = [block.register_forward_pre_hook(lambda m, args: grabbed.__setitem__("h", args[0].detach())),
               block.register_forward_hook(lambda m, args, out: grabbed.__setitem__("out", out))]
    was = f_new.training
    f_new.eval()
    try:
        for i in range(0, len(x), batch_size):
            with torch.enable_grad():
                xb = x[i:i + batch_size].detach().requires_grad_(True)   # so `out` is in a graph
                loss = F.cross_entropy(f_new(xb), y[i:i + batch_size], reduction="sum")
                g = torch.autograd.grad(loss, grabbed["out"])[0]
            yield grabbed["h"], g.detach()
    finally:
        for handle in handles:
            handle.remove()
        f_new.train(was)


def steepest_on(f_new: nn.Module, position: int, P1, P2, delta: float = 0.05) -> DescentTest:
    """d_hat on P1 and the cross-fitted test of theory.md 4b on P2, for the block inside f_new (at phi0)."""
    block = f_new.blocks[position]
    resnet = not isinstance(block, PostLNBlock)
    names = live_parameters_of(block)
    if resnet:
        sample = KinkSample()
        for h, g in _block_io(f_new, position, P1.x, P1.y):
            sample.add(h, g, normalised_branch(block, h).float())
        best = steepest_direction(sample)   # its keys are bn2.*; the block's last BN may be bn3
        d = None if best.direction is None else dict(zip(names, best.direction.values()))
        slope_in = best.rate
    else:
        G = live_gradient(f_new, position, P1.x, P1.y)
        norm = math.sqrt(sum((g.double() ** 2).sum().item() for g in G.values()))
        d = None if norm == 0.0 else {n: -g / norm for n, g in G.items()}
        slope_in = -norm
    if d is None:
        return descent_test(slope_in, None, len(P1.y), delta, None)
    terms = []
    for h, g in _block_io(f_new, position, P2.x, P2.y):
        if resnet:
            terms.append(one_sided_terms(h, g, normalised_branch(block, h), d[names[0]], d[names[1]]))
        else:
            flat = torch.cat([d[n].reshape(-1) for n in names]).double()
            terms.append(live_gradients(block, h, g).dots(flat))
    return descent_test(slope_in, torch.cat(terms), len(P1.y), delta, d)


def jumpboard_path(f_new: nn.Module, position: int, S, P, T, population=None, etas=None,
                   seed: int = 0, delta: float = 0.05, test: Optional[DescentTest] = None) -> JumpboardResult:
    """Line search from phi0 along d_hat (theory.md 4b, 6; the construction is the paper's, the
    split, the kink-aware direction, the grid and the fit are ours). P is split in two halves by a
    seeded permutation: d_hat comes from P1, and eta* = argmin_eta L_P2 (eta = 0 included, so
    f_J = f_new when no step lowers L_P2). A direction fitted on a sample lowers that sample's loss
    at first even where the population has no descent direction, so choosing the step on the
    same half would pick noise. The curve's L_P is L_P2; S, T and the population are only evaluated.
    When P1 has no descent direction at all (G_P1 = 0 for mlp; every channel minimum >= 0 for
    resnet) the result is f_J = f_new with eta* = 0, a one-point curve and a note.
    f_new is not modified. `test`: this block's DescentTest on the same halves (the margins step's
    descent_tests at `position`, the same seeded candidate), so that it is not computed twice.
    """
    block = f_new.blocks[position]
    P1, P2 = split_halves(P, seed)
    if test is None:
        test = steepest_on(f_new, position, P1, P2, delta)
    phi0 = {n: block.get_parameter(n).detach().clone() for n in live_parameters_of(block)}
    if not isinstance(block, PostLNBlock):   # ||G_P1|| by autograd; the one-sided rate is another number
        kappa = math.sqrt(sum((g.double() ** 2).sum().item()
                              for g in live_gradient(f_new, position, P1.x, P1.y).values()))
    else:                               # mlp: d_hat = -G_P1/||G_P1||, so D_P1(d_hat) = -||G_P1||
        kappa = -test.slope_in
    scale = step_scale(f_new, position)
    if test.direction is None:
        direction = {n: torch.zeros_like(p) for n, p in phi0.items()}
        etas = [0.0]
    else:
        direction = {n: test.direction[n].to(p) for n, p in phi0.items()}   # the parameters' dtype
        etas = sorted(set([0.0] + [float(e) for e in (default_etas(scale) if etas is None else etas)]))
    if etas[0] < 0:
        raise ValueError(f"etas must be >= 0; got {etas[0]}")
    slope = test.slope_cross

    work = copy.deepcopy(f_new)
    curve = []
    # The curve's L_pop is drawn, not used: a fixed slice of the population (with its se) is
    # enough for it; the full population is evaluated only at eta*, whose numbers are shown.
    # With label distributions the slice's losses are E[l | x] (Split.expected): fewer points, same se.
    expected = population is not None and population.p is not None
    size = CURVE_POP_EXPECTED if expected else CURVE_POP
    pop_curve = None if population is None or len(population.y) <= size else population.head(size)
    samples = {"S": S, "P": P2, "T": T}
    if population is not None:
        drawn = pop_curve if pop_curve is not None else population
        samples["pop"] = drawn.expected() if expected else drawn
    samples = StackedSplits(samples, fixed_until=(work, position))   # only the block at `position` moves
    # from phi0 = 0 the block is linear in eta before its LayerNorm / ReLU: its branch computed once
    line = samples.line(work, direction) if all(not p.any() for p in phi0.values()) else None
    for eta in etas:
        set_live_(work, position, phi0, direction, eta)
        r = samples.risks(work) if line is None else line.risks(eta)
        curve.append({"eta": eta, "L_S": r["S"].loss, "L_P": r["P"].loss, "L_T": r["T"].loss,
                      "L_pop": r["pop"].loss if "pop" in r else None,
                      "L_pop_se": r["pop"].stderr if "pop" in r else None})

    best = min(range(len(curve)), key=lambda i: curve[i]["L_P"])       # first minimum: smallest eta
    eta_star = curve[best]["eta"]
    L0 = curve[0]["L_P"]
    a, b, c = _quadratic_fit(etas, [r["L_P"] for r in curve], max(best + 1, MIN_FIT_POINTS))
    for row in curve:
        row["first_order"] = L0 + row["eta"] * slope if math.isfinite(slope) else None
        row["quadratic"] = a + b * row["eta"] + c * row["eta"] ** 2 if math.isfinite(a) else None

    set_live_(work, position, phi0, direction, eta_star)
    at = dict(curve[best])
    if pop_curve is not None:  # the chosen point on the whole population sample
        r = risk(work, population)
        at["L_pop"], at["L_pop_se"] = r.loss, r.stderr
    return JumpboardResult(eta=eta_star, position=position, direction=direction, curve=curve, model=work,
                           L_S=at["L_S"], L_P=at["L_P"], L_T=at["L_T"], L_pop=at["L_pop"],
                           L_pop_se=at["L_pop_se"], kappa_P=kappa, slope_P=slope, step_scale=scale,
                           quadratic_coef=(a, b, c), slope_P1=test.slope_in, slope_P_se=test.se,
                           slope_P_ucb=test.ucb, descent_observable=test.observable,
                           probe_needed=test.probe_needed, n_probe=len(P.y),
                           note=_note(test, eta_star, len(P.y)))


def _note(test: DescentTest, eta_star: float, n_probe: int) -> str:
    """What eta* = 0 means, in words (theory.md 4b): empty when a step lowered L_P2."""
    if test.direction is None:
        return ("P1 has no one-sided descent direction at this position (every direction's one-sided "
                "slope on P1 is >= 0): f_J = f_new, Delta_R = 0.")
    if eta_star > 0:
        return ""
    text = ("No step along the P1 direction lowered L_P2: eta* = 0, so f_J = f_new and Delta_R = 0 exactly. "
            f"The one-sided slope on P2 is {test.slope_cross:+.3g} ± {test.se:.2g} (1 SE)")
    if test.probe_needed is not None:
        return text + (f"; at this slope and spread, descent would be observable (UCB < 0) from about "
                       f"n_probe = {test.probe_needed:,} (now {n_probe:,}).")
    return text + ": it does not point down, so no probe size is predicted from it."


def _quadratic_fit(etas, losses, points: int) -> tuple[float, float, float]:
    """Least-squares a + b eta + c eta^2 on the first `points` (eta, loss) pairs."""
    e = np.asarray(etas[:points], dtype=np.float64)
    L = np.asarray(losses[:points], dtype=np.float64)
    if len(e) < 3:
        return (math.nan, math.nan, math.nan)
    coef, *_ = np.linalg.lstsq(np.stack([np.ones_like(e), e, e * e], 1), L, rcond=None)
    return tuple(float(v) for v in coef)


def jump_margins(f_old: nn.Module, f_J: nn.Module, T, population=None, delta: float = 0.05,
                 loss_bound: Optional[float] = None, losses: Callable = per_sample_losses) -> dict:
    """Delta_R = L(f_old) - L(f_J) and Delta_R^T = L_T(f_old) - L_T(f_J) (theory.md 6).

    Both are paired differences on one sample, so their stderr is std_i(l_old,i - l_J,i)/sqrt(m)
    (much smaller than either risk's). With `loss_bound` c (every loss in [0, c], from the bounds
    module), the per-sample difference lies in [-c, c] and:
    - Hoeffding gives, with probability >= 1 - delta, |Delta_R^T - Delta_R| <= 2 c sqrt(log(2/delta) / (2 m))
      (valid because f_J was chosen on P, independent of T): `Delta_R_T_hoeffding`, shown;
    - the routes' finite-sample lower bounds, at the route's share delta/3 (`bounds.route_share`):
      empirical Bernstein (Maurer-Pontil, as the hold-out certificates) on the population sample
      (`Delta_R_lower`) and on T (`Delta_R_T_lower`), D = min(l_old, c) - min(l_J, c) in [-c, c]
      (`*_clipped` counts losses above c: 0 when c bounds every loss, i.e. mlp).
    Delta_R and its se are None without a population sample (real data). Also returned: the
    risks themselves, L_T_old, L_T_J, L_pop_old, L_pop_J. `losses`: per_sample_losses or a LossMemo.
    """
    share = route_share(delta)
    out = _paired(f_old, f_J, T, "Delta_R_T", losses, loss_bound, share)
    m = len(T.y)
    out["m"] = m
    out["delta"] = delta
    out["Delta_R_T_hoeffding"] = None
    if loss_bound is not None:
        out["Delta_R_T_hoeffding"] = 2.0 * loss_bound * math.sqrt(math.log(2.0 / delta) / (2.0 * m))
    out["Delta_R_lower_delta"] = share if loss_bound is not None else None
    if population is not None:
        out.update(_paired(f_old, f_J, population, "Delta_R", losses, loss_bound, share))
    else:
        out.update({"Delta_R": None, "Delta_R_se": None, "L_pop_old": None, "L_pop_J": None,
                    "Delta_R_lower": None, "Delta_R_clipped": None})
    return out


def _paired(f_old, f_J, split, name: str, losses: Callable = per_sample_losses, c: Optional[float] = None,
            share: float = 0.05) -> dict:
    old, _ = losses(f_old, split.x, split.y)
    new, _ = losses(f_J, split.x, split.y)
    diff = (old - new).double()
    m = len(diff)
    se = diff.std().item() / math.sqrt(m) if m > 1 else math.nan
    where = name.removeprefix("Delta_R").lstrip("_") or "pop"
    out = {name: diff.mean().item(), f"{name}_se": se,
           f"L_{where}_old": old.double().mean().item(), f"L_{where}_J": new.double().mean().item(),
           f"{name}_lower": None, f"{name}_clipped": None}
    if c is not None and m > 1:   # lower bound on E D = -(upper bound on E(-D)), -D in [-c, c]
        a, b = old.double().cpu().numpy(), new.double().cpu().numpy()
        out[f"{name}_clipped"] = int((a > c).sum() + (b > c).sum())
        out[f"{name}_lower"] = -eb_upper(np.clip(b, 0.0, c) - np.clip(a, 0.0, c), share, -c, c)
    return out
