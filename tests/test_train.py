"""The training loop: divergence, cancellation, reproducibility, records."""
import threading

import pytest
import torch

from resx.core.config import RunConfig
from resx.core.data import Split, load_data
from resx.core.models import build_model
from resx.core.train import (Evaluator, LossMemo, StackedSplits, draw_population, lr_at, per_sample_losses, risk,
                             train)

SMALL = RunConfig(n=256, n_probe=64, n_test=128, n_pop=1024, m_cert=2048, width=16, depth=2, position=1,
                  epochs=2, finetune_epochs=1, batch_size=64)


def _setup(cfg):
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, "cpu")
    return data, build_model(cfg, data.input_shape, data.num_classes)


def test_a_diverging_learning_rate_ends_as_diverged():
    """SGD at a huge learning rate ends as 'diverged' with the step and the non-finite loss."""
    cfg = SMALL.replace(optimizer="sgd", lr=10.0, weight_decay=0.0, schedule="constant", epochs=20)
    data, model = _setup(cfg)
    records = []
    out = train(model, data, cfg, phase="base", epochs=cfg.epochs, sink=records.append)
    assert out.status == "diverged"
    assert "diverged at step" in out.message and str(out.steps) in out.message
    assert any(r.name == "diverged_loss" for r in records)
    _, fresh = _setup(cfg)
    assert train(fresh, data, cfg.replace(lr=0.01), phase="base", epochs=2).status == "done"


def test_cancel_stops_within_one_batch():
    """Setting the cancel flag stops training before the next batch; the steps taken so far are reported."""
    data, model = _setup(SMALL)
    cancel = threading.Event()
    steps = []

    def sink(record):
        if record.name == "progress":
            steps.append(record.step)
            cancel.set()

    out = train(model, data, SMALL, phase="base", epochs=5, sink=sink, cancel=cancel)
    assert out.status == "cancelled"
    assert out.steps == steps[0]


