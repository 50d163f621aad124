"""Activation-gradient signals, Figure 1 covariance and observability (theory.md section 5)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from resx.core.models import MLP, ResNet
from resx.theory.signals import (activation_gradients, gradient_covariance, head_input_gradients, mean_signal,
                          observability)


def _model(arch, seed=0):
    torch.manual_seed(seed)
    if arch == "mlp":
        model, x = MLP(6, 8, 3, 4), torch.randn(40, 6)
    else:
        model, x = ResNet(3, 4, 1, 4), torch.randn(12, 3, 8, 8)
    y = torch.randint(0, 4, (len(x),))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)       # leave initialisation: BN stats, weights
    model.train()
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    model.eval()
    return model, x, y


def _manual(model, x, y):
    """Activations by an explicit forward (no hooks) and their gradients by torch.autograd.grad."""
    h = model.embed(x)
    acts = [h]
    for block in model.blocks:
        h = block(h)
        acts.append(h)
    feats = h.mean(dim=(2, 3)) if h.dim() == 4 else h
    loss = F.cross_entropy(model.head(feats), y, reduction="sum")
    return acts, torch.autograd.grad(loss, acts)


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_mean_signal_matches_an_independent_computation(arch):
    """s_k from the hooks equals ||mean_i g_k,i|| from a manual forward and autograd.grad (spatial sum first)."""
    model, x, y = _model(arch)
    acts, grads = activation_gradients(model, x, y, batch_size=5)
    ref_acts, ref_grads = _manual(model, x, y)
    assert len(grads) == len(model.blocks) + 1
    for a, g, ra, rg in zip(acts, grads, ref_acts, ref_grads):
        torch.testing.assert_close(a, ra.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-7)
    expected = []
    for g in ref_grads:
        g = g.double()
        if g.dim() == 4:
            g = g.sum(dim=(2, 3))
        expected.append(g.mean(0).norm().item())
    assert mean_signal(grads) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_sum_reduction_gives_each_sample_its_own_gradient(arch):
    """Row i of g_k equals the gradient of the single-example loss l(f(x_i), y_i) (not divided by the batch size)."""
    model, x, y = _model(arch)
    _, grads = activation_gradients(model, x, y, batch_size=7)
    for i in (0, 3, len(x) - 1):
        _, single = _manual(model, x[i:i + 1], y[i:i + 1])
        for k, g in enumerate(single):
            torch.testing.assert_close(grads[k][i:i + 1], g, rtol=1e-4, atol=1e-7)


def test_sum_spatial_and_positions_options_agree():
    """sum_spatial returns the spatially summed maps and `positions` selects entries in the asked order."""
    model, x, y = _model("resnet")
    _, full = activation_gradients(model, x, y)
    acts, summed = activation_gradients(model, x, y, positions=[3, 0], sum_spatial=True)
    torch.testing.assert_close(summed[0], full[3].sum(dim=(2, 3)))
    torch.testing.assert_close(summed[1], full[0].sum(dim=(2, 3)))
    assert acts[0].shape == summed[0].shape
    assert mean_signal(summed) == pytest.approx([mean_signal(full)[3], mean_signal(full)[0]], rel=1e-6)
    with pytest.raises(ValueError):
        activation_gradients(model, x, y, positions=[5])


@pytest.mark.parametrize("arch", ["mlp", "resnet"])
def test_head_input_gradients_closed_form(arch):
    """dl/d(features) equals (softmax(z) - e_y) W_head for every sample."""
    model, x, y = _model(arch)
    G = head_input_gradients(model, x, y, batch_size=5)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
        expected = (p - F.one_hot(y, p.shape[1]).float()) @ model.head.weight
    assert G.shape == (len(x), model.head.in_features)
    torch.testing.assert_close(G, expected, rtol=1e-5, atol=1e-6)


def test_covariance_matches_numpy():
    """Sigma equals np.cov, eigenvalues match numpy's in descending order, sampled off-diagonals are entries of Sigma."""
    g = torch.Generator().manual_seed(0)
    G = torch.randn(200, 12, generator=g) @ torch.randn(12, 12, generator=g)
    out = gradient_covariance(G, max_offdiag=20)
    ref = np.cov(G.double().numpy(), rowvar=False)
    np.testing.assert_allclose(out["Sigma"], ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["eigenvalues"], np.sort(np.linalg.eigvalsh(ref))[::-1], rtol=1e-8, atol=1e-10)
    i, j = out["offdiag_index"].T
    assert len(i) == 20 and np.all(i < j)
    np.testing.assert_allclose(out["offdiag"], ref[i, j])
    off = ref[~np.eye(12, dtype=bool)]
    assert out["ratio"] == pytest.approx(np.abs(off).mean() / np.diag(ref).mean())
    again = gradient_covariance(G, max_offdiag=20)
    np.testing.assert_array_equal(again["offdiag_index"], out["offdiag_index"])     # seeded


