"""Descent margins at every insertion position (theory.md sections 3-4; THEORY "Descent margins").

Named step "estimate margins". At phi0 a zero-initialised block is the identity (resnet) or the
identity up to LayerNorm's epsilon (mlp), so the gradient of the loss with respect to its *live*
parameters is a closed form of the old model's activation h_k at the position and the activation
gradient g_k = dl/dh_k there. One forward/backward pass of the old model gives (h_k, g_k) at every
position; `block_gradients` turns them into per-sample gradients g_i without a loop over samples,
and the estimators below turn those into kappa_k^2 = ||G_k||^2 with standard errors.

Estimators (theory.md 4; the formulas are ours, standard U-statistic theory, Hoeffding 1948):
  U      = (n^2 ||G||^2 - sum_i ||g_i||^2) / (n (n - 1))     unbiased for ||E g||^2
  X      = <G_1, G_2> over a seeded random half split          unbiased, independent halves
  naive  = ||G||^2                                             biased up by tr(Sigma) / n
"""
from __future__ import annotations

import abc
import math
import statistics
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ..core.models import (LN_EPS, PostLNBlock, candidate_block, candidate_blocks, check_positions, insert_block,
                           live_parameter_names, live_parameters_of, pre_norm_branch)  # noqa: F401 (candidate_block: re-exported)
from ..core.records import Record
from .kink import DescentTest, KinkSample, descent_test, one_sided_terms, split_halves, steepest_direction

CHUNK = 1024   # samples per forward/backward pass; bounds the memory of the activations kept
CHUNK_INPUT_ELEMENTS = 1 << 18   # at most this many input numbers per chunk: vectors get bigger chunks
MAX_CHUNK = 8192                 # (a chunk's fixed cost, hooks and autograd, dominates small vectors)
POP_MARGIN_POINTS = 1 << 15   # population points behind kappa2_pop: its se is a quarter of U_P's at n_P = 2000
POP_MARGIN_POINTS_EXPECTED = 1 << 14   # the same with label distributions (Rao-Blackwell, theory.md 4):
                                       # on demo-mlp its se is 0.8x that of 2^15 labels
SE_POINTS = 8192   # population points behind population_margins' standard error (its value uses all N)
STAT_DTYPE = torch.float64   # per-sample statistics are differences of near-equal sums: keep float64
CHUNK_DTYPE = torch.float32  # population_margins: a chunk's sums in float32 (each a sum of <= MAX_CHUNK
                             # terms), accumulated over chunks in STAT_DTYPE


# ---------------------------------------------------------------------------------------------
# per-sample gradients of a candidate block's live parameters, as matrices or as factors

