"""Theory benchmarks (THEORY.md 4): the one-pass closed-form descent margins at every position
against one-at-a-time insertion (all_positions), and the closed-form per-sample statistics against
an autograd loop (per_sample_stats).

Usage: python -m benchmarks --only all_positions,per_sample_stats [--quick] [--json]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .harness import Sizes, interleaved, ratio, spread

# ---------------------------------------------------------------------------------------------
# all_positions and per_sample_stats: the closed-form margins (theory.md 4) against autograd

def margin_problem(n: int, depth: int = 9, width: int = 64, d: int = 32, classes: int = 10, seed: int = 0):
    """An mlp (depth 9: 10 positions), n Gaussian points with random labels, a candidate per position."""
    from resx.core.models import MLP, candidate_block

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = MLP(d, width, depth, classes).eval()
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return model, x, y, {k: candidate_block(model, k, x, seed) for k in range(depth + 1)}


def bench_all_positions(sizes: Sizes, reps: int) -> tuple[float, dict]:
    """U-statistics at all 10 positions: one pass (block_gradients) against inserting each block
    and taking torch.func per-sample gradients (block_gradients_reference)."""
    from resx.theory.margins import block_gradients, block_gradients_reference, u_statistic

    model, x, y, candidates = margin_problem(sizes.margins_n)
    positions = list(candidates)
    arms = {"one_at_a_time": lambda: [u_statistic(block_gradients_reference(model, x, y, k, candidates[k]))
                                      for k in positions],
            "one_pass": lambda: [u_statistic(v) for v in block_gradients(model, x, y, positions, candidates).values()]}
    times, first = interleaved(arms, reps)
    worst = max(abs(a.value - b.value) / (abs(b.value) + 1e-12)
                for a, b in zip(first["one_pass"], first["one_at_a_time"]))
    return ratio(times["one_at_a_time"], times["one_pass"])["median"], {
        "what": f"{len(positions)} positions of an mlp (depth 9, width 64), n={len(x)}, U-statistic at each",
        "one_pass_s": spread(times["one_pass"]), "one_at_a_time_s": spread(times["one_at_a_time"]),
        "speedup": ratio(times["one_at_a_time"], times["one_pass"]), "max_relative_difference_of_U": worst}


def bench_per_sample_stats(sizes: Sizes, reps: int, position: int = 5) -> tuple[float, dict]:
    """U at one position: closed-form factored per-sample statistics against one autograd backward
    per sample on the inserted model."""
    from resx.theory.margins import block_gradients, u_statistic
    from resx.core.models import insert_block, live_parameter_names

    model, x, y, candidates = margin_problem(sizes.stats_n)
    f_new, _ = insert_block(model, position, x, y, block=candidates[position])
    f_new.eval()
    live = [f_new.get_parameter(name) for name in live_parameter_names(f_new, position)]

    def loop():
        rows = []
        for i in range(len(x)):
            loss = F.cross_entropy(f_new(x[i:i + 1]), y[i:i + 1], reduction="sum")
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, live)]))
        return u_statistic(torch.stack(rows))                                    # rows: (n, p)

    arms = {"autograd_loop": loop,
            "closed_form": lambda: u_statistic(block_gradients(model, x, y, [position], candidates)[position])}
    times, first = interleaved(arms, reps)
    a, b = first["closed_form"].value, first["autograd_loop"].value
    return ratio(times["autograd_loop"], times["closed_form"])["median"], {
        "what": f"U at position {position} of an mlp (depth 9, width 64), n={len(x)}",
        "closed_form_s": spread(times["closed_form"]), "autograd_loop_s": spread(times["autograd_loop"]),
        "speedup": ratio(times["autograd_loop"], times["closed_form"]),
        "relative_difference_of_U": abs(a - b) / (abs(b) + 1e-12)}


# ---------------------------------------------------------------------------------------------
# own_network: resx.diagnose on torchvision's resnet18 (issue 26)

def own_network_problem(n_train: int, n_probe: int, size: int = 32, seed: int = 0):
    """torchvision.models.resnet18(num_classes=10), freshly built (seeded), random inputs at size x size."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randn(n_train, 3, size, size, generator=g), torch.randint(0, 10, (n_train,), generator=g)
    xp, yp = torch.randn(n_probe, 3, size, size, generator=g), torch.randint(0, 10, (n_probe,), generator=g)
    return model, x, y, xp, yp


def bench_own_network(sizes: Sizes, reps: int) -> tuple[float, dict]:
    """resx.diagnose at all 9 positions of resnet18 in one pass against one insertion at a time
    (diagnose_one_at_a_time: each expanded model's own passes). One warm-up of each arm on 8 points
    (kernel selection, allocations), then min(reps, 2) interleaved rounds on the full problem:
    the baseline takes about a minute a round on one core."""
    import time

    from resx.theory.diagnose import diagnose, diagnose_one_at_a_time

    model, x, y, xp, yp = own_network_problem(sizes.own_train, sizes.own_probe)
    arms = {"one_pass": diagnose, "one_at_a_time": diagnose_one_at_a_time}
    for arm in arms.values():
        arm(model, x[:8], y[:8], xp[:8], yp[:8])
    times = {name: [] for name in arms}
    first = {}
    rounds = min(reps, 2)
    for r in range(rounds):
        for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            start = time.perf_counter()
            out = arms[name](model, x, y, xp, yp)
            times[name].append(time.perf_counter() - start)
            first.setdefault(name, out)
    worst = max(abs(a["slope_cross"] - b["slope_cross"]) / (abs(b["slope_cross"]) + 1e-12)
                for a, b in zip(first["one_pass"]["positions"], first["one_at_a_time"]["positions"]))
    return ratio(times["one_at_a_time"], times["one_pass"])["median"], {
        "what": (f"resx.diagnose on torchvision resnet18 (num_classes=10, fresh), 3x{x.shape[-1]}x{x.shape[-1]} "
                 f"random inputs, {len(x)} train and {len(xp)} probe points, "
                 f"{len(first['one_pass']['positions'])} positions, {rounds} round(s)"),
        "one_pass_s": spread(times["one_pass"]), "one_at_a_time_s": spread(times["one_at_a_time"]),
        "speedup": ratio(times["one_at_a_time"], times["one_pass"]),
        "preservation": first["one_pass"]["preservation"],
        "max_relative_difference_of_slope_cross": worst}
