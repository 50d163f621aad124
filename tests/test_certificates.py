"""Certificates that can certify (theory.md 8b): exact values against the published formulas
computed by hand on fixed arrays (empirical Bernstein, the kl inverse against a root finder, the
PAC-Bayes right-hand side), the noisy linear layer's moments against explicit weight draws,
calibration on nulls with limits that catch a test 1.5x too liberal, power where the difference
is real, the one clip level of the resnet hold-out, and one norm-based value recomputed from the
weights without resx's norm code."""
import math
import statistics
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resx.core.data import Split, teacher_sampler
from resx.core.models import LN_EPS, MLP, insert_block
from resx.theory.bounds import complexity, loss_bound, route_a, route_b
from resx.theory.certificates import (_eb, certificate_from_losses, clip_level, eb_upper, holdout, m_to_certify,
                                      sample_losses)
from resx.theory.pacbayes import _noisy_linear, kl_bernoulli, kl_inverse_upper, pac_bayes_block, smoothed_loss

DRAWS = 200
DELTA = 0.05
ALLOWED = DELTA + 2 * math.sqrt(DELTA * (1 - DELTA) / DRAWS)     # delta plus 2 standard errors of 200 draws
NULL_DRAWS = 20_000                                               # where a draw is cheap (arrays)
TIGHT = DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / NULL_DRAWS)   # 0.0546: a test at 1.5 delta = 0.075 fails it


def _limit(draws):
    """delta + 3 standard errors of `draws` Bernoulli(delta) draws: below 1.5 delta for draws >= 1600."""
    return DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / draws)


def _teacher(n, seed, d=8):
    return Split(*teacher_sampler(d, 1.0)(n, torch.Generator().manual_seed(seed)))


def _fit(model, S, steps=60, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(S.x), S.y).backward()
        opt.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def models():
    """f_a fit a little on a teacher task; f_b a perturbation of it whose population risk is higher."""
    torch.manual_seed(0)
    f_a = _fit(MLP(8, 16, 1, 10), _teacher(512, 1))
    f_b = MLP(8, 16, 1, 10)
    f_b.load_state_dict(f_a.state_dict())
    with torch.no_grad():
        f_b.head.weight.add_(0.15 * torch.randn(f_b.head.weight.shape, generator=torch.Generator().manual_seed(2)))
    f_b.eval()
    return f_a, f_b


def _rate(flags):
    return float(np.mean(flags))


# ---------------------------------------------------------------------------------------------
# hold-out paired certificate: calibration and power

def test_holdout_never_certifies_a_model_against_itself(models):
    """f_b = f_a: D = 0 on every point, so no draw of 200 may certify L(f_a) < L(f_a)."""
    f_a, _ = models
    c = loss_bound(f_a, _teacher(64, 3).x, "mlp")["c"]
    big = _teacher(DRAWS * 64, 4)
    losses = sample_losses(f_a, big).view(DRAWS, 64)
    flags = [certificate_from_losses(l, l, DELTA, c).certified for l in losses]
    assert _rate(flags) <= ALLOWED and not any(flags)


