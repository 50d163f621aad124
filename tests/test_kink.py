"""Descent at a ReLU kink (theory.md 4b): the exact per-channel minimum, the steepest one-sided
direction, finite differences along it, and the null calibration of "descent observable"."""
import math

import pytest
import torch
import torch.nn.functional as F

from resx.core.data import Split
from resx.core.models import LN_EPS, ResNet, candidate_block, insert_block
from resx.theory.jumpboard import (jumpboard_path, mean_loss, one_sided_slope, set_live_, steepest_on)
from resx.theory.kink import (KinkSample, best_of_positions, channel_minimum, channel_value, descent_test, split_halves,
                              steepest_direction)
from resx.theory.margins import descent_tests, normalised_branch

from test_margins import K, small_model


def _circle(z, w, a0, points=100_001):
    """D_c on a dense grid of the circle, straight from the definition."""
    t = torch.linspace(-math.pi, math.pi, points, dtype=torch.float64)
    U = torch.stack([torch.cos(t), torch.sin(t)], 1)
    return U @ a0 + (w[None] * (U[:, :1] * z[None] + U[:, 1:]).clamp(min=0)).sum(1)


def test_exact_channel_minimum_is_at_most_a_dense_search_and_is_attained():
    """On random piecewise-linear instances the exact minimum is <= the least of 10^5 points on the circle (never above it) and is the value at the returned unit vector, so it is never below the true minimum; the grid approaches it."""
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        E = int(torch.randint(1, 40, (1,), generator=g))
        z = torch.randn(E, generator=g, dtype=torch.float64) * 2
        w = torch.randn(E, generator=g, dtype=torch.float64)
        a0 = torch.randn(2, generator=g, dtype=torch.float64) * 0.5
        if trial % 3 == 0:
            z = z.round()                     # ties between breakpoints
        value, u = channel_minimum(a0, z, w)
        grid = _circle(z, w, a0)
        assert value <= grid.min().item() + 1e-12, trial
        assert abs(u.norm().item() - 1) < 1e-12
        assert channel_value(a0, z, w, u) == pytest.approx(value, abs=1e-12)   # attained: >= the true minimum
        slope_bound = a0.norm().item() + (w.abs() * torch.sqrt(1 + z * z)).sum().item()
        assert grid.min().item() - value <= slope_bound * 2 * math.pi / 100_000, trial


def _resnet_kink_sample(model, x, y, k):
    """(KinkSample, f_new, block) on (x, y) at position k, from hooks on the expanded model."""
    block = candidate_block(model, k, x, seed=0)
    f_new, _ = insert_block(model, k, x, y, block=block)
    P = Split(x, y)
    grabbed = {}
    b = f_new.blocks[k]
    hooks = [b.register_forward_pre_hook(lambda m, a: grabbed.__setitem__("h", a[0].detach())),
             b.register_forward_hook(lambda m, a, out: grabbed.__setitem__("out", out))]
    xb = P.x.clone().requires_grad_(True)
    loss = F.cross_entropy(f_new(xb), P.y, reduction="sum")
    g = torch.autograd.grad(loss, grabbed["out"])[0]
    for h in hooks:
        h.remove()
    sample = KinkSample()
    sample.add(grabbed["h"], g, normalised_branch(b, grabbed["h"]))
    return sample, f_new


@pytest.mark.parametrize("k", [0, 2, 3])
def test_steepest_direction_beats_minus_G_and_random_directions_and_finite_differences_reach_it(k):
    """resnet, float64: D(d_hat) is the reported rate, <= D(-G/||G||) and <= D of 200 random unit directions (D by the independent autograd-plus-kink path); (L(phi0 + t d_hat) - L(phi0))/t converges to D(d_hat) as t -> 0."""
    model, x, y = small_model("resnet")
    sample, f_new = _resnet_kink_sample(model, x, y, k)
    best = steepest_direction(sample)
    assert best.direction is not None and best.rate < 0
    d = {n: v.double() for n, v in best.direction.items()}
    norm = math.sqrt(sum((v * v).sum().item() for v in d.values()))
    assert norm == pytest.approx(1.0, abs=1e-6)
    D_hat = one_sided_slope(f_new, k, x, y, d)
    assert D_hat == pytest.approx(best.rate, rel=1e-4, abs=1e-9)
    G = sample.G
    minus_G = {"bn2.weight": -G[:, 0] / G.norm(), "bn2.bias": -G[:, 1] / G.norm()}
    assert D_hat <= one_sided_slope(f_new, k, x, y, minus_G) + 1e-12
    gen = torch.Generator().manual_seed(k)
    for _ in range(200):
        r = torch.randn(G.shape[0], 2, generator=gen, dtype=torch.float64)
        r = r / r.norm()
        assert best.rate <= sample.D(r[:, 0], r[:, 1]) + 1e-12
    block = f_new.blocks[k]
    phi0 = {n: block.get_parameter(n).detach().clone() for n in block.live_parameters}
    L0 = mean_loss(f_new, x, y).item()
    errors = []
    for t in (1e-2, 1e-3, 1e-4, 1e-5):
        set_live_(f_new, k, phi0, d, t)
        errors.append(abs((mean_loss(f_new, x, y).item() - L0) / t - D_hat))
    set_live_(f_new, k, phi0, d, 0.0)
    assert errors[-1] < 1e-3 * abs(D_hat), errors
    assert errors[-1] < errors[0], errors


