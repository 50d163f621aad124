"""Complexity terms and the two guarantees (theory.md sections 7-8; docs/theory_bounds.md)."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from resx.theory import bounds
from resx.theory.bounds import (ComplexityTerm, complexity, epsilon, hoeffding, lipschitz_bound, loss_bound,
                         make_terms, n_nonvacuous, representational_gain, route_a, route_b, tighter_route)
from resx.core.models import LN_EPS, MLP, ResNet, insert_block
from resx.theory.norms import ConvBN


def _train_a_little(model, x, y, steps=5, lr=0.05):
    """A few SGD steps so weights and BN running statistics are not at initialisation."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = MLP(6, 8, 2, 4)
    x = torch.randn(64, 6)
    x = torch.cat([x, x[:16] + 1e-3 * torch.randn(16, 6)])      # near pairs inside S
    y = torch.randint(0, 4, (len(x),))
    _train_a_little(model, x, y)
    return model, x, y


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(1)
    model = ResNet(3, 4, 1, 5)
    x = torch.randn(24, 3, 8, 8)
    y = torch.randint(0, 5, (len(x),))
    _train_a_little(model, x, y)
    with torch.no_grad():                                       # non-trivial BN affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model, x, y


# ---------------------------------------------------------------------------------------------
# routes and verdicts

def test_route_bounds_equal_their_formulas():
    """Each route's bound is its formula recomputed from the terms, and its waterfall sums to the bound."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        L_old, dR, dE, eM, eK, h = (torch.rand(6, generator=g) * torch.tensor([3, 0.5, 0.5, 0.3, 0.3, 0.3])).tolist()
        b = route_b(L_old, dR, dE, eM, eK)
        a = route_a(L_old, dR, dE, eM, h)
        assert b.bound == pytest.approx(L_old - dR - dE + 2 * (eM + eK), abs=1e-12)
        assert a.bound == pytest.approx(L_old - dR - dE + 2 * eM + h, abs=1e-12)
        for r in (a, b):
            assert r.steps[0] == ("L(f_old)", L_old)
            assert sum(v for _, v in r.steps[:-1]) == pytest.approx(r.steps[-1][1], abs=1e-12)
            assert r.steps[-1][1] == r.bound


@pytest.mark.parametrize("dR, dE, expected", [
    (0.0, 0.5, "no_worse"),               # degenerate regime: Delta_R = 0, Delta_ERM = 2(eps_M + eps_K)
    (0.0, 0.5 + 1e-9, "strict"),
    (0.0, 0.5 - 1e-9, "not_certified"),
    (0.25, 0.25, "no_worse"),             # bound == L(f_old)
    (0.25, 0.25 + 1e-9, "strict"),
    (0.3, 0.0, "not_certified"),
    (0.6, -0.05, "strict"),               # a negative optimization gain can be paid by Delta_R
    (-0.1, 0.5, "not_certified"),         # Delta_ERM >= cost does not certify when Delta_R < 0
])
def test_route_b_verdicts_at_the_boundary(dR, dE, expected):
    """Route B says strict iff Delta_R + Delta_ERM > 2(eps_M + eps_K), no_worse at equality (Delta_R = 0 included)."""
    r = route_b(1.0, dR, dE, 0.125, 0.125)
    assert r.verdict == expected
    assert r.cost == 0.5


@pytest.mark.parametrize("dR, dE, expected", [
    (0.0, 0.375, "no_worse"), (0.0, 0.375 + 1e-9, "strict"), (0.0, 0.375 - 1e-9, "not_certified"),
    (0.375, 0.0, "no_worse"), (0.2, 0.1, "not_certified"),
])
def test_route_a_verdicts_at_the_boundary(dR, dE, expected):
    """Route A says strict iff Delta_R + Delta_ERM > 2 eps_M + Hoeffding, no_worse at equality."""
    assert route_a(1.0, dR, dE, 0.125, 0.125).verdict == expected


def test_verdicts_agree_with_the_bound():
    """On random terms a strict verdict means bound < L(f_old) and not_certified means bound > L(f_old)."""
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        dR, dE, eM, eK = (torch.rand(4, generator=g) - torch.tensor([0.3, 0.3, 0.0, 0.0])).tolist()
        for r in (route_b(2.0, dR, dE, eM, eK), route_a(2.0, dR, dE, eM, eK)):
            assert (r.verdict == "strict") == (r.bound < 2.0)
            assert (r.verdict == "not_certified") == (r.bound > 2.0)


def test_tighter_route_is_the_smaller_bound():
    """tighter_route names the route with the smaller bound; A wins exactly when Hoeffding < 2 eps_K."""
    for eK, h, winner in ((0.2, 0.1, "A"), (0.02, 0.1, "B")):
        a, b = route_a(1.0, 0.1, 0.1, 0.05, h), route_b(1.0, 0.1, 0.1, 0.05, eK)
        name, reason = tighter_route(a, b)
        assert name == winner and f"route {winner}" in reason


def test_representational_gain_prefers_the_population_margin():
    """The population margin's lower bound is used when there is one; without it the Monte Carlo
    mean is used as if exact (make_terms labels it a heuristic); real data needs T's lower bound."""
    assert representational_gain(0.3, 0.5, 0.25, 0.4)[0] == 0.25
    value, source = representational_gain(0.3, 0.5)
    assert value == 0.3 and "as if exact" in source
    value, source = representational_gain(None, 0.5, None, 0.4)
    assert value == 0.4 and source.startswith("test-side lower bound")
    with pytest.raises(ValueError):
        representational_gain(None, 0.5, None, None)