def test_holdout_calibrated_on_a_worse_perturbation_and_powerful_the_other_way(models):
    """f_b has a higher population risk (measured on 2^16 fresh points, many standard errors):
    "L(f_b) < L(f_a)" certifies in at most delta + 3 SE of 4000 draws (0.060 < 1.5 delta); the true statement
    "L(f_a) < L(f_b)" does certify on a large sample (the test can fire)."""
    f_a, f_b = models
    pop = _teacher(1 << 16, 5)
    la, lb = sample_losses(f_a, pop), sample_losses(f_b, pop)
    D = lb - la
    assert D.mean() > 5 * D.std() / math.sqrt(len(D))          # the null is unfavourable, measured
    c = (loss_bound(f_a, pop.x[:64], "mlp")["c"], loss_bound(f_b, pop.x[:64], "mlp")["c"])
    m, draws_n = 128, 4000
    draws = _teacher(draws_n * m, 6)
    la_d, lb_d = sample_losses(f_a, draws).view(draws_n, m), sample_losses(f_b, draws).view(draws_n, m)
    flags = [certificate_from_losses(a, b, DELTA, c).certified for a, b in zip(la_d, lb_d)]
    assert _rate(flags) <= _limit(draws_n)
    true = certificate_from_losses(lb, la, DELTA, (c[1], c[0]), "L(f_a) < L(f_b)")
    assert true.certified and true.ucb < 0 < true.hi and true.m_to_certify <= len(lb)
    direct = holdout(f_b, f_a, pop, DELTA, (c[1], c[0]))           # the model-level entry point agrees
    assert direct.ucb == pytest.approx(true.ucb, rel=1e-9)


def _z_ucb(D, delta):
    """A normal-approximation upper bound, mean + z_{1-delta} se, row by row (the liberal comparison)."""
    z = statistics.NormalDist().inv_cdf(1 - delta)
    return D.mean(1) + z * D.std(1, ddof=1) / math.sqrt(D.shape[1])


def test_holdout_calibrated_on_a_skewed_mean_zero_difference_where_a_normal_bound_fails():
    """D = +1 w.p. p = 0.015 and -p/(1-p) otherwise (mean 0, a-priori range [-p/(1-p), 1]), m = 100:
    in 22% of draws no +1 appears, the sample variance is 0 and only the range term 7 R ln(2/delta) /
    (3 (m - 1)) = 0.088 keeps the bound above the mean -0.015. The empirical Bernstein bound
    certifies "mean < 0" in at most the tight limit of 20,000 draws; a normal-approximation bound
    fires in about 22%, and so would the range term with 1/3 in place of 7/3 (0.013 < 0.015): the
    test can fail. Shifted to mean -0.02 at m = 5000 the same shape certifies in nearly every draw."""
    g = np.random.default_rng(0)
    p, m = 0.015, 100
    q = p / (1 - p)
    D = np.where(g.random((NULL_DRAWS, m)) < p, 1.0, -q)
    ours = [eb_upper(d, DELTA, -q, 1.0) < 0 for d in D]
    assert _rate(ours) <= TIGHT
    assert np.mean(_z_ucb(D, DELTA) < 0) > 3 * TIGHT
    shifted = np.where(g.random((50, 5000)) < p, 1.0, -q) - 0.02
    assert _rate([eb_upper(d, DELTA, -q - 0.02, 1.0) < 0 for d in shifted]) > 0.9


def test_holdout_calibrated_on_a_uniform_mean_zero_difference_and_certifies_a_shift():
    """Uniform on [-1, 1] (mean 0), m = 200: at most the tight limit of 20,000 draws certify, a limit
    that a normal bound at level 1.5 delta on the same draws exceeds (so a test 1.5x too liberal
    fails it); shifted to mean -0.1 the bound certifies at m = 2000 in nearly every draw."""
    g = np.random.default_rng(1)
    D = g.uniform(-1, 1, (NULL_DRAWS, 200))
    assert _rate([eb_upper(d, DELTA, -1.0, 1.0) < 0 for d in D]) <= TIGHT
    assert np.mean(_z_ucb(D, 1.5 * DELTA) < 0) > TIGHT          # 1.5x too liberal: caught
    shifted = np.clip(g.uniform(-1, 1, (100, 2000)) - 0.1, -1.0, 1.0)
    assert _rate([eb_upper(d, DELTA, -1.0, 1.0) < 0 for d in shifted]) > 0.9


# ---------------------------------------------------------------------------------------------
# exact values against the published formulas, computed by hand

