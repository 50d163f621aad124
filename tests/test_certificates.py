"""Certificates that can certify (theory.md 8b): calibration on nulls, power where the difference
is real, the kl inverse against closed forms, the PAC-Bayes bound against fresh data, and one
norm-based value recomputed from the weights without resx's norm code."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resx.core.data import Split, teacher_sampler
from resx.core.models import LN_EPS, MLP, insert_block
from resx.theory.bounds import complexity, loss_bound, route_a, route_b
from resx.theory.certificates import _eb, certificate_from_losses, eb_upper, holdout, m_to_certify, sample_losses
from resx.theory.pacbayes import kl_bernoulli, kl_inverse_upper, pac_bayes_block

DRAWS = 200
DELTA = 0.05
ALLOWED = DELTA + 2 * math.sqrt(DELTA * (1 - DELTA) / DRAWS)     # delta plus 2 standard errors of 200 draws


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
    "L(f_b) < L(f_a)" certifies in at most delta + 2 SE of 200 draws; the true statement
    "L(f_a) < L(f_b)" does certify on a large sample (the test can fire)."""
    f_a, f_b = models
    pop = _teacher(1 << 16, 5)
    la, lb = sample_losses(f_a, pop), sample_losses(f_b, pop)
    D = lb - la
    assert D.mean() > 5 * D.std() / math.sqrt(len(D))          # the null is unfavourable, measured
    c = (loss_bound(f_a, pop.x[:64], "mlp")["c"], loss_bound(f_b, pop.x[:64], "mlp")["c"])
    m = 256
    draws = _teacher(DRAWS * m, 6)
    la_d, lb_d = sample_losses(f_a, draws).view(DRAWS, m), sample_losses(f_b, draws).view(DRAWS, m)
    flags = [certificate_from_losses(a, b, DELTA, c).certified for a, b in zip(la_d, lb_d)]
    assert _rate(flags) <= ALLOWED
    true = certificate_from_losses(lb, la, DELTA, (c[1], c[0]), "L(f_a) < L(f_b)")
    assert true.certified and true.ucb < 0 < true.hi and true.m_to_certify <= len(lb)
    direct = holdout(f_b, f_a, pop, DELTA, (c[1], c[0]))           # the model-level entry point agrees
    assert direct.ucb == pytest.approx(true.ucb, rel=1e-9)


def test_holdout_calibrated_on_a_skewed_mean_zero_difference_where_a_normal_bound_fails():
    """D = +1 w.p. 0.05 and -1/19 otherwise (mean 0, inside [-1, 1]), m = 30: the empirical Bernstein
    bound certifies "mean < 0" in at most delta + 2 SE of 200 draws; a normal-approximation bound
    (mean + 1.645 se) on the same draws fires more often than that, so the test has teeth."""
    g = np.random.default_rng(0)
    m = 30
    D = np.where(g.random((DRAWS, m)) < 0.05, 1.0, -1.0 / 19.0)
    ours = [eb_upper(d, DELTA, -1.0, 1.0) < 0 for d in D]
    normal = [d.mean() + 1.645 * d.std(ddof=1) / math.sqrt(m) < 0 for d in D]
    assert _rate(ours) <= ALLOWED
    assert _rate(normal) > ALLOWED


def test_holdout_calibrated_on_a_uniform_mean_zero_difference_and_certifies_a_shift():
    """Uniform on [-1, 1] (mean 0): at most delta + 2 SE of 200 draws certify; shifted to mean -0.1
    the bound certifies at m = 2000 in nearly every draw."""
    g = np.random.default_rng(1)
    D = g.uniform(-1, 1, (DRAWS, 2000))
    assert _rate([eb_upper(d, DELTA, -1.0, 1.0) < 0 for d in D]) <= ALLOWED
    shifted = np.clip(D - 0.1, -1.0, 1.0)
    assert _rate([eb_upper(d, DELTA, -1.0, 1.0) < 0 for d in shifted]) > 0.9


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
