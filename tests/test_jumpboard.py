"""The jumpboard line search and the jump margins (theory.md section 6)."""
import math

import pytest
import torch
import torch.nn.functional as F

from resx.core.data import Split
from resx.theory import jumpboard
from resx.theory.jumpboard import jump_margins, jumpboard_path, live_gradient, split_halves
from resx.theory.margins import descent_margins
from resx.core.models import MLP, ResNet, insert_block

from test_margins import D, K, teacher, teacher_with_p  # the same small teacher task


@pytest.fixture(scope="module")
def setting():
    """An mlp (width 16, depth 3) trained briefly on S; independent P, T, a population sample and a fresh one."""
    torch.manual_seed(0)
    S = teacher(1000, torch.Generator().manual_seed(1))
    model = MLP(D, 16, 3, K)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(S.x), S.y).backward()
        opt.step()
    model.eval()
    splits = {name: teacher(n, torch.Generator().manual_seed(seed))
              for name, n, seed in (("P", 2000, 11), ("T", 2000, 12), ("pop", 2 ** 13, 13), ("fresh", 2 ** 15, 14))}
    margins = descent_margins(model, S, splits["P"], splits["pop"], seed=0)
    position = max(margins, key=lambda m: m.kappa2_U.lcb).position
    f_new, _ = insert_block(model, position, S.x, S.y, seed=0)
    return model, f_new, position, S, splits, margins


def test_jumpboard_lowers_population_risk_on_a_fresh_sample(setting):
    """Where the descent condition is observed on P, f_J has a lower risk than f_old on a fresh population sample, by more than 3 paired standard errors."""
    model, f_new, k, S, s, margins = setting
    assert next(m for m in margins if m.position == k).observed
    jb = jumpboard_path(f_new, k, S, s["P"], s["T"], s["pop"])
    assert jb.eta > 0 and jb.L_P < jb.curve[0]["L_P"]
    gain = jump_margins(model, jb.model, s["T"], s["fresh"], delta=0.05)
    assert gain["Delta_R"] > 3 * gain["Delta_R_se"] > 0, gain


def test_eta_star_and_direction_depend_on_P_only(setting):
    """Replacing T and S (even with random labels) leaves d and eta* unchanged; replacing P changes them."""
    model, f_new, k, S, s, _ = setting
    base = jumpboard_path(f_new, k, S, s["P"], s["T"], None)
    g = torch.Generator().manual_seed(99)
    noise = Split(torch.randn(500, D, generator=g), torch.randint(0, K, (500,), generator=g))
    other = jumpboard_path(f_new, k, noise, s["P"], noise, None)
    assert other.eta == base.eta
    for name in base.direction:
        torch.testing.assert_close(other.direction[name], base.direction[name], rtol=0, atol=0)
    assert [r["L_P"] for r in other.curve] == [r["L_P"] for r in base.curve]
    moved = jumpboard_path(f_new, k, S, teacher(2000, torch.Generator().manual_seed(21)), s["T"], None)
    assert not torch.equal(moved.direction["w2.bias"], base.direction["w2.bias"])


def test_line_search_curve_starts_at_f_new_and_follows_the_first_order_prediction(setting):
    """The curve includes eta = 0 (the expanded model at phi0), the first-order line matches L_P at the smallest step to second order, and f_new is left unchanged."""
    model, f_new, k, S, s, _ = setting
    before = {n: p.clone() for n, p in f_new.named_parameters()}
    jb = jumpboard_path(f_new, k, S, s["P"], s["T"], s["pop"])
    first, second = jb.curve[0], jb.curve[1]
    assert first["eta"] == 0.0 and first["L_pop"] is not None and first["L_pop_se"] > 0
    _, P2 = split_halves(s["P"], 0)
    G2 = live_gradient(f_new, k, P2.x, P2.y)                      # mlp: smooth at phi0, slope = <G_P2, d>
    assert jb.slope_P == pytest.approx(sum((G2[n] * jb.direction[n]).sum().item() for n in G2), rel=1e-4)
    assert abs(second["L_P"] - second["first_order"]) < 0.05 * (first["L_P"] - second["L_P"])
    assert jb.quadratic_coef[1] < 0 < jb.quadratic_coef[2]
    for n, p in f_new.named_parameters():
        assert torch.equal(p, before[n])
    shifted = jb.model.blocks[k].w2.weight
    assert (shifted - jb.eta * jb.direction["w2.weight"]).abs().max().item() < 1e-6   # phi0 = 0
    d = jb.to_dict()
    assert {"eta", "position", "curve", "line_search"} <= set(d) and not {"L_S", "L_P", "L_T", "L_pop"} & set(d)
    with torch.no_grad():   # result.json names the line search's estimates by the sample they are on
        assert d["line_search"]["L_P2_at_eta"] == pytest.approx(F.cross_entropy(jb.model(P2.x), P2.y).item(), rel=1e-5)
        assert d["line_search"]["L_T_at_eta"] == pytest.approx(
            F.cross_entropy(jb.model(s["T"].x), s["T"].y).item(), rel=1e-5)


