"""The data behind Figures 1-3 and observability, their figure functions, and the `figures` command
(theory.md 5 and 9), on tiny real runs."""
import argparse
import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resx.figures import paper as fp
from resx.core.config import ConfigError, RunConfig
from resx.scale.paper_figures import add_figures_parser, make_figures
from resx.figures.cells import figure3_from_cells
from resx.scale.paper_data import (FigureSettings, ModelBank, figure1_data, figure2_data, figure3_data, observability_data, observability_rows)
from resx.core.train import risk

TINY = RunConfig(dataset="shapes", arch="resnet", depth=1, width=2, position=0, n=64, n_probe=32, n_test=96,
                 n_pop=256, m_cert=1024, optimizer="sgd", lr=0.05, batch_size=32, epochs=1, finetune_epochs=1, device="cpu")


def _settings(**changes):
    base = dict(base=TINY, fig1_model=(1, 2), fig1_wide=(1, 4), fig2_depths=(1, 2), fig2_width=2, obs_depth=1,
                obs_widths=(2, 4), obs_ns=(8, 16), obs_repeats=3, fig3_depths=(1, 2), fig3_widths=(2,),
                fig3_seeds=(0,), fig3_expand=False)
    return FigureSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def bank():
    torch.set_num_threads(1)
    return ModelBank()


def test_figure2_has_one_curve_per_depth_with_num_blocks_plus_one_points(bank):
    """Figure 2 draws one s_k trace per depth, each with num_blocks + 1 points (k = 0..num_blocks), positive."""
    settings = _settings()
    curves = figure2_data(bank, settings)
    fig = fp.fig2_signal_decay(curves)
    s_traces = [t for t in fig.data if t.meta["kind"] == "s_k"]
    assert [t.meta["depth"] for t in s_traces] == [1, 2]
    assert [len(t.y) for t in s_traces] == [3 * 1 + 1, 3 * 2 + 1]
    assert all(np.all(np.asarray(t.y) > 0) for t in s_traces)
    assert all(np.asarray(t.y).dtype == np.float32 for t in fig.data)
    assert len([t for t in fig.data if t.meta["kind"] == "floor"]) == 2


def _manual_s_k(model, x, y):
    """s_k by an explicit forward that keeps every block output and torch.autograd.grad of the summed loss."""
    model.eval()
    h = model.embed(x)
    acts = [h]
    for block in model.blocks:
        h = block(h)
        acts.append(h)
    loss = F.cross_entropy(model.head(h.mean(dim=(2, 3))), y, reduction="sum")
    grads = torch.autograd.grad(loss, acts)
    out = []
    for g in grads:
        g = g.double().sum(dim=(2, 3))                 # (n, C): spatial positions summed first
        out.append((g.mean(0).norm().item(), g.var(0).sum().item() / len(g)))
    return out


def test_figure2_s_k_equals_an_independent_computation(bank):
    """Each curve's s_k equals ||mean_i g_k,i|| from a manual forward and autograd.grad (reduction sum),
    and its noise floor equals sqrt(tr Sigma_k / n), on the same held-out sample T."""
    settings = _settings()
    curves = figure2_data(bank, settings)
    for curve in curves:
        model, data = bank.get(settings.config(curve["depth"], settings.fig2_width))
        expected = _manual_s_k(model, data.T.x, data.T.y)
        assert curve["s"] == pytest.approx([e[0] for e in expected], rel=1e-5)
        assert curve["floor"] == pytest.approx([math.sqrt(e[1]) for e in expected], rel=1e-5)
        assert curve["n"] == len(data.T)


