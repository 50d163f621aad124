"""PAC-Bayes route for the new block (theory.md 8b; THEORY.md 8b).

Protocol. S is split into S_a (first half: trains theta_old) and S_b (second half: trains the new
block), so theta_old, the inserted block's initialisation phi0 and every quantity the prior uses
are fixed before S_b. Only the new block is random:
- prior P_sigma = delta_{theta_old} x N(phi0, sigma^2 I) over all of the block's parameters;
- posterior Q_sigma = delta_{theta_old} x N(phi_hat, sigma^2 I), phi_hat trained on S_b;
- KL(Q_sigma || P_sigma) = ||phi_hat - phi0||^2 / (2 sigma^2).
Loss: the cross-entropy of the smoothed prediction p~ = (1 - alpha) softmax(z) + alpha / K, which
lies in [0, C] with C = log(K / alpha) for every input and every weight (a valid a-priori range;
the certificate is about this predictor: it is what a user would deploy with a floor on p~).
Bound (Maurer 2004, the kl form of Seeger's bound; n_b >= 8): with probability >= 1 - delta', for
all Q, kl(L_Sb(Q)/C || L(Q)/C) <= (KL + ln(2 sqrt(n_b) / delta')) / n_b. L_Sb(Q) is estimated by
Monte Carlo with an independent weight draw for every (pass, example) pair: given S_b the N
terms are independent in [0, C] with mean L_Sb(Q), so by the Chernoff-kl bound
L_Sb(Q)/C <= kl^-1(Lhat_MC / C, ln(1/delta'') / N). A grid of k sigmas is paid by a union bound:
delta' = delta'' = delta / (2k); the reported sigma is the one with the smallest bound.

mlp only: the block is y -> N(h + W2 relu(W1 h + b1) + b2), and a Gaussian weight matrix gives a
Gaussian pre-activation per example, W x + b ~ N(M x + m, sigma^2 (||x||^2 + 1) I): a weight draw
per example costs one forward (the local reparameterisation, exact here because each example
uses each weight once).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.data import Split
from ..core.models import LN_EPS, MLP, PostLNBlock, run_blocks

ALPHA = 0.1                                          # smoothing: C = log(K / alpha) = 4.6 nats for K = 10
SIGMAS = tuple(0.002 * 2.0 ** k for k in range(5))   # 0.002 .. 0.032: the paid grid
MC_PASSES = 40
STEPS = 40            # Adam steps on the bound's surrogate per sigma, minibatches of BATCH points of S_b
BATCH = 250


def kl_bernoulli(q: float, p: float) -> float:
    """kl(q || p) = q ln(q/p) + (1 - q) ln((1 - q)/(1 - p)), with 0 ln 0 = 0."""
    p = min(max(p, 1e-300), 1.0 - 1e-16)
    out = 0.0
    if q > 0:
        out += q * math.log(q / p)
    if q < 1:
        out += (1.0 - q) * math.log((1.0 - q) / (1.0 - p))
    return out


def kl_inverse_upper(q: float, eps: float) -> float:
    """sup {p in [q, 1] : kl(q || p) <= eps} by bisection; returns the upper bracket end, so the
    answer is never below the true inverse (conservative for a bound)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q={q!r} is not allowed: a mean loss in [0, 1]")
    if eps < 0:
        raise ValueError(f"eps={eps!r} is not allowed: eps >= 0")
    if q >= 1.0 or kl_bernoulli(q, 1.0 - 1e-16) <= eps:
        return 1.0
    lo, hi = q, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if kl_bernoulli(q, mid) > eps:
            hi = mid
        else:
            lo = mid
    return hi


def smoothed_loss(logits: torch.Tensor, y: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """-log((1 - alpha) softmax(z)_y + alpha / K): in [0, log(K / alpha)], per sample. Computed in
    float64 and clamped to that range (float32 rounding overshot C by 6e-8, and the bound's kl needs
    every term inside [0, C]); returned in the logits' dtype, whose rounding stays inside the range."""
    K = logits.shape[1]
    p = F.softmax(logits.double(), dim=1).gather(1, y[:, None]).squeeze(1)
    C = math.log(K / alpha)
    out = (-torch.log((1.0 - alpha) * p + alpha / K)).clamp(0.0, C)
    return out if logits.dtype == torch.float64 else out.to(logits.dtype).clamp(0.0, _below(C, logits.dtype))


def _below(C: float, dtype: torch.dtype) -> float:
    """The largest number of `dtype` that is <= C (float32 rounds log(K/alpha) up, above C)."""
    t = torch.tensor(C, dtype=dtype)
    return float(t if float(t) <= C else torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype)))