# ---------------------------------------------------------------------------------------------
# eps, vacuity, n_nonvacuous

def test_a_monte_carlo_delta_r_within_its_error_certifies_nothing():
    """Review I7: Delta_R = 3e-3 on 4096 population points with sd 0.1 (se 1.6e-3) against a cost
    of 2e-3: the point estimate would certify strict improvement; its finite-sample lower bound
    (empirical Bernstein at delta/3, through jump_margins' own code path) is below the cost, so
    route B certifies nothing. The same mean with sd 1e-4 on 2^20 points certifies."""
    from resx.theory.certificates import eb_upper
    g = np.random.default_rng(0)
    for sd, m, verdict in ((0.1, 4096, "not_certified"), (1e-4, 1 << 20, "strict")):
        e = 3e-3 + sd * g.standard_normal(m)
        lower = -eb_upper(-e, bounds.route_share(0.05), -1.0, 1.0)
        assert lower < 3e-3
        assert route_b(1.0, lower, 0.0, 5e-4, 5e-4).verdict == verdict
        assert route_b(1.0, 3e-3, 0.0, 5e-4, 5e-4).verdict == "strict"


def test_route_levels_add_up_to_delta():
    """Each route is three events at delta/3 (theory.md 8): eps_M - R is 1.5 McDiarmid widths at
    tail delta/9 (three at delta/9 make delta/3), Hoeffding for f_J one width at delta/3, and the
    Delta_R lower bound (jump_margins) at delta/3: together delta. Widths by bisection on the tail."""
    R, c, n, d = 0.7, 3.0, 500, 0.05
    M = ComplexityTerm("grs", "", R, n, ())
    t = make_terms(M=M, K=M, c=c, delta=d, Delta_ERM=0.0, Delta_R=0.01, Delta_R_lower=0.005)
    assert t.eps_M - R == pytest.approx(1.5 * _mcdiarmid_width(c, n, d / 9), rel=1e-9)
    assert t.hoeffding == pytest.approx(_mcdiarmid_width(c, n, d / 3), rel=1e-9)
    assert 3 * t.delta_each == pytest.approx(d) and t.Delta_R_used == 0.005
    ra, rb = t.routes(2.0)
    for r in (ra, rb):
        assert "delta/3" in r.level and r.level.startswith("1 - delta = 0.95") and r.guarantee == "finite-sample"