def test_covariance_ratio_is_small_for_independent_coordinates():
    """Independent coordinates give a small off-diagonal to diagonal ratio; a shared factor gives a large one."""
    g = torch.Generator().manual_seed(1)
    indep = torch.randn(2000, 16, generator=g)
    shared = indep + 3 * torch.randn(2000, 1, generator=g)
    assert gradient_covariance(indep)["ratio"] < 0.05
    assert gradient_covariance(shared)["ratio"] > 0.5


def _gaussian(n, D, mean, seed):
    g = torch.Generator().manual_seed(seed)
    return mean + torch.randn(n, D, generator=g)


def test_observability_z_grows_like_sqrt_n():
    """With a fixed nonzero mean, z at 4n is about twice z at n (averaged over seeds)."""
    D, n = 16, 2000
    mu = torch.full((D,), 0.25)
    ratios = [observability(_gaussian(4 * n, D, mu, s))["z"] / observability(_gaussian(n, D, mu, 100 + s))["z"]
              for s in range(5)]
    assert np.mean(ratios) == pytest.approx(2.0, rel=0.1)


def test_observability_z_grows_like_sqrt_width():
    """With the same per-coordinate mean and isotropic noise, z at 4D is about twice z at D (sqrt(width n))."""
    n = 4000
    z = [np.mean([observability(_gaussian(n, D, torch.full((D,), 0.1), s))["z"] for s in range(5)])
         for D in (16, 64)]
    assert z[1] / z[0] == pytest.approx(2.0, rel=0.15)


def test_observability_at_zero_mean():
    """With mean zero the bias-corrected z is near 0, z sits at its null value tr Sigma/||Sigma||_F, snr near 1, cosine near 0."""
    D, n = 64, 3000
    outs = [observability(_gaussian(n, D, torch.zeros(D), s), torch.Generator().manual_seed(s)) for s in range(5)]
    assert abs(np.mean([o["z_unbiased"] for o in outs])) < 1.5
    assert np.mean([o["z"] for o in outs]) == pytest.approx(math.sqrt(D), rel=0.15)
    assert np.mean([o["z"] / o["z_null"] for o in outs]) == pytest.approx(1.0, rel=0.15)
    assert np.mean([o["snr"] for o in outs]) == pytest.approx(1.0, rel=0.1)
    assert abs(np.mean([o["cosine_split"] for o in outs])) < 0.2
    strong = observability(_gaussian(n, D, torch.full((D,), 0.5), 9))
    assert strong["cosine_split"] > 0.9 and strong["z_unbiased"] > 20


def test_observability_split_is_seeded():
    """The split-half cosine is a function of the generator's seed."""
    G = _gaussian(100, 8, torch.full((8,), 0.1), 0)
    a = observability(G, torch.Generator().manual_seed(4))["cosine_split"]
    b = observability(G, torch.Generator().manual_seed(4))["cosine_split"]
    assert a == b