def test_a_seed_makes_a_cpu_run_reproducible():
    """Two CPU runs with the same seed end with identical weights; another seed differs."""
    def final_weights(seed):
        cfg = SMALL.replace(seed=seed)
        data, model = _setup(cfg)
        train(model, data, cfg, phase="base", epochs=1)
        return torch.cat([p.flatten() for p in model.parameters()])

    a, b, c = final_weights(0), final_weights(0), final_weights(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_lowers_the_training_loss_and_emits_curves():
    """Training lowers L_S and emits L_S, L_T and population-risk records with standard errors."""
    data, model = _setup(SMALL.replace(epochs=4))
    population = draw_population(data, 1024, seed=1)
    records = []
    train(model, data, SMALL, phase="base", epochs=4, sink=records.append, evaluator=Evaluator(data, population))
    ls = [r.value for r in records if r.split == "S" and r.name == "loss"]
    assert len(ls) == 5 and ls[-1] < ls[0]
    pop = [r for r in records if r.split == "pop" and r.name == "loss"]
    assert len(pop) == 5 and all(r.stderr > 0 for r in pop)


def test_cosine_schedule_runs_from_lr_to_zero():
    """The cosine schedule starts at lr, is lr/2 halfway, and ends at 0."""
    cfg = SMALL.replace(lr=0.2, schedule="cosine")
    assert lr_at(0, 100, cfg) == 0.2
    assert abs(lr_at(50, 100, cfg) - 0.1) < 1e-12 and lr_at(100, 100, cfg) < 1e-12
    assert lr_at(70, 100, cfg.replace(schedule="constant")) == 0.2


def test_block_finetuning_leaves_every_old_parameter_and_buffer_bit_identical():
    """finetune="block" on a resnet: every tensor of the old layers (BatchNorm running statistics and counters included) is bit-identical after training, while the new block has moved (review B3)."""
    from resx.core.models import insert_block, new_block_parameter_names

    cfg = RunConfig(dataset="shapes", arch="resnet", depth=1, width=4, n=256, n_probe=8, n_test=8, n_pop=256,
                    optimizer="sgd", lr=0.05, batch_size=64, device="cpu")
    data = load_data(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    old = build_model(cfg, data.input_shape, data.num_classes)
    train(old, data, cfg, phase="base", epochs=1)
    k = 2
    new, _ = insert_block(old, k, data.S.x, data.S.y, seed=0)
    before = {n: t.clone() for n, t in new.state_dict().items()}
    names = set(new_block_parameter_names(new, k))
    train(new, data, cfg, phase="new", epochs=1, params=[p for n, p in new.named_parameters() if n in names])
    after = new.state_dict()
    prefix = f"blocks.{k}."
    old_keys = [n for n in before if not n.startswith(prefix)]
    assert any("running_mean" in n for n in old_keys) and any("num_batches_tracked" in n for n in old_keys)
    changed = [n for n in old_keys if not torch.equal(before[n], after[n])]
    assert changed == []
    assert not torch.equal(before[prefix + "bn2.weight"], after[prefix + "bn2.weight"])


def test_risks_are_float32_even_inside_an_autocast_region():
    """per_sample_losses evaluates outside autocast: inside a bf16 autocast region (as the training loop is on CUDA) it returns the float32 losses bit for bit, while a bf16 forward differs (review B1)."""
    from resx.core.train import per_sample_losses

    cfg = RunConfig(n=512, n_probe=8, n_test=8, n_pop=256, width=32, device="cpu")
    data = load_data(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg, data.input_shape, data.num_classes).eval()
    plain, _ = per_sample_losses(model, data.S.x, data.S.y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, _ = per_sample_losses(model, data.S.x, data.S.y)
        with torch.no_grad():
            bf16 = torch.nn.functional.cross_entropy(model(data.S.x).float(), data.S.y, reduction="none")
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)
    assert not torch.equal(bf16, plain)


def _resnet_task():
    cfg = RunConfig(dataset="shapes", arch="resnet", depth=1, width=4, position=2, n=96, n_probe=32, n_test=48,
                    n_pop=256, m_cert=256, epochs=1, finetune_epochs=1, batch_size=32, optimizer="sgd", lr=0.05)
    data, model = _setup(cfg)
    train(model, data, cfg, phase="base", epochs=1)
    return cfg, data, model


def _forward_counter(model):
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    return calls


def test_the_loss_memo_computes_each_model_and_sample_once():
    """A LossMemo returns exactly per_sample_losses, runs the model once per (model, sample), and
    tells a slice of a sample and another model apart."""
    data, model = _setup(SMALL)
    other = build_model(SMALL, data.input_shape, data.num_classes)
    memo = LossMemo()
    calls = _forward_counter(model)
    first, correct = memo(model, data.S.x, data.S.y)
    again, _ = memo(model, data.S.x, data.S.y)
    assert sum(calls) == len(data.S.y)
    plain, plain_correct = per_sample_losses(model, data.S.x, data.S.y)
    assert torch.equal(first, plain) and torch.equal(again, plain) and torch.equal(correct, plain_correct)
    head, _ = memo(model, data.S.x[:50], data.S.y[:50])
    assert len(head) == 50 and torch.equal(head, plain[:50])
    assert not torch.equal(memo(other, data.S.x, data.S.y)[0], plain)


def test_stacked_splits_give_each_samples_own_risk_from_the_input_or_from_a_position():
    """StackedSplits.risks equals risk() on each sample, starting at the input or from stored
    activations at a position (mlp and resnet, eval mode), and after the block there changes."""
    for cfg, data, model in ((SMALL, *_setup(SMALL)), _resnet_task()):
        splits = {"S": data.S, "P": data.P, "T": data.T}
        for fixed in (None, (model, cfg.position)):
            stacked = StackedSplits(splits, fixed_until=fixed)
            assert (stacked.position is None) == (fixed is None)
            with torch.no_grad():
                model.blocks[cfg.position].get_parameter(model.blocks[cfg.position].live_parameters[0]).add_(0.1)
            for name, r in stacked.risks(model).items():
                direct = risk(model, splits[name])
                assert abs(r.loss - direct.loss) < 1e-6 and r.m == direct.m and abs(r.acc - direct.acc) < 1e-9


def test_losses_on_label_distributions_are_the_label_averaged_losses():
    """per_sample_losses with targets p (Split.expected) is sum_c p_ic l(f(x_i), c), each l(., c) taken
    with the labels c apart, and its correctness is p_i at the model's guess."""
    data, model = _setup(SMALL)
    pop = draw_population(data, 512, seed=3)
    assert pop.p.shape == (512, data.num_classes)
    averaged = pop.expected()
    losses, correct = per_sample_losses(model, averaged.x, averaged.y)
    per_label = torch.stack([per_sample_losses(model, pop.x, torch.full_like(pop.y, c))[0]
                             for c in range(data.num_classes)], 1)                       # (m, K)
    torch.testing.assert_close(losses, (pop.p * per_label).sum(1), rtol=1e-5, atol=1e-6)
    guess = per_label.argmin(1)
    torch.testing.assert_close(correct, pop.p[torch.arange(512), guess])
    with pytest.raises(ValueError, match="no label distributions"):
        Split(data.S.x, data.S.y).expected()


def test_stacked_splits_mix_labelled_and_label_averaged_samples():
    """A stack of labelled samples and a label-averaged one gives each its own risk, as risk() alone."""
    data, model = _setup(SMALL)
    pop = draw_population(data, 300, seed=4).expected()
    splits = {"S": data.S, "pop": pop, "T": data.T}
    for name, r in StackedSplits(splits, fixed_until=(model, SMALL.position)).risks(model).items():
        direct = risk(model, splits[name])
        assert abs(r.loss - direct.loss) < 1e-6 and r.m == direct.m and abs(r.acc - direct.acc) < 1e-6


def test_stacked_splits_start_from_the_input_when_the_activations_would_not_fit(monkeypatch):
    import resx.core.train as train_module
    cfg, data, model = _resnet_task()
    monkeypatch.setattr(train_module, "PREFIX_BYTES", 1024)
    assert StackedSplits({"S": data.S}, fixed_until=(model, cfg.position)).position is None


def test_a_stacked_line_equals_the_moved_block_at_every_step():
    """StackedLine.risks(eta) equals risk() of the expanded model whose zero block's live parameters
    were set to eta d (a random d), on each sample, mlp and resnet, from eta = 0 past the Taylor
    regime; with too little memory for (h, u) there is no line and the caller reads the model."""
    from resx.core.models import insert_block
    for cfg, data, model in ((SMALL, *_setup(SMALL)), _resnet_task()):
        new, _ = insert_block(model, cfg.position, data.S.x, data.S.y, seed=0)
        block = new.blocks[cfg.position]
        g = torch.Generator().manual_seed(5)
        d = {n: torch.randn(block.get_parameter(n).shape, generator=g) for n in block.live_parameters}
        splits = {"S": data.S, "P": data.P, "T": data.T}
        line = StackedSplits(splits, fixed_until=(new, cfg.position)).line(new, d)
        for eta in (0.0, 0.01, 0.3, 3.0):
            along = line.risks(eta)
            with torch.no_grad():
                for n in block.live_parameters:
                    block.get_parameter(n).copy_(eta * d[n])
            for name, split in splits.items():
                direct = risk(new, split)
                assert abs(along[name].loss - direct.loss) < 1e-5 * max(1.0, direct.loss), (cfg.arch, eta, name)
                assert abs(along[name].acc - direct.acc) < 2.0 / direct.m
            with torch.no_grad():
                for n in block.live_parameters:
                    block.get_parameter(n).zero_()


def test_no_stacked_line_when_h_and_u_would_not_fit(monkeypatch):
    import resx.core.train as train_module
    cfg, data, model = _resnet_task()
    stacked = StackedSplits({"S": data.S}, fixed_until=(model, cfg.position))
    monkeypatch.setattr(train_module, "PREFIX_BYTES", stacked.x.element_size() * stacked.x.numel())
    assert stacked.line(model, {}) is None