def _mcdiarmid_width(c, n, tail):
    """The t with exp(-2 n t^2 / c^2) = tail, by bisection on the tail itself (not the closed form)."""
    lo, hi = 0.0, 10.0 * c
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.exp(-2 * n * mid ** 2 / c ** 2) > tail else (lo, mid)
    return hi


@pytest.mark.parametrize("log_grid", [0.0, 7.5])
def test_epsilon_pays_three_mcdiarmid_events_and_the_grid(log_grid):
    """2 eps - 2 R is three McDiarmid widths at delta/6 each (two uniform deviations, and the step
    from the empirical to the expected Rademacher complexity; review I1), each at the grid cell's
    share delta exp(-log_grid) / 6 (review I2); Hoeffding is one width at delta/2."""
    R, c, n, d = 0.7, 3.0, 500, 0.05
    width = _mcdiarmid_width(c, n, d * math.exp(-log_grid) / 6)
    assert 2 * (epsilon(R, c, n, d, log_grid) - R) == pytest.approx(3 * width, rel=1e-9)
    assert hoeffding(c, n, d) == pytest.approx(_mcdiarmid_width(c, n, d / 2), rel=1e-9)
    assert epsilon(R / 2, c, 4 * n, d, log_grid) == pytest.approx(epsilon(R, c, n, d, log_grid) / 2)


def test_budget_grid_rounds_up_and_its_prior_sums_to_one():
    """Each budget is rounded up by less than gamma, and the prior over grid indices and the zero cell sums to 1."""
    gamma = math.exp(1 / 7)
    values = [0.013, 1.0, 2.5, 77.0, 1e4]
    ratios, price = bounds.budget_grid(values, gamma)
    for v, r in zip(values, ratios):
        assert 1.0 <= r < gamma * (1 + 1e-12)
        k = round(math.log(v * r) / math.log(gamma))
        assert v * r == pytest.approx(gamma ** k, rel=1e-9)
    mass = sum(1 / (bounds.GRID_MASS * (abs(k) + 1) * (abs(k) + 2)) for k in range(-100_000, 100_001))
    assert mass + bounds.ZERO_MASS == pytest.approx(1.0, abs=1e-4)     # Z and the zero cell together
    assert price > 0
    # a zero budget is a cell of its own (review: it was free while the prior over Z already summed to 1)
    _, with_zero = bounds.budget_grid(values + [0.0], gamma)
    assert with_zero - price == pytest.approx(math.log(4.0), rel=1e-12)


@pytest.mark.parametrize("R, n", [(5.0, 100), (0.01, 10_000), (120.0, 2000)])
def test_n_nonvacuous_makes_2eps_equal_c(R, n):
    """At n* = n_nonvacuous, with R rescaled like 1/sqrt(n), 2 eps equals c."""
    c, d = 4.0, 0.05
    m = n_nonvacuous(R, c, n, d)
    assert 2 * epsilon(R * math.sqrt(n / m), c, m, d) == pytest.approx(c, rel=1e-9)


def test_vacuity_flags_follow_c():
    """Terms marks eps_X vacuous exactly when 2 eps_X >= c, and n_nonvacuous is above n iff vacuous."""
    c, d, n = 3.0, 0.05, 1000
    q = epsilon(0.0, c, n, d)
    R_edge = c / 2 - q                                    # 2 eps == c exactly
    for R_M, R_K in ((R_edge * 1.01, R_edge * 0.99), (R_edge * 0.5, R_edge * 3)):
        M = ComplexityTerm("grs", "", R_M, n, ())
        K = ComplexityTerm("grs", "", R_K, n, ())
        t = make_terms(M=M, K=K, c=c, delta=d, Delta_ERM=0.1, Delta_R=0.05)
        assert t.vacuous_M == (2 * t.eps_M >= c) == (R_M > R_edge)
        assert t.vacuous_K == (2 * t.eps_K >= c) == (R_K > R_edge)
        assert (t.n_nonvacuous_M > n) == t.vacuous_M
        assert (t.n_nonvacuous_K > n) == t.vacuous_K
    ra, rb = t.routes(2.0)
    assert rb.bound == pytest.approx(2.0 - 0.05 - 0.1 + 2 * (t.eps_M + t.eps_K))
    assert ra.bound == pytest.approx(2.0 - 0.05 - 0.1 + 2 * t.eps_M + t.hoeffding)