class BlockGrads(abc.ABC):
    """Per-sample gradients g_i (i < n) of a candidate block's live parameters at phi0.

    In effect an (n, p) matrix, p = number of live parameters, in the order of `names`; the
    statistics the estimators need are offered without materialising it where a factored form
    exists: `mean()` G (p,), `sq_norms()` ||g_i||^2 (n,), `dots(G)` <g_i, G> (n,).
    """
    names: tuple[str, ...]          # live parameter names inside the block, e.g. ("w2.weight", "w2.bias")
    shapes: tuple[torch.Size, ...]

    @property
    @abc.abstractmethod
    def n(self) -> int:
        """The number of samples."""

    @property
    def p(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """A (p,) vector as {name: tensor of the parameter's shape}."""
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            k = math.prod(shape)
            out[name] = vector[i:i + k].reshape(shape)
            i += k
        return out


class DenseGrads(BlockGrads):
    """g as an explicit (n, p) matrix (resnet: p = 2 C, small)."""

    def __init__(self, g: torch.Tensor, names, shapes, dtype=STAT_DTYPE):
        self.g, self.names, self.shapes = g.to(dtype), tuple(names), tuple(shapes)

    @property
    def n(self):
        return self.g.shape[0]

    def flat(self):
        return self.g

    def mean(self):
        return self.g.mean(0)

    def sq_norms(self):
        return (self.g * self.g).sum(1)

    def dots(self, G):
        return self.g @ G.to(self.g.dtype)

    def subset(self, index):
        return DenseGrads(self.g[index], self.names, self.shapes, self.g.dtype)

    @staticmethod
    def cat(parts):
        return DenseGrads(torch.cat([q.g for q in parts]), parts[0].names, parts[0].shapes)


class FactoredGrads(BlockGrads):
    """mlp: g_i = (vec(delta_i a_i'), delta_i) for (W2, b2), kept as delta (n, w) and a (n, w).

    ||g_i||^2 = ||delta_i||^2 (||a_i||^2 + 1);  G = (delta' a / n, mean delta);
    <g_i, G> = delta_i' G_W a_i + delta_i' G_b.  Cost O(n w^2), memory O(n w), never (n, w, w).
    """
    names = ("w2.weight", "w2.bias")

    def __init__(self, delta: torch.Tensor, a: torch.Tensor, dtype=STAT_DTYPE):
        self.delta, self.a = delta.to(dtype), a.to(dtype)   # (n, w_out), (n, w_hidden)
        self.shapes = (torch.Size((delta.shape[1], a.shape[1])), torch.Size((delta.shape[1],)))

    @property
    def n(self):
        return self.delta.shape[0]

    def flat(self):
        n = self.n
        outer = self.delta[:, :, None] * self.a[:, None, :]              # (n, w, w)
        return torch.cat([outer.reshape(n, -1), self.delta], 1)         # (n, w^2 + w)

    def mean(self):
        G_W = self.delta.T @ self.a / self.n                            # (w, w)
        return torch.cat([G_W.reshape(-1), self.delta.mean(0)])

    def sq_norms(self):
        return (self.delta ** 2).sum(1) * ((self.a ** 2).sum(1) + 1.0)

    def dots(self, G):
        G = self.unflatten(G.to(self.a.dtype))
        return ((self.delta @ G["w2.weight"]) * self.a).sum(1) + self.delta @ G["w2.bias"]

    def subset(self, index):
        return FactoredGrads(self.delta[index], self.a[index], self.a.dtype)

    @staticmethod
    def unflatten_shapes(vector: torch.Tensor, block: nn.Module) -> dict[str, torch.Tensor]:
        """A flat (W2, b2) vector as {"w2.weight": (w, w), "w2.bias": (w,)} in the block's dtype."""
        w_out, w_in = block.w2.weight.shape
        v = vector.to(block.w2.weight.dtype)
        return {"w2.weight": v[:w_out * w_in].reshape(w_out, w_in), "w2.bias": v[w_out * w_in:]}

    @staticmethod
    def cat(parts):
        return FactoredGrads(torch.cat([q.delta for q in parts]), torch.cat([q.a for q in parts]))


def _as_grads(per_sample_grads) -> BlockGrads:
    if isinstance(per_sample_grads, BlockGrads):
        return per_sample_grads
    g = per_sample_grads
    return DenseGrads(g, ("g",), (torch.Size((g.shape[1],)),))


# ---------------------------------------------------------------------------------------------
# estimators of kappa^2 = ||G||^2

@dataclass(frozen=True)
class MarginEstimate:
    """An estimate of kappa^2 with its standard error and one-sided lower confidence bound.

    lcb = value - z_{1-delta} stderr (normal approximation), so that P(kappa^2 < lcb) <~ delta.
    """
    value: float
    stderr: float
    lcb: float
    n: int


def _estimate(value: float, stderr: float, n: int, delta: float) -> MarginEstimate:
    z = statistics.NormalDist().inv_cdf(1.0 - delta)
    return MarginEstimate(float(value), float(stderr), float(value - z * stderr), int(n))


def u_statistic(per_sample_grads, delta: float = 0.05) -> MarginEstimate:
    """Unbiased estimate of ||G||^2 from per-sample gradients (theory.md 4; ours).

    U = (n^2 ||mean g||^2 - sum ||g_i||^2) / (n (n - 1)) = mean_i psi_i with the leave-one-out
    projections psi_i = <g_i, G_{-i}> = (n <g_i, G> - ||g_i||^2) / (n - 1). Standard error from the
    Hoeffding decomposition U - kappa^2 ~ (2/n) sum_i (<g_i, G> - kappa^2): se = 2 std_i(psi_i) / sqrt(n).
    The plug-in std carries the noise of G_{-i}, so se overstates the exact sd by about
    tr(Sigma^2)/n^2 in variance: negligible under a clear signal, conservative (about sqrt 2) under
    the null G = 0. per_sample_grads: (n, p) tensor or a BlockGrads. Returns MarginEstimate.
    """
    g = _as_grads(per_sample_grads)
    n = g.n
    if n < 2:
        raise ValueError(f"u_statistic needs n >= 2 per-sample gradients; got n={n}")
    G = g.mean()                                          # (p,)
    psi = (n * g.dots(G) - g.sq_norms()) / (n - 1)        # (n,)
    return _estimate(psi.mean().item(), 2.0 * psi.std().item() / math.sqrt(n), n, delta)


def cross_fit(per_sample_grads, generator: torch.Generator, delta: float = 0.05) -> MarginEstimate:
    """Split-half cross-fit X = <G_1, G_2> over a seeded random split (theory.md 4; ours).

    Unbiased because the halves are independent. se^2 = var_{i in 1}(<g_i, G_2>)/n_1 +
    var_{j in 2}(<g_j, G_1>)/n_2 (the same per-sample decomposition; conservative under the null).
    """
    g = _as_grads(per_sample_grads)
    n = g.n
    if n < 4:
        raise ValueError(f"cross_fit needs n >= 4 per-sample gradients; got n={n}")
    perm = torch.randperm(n, generator=generator).to(_device_of(g))
    first, second = g.subset(perm[: n // 2]), g.subset(perm[n // 2:])
    G1, G2 = first.mean(), second.mean()
    var = first.dots(G2).var().item() / first.n + second.dots(G1).var().item() / second.n
    return _estimate(torch.dot(G1, G2).item(), math.sqrt(var), n, delta)


def naive_sq_norm(per_sample_grads) -> float:
    """||G||^2, the plug-in estimate: E ||G_A||^2 = kappa^2 + tr(Sigma)/n, positive even when G = 0."""
    G = _as_grads(per_sample_grads).mean()
    return torch.dot(G, G).item()


def _device_of(g: BlockGrads) -> torch.device:
    return g.g.device if isinstance(g, DenseGrads) else g.delta.device


# ---------------------------------------------------------------------------------------------
# all positions in one pass: (h_k, g_k) from hooks, then each candidate's closed form

def _activations_and_gradients(model, x, y, positions):
    """h_k and g_k = d(sum_i l_i)/dh_k at the requested positions, eval mode, one pass.

    Position 0 is the input of blocks[0] (the stem's output), position k >= 1 the output of
    blocks[k-1]. reduction="sum" keeps g_i the gradient of sample i's own loss (theory.md 5).
    """
    acts: dict[int, torch.Tensor] = {}

    def grab_input(module, args):
        h = args[0].detach().requires_grad_(True)   # a leaf: gradients flow whatever requires_grad says
        acts[0] = h
        return (h,) + tuple(args[1:])

    def grab_output(k):
        def hook(module, args, out):
            acts[k] = out
        return hook

    handles = [model.blocks[0].register_forward_pre_hook(grab_input)]
    handles += [b.register_forward_hook(grab_output(k + 1)) for k, b in enumerate(model.blocks)]
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y, reduction="sum")
            grads = torch.autograd.grad(loss, [acts[k] for k in positions])
    finally:
        for h in handles:
            h.remove()
    return {k: (acts[k].detach(), g) for k, g in zip(positions, grads)}


def _check_zero_init(block: nn.Module, position: int):
    for name in live_parameters_of(block):
        if block.get_parameter(name).detach().abs().max().item() != 0.0:
            raise ValueError(f"candidate for position {position}: {name} is not zero; the closed form "
                             f"holds at phi0 (a zero-initialised block)")


@torch.no_grad()
def normalised_branch(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """zhat = (v - running mean) / sqrt(running var + eps), v the input of the BatchNorm that ends a
    conv block's branch (BN2 of a BasicBlock, BN3 of a torchvision Bottleneck; models.pre_norm_branch),
    eval mode; at phi0 the branch is bn.weight * zhat + bn.bias = 0. (n, C, H, W)"""
    v, bn = pre_norm_branch(block, h)                                   # (n, C, H, W)
    return (v - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)


@torch.no_grad()
def live_gradients(block: nn.Module, h: torch.Tensor, g: torch.Tensor, dtype=STAT_DTYPE) -> BlockGrads:
    """Per-sample live-parameter gradients of a zero-initialised `block` inserted where the old
    model has activation h and activation gradient g (theory.md 4, closed forms; ours).

    mlp (PostLNBlock): the block computes N(z), z = h + F = h at phi0; delta = J_N(z)' g with
      LayerNorm's exact Jacobian J_N' g = (g - mean(g) - y mean(g y)) / sigma, y = (z - mu)/sigma,
      sigma = sqrt(var(z) + eps); dW2 = delta a', db2 = delta, a = relu(W1 h + b1).
    resnet (BasicBlock, eval mode): u = g 1[h > 0]; dBN2.bias_c = sum_hw u_c,
      dBN2.weight_c = sum_hw (u zhat)_c, zhat = (conv2 output - running mean) / sqrt(running var + eps);
      the same for any block whose branch ends in a BatchNorm before ReLU(h + branch) (torchvision's
      BasicBlock: BN2; Bottleneck: BN3, zhat its normalised input).
    """
    if isinstance(block, PostLNBlock):
        centred = h - h.mean(-1, keepdim=True)                          # z = h + F = h at phi0: (n, w)
        sigma = torch.sqrt((centred * centred).mean(-1, keepdim=True) + LN_EPS)   # (Tensor.var is slower)
        yhat = centred / sigma                                          # (n, w)
        delta = (g - g.mean(-1, keepdim=True) - yhat * (g * yhat).mean(-1, keepdim=True)) / sigma
        a = F.relu(block.w1(h))                                         # (n, w)
        return FactoredGrads(delta, a, dtype)
    if hasattr(block, "bn2"):
        names = live_parameters_of(block)
        shape = block.get_parameter(names[0]).shape
        zhat = normalised_branch(block, h)                              # (n, C, H, W)
        u = g * (h > 0)                                                 # (n, C, H, W)
        flat = torch.cat([(u * zhat).sum((2, 3)), u.sum((2, 3))], 1)    # (n, 2C): weight, bias
        return DenseGrads(flat, names, (shape, shape), dtype)
    raise TypeError(f"no closed form for a {type(block).__name__} block")


def block_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, positions=None,
                    candidates: Optional[dict[int, nn.Module]] = None, batch_size: int = CHUNK
                    ) -> dict[int, BlockGrads]:
    """Per-sample live-parameter gradients at phi0 for a candidate block at every position, from
    ONE forward/backward pass of the old model per chunk of x (theory.md 4; ours).

    Exact for resnet (a zero block returns h exactly); for mlp the inserted LayerNorm moves the
    downstream input by a relative ~eps, so the one-at-a-time truth differs by O(LN_EPS) relative.
    """
    positions = check_positions(model, positions)
    missing = [k for k in positions if candidates is None or k not in candidates]
    if missing:
        raise ValueError(f"candidates are missing for positions {missing}; use candidate_block(model, k, x_S, seed)")
    for k in positions:
        _check_zero_init(candidates[k], k)
        candidates[k].eval()
    parts: dict[int, list[BlockGrads]] = {k: [] for k in positions}
    for chunk in _chunks(model, x, y, positions, candidates, batch_size):
        for k, q in chunk.items():
            parts[k].append(q)
    return {k: type(q[0]).cat(q) for k, q in parts.items()}


def chunk_size(x: torch.Tensor, batch_size: int = CHUNK) -> int:
    """Samples per pass: `batch_size`, raised for small inputs up to CHUNK_INPUT_ELEMENTS input
    numbers (at most MAX_CHUNK). The mlp's 32-d vectors go 8192 at a time, 3x16x16 images 1024."""
    per_sample = max(1, x[0].numel()) if len(x) else 1
    return max(batch_size, min(MAX_CHUNK, CHUNK_INPUT_ELEMENTS // per_sample))


def _chunks(model, x, y, positions, candidates, batch_size, dtype=STAT_DTYPE):
    """Yields {position: BlockGrads} for consecutive chunks of (x, y); model in eval mode."""
    was = model.training
    model.eval()
    batch_size = chunk_size(x, batch_size)
    try:
        for i in range(0, len(x), batch_size):
            hg = _activations_and_gradients(model, x[i:i + batch_size], y[i:i + batch_size], positions)
            yield {k: live_gradients(candidates[k], h, g, dtype) for k, (h, g) in hg.items()}
    finally:
        model.train(was)


def block_gradients_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, position: int,
                              candidate: nn.Module, batch_size: int = 256) -> torch.Tensor:
    """The independent check: insert `candidate` at `position` (insert_block) and take per-sample
    gradients of its live parameters with torch.func (functional_call + vmap(grad)), eval mode.

    Returns (n, p) in the order of the block's `live_parameters`.
    """
    f_new, _ = insert_block(model, position, x, y, block=candidate)
    f_new.eval()
    live = live_parameter_names(f_new, position)
    params = {n: p.detach() for n, p in f_new.named_parameters()}
    buffers = dict(f_new.named_buffers())
    phi = {n: params[n] for n in live}

    def loss_one(phi, xi, yi):
        out = functional_call(f_new, {**params, **buffers, **phi}, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0), reduction="sum")

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    out = []
    for i in range(0, len(x), batch_size):
        g = per_sample(phi, x[i:i + batch_size], y[i:i + batch_size])
        out.append(torch.cat([g[n].reshape(g[n].shape[0], -1) for n in live], 1))
    return torch.cat(out)


def population_margins(model, population, positions, candidates, delta: float = 0.05,
                       batch_size: int = CHUNK, points: Optional[int] = None) -> dict[int, MarginEstimate]:
    """kappa_k^2 by U on the first N = min(points, len) points of a large fresh sample, in one
    streamed pass (memory O(chunk + SE_POINTS)): it accumulates sum_i g_i and sum_i ||g_i||^2 (U's
    value) over the N points and keeps the first SE_POINTS g_i, whose psi_i give the se once the
    sum is known. The se needs only the variance of psi, so those points are enough (a relative
    error of about 1/sqrt(2 SE_POINTS) on the se, under 1%); the se is still that of the N-point
    mean, 2 sqrt(var psi / N).
    N is capped because every point costs a forward and backward pass (the risks use them all).
    Where the sample has label distributions p (synthetic draws), g_i is the gradient of
    -sum_c p_ic log softmax_c, which is E[g(x_i, y_i) | x_i, latent]: the same mean G, so U is still
    unbiased for ||G||^2, and the label noise's share of the variance is gone (Rao-Blackwell); then
    points defaults to POP_MARGIN_POINTS_EXPECTED, else POP_MARGIN_POINTS."""
    positions = check_positions(model, positions)
    for k in positions:
        _check_zero_init(candidates[k], k)
        candidates[k].eval()
    expected = population.p is not None
    if points is None:
        points = POP_MARGIN_POINTS_EXPECTED if expected else POP_MARGIN_POINTS
    N = min(points, len(population.y))
    x, y = population.x[:N], (population.p if expected else population.y)[:N]
    m = min(N, SE_POINTS)
    total: dict[int, torch.Tensor] = {}
    sq = {k: 0.0 for k in positions}
    head: dict[int, list[BlockGrads]] = {k: [] for k in positions}   # g_i of the first m points
    seen = 0
    for chunk in _chunks(model, x, y, positions, candidates, batch_size, CHUNK_DTYPE):
        for k, q in chunk.items():
            total[k] = total.get(k, 0) + (q.mean() * q.n).to(STAT_DTYPE)
            sq[k] += q.sq_norms().to(STAT_DTYPE).sum().item()
            if seen < m:
                head[k].append(q.subset(slice(0, m - seen)) if seen + q.n > m else q)
        seen += next(iter(chunk.values())).n
    s1 = {k: 0.0 for k in positions}
    s2 = {k: 0.0 for k in positions}
    for k in positions:
        for q in head[k]:
            psi = (q.dots(total[k]) - q.sq_norms()).to(STAT_DTYPE) / (N - 1)   # <g_i, G_{-i}>
            s1[k] += psi.sum().item()
            s2[k] += (psi * psi).sum().item()
    out = {}
    for k in positions:
        value = (total[k].dot(total[k]).item() - sq[k]) / (N * (N - 1))
        var = max(s2[k] / m - (s1[k] / m) ** 2, 0.0) * m / max(m - 1, 1)
        out[k] = _estimate(value, 2.0 * math.sqrt(var / N), N, delta)
    return out


# ---------------------------------------------------------------------------------------------
# the step "estimate margins"

@dataclass(frozen=True)
class PositionMargin:
    """Every estimate of kappa_k^2 at one insertion position (theory.md 4).

    kappa2_U, kappa2_cross: on the probe sample P (independent of theta_old); kappa2_naive_P:
    ||G_P||^2; kappa2_train_naive = ||G_S||^2 and kappa2_train_U: what fine-tuning on S sees
    (smaller once the old model fits S); kappa2_pop: U on a large fresh sample, with its se
    (None without a sampler); observed: the lower confidence bound of U_P is above 0.
    G_P: the probe-sample gradient {live name: tensor}, the jumpboard's direction is -G_P/||G_P||.
    """
    position: int
    kappa2_U: MarginEstimate
    kappa2_cross: MarginEstimate
    kappa2_naive_P: float
    kappa2_train_naive: Optional[float]          # None when not computed (descent_margins(train=False))
    kappa2_train_U: Optional[MarginEstimate]
    kappa2_pop: Optional[MarginEstimate]
    observed: bool
    G_P: dict
    live_parameters: tuple[str, ...]
    descent: Optional[DescentTest] = None

    def to_dict(self) -> dict:
        pop = self.kappa2_pop
        descent = {} if self.descent is None else self.descent.to_dict()
        return descent | {"position": self.position,
                "kappa2_U": self.kappa2_U.value, "kappa2_U_se": self.kappa2_U.stderr,
                "kappa2_U_lcb": self.kappa2_U.lcb,
                "kappa2_cross": self.kappa2_cross.value, "kappa2_cross_se": self.kappa2_cross.stderr,
                "kappa2_cross_lcb": self.kappa2_cross.lcb,
                "kappa2_naive_P": self.kappa2_naive_P, "kappa2_train_naive": self.kappa2_train_naive,
                "kappa2_train_U": None if self.kappa2_train_U is None else self.kappa2_train_U.value,
                "kappa2_train_U_se": None if self.kappa2_train_U is None else self.kappa2_train_U.stderr,
                "observed": self.observed,
                "kappa2_pop": None if pop is None else pop.value,
                "kappa2_pop_se": None if pop is None else pop.stderr}

    def records(self, step: int = 0) -> list[Record]:
        """The estimates as records of the phase "margins" (split P, S or pop)."""
        k = self.position
        out = [Record("margins", step, "P", "kappa2_U", self.kappa2_U.value, self.kappa2_U.stderr, k),
               Record("margins", step, "P", "kappa2_U_lcb", self.kappa2_U.lcb, None, k),
               Record("margins", step, "P", "kappa2_cross", self.kappa2_cross.value, self.kappa2_cross.stderr, k),
               Record("margins", step, "P", "kappa2_naive", self.kappa2_naive_P, None, k),
               Record("margins", step, "P", "observed", float(self.observed), None, k)]
        if self.kappa2_train_U is not None:
            out += [Record("margins", step, "S", "kappa2_naive", self.kappa2_train_naive, None, k),
                    Record("margins", step, "S", "kappa2_U", self.kappa2_train_U.value, self.kappa2_train_U.stderr, k)]
        if self.descent is not None:
            out += [Record("margins", step, "P", "slope_cross", self.descent.slope_cross, self.descent.se, k),
                    Record("margins", step, "P", "descent_observable", float(self.descent.observable), None, k)]
        if self.kappa2_pop is not None:
            out.append(Record("margins", step, "pop", "kappa2_U", self.kappa2_pop.value, self.kappa2_pop.stderr, k))
        return out


def descent_margins(model: nn.Module, S, P, population=None, positions=None,
                    candidates: Optional[dict[int, nn.Module]] = None, delta: float = 0.05, seed: int = 0,
                    batch_size: int = CHUNK, descent: bool = True, train: bool = True) -> list[PositionMargin]:
    """kappa_k^2 at every position by every estimator of theory.md 4, from one pass per sample,
    and (descent=True) the cross-fitted "descent observable" test of theory.md 4b (two more passes
    over P: its halves P1, P2 from kink.split_halves(P, seed), the jumpboard's split).

    S, P, population: objects with .x, .y (data.Split); population may be None (real data).
    train=False skips the pass over S for the training-side margins (kappa2_train_*: None).
    candidates default to candidate_block(model, k, S.x, seed) (BN calibrated on S for resnet: S
    sets zhat's normalisation, hence the direction's gamma part; P1 chooses the direction given it),
    all calibrated in one pass over S (models.candidate_blocks).
    `model`: a resx MLP or ResNet, or a torchvision ResNet seen through tv_resnet.ResNetBlocks.
    """
    positions = check_positions(model, positions)
    candidates = dict(candidates or {})
    missing = [k for k in positions if k not in candidates]
    if missing:
        candidates.update(candidate_blocks(model, missing, S.x, seed))
    on_P = block_gradients(model, P.x, P.y, positions, candidates, batch_size)
    on_S = block_gradients(model, S.x, S.y, positions, candidates, batch_size) if train else {}
    on_pop = (population_margins(model, population, positions, candidates, delta, batch_size)
              if population is not None else {})
    tests = descent_tests(model, P, positions, candidates, delta, seed, batch_size) if descent else {}
    generator = torch.Generator().manual_seed(seed)
    out = []
    for k in positions:
        U_P = u_statistic(on_P[k], delta)
        out.append(PositionMargin(
            position=k, kappa2_U=U_P, kappa2_cross=cross_fit(on_P[k], generator, delta),
            kappa2_naive_P=naive_sq_norm(on_P[k]),
            kappa2_train_naive=naive_sq_norm(on_S[k]) if train else None,
            kappa2_train_U=u_statistic(on_S[k], delta) if train else None, kappa2_pop=on_pop.get(k),
            observed=U_P.lcb > 0, G_P=on_P[k].unflatten(on_P[k].mean()),
            live_parameters=tuple(on_P[k].names), descent=tests.get(k)))
    return out


def descent_tests(model: nn.Module, P, positions, candidates: dict[int, nn.Module], delta: float = 0.05,
                  seed: int = 0, batch_size: int = CHUNK) -> dict[int, DescentTest]:
    """"Descent observable" at every position (theory.md 4b): the steepest one-sided direction d_hat
    on P1 (resnet: exact per channel, kink.steepest_direction; mlp: -G_P1/||G_P1||), then the
    per-sample one-sided derivatives D_i(d_hat) on P2, one pass over each half."""
    P1, P2 = split_halves(P, seed)
    resnet = not isinstance(candidates[positions[0]], PostLNBlock)   # a conv block: ReLU(h + branch) has a kink
    acc = {k: KinkSample() if resnet else [0.0, 0] for k in positions}
    for chunk in _io_chunks(model, P1.x, P1.y, positions, candidates, batch_size):
        for k, (h, g, block) in chunk.items():
            if resnet:
                acc[k].add(h, g, normalised_branch(block, h).float())
            else:
                q = live_gradients(block, h, g)
                acc[k][0] = acc[k][0] + q.mean() * q.n
                acc[k][1] += q.n
    directions, slope_in = {}, {}
    for k in positions:
        if resnet:   # kink.steepest_direction names the pair bn2.*; the block's last BN may be bn3
            best = steepest_direction(acc[k])
            names = live_parameters_of(candidates[k])
            directions[k] = None if best.direction is None else dict(zip(names, best.direction.values()))
            slope_in[k] = best.rate
        else:
            G = acc[k][0] / acc[k][1]
            norm = G.norm().item()
            directions[k] = None if norm == 0.0 else -G / norm            # flat, in live_parameters order
            slope_in[k] = -norm
    terms = {k: [] for k in positions if directions[k] is not None}
    if terms:
        for chunk in _io_chunks(model, P2.x, P2.y, list(terms), candidates, batch_size):
            for k, (h, g, block) in chunk.items():
                d = directions[k]
                terms[k].append(one_sided_terms(h, g, normalised_branch(block, h), *d.values())
                                if resnet else live_gradients(block, h, g).dots(d))
    out = {}
    for k in positions:
        d = directions[k]
        if d is not None and not resnet:
            d = FactoredGrads.unflatten_shapes(d, candidates[k])
        out[k] = descent_test(slope_in[k], torch.cat(terms[k]) if k in terms else None, len(P1.y), delta, d)
    return out


def _io_chunks(model, x, y, positions, candidates, batch_size):
    """Yields {position: (h, g, candidate)} for consecutive chunks of (x, y); model in eval mode."""
    was = model.training
    model.eval()
    batch_size = chunk_size(x, batch_size)
    try:
        for i in range(0, len(x), batch_size):
            hg = _activations_and_gradients(model, x[i:i + batch_size], y[i:i + batch_size], positions)
            yield {k: (h, g, candidates[k]) for k, (h, g) in hg.items()}
    finally:
        model.train(was)
