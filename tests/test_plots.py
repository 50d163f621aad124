"""Figure functions: pure data -> plotly figures, with the traces a reader relies on."""
import numpy as np

from resx.figures.live import (curves_version, downsample, heatmap_version, margin_heatmap, route_waterfall,
                               training_curves)
from resx.core.records import Record


def _history(steps):
    out = []
    for phase, n in (("base", steps), ("new", steps // 10), ("control", steps // 10)):
        for s in range(n):
            for split in ("S", "T", "pop"):
                out.append(Record(phase, s, split, "loss", 2.0 - s / n, 0.01 if split == "pop" else None))
    return out


def test_long_histories_are_downsampled_and_keep_the_last_point():
    """A 10,000-step series is cut to at most MAX_POINTS and its last point survives."""
    x = np.arange(10_000, dtype=np.float32)
    xs, ys = downsample(x, x * 2)
    assert len(xs) <= 2001 and xs[-1] == 9999 and ys[-1] == 19998


def test_training_curves_mark_the_insertion_and_band_the_population():
    """Curves exist for every split and phase, the population has a standard-error band, and the insertion is marked."""
    fig = training_curves(_history(100))
    names = [t.name for t in fig.data if t.name]
    assert {"L<sub>S</sub> (train)", "L (population)", "L<sub>T</sub> (test), expanded", "L<sub>T</sub> (test), control"} <= set(names)
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(bands) == 3
    assert fig.layout.shapes and fig.layout.shapes[0].x0 == 99


def test_margin_heatmap_places_each_record_at_its_position_and_step():
    """The heatmap's cell (position k, step s) holds the record for k at s; missing cells stay empty."""
    rs = [Record("margins", s, "P", "kappa2_U", float(10 * k + s), 0.1, k) for k in range(3) for s in (0, 5)]
    rs = rs[:-1]
    z = np.array(margin_heatmap(rs).data[0].z)
    assert z[1, 1] == 15 and z[0, 0] == 0 and np.isnan(z[2, 1])


def test_vacuous_routes_switch_to_a_log_scale():
    """A route whose terms dwarf L(f_old) is drawn on a log axis; a tight one stays a waterfall ending at the bound."""
    tight = {"steps": [["L(f_old)", 1.0], ["- Delta_R", -0.1], ["+ 2 eps_M", 0.05], ["bound", 0.95]]}
    fig = route_waterfall(tight, observed=0.9)
    assert fig.data[0].type == "waterfall" and list(fig.data[0].measure)[-1] == "total"
    vacuous = {"steps": [["L(f_old)", 1.0], ["- Delta_R", -0.1], ["+ 2 eps_M", 3e7], ["bound", 3e7 + 0.9]]}
    fig = route_waterfall(vacuous)
    assert fig.data[0].type == "bar" and fig.layout.xaxis.type == "log"
    assert "vacuous" in fig.layout.title.text


def test_a_figure_version_moves_exactly_when_its_figure_would_change():
    """Batch losses, learning rates and progress (every tick) leave both versions and both figures'
    JSON as they were; a new loss record, the insertion, or a new margin record changes the
    version and the figure."""
    base = [Record("base", s, split, "loss", 2.0 - s / 10, 0.01 if split == "pop" else None)
            for s in range(5) for split in ("S", "T", "pop")]
    base += [Record("margins", s, "P", "kappa2_U", 0.1 * s, position=p) for s in (0, 2) for p in range(3)]
    ticks = base + [Record("base", 5, "S", "batch_loss", 1.4), Record("base", 5, "", "lr", 0.1),
                    Record("base", 5, "", "progress", 0.5), Record("margins", 2, "P", "kappa2_X", 0.3, position=1)]
    assert curves_version(ticks) == curves_version(base)
    assert training_curves(ticks).to_json() == training_curves(base).to_json()
    assert heatmap_version(ticks) == heatmap_version(base)
    assert margin_heatmap(ticks).to_json() == margin_heatmap(base).to_json()
    for more in ([Record("base", 5, "T", "loss", 1.3)], [Record("insert", 0, "S", "max_abs_logit_diff", 0.0)]):
        assert curves_version(base + more) != curves_version(base)
        assert training_curves(base + more).to_json() != training_curves(base).to_json()
    more = [Record("margins", 4, "P", "kappa2_U", 0.5, position=0)]
    assert heatmap_version(base + more) != heatmap_version(base)
    assert margin_heatmap(base + more).to_json() != margin_heatmap(base).to_json()