def test_figure1_covariance_and_offdiag_panels(bank):
    """Figure 1: a (4w, 4w) covariance heatmap equal to the sample covariance of the head-input gradients
    on T, 4w eigenvalues, and histograms of all D(D-1)/2 off-diagonal entries and the D diagonal ones."""
    settings = _settings()
    f1 = figure1_data(bank, settings)
    model, data = bank.get(settings.config(*settings.fig1_model))
    G = (torch.softmax(model(data.T.x), 1) - F.one_hot(data.T.y, 10)).double() @ model.head.weight.double()
    np.testing.assert_allclose(f1["main"]["cov"]["Sigma"], np.cov(G.detach().numpy().T), rtol=1e-4, atol=1e-9)
    fig = fp.fig1_covariance(f1["main"]["cov"])
    heat = [t for t in fig.data if t.meta["kind"] == "covariance"][0]
    assert np.asarray(heat.z).shape == (8, 8)
    assert len([t for t in fig.data if t.meta["kind"] == "eigenvalues"][0].y) <= 8
    D = 4 * settings.fig1_wide[1]
    off = fp.fig1_offdiag(f1["wide"]["cov"])
    kinds = {t.meta["kind"]: t for t in off.data}
    assert len(kinds["offdiag"].x) == D * (D - 1) // 2 and len(kinds["diag"].x) == D
    assert np.mean(kinds["diag"].x) == pytest.approx(1.0, rel=1e-5)     # divided by the mean diagonal


def test_observability_rows_and_plot_from_a_real_model(bank):
    """Observability has one row per (width, n), at the middle position k = 1 of a ResNet-8 (D = w
    channels after summing over space), and the plot one trace per width (or n) and metric."""
    settings = _settings()
    rows = observability_data(bank, settings)
    assert [(r["width"], r["n"], r["D"], r["position"]) for r in rows] == [(2, 8, 2, 1), (2, 16, 2, 1),
                                                                          (4, 8, 4, 1), (4, 16, 4, 1)]
    assert all(-1 <= r["cosine_split_mean"] <= 1 for r in rows)
    fig = fp.observability_plot(rows, x="n")
    z = [t for t in fig.data if t.meta["kind"] == "z"]
    assert [t.meta["width"] for t in z] == [2, 4] and all(len(t.x) == 2 for t in z)
    by_width = fp.observability_plot(rows, x="width")
    assert [t.meta["n"] for t in by_width.data if t.meta["kind"] == "snr"] == [8, 16]


def test_last_position_summed_over_space_is_the_head_input_gradient(bank):
    """With global average pooling, the spatially summed activation gradient after the last block equals
    the head-input gradient (softmax - e_y)' W_head, so obs_position = num_blocks observes the head input."""
    from resx.theory.signals import activation_gradients, head_input_gradients
    settings = _settings()
    model, data = bank.get(settings.config(1, 4))
    _, (g,) = activation_gradients(model, data.T.x, data.T.y, positions=[len(model.blocks)], sum_spatial=True,
                                   keep_acts=False)
    torch.testing.assert_close(g, head_input_gradients(model, data.T.x, data.T.y), rtol=1e-4, atol=1e-6)
    rows = observability_data(bank, _settings(obs_position=3, obs_widths=(4,)))
    assert {r["D"] for r in rows} == {16}


