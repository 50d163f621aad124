"""Would a block help *your* network, and where? `diagnose` and `expand` (issue 26; theory.md 3, 4, 4b, 6).

`diagnose(model, x_train, y_train, x_probe, y_probe)` takes a torchvision ResNet (BasicBlock or
Bottleneck; `torchvision.models.resnet18(...)` and friends, trained or not) or a resx model, and at
every position where a block fits (after the stem and after every block: a C -> C, stride-1 block
of the network's own type, its last BatchNorm's weight and bias zero, so the branch is 0 and the
ReLU after the sum leaves h >= 0 unchanged) it

1. builds the zero-initialised candidate, BatchNorm statistics calibrated on x_train (one pass for
   all positions), and verifies preservation: max |f_new(x) - f(x)| over x_train, eval mode;
2. runs the kink-aware cross-fitted descent test of theory.md 4b (the steepest one-sided direction
   on the probe half P1, its one-sided slope on P2 with a standard error) and the gradient
   statistics of theory.md 4 (U_P, the cross-fit), at ALL positions from one forward/backward pass
   of the old model per chunk (theory.margins.descent_margins: the activation h_k and its gradient
   g_k at every position determine every candidate's statistics in closed form);
3. picks the best position with Bonferroni's correction (kink.best_of_positions: each of the K
   positions tested at delta / K, so the pick fires under the global null with probability <= delta).

`expand(...)` goes on to the jumpboard at one position (theory.md 6): eta* along the P1 direction
chosen on P2, and returns f_J as a new module (a torchvision ResNet for a torchvision input) with
its line search. Neither function mutates the model passed in: both work on a deep copy.
"""
from __future__ import annotations

import copy
import time
from typing import Optional

import torch
import torch.nn as nn
import torchvision.models as tvm

from ..core.data import Split
from ..core.models import MLP, ResNet, candidate_blocks, check_positions, insert_block
from ..core.tv_resnet import ResNetBlocks
from .jumpboard import _block_io, jumpboard_path, steepest_on
from .kink import best_of_positions, split_halves
from .margins import cross_fit, descent_margins, live_gradients, u_statistic

PRESERVATION_TOL = 1e-4   # max |logit change| allowed before a candidate counts as not preserving f