def test_with_label_distributions_the_curve_draws_the_label_averaged_loss_on_a_smaller_slice(setting):
    """Given p, the curve's L_pop at every eta is mean_i -sum_c p_ic log softmax(f(x_i))_c over the first
    CURVE_POP_EXPECTED points (computed here from the model at that eta); L_pop at eta* stays the
    labelled risk on the whole sample."""
    model, f_new, k, S, s, _ = setting
    pop = teacher_with_p(2 ** 13, torch.Generator().manual_seed(13))
    jb = jumpboard_path(f_new, k, S, s["P"], s["T"], pop)
    head = pop.head(jumpboard.CURVE_POP_EXPECTED)
    for row in (jb.curve[0], next(r for r in jb.curve if r["eta"] == jb.eta)):
        moved = f_new if row["eta"] == 0 else jb.model
        with torch.no_grad():
            averaged = -(head.p * torch.log_softmax(moved(head.x), 1)).sum(1)
        assert row["L_pop"] == pytest.approx(averaged.mean().item(), rel=1e-5)
        assert row["L_pop_se"] == pytest.approx(averaged.std().item() / math.sqrt(len(averaged)), rel=1e-4)
    with torch.no_grad():
        assert jb.L_pop == pytest.approx(F.cross_entropy(jb.model(pop.x), pop.y).item(), rel=1e-5)


def test_jump_margins_are_paired_differences_with_a_hoeffding_interval(setting):
    """A jump to the same function has zero margins and zero paired stderr; the Hoeffding half-width is 2c sqrt(log(2/delta)/(2m)), the routes' lower bounds are empirical Bernstein at delta/3, and real data gives Delta_R = None."""
    model, _, _, _, s, _ = setting
    same = jump_margins(model, model, s["T"], s["pop"], delta=0.05, loss_bound=3.0)
    assert same["Delta_R"] == 0 and same["Delta_R_se"] == 0 and same["Delta_R_T"] == 0
    m = len(s["T"])
    assert same["Delta_R_T_hoeffding"] == pytest.approx(2 * 3.0 * math.sqrt(math.log(2 / 0.05) / (2 * m)))
    # the routes' lower bounds: empirical Bernstein at delta/3 with D = 0 on every point is its range
    # term alone, 7 R ln(2/delta') / (3 (m - 1)) with R = 2c = 6 and delta' = 0.05/3
    for key, size in (("Delta_R_T_lower", m), ("Delta_R_lower", len(s["pop"]))):
        assert same[key] == pytest.approx(-7 * 6.0 * math.log(2 / (0.05 / 3)) / (3 * (size - 1)), rel=1e-12)
    assert same["Delta_R_lower_delta"] == pytest.approx(0.05 / 3)
    real = jump_margins(model, model, s["T"], None, delta=0.05)
    assert real["Delta_R"] is None and real["Delta_R_T_hoeffding"] is None


def test_resnet_jumpboard_first_order_line_uses_the_one_sided_slope():
    """For resnet the curve's first-order line uses the one-sided slope on P2, which matches the smallest-step difference quotient of L_P2 better than <G_P2, d> does."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    W = torch.randn(K, 3 * 8 * 8, generator=g)

    def images(n):
        x = torch.randn(n, 3, 8, 8, generator=g)
        return Split(x, torch.multinomial(torch.softmax(x.flatten(1) @ W.T / 8, 1), 1, generator=g).squeeze(1))

    S, P, T = images(256), images(512), images(256)
    model = ResNet(3, 4, 1, K).double()
    S, P, T = (Split(z.x.double(), z.y) for z in (S, P, T))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(S.x), S.y).backward()
        opt.step()
    model.eval()
    f_new, _ = insert_block(model, 2, S.x, S.y, seed=0)
    eta = 1e-5
    jb = jumpboard_path(f_new, 2, S, P, T, None, etas=[eta])
    from resx.theory.jumpboard import mean_loss, set_live_
    work = jb.model
    phi0 = {n: f_new.blocks[2].get_parameter(n).detach() for n in jb.direction}
    set_live_(work, 2, phi0, jb.direction, eta)
    _, P2 = split_halves(P, 0)
    quotient = ((mean_loss(work, P2.x, P2.y) - mean_loss(f_new, P2.x, P2.y)) / eta).item()
    G2 = live_gradient(f_new, 2, P2.x, P2.y)
    smooth = sum((G2[n] * jb.direction[n]).sum().item() for n in G2)
    assert abs(quotient - jb.slope_P) < 1e-3 * abs(jb.slope_P)
    assert abs(quotient - jb.slope_P) < abs(quotient - smooth)
