"""Hold-out paired certificates: is L(f_b) < L(f_a)? (theory.md 8b; THEORY.md 8b).

For two models fixed without looking at a sample A (the test sample T, or on synthetic tasks a
fresh draw of `m_cert` points), the per-sample differences D_i = l(f_b(x_i), y_i) - l(f_a(x_i), y_i)
are i.i.d. with mean L(f_b) - L(f_a). Their range is fixed before A (`clip_level`): for mlp each
model's c bounds every loss on every input, so nothing is clipped, D lies in [-c_a, c_b] and the
claim is about the loss itself; where c was measured (resnet: B_h on S) one level c*, the largest
of the run's models' c, clips every loss of every pair, so D = min(l_b, c*) - min(l_a, c*) lies in
[-c*, c*] and the claim is about one loss, L_{c*}(f) = E min(l(f(x), y), c*): "L_{c*}(f_b) <
L_{c*}(f_a)" (two levels would make D a difference of no single loss). Clipped points are counted.

The upper confidence bound is Maurer and Pontil's empirical Bernstein bound (2009, Theorem 4):
for X_i i.i.d. in [0, 1], with probability >= 1 - delta,
    E X <= mean(X) + sqrt(2 V ln(2/delta) / m) + 7 ln(2/delta) / (3 (m - 1)),
V the unbiased sample variance. Rescaled to D in [lo, hi] (R = hi - lo):
    UCB = mean(D) + sqrt(2 var(D) ln(2/delta) / m) + 7 R ln(2/delta) / (3 (m - 1)).
It adapts to the variance of D (small for two near-equal networks); the range enters only at
order R/m. "Certified" means UCB < 0. A family of k pairs at level delta uses delta/k per pair
(union bound), so all k statements hold together with probability >= 1 - delta. A finite-sample
bound: it holds at every m >= 2, no normal approximation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional, Union

import numpy as np
import torch

from ..core.data import Split
from ..core.train import per_sample_losses

MAX_M = 1e15   # m_to_certify above this is reported as never (None)


def eb_upper(D: np.ndarray, delta: float, lo: float, hi: float) -> float:
    """Maurer-Pontil empirical Bernstein upper confidence bound on E D, D_i in [lo, hi] i.i.d."""
    D = np.asarray(D, dtype=np.float64)
    m = D.size
    if m < 2:
        raise ValueError(f"need at least 2 differences for an empirical Bernstein bound, got {m}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta={delta!r} is not allowed: a number in (0, 1)")
    if not hi > lo:
        raise ValueError(f"the range [{lo}, {hi}] is empty: hi must exceed lo")
    if D.min() < lo - 1e-9 * (hi - lo) or D.max() > hi + 1e-9 * (hi - lo):
        raise ValueError(f"differences outside the a-priori range [{lo:.4g}, {hi:.4g}]: "
                         f"min {D.min():.4g}, max {D.max():.4g}; the range must hold for every point")
    return _eb(D.mean(), D.var(ddof=1), m, delta, hi - lo)


def _eb(mean: float, var: float, m: float, delta: float, R: float) -> float:
    log_term = math.log(2.0 / delta)
    return mean + math.sqrt(2.0 * max(var, 0.0) * log_term / m) + 7.0 * R * log_term / (3.0 * (m - 1.0))


def m_to_certify(mean: float, var: float, delta: float, R: float) -> Optional[float]:
    """The sample size at which the observed mean and variance would give UCB < 0 (None: never,
    i.e. the observed mean is >= 0, or past MAX_M). Bisection on log m; the UCB falls with m."""
    if not mean < 0.0:
        return None
    if _eb(mean, var, MAX_M, delta, R) >= 0.0:
        return None
    lo, hi = math.log(2.0), math.log(MAX_M)
    if _eb(mean, var, 2.0, delta, R) < 0.0:
        return 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _eb(mean, var, math.exp(mid), delta, R) < 0.0:
            hi = mid
        else:
            lo = mid
    return float(math.ceil(math.exp(hi)))


@dataclass(frozen=True)
class HoldoutCertificate:
    """UCB on L(f_b) - L(f_a) from a sample independent of both models (see the module docstring)."""
    statement: str          # what "certified" asserts, e.g. "L(f_J) < L(f_old)"
    mean: float             # observed mean difference L_A(f_b) - L_A(f_a)
    se: float               # its standard error std(D)/sqrt(m)
    ucb: float              # the upper confidence bound at level delta
    certified: bool         # ucb < 0
    m: int                  # sample size
    m_to_certify: Optional[float]   # the m at which the observed mean and variance would certify
    delta: float            # the level this pair was computed at (after the union bound)
    lo: float               # a-priori range of D
    hi: float
    clipped_a: int          # points whose loss under f_a exceeded its range (0 when c is a true sup)
    clipped_b: int
    method: str = "empirical Bernstein (Maurer-Pontil 2009, Thm 4)"
    loss: str = "l, the cross-entropy itself"   # which loss the statement is about
    clip: Optional[float] = None   # the one clip level c* (None: nothing clipped, c bounds every loss)
    guarantee: str = "finite-sample"

    def to_dict(self) -> dict:
        return asdict(self)


def certificate_from_losses(l_a: torch.Tensor, l_b: torch.Tensor, delta: float,
                            loss_range: Union[float, tuple[float, float]], statement: str = "L(f_b) < L(f_a)",
                            loss: str = "l, the cross-entropy itself", clip: Optional[float] = None
                            ) -> HoldoutCertificate:
    """The certificate from per-sample losses of f_a and f_b on one sample (paired by index);
    `loss`/`clip` say which loss the statement is about (`ClipLevel.loss`, `ClipLevel.clip`)."""
    c_a, c_b = (loss_range, loss_range) if np.isscalar(loss_range) else loss_range
    c_a, c_b = float(c_a), float(c_b)
    if not (c_a > 0 and c_b > 0 and math.isfinite(c_a) and math.isfinite(c_b)):
        raise ValueError(f"loss_range={loss_range!r} is not allowed: positive finite loss bounds")
    a = l_a.detach().double().cpu().numpy()
    b = l_b.detach().double().cpu().numpy()
    if a.shape != b.shape:
        raise ValueError(f"paired losses need one sample: shapes {a.shape} and {b.shape}")
    clipped_a, clipped_b = int((a > c_a).sum()), int((b > c_b).sum())
    D = np.clip(b, 0.0, c_b) - np.clip(a, 0.0, c_a)
    m = D.size
    ucb = eb_upper(D, delta, -c_a, c_b)
    var = D.var(ddof=1)
    return HoldoutCertificate(statement=statement, mean=float(D.mean()), se=float(math.sqrt(var / m)),
                              ucb=float(ucb), certified=bool(ucb < 0.0), m=int(m),
                              m_to_certify=m_to_certify(float(D.mean()), float(var), delta, c_a + c_b),
                              delta=float(delta), lo=-c_a, hi=c_b, clipped_a=clipped_a, clipped_b=clipped_b,
                              loss=loss, clip=clip)


@dataclass(frozen=True)
class ClipLevel:
    """The hold-out differences' range, fixed before the certification sample (module docstring).
    clip None: each model's own c bounds every loss (mlp); else the one level c* for every pair."""
    c: dict                  # {model name: its loss range c}
    clip: Optional[float]
    loss: str                # which loss every statement is about
    note: str                # the same, for the screen

    def range(self, a: str, b: str) -> tuple[float, float]:
        """(c_a, c_b) for the pair (f_a, f_b): D in [-c_a, c_b]; (c*, c*) under one clip level."""
        return (self.c[a], self.c[b]) if self.clip is None else (self.clip, self.clip)

    def statement(self, statement: str) -> str:
        """"L(f_J) < L(f_old)" as the claim this level makes: "L_{c*}(f_J) < L_{c*}(f_old)" when clipped."""
        return statement if self.clip is None else statement.replace("L(", "L_{c*}(")