def _noisy_linear(x, W, b, sigma, gen):
    """One draw of W + sigma E, b + sigma e per example: exact in distribution."""
    mean = F.linear(x, W, b)
    scale = sigma * torch.sqrt(x.pow(2).sum(dim=1, keepdim=True) + 1.0)
    return mean + scale * torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)


def block_input(model: MLP, position: int, x: torch.Tensor) -> torch.Tensor:
    """h entering the block at `position` (the stem and the blocks before it are not random)."""
    return run_blocks(model, model.embed(x), 0, position)


def stochastic_logits(model: MLP, position: int, h: torch.Tensor, params: dict, sigma: float,
                      gen: Optional[torch.Generator]) -> torch.Tensor:
    """Logits from the block input h, with the block at `position` drawn from N(params, sigma^2 I),
    one draw per example (sigma = 0 or gen = None: the posterior mean)."""
    if sigma > 0 and gen is not None:
        a = F.relu(_noisy_linear(h, params["w1.weight"], params["w1.bias"], sigma, gen))
        branch = _noisy_linear(a, params["w2.weight"], params["w2.bias"], sigma, gen)
    else:
        branch = F.linear(F.relu(F.linear(h, params["w1.weight"], params["w1.bias"])),
                          params["w2.weight"], params["w2.bias"])
    h = F.layer_norm(h + branch, h.shape[-1:], eps=LN_EPS)
    return model.head(run_blocks(model, h, position + 1))


@dataclass
class SigmaBound:
    sigma: float
    kl: float                # ||phi_hat - phi0||^2 / (2 sigma^2)
    L_mc: float              # Monte Carlo estimate of L_Sb(Q) (smoothed CE)
    L_emp_upper: float       # its kl upper bound (C times)
    bound: float             # the PAC-Bayes bound on L(Q) (smoothed CE)


def pac_bayes_block(f_new: MLP, position: int, S_b: Split, delta: float, *, alpha: float = ALPHA,
                    sigmas=SIGMAS, steps: int = STEPS, batch: int = BATCH, lr: float = 3e-3,
                    mc_passes: int = MC_PASSES,
                    seed: int = 0, population: Optional[Split] = None) -> dict:
    """Train phi_hat on S_b for each sigma (objective: PBB's quadratic bound with that sigma's KL)
    and bound L(Q_sigma); report the best sigma. `f_new` is the expanded model at phi0 whose old
    parameters and phi0 were fixed without S_b; it is not modified."""
    if not isinstance(f_new, MLP) or not isinstance(f_new.blocks[position], PostLNBlock):
        raise ValueError("arch=resnet has no PAC-Bayes route: it is derived for the mlp's post-LN blocks only (arch=mlp)")
    n_b = len(S_b)
    if n_b < 8:
        raise ValueError(f"S_b has {n_b} points; the kl PAC-Bayes bound needs at least 8")
    K = f_new.head.out_features
    C = math.log(K / alpha)
    k = len(sigmas)
    d_each = delta / (2.0 * k)
    block = f_new.blocks[position]
    phi0 = {n: p.detach().clone().float() for n, p in block.named_parameters()}
    model = _frozen(f_new)
    with torch.no_grad():
        h_b = block_input(model, position, S_b.x.float())
    y = S_b.y
    log_term = math.log(2.0 * math.sqrt(n_b) / d_each)
    out, posts = [], {}
    for j, sigma in enumerate(sigmas):
        gen = torch.Generator(device=h_b.device).manual_seed(seed * 1000 + j)
        params = {n: p.clone().requires_grad_(True) for n, p in phi0.items()}
        opt = torch.optim.Adam(params.values(), lr=lr)
        for _ in range(steps):
            idx = torch.randint(0, n_b, (min(batch, n_b),), generator=gen, device=h_b.device)
            kl = sum(((params[n] - phi0[n]) ** 2).sum() for n in phi0) / (2.0 * sigma ** 2)
            z = stochastic_logits(model, position, h_b[idx], params, sigma, gen)
            emp = smoothed_loss(z, y[idx], alpha).mean() / C
            eps = (kl + log_term) / (2.0 * n_b)
            objective = (torch.sqrt(emp + eps) + torch.sqrt(eps)) ** 2      # PBB "fquad", an upper bound
            opt.zero_grad()
            objective.backward()
            opt.step()
        params = {n: p.detach() for n, p in params.items()}
        kl = sum(((params[n].double() - phi0[n].double()) ** 2).sum().item() for n in phi0) / (2.0 * sigma ** 2)
        mc_gen = torch.Generator(device=h_b.device).manual_seed(seed * 1000 + 500 + j)
        with torch.no_grad():   # all passes in one batch: every row gets its own weight draw
            losses = smoothed_loss(stochastic_logits(model, position, h_b.repeat(mc_passes, 1), params, sigma, mc_gen),
                                   y.repeat(mc_passes), alpha)
        L_mc = losses.mean().item()
        emp_upper = kl_inverse_upper(min(L_mc / C, 1.0), math.log(1.0 / d_each) / losses.numel())
        bound = C * kl_inverse_upper(emp_upper, (kl + log_term) / n_b)
        out.append(SigmaBound(sigma, kl, L_mc, C * emp_upper, bound))
        posts[sigma] = params
    best = min(out, key=lambda b: b.bound)
    n_cert = n_to_certify(best.L_emp_upper / C, best.kl, d_each, math.log(K) / C)
    result = {"certifies": "L(Q_new) <= bound: the stochastic expanded model (theta_old on S_a, new block "
                           f"~ N(phi_hat, sigma^2 I)), smoothed cross-entropy with alpha = {alpha:g}",
              "bound": best.bound, "sigma": best.sigma, "kl": best.kl, "L_Sb_mc": best.L_mc,
              "L_Sb_upper": best.L_emp_upper, "loss_range": C, "log_K": math.log(K), "alpha": alpha,
              "n_b": n_b, "delta": delta, "grid": [b.__dict__ for b in out], "mc_terms": mc_passes * n_b,
              "informative": best.bound < math.log(K), "valid": True,
              "n_b_to_certify": n_cert}
    if population is not None:
        result.update(posterior_population_risk(model, position, posts[best.sigma], best.sigma, population,
                                                alpha, seed))
    return result


