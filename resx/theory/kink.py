"""Descent at a ReLU kink: one-sided derivatives, the exact steepest one-sided direction, and the
cross-fitted test "descent observable" (theory.md 4b; THEORY "Descent at a ReLU kink").

At phi0 a resnet candidate block outputs ReLU(h + Delta(phi)) with h >= 0 a ReLU output; where
h = 0, ReLU(0 + t Delta) = t max(Delta, 0). For a direction d (per channel (d_gamma_c, d_beta_c),
branch response Delta_d = d_gamma zhat + d_beta) the one-sided derivative on a sample A is

    D_A(d) = (1/|A|) sum_i sum_{c,hw} g (1[h > 0] Delta_d + 1[h = 0] max(Delta_d, 0)),

with g = dl_i/d(block output). It separates over channels, D = sum_c D_c(d_c), and each D_c is
positively homogeneous and piecewise linear on R^2, so min_{|u| = 1} D_c(u) is found exactly by
sorting the angles where u_gamma zhat + u_beta changes sign (`channel_minimum`). For mlp the block
is smooth at phi0: D(d) = <G, d>.

This module is pure tensor arithmetic on (h, g, zhat); margins.py and jumpboard.py capture those
with hooks and call it.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

import torch

STAT = torch.float64
HALF_PI = math.pi / 2


def split_halves(P, seed: int):
    """(P1, P2): a seeded random split of P into halves (P1 gets the extra point when odd).
    P1 chooses the direction, P2 tests it (and chooses the jumpboard's step)."""
    perm = torch.randperm(len(P.y), generator=torch.Generator().manual_seed(seed + 104_729)).to(P.y.device)
    k = (len(perm) + 1) // 2
    return type(P)(P.x[perm[:k]], P.y[perm[:k]]), type(P)(P.x[perm[k:]], P.y[perm[k:]])


# ---------------------------------------------------------------------------------------------
# per-sample one-sided derivatives

def one_sided_terms(h: torch.Tensor, g: torch.Tensor, zhat: torch.Tensor, d_gamma: torch.Tensor,
                    d_beta: torch.Tensor) -> torch.Tensor:
    """D_i(d) = sum_{c,hw} g (1[h > 0] Delta_d + 1[h = 0] max(Delta_d, 0)) for every sample i:
    (n,) float64; h, g, zhat (n, C, H, W) with g = d l_i / d(block output); D_A(d) is their mean."""
    response = d_gamma.to(STAT)[:, None, None] * zhat.to(STAT) + d_beta.to(STAT)[:, None, None]
    response = torch.where(h > 0, response, response.clamp(min=0.0))
    return (g.to(STAT) * response).sum((1, 2, 3))


class KinkSample:
    """What D_A(d) needs for every d on one sample A, accumulated chunk by chunk:
    the smooth part G (C, 2) = mean_i sum_hw g 1[h > 0] (zhat, 1) (autograd's gradient, ReLU'(0) = 0)
    and, per channel, the kink entries (zhat_e, g_e / |A|) where h = 0."""

    def __init__(self):
        self.n = 0
        self._smooth = None
        self._z: list[list[torch.Tensor]] = []
        self._w: list[list[torch.Tensor]] = []

    def add(self, h: torch.Tensor, g: torch.Tensor, zhat: torch.Tensor):
        g, zhat = g.to(STAT), zhat.to(STAT)
        smooth_g = g * (h > 0)
        part = torch.stack([(smooth_g * zhat).sum((0, 2, 3)), smooth_g.sum((0, 2, 3))], 1)   # (C, 2)
        self._smooth = part if self._smooth is None else self._smooth + part
        if not self._z:
            self._z = [[] for _ in range(h.shape[1])]
            self._w = [[] for _ in range(h.shape[1])]
        zero = h == 0
        for c in range(h.shape[1]):
            mask = zero[:, c]
            self._z[c].append(zhat[:, c][mask])
            self._w[c].append(g[:, c][mask])
        self.n += h.shape[0]

    @property
    def G(self) -> torch.Tensor:
        """(C, 2): the autograd gradient w.r.t. (BN2.weight, BN2.bias), per channel."""
        return self._smooth / self.n

    def entries(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(zhat_e, g_e / n) at the kink entries of channel c."""
        return torch.cat(self._z[c]), torch.cat(self._w[c]) / self.n

    def D(self, d_gamma: torch.Tensor, d_beta: torch.Tensor) -> float:
        """D_A(d) from the stored entries (the same number `one_sided_terms(...).mean()` gives)."""
        d = torch.stack([d_gamma.to(STAT), d_beta.to(STAT)], 1)
        return sum(channel_value(self.G[c], *self.entries(c), d[c]) for c in range(len(d)))


def channel_value(a0: torch.Tensor, z: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> float:
    """D_c(u) = <a0, u> + sum_e w_e max(u_gamma z_e + u_beta, 0)."""
    u = u.to(STAT)
    return float(a0 @ u + (w * (u[0] * z + u[1]).clamp(min=0.0)).sum())


def channel_minimum(a0: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(min_{|u| = 1} D_c(u), argmin u) for D_c(u) = <a0, u> + sum_e w_e max(u_gamma z_e + u_beta, 0),
    exactly (ours).

    On the half circle u_gamma > 0, entry e is active iff z_e > s = -u_beta / u_gamma; on u_gamma < 0
    iff z_e < s. Sorting z splits each half into arcs (s between consecutive z's) on which
    D_c(u) = <a, u> is linear, a = a0 + sum over the active entries of w_e (z_e, 1) (suffix or prefix
    sums). The minimum of <a, u> on an arc is -|a| if -a/|a| lies in the arc, else at an end; the ends
    are u = +-(1, -z_e)/sqrt(1 + z_e^2) and (0, +-1). The minimum over the circle is the least of these.
    """
    a0, z, w = a0.to(STAT), z.to(STAT), w.to(STAT)
    z, order = torch.sort(z)
    w = w[order]
    wz, zero = w * z, z.new_zeros(1)
    # arc j (j = 0..E) lies between z_(j-1) and z_(j) (z_(-1) = -inf, z_(E) = +inf)
    above = torch.stack([torch.cat([wz.flip(0).cumsum(0).flip(0), zero]),
                         torch.cat([w.flip(0).cumsum(0).flip(0), zero])], 1)      # sum over z_e > s: entries >= j
    below = torch.stack([torch.cat([zero, wz.cumsum(0)]), torch.cat([zero, w.cumsum(0)])], 1)  # entries < j
    lo = torch.cat([z.new_tensor([-math.inf]), z])
    hi = torch.cat([z, z.new_tensor([math.inf])])
    candidates, values = [], []
    for sign, active in ((1.0, above), (-1.0, below)):                # u_gamma > 0, then u_gamma < 0
        a = a0[None] + active                                        # (E + 1, 2)
        norm = a.norm(dim=1)
        u = -a / norm.clamp(min=1e-300)[:, None]
        s = -u[:, 1] / u[:, 0]
        inside = (sign * u[:, 0] > 0) & (s >= lo) & (s <= hi) & (norm > 0)
        values.append(torch.where(inside, -norm, torch.full_like(norm, math.inf)))
        candidates.append(u)
        ends = sign * torch.stack([torch.ones_like(z), -z], 1) / torch.sqrt(1 + z * z)[:, None]
        values.append(_end_values(a0, z, w, sign))
        candidates.append(ends)
    poles = torch.tensor([[0.0, 1.0], [0.0, -1.0]], dtype=STAT)
    values.append(poles @ a0 + torch.stack([(w * (p[0] * z + p[1]).clamp(min=0)).sum() for p in poles]))
    candidates.append(poles)
    values, candidates = torch.cat(values), torch.cat(candidates)
    i = int(values.argmin())
    return float(values[i]), candidates[i]


def _end_values(a0, z, w, sign):
    """D_c at u = sign (1, -z_e)/sqrt(1 + z_e^2) for every e, from prefix sums (z sorted ascending):
    there u_gamma z' + u_beta = sign (z' - z_e)/sqrt(1 + z_e^2), active for z' > z_e (sign +) or z' < z_e."""
    r = torch.sqrt(1 + z * z)
    wz, n = w * z, len(z)
    if sign > 0:   # entries strictly above e: suffix sums from e + 1
        S_wz = torch.cat([wz.flip(0).cumsum(0).flip(0)[1:], z.new_zeros(1)])
        S_w = torch.cat([w.flip(0).cumsum(0).flip(0)[1:], z.new_zeros(1)])
        kink = (S_wz - z * S_w) / r
    else:          # entries strictly below e: prefix sums up to e - 1
        S_wz = torch.cat([z.new_zeros(1), wz.cumsum(0)[:n - 1]])
        S_w = torch.cat([z.new_zeros(1), w.cumsum(0)[:n - 1]])
        kink = (z * S_w - S_wz) / r
    linear = sign * (a0[0] - a0[1] * z) / r
    return linear + kink


@dataclass(frozen=True)
class Steepest:
    """The steepest one-sided direction on a sample (theory.md 4b): per-channel minima m_c, the
    rate -sqrt(sum_c min(m_c, 0)^2) and d (None when no channel descends: every m_c >= 0)."""
    rate: float
    channel_minima: torch.Tensor                 # (C,)
    direction: Optional[dict]                    # {"bn2.weight": (C,), "bn2.bias": (C,)}, unit norm


def steepest_direction(sample: KinkSample) -> Steepest:
    """d_c = a_c u_c with u_c the exact minimiser of D_c on the circle and a proportional to max(-m_c, 0):
    min over |d| = 1 of sum_c |d_c| D_c(u_c) (D_c positively homogeneous)."""
    G = sample.G
    minima, units = [], []
    for c in range(G.shape[0]):
        m, u = channel_minimum(G[c], *sample.entries(c))
        minima.append(m)
        units.append(u)
    m = torch.tensor(minima, dtype=STAT)
    a = (-m).clamp(min=0.0)
    norm = a.norm().item()
    if norm == 0.0:
        return Steepest(0.0, m, None)
    d = (a / norm)[:, None] * torch.stack(units)
    return Steepest(-norm, m, {"bn2.weight": d[:, 0].float(), "bn2.bias": d[:, 1].float()})


# ---------------------------------------------------------------------------------------------
# the cross-fitted test

@dataclass(frozen=True)
class DescentTest:
    """"Descent observable" (theory.md 4b): d_hat chosen on P1, D_P2(d_hat) = mean of per-sample
    one-sided derivatives on P2, its standard error std/sqrt(n2), UCB = value + z_{1-delta} se;
    observable iff UCB < 0. Asymptotic (`ASYMPTOTIC`): the per-sample terms have no a-priori range,
    so no finite-sample bound of the hold-out kind applies; the z-bound is a CLT statement. slope_in = D_P1(d_hat), in-sample and biased down (shown, never tested).
    probe_needed: the n_probe at which this slope and spread would make the UCB negative,
    n_P (z se / slope)^2 (None unless the slope is negative)."""
    slope_in: float
    slope_cross: float
    se: float
    ucb: float
    observable: bool
    delta: float
    n1: int
    n2: int
    probe_needed: Optional[int]
    direction: Optional[dict]

    def to_dict(self) -> dict:
        return {"slope_in": self.slope_in, "slope_cross": self.slope_cross, "slope_cross_se": self.se,
                "slope_cross_ucb": self.ucb, "descent_observable": self.observable,
                "probe_needed": self.probe_needed, "descent_bound": ASYMPTOTIC}


def z_of(delta: float) -> float:
    return statistics.NormalDist().inv_cdf(1.0 - delta)


def descent_test(slope_in: float, terms_P2: Optional[torch.Tensor], n1: int, delta: float,
                 direction: Optional[dict]) -> DescentTest:
    """The test from the per-sample terms D_i(d_hat) on P2 (None when P1 gave no direction:
    then nothing is tested and descent is not observable)."""
    if terms_P2 is None or direction is None:
        return DescentTest(slope_in, math.nan, math.nan, math.nan, False, delta, n1, 0, None, None)
    n2 = len(terms_P2)
    value = terms_P2.double().mean().item()
    se = terms_P2.double().std().item() / math.sqrt(n2) if n2 > 1 else math.inf
    z = z_of(delta)
    ucb = value + z * se
    needed = math.ceil((n1 + n2) * (z * se / value) ** 2) if value < 0 else None
    return DescentTest(slope_in, value, se, ucb, ucb < 0, delta, n1, n2, needed, direction)


ASYMPTOTIC = ("asymptotic: a normal (z) bound, value + z_{1-delta} se, valid as n_2 grows (CLT); "
              "not a finite-sample guarantee")


def best_of_positions(tests: dict[int, DescentTest], delta: float) -> dict:
    """Multiplicity: picking the best of K positions tests K hypotheses, so each is tested at
    delta / K (Bonferroni): under the global null "no position descends" the pick fires with
    probability <= delta (asymptotically: each test is a z-bound). Returns the position with the
    least corrected UCB and its verdict."""
    return _best({k: (t.slope_cross, t.se) for k, t in tests.items()}, delta)


def best_of_margin_dicts(margins: list, delta: float) -> dict:
    """`best_of_positions` from stored margin entries (result.json's "margins": slope_cross and
    slope_cross_se at each position), for results and cells that only have the dicts."""
    return _best({m["position"]: (m.get("slope_cross"), m.get("slope_cross_se")) for m in margins}, delta)


def _best(slopes: dict, delta: float) -> dict:
    K = max(len(slopes), 1)
    z = z_of(delta / K)
    ucbs = {k: v + z * se for k, (v, se) in slopes.items()
            if v is not None and se is not None and math.isfinite(v) and math.isfinite(se)}
    out = {"positions": K, "delta_each": delta / K, "bound": ASYMPTOTIC}
    if not ucbs:
        return out | {"position": None, "ucb": None, "observable": False}
    best = min(ucbs, key=ucbs.get)
    return out | {"position": best, "ucb": ucbs[best], "observable": ucbs[best] < 0}