def _maurer_pontil_by_hand(D, lo, hi, delta):
    """Maurer and Pontil 2009, Theorem 4, as published, for X_i in [0, 1]: with probability >= 1 - delta
    E X <= mean(X) + sqrt(2 V_n ln(2/delta) / n) + 7 ln(2/delta) / (3 (n - 1)), V_n the sample variance
    with 1/(n - 1). Applied to X = (D - lo)/(hi - lo) in exact rationals, then mapped back."""
    R = Fraction(hi) - Fraction(lo)
    X = [(Fraction(d) - Fraction(lo)) / R for d in D]
    n = len(X)
    mean = sum(X) / n
    V = sum((x - mean) ** 2 for x in X) / (n - 1)
    L = math.log(2 / delta)
    return float(lo) + float(R) * (float(mean) + math.sqrt(2 * float(V) * L / n) + 7 * L / (3 * (n - 1)))


@pytest.mark.parametrize("D, lo, hi, delta, published", [
    # eight differences on [-1/2, 1/2]: X has mean 19/32 and V_n = 29/640 (exact)
    ([Fraction(3, 10), Fraction(-1, 10), Fraction(1, 4), 0, Fraction(-1, 5), Fraction(3, 20), Fraction(2, 5),
      Fraction(-1, 20)], -0.5, 0.5, 0.05, 1.527797832822043473),
    # 1000 differences (37 i mod 101)/101 - 0.52 on [-1, 1] at delta = 0.01 (value from 30-digit arithmetic)
    ([Fraction((37 * i) % 101, 101) - Fraction(52, 100) for i in range(1000)], -1.0, 1.0, 0.01, 0.029653639176764881871),
])
def test_empirical_bernstein_equals_maurer_pontil_theorem_4_by_hand(D, lo, hi, delta, published):
    """eb_upper on fixed arrays equals Theorem 4 computed by hand (and the 30-digit value): the
    variance factor 2, the range constant 7/3, ln(2/delta) and n - 1 each change it by far more than
    the tolerance. certificate_from_losses on the same differences (as l_b - l_a) agrees."""
    ours = eb_upper(np.array([float(d) for d in D]), delta, lo, hi)
    assert ours == pytest.approx(_maurer_pontil_by_hand(D, lo, hi, delta), rel=1e-12, abs=1e-14)
    assert ours == pytest.approx(published, rel=1e-12)
    if lo == -hi:   # losses with these differences inside [0, c]: l_a = max(-D, 0), l_b = max(D, 0)
        c = hi
        d = torch.tensor([float(v) for v in D], dtype=torch.float64)
        l_a, l_b = (-d).clamp(min=0), d.clamp(min=0)
        cert = certificate_from_losses(l_a, l_b, delta, c)
        assert (cert.lo, cert.hi) == (-c, c) and cert.ucb == pytest.approx(published, rel=1e-12)


def _kl_scipy(q, p):
    from scipy.special import rel_entr
    return float(rel_entr(q, p) + rel_entr(1 - q, 1 - p))


@pytest.mark.parametrize("q, eps, known", [(0.1, 0.05, 0.2200786), (0.3, 0.01, 0.3671623), (0.0, 0.2, 0.1812692),
                                           (0.02, 0.3, None), (0.5, 1e-4, None), (0.9, 0.5, None), (0.001, 2.0, None)])
def test_kl_inverse_matches_a_root_finder(q, eps, known):
    """kl^-1(q, eps) = the p in [q, 1) with kl(q || p) = eps, found by scipy.optimize.brentq on
    scipy's relative entropy (independent of resx's kl): within 1e-12, never below it, and the
    review's values to 7 digits."""
    from scipy.optimize import brentq
    root = brentq(lambda p: _kl_scipy(q, p) - eps, q + 1e-15, 1 - 1e-15, xtol=1e-15, rtol=1e-15)
    ours = kl_inverse_upper(q, eps)
    assert root - 1e-15 <= ours <= root + 1e-12
    if known is not None:
        assert ours == pytest.approx(known, abs=5e-8)


