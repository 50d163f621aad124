"""Table 3 and the depth-width law (theory.md 9): GPT-3 rows, Levine et al.'s fit, and the fit on a grid."""
import csv
import math

import numpy as np
import pytest

from resx.figures.allocation import (GPT3_CONFIGS, LEVINE_2020, DepthWidthLaw, best_depths, fit_allocation, fit_log_law,
                             table3, write_table3_csv)


def test_gpt3_rows_are_brown_et_al_table_2_1():
    """The eight GPT-3 configurations carry Table 2.1's layers and d_model (5140 for 13B, as printed)."""
    got = [(c.name, c.n_layers, c.d_model) for c in GPT3_CONFIGS]
    assert got == [("GPT-3 Small", 12, 768), ("GPT-3 Medium", 24, 1024), ("GPT-3 Large", 24, 1536),
                   ("GPT-3 XL", 24, 2048), ("GPT-3 2.7B", 32, 2560), ("GPT-3 6.7B", 32, 4096),
                   ("GPT-3 13B", 40, 5140), ("GPT-3 175B", 96, 12288)]
    assert [c.n_params for c in GPT3_CONFIGS] == [125e6, 350e6, 760e6, 1.3e9, 2.7e9, 6.7e9, 13e9, 175e9]


def test_levine_law_reproduces_the_papers_own_projections():
    """With a = 5.039, b = 0.0555 a 1e12-parameter network gets width ~30K (the paper's figure) and
    GPT-3 175B is deeper than the fit while every smaller GPT-3 is shallower ('GPT-3 is too deep')."""
    assert LEVINE_2020.a == pytest.approx(5.039) and LEVINE_2020.b == pytest.approx(0.0555)
    L, d = LEVINE_2020.size_matched(1e12)
    assert d == pytest.approx(30_000, rel=0.02)
    assert 90 <= L <= 96
    rows = table3()
    assert [r["verdict"] for r in rows] == ["shallower than the fit"] * 7 + ["deeper than the fit"]
    assert rows[-1]["L_star"] < 96 and rows[-1]["L_opt_for_width"] < 96    # at its size and at its width


def test_size_matched_point_lies_on_the_law_and_has_the_requested_size():
    """(L*, d*) satisfies ln d* = a + b L* and 12 L* d*^2 = N."""
    for N in (1e6, 125e6, 175e9):
        L, d = LEVINE_2020.size_matched(N)
        assert math.log(d) == pytest.approx(LEVINE_2020.a + LEVINE_2020.b * L, rel=1e-9)
        assert 12 * L * d**2 == pytest.approx(N, rel=1e-6)
        assert float(LEVINE_2020.depth_for_width(d)) == pytest.approx(L, rel=1e-9)