def test_mlp_direction_is_minus_G_and_finite_differences_reach_its_slope():
    """mlp: d_hat = -G_P1/||G_P1||, its in-sample slope is -||G_P1|| (the smooth case), and the difference quotient along it converges to that slope."""
    model, x, y = small_model("mlp")
    k = 1
    f_new, _ = insert_block(model, k, x, y, block=candidate_block(model, k, x, seed=0))
    P = Split(x, y)
    test = steepest_on(f_new, k, P, P)
    block = f_new.blocks[k]
    phi0 = {n: block.get_parameter(n).detach().clone() for n in block.live_parameters}
    L0 = mean_loss(f_new, x, y).item()
    quotients = []
    for t in (1e-3, 1e-5):
        set_live_(f_new, k, phi0, test.direction, t)
        quotients.append((mean_loss(f_new, x, y).item() - L0) / t)
    set_live_(f_new, k, phi0, test.direction, 0.0)
    assert test.slope_in < 0
    assert test.slope_cross == pytest.approx(test.slope_in, rel=1e-6)        # P2 = P1 here
    assert abs(quotients[-1] / test.slope_in - 1) < 1e-3
    assert abs(quotients[-1] - test.slope_in) < abs(quotients[0] - test.slope_in)


def test_descent_observable_is_calibrated_under_the_self_label_null():
    """resnet: labels drawn from the old model's own softmax make every population one-sided slope 0 (E_y dl/dz = 0 given x); over 200 label draws "descent observable" fires in at most delta + 2 standard errors of the draws at the first and the last position."""
    torch.manual_seed(0)
    model = ResNet(3, 4, 1, K).double().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(240, 3, 8, 8, generator=g, dtype=torch.float64)
    x_S = torch.randn(200, 3, 8, 8, generator=g, dtype=torch.float64)
    positions = [0, 3]                  # 4 and 16 channels (the first and the last stage)
    candidates = {k: candidate_block(model, k, x_S, seed=0) for k in positions}
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    delta, reps = 0.05, 200
    fired = {k: 0 for k in positions}
    for r in range(reps):
        y = torch.multinomial(probs, 1, generator=g).squeeze(1)
        for k, t in descent_tests(model, Split(x, y), positions, candidates, delta, seed=r).items():
            fired[k] += t.observable
    limit = delta + 2 * math.sqrt(delta * (1 - delta) / reps)
    assert all(f / reps <= limit for f in fired.values()), fired


def test_descent_z_bound_is_calibrated_on_normal_terms_and_only_asymptotically_on_skewed_ones():
    """The descent test's UCB is a z-bound (labelled asymptotic). On normal mean-zero per-sample terms
    (n_2 = 200) it fires in at most delta + 3 se of 20,000 draws (0.0546: a test at 1.5 delta = 0.075
    would fail this limit); on right-skewed mean-zero terms (Exp(1) - 1) it fires above that limit
    at n_2 = 50 and less often at n_2 = 1000: a CLT statement, not a finite-sample guarantee."""
    g = torch.Generator().manual_seed(1)
    delta, reps = 0.05, 20_000
    limit = delta + 3 * math.sqrt(delta * (1 - delta) / reps)
    d = {"x": torch.zeros(1)}
    normal = torch.randn(reps, 200, generator=g, dtype=torch.float64)
    assert sum(descent_test(-1.0, t, 200, delta, d).observable for t in normal) / reps <= limit

    def skewed_rate(n, draws):
        terms = torch.empty(draws, n, dtype=torch.float64).exponential_(generator=g) - 1.0
        return sum(descent_test(-1.0, t, n, delta, d).observable for t in terms) / draws
    small, large = skewed_rate(50, 4000), skewed_rate(1000, 4000)
    assert small > delta + 3 * math.sqrt(delta * (1 - delta) / 4000) and large < small
    assert "asymptotic" in descent_test(-1.0, normal[0], 200, delta, d).to_dict()["descent_bound"]