def test_pac_bayes_bound_is_maurer_2004_with_the_sigma_union_computed_by_hand():
    """Each sigma's bound equals, with brentq inverses of scipy's kl (C = log(K/alpha), k sigmas,
    N = passes x n_b Monte Carlo terms):
        p_emp = kl^-1(L_mc / C, ln(2k/delta) / N),
        bound = C kl^-1(p_emp, (KL + ln(2 sqrt(n_b) / (delta/(2k)))) / n_b)   (Maurer 2004, Thm 5),
    and the reported bound is the smallest over the grid. Dropping ln(2 sqrt(n)/delta), or the union
    over sigma (delta in place of delta/(2k)), changes every value by more than the tolerance."""
    from scipy.optimize import brentq

    def kl_inv(qq, e):
        return brentq(lambda p: _kl_scipy(qq, p) - e, qq + 1e-15, 1 - 1e-15, xtol=1e-15, rtol=1e-15)

    torch.manual_seed(3)
    old = _fit(MLP(8, 16, 1, 10), _teacher(150, 11), steps=40)
    S_b = _teacher(120, 12)
    new, _ = insert_block(old, 1, S_b.x[:8], S_b.y[:8], seed=0)
    sigmas, passes = (0.004, 0.016, 0.064), 4
    r = pac_bayes_block(new, 1, S_b, DELTA, sigmas=sigmas, steps=10, batch=120, mc_passes=passes, seed=0)
    C, n_b, k = math.log(10 / 0.1), len(S_b), len(sigmas)
    assert r["loss_range"] == pytest.approx(C) and r["n_b"] == n_b and r["mc_terms"] == passes * n_b
    for row in r["grid"]:
        p_emp = kl_inv(row["L_mc"] / C, math.log(2 * k / DELTA) / (passes * n_b))
        rhs = (row["kl"] + math.log(2 * math.sqrt(n_b) / (DELTA / (2 * k)))) / n_b
        assert row["L_emp_upper"] == pytest.approx(C * p_emp, rel=1e-9)
        assert row["bound"] == pytest.approx(C * kl_inv(p_emp, rhs), rel=1e-9)
    assert r["bound"] == min(row["bound"] for row in r["grid"])


def test_noisy_linear_layer_moments_match_explicit_weight_draws():
    """_noisy_linear draws W x + b for W ~ N(W0, sigma^2 I), b ~ N(b0, sigma^2 I), one draw per row.
    Against explicit weight draws (W0 + sigma E) x + b0 + sigma e on the same inputs: per (row,
    output) means agree within 4 standard errors, variances within 4 of theirs (their difference),
    outputs of one row uncorrelated, and each row's variance is sigma^2 (||x||^2 + 1)."""
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -1.0, 2.0]], dtype=torch.float64)
    W0 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    b0 = torch.randn(2, generator=g, dtype=torch.float64)
    sigma, reps = 0.3, 40_000
    ours = _noisy_linear(x.repeat(reps, 1), W0, b0, sigma, g).view(reps, 3, 2)
    E = torch.randn(reps, 3, 2, 4, generator=g, dtype=torch.float64)     # a weight draw per (rep, row)
    e = torch.randn(reps, 3, 2, generator=g, dtype=torch.float64)
    explicit = torch.einsum("rioj,ij->rio", W0 + sigma * E, x) + b0 + sigma * e
    for a, b in ((ours, explicit),):
        mean_se = torch.sqrt(a.var(0) / reps + b.var(0) / reps)
        assert ((a.mean(0) - b.mean(0)).abs() < 4 * mean_se).all()
        var_se = torch.sqrt(((a - a.mean(0)) ** 2).var(0) / reps + ((b - b.mean(0)) ** 2).var(0) / reps)
        assert ((a.var(0) - b.var(0)).abs() < 4 * var_se).all()
        corr = ((a[..., 0] - a[..., 0].mean(0)) * (a[..., 1] - a[..., 1].mean(0))).mean(0) / a.std(0).prod(-1)
        assert (corr.abs() < 4 / math.sqrt(reps)).all()
    theory = sigma ** 2 * ((x ** 2).sum(1) + 1)
    assert torch.allclose(explicit.var(0).mean(1), theory, rtol=0.03)


