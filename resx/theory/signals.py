"""Activation-gradient signals: the paper's Figures 1 and 2 and observability (theory.md 5;
THEORY.md section 5).

- a_k(x): the output of block k (k = 0: the stem's output, the input of blocks[0]);
  g_k(x, y) = dl/da_k, loss with reduction="sum" so that row i is sample i's own gradient, not
  divided by the batch size [paper, Appendix N]. Eval mode, so BatchNorm uses running statistics
  and samples do not interact.
- s_k = ||E g_k|| (conv maps summed over spatial positions first): Figure 2 [paper].
- Sigma = Cov(g) at the activation before the head: Figure 1 [paper].
- Observability z = ||gbar||^2 / sqrt(gbar' Sigma gbar / n) [paper: width enhances the
  finite-sample observability of weak signals]; the split-half cosine and n ||gbar||^2 / tr Sigma
  beside it (ours), and the bias-corrected z_unbiased (ours).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.models import check_positions


def activation_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, *,
                         positions: Optional[Sequence[int]] = None, sum_spatial: bool = False,
                         keep_acts: bool = True) -> tuple[list, list]:
    """(acts, grads): a_k and g_k = dl_i/da_k for every sample, at each position (theory.md 5).

    Hooks on the block modules capture the activations: a forward pre-hook on blocks[0] (position
    0, the stem's output, made a leaf so gradients flow whatever requires_grad says) and forward
    hooks on every block (position k = output of blocks[k-1]); the gradients are taken with
    torch.autograd.grad of sum_i l(f(x_i), y_i) (reduction="sum") with respect to them, batch by
    batch, eval mode. The model's parameter .grad fields are not touched.

    Lists follow `positions` (default 0..len(blocks)); each entry is (n, D) for vectors and
    (n, C, H, W) for conv maps, or (n, C) summed over space if `sum_spatial` (saves memory; all
    that s_k needs). `keep_acts=False` returns acts as an empty list.
    """
    positions = check_positions(model, positions)
    captured: dict[int, torch.Tensor] = {}

    def grab_input(module, args):
        h = args[0].detach().requires_grad_(True)
        captured[0] = h
        return (h,) + tuple(args[1:])

    def grab_output(k):
        def hook(module, args, out):
            captured[k] = out
        return hook

    def reduce(t):
        return t.sum(dim=tuple(range(2, t.dim()))) if sum_spatial and t.dim() > 2 else t

    acts: list[list[torch.Tensor]] = [[] for _ in positions]
    grads: list[list[torch.Tensor]] = [[] for _ in positions]
    handles = [model.blocks[0].register_forward_pre_hook(grab_input)]
    handles += [block.register_forward_hook(grab_output(k + 1)) for k, block in enumerate(model.blocks)]
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            captured.clear()
            with torch.enable_grad():
                logits = model(x[i:i + batch_size])
                loss = F.cross_entropy(logits.float(), y[i:i + batch_size], reduction="sum")
                g = torch.autograd.grad(loss, [captured[k] for k in positions])
            for j, k in enumerate(positions):
                grads[j].append(reduce(g[j].detach()))
                if keep_acts:
                    acts[j].append(reduce(captured[k].detach()))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return ([torch.cat(a) for a in acts] if keep_acts else []), [torch.cat(g) for g in grads]


def mean_signal(grads: Sequence[torch.Tensor]) -> list[float]:
    """s_k = ||E g_k|| = ||mean_i g_k,i|| per position (theory.md 5, Figure 2 [paper]).

    Conv maps (n, C, H, W) are summed over spatial positions first, giving (n, C).
    """
    out = []
    for g in grads:
        g = g.double()
        if g.dim() > 2:
            g = g.flatten(2).sum(-1)                 # (n, C)
        out.append(g.mean(0).norm().item())
    return out


@torch.no_grad()
def _features(model, x, batch_size):
    return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def head_input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """G (n, D): dl(f(x_i), y_i)/d(features) at the activation before the fully connected layer
    (after pooling for resnet), eval mode, reduction="sum" (theory.md 5, Figure 1 [paper]).

    Equals (softmax(z_i) - e_{y_i}) W_head row by row.
    """
    was = model.training
    model.eval()
    try:
        phi = _features(model, x, batch_size).detach().requires_grad_(True)   # (n, D)
        with torch.enable_grad():
            loss = F.cross_entropy(model.head(phi).float(), y, reduction="sum")
            (G,) = torch.autograd.grad(loss, [phi])
    finally:
        model.train(was)
    return G.detach()


def _as_double(G) -> torch.Tensor:
    G = torch.as_tensor(G).detach()
    if G.dim() != 2 or G.shape[0] < 2:
        raise ValueError(f"G must be (n, D) with n >= 2, got shape {tuple(G.shape)}")
    return G.double().cpu()


def gradient_covariance(G, max_offdiag: int = 20000, seed: int = 0) -> dict:
    """Sigma = Cov(g) (unbiased, divisor n - 1) of per-sample gradients G (n, D), as Figure 1 shows it.

    Returns numpy float64 arrays: "Sigma" (D, D), "eigenvalues" (descending), "diag", a seeded
    sample of off-diagonal entries "offdiag" with their (i, j) in "offdiag_index" (all of them when
    D (D - 1)/2 <= max_offdiag, else max_offdiag pairs drawn uniformly with i < j, with
    replacement), and the scalars "mean_abs_offdiag" (over every off-diagonal entry), "mean_diag"
    and their "ratio" (small: weak correlation, Assumption 3 [paper]).
    """
    G = _as_double(G)
    n, D = G.shape
    Xc = G - G.mean(0)                               # (n, D)
    Sigma = Xc.T @ Xc / (n - 1)                      # (D, D)
    eig = torch.linalg.eigvalsh(Sigma).flip(0)
    diag = Sigma.diagonal()
    total = D * (D - 1) // 2
    if total <= max_offdiag:
        i, j = torch.triu_indices(D, D, 1)
    else:
        gen = torch.Generator().manual_seed(seed)
        i = torch.randint(0, D, (2 * max_offdiag,), generator=gen)
        j = torch.randint(0, D, (2 * max_offdiag,), generator=gen)
        keep = i != j
        i, j = i[keep][:max_offdiag], j[keep][:max_offdiag]
        i, j = torch.minimum(i, j), torch.maximum(i, j)
    off_sum = Sigma.abs().sum() - diag.abs().sum()
    mean_abs_off = (off_sum / (D * (D - 1))).item() if D > 1 else 0.0
    mean_diag = diag.mean().item()
    return {"Sigma": Sigma.numpy(), "eigenvalues": eig.numpy(), "diag": diag.numpy(),
            "offdiag": Sigma[i, j].numpy(), "offdiag_index": torch.stack([i, j], 1).numpy(),
            "mean_abs_offdiag": mean_abs_off, "mean_diag": mean_diag,
            "ratio": mean_abs_off / mean_diag if mean_diag > 0 else math.inf, "n": n, "D": D}


def observability(G, generator: Optional[torch.Generator] = None) -> dict:
    """How visible the mean gradient is in n samples (theory.md 5; [paper] for z, ours for the rest).

    gbar = mean_i g_i, Sigma = Cov(g) (divisor n - 1):
      z            = ||gbar||^2 / sqrt(gbar' Sigma gbar / n): with a fixed mean mu != 0 it grows like
                     sqrt(n) ||mu||^2 / sqrt(mu' Sigma mu), i.e. like sqrt(width n) under weak
                     correlation; with mu = 0 it does not vanish: ||gbar||^2 is biased up by tr Sigma / n,
                     so z -> tr Sigma / ||Sigma||_F ("z_null", sqrt(D) for isotropic Sigma).
      z_unbiased   = (||gbar||^2 - tr Sigma / n) / sqrt(gbar' Sigma gbar / n) (ours): about 0 at mu = 0.
      cosine_split = cos(gbar over one random half, gbar over the other) (seeded by `generator`):
                     near 1 when the mean dominates, near 0 (+- 1/sqrt(D)) when it is noise.
      snr          = n ||gbar||^2 / tr Sigma: about 1 at mu = 0, 1 + n ||mu||^2 / tr Sigma otherwise.
    """
    G = _as_double(G)
    n, D = G.shape
    gbar = G.mean(0)                                 # (D,)
    Xc = G - gbar                                    # (n, D)
    sq = gbar.dot(gbar).item()
    quad = (Xc @ gbar).pow(2).sum().item() / (n - 1)  # gbar' Sigma gbar
    tr = Xc.pow(2).sum().item() / (n - 1)
    if D <= n:
        Sigma = Xc.T @ Xc / (n - 1)
        fro = Sigma.norm().item()
    else:
        gram = Xc @ Xc.T / (n - 1)                   # (n, n): same nonzero spectrum
        fro = gram.norm().item()
    noise = math.sqrt(quad / n) if quad > 0 else math.nan
    perm = torch.randperm(n, generator=generator)
    a, b = G[perm[: n // 2]].mean(0), G[perm[n // 2:]].mean(0)
    cos = (a.dot(b) / (a.norm() * b.norm())).item() if a.norm() > 0 and b.norm() > 0 else math.nan
    return {"z": sq / noise, "z_unbiased": (sq - tr / n) / noise, "z_null": tr / fro if fro > 0 else math.nan,
            "cosine_split": cos, "snr": n * sq / tr if tr > 0 else math.inf, "gbar_sq_norm": sq,
            "trace": tr, "n": n, "D": D}