def test_bonferroni_best_of_positions_is_calibrated_under_a_global_null():
    """Picking the best of 4 null positions: the uncorrected best fires well above delta, the Bonferroni-corrected pick at most delta + 2 se (2000 simulated draws)."""
    g = torch.Generator().manual_seed(0)
    delta, reps, K_pos, n = 0.05, 2000, 4, 50
    fired = naive = 0
    for _ in range(reps):
        tests = {}
        for k in range(K_pos):
            terms = torch.randn(n, generator=g, dtype=torch.float64)
            tests[k] = descent_test(-1.0, terms, n, delta, {"x": torch.zeros(1)})
        fired += best_of_positions(tests, delta)["observable"]
        naive += any(t.observable for t in tests.values())
    se = math.sqrt(delta * (1 - delta) / reps)
    assert fired / reps <= delta + 2 * se
    assert naive / reps > delta + 4 * se


def test_no_descent_direction_gives_a_one_point_jumpboard_with_a_note():
    """G_P1 = 0 (a zero head makes every activation gradient 0): the jumpboard is f_new with eta* = 0, a one-point curve and a note, and nothing raises (review B2)."""
    model, x, y = small_model("mlp")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    f_new, _ = insert_block(model, 1, x, y, seed=0)
    P = Split(x, y)
    jb = jumpboard_path(f_new, 1, P, P, P, None)
    assert jb.eta == 0.0 and len(jb.curve) == 1 and not jb.descent_observable
    assert "no one-sided descent direction" in jb.note
    assert jb.to_dict()["note"] == jb.note


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_margins_and_jumpboard_test_the_same_direction_on_the_same_halves(arch):
    """float64: the one-pass closed form (old model's hooks, margins.descent_tests) and the expanded model's hooks (jumpboard.steepest_on) give the same d_hat, D_P1(d_hat), D_P2(d_hat) and se at every position; so the pipeline hands the margins step's test to the jumpboard, and the line search is the same.
    resnet: exactly (the zero block is the identity). mlp: up to the LayerNorm's eps, as the zero block maps the normalised h to N(h) = h / sqrt(1 + eps / var h), so f_new's gradients are the old model's times 1 + O(eps), eps = 1e-6."""
    rel = 1e-9 if arch == "resnet" else 10 * LN_EPS
    model, x, y = small_model(arch)
    P = Split(x, y)
    positions = list(range(len(model.blocks) + 1))
    candidates = {k: candidate_block(model, k, x, seed=0) for k in positions}
    tests = descent_tests(model, P, positions, candidates, 0.05, seed=3)
    P1, P2 = split_halves(P, 3)
    for k in positions:
        f_new, _ = insert_block(model, k, x, y, block=candidates[k])
        other = steepest_on(f_new, k, P1, P2, 0.05)
        a, b = tests[k], other
        assert a.slope_in == pytest.approx(b.slope_in, rel=rel)
        assert a.slope_cross == pytest.approx(b.slope_cross, rel=rel, abs=1e-15)
        assert a.se == pytest.approx(b.se, rel=rel)
        for n in a.direction:
            torch.testing.assert_close(a.direction[n], b.direction[n], **({} if arch == "resnet" else {"rtol": rel, "atol": rel}))  # a unit vector
    k = positions[-1]
    f_new, _ = insert_block(model, k, x, y, block=candidates[k])
    own, handed = jumpboard_path(f_new, k, P, P, P, None, seed=3), jumpboard_path(f_new, k, P, P, P, None, seed=3, test=tests[k])
    assert handed.eta == own.eta and handed.kappa_P == pytest.approx(own.kappa_P, rel=rel)
    assert [r["L_P"] for r in handed.curve] == pytest.approx([r["L_P"] for r in own.curve], rel=rel)