def test_smoothed_loss_stays_inside_its_range_in_float32():
    """A confident wrong prediction in float32 reaches C = log(K/alpha) but not above (it overshot
    by 6e-8 before), and a confident right one is >= 0."""
    z = torch.zeros(2, 10)
    z[0, 1], z[1, 0] = 60.0, 60.0
    loss = smoothed_loss(z, torch.tensor([0, 0]))
    assert loss.dtype == torch.float32
    assert 0.0 <= loss.min().item() and loss.max().item() <= math.log(10 / 0.1)
    assert loss[0].item() == pytest.approx(math.log(10 / 0.1), rel=1e-6)


def test_m_to_certify_is_where_the_bound_crosses_zero():
    """At the returned m the bound with the observed mean and variance is below 0, and at m - 1 it is not."""
    for mean, var, R in ((-0.0044, 0.072 ** 2, 32.0), (-0.05, 0.3, 2.0), (-1e-4, 1e-6, 1.0)):
        m = m_to_certify(mean, var, 0.05 / 3, R)
        assert _eb(mean, var, m, 0.05 / 3, R) < 0 <= _eb(mean, var, m - 1, 0.05 / 3, R)
    assert m_to_certify(0.001, 0.1, 0.05, 2.0) is None and m_to_certify(0.0, 0.0, 0.05, 2.0) is None