# ---------------------------------------------------------------------------------------------
# loss bound and Lipschitz bound against what they bound

def test_logits_and_losses_within_B_z_and_c_mlp(mlp):
    """For the mlp, |logits| <= B_z (B_h = sqrt(w) from norm control) and every loss on S is <= c, even with a large head."""
    model, x, y = mlp
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.head.weight.mul_(25.0)
        model.head.bias.add_(3.0)
    lb = loss_bound(model, x)
    with torch.no_grad():
        logits = model(x).double()
        losses = F.cross_entropy(logits, y, reduction="none")
    assert lb["B_h"] == math.sqrt(8) and not lb["B_h_measured"]
    assert lb["max_feature_norm"] <= lb["B_h"]
    assert logits.abs().max().item() <= lb["B_z"] and losses.max().item() <= lb["c"]
    for j in range(logits.shape[1]):
        assert logits[:, j].abs().max().item() <= lb["B_z_per_class"][j] + 1e-9


def test_loss_bound_resnet_uses_the_measured_feature_norm(resnet):
    """For the resnet, B_h is the measured max ||features|| on S (flagged) and |logits| <= B_z on S."""
    model, x, y = resnet
    lb = loss_bound(model, x)
    with torch.no_grad():
        feats, logits = model.features(x).double(), model(x).double()
    assert lb["B_h_measured"] and lb["B_h"] == pytest.approx(feats.norm(dim=1).max().item(), rel=1e-6)
    assert logits.abs().max().item() <= lb["B_z"] * (1 + 1e-6)
    assert lb["c"] == pytest.approx(math.log(5) + 2 * lb["B_z"])


def _max_ratio(model, xa, xb):
    with torch.no_grad():
        fa, fb = model.features(xa).double(), model.features(xb).double()
    return ((fa - fb).norm(dim=1) / (xa - xb).double().flatten(1).norm(dim=1)).max().item()


def test_lipschitz_product_bounds_measured_ratios_mlp(mlp):
    """For x, x' in S, ||features(x) - features(x')|| / ||x - x'|| never exceeds the product of the stage factors."""
    model, x, _ = mlp
    L = lipschitz_bound(model, x)["features"]
    g = torch.Generator().manual_seed(0)
    i, j = torch.randint(0, len(x), (2, 400), generator=g)
    keep = i != j
    near = _max_ratio(model, x[:16], x[64:80])                 # the pairs x, x + 1e-3 noise
    far = _max_ratio(model, x[i[keep]], x[j[keep]])
    assert 0 < near <= L and 0 < far <= L


def test_lipschitz_product_bounds_measured_ratios_resnet(resnet):
    """For the resnet (eval mode) the product of conv/BN/pool factors bounds the ratio on random and nearby pairs."""
    model, x, _ = resnet
    L = lipschitz_bound(model, x)["features"]
    g = torch.Generator().manual_seed(0)
    near = x + 1e-3 * torch.randn(x.shape, generator=g)
    perm = torch.randperm(len(x), generator=g)
    assert 0 < _max_ratio(model, x, near) <= L
    assert 0 < _max_ratio(model, x, x[perm]) <= L


