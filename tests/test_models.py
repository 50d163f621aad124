"""Architectures and insertion (theory.md sections 2-3)."""
import pytest
import torch

from resx.core.config import RunConfig
from resx.core.models import FromPosition, MLP, ResNet, activations_at, build_model, insert_block, resnet_plan


def _model(arch, depth=2, width=8, seed=0):
    torch.manual_seed(seed)
    if arch == "mlp":
        return MLP(12, width, depth, 5), torch.randn(64, 12)
    return ResNet(3, width, depth, 5), torch.randn(64, 3, 8, 8)


def _train_a_little(model, x, y, steps=5):
    """A few SGD steps so BN statistics and weights are not at initialisation."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_every_position_preserves_the_function(arch):
    """A zero block at any position leaves the logits unchanged: exactly for resnet, <= 1e-5 relative for mlp."""
    model, x = _model(arch)
    y = torch.randint(0, 5, (len(x),), generator=torch.Generator().manual_seed(1))
    _train_a_little(model, x, y)
    model.eval()
    for k in range(len(model.blocks) + 1):
        new, report = insert_block(model, k, x, y, seed=3)
        assert len(new.blocks) == len(model.blocks) + 1
        for train_mode in (False, True):
            model.train(train_mode), new.train(train_mode)
            with torch.no_grad():
                a, b = model(x), new(x)
            diff = (a - b).abs().max().item()
            if arch == "resnet":
                assert diff == 0.0, (k, train_mode, diff)
            else:
                assert diff <= 1e-5 * a.abs().max().item(), (k, train_mode, diff)
        if arch == "resnet":
            assert report.max_abs_logit_diff == 0.0 and report.max_abs_logit_diff_train == 0.0
        assert report.preserved and report.loss_diff < 1e-5


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_insertion_never_mutates_the_old_model(arch):
    """insert_block returns a new model and leaves the old model's state (BN statistics too) untouched."""
    model, x = _model(arch)
    y = torch.zeros(len(x), dtype=torch.long)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    insert_block(model, 1, x, y)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("arch,live", [("mlp", {"w2.weight", "w2.bias"}), ("resnet", {"bn2.weight", "bn2.bias"})])
def test_live_parameters_are_exactly_those_with_nonzero_gradient(arch, live):
    """At phi0 the new block's gradient is nonzero on the named live parameters and zero elsewhere."""
    model, x = _model(arch)
    y = torch.randint(0, 5, (len(x),), generator=torch.Generator().manual_seed(2))
    new, report = insert_block(model, 1, x, y, seed=5)
    new.eval()
    torch.nn.functional.cross_entropy(new(x), y).backward()
    grads = {n: p.grad.abs().max().item() for n, p in new.blocks[1].named_parameters()}
    assert {f"blocks.1.{n}" for n in live} == set(report.live_parameters)
    for name, g in grads.items():
        assert (g > 0) == (name in live), (name, g)


def test_resnet_depth_is_six_b_plus_two():
    """ResNet-(6b+2): b blocks per stage, two convs each, plus the stem conv and the head."""
    for b in (1, 2, 9):
        model = ResNet(3, 4, b, 10)
        convs = sum(1 for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and "shortcut" not in n)
        assert convs + 1 == 6 * b + 2
        assert [s[1] for s in resnet_plan(4, b)][::b] == [4, 8, 16]
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_mlp_block_outputs_are_norm_controlled():
    """Every post-LN block output has ||h|| <= sqrt(w) (theory.md 2), whatever the weights."""
    torch.manual_seed(0)
    model = MLP(10, 16, 3, 4)
    for p in model.parameters():
        p.data.mul_(50)
    h = model.features(torch.randn(100, 10) * 30)
    assert (h.norm(dim=1) <= 16 ** 0.5 * (1 + 1e-5)).all()


def test_build_model_rejects_vector_inputs_for_resnet():
    """A resnet on vector inputs is refused with a message naming the shape."""
    cfg = RunConfig(dataset="shapes", arch="resnet", depth=1, width=4, position=1)
    with pytest.raises(ValueError, match="image inputs"):
        build_model(cfg, (32,), 10)


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_reading_a_model_from_a_position_gives_its_logits(arch):
    """FromPosition(model, k) on the activations at k reproduces model(x), at every position."""
    model, x = _model(arch)
    _train_a_little(model, x, torch.randint(0, 5, (len(x),), generator=torch.Generator().manual_seed(1)))
    model.eval()
    with torch.no_grad():
        full = model(x)
        for k in range(len(model.blocks) + 1):
            assert torch.allclose(FromPosition(model, k)(activations_at(model, x, k)), full, atol=1e-5)
