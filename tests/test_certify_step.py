"""The certify step on request (issue 25): runs that skip it say so, certify later from their
checkpoints to the same numbers, keep an honest content address, and the step's sample size follows
the pilot's prediction within its cap."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resx.core.config import RunConfig
from resx.core.data import load_data
from resx.core.train import draw_population, per_sample_losses
from resx.runs.cache import run_key
from resx.runs.certify import M_CERT_MIN, PILOT_MARGIN, certification_size, holdout_certificates
from resx.runs.pipeline import CertifyError, certify_saved_run, run_pipeline
from resx.runs.store import Store
from resx.scale.executors import InlineExecutor
from resx.scale.sweep import SweepSpec, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SMALL = RunConfig(depth=2, width=16, position=1, n=256, n_probe=256, n_test=256, n_pop=4096, epochs=2,
                  finetune_epochs=1, m_cert=4096, seed=3)


@pytest.fixture(scope="module")
def skipped(tmp_path_factory):
    """A small run with certify=false, its folder kept."""
    out = tmp_path_factory.mktemp("skipped")
    return out, run_pipeline(SMALL.replace(certify=False), out_dir=out)


def test_a_run_without_certify_says_so_and_certifying_it_later_gives_what_certifying_at_once_gives(skipped,
                                                                                                  tmp_path):
    """certify=false leaves a 'not computed' section (no certify timing), and certify_saved_run on its
    folder gives exactly the certificates of the same run with certify=true, writing them to result.json."""
    out, result = skipped
    assert result["certificates"]["computed"] is False and "certify" in result["certificates"]["note"]
    assert "certify" not in result["timings"] and result["headline"]["rows"]   # the headline is always there
    at_once = run_pipeline(SMALL, out_dir=tmp_path)
    later = certify_saved_run(out)
    a, b = at_once["certificates"], later["certificates"]
    assert a["computed"] and b["computed"]
    for p, q in zip(a["holdout"]["pairs"], b["holdout"]["pairs"]):
        assert (p["statement"], p["m"], p["certified"]) == (q["statement"], q["m"], q["certified"])
        assert p["mean"] == pytest.approx(q["mean"], abs=1e-12) and p["ucb"] == pytest.approx(q["ucb"], abs=1e-12)
    assert a["pac_bayes"]["bound"] == pytest.approx(b["pac_bayes"]["bound"], rel=1e-9)
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk["certificates"]["computed"] is True and on_disk["timings"]["certify"] > 0


def test_certifying_later_refuses_a_folder_without_checkpoints_and_names_what_is_missing(skipped, tmp_path):
    """A folder with result.json but no checkpoints, or a run that did not finish, gets a one-line error."""
    out, result = skipped
    (tmp_path / "result.json").write_text((out / "result.json").read_text())
    with pytest.raises(CertifyError, match="old.pt"):
        certify_saved_run(tmp_path)
    with pytest.raises(CertifyError, match="cancelled"):
        certify_saved_run(out, result | {"status": "cancelled"})


def test_runs_that_compute_different_things_have_different_content_addresses():
    """certify is part of the configuration, so a run that certified and one that did not never share
    a cache entry."""
    assert run_key(SMALL.to_dict()) != run_key(SMALL.replace(certify=False).to_dict())
    assert RunConfig.from_dict({k: v for k, v in SMALL.to_dict().items() if k != "certify"}).certify is True


def _models_and_data(result_dir: Path, result: dict):
    from resx.runs.pipeline import load_checkpoint
    cfg = RunConfig.from_dict(result["config"])
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, torch.device("cpu"))
    population = draw_population(data, cfg.n_pop, seed=cfg.seed + 10_007)
    models = {("f_J" if n == "jumpboard" else n): load_checkpoint(result_dir, n, cfg, result["input_shape"],
                                                                  result["num_classes"])
              for n in ("old", "new", "control", "jumpboard")}
    return cfg, data, population, models


def test_the_sample_size_covers_the_pilots_prediction_within_the_cap(skipped):
    """m is at least PILOT_MARGIN times the largest predicted m_to_certify that fits under the cap (or
    M_CERT_MIN), never above the cap m_cert; on real data it is |T|."""
    out, result = skipped
    cfg, data, population, models = _models_and_data(out, result)
    from resx.theory.bounds import loss_bound
    ranges = {n: loss_bound(m, data.S.x, cfg.arch) for n, m in models.items()}
    for cap in (64, 4096, 1 << 20):
        size = certification_size(cfg.replace(m_cert=cap), data, population, models, ranges, averaged=True)
        fits = [m for m in size["predicted_m_to_certify"].values() if m is not None and m <= cap]
        assert size["m"] <= cap
        assert size["m"] >= min(cap, max([M_CERT_MIN] + [math.ceil(PILOT_MARGIN * m) for m in fits]))
    real = certification_size(cfg, data.__class__(**{**data.__dict__, "sampler": None}), None, models, ranges, False)
    assert real["m"] == len(data.T)


def test_label_averaged_holdout_has_the_labels_mean_and_less_variance(skipped):
    """On the teacher task (c bounds every loss) the hold-out differences are E[l_b - l_a | x]: their
    mean agrees with the labelled differences on a fresh population sample within 4 standard errors,
    and their spread is smaller."""
    out, result = skipped
    cfg, data, population, models = _models_and_data(out, result)
    hold = holdout_certificates(cfg.replace(m_cert=8192), data, models, population)
    assert hold["label_averaged"] is True
    fresh = draw_population(data, 1 << 16, seed=99)
    labelled = (per_sample_losses(models["f_J"], fresh.x, fresh.y)[0].double()
                - per_sample_losses(models["old"], fresh.x, fresh.y)[0].double())
    pair = next(p for p in hold["pairs"] if (p["a"], p["b"]) == ("old", "f_J"))
    se = math.hypot(pair["se"], labelled.std().item() / math.sqrt(len(labelled)))
    assert abs(pair["mean"] - labelled.mean().item()) < 4 * se
    assert pair["se"] * math.sqrt(pair["m"]) < labelled.std().item()


def test_sweep_cells_skip_the_certify_step_keep_their_checkpoints_and_certify_later(tmp_path, monkeypatch):
    """A sweep's cells do not certify unless asked; each keeps its checkpoints in the store, and
    `python -m resx certify RUN_ID` then certifies it (exit 0) and stores the certificates."""
    monkeypatch.setenv("RESX_HOME", str(tmp_path))
    store = Store(tmp_path)
    spec = SweepSpec(SMALL, depths=(1,), widths=(8, 16))
    assert not any(c.certify for c in spec.cells()) and all(c.certify for c in SweepSpec(SMALL, (1,), (8,),
                                                                                        certify=True).cells())
    cells = run_sweep(spec, InlineExecutor(), store=store)
    assert [c["status"] for c in cells] == ["done", "done"]
    run_id = cells[0]["run_id"]
    assert store.get_run(run_id)["result"]["certificates"]["computed"] is False
    assert {a["name"] for a in store.artifacts(run_id)} >= {"old.pt", "new.pt", "control.pt", "jumpboard.pt"}
    env = {**os.environ, "RESX_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "resx", "certify", run_id], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "hold-out" in proc.stdout
    assert Store(tmp_path).get_run(run_id)["result"]["certificates"]["computed"] is True
    bad = subprocess.run([sys.executable, "-m", "resx", "certify", "no-such-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no-such-run" in bad.stderr and "Traceback" not in bad.stderr


def test_figure_cells_certify_only_when_asked():
    """The figures' recipe skips the certify step; --certify turns it on."""
    from resx.cli import make_parser
    from resx.scale.paper_figures import settings_from_args
    parse = make_parser().parse_args
    assert settings_from_args(parse(["figures", "--out", "x", "--quick"])).base.certify is False
    assert settings_from_args(parse(["figures", "--out", "x", "--quick", "--certify"])).base.certify is True


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_models_sharing_the_blocks_before_the_insertion_get_their_own_losses_from_one_prefix_pass(arch):
    """losses_of: f_new and f_J with f_old's stem and blocks[:k] (only the new block trained) get
    bit-identical losses to their own forward passes; a model with other weights there is not shared."""
    from resx.core.models import build_model, insert_block
    from resx.core.train import losses_of, same_prefix
    torch.manual_seed(0)
    shape, k = ((3, 8, 8), 2) if arch == "resnet" else ((12,), 1)
    cfg = RunConfig(dataset="shapes" if arch == "resnet" else "teacher", arch=arch, depth=1 if arch == "resnet" else 3,
                    width=4, position=k)
    old = build_model(cfg, shape, 10)
    x, y = torch.randn(300, *shape), torch.randint(0, 10, (300,))
    new, _ = insert_block(old, k, x, y, seed=0)
    with torch.no_grad():
        for p in new.blocks[k].parameters():
            p.add_(0.1 * torch.randn_like(p))   # a trained new block
    other = build_model(cfg, shape, 10)
    assert same_prefix(old, new, k) and not same_prefix(old, other, k)
    got = losses_of({"old": old, "new": new, "other": other}, k, x, y)
    for name, model in (("old", old), ("new", new), ("other", other)):
        assert torch.equal(got[name], per_sample_losses(model, x, y)[0])
    assert not torch.equal(got["new"], got["old"])