def test_a_range_that_does_not_hold_is_an_error():
    with pytest.raises(ValueError, match="outside the a-priori range"):
        eb_upper(np.array([0.5, 2.5]), 0.05, -1.0, 1.0)
    with pytest.raises(ValueError, match="delta"):
        eb_upper(np.array([0.5, 0.2]), 1.5, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# kl inverse and the PAC-Bayes route

@pytest.mark.parametrize("eps", [1e-4, 0.01, 0.3, 2.0])
def test_kl_inverse_against_closed_forms(eps):
    """kl(0 || p) = -ln(1 - p), so kl^-1(0, eps) = 1 - exp(-eps); elsewhere kl(q || kl^-1) = eps,
    the answer lies between q and Pinsker's q + sqrt(eps/2), and never below the true inverse."""
    assert kl_inverse_upper(0.0, eps) == pytest.approx(1 - math.exp(-eps), rel=1e-9)
    for q in (0.05, 0.3, 0.7):
        p = kl_inverse_upper(q, eps)
        assert q <= p <= min(1.0, q + math.sqrt(eps / 2)) + 1e-12
        if p < 1.0:
            assert kl_bernoulli(q, p) == pytest.approx(eps, rel=1e-6) and kl_bernoulli(q, p) >= eps


def test_pac_bayes_bound_holds_on_seeded_draws():
    """On a small teacher task, theta_old fit on S_a, the block's posterior trained on S_b: the bound
    is below the posterior's risk on 2^14 fresh points in at most delta + 2 SE of the draws. The
    posterior's own empirical risk on S_b (no penalty) is exceeded far more often: the check can fail."""
    draws, violations, naive = 16, 0, 0
    for seed in range(draws):
        torch.manual_seed(100 + seed)
        old = _fit(MLP(8, 16, 1, 10), _teacher(150, 1000 + seed), steps=40)
        S_b = _teacher(150, 2000 + seed)
        new, _ = insert_block(old, 1, S_b.x[:8], S_b.y[:8], seed=seed)
        r = pac_bayes_block(new, 1, S_b, DELTA, sigmas=(0.004, 0.016, 0.064), steps=15, batch=150, mc_passes=4,
                            seed=seed, population=_teacher(1 << 14, 3000 + seed))
        violations += r["L_pop_Q_smoothed"] > r["bound"]
        naive += r["L_pop_Q_smoothed"] > r["L_Sb_mc"]
        assert r["bound"] <= r["loss_range"] and r["valid"]
    allowed = DELTA + 2 * math.sqrt(DELTA * (1 - DELTA) / draws)
    assert violations / draws <= allowed
    assert naive / draws > allowed


# ---------------------------------------------------------------------------------------------
# the norm-based terms: one value from the weights alone, and the verdict gate

def test_grs_value_recomputed_from_the_weights_with_numpy(models):
    """GRS for an mlp with one block, from the state dict with numpy only (THEORY.md 7's formula):
    R = 2 x_rms (sqrt(2 ln2 d) + 1) g_stem g_block sum_j ||[w_j b_j]|| / sqrt(n), d = 1 + 3 peels,
    g_stem = ||[W b]||_2 / sqrt(v0 + eps), g_block = (1 + ||[W2 b2]||_2 ||[W1 b1]||_F) / sqrt(v1 + eps),
    v the smallest pre-norm variance over S, x_rms^2 = mean ||x||^2 + 1. Then the grid rounding."""
    f_a, _ = models
    S = _teacher(300, 7)
    sd = {k: v.detach().double().numpy() for k, v in f_a.state_dict().items()}
    x = S.x.double().numpy()

    def aug(prefix):
        return np.concatenate([sd[prefix + ".weight"], sd[prefix + ".bias"][:, None]], 1)

    def ln(v):
        mu, var = v.mean(1, keepdims=True), v.var(1, keepdims=True)
        return (v - mu) / np.sqrt(var + LN_EPS), var.min()

    v0 = x @ sd["stem.weight"].T + sd["stem.bias"]
    h, var0 = ln(v0)
    a = np.maximum(h @ sd["blocks.0.w1.weight"].T + sd["blocks.0.w1.bias"], 0)
    _, var1 = ln(h + a @ sd["blocks.0.w2.weight"].T + sd["blocks.0.w2.bias"])
    g_stem = np.linalg.norm(aug("stem"), 2) / math.sqrt(var0 + LN_EPS)
    g_block = (1 + np.linalg.norm(aug("blocks.0.w2"), 2) * np.linalg.norm(aug("blocks.0.w1"))) / math.sqrt(var1 + LN_EPS)
    head = np.linalg.norm(aug("head"), axis=1).sum()
    x_rms = math.sqrt((x ** 2).sum(1).mean() + 1)
    expected = 2 * x_rms * (math.sqrt(2 * math.log(2) * 4) + 1) * g_stem * g_block * head / math.sqrt(len(x))
    term = complexity(f_a, S.x, bound="grs")
    assert term.inputs["R_unrounded"] == pytest.approx(expected, rel=1e-6)
    assert expected <= term.R <= math.e * expected
    assert term.heuristic and not term.valid


def test_a_route_certifies_only_from_a_valid_bound():
    """gain > cost gives "strict" when every step is a theorem, and "not_certified" (with the
    arithmetic kept) when any step is a heuristic."""
    for route in (route_a, route_b):
        ok = route(2.0, 0.5, 0.5, 0.1, 0.1)
        flagged = route(2.0, 0.5, 0.5, 0.1, 0.1, heuristic=("a peel that is not a theorem",))
        assert ok.verdict == "strict" and ok.valid
        assert flagged.verdict == "not_certified" and flagged.arithmetic_verdict == "strict" and not flagged.valid
        assert flagged.bound == ok.bound


# ---------------------------------------------------------------------------------------------
# the hold-out's clip level and the levels of a real run

def test_clip_level_is_one_level_where_c_was_measured_and_none_for_a_true_sup():
    """Measured ranges (resnet): every pair is clipped at c* = the largest c, D in [-c*, c*], and the
    statement is about L_{c*}; true sups (mlp): each model's own c and the loss itself."""
    measured = clip_level({"old": {"c": 5.0, "B_h_measured": True}, "new": {"c": 7.5, "B_h_measured": True},
                           "f_J": {"c": 6.0, "B_h_measured": True}})
    assert measured.clip == 7.5 and measured.range("old", "f_J") == (7.5, 7.5)
    assert measured.statement("L(f_J) < L(f_old)") == "L_{c*}(f_J) < L_{c*}(f_old)" and "7.5" in measured.loss
    exact = clip_level({"old": {"c": 5.0, "B_h_measured": False}, "f_J": {"c": 6.0, "B_h_measured": False}})
    assert exact.clip is None and exact.range("old", "f_J") == (5.0, 6.0)
    assert exact.statement("L(f_J) < L(f_old)") == "L(f_J) < L(f_old)"


@pytest.fixture(scope="module")
def tiny_runs():
    """One tiny pipeline run of each architecture (seconds on a CPU)."""
    from resx.core.config import RunConfig
    from resx.runs.pipeline import run_pipeline
    common = dict(depth=1, width=2, position=0, n=64, n_probe=32, n_test=96, n_pop=256, m_cert=1024,
                  optimizer="sgd", lr=0.05, batch_size=32, epochs=1, finetune_epochs=1, device="cpu")
    return {arch: run_pipeline(RunConfig(dataset=ds, arch=arch, **common))
            for arch, ds in (("resnet", "shapes"), ("mlp", "teacher"))}


def test_every_resnet_pair_has_one_clip_level_and_says_which_loss(tiny_runs):
    """resnet: hi == -lo == c* (the largest of the models' c) on every pair, each statement and loss
    names L_{c*}; mlp: lo = -c_a, hi = c_b from each model's own c, the loss itself, nothing clipped."""
    hold = tiny_runs["resnet"]["certificates"]["holdout"]
    c_star = max(hold["loss_range"].values())
    assert hold["clip_level"] == c_star
    for p in hold["pairs"]:
        assert p["hi"] == -p["lo"] == c_star == p["clip"]
        assert p["statement"].startswith("L_{c*}(") and "clipped at c*" in p["loss"]
    hold = tiny_runs["mlp"]["certificates"]["holdout"]
    assert hold["clip_level"] is None
    for p in hold["pairs"]:
        assert (p["lo"], p["hi"]) == (-hold["loss_range"][p["a"]], hold["loss_range"][p["b"]])
        assert p["statement"].startswith("L(") and p["clip"] is None and p["clipped_a"] == p["clipped_b"] == 0
        assert p["delta"] == pytest.approx(hold["delta"] / 3) and p["guarantee"] == "finite-sample"


def test_a_run_states_every_level_and_they_add_up(tiny_runs):
    """Routes: three events at delta/3 (the Delta_R lower bound is empirical Bernstein, finite-sample);
    hold-out: delta/3 per pair; the descent tests say they are asymptotic; the cell's best_observed is
    the Bonferroni-corrected descent pick."""
    from resx.figures.cells import cell_from_result
    from resx.scale.sweep import summarize
    for r in tiny_runs.values():
        d = r["config"]["delta"]
        t = r["terms"]
        assert t["delta_each"] == pytest.approx(d / 3) and "empirical Bernstein" in t["Delta_R_source"]
        for key in ("A", "B"):
            assert "delta/3" in r["routes"][key]["level"] and r["routes"][key]["guarantee"] == "finite-sample"
        assert all("asymptotic" in m["descent_bound"] for m in r["margins"])
        best = r["descent_best_position"]
        assert best["delta_each"] == pytest.approx(d / best["positions"]) and "asymptotic" in best["bound"]
        for cell in (cell_from_result(r), summarize(r)):
            assert cell["best_position"] == best["position"] and cell["best_observed"] == best["observable"]
