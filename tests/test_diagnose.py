"""resx.diagnose / expand on torchvision's own ResNets, the user's weights, and the digits dataset (issue 26).

Tiny sizes throughout: 16x16 images, a few dozen points; torchvision's classes built here, as a
user builds them, are the independent side of every comparison."""
import math
import pathlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

import resx
from resx.core.config import RunConfig
from resx.core.data import DataError, Split, load_data
from resx.core.models import build_model, candidate_blocks, insert_block
from resx.core.weights import check_state_dict, read_state_dict
from resx.theory.diagnose import as_blocks, diagnose, diagnose_one_at_a_time
from resx.runs.cache import run_key
from resx.theory.kink import split_halves


def tiny(block, seed=0, dtype=torch.float32):
    """A torchvision ResNet with one block per stage, as `torchvision.models.ResNet(block, [1, 1, 1, 1])`."""
    torch.manual_seed(seed)
    return ResNet(block, [1, 1, 1, 1], num_classes=5).to(dtype)


def sample(n, seed, dtype=torch.float32, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_zero_block_preserves_torchvision_resnets(block):
    """Inserting the zero block at any position leaves torchvision's own forward unchanged (<= 1e-5)
    and leaves the user's model as it was."""
    model = tiny(block)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = sample(24, 1)
    xp, yp = sample(16, 2)
    found = diagnose(model, x, y, xp, yp)
    assert [r["position"] for r in found["positions"]] == list(range(5))
    assert found["preservation"] <= 1e-5 and found["preserved"]
    model.eval()
    reference = model(x)
    view = as_blocks(model)
    for k in (0, 2, 4):                                      # after the stem, at a stage boundary, the last
        f_new, _ = insert_block(view, k, x, y, block=candidate_blocks(view, [k], x, 0)[k])
        tv = f_new.to_torchvision(model).eval()            # torchvision's class, one stage one block longer
        assert type(tv) is ResNet and sum(len(getattr(tv, f"layer{s}")) for s in range(1, 5)) == 5
        assert (tv(x) - reference).abs().max().item() <= 1e-5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("block,k", [(BasicBlock, 2), (Bottleneck, 3)])
def test_one_sided_slope_matches_finite_differences_on_a_torchvision_block(block, k):
    """D_P2(d_hat) from the one-pass test equals the limit of (L_P2(t d_hat) - L_P2(0)) / t, measured
    on torchvision's forward with the block's last BN set to t d_hat, and differs from autograd's
    <G, d_hat> by the ReLU-kink term (so ignoring the kink would fail this test)."""
    dtype = torch.float64
    model = tiny(block, seed=3, dtype=dtype).eval()
    x, y = sample(24, 4, dtype)
    xp, yp = sample(40, 5, dtype)
    row = diagnose(model, x, y, xp, yp, positions=[k])["positions"][0]
    assert row["direction"] is not None
    view = as_blocks(model)
    f_new, _ = insert_block(view, k, x, y, block=candidate_blocks(view, [k], x, 0)[k])
    tv = f_new.to_torchvision(model).eval()
    s, j = view.blocks.locate(k)
    bn = getattr(tv, f"layer{s}")[j].bn3 if block is Bottleneck else getattr(tv, f"layer{s}")[j].bn2
    d_w, d_b = (v.to(dtype) for v in row["direction"].values())
    P2 = split_halves(Split(xp, yp), 0)[1]                 # the half the slope is tested on
    x2, y2 = P2.x, P2.y

    def loss(t):
        with torch.no_grad():
            bn.weight.copy_(t * d_w)
            bn.bias.copy_(t * d_b)
            return F.cross_entropy(tv(x2), y2).item()

    L0 = loss(0.0)
    errors = [abs((loss(t) - L0) / t - row["slope_cross"]) for t in (1e-3, 1e-4, 1e-5)]
    assert errors[-1] <= 1e-4 * max(1.0, abs(row["slope_cross"])) and errors[-1] <= errors[0]
    loss(0.0)
    bn.weight.requires_grad_(True)
    bn.bias.requires_grad_(True)
    gw, gb = torch.autograd.grad(F.cross_entropy(tv(x2), y2), [bn.weight, bn.bias])
    smooth = ((gw * d_w).sum() + (gb * d_b).sum()).item()
    assert abs(smooth - row["slope_cross"]) > 10 * errors[-1]


def test_one_pass_equals_one_insertion_at_a_time():
    """All positions from one pass give the numbers each position gives on its own expanded model."""
    model = tiny(BasicBlock, seed=6)
    x, y = sample(16, 6)
    xp, yp = sample(24, 7)
    fast = diagnose(model, x, y, xp, yp)
    slow = diagnose_one_at_a_time(model, x, y, xp, yp)
    assert len(fast["positions"]) == len(slow["positions"]) == 5
    for a, b in zip(fast["positions"], slow["positions"]):
        for key in ("slope_cross", "slope_cross_se", "kappa2_U", "kappa2_U_se"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-12), (a["position"], key)
        assert a["descent_observable"] == b["descent_observable"]
    assert fast["best"] == slow["best"]


def test_expand_returns_a_new_torchvision_module():
    """expand returns f_J as torchvision's class with one more block, its line search, and leaves
    the user's model untouched; eta* = 0 gives back f exactly."""
    model = tiny(BasicBlock, seed=8).eval()
    x, y = sample(24, 9)
    xp, yp = sample(24, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = resx.expand(model, x, y, xp, yp, position=1, x_test=xp, y_test=yp)
    f_J = out["model"].eval()
    assert type(f_J) is ResNet and len(f_J.layer1) == 2 and f_J is not model
    curve = out["line_search"]["curve"]
    assert curve[0]["eta"] == 0.0 and out["eta"] in [r["eta"] for r in curve]
    best = min(curve, key=lambda r: r["L_P"])
    assert best["eta"] == out["eta"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if out["eta"] == 0.0:
        assert (f_J(x) - model(x)).abs().max().item() <= 1e-5


def test_small_resnet18_state_dict_loads_into_torchvisions_own_class():
    """arch=resnet18's model is torchvision's resnet18 with conv1 3x3 stride 1 and no max-pool: its
    state dict loads strictly into that class built by hand, and computes the same function."""
    cfg = RunConfig(dataset="digits", arch="resnet18", n=8, n_probe=8, n_test=8, position=3)
    torch.manual_seed(0)
    ours = build_model(cfg, (1, 8, 8), 10).eval()
    theirs = torchvision.models.resnet18(num_classes=10)
    theirs.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    theirs.maxpool = nn.Identity()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    check_state_dict(ours, theirs.state_dict(), "resnet18")   # and back: no DataError
    with pytest.raises(DataError, match=r"'conv1.weight' has shape \(64, 3, 7, 7\)"):
        check_state_dict(ours, torchvision.models.resnet18(num_classes=10).state_dict(), "resnet18")
    state = ours.state_dict()
    state.pop("layer2.0.downsample.0.weight")
    with pytest.raises(DataError, match="'layer2.0.downsample.0.weight' is missing"):
        check_state_dict(ours, state, "resnet18")


class Payload:
    """Unpickling this runs pathlib.Path.touch(marker): the side effect shows whether it ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_malicious_pickle_is_refused_without_running(tmp_path, capsys):
    """A weights file whose unpickling would call a function is refused by read_state_dict and by
    `python -m resx run --init-weights` with one line, and the function never runs."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": Payload(marker)}, evil)
    with pytest.raises(DataError) as e:
        read_state_dict(evil)
    assert "weights only" in str(e.value) and "\n" not in str(e.value)
    from resx.cli import main
    assert main(["run", "--preset", "digits-mlp", "--init-weights", str(evil), "--no-store"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert not marker.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="could not be read as weights only"):
        read_state_dict(junk)
    with pytest.raises(DataError, match="the limit is"):
        read_state_dict(b"x" * 2048, max_bytes=1024)


def test_the_content_address_includes_the_weights(tmp_path):
    """Two weight files at the same path give two run keys; the same bytes give the same key."""
    path = tmp_path / "w.pt"
    cfg = RunConfig(dataset="digits", arch="resnet18", init_weights=str(path), epochs=0, n=8, n_probe=8, n_test=8)
    torch.save({"a": torch.zeros(2)}, path)
    first = run_key(cfg.to_dict(), version="v")
    assert run_key(cfg.to_dict(), version="v") == first
    torch.save({"a": torch.ones(2)}, path)
    assert run_key(cfg.to_dict(), version="v") != first


def test_digits_splits_are_disjoint_and_cover_the_dataset():
    """S, P, T are disjoint parts of one permutation: asking for all 1797 images returns each once."""
    from sklearn.datasets import load_digits
    cfg = RunConfig(dataset="digits", arch="mlp", n=1000, n_probe=500, n_test=297)
    data = load_data(cfg)
    assert (len(data.S), len(data.P), len(data.T)) == (1000, 500, 297)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10 and data.sampler is None
    ours = torch.cat([data.S.x, data.P.x, data.T.x]).flatten(1)
    theirs = torch.as_tensor(load_digits().data, dtype=torch.float32)
    ours = torch.round(ours * 0.3760 * 16 + 0.3053 * 16)             # undo the fixed standardisation
    key = lambda t: sorted(map(tuple, t.tolist()))                      # noqa: E731
    assert key(ours) == key(theirs)
    labels = torch.cat([data.S.y, data.P.y, data.T.y]).bincount()
    assert labels.tolist() == torch.as_tensor(load_digits().target).bincount().tolist()
    with pytest.raises(DataError, match="1797"):
        load_data(cfg.replace(n=1500))


def test_digits_pipeline_certifies_on_T():
    """A short digits-mlp run: dataset digits, L_T for every model, hold-out certificates on T."""
    from resx.core.config import PRESETS
    cfg = PRESETS["digits-mlp"].replace(n=300, n_probe=200, n_test=200, epochs=2, finetune_epochs=1, depth=2,
                                        position=1, width=32)
    result = resx.run_pipeline(cfg)
    assert result["status"] == "done" and result["config"]["dataset"] == "digits"
    for name in ("old", "new", "control", "f_J"):
        assert math.isfinite(result[name]["L_T"]) and result[name]["L_pop"] is None
    holdout = result["certificates"]["holdout"]
    assert holdout["m"] == 200 and "T" in holdout["sample"]


def test_a_run_starts_from_the_users_weights(tmp_path):
    """With init_weights and epochs=0 the run's old model is exactly the file's network (no base
    training), and its checkpoint loads back into the architecture."""
    from resx.core.config import PRESETS
    from resx.runs.pipeline import load_checkpoint
    cfg = PRESETS["digits-mlp"].replace(n=200, n_probe=100, n_test=100, depth=1, width=16, position=1,
                                        finetune_epochs=1)
    torch.manual_seed(11)
    mine = build_model(cfg, (1, 8, 8), 10)
    torch.save(mine.state_dict(), tmp_path / "mine.pt")
    cfg = cfg.replace(init_weights=str(tmp_path / "mine.pt"), epochs=0)
    result = resx.run_pipeline(cfg, out_dir=tmp_path / "run")
    assert result["status"] == "done"
    old = load_checkpoint(tmp_path / "run", "old", cfg, (1, 8, 8), 10)
    assert all(torch.equal(v, mine.state_dict()[k]) for k, v in old.state_dict().items())
    with pytest.raises(resx.ConfigError, match="epochs"):
        cfg.replace(init_weights="")


def test_saved_weights_are_named_by_their_hash_and_nothing_invalid_is_kept(tmp_path):
    """save_weights keeps valid bytes as <sha256>.pt (the same bytes: the same path) and keeps no
    file at all for bytes it refuses."""
    import hashlib
    import io
    from resx.core.weights import save_weights
    buf = io.BytesIO()
    torch.save({"w": torch.arange(3.0)}, buf)
    content = buf.getvalue()
    path = save_weights(content, tmp_path / "weights")
    assert path.name == hashlib.sha256(content).hexdigest() + ".pt"
    assert save_weights(content, tmp_path / "weights") == path and torch.equal(read_state_dict(path)["w"], torch.arange(3.0))
    evil = io.BytesIO()
    torch.save({"w": Payload(tmp_path / "ran")}, evil)
    with pytest.raises(DataError):
        save_weights(evil.getvalue(), tmp_path / "weights")
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [path.name]
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_the_line_search_shortcut_matches_torchvisions_forward(block):
    """The line search's stored-branch risks (tv_resnet.block_line) at eta equal torchvision's own
    forward with the new block's last BatchNorm at eta d."""
    from resx.core.train import StackedSplits
    model = tiny(block, seed=12).eval()
    view = as_blocks(model)
    x, y = sample(16, 13)
    f_new, _ = insert_block(view, 2, x, y, block=candidate_blocks(view, [2], x, 0)[2])
    f_new.eval()
    name = "bn3" if block is Bottleneck else "bn2"
    bn = getattr(f_new.blocks[2], name)
    g = torch.Generator().manual_seed(0)
    d = {f"{name}.weight": torch.randn(bn.num_features, generator=g), f"{name}.bias": torch.randn(bn.num_features, generator=g)}
    line = StackedSplits({"S": Split(x, y)}, fixed_until=(f_new, 2)).line(f_new, d)
    assert line is not None
    for eta in (0.05, 0.5):
        with torch.no_grad():
            bn.weight.copy_(eta * d[f"{name}.weight"])
            bn.bias.copy_(eta * d[f"{name}.bias"])
            direct = F.cross_entropy(f_new.to_torchvision(model).eval()(x), y).item()
        assert line.risks(eta)["S"].loss == pytest.approx(direct, rel=1e-5)