def test_observability_rows_null_and_signal():
    """On pure noise snr ~ 1 and z_unbiased ~ 0; with a mean, snr grows about linearly in n (1 + n ||mu||^2 / tr)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(40 * 256, 16, generator=g)
    rows = observability_rows(noise, ns=(64, 256), repeats=40, seed=1)
    for r in rows:
        assert r["snr_mean"] == pytest.approx(1.0, abs=4 * r["snr_sd"] / math.sqrt(40))
        assert abs(r["z_unbiased_mean"]) < 4 * r["z_unbiased_sd"] / math.sqrt(40)
    signal = noise + 0.25                             # ||mu||^2 / tr Sigma = 16 * 0.0625 / 16 = 0.0625
    small, large = observability_rows(signal, ns=(64, 256), repeats=40, seed=1)
    assert small["snr_mean"] == pytest.approx(1 + 64 * 0.0625, rel=0.2)
    assert large["snr_mean"] == pytest.approx(1 + 256 * 0.0625, rel=0.2)


def test_figure3_cells_from_real_pipeline_runs_and_the_bank_reuses_their_models(bank):
    """A 1 x 1 x 2 grid run through the pipeline gives cells whose predicted improvement is Delta_R + Delta_ERM,
    whose certified improvement is L(f_old) minus route B's bound, and whose base model joins the bank and
    reproduces the cell's test loss."""
    settings = _settings(fig3_depths=(1,), fig3_widths=(2,), fig3_seeds=(0, 1), fig3_expand=True)
    cells = figure3_data(bank, settings)
    assert [(c["depth"], c["width"], c["seed"], c["status"]) for c in cells] == [(1, 2, 0, "done"), (1, 2, 1, "done")]
    for c in cells:
        assert c["predicted_improvement"] == pytest.approx(c["Delta_R"] + c["Delta_ERM"])
        assert c["certified_improvement_B"] == pytest.approx(c["predicted_improvement"] - 2 * (c["eps_M"] + c["eps_K"]),
                                                             rel=1e-9, abs=1e-9)
        assert c["position"] == 1 and isinstance(c["inserted_observed"], bool)
        assert c["test_risk"] == "L_pop" and c["test_loss_old"] == c["L_pop_old"]   # synthetic: population risk
        cfg = settings.config(1, 2, c["seed"])
        assert cfg in bank
        model, data = bank.get(cfg)
        assert risk(model, data.T).loss == pytest.approx(c["L_T_old"], rel=1e-5)
    f3 = figure3_from_cells(cells)
    assert f3["summary"][0]["test_loss_old_count"] == 2
    theory = f3["theory"]
    pts = [t for t in theory.data if t.meta["kind"] == "cells"]
    assert sum(len(t.x) for t in pts) == 1
    assert pts[0].y[0] == pytest.approx(np.mean([c["test_loss_old"] - c["test_loss_new"] for c in cells]), rel=1e-5)


def test_fig3_scaling_panels_and_seed_bands():
    """Figure 3 has a depth panel (one line per width) and a width panel (one line per depth), base and
    expanded, with a band exactly when a cell has more than one seed; means and sds are over seeds."""
    cells = []
    for depth in (1, 2, 3):
        for width in (4, 8):
            for seed in (0, 1):
                cells.append({"depth": depth, "width": width, "n": 100, "seed": seed,
                              "test_loss_old": 2.0 - 0.1 * depth - 0.05 * width + 0.01 * seed,
                              "test_loss_new": 1.9 - 0.1 * depth - 0.05 * width})
    fig = fp.fig3_scaling(cells)
    old = [t for t in fig.data if t.meta["kind"] == "test_loss_old"]
    assert sorted((t.meta["panel"], len(t.x)) for t in old) == [("depth", 3), ("depth", 3), ("width", 2),
                                                               ("width", 2), ("width", 2)]
    assert len([t for t in fig.data if t.meta["kind"] == "band"]) == 10     # one per line: 5 groups x (base, expanded)
    first = [t for t in old if t.meta["panel"] == "depth" and t.meta["width"] == 4][0]
    assert first.y[0] == pytest.approx(2.0 - 0.1 - 0.2 + 0.005)
    rows = fp.aggregate_cells(cells, ["test_loss_old"])
    assert rows[0]["test_loss_old_sd"] == pytest.approx(0.01 / math.sqrt(2))
    single = fp.fig3_scaling([c for c in cells if c["seed"] == 0])
    assert not [t for t in single.data if t.meta["kind"] == "band"]


