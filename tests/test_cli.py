"""The command line: a real run writes a valid result.json; bad input gets one clear line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from resx.core.config import RunConfig
from resx.runs.pipeline import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["n=300", "n_probe=200", "n_test=200", "n_pop=2048", "m_cert=8192", "epochs=2", "finetune_epochs=1", "width=16"]


def _resx(*args, env=None):
    return subprocess.run([sys.executable, "-m", "resx", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_run_demo_mlp_writes_a_valid_result(tmp_path):
    """`run --preset demo-mlp` with small overrides writes result.json with every required key and loadable checkpoints."""
    args = ["run", "--preset", "demo-mlp", "--out", str(tmp_path)]
    for s in SMALL:
        args += ["--set", s]
    proc = _resx(*args, env={"RESX_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    cfg = RunConfig.from_dict(result["config"])
    assert cfg.n == 300 and cfg.width == 16
    assert result["status"] == "done"
    for name in ("old", "new", "control"):
        r = result[name]
        assert set(r) >= {"L_S", "L_T", "L_pop", "L_pop_se"}
        assert r["L_pop"] > 0 and r["L_pop_se"] > 0
    ins = result["insertion"]
    assert ins["position"] == cfg.position and ins["max_abs_logit_diff"] < 1e-4
    assert ins["live_parameters"] == [f"blocks.{cfg.position}.w2.weight", f"blocks.{cfg.position}.w2.bias"]
    assert result["timings"]["train_base"] > 0
    _check_theory_keys(result, cfg)
    new = load_checkpoint(tmp_path, "new", cfg, result["input_shape"], result["num_classes"])
    assert len(new.blocks) == cfg.depth + 1
    x = torch.randn(4, *result["input_shape"])
    assert new(x).shape == (4, result["num_classes"])


def test_bad_input_gets_one_clear_line_and_exit_2(tmp_path):
    """An invalid value or a missing data folder prints one 'error:' line naming the problem, no traceback."""
    proc = _resx("run", "--set", "depth=0", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "error: depth=0 is not allowed" in proc.stderr and "Traceback" not in proc.stderr
    env_missing = {"RESX_DATA_DIR": str(tmp_path / "nowhere")}
    proc = _resx("run", "--preset", "cifar10-resnet8", "--no-store", "--out", str(tmp_path), env=env_missing)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nowhere") in proc.stderr


def test_presets_lists_every_preset():
    """`presets` prints every preset with its configuration as JSON."""
    proc = _resx("presets")
    assert proc.returncode == 0
    for name in ("demo-mlp", "mechanism-resnet", "demo-resnet", "cifar10-resnet8", "cifar100-resnet8"):
        assert name in proc.stdout


def test_cli_runs_land_in_the_store_and_export(tmp_path):
    """A command-line run is recorded in the store; `runs list/show/export` read it back."""
    env = {"RESX_HOME": str(tmp_path)}
    args = ["run", "--set", "n=200", "--set", "n_pop=1024", "--set", "m_cert=2048", "--set", "epochs=1", "--set", "finetune_epochs=1"]
    run = _resx(*args, env=env)
    assert run.returncode == 0
    assert "route A" in run.stdout and not run.stdout.startswith("{")
    listing = _resx("runs", "list", env=env)
    run_id = listing.stdout.split()[0]
    assert "done" in listing.stdout
    assert f"run {run_id}: done" in _resx("runs", "show", run_id, env=env).stdout  # a table for people
    shown = json.loads(_resx("runs", "show", run_id, "--json", env=env).stdout)
    assert shown["status"] == "done" and shown["result"]["config"]["n"] == 200
    out = tmp_path / "export.json"
    assert _resx("runs", "export", run_id, "--json", "--out", str(out), env=env).returncode == 0
    exported = json.loads(out.read_text())
    assert any(m["name"] == "loss" and m["split"] == "pop" for m in exported["metrics"])
    assert (tmp_path / "runs" / run_id / "result.json").exists()
    missing = _resx("runs", "show", "no-such-run", env=env)
    assert missing.returncode == 2 and "no-such-run" in missing.stderr


def _check_theory_keys(result, cfg):
    """The theory keys of result.json are there, and the route bounds equal their formulas."""
    margins = result["margins"]
    assert [m["position"] for m in margins] == list(range(cfg.num_positions))
    for m in margins:
        assert set(m) >= {"kappa2_U", "kappa2_U_se", "kappa2_cross", "kappa2_cross_se", "kappa2_train_naive",
                          "kappa2_train_U", "observed", "kappa2_pop", "kappa2_pop_se"}
        assert m["observed"] == (m["kappa2_U_lcb"] > 0)
    jb = result["jumpboard"]
    assert set(jb) >= {"eta", "line_search", "curve"} and jb["curve"][0]["eta"] == 0
    assert set(jb["line_search"]) >= {"L_S_at_eta", "L_P2_at_eta", "L_T_at_eta", "L_pop_curve_at_eta"}
    t = result["terms"]
    assert set(t) >= {"Delta_R", "Delta_R_T", "Delta_ERM", "eps_M", "eps_K", "hoeffding", "c", "delta", "bound_name"}
    L_old = result["old"]["L_pop"]
    assert abs(t["Delta_R"] - (L_old - result["f_J"]["L_pop"])) < 1e-6   # paired on one population sample
    assert abs(t["Delta_ERM"] - (result["f_J"]["L_S"] - result["new"]["L_S"])) < 1e-9
    A, B = result["routes"]["A"], result["routes"]["B"]
    assert t["Delta_R_used"] <= t["Delta_R"] and "Monte Carlo" in t["Delta_R_source"]   # review I7
    base = L_old - t["Delta_R_used"] - t["Delta_ERM"]
    assert abs(A["bound"] - (base + 2 * t["eps_M"] + t["hoeffding"])) <= 1e-9 * abs(A["bound"])
    assert abs(B["bound"] - (base + 2 * (t["eps_M"] + t["eps_K"]))) <= 1e-9 * abs(B["bound"])
    for route in (A, B):
        gain, cost = t["Delta_R_used"] + t["Delta_ERM"], route["cost"]
        arithmetic = "strict" if gain > cost else "not_certified" if gain < cost else "no_worse"
        assert route["arithmetic_verdict"] == arithmetic
        assert route["heuristic"] and not route["valid"]     # mlp: the LayerNorm peel is not a theorem
        assert route["verdict"] == "not_certified"            # so a route never certifies here
    cert = result["certificates"]
    pairs = cert["holdout"]["pairs"]
    assert [p["statement"] for p in pairs] == ["L(f_J) < L(f_old)", "L(f_new) < L(f_old)", "L(f_new) < L(control)"]
    assert cert["holdout"]["m"] == cfg.m_cert and cert["holdout"]["delta_each"] == cfg.delta / 3
    for p in pairs:
        assert p["certified"] == (p["ucb"] < 0) and p["ucb"] > p["mean"] and p["clipped_a"] == p["clipped_b"] == 0
    assert cert["pac_bayes"]["available"] and cert["pac_bayes"]["bound"] > 0
    assert cert["tightest"] in [i["name"] for i in cert["items"]]
    rows = {r["model"]: r for r in result["headline"]["rows"]}
    assert abs(rows["f_J"]["difference"] + t["Delta_R"]) < 1e-6      # the same paired difference, other sign