def as_blocks(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with resx's stem -> blocks -> head interface: a resx MLP or ResNet as
    it is, a torchvision ResNet through tv_resnet.ResNetBlocks (torchvision's module names kept).
    Parameters of the copy do not require gradients (only activations' gradients are taken)."""
    if isinstance(model, (MLP, ResNet, ResNetBlocks)):
        view = copy.deepcopy(model)
    elif isinstance(model, tvm.ResNet):
        view = ResNetBlocks(copy.deepcopy(model))
    else:
        raise TypeError(f"diagnose takes a torchvision.models.ResNet (BasicBlock or Bottleneck) or a resx "
                        f"MLP/ResNet; got {type(model).__name__}")
    view.eval()
    for p in view.parameters():
        p.requires_grad_(False)
    return view


def _samples(view: nn.Module, x_train, y_train, x_probe, y_probe) -> tuple[Split, Split]:
    """S and P on the model's device and in its dtype, checked: x (n, ...), y (n,) labels in [0, K)."""
    first = next(view.parameters())
    device, dtype = first.device, first.dtype
    K = view.head.out_features
    out = []
    for name, x, y, least in (("train", x_train, y_train, 2), ("probe", x_probe, y_probe, 4)):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if y.dim() != 1 or len(y) != len(x) or len(y) < least:
            raise ValueError(f"x_{name} {tuple(x.shape)} and y_{name} {tuple(y.shape)}: expected x (n, ...) and "
                             f"labels y (n,) with the same n >= {least}")
        if y.dtype.is_floating_point or y.min() < 0 or y.max() >= K:
            raise ValueError(f"y_{name}: expected integer labels in [0, {K}) (the model's head has {K} outputs)")
        out.append(Split(x.to(device, dtype), y.to(device, torch.int64)))
    return out[0], out[1]


def _where(view: nn.Module, k: int) -> tuple[int, str]:
    """(stage, words) for position k: torchvision stages 1..4; resx ResNet stages 1..3; mlp 1."""
    if isinstance(view, ResNetBlocks):
        stage = view.stage_of(k)
        return stage, "after the stem" if k == 0 else f"after {view.blocks.name_of(k - 1)}"
    if isinstance(view, ResNet):
        per_stage = len(view.blocks) // 3
        stage = 1 if k == 0 else (k - 1) // per_stage + 1
        return stage, "after the stem" if k == 0 else f"after blocks.{k - 1}"
    return 1, "after the stem" if k == 0 else f"after blocks.{k - 1}"


@torch.no_grad()
def preservation(view: nn.Module, candidates: dict[int, nn.Module], x: torch.Tensor, batch_size: int = 256) -> float:
    """max |f_new(x) - f(x)| over x, eval mode, with every candidate inserted at once (highest
    position first, so lower indices stay put). In exact arithmetic each block returns its input,
    so by induction along the network this is 0 exactly when each block alone preserves f."""
    new = copy.deepcopy(view)
    for k in sorted(candidates, reverse=True):
        new.blocks.insert(k, copy.deepcopy(candidates[k]))
    new.eval()
    return max((new(x[i:i + batch_size]) - view(x[i:i + batch_size])).abs().max().item()
               for i in range(0, len(x), batch_size))


def diagnose(model: nn.Module, x_train, y_train, x_probe, y_probe, positions=None, delta: float = 0.05,
             seed: int = 0, batch_size: int = 256, train_statistics: bool = False) -> dict:
    """The descent test of theory.md 4b at every insertion position of `model`, in one pass.

    model: a torchvision ResNet or a resx model (never modified). x_train (n, C, H, W) float and
    y_train (n,) int: the sample the model was trained on (it calibrates the candidates' BatchNorms
    and measures preservation). x_probe (m, C, H, W), y_probe (m,): a probe sample independent of
    the model's training (m >= 4; split into halves P1, P2 by a seeded permutation). positions:
    a subset of 0..len(blocks) (default all). delta: the test's level.

    Returns {"preservation": max |logit change| over x_train with a zero block at every position,
    "preserved": preservation <= 1e-4, "positions": [one dict per position: position, stage, where,
    channels, descent_observable (UCB < 0), slope_in, slope_cross (D_P2(d_hat)), slope_cross_se,
    slope_cross_ucb, probe_needed, gradient_nonzero (U_P's lower bound > 0), kappa2_U (+ _se,
    _lcb), kappa2_cross (+ _se, _lcb), kappa2_naive_P, kappa2_train_U and kappa2_train_naive (what
    fine-tuning on x_train sees: one more pass, only with train_statistics=True; else None), direction
    (d_hat {the new block's last-BN weight, bias: (C,) each}, or None)],
    "best": the Bonferroni-corrected pick (position, ucb at delta / K, observable), sizes, delta,
    seconds}.
    """
    start = time.perf_counter()
    view = as_blocks(model)
    S, P = _samples(view, x_train, y_train, x_probe, y_probe)
    positions = check_positions(view, positions)
    candidates = candidate_blocks(view, positions, S.x, seed)
    preserved = preservation(view, candidates, S.x, batch_size)
    margins = descent_margins(view, S, P, None, positions, candidates, delta=delta, seed=seed, batch_size=batch_size,
                              train=train_statistics)
    rows = []
    for m in margins:
        stage, where = _where(view, m.position)
        row = {"position": m.position, "stage": stage, "where": where,
               "channels": int(next(iter(m.G_P.values())).shape[0]) if m.G_P else None}
        d = m.to_dict()
        d["gradient_nonzero"] = d.pop("observed")
        d["direction"] = m.descent.direction   # d_hat on P1 {live name: (C,)}, unit norm; None: none descends
        rows.append(row | d)
    best = best_of_positions({m.position: m.descent for m in margins}, delta)
    return {"preservation": preserved, "preserved": preserved <= PRESERVATION_TOL, "positions": rows, "best": best,
            "n_train": len(S), "n_probe": len(P), "delta": delta, "seed": seed,
            "seconds": time.perf_counter() - start}


def diagnose_one_at_a_time(model: nn.Module, x_train, y_train, x_probe, y_probe, positions=None,
                           delta: float = 0.05, seed: int = 0) -> dict:
    """The baseline `diagnose` is measured against (benchmarks, tests): the same candidates and the
    same statistics, but each position on its own expanded model: insert_block (a copy, its own
    preservation check on x_train), then the descent test (jumpboard.steepest_on: f_new's passes over
    P1 and P2) and U_P and the cross-fit from f_new's own gradients at the block. The same numbers as
    `diagnose`, up to float rounding, at about K times the passes."""
    start = time.perf_counter()
    view = as_blocks(model)
    S, P = _samples(view, x_train, y_train, x_probe, y_probe)
    positions = check_positions(view, positions)
    P1, P2 = split_halves(P, seed)
    rows, tests, worst = [], {}, 0.0
    for k in positions:
        block = candidate_blocks(view, [k], S.x, seed)[k]
        f_new, report = insert_block(view, k, S.x, S.y, block=block)
        worst = max(worst, report.max_abs_logit_diff)
        test = steepest_on(f_new, k, P1, P2, delta)
        parts = [live_gradients(f_new.blocks[k], h, g) for h, g in _block_io(f_new, k, P.x, P.y)]
        grads = type(parts[0]).cat(parts)
        U = u_statistic(grads, delta)
        tests[k] = test
        rows.append({"position": k, **test.to_dict(), "gradient_nonzero": U.lcb > 0, "kappa2_U": U.value,
                     "kappa2_U_se": U.stderr,
                     "kappa2_cross": cross_fit(grads, torch.Generator().manual_seed(seed), delta).value})
    return {"preservation": worst, "preserved": worst <= PRESERVATION_TOL, "positions": rows,
            "best": best_of_positions(tests, delta), "seconds": time.perf_counter() - start}


def expand(model: nn.Module, x_train, y_train, x_probe, y_probe, position: Optional[int] = None,
           x_test=None, y_test=None, delta: float = 0.05, seed: int = 0) -> dict:
    """The jumpboard f_J at `position` (default: diagnose's pick, the least Bonferroni-corrected UCB):
    the zero block inserted, then phi = eta* d_hat with d_hat the steepest one-sided direction on
    P1 and eta* = argmin of L_P2 on a log grid (eta = 0 included: f_J = f_new when no step helps;
    theory.md 6). Shapes as for `diagnose`; x_test, y_test (optional) are only evaluated.

    Returns {"model": f_J, a new module (torchvision ResNet for a torchvision input; `model` is not
    modified), "position", "eta", "preservation" (insert_block's report), "line_search" (the curve:
    L_S, L_P2, L_T per eta, the first-order line, the note), "descent" (the test at that position)}.
    """
    view = as_blocks(model)
    S, P = _samples(view, x_train, y_train, x_probe, y_probe)
    T = S if x_test is None else _samples(view, x_test, y_test, x_probe, y_probe)[0]
    if position is None:
        found = diagnose(view, S.x, S.y, P.x, P.y, delta=delta, seed=seed)
        position = found["best"]["position"]
        if position is None:
            raise ValueError("no position has a one-sided descent direction on the probe half P1; "
                             "pass position= to expand there anyway (f_J = f_new)")
    position = check_positions(view, [position])[0]
    block = candidate_blocks(view, [position], S.x, seed)[position]
    f_new, report = insert_block(view, position, S.x, S.y, block=block)
    jump = jumpboard_path(f_new, position, S, P, T, None, seed=seed, delta=delta)
    line = jump.to_dict()
    if x_test is None:
        line["L_T"] = None
        for row in line["curve"]:
            row["L_T"] = None
    f_J = jump.model
    if isinstance(model, tvm.ResNet):
        f_J = f_J.to_torchvision(model)
    for p in f_J.parameters():
        p.requires_grad_(True)
    f_J.train(model.training)
    return {"model": f_J, "position": position, "eta": jump.eta, "preservation": report.to_dict(),
            "line_search": line, "descent": {"slope_cross": jump.slope_P, "slope_cross_se": jump.slope_P_se,
                                             "slope_cross_ucb": jump.slope_P_ucb,
                                             "descent_observable": jump.descent_observable}}
