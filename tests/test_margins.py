"""Descent margins (theory.md sections 3-4): closed forms, finite differences, estimator statistics."""
import math

import pytest
import torch
import torch.nn.functional as F

import resx.theory.margins as margins
import resx.core.models as models
from resx.core.data import Split
from resx.theory.jumpboard import finite_difference_check
from resx.theory.margins import (FactoredGrads, block_gradients, block_gradients_reference, cross_fit,
                          descent_margins, naive_sq_norm, population_margins,
                          u_statistic)
from resx.core.models import MLP, LN_EPS, ResNet, activations_at, candidate_block, insert_block

D, K = 8, 4   # teacher task of the statistical tests: inputs in R^8, 4 classes


def teacher(n: int, generator: torch.Generator) -> Split:
    """x ~ N(0, I_D), y ~ softmax(W x) for a fixed random linear teacher W (K, D)."""
    W = torch.randn(K, D, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(n, D, generator=generator)
    y = torch.multinomial(torch.softmax(x @ W.T, 1), 1, generator=generator).squeeze(1)
    return Split(x, y)


def trained_mlp(steps: int, n: int = 2000, seed: int = 0) -> MLP:
    """MLP(width 16, depth 3) after `steps` full-batch Adam steps on a teacher sample, eval mode."""
    torch.manual_seed(seed)
    model = MLP(D, 16, 3, K)
    S = teacher(n, torch.Generator().manual_seed(seed + 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(S.x), S.y).backward()
        opt.step()
    return model.eval()


def small_model(arch: str):
    """A float64 model with data: mlp (width 16, depth 3) or resnet (width 4, depth 1, 8x8 images),
    BN statistics calibrated on x so eval mode is a realistic state."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if arch == "mlp":
        model, x = MLP(D, 16, 3, K), torch.randn(64, D, generator=g)
    else:
        model, x = ResNet(3, 4, 1, K), torch.randn(48, 3, 8, 8, generator=g)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        with torch.no_grad():
            model.train()(x)
    y = torch.randint(0, K, (len(x),), generator=g)
    return model.double().eval(), x.double(), y


def _all_candidates(model, x):
    return {k: candidate_block(model, k, x, seed=0) for k in range(len(model.blocks) + 1)}


# ---------------------------------------------------------------------------------------------
# closed form against autograd

@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_one_pass_closed_form_equals_one_at_a_time_autograd(arch):
    """At every position the one-pass closed form equals torch.func per-sample gradients of the inserted block (resnet to 1e-10; mlp to a few times the LayerNorm-epsilon perturbation r_k)."""
    model, x, y = small_model(arch)
    candidates = _all_candidates(model, x)
    one_pass = block_gradients(model, x, y, None, candidates, batch_size=20)   # several chunks
    for k, block in candidates.items():
        ref = block_gradients_reference(model, x, y, k, block)
        got = one_pass[k].flat()
        assert got.shape == ref.shape
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        if arch == "resnet":
            assert err < 1e-10, (k, err)
        else:
            # the inserted N moves the downstream input h_k by the factor 1/sqrt(var(h_k) + eps)
            h = activations_at(model, x, k)
            r = (1 / torch.sqrt(h.var(-1, unbiased=False) + LN_EPS) - 1).abs().max().item()
            assert err < 5 * r + 1e-12, (k, err, r)
            assert err < 1e-5, (k, err)


def test_mlp_closed_form_is_exact_without_layernorm_epsilon(monkeypatch):
    """With LayerNorm eps = 0 a zero mlp block is the identity on normalized h, and the closed form matches autograd to 1e-10."""
    monkeypatch.setattr(models, "LN_EPS", 0.0)
    monkeypatch.setattr(margins, "LN_EPS", 0.0)
    model, x, y = small_model("mlp")
    candidates = _all_candidates(model, x)
    one_pass = block_gradients(model, x, y, None, candidates)
    for k, block in candidates.items():
        ref = block_gradients_reference(model, x, y, k, block)
        assert ((one_pass[k].flat() - ref).abs().max() / ref.abs().max()).item() < 1e-10


def test_factored_statistics_equal_those_of_the_materialised_matrix():
    """mean, squared norms and dots from the mlp factors (delta, a) equal those of the explicit (n, p) gradients."""
    g = torch.Generator().manual_seed(0)
    q = FactoredGrads(torch.randn(30, 5, generator=g, dtype=torch.float64),
                      torch.randn(30, 5, generator=g, dtype=torch.float64))
    dense = q.flat()
    G = dense.mean(0)
    torch.testing.assert_close(q.mean(), G)
    torch.testing.assert_close(q.sq_norms(), (dense ** 2).sum(1))
    torch.testing.assert_close(q.dots(G), dense @ G)
    n = len(dense)
    U = (n ** 2 * G.dot(G) - (dense ** 2).sum()) / (n * (n - 1))
    assert u_statistic(q).value == pytest.approx(U.item(), rel=1e-10)
    assert u_statistic(dense).value == pytest.approx(U.item(), rel=1e-10)
    a = cross_fit(q, torch.Generator().manual_seed(3))
    b = cross_fit(dense, torch.Generator().manual_seed(3))
    assert a.value == pytest.approx(b.value, rel=1e-10) and a.stderr == pytest.approx(b.stderr, rel=1e-10)


@pytest.mark.parametrize("chunk_dtype", [torch.float64, torch.float32])
def test_streamed_population_margin_equals_the_in_memory_u_statistic(monkeypatch, chunk_dtype):
    """The streamed U on a large sample gives the same value and stderr as u_statistic on the stored
    gradients (chunk sums in float64); with the default float32 chunk sums the value's rounding is
    under 1e-3 of its se."""
    monkeypatch.setattr(margins, "CHUNK_DTYPE", chunk_dtype)
    model = trained_mlp(20)
    S = teacher(4000, torch.Generator().manual_seed(9))
    candidates = _all_candidates(model, S.x)
    stored = block_gradients(model, S.x, S.y, None, candidates)
    exact = chunk_dtype == torch.float64

    def agrees(got, u):
        if exact:
            assert got.value == pytest.approx(u.value, rel=1e-8)
        else:
            assert abs(got.value - u.value) < 1e-3 * u.stderr
        assert got.stderr == pytest.approx(u.stderr, rel=1e-6)

    streamed = population_margins(model, S, list(candidates), candidates, batch_size=512)
    for k in candidates:
        agrees(streamed[k], u_statistic(stored[k]))
    capped = population_margins(model, S, list(candidates), candidates, batch_size=512, points=1000)
    for k in candidates:  # only the first `points` of the sample: U of those stored gradients
        assert capped[k].n == 1000
        agrees(capped[k], u_statistic(stored[k].subset(torch.arange(1000))))


# ---------------------------------------------------------------------------------------------
# label distributions: the gradient averaged over the label noise (Rao-Blackwell)

def teacher_with_p(n: int, generator: torch.Generator) -> Split:
    """teacher(), with p = softmax(W x), the distribution each label was drawn from."""
    W = torch.randn(K, D, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(n, D, generator=generator)
    p = torch.softmax(x @ W.T, 1)
    return Split(x, torch.multinomial(p, 1, generator=generator).squeeze(1), p)


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_gradients_on_label_distributions_are_the_weighted_mean_of_the_per_label_gradients(monkeypatch, arch):
    """With targets p_i the one-pass gradients equal sum_c p_ic g_i(c), g_i(c) from torch.func with label c,
    and population_margins on (x, y, p) is U of those averaged gradients (float64 models, LN eps = 0)."""
    monkeypatch.setattr(models, "LN_EPS", 0.0)
    monkeypatch.setattr(margins, "LN_EPS", 0.0)
    monkeypatch.setattr(margins, "CHUNK_DTYPE", torch.float64)
    model, x, _ = small_model(arch)
    g = torch.Generator().manual_seed(5)
    p = torch.softmax(2 * torch.randn(len(x), K, generator=g, dtype=torch.float64), 1)
    y = torch.multinomial(p, 1, generator=g).squeeze(1)
    candidates = _all_candidates(model, x)
    one_pass = block_gradients(model, x, p, None, candidates)
    pop = population_margins(model, Split(x, y, p), list(candidates), candidates)
    for k, block in candidates.items():
        per_label = [block_gradients_reference(model, x, torch.full_like(y, c), k, block) for c in range(K)]
        averaged = sum(p[:, c, None] * per_label[c] for c in range(K))
        assert ((one_pass[k].flat() - averaged).abs().max() / averaged.abs().max()).item() < 1e-10
        u = u_statistic(averaged)
        assert pop[k].n == len(x)
        assert pop[k].value == pytest.approx(u.value, rel=1e-8) and pop[k].stderr == pytest.approx(u.stderr, rel=1e-6)


def test_label_averaged_population_margin_agrees_with_the_labelled_one_and_has_a_smaller_se():
    """On the same 2^14 points, U of the label-averaged gradients and U of the labelled ones estimate the
    same kappa^2 (within 4 se, both unbiased), and the averaged one's se is smaller at every position."""
    model = trained_mlp(20)
    pop = teacher_with_p(1 << 14, torch.Generator().manual_seed(23))
    candidates = _all_candidates(model, pop.x[:2000])
    averaged = population_margins(model, pop, list(candidates), candidates)
    labelled = population_margins(model, Split(pop.x, pop.y), list(candidates), candidates, points=1 << 14)
    for k in candidates:
        a, b = averaged[k], labelled[k]
        assert a.n == b.n == 1 << 14
        assert abs(a.value - b.value) < 4 * math.hypot(a.stderr, b.stderr), (k, a, b)
        assert a.stderr < 0.5 * b.stderr, (k, a.stderr, b.stderr)   # measured 0.23-0.26


def test_population_se_uses_the_first_se_points_against_the_mean_of_all(monkeypatch):
    """With N = 20000 points in chunks of 8192 and SE_POINTS = 10000 (a cut inside the second chunk),
    the se is 2 sqrt(var(psi_i) / N) over the first 10000 points, psi_i = <g_i, G_-i> with G_-i from
    all N: computed here from the dense per-sample gradients."""
    monkeypatch.setattr(margins, "SE_POINTS", 10_000)
    monkeypatch.setattr(margins, "CHUNK_DTYPE", torch.float64)
    model = trained_mlp(20)
    S = teacher(20_000, torch.Generator().manual_seed(19))
    candidates = _all_candidates(model, S.x[:2000])
    stored = block_gradients(model, S.x, S.y, None, candidates)
    streamed = population_margins(model, S, list(candidates), candidates, points=20_000)
    N = 20_000
    for k in candidates:
        g = stored[k].flat()
        total = g.sum(0)
        psi = (g[:10_000] @ total - (g[:10_000] ** 2).sum(1)) / (N - 1)
        assert streamed[k].n == N
        assert streamed[k].value == pytest.approx(((total @ total) - (g ** 2).sum()).item() / (N * (N - 1)), rel=1e-8)
        assert streamed[k].stderr == pytest.approx(2 * math.sqrt(psi.var().item() / N), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# finite differences

@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_difference_quotient_approaches_the_one_sided_derivative(arch):
    """Along d = -G/||G|| the difference quotient at t = 1e-4 is within 1% of the one-sided derivative (mlp: the one-pass -||G||; resnet: -||G|| plus the ReLU-kink term), and its error shrinks with t."""
    model, x, y = small_model(arch)
    candidates = _all_candidates(model, x)
    one_pass = block_gradients(model, x, y, None, candidates)
    for k, block in candidates.items():
        f_new, _ = insert_block(model, k, x, y, block=block)
        slope = -one_pass[k].mean().norm().item()
        rows = finite_difference_check(f_new, k, x, y, t_values=(1e-1, 1e-2, 1e-3, 1e-4))
        assert rows[-1].slope == pytest.approx(slope, rel=1e-5)
        if arch == "mlp":
            assert rows[-1].one_sided == pytest.approx(slope, rel=1e-5)
        assert abs(rows[-1].quotient / rows[-1].one_sided - 1) < 0.01, (k, rows)
        errors = [abs(r.quotient - r.one_sided) for r in rows]
        assert all(b < a for a, b in zip(errors, errors[1:])), (k, errors)
        live = block.live_parameters[0]   # f_new is restored
        torch.testing.assert_close(f_new.blocks[k].get_parameter(live), block.get_parameter(live))


def test_resnet_loss_has_a_kink_at_phi0():
    """For resnet the one-sided derivative along -G/||G|| differs from -||G|| (ReLU(h + Delta) at h = 0), and the difference quotient follows the former."""
    model, x, y = small_model("resnet")
    block = candidate_block(model, 2, x, seed=0)
    f_new, _ = insert_block(model, 2, x, y, block=block)
    row = finite_difference_check(f_new, 2, x, y, t_values=(1e-5,))[0]
    assert abs(row.one_sided / row.slope - 1) > 0.05, row
    assert abs(row.quotient / row.one_sided - 1) < 1e-3, row


# ---------------------------------------------------------------------------------------------
# estimator statistics over repeated probe samples

def _repeat(model, candidates, reps, n, seed):
    g = torch.Generator().manual_seed(seed)
    out = {k: [] for k in candidates}
    for _ in range(reps):
        P = teacher(n, g)
        for k, grads in block_gradients(model, P.x, P.y, None, candidates).items():
            out[k].append((u_statistic(grads), cross_fit(grads, g), naive_sq_norm(grads)))
    return out


def _mean_se(values):
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), t.std().item() / math.sqrt(len(t))


def test_u_and_cross_fit_are_unbiased_and_naive_is_biased_by_trace_over_n():
    """Over 100 probe samples (n_P = 200) the means of U_P and X_P are within 3 se of the population kappa^2 (2^16 points), the naive ||G_P||^2 exceeds it by tr(Sigma)/n_P within 30%, and the reported se matches the spread."""
    model = trained_mlp(100)
    candidates = _all_candidates(model, teacher(500, torch.Generator().manual_seed(2)).x)
    big = teacher(2 ** 16, torch.Generator().manual_seed(3))
    pop_grads = block_gradients(model, big.x, big.y, None, candidates, batch_size=8192)
    n, reps = 200, 100
    runs = _repeat(model, candidates, reps, n, seed=4)
    for k in candidates:
        pop = u_statistic(pop_grads[k])
        trace_sigma = pop_grads[k].sq_norms().mean().item() - pop.value
        U, U_se = _mean_se([u.value for u, _, _ in runs[k]])
        X, X_se = _mean_se([x.value for _, x, _ in runs[k]])
        naive, _ = _mean_se([v for _, _, v in runs[k]])
        assert abs(U - pop.value) < 3 * math.hypot(U_se, pop.stderr), (k, U, pop)
        assert abs(X - pop.value) < 3 * math.hypot(X_se, pop.stderr), (k, X, pop)
        assert abs((naive - pop.value) / (trace_sigma / n) - 1) < 0.3, (k, naive, pop.value, trace_sigma)
        spread = U_se * math.sqrt(reps)
        reported = sum(u.stderr for u, _, _ in runs[k]) / reps
        assert 0.6 < spread / reported < 1.3, (k, spread, reported)


def test_observed_flag_is_calibrated_under_the_score_identity_null():
    """With labels y ~ softmax(f_old(x)) the population G is 0, and over 120 probe samples the flag fires in at most delta + 3 sd of them at each position while the naive estimate is always positive."""
    model = trained_mlp(30)
    candidates = _all_candidates(model, teacher(500, torch.Generator().manual_seed(2)).x)
    g = torch.Generator().manual_seed(5)
    delta, reps, n = 0.05, 120, 200
    fired = {k: 0 for k in candidates}
    U_values = {k: [] for k in candidates}
    for _ in range(reps):
        x = teacher(n, g).x
        with torch.no_grad():
            y = torch.multinomial(torch.softmax(model(x), 1), 1, generator=g).squeeze(1)
        for k, grads in block_gradients(model, x, y, None, candidates).items():
            U = u_statistic(grads, delta)
            fired[k] += U.lcb > 0
            U_values[k].append(U.value)
            assert naive_sq_norm(grads) > 0
    limit = delta + 3 * math.sqrt(delta * (1 - delta) / reps)
    for k in candidates:
        assert fired[k] / reps <= limit, (k, fired[k])
        mean, se = _mean_se(U_values[k])
        assert abs(mean) < 3 * se, (k, mean, se)


def test_u_stderr_shrinks_like_one_over_sqrt_n():
    """The stderr of U_P at n_P = 4000 is about half of that at n_P = 1000 (averaged over 32 probe samples each)."""
    model = trained_mlp(0)
    candidates = _all_candidates(model, teacher(500, torch.Generator().manual_seed(2)).x)
    g = torch.Generator().manual_seed(6)

    def mean_se(n):
        ses = {k: 0.0 for k in candidates}
        for _ in range(32):
            P = teacher(n, g)
            for k, grads in block_gradients(model, P.x, P.y, None, candidates).items():
                ses[k] += u_statistic(grads).stderr / 32
        return ses

    small, large = mean_se(1000), mean_se(4000)
    for k in candidates:
        assert 1.7 < small[k] / large[k] < 2.3, (k, small[k] / large[k])


# ---------------------------------------------------------------------------------------------
# the step

def test_a_model_fitted_to_S_shows_a_smaller_training_margin_than_the_probe_margin():
    """After the old model is fitted to a small S, ||G_S||^2 is below U_P at every position, U_P is observed, and to_dict is flat."""
    torch.manual_seed(0)
    model = MLP(D, 32, 3, K)
    S = teacher(64, torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(S.x), S.y).backward()
        opt.step()
    model.eval()
    P = teacher(2000, torch.Generator().manual_seed(2))
    pop = teacher(8192, torch.Generator().manual_seed(3))
    result = descent_margins(model, S, P, pop, delta=0.05, seed=0)
    assert [m.position for m in result] == [0, 1, 2, 3]
    for m in result:
        assert m.kappa2_train_naive < m.kappa2_U.value, m.to_dict()
        assert m.observed == (m.kappa2_U.lcb > 0)
        d = m.to_dict()
        assert {"kappa2_U", "kappa2_U_se", "kappa2_U_lcb", "kappa2_cross", "kappa2_train_U", "kappa2_pop",
                "kappa2_pop_se", "observed"} <= set(d)
        assert all(not isinstance(v, (dict, torch.Tensor)) for v in d.values())
        assert set(m.G_P) == {"w2.weight", "w2.bias"}
    assert any(m.observed for m in result)