def test_figure3_from_sweep_style_cells_uses_the_certified_improvement():
    """Cells that carry route_B_bound but no predicted_improvement (a sweep's) are mapped with
    certified_improvement_B = test_loss_old - route_B_bound, coloured by route_B_verdict."""
    cells = [{"depth": 1, "width": w, "n": 10, "seed": s, "test_loss_old": 2.0, "test_loss_new": 1.9 + 0.01 * s,
              "route_B_bound": 5.0 + w, "route_B_verdict": "not_certified"} for w in (4, 8) for s in (0, 1)]
    f3 = figure3_from_cells(cells)
    assert f3["predicted"] == "certified_improvement_B"
    pts = [t for t in f3["theory"].data if t.meta["kind"] == "cells"]
    assert pts[0].meta["verdict"] == "not_certified"
    assert sorted(pts[0].x) == pytest.approx([2.0 - 13.0, 2.0 - 9.0])
    assert list(pts[0].y) == pytest.approx([0.095, 0.095])


def test_figure3_from_cells_rejects_cells_without_the_required_keys():
    """A cell missing a required key raises a ValueError naming the cell and the key."""
    with pytest.raises(ValueError, match=r"cell 1 lacks \['seed'\]"):
        figure3_from_cells([{"depth": 1, "width": 4, "n": 10, "seed": 0, "test_loss_old": 1.0, "test_loss_new": 1.0},
                            {"depth": 1, "width": 4, "n": 10, "test_loss_old": 1.0, "test_loss_new": 1.0}])


def test_settings_validate_every_model_configuration():
    """An out-of-range width in any figure's models raises ConfigError naming the field."""
    with pytest.raises(ConfigError, match="width"):
        _settings(obs_widths=(2, 1000))
    with pytest.raises(ConfigError, match="obs_ns"):
        _settings(obs_ns=(2,))


def test_make_figures_writes_html_png_csv_and_json(tmp_path):
    """The `figures --quick` function at an even smaller size writes every HTML, the PNGs when kaleido
    works (else a reason), table3.csv with the 8 GPT-3 rows, cells.csv and figures.json."""
    torch.set_num_threads(1)
    settings = _settings(fig2_depths=(1,), obs_widths=(2,), fig3_depths=(1, 2), fig3_widths=(2, 4), fig3_seeds=(0,))
    result = make_figures(tmp_path, settings)
    stems = ["fig3_scaling", "allocation_fit", "fig1_covariance", "fig1_offdiag", "fig2_signal_decay",
             "observability_n", "observability_width", "table3"]
    for stem in stems:
        assert (tmp_path / f"{stem}.html").stat().st_size > 1000
    assert (tmp_path / "plotly.min.js").exists()          # include_plotlyjs="directory": works offline
    png = result["png"]
    if png["ok"]:
        for stem in stems:
            assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert png["reason"]
    with (tmp_path / "table3.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and rows[-1]["model"] == "GPT-3 175B"
    with (tmp_path / "cells.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
    saved = json.loads((tmp_path / "figures.json").read_text())
    assert len(saved["fig2"][0]["s"]) == 4 and saved["settings"]["base"]["n"] == TINY.n
    assert saved["allocation_fit"]["law"]["n_points"] == 2


def test_figures_subcommand_parses_and_builds_quick_settings():
    """add_figures_parser registers `figures`; --quick gives the quick grid and the handler is cmd_figures."""
    parser = argparse.ArgumentParser()
    add_figures_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["figures", "--out", "x", "--quick", "--widths", "4,8,16", "--no-png"])
    from resx.scale.paper_figures import cmd_figures, settings_from_args
    assert args.func is cmd_figures and args.no_png
    s = settings_from_args(args)
    assert s.fig3_widths == (4, 8, 16) and s.fig3_depths == (1, 2) and s.base.n == 1000


def test_a_missing_cifar_folder_is_a_clear_data_error(tmp_path, monkeypatch):
    """--dataset cifar10 without its files raises DataError naming the folder (the CLI prints it as one line)."""
    from resx.core.data import DataError
    monkeypatch.setenv("RESX_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("RESX_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(DataError, match="nowhere"):
        make_figures(tmp_path / "out", FigureSettings.quick(dataset="cifar10", device="cpu"), only=["fig1"], png=False)