def n_to_certify(q: float, kl: float, delta_each: float, target: float) -> Optional[float]:
    """The n_b at which kl^-1(q, (kl + ln(2 sqrt(n)/delta))/n) < target with q and kl held at
    their observed values (None: never, q >= target). Bisection on log n; the bound falls with n."""
    def bound(n):
        return kl_inverse_upper(q, (kl + math.log(2.0 * math.sqrt(n) / delta_each)) / n)
    if q >= target or bound(1e15) >= target:
        return None
    lo, hi = math.log(8.0), math.log(1e15)
    if bound(8.0) < target:
        return 8.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if bound(math.exp(mid)) < target else (mid, hi)
    return float(math.ceil(math.exp(hi)))


@torch.no_grad()
def posterior_population_risk(model: MLP, position: int, params: dict, sigma: float, population: Split,
                              alpha: float = ALPHA, seed: int = 0, batch_size: int = 8192) -> dict:
    """The observed counterparts on a fresh sample: the posterior's smoothed risk (one weight draw
    per point; what the bound bounds), its plain cross-entropy, and the posterior mean's."""
    gen = torch.Generator(device=population.x.device).manual_seed(seed + 77)
    sm, ce, mean_ce = [], [], []
    for i in range(0, len(population), batch_size):
        hb, yb = block_input(model, position, population.x[i:i + batch_size].float()), population.y[i:i + batch_size]
        z = stochastic_logits(model, position, hb, params, sigma, gen)
        sm.append(smoothed_loss(z, yb, alpha))
        ce.append(F.cross_entropy(z, yb, reduction="none"))
        mean_ce.append(F.cross_entropy(stochastic_logits(model, position, hb, params, 0.0, None), yb,
                                       reduction="none"))
    sm, ce, mean_ce = torch.cat(sm), torch.cat(ce), torch.cat(mean_ce)
    m = len(sm)
    return {"L_pop_Q_smoothed": sm.mean().item(), "L_pop_Q_smoothed_se": sm.std().item() / math.sqrt(m),
            "L_pop_Q": ce.mean().item(), "L_pop_mean": mean_ce.mean().item(), "m_pop": m}


def _frozen(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).float().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