def test_layernorm_lipschitz_factor_above_the_minimum_variance():
    """||N(v) - N(v')|| <= ||v - v'|| / sqrt(min(var v, var v') + eps) on every pair, and a tangential step attains it."""
    g = torch.Generator().manual_seed(0)
    w = 16

    def N(v):
        return F.layer_norm(v, (w,), eps=LN_EPS)

    v = torch.randn(500, w, generator=g, dtype=torch.float64)
    for other in (v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64),
                  5 * v + torch.randn(v.shape, generator=g, dtype=torch.float64),
                  torch.randn(v.shape, generator=g, dtype=torch.float64) * 0.05):
        var_min = torch.minimum(v.var(1, unbiased=False), other.var(1, unbiased=False))
        ratio = (N(v) - N(other)).norm(dim=1) / (v - other).norm(dim=1) * torch.sqrt(var_min + LN_EPS)
        assert ratio.max().item() <= 1 + 1e-9
    v0 = v[0] - v[0].mean()
    u = torch.randn(w, generator=g, dtype=torch.float64)
    u = u - u.mean()
    u = u - (u @ v0) / (v0 @ v0) * v0                          # orthogonal to v0 and to 1
    step = 1e-6 * u / u.norm()
    tight = (N(v0 + step) - N(v0)).norm() / step.norm() * torch.sqrt(v0.var(unbiased=False) + LN_EPS)
    assert tight.item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("stride, k", [(1, 3), (2, 3), (2, 1)])
