"""Complexity terms and the two test-risk guarantees (theory.md sections 7-8; THEORY.md).

What is the paper's and what is ours:
- [paper] the loss bound c from norm control (Remark N.4), eps_X with a Rademacher term, the two
  routes A and B and their verdicts.
- [resx] every number inside R_n: which norm-based bound, how residual blocks and normalization
  layers enter it, how biases and convolutions are handled. These are this project's
  formalization, built from Maurer (2016), Golowich-Rakhlin-Shamir (2018) and
  Bartlett-Foster-Telgarsky (2017); none of them is "the paper's bound". Each step that is not a
  theorem for these architectures is named in the docstring of `complexity` and in the docs.

Every norm is computed in float64. Validity (THEORY.md 7 and 8b): the budgets (the norms in each
bound's product) are read off the trained model, so each is rounded up on a geometric grid fixed
before S and paid for by a union bound (`budget_grid`: a factor of at most e on R and a log term in
eps); R bounds the empirical Rademacher complexity, so eps adds the McDiarmid step to the expected
one; B_x enters as sqrt(mean ||x||^2) (GRS's empirical form). What remains and is not a theorem for
these architectures (LayerNorm and post-sum ReLU peeled by a Lipschitz factor, quantities that are
properties of S at this model rather than budgets) is listed in `ComplexityTerm.heuristic`, and a
route with any such step is never "certified": its verdict is "not_certified" and
`arithmetic_verdict` keeps what the numbers alone would say.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..core.models import MLP, ResNet
from ..core.tv_resnet import ResNetBlocks
from .norms import describe, frobenius

L_CE = math.sqrt(2.0)                   # ||grad_z l(z, y)|| = ||softmax(z) - e_y|| <= sqrt(2)
CONTRACTION = math.sqrt(2.0) * L_CE     # Maurer 2016: R(l o F) <= sqrt(2) L_l sum_j R(F_j) = 2 sum_j R(F_j)
BOUNDS = ("grs", "bft")
CITATIONS = {
    "maurer": "A. Maurer, A vector-contraction inequality for Rademacher complexities, ALT 2016 (Corollary 1)",
    "grs": "N. Golowich, A. Rakhlin, O. Shamir, Size-independent sample complexity of neural networks, "
           "COLT 2018 (Theorem 1)",
    "bft": "P. Bartlett, D. Foster, M. Telgarsky, Spectrally-normalized margin bounds for neural networks, "
           "NeurIPS 2017 (Theorem 3.3 and Lemma A.5)",
}
VERDICTS = ("strict", "no_worse", "not_certified")


# ---------------------------------------------------------------------------------------------
# loss bound c (theory.md 7, [paper] Remark N.4)

@torch.no_grad()
def loss_bound(model: nn.Module, x_S: torch.Tensor, arch: Optional[str] = None, batch_size: int = 1024) -> dict:
    """c = log K + 2 B_z with B_z = max_j (||W_head,j|| B_h + |b_j|), so every loss is in [0, c].

    l(z, y) = logsumexp(z) - z_y <= log K + max_j z_j - z_y <= log K + 2 max_j |z_j|, and
    |z_j| <= ||W_j|| ||h|| + |b_j| with ||h|| <= B_h. B_h = sqrt(w) for mlp (a LayerNorm output
    without affine has ||h||^2 = w var/(var + eps) < w; [paper] norm control); for resnet B_h is
    the measured max ||features(x)|| over S (flagged `B_h_measured`). Also returned, as observed
    counterparts: `max_feature_norm` and `max_abs_logit` on S.
    """
    arch = arch or _arch_of(model)
    W = model.head.weight.detach().double()                    # (K, D)
    b = model.head.bias.detach().double()                      # (K,)
    feats = _batched(model, x_S, batch_size, model.features)   # (n, D)
    measured = feats.double().norm(dim=1).max().item()
    if arch == "mlp":
        B_h, is_measured = math.sqrt(W.shape[1]), False
    else:
        B_h, is_measured = measured, True
    B_z_j = W.norm(dim=1) * B_h + b.abs()                      # (K,)
    K = W.shape[0]
    logits = feats.double() @ W.T + b
    B_z = B_z_j.max().item()
    return {"B_h": B_h, "B_h_measured": is_measured, "max_feature_norm": measured,
            "B_z": B_z, "B_z_per_class": B_z_j.tolist(), "K": K, "c": math.log(K) + 2.0 * B_z,
            "max_abs_logit": logits.abs().max().item()}


# ---------------------------------------------------------------------------------------------
# complexity of the loss class (theory.md 7; [resx] formalization)

@dataclass(frozen=True)
class ComplexityTerm:
    """A bound R on R_n(l o X), the Rademacher complexity of the loss class, with what it used.

    `layers`: the per-layer table (dicts, for display). `inputs`: every scalar the value used.
    `rho`: the new block's budget ||phi - phi0|| (None without a reference and a position).
    `at(n)`: the same bound for another sample size at the same per-sample budgets.
    """
    name: str
    citation: str
    R: float
    n: int
    layers: tuple
    inputs: dict = field(default_factory=dict)
    rho: Optional[float] = None
    grid_factor: float = 1.0        # rounding the budgets up to the grid multiplies R by at most this
    log_grid: float = 0.0           # sum over budgets of log(1/pi(k)): the union bound's price in eps
    heuristic: tuple = ()           # the steps that are not theorems for this architecture

    @property
    def valid(self) -> bool:
        return not self.heuristic

    def at(self, n: float) -> float:
        if self.name == "grs":
            return self.R * math.sqrt(self.n / n)
        return self.grid_factor * CONTRACTION * sum(_dudley(a, r, n) for a, r in
                                                    zip(self.inputs["a_j"], self.inputs["r_j"]))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [dict(row) for row in self.layers]
        d["valid"] = self.valid
        d["heuristic"] = list(self.heuristic)
        return d


GRID_MASS = 2.0   # sum over k in Z of 1/((|k| + 1)(|k| + 2)) = 1.5, plus 1/2 reserved for the zero budget
ZERO_MASS = 0.25  # pi(zero) = (1/2) / GRID_MASS: a budget that is exactly 0 (eta* = 0, W2 = 0) is a cell too


def budget_grid(values, gamma: float) -> tuple[list[float], float]:
    """Round each budget up to the grid gamma^k (k in Z, fixed before S) and price the union bound.

    Returns (ratios rounded/actual, each in [1, gamma)), and sum_l log(1/pi(k_l)) with the prior
    pi(k) = 1/(2 (|k| + 1)(|k| + 2)) over Z and pi(zero) = 1/4 for a budget that is exactly 0: the
    zero class is one more cell of the union bound (its eps is a different event), so its mass is
    reserved and the prior over Z u {zero} sums to 1."""
    ratios, log_price = [], 0.0
    for v in values:
        if v <= 0.0:
            ratios.append(1.0)
            log_price += math.log(1.0 / ZERO_MASS)
            continue
        k = math.ceil(math.log(v) / math.log(gamma) - 1e-12)
        ratios.append(max(1.0, gamma ** k / v))
        log_price += math.log(GRID_MASS * (abs(k) + 1) * (abs(k) + 2))
    return ratios, log_price


HEURISTIC = {
    "ln_peel": "LayerNorm peeled by its Lipschitz factor 1/sqrt(v_min + eps): not a theorem (GRS's peeling needs "
               "a positively homogeneous activation under a Frobenius budget; review I4)",
    "v_min": "v_min, the smallest pre-norm variance, is measured on S at this model: a property of S, not a "
             "budget a grid can pay for; uniformly only 1/sqrt(eps) holds (review I3)",
    "relu_peel": "the post-sum ReLU and the conv shortcut peeled by Lipschitz factors alone: not a theorem, false "
                 "in general for ReLU layers under spectral budgets (Vardi-Shamir-Srebro 2022; review I4)",
    "B_h": "B_h, the feature norm bounding the logits, is measured on S (review I8)",
    "X_i": "BFT's layer inputs X_i are measured at this model on S, not bounded over the class (review I3)",
    "reference": "BFT's reference is f_old, which was trained on S; the theorem needs it fixed before S (review I3)",
    "c_class": "the loss range c uses this model's head norms, not a sup over the class (review I8)",
    "bias_aug": "biases enter by augmentation ([W b] against an input with a constant coordinate), but the "
                "constant coordinate is not propagated through the layers: not a theorem (review, bias NOTE)",
}


def complexity(model: nn.Module, x_S: torch.Tensor, *, bound: str = "grs", reference: Optional[nn.Module] = None,
               new_block_position: Optional[int] = None, n: Optional[int] = None,
               batch_size: int = 1024) -> ComplexityTerm:
    """R >= R_n(l o X), X the class of networks with this model's budgets (theory.md 7; ours).

    Contraction [Maurer 2016, Cor. 1]: R_n(l o F) <= sqrt(2) L_l sum_j R_n(F_j), L_l = sqrt(2)
    (||softmax(z) - e_y|| <= sqrt(2)), F_j the class of logit j. R_n(F_j) from:

    "grs" (Golowich-Rakhlin-Shamir 2018, Theorem 1, extended by us):
        R_n(F_j) <= B_x (sqrt(2 log(2) d) + 1) prod_s g_s ||[w_j, b_j]|| / sqrt(n),
      B_x = max ||x|| on S with the stem's constant input (sqrt(B_x^2 + 1) mlp, sqrt(B_x^2 + HW)
      resnet), d = 1 + the number of peeled ReLU/LayerNorm layers, g_s the stage factors:
        mlp stem        ||[W b]||_2 / sqrt(v_min + eps)
        mlp block       (1 + ||[W2 b2]||_2 ||[W1 b1]||_F) / sqrt(v_min + eps)
        resnet stem     ||conv1+BN, unrolled, augmented||_F
        resnet block    g_sc + ||conv2+BN2||_2 ||conv1+BN1, unrolled||_F, g_sc = 1 or ||1x1+BN||_2
        pool            1 / sqrt(HW)
      with v_min the smallest pre-norm variance of that LayerNorm over S. Theorem for: plain ReLU
      chains (GRS) and the residual sum h + W2 relu(W1 h) (a convex split of exp(lambda(a + b))
      gives the factor 1 + ||W2||_2 ||W1||_F at the cost of one factor 2). Not a theorem, our
      extension: peeling LayerNorm and the post-sum ReLU by their Lipschitz factor, biases by
      augmentation (the constant coordinate is not propagated), budgets measured on S.

    "bft" (Bartlett-Foster-Telgarsky 2017, Theorem 3.3 + Lemma A.5, in its general chain form):
        ln N(F_j, eps, ||.||_2 on S) <= C_j^2 / eps^2,
        C_j = sqrt(ln(2 W^2)) (sum_i (b_i X_i L_ij)^(2/3))^(3/2),
      over weight layers i (head row j included), b_i = ||[A_i b_i] - [M_i b0_i]||_{2,1}, X_i the
      Frobenius norm of layer i's (augmented) input over S (patches for convs: at most
      ceil(k/s)^2 ||input||_F^2 + n positions), L_ij the Lipschitz factor from layer i's output to
      logit j (residual block: lip(N) (lip(shortcut) + lip(branch)); LayerNorm 1/sqrt(v_min + eps)),
      W the widest layer. For a plain chain X_i L_ij = ||X||_F prod_k ||A_k||_2 / ||A_i||_2 and
      this is BFT's (prod s_k) (sum (b_k/s_k)^(2/3))^(3/2). Dudley (Lemma A.5) with a = C_j / sqrt(n):
        R_n(F_j) <= min(r_j, (12 a / sqrt(n)) (1 + ln(sqrt(n) r_j / (3 a)))),  r_j = ||w_j|| B_h + |b_j|.
      M = `reference` (same architecture: f_new at phi0, i.e. f_old's weights and phi0); without
      one, M = 0. Caveat: BFT needs M fixed before S; f_old was trained on S (THEORY.md 7).

    `new_block_position`: reports rho = ||phi - phi0|| over the new block's parameters.
    `n` overrides the sample size in the formula (default len(x_S)); the norms stay those on x_S.
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound={bound!r} is not allowed: one of {list(BOUNDS)}")
    net = describe(model, x_S, reference, batch_size)
    n_eff = int(n) if n is not None else net.n
    rho = _rho(model, reference, new_block_position)
    head_rows = [frobenius(torch.cat([net.head_W[j], net.head_b[j:j + 1]])) for j in range(len(net.head_b))]
    lips = [s.lip for s in net.stages]
    inputs = {"n_S": net.n, "B_x": net.B_x, "B_x_aug": net.B_x_aug, "B_h": net.B_h, "B_h_measured": net.B_h_measured,
              "lipschitz_features": math.prod(lips), "contraction": CONTRACTION, "L_l": L_CE}
    layers = [{"name": s.name, "kind": "stage", "grs": s.grs, "lip": s.lip, "peels": s.peels, "note": s.note}
              for s in net.stages]
    layers += [{"name": w.name, "kind": "weight", "stage": net.stages[w.stage].name, "dist21": w.dist21,
                "spec": w.spec, "ratio": w.dist21 / w.spec if w.spec > 0 else math.inf,
                "x_rms": math.sqrt(w.x_sq / net.n), "after": w.after} for w in net.weights]

    is_mlp = isinstance(model, MLP)
    if bound == "grs":
        d = 1 + sum(s.peels for s in net.stages)
        prod = math.prod(s.grs for s in net.stages)
        depth_factor = math.sqrt(2.0 * math.log(2.0) * d) + 1.0
        R_j = [net.x_rms_aug * depth_factor * prod * row / math.sqrt(n_eff) for row in head_rows]
        stage_budgets = [b for s in net.stages for b in s.budgets]
        gamma = math.exp(1.0 / (len(stage_budgets) + 1))          # all roundings together: at most e
        stage_ratios, log_stage = budget_grid(stage_budgets, gamma)
        head_ratios, log_head = budget_grid(head_rows, gamma)
        factor = math.prod(stage_ratios) * max(head_ratios)
        R = factor * CONTRACTION * sum(R_j)
        inputs.update({"d": d, "depth_factor": depth_factor, "grs_product": prod, "head_rows": head_rows,
                       "R_F_j": R_j, "x_rms_aug": net.x_rms_aug, "gamma": gamma, "budgets": len(stage_budgets)
                       + len(head_rows), "R_unrounded": CONTRACTION * sum(R_j)})
        layers.append({"name": "head", "kind": "head", "grs": sum(head_rows), "note": "sum_j ||[w_j, b_j]||"})
        heuristic = ((HEURISTIC["ln_peel"], HEURISTIC["v_min"], HEURISTIC["c_class"], HEURISTIC["bias_aug"]) if is_mlp
                     else (HEURISTIC["relu_peel"], HEURISTIC["B_h"], HEURISTIC["c_class"], HEURISTIC["bias_aug"]))
        return ComplexityTerm("grs", CITATIONS["grs"] + "; " + CITATIONS["maurer"], R, n_eff, tuple(layers),
                              inputs, rho, factor, log_stage + log_head, heuristic)

    # bft: suffix products of stage Lipschitz factors give the factor from a stage's output to the features
    after_stage = [math.prod(lips[s + 1:]) for s in range(len(lips))]
    W_dim = max([max(w.dims) for w in net.weights] + [net.head_W.shape[1] + 1, net.head_W.shape[0]])
    log_cover = math.sqrt(math.log(2.0 * W_dim ** 2))
    x_head = math.sqrt(net.head_x_sq)
    a_j, r_j, C_j, head_dist = [], [], [], []
    for j in range(len(net.head_b)):
        wj = net.head_W[j].norm().item()
        dj = frobenius(torch.cat([net.head_W[j], net.head_b[j:j + 1]]) - net.head_ref[j].to(net.head_W.device))
        terms = [w.dist21 * math.sqrt(w.x_sq) * w.after * after_stage[w.stage] * wj for w in net.weights]
        terms.append(dj * x_head)
        C = log_cover * sum(t ** (2.0 / 3.0) for t in terms) ** 1.5
        C_j.append(C)
        a_j.append(C / math.sqrt(net.n))          # X_i grow like sqrt(n) at fixed per-sample norms
        r_j.append(wj * net.B_h + abs(net.head_b[j].item()))
        head_dist.append(dj)
    R_j = [_dudley(a, r, n_eff) for a, r in zip(a_j, r_j)]
    budgets = [w.dist21 for w in net.weights] + [w.spec for w in net.weights] + head_dist
    gamma = math.exp(1.0 / (len(budgets) + 1))
    ratios, log_grid = budget_grid(budgets, gamma)
    factor = math.prod(ratios)              # Dudley's bound is at most linear in each budget's scale
    R = factor * CONTRACTION * sum(R_j)
    inputs.update({"W": W_dim, "log_cover": log_cover, "C_j": C_j, "a_j": a_j, "r_j": r_j, "R_F_j": R_j,
                   "head_dist": head_dist, "reference": reference is not None, "gamma": gamma,
                   "budgets": len(budgets), "R_unrounded": CONTRACTION * sum(R_j)})
    layers.append({"name": "head", "kind": "head", "dist21": sum(head_dist), "x_rms": x_head / math.sqrt(net.n),
                   "note": "sum_j ||[w_j, b_j] - [m_j, b0_j]||"})
    heuristic = (HEURISTIC["X_i"],) + ((HEURISTIC["reference"],) if reference is not None else ()) + \
        ((HEURISTIC["v_min"], HEURISTIC["c_class"]) if is_mlp else (HEURISTIC["B_h"], HEURISTIC["c_class"]))
    return ComplexityTerm("bft", CITATIONS["bft"] + "; " + CITATIONS["maurer"], R, n_eff, tuple(layers),
                          inputs, rho, factor, log_grid, heuristic)


def _dudley(a: float, r: float, n: float) -> float:
    """min(r, (12 a/sqrt(n)) (1 + ln(sqrt(n) r/(3a)))): Dudley's integral with ln N <= n a^2/eps^2
    at the optimal alpha = 3a, upper limit sqrt(n) r (BFT Lemma A.5); r alone if 3a >= sqrt(n) r."""
    if a <= 0.0:
        return 0.0
    root = math.sqrt(n)
    if 3.0 * a >= root * r:
        return r
    return min(r, 12.0 * a / root * (1.0 + math.log(root * r / (3.0 * a))))


def _rho(model, reference, position) -> Optional[float]:
    if reference is None or position is None:
        return None
    new, ref = dict(model.blocks[position].named_parameters()), dict(reference.blocks[position].named_parameters())
    return math.sqrt(sum((p.detach().double() - ref[k].detach().double().to(p.device)).pow(2).sum().item()
                         for k, p in new.items()))


def lipschitz_bound(model: nn.Module, x_S: torch.Tensor, batch_size: int = 1024) -> dict:
    """Product of the stage Lipschitz factors: ||features(x) - features(x')|| <= L ||x - x'||
    (ours). Global for resnet in eval mode; for mlp valid for x, x' whose pre-norm variance at
    every LayerNorm is at least its minimum over S (e.g. x, x' in S): on that set
    ||N(v) - N(v')|| <= ||v - v'|| / sqrt(v_min + eps) (THEORY.md 7). Per logit j: L ||w_j||.
    """
    net = describe(model, x_S, None, batch_size)
    L = math.prod(s.lip for s in net.stages)
    return {"features": L, "stages": [(s.name, s.lip) for s in net.stages],
            "logits": [L * net.head_W[j].norm().item() for j in range(len(net.head_b))]}


# ---------------------------------------------------------------------------------------------
# eps, Hoeffding, vacuity (theory.md 7)

def epsilon(R: float, c: float, n: float, delta: float, log_grid: float = 0.0) -> float:
    """eps_X = R + (3c/2) sqrt((log(6/delta) + log_grid) / (2n)); w.p. >= 1 - delta/2,
    sup_X |L - L_S| <= 2 eps_X, for R an upper bound on the empirical Rademacher complexity.

    Three events at delta/6 each (Mohri et al. 2018, Thm 3.3, two-sided, losses in [0, c]):
    sup (L - L_S) <= 2 R_n + c q and sup (L_S - L) <= 2 R_n + c q by symmetrisation and McDiarmid,
    and R_n <= R_S + c q by McDiarmid on R_S (bounded differences c/n), q = sqrt(log(6/delta)/(2n)).
    `log_grid` (the budgets' union bound) divides delta by the grid cell's prior mass.
    """
    return R + 1.5 * c * math.sqrt((math.log(6.0 / delta) + log_grid) / (2.0 * n))


def hoeffding(c: float, n: float, delta: float) -> float:
    """c sqrt(log(2/delta) / (2n)): one-sided Hoeffding for one fixed function at confidence delta/2."""
    return c * math.sqrt(math.log(2.0 / delta) / (2.0 * n))


def n_nonvacuous(R: float, c: float, n: float, delta: float,
                 R_at: Optional[Callable[[float], float]] = None, log_grid: float = 0.0) -> float:
    """The sample size n* at which 2 eps = c, i.e. the bound on |L - L_S| stops being vacuous.

    Default: R scales like 1/sqrt(n) (GRS at fixed per-sample budgets), so with
    q = 3 sqrt((log(6/delta) + log_grid)/2), sqrt(n*) = (2 R sqrt(n) + c q) / c. With `R_at` (e.g.
    `ComplexityTerm.at`, BFT has an extra log n) n* is found by bisection on log n; inf if
    2 eps > c still at n = 1e30.
    """
    q = 3.0 * math.sqrt((math.log(6.0 / delta) + log_grid) / 2.0)
    if R_at is None:
        return ((2.0 * R * math.sqrt(n) + c * q) / c) ** 2

    def excess(m):
        return 2.0 * epsilon(R_at(m), c, m, delta, log_grid) - c

    lo, hi = 0.0, 30.0 * math.log(10.0)
    if excess(math.exp(hi)) > 0:
        return math.inf
    if excess(math.exp(lo)) <= 0:
        return 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(math.exp(mid)) > 0:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


ROUTE_EVENTS = 3   # each route is a union of three events: two deviation steps and the Delta_R lower bound


def route_share(delta: float) -> float:
    """delta / 3: each of a route's three events (B: eps_M, eps_K, Delta_R; A: eps_M, Hoeffding for
    f_J, Delta_R) fails with probability at most this, so the route holds at 1 - delta (union bound)."""
    return delta / ROUTE_EVENTS


def representational_gain(Delta_R: Optional[float], Delta_R_T: Optional[float],
                          Delta_R_lower: Optional[float] = None,
                          Delta_R_T_lower: Optional[float] = None) -> tuple[float, str]:
    """The Delta_R the routes use (theory.md 8): a finite-sample lower confidence bound at the
    route's share delta/3, empirical Bernstein on the paired differences (`jump_margins`): on the
    population sample where there is one (synthetic tasks), else on T (real data). A population
    Delta_R without its lower bound is used as if exact (labelled a heuristic by `make_terms`).
    Returns (value, source)."""
    if Delta_R is not None:
        if Delta_R_lower is not None and math.isfinite(Delta_R_lower):
            return float(Delta_R_lower), "population lower bound (empirical Bernstein on the Monte Carlo sample, delta/3)"
        return float(Delta_R), "population (Monte Carlo estimate, used as if exact)"
    if Delta_R_T_lower is None:
        raise ValueError("Delta_R is None (real data): Delta_R_T_lower, the test-side lower bound, is needed")
    return float(Delta_R_T_lower), "test-side lower bound (empirical Bernstein on T, delta/3)"


@dataclass(frozen=True)
class Terms:
    """Every term of the two guarantees, with its observed counterpart (theory.md 7-8)."""
    Delta_R: Optional[float]        # population jump margin L(f_old) - L(f_J); None on real data
    Delta_R_T: Optional[float]      # test-side jump margin L_T(f_old) - L_T(f_J)
    Delta_R_used: float             # representational_gain(...)
    Delta_R_source: str
    Delta_ERM: float                # L_S(f_J) - L_S(f_new)
    R_M: float                      # complexity of M (budgets at f_new)
    R_K: float                      # complexity of K (budgets at f_J)
    eps_M: float
    eps_K: float
    hoeffding: float                # c sqrt(log(1/(delta/3))/(2n)) for f_J: one-sided at delta/3
    c: float
    delta: float
    n: int
    bound_name: str
    vacuous_M: bool                 # 2 eps_M >= c
    vacuous_K: bool
    n_nonvacuous_M: float
    n_nonvacuous_K: float
    gap_new: Optional[float] = None  # observed |L_T(f_new) - L_S(f_new)|
    gap_J: Optional[float] = None    # observed |L_T(f_J) - L_S(f_J)|
    heuristic: tuple = ()            # steps of eps_M, eps_K (and Delta_R) that are not theorems here
    log_grid_M: float = 0.0          # the budgets' union-bound price inside eps_M, eps_K
    log_grid_K: float = 0.0
    delta_each: float = 0.0          # route_share(delta): each of a route's three events

    def routes(self, L_old: float) -> tuple["Route", "Route"]:
        """(route A, route B) at L(f_old) = L_old (or its proxy), each stated at its level."""
        each = f"{self.delta_each:.4g}"
        level = f"1 - delta = {1 - self.delta:g}"
        a = route_a(L_old, self.Delta_R_used, self.Delta_ERM, self.eps_M, self.hoeffding,
                    heuristic=self.heuristic + (ROUTE_A_HEURISTIC,))
        b = route_b(L_old, self.Delta_R_used, self.Delta_ERM, self.eps_M, self.eps_K, heuristic=self.heuristic)
        return (dataclasses.replace(a, level=f"{level}: eps_M, Hoeffding for f_J and the Delta_R lower bound at "
                                             f"delta/3 = {each} each (union bound)"),
                dataclasses.replace(b, level=f"{level}: eps_M, eps_K and the Delta_R lower bound at "
                                             f"delta/3 = {each} each (union bound)"))

    def to_dict(self) -> dict:
        return asdict(self)


def make_terms(*, M: ComplexityTerm, K: ComplexityTerm, c: float, delta: float, Delta_ERM: float,
               Delta_R: Optional[float] = None, Delta_R_T: Optional[float] = None,
               Delta_R_lower: Optional[float] = None, Delta_R_T_lower: Optional[float] = None,
               Delta_R_clipped: Optional[int] = None, gap_new: Optional[float] = None,
               gap_J: Optional[float] = None, n: Optional[int] = None) -> Terms:
    """Terms from the two complexity terms (M at f_new, K at f_J) and the measured gains; every
    event at the route's share delta/3 (`route_share`): eps_X is `epsilon` at 2 delta/3 (its two
    sides at delta/3 together), Hoeffding one-sided at delta/3, Delta_R's lower bound at delta/3."""
    n = int(n if n is not None else M.n)
    share = route_share(delta)
    used, source = representational_gain(Delta_R, Delta_R_T, Delta_R_lower, Delta_R_T_lower)
    d_eps = 2.0 * share      # epsilon(.., d) and hoeffding(.., d) hold at d/2
    eps_M, eps_K = epsilon(M.at(n), c, n, d_eps, M.log_grid), epsilon(K.at(n), c, n, d_eps, K.log_grid)
    heuristic = tuple(dict.fromkeys(M.heuristic + K.heuristic))
    if "as if exact" in source:
        heuristic += ("Delta_R is a Monte Carlo estimate on the population sample, used as if exact (review I7)",)
    if Delta_R_clipped:
        heuristic += (f"Delta_R's lower bound clips {Delta_R_clipped} losses above c (c not a sup: B_h measured on S)",)
    return Terms(Delta_R=Delta_R, Delta_R_T=Delta_R_T, Delta_R_used=used, Delta_R_source=source,
                 Delta_ERM=float(Delta_ERM), R_M=M.at(n), R_K=K.at(n), eps_M=eps_M, eps_K=eps_K,
                 hoeffding=hoeffding(c, n, d_eps), c=c, delta=delta, n=n, bound_name=M.name,
                 vacuous_M=2.0 * eps_M >= c, vacuous_K=2.0 * eps_K >= c,
                 n_nonvacuous_M=n_nonvacuous(M.at(n), c, n, d_eps, R_at=M.at, log_grid=M.log_grid),
                 n_nonvacuous_K=n_nonvacuous(K.at(n), c, n, d_eps, R_at=K.at, log_grid=K.log_grid),
                 gap_new=gap_new, gap_J=gap_J, heuristic=heuristic, log_grid_M=M.log_grid, log_grid_K=K.log_grid,
                 delta_each=share)


# ---------------------------------------------------------------------------------------------
# the two routes (theory.md 8)

@dataclass(frozen=True)
class Route:
    """One guarantee: L(f_new) <= bound w.p. >= 1 - delta (three events at delta/3: `level`), as a
    waterfall from L(f_old). The verdict compares the bound with L(f_old) and needs no estimate of it;
    the first bar is L(f_old)'s estimate (L_pop, or L_T on real data)."""
    name: str            # "A" | "B"
    bound: float
    verdict: str         # "strict" | "no_worse" | "not_certified"
    steps: tuple         # ((label, value), ...): L(f_old), then signed increments, then the bound
    assumption: str
    cost: float          # what the gains must beat: 2(eps_M + eps_K) (B) or 2 eps_M + hoeffding (A)
    heuristic: tuple = ()          # steps that are not theorems: then the verdict is never "certified"
    arithmetic_verdict: str = ""   # what gain against cost alone says
    level: str = ""                # the level it holds at and how delta is split (Terms.routes fills it)
    guarantee: str = "finite-sample"   # every step is a finite-sample bound (none is a normal approximation)

    @property
    def valid(self) -> bool:
        return not self.heuristic

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = [list(s) for s in self.steps]
        d["heuristic"] = list(self.heuristic)
        d["valid"] = self.valid
        return d


ROUTE_A_HEURISTIC = ("Hoeffding for f_J needs f_J independent of S; f_J = (theta_old, phi0 + eta* d) and "
                     "theta_old was trained on S")


def _gated(arithmetic: str, heuristic: tuple) -> str:
    """A route certifies only from a valid bound: any heuristic step makes it "not_certified"."""
    return arithmetic if not heuristic else "not_certified"


def _verdict(gain: float, cost: float) -> str:
    """strict iff gain > cost (bound < L(f_old)); no_worse iff gain >= cost (bound <= L(f_old))."""
    tol = 1e-12 * max(1.0, abs(gain), abs(cost))
    if gain - cost > tol:
        return "strict"
    if gain - cost >= -tol:
        return "no_worse"
    return "not_certified"


def route_b(L_old: float, Delta_R: float, Delta_ERM: float, eps_M: float, eps_K: float,
            heuristic: tuple = ()) -> Route:
    """Route B [paper]: L(f_new) <= L(f_old) - Delta_R - Delta_ERM + 2 (eps_M + eps_K).

    L(f_new) <= L_S(f_new) + 2 eps_M = L_S(f_J) - Delta_ERM + 2 eps_M <= L(f_J) + 2 eps_K - Delta_ERM
    + 2 eps_M, uniform over M and K (delta/3 each, with Delta_R's lower bound the third delta/3:
    `make_terms`), so f_J may depend on S. Verdicts: strict iff
    Delta_R + Delta_ERM > 2 (eps_M + eps_K); no_worse iff Delta_R + Delta_ERM >= 2 (eps_M + eps_K)
    (bound <= L(f_old)), which with Delta_R = 0 is the paper's degenerate-regime condition
    Delta_ERM >= 2 (eps_M + eps_K); otherwise not_certified. With any `heuristic` step the verdict
    is not_certified whatever the arithmetic (kept in `arithmetic_verdict`).
    """
    cost = 2.0 * (eps_M + eps_K)
    bound = L_old - Delta_R - Delta_ERM + cost
    steps = (("L(f_old)", L_old), ("- Delta_R", -Delta_R), ("- Delta_ERM", -Delta_ERM),
             ("+ 2 eps_M", 2.0 * eps_M), ("+ 2 eps_K", 2.0 * eps_K), ("bound on L(f_new)", bound))
    arithmetic = _verdict(Delta_R + Delta_ERM, cost)
    return Route("B", bound, _gated(arithmetic, heuristic), steps,
                 "uniform over M and K: holds whatever f_J depends on (no Hoeffding transfer)", cost,
                 tuple(heuristic), arithmetic)


def route_a(L_old: float, Delta_R: float, Delta_ERM: float, eps_M: float, hoeffding_term: float,
            heuristic: tuple = ()) -> Route:
    """Route A: L(f_new) <= L(f_old) - Delta_R - Delta_ERM + 2 eps_M + c sqrt(log(3/delta)/(2n)).

    The uniform step over K is replaced by Hoeffding for the single function f_J
    (L_S(f_J) <= L(f_J) + hoeffding, one-sided at delta/3; eps_M and Delta_R take the other two
    thirds: `make_terms`). Valid only if f_J does not depend on S. Verdicts as
    route B with cost 2 eps_M + hoeffding.
    """
    cost = 2.0 * eps_M + hoeffding_term
    bound = L_old - Delta_R - Delta_ERM + cost
    steps = (("L(f_old)", L_old), ("- Delta_R", -Delta_R), ("- Delta_ERM", -Delta_ERM),
             ("+ 2 eps_M", 2.0 * eps_M), ("+ Hoeffding(f_J)", hoeffding_term), ("bound on L(f_new)", bound))
    arithmetic = _verdict(Delta_R + Delta_ERM, cost)
    return Route("A", bound, _gated(arithmetic, heuristic), steps,
                 "f_J must be independent of S (here: chosen on the probe sample P with theta_old "
                 "fixed; theta_old itself was fit on S, so this is an assumption, not a fact)", cost,
                 tuple(heuristic), arithmetic)


def tighter_route(a: Route, b: Route) -> tuple[str, str]:
    """(name, reason): the route with the smaller bound and why. With the same Delta_R and
    Delta_ERM the routes differ only in Hoeffding(f_J) against 2 eps_K."""
    ha, eb = a.cost - a.steps[3][1], b.cost - b.steps[3][1]
    if a.bound <= b.bound:
        return a.name, (f"route {a.name} is tighter by {b.bound - a.bound:.4g}: Hoeffding for the single "
                        f"function f_J costs {ha:.4g} against 2 eps_K = {eb:.4g} for the whole class K; "
                        f"it assumes f_J is independent of S")
    return b.name, (f"route {b.name} is tighter by {a.bound - b.bound:.4g}: 2 eps_K = {eb:.4g} is below "
                    f"Hoeffding's {ha:.4g}, and it needs no independence of f_J from S")


# ---------------------------------------------------------------------------------------------

def _arch_of(model: nn.Module) -> str:
    if isinstance(model, MLP):
        return "mlp"
    if isinstance(model, (ResNet, ResNetBlocks)):
        return "resnet"
    raise TypeError(f"unknown architecture {type(model).__name__}")


@torch.no_grad()
def _batched(model: nn.Module, x: torch.Tensor, batch_size: int, fn) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)