def test_table3_csv_has_the_eight_rows(tmp_path):
    """table3.csv holds a header and the eight GPT-3 rows with their projections."""
    path = write_table3_csv(tmp_path / "table3.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == [c.name for c in GPT3_CONFIGS]
    assert rows[0]["n_layers"] == "12" and rows[-1]["d_model"] == "12288"
    assert float(rows[-1]["L_star"]) == pytest.approx(table3()[-1]["L_star"], abs=0.05)


def test_exponential_form_round_trip_and_delta_method():
    """from_exponential(a, b) gives back a and b; se(b) = se(slope)/slope^2 (delta method)."""
    law = DepthWidthLaw.from_exponential(2.0, 0.25, source="test")
    assert law.slope == pytest.approx(4.0) and law.intercept == pytest.approx(-8.0)
    assert (law.a, law.b) == (pytest.approx(2.0), pytest.approx(0.25))
    fitted = DepthWidthLaw(slope=4.0, intercept=-8.0, source="t", slope_se=0.4, intercept_se=1.0, cov=0.0)
    assert fitted.b_se == pytest.approx(0.4 / 16)
    assert fitted.a_se == pytest.approx(math.hypot(-8.0 / 16 * 0.4, 1.0 / 4))


def test_least_squares_standard_errors_are_calibrated():
    """Over 400 noisy data sets from a known line, slope +- t(0.975, 5 dof) se covers the true slope ~95% of the time."""
    rng = np.random.default_rng(0)
    widths = np.array([4, 8, 16, 32, 64, 128, 256])
    slope, intercept = 1.7, -1.0
    hits = 0
    for _ in range(400):
        depths = slope * np.log(widths) + intercept + rng.normal(0, 0.5, len(widths))
        law = fit_log_law(widths, depths)
        hits += abs(law.slope - slope) <= 2.571 * law.slope_se     # 7 points, 5 degrees of freedom
    assert 0.90 <= hits / 400 <= 0.99


def test_fit_allocation_recovers_known_constants_from_a_noisy_grid():
    """A loss surface whose optimal depth is 3 ln(w) - 2, observed with noise over 3 seeds at integer
    depths, gives a fitted slope and intercept within 3 standard errors of the truth."""
    rng = np.random.default_rng(1)
    slope, intercept = 3.0, -2.0
    widths = [8, 16, 32, 64, 128, 256, 512, 1024]
    cells = []
    for w in widths:
        L_opt = slope * math.log(w) + intercept
        for depth in range(1, 26):
            for seed in range(3):
                loss = 1.0 + 0.02 * (depth - L_opt) ** 2 + rng.normal(0, 0.02)
                cells.append({"depth": depth, "width": w, "n": 1000, "seed": seed, "test_loss_old": loss,
                              "test_loss_new": None})
    fit = fit_allocation(cells)
    law = fit.law
    assert len(fit.points) == len(widths) and fit.n == 1000
    assert abs(law.slope - slope) < 3 * law.slope_se
    assert abs(law.intercept - intercept) < 3 * law.intercept_se
    assert law.slope_se < 0.3          # informative, not a vacuous interval


def test_best_depths_averages_seeds_breaks_ties_shallow_and_filters_n():
    """The best depth uses the seed mean, ties go to the shallower depth, and the largest n is used."""
    cells = [{"depth": 1, "width": 4, "n": 100, "seed": 0, "test_loss_old": 1.0},
             {"depth": 1, "width": 4, "n": 100, "seed": 1, "test_loss_old": 3.0},   # mean 2.0
             {"depth": 2, "width": 4, "n": 100, "seed": 0, "test_loss_old": 2.0},   # tie: depth 1 wins
             {"depth": 1, "width": 8, "n": 100, "seed": 0, "test_loss_old": 5.0},
             {"depth": 2, "width": 8, "n": 100, "seed": 0, "test_loss_old": 4.0},
             {"depth": 1, "width": 8, "n": 50, "seed": 0, "test_loss_old": 0.0}]    # other n: ignored
    points, n = best_depths(cells)
    assert n == 100
    assert [(p["width"], p["best_depth"]) for p in points] == [(4, 1), (8, 2)]
    points50, _ = best_depths(cells, n=50)
    assert points50 == []                    # width 8 at n = 50 has a single depth: no information


def test_fit_allocation_needs_two_widths_with_two_depths():
    """Fewer than two informative widths raise a ValueError that says what is needed."""
    cells = [{"depth": d, "width": 4, "n": 10, "seed": 0, "test_loss_old": float(d)} for d in (1, 2, 3)]
    with pytest.raises(ValueError, match="at least 2 widths"):
        fit_allocation(cells)
    two = cells + [{"depth": d, "width": 8, "n": 10, "seed": 0, "test_loss_old": -float(d)} for d in (1, 2)]
    fit = fit_allocation(two)
    assert math.isnan(fit.law.slope_se)      # two points: a line, but no standard error


def test_a_flat_grid_gives_slope_zero_and_no_exponential_form():
    """When every width prefers the same depth the slope is 0, and a, b (the exponential form) are nan, not an error."""
    cells = [{"depth": d, "width": w, "n": 10, "seed": 0, "test_loss_old": float(d)}
             for w in (4, 8, 16) for d in (1, 2)]
    law = fit_allocation(cells).law
    assert law.slope == pytest.approx(0.0, abs=1e-12) and law.intercept == pytest.approx(1.0)
    d = law.to_dict()
    assert math.isnan(d["a"]) and math.isnan(d["b"]) and math.isnan(d["b_se"])