def test_conv_norms_bound_the_unrolled_operator(stride, k):
    """The conv+BN operator-norm bound is above the true spectral norm and the unrolled Frobenius norm is exact."""
    torch.manual_seed(stride + k)
    conv = nn.Conv2d(3, 4, k, stride=stride, padding=k // 2, bias=False)
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.running_var.uniform_(0.5, 2.0)            # bias t = 0: beta = running_mean = 0
    shape = (1, 3, 6, 5)
    J = torch.autograd.functional.jacobian(lambda v: bn(conv(v.view(shape))).flatten(), torch.zeros(math.prod(shape)))
    c = ConvBN(conv, bn, shape[-2:])
    true_spec = torch.linalg.matrix_norm(J.double(), ord=2).item()
    assert true_spec <= c.spec * (1 + 1e-6)
    assert c.frob_unrolled == pytest.approx(J.double().norm().item(), rel=1e-5)
    assert c.out_positions * 4 == J.shape[0]


# ---------------------------------------------------------------------------------------------
# how the complexity terms move

@pytest.mark.parametrize("bound_name", ["grs", "bft"])
def test_head_scaling(mlp, bound_name):
    """Scaling the head (weights and bias) by 2 doubles GRS before the grid rounding exactly, and BFT
    without a reference never shrinks; the rounding multiplies R by a factor in [1, e]."""
    model, x, _ = mlp
    big = copy.deepcopy(model)
    with torch.no_grad():
        big.head.weight.mul_(2.0)
        big.head.bias.mul_(2.0)
    t1, t2 = complexity(model, x, bound=bound_name), complexity(big, x, bound=bound_name)
    r1, r2 = t1.inputs["R_unrounded"], t2.inputs["R_unrounded"]
    for t in (t1, t2):
        assert t.R == pytest.approx(t.grid_factor * t.inputs["R_unrounded"], rel=1e-12)
        assert 1.0 <= t.grid_factor <= math.e * (1 + 1e-12)
    if bound_name == "grs":
        assert r2 == pytest.approx(2 * r1, rel=1e-9)
    else:
        assert r2 >= r1


def test_grs_mlp_is_invariant_to_the_stem_scale(mlp):
    """Rescaling the mlp stem by 3 leaves GRS unchanged: the LayerNorm factor 1/sqrt(min var + eps) absorbs it."""
    model, x, _ = mlp
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.stem.weight.mul_(3.0)
        scaled.stem.bias.mul_(3.0)
    assert complexity(scaled, x).inputs["R_unrounded"] == pytest.approx(complexity(model, x).inputs["R_unrounded"],
                                                                         rel=1e-4)


def test_grs_scales_like_one_over_sqrt_n(mlp):
    """The GRS term at 4n is half the term at n (same budgets)."""
    model, x, _ = mlp
    t = complexity(model, x, bound="grs")
    assert t.at(4 * t.n) == pytest.approx(t.R / 2)
    assert complexity(model, x, bound="grs", n=4 * t.n).R == pytest.approx(t.R / 2)


def _expanded(mlp, position=1):
    model, x, y = mlp
    f_new, _ = insert_block(model, position, x, y, seed=5)
    return f_new, x


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_zero_new_block_has_zero_budget(arch, request):
    """At phi0 the new block's budget rho is 0, and BFT against f_new(phi0) is 0 (the class is one function)."""
    model, x, y = request.getfixturevalue(arch)
    f_new, _ = insert_block(model, 1, x, y, seed=5)
    t = complexity(f_new, x, bound="bft", reference=f_new, new_block_position=1)
    assert t.rho == 0.0 and t.R == 0.0
    assert complexity(f_new, x, bound="grs", reference=f_new, new_block_position=1).rho == 0.0


def test_bft_resnet_sees_the_live_bn2_parameters(resnet):
    """Moving the new resnet block's BN2 weight off zero gives rho > 0 and a positive BFT term against f_new(phi0)."""
    model, x, y = resnet
    f_new, _ = insert_block(model, 1, x, y, seed=5)
    moved = copy.deepcopy(f_new)
    with torch.no_grad():
        moved.blocks[1].bn2.weight.fill_(0.1)
    t = complexity(moved, x, bound="bft", reference=f_new, new_block_position=1)
    assert t.rho == pytest.approx(0.1 * math.sqrt(moved.blocks[1].bn2.weight.numel()))
    assert t.R > 0 and t.at(1e12) > 0
    names = {row["name"]: row for row in t.layers}
    assert names["blocks.1.conv2"]["dist21"] > 0 and names["blocks.0.conv2"]["dist21"] == 0.0


def test_bft_grows_with_the_distance_from_phi0(mlp):
    """Moving W2 of the new block by t D makes rho = t ||D|| and the BFT term increase with t (strictly
    where Dudley's bound is below its cap r_j: at large n; at n = |S| it may sit at the cap)."""
    f_new, x = _expanded(mlp)
    D = torch.randn(f_new.blocks[1].w2.weight.shape, generator=torch.Generator().manual_seed(0))
    at_n, at_large = [], []
    for t in (0.01, 0.02, 0.04, 0.08):
        moved = copy.deepcopy(f_new)
        with torch.no_grad():
            moved.blocks[1].w2.weight.add_(t * D)
        term = complexity(moved, x, bound="bft", reference=f_new, new_block_position=1)
        assert term.rho == pytest.approx(t * D.norm().item(), rel=1e-6)
        at_n.append(term.inputs["R_unrounded"])
        at_large.append(term.at(1e12) / term.grid_factor)
    assert all(b >= a for a, b in zip(at_n, at_n[1:])), at_n
    assert all(b > a for a, b in zip(at_large, at_large[1:])), at_large


def test_bft_n_nonvacuous_solves_with_the_log_factor(mlp):
    """With BFT's exact n-dependence (R_at), 2 eps(n*) = c at the returned n*."""
    f_new, x = _expanded(mlp)
    moved = copy.deepcopy(f_new)
    with torch.no_grad():
        moved.blocks[1].w2.weight.add_(0.05)
    term = complexity(moved, x, bound="bft", reference=f_new, new_block_position=1)
    c, d = loss_bound(moved, x)["c"], 0.05
    m = n_nonvacuous(term.R, c, term.n, d, R_at=term.at)
    assert math.isfinite(m)
    assert 2 * epsilon(term.at(m), c, m, d) == pytest.approx(c, rel=1e-6)


def test_reference_must_match_the_architecture(mlp):
    """A reference with a different number of blocks (e.g. f_old for f_new) is refused with a message."""
    model, x, _ = mlp
    f_new, _ = _expanded(mlp)
    with pytest.raises(ValueError, match="phi0"):
        complexity(f_new, x, bound="bft", reference=model)


def test_resnet_terms_are_finite_and_positive(resnet):
    """Both bounds give a finite positive value on the resnet and a table naming every stage."""
    model, x, _ = resnet
    for name in bounds.BOUNDS:
        t = complexity(model, x, bound=name)
        assert math.isfinite(t.R) and t.R > 0
        assert {row["name"] for row in t.layers} >= {"stem", "blocks.0", "pool", "head"}