def clip_level(ranges: dict) -> ClipLevel:
    """From each model's `loss_bound` dict (computed from the weights and S, before the sample):
    no clip when every c is a true sup (mlp); else c* = the largest c, one level for every pair
    (resnet: B_h measured on S, so a loss can exceed its c and each model's own clip would make
    D a difference of two different losses)."""
    c = {name: float(r["c"]) for name, r in ranges.items()}
    if not any(r["B_h_measured"] for r in ranges.values()):
        return ClipLevel(c, None, "l, the cross-entropy itself",
                         "c bounds every loss on every input (mlp: ||h|| <= sqrt(w) after the last LayerNorm), "
                         "so nothing is clipped and the claim is about the loss itself")
    star = max(c.values())
    return ClipLevel(c, star, f"min(l, c*), the cross-entropy clipped at c* = {star:.6g}",
                     f"c uses B_h measured on S, so a loss can exceed it: every loss of every pair is clipped at "
                     f"one level c* = {star:.6g} (the largest model's c, fixed before the sample), D lies in "
                     f"[-c*, c*], and each claim is about the clipped loss L_{{c*}}(f) = E min(l, c*)")


def sample_losses(model: torch.nn.Module, sample: Union[Split, Iterable[Split]],
                  losses: Callable = per_sample_losses) -> torch.Tensor:
    """Per-sample losses on a Split, or on an iterable of Splits (chunks of one large sample);
    `losses`: per_sample_losses or a LossMemo."""
    chunks = [sample] if isinstance(sample, Split) else sample
    return torch.cat([losses(model, s.x, s.y)[0].double().cpu() for s in chunks])


def holdout(f_a: torch.nn.Module, f_b: torch.nn.Module, sample: Union[Split, Iterable[Split]], delta: float,
            loss_range: Union[float, tuple[float, float]], statement: str = "L(f_b) < L(f_a)"
            ) -> HoldoutCertificate:
    """Certify L(f_b) < L(f_a) on a sample neither model saw: mean difference, its UCB at level
    delta (empirical Bernstein on D in [-c_a, c_b]), `certified` and the m at which it would certify.
    `loss_range`: c (both) or (c_a, c_b), fixed before the sample."""
    if not isinstance(sample, Split):
        sample = list(sample)
    return certificate_from_losses(sample_losses(f_a, sample), sample_losses(f_b, sample), delta,
                                   loss_range, statement)


def paired_difference(l_a: torch.Tensor, l_b: torch.Tensor) -> tuple[float, float]:
    """(mean of l_b - l_a, its standard error): the headline's paired difference on one sample."""
    D = (l_b.double() - l_a.double())
    m = D.numel()
    return D.mean().item(), (D.std().item() / math.sqrt(m) if m > 1 else math.nan)
