"""The network as stages and weight layers, with the norms the complexity terms need (theory.md 7).

`describe(model, x_S, reference)` walks an mlp or a resnet once and returns, per stage, its
Lipschitz factor and, per weight layer (convolutions unrolled with their BatchNorm folded in,
biases by augmentation), its spectral and Frobenius norms, its (2,1) distance to the reference,
and the Frobenius norm of its input over S. Everything is float64 and measured on S; GRS, BFT and
the Lipschitz product in `resx.theory.bounds` are read off this one description.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.models import LN_EPS, MLP, BasicBlock, PostLNBlock, ResNet, block_prefix
from ..core.tv_resnet import ResNetBlocks, TVBasicBlock


@dataclass
class Stage:
    name: str
    grs: float        # factor in the GRS product
    lip: float        # Lipschitz factor (LayerNorm: on points whose pre-norm variance is >= the min on S)
    peels: int        # factor-2 peeling steps it costs in GRS (ReLU and LayerNorm layers)
    note: str
    budgets: tuple = ()   # the norms whose product (with 1 + ...) makes `grs`: rounded up on a grid


@dataclass
class WeightLayer:
    name: str
    stage: int        # index of its stage
    dist21: float     # ||[A, b] - [M, b0]||_{2,1}: sum over output units of the row distance (BFT)
    spec: float       # operator-norm bound of the linear map x -> A x
    x_sq: float       # sum over S of the squared norm of its (augmented) input; patches for convs
    after: float      # Lipschitz factor from its output to its stage's output
    dims: tuple       # (augmented input dim, output dim): BFT's W is the largest


@dataclass
class Net:
    stages: list
    weights: list
    head_W: torch.Tensor      # (K, D) float64
    head_b: torch.Tensor      # (K,)
    head_ref: torch.Tensor    # (K, D + 1): reference [W, b]
    head_x_sq: float          # sum over S of ||features||^2 + 1
    B_x: float                # max ||x|| on S
    B_x_aug: float            # the same with the stem's constant input (bias augmentation)
    B_h: float                # sqrt(w) (mlp) or max ||features|| on S (resnet)
    B_h_measured: bool
    n: int
    x_rms_aug: float = 0.0    # sqrt(mean over S of ||x||^2 + the constant input): GRS's empirical form


def describe(model: nn.Module, x_S: torch.Tensor, reference: Optional[nn.Module], batch_size: int) -> Net:
    if reference is not None and len(reference.blocks) != len(model.blocks):
        raise ValueError(f"reference has {len(reference.blocks)} blocks and the model {len(model.blocks)}: "
                         "pass f_new at phi0 (the expanded model right after insert_block, before fine-tuning)")
    was = model.training
    model.eval()
    if reference is not None:
        was_ref = reference.training
        reference.eval()
    try:
        if isinstance(model, MLP):
            return _describe_mlp(model, x_S, reference, batch_size)
        if isinstance(model, (ResNet, ResNetBlocks)):
            return _describe_resnet(model, x_S, reference, batch_size)
        raise TypeError(f"no bound for a {type(model).__name__}; expected MLP or ResNet")
    finally:
        model.train(was)
        if reference is not None:
            reference.train(was_ref)


@torch.no_grad()
def _describe_mlp(model: MLP, x_S, ref, batch_size) -> Net:
    for blk in model.blocks:
        if not isinstance(blk, PostLNBlock):
            raise TypeError(f"mlp blocks must be PostLNBlock, got {type(blk).__name__}")
    sq: dict[str, float] = {}
    var_min: dict[str, float] = {}
    B_x = 0.0
    for i in range(0, len(x_S), batch_size):
        x = x_S[i:i + batch_size].flatten(1).double()                       # (b, d)
        B_x = max(B_x, x.norm(dim=1).max().item())
        _acc(sq, "stem", x)
        v = F.linear(x, model.stem.weight.double(), model.stem.bias.double())   # (b, w) pre-norm
        _min(var_min, "stem", v.var(dim=1, unbiased=False))
        h = F.layer_norm(v, v.shape[-1:], eps=LN_EPS)
        for l, blk in enumerate(model.blocks):
            _acc(sq, f"blocks.{l}.w1", h)
            a = F.relu(F.linear(h, blk.w1.weight.double(), blk.w1.bias.double()))
            _acc(sq, f"blocks.{l}.w2", a)
            v = h + F.linear(a, blk.w2.weight.double(), blk.w2.bias.double())
            _min(var_min, f"blocks.{l}", v.var(dim=1, unbiased=False))
            h = F.layer_norm(v, v.shape[-1:], eps=LN_EPS)
        _acc(sq, "head", h)
    n = len(x_S)
    stages, weights = [], []

    def ln_factor(name):                                     # 1/sqrt(min var + eps) over S
        return 1.0 / math.sqrt(var_min[name] + LN_EPS)

    A, M = _affine(model.stem), _affine(_sub(ref, "stem"))
    s, inv = _spec(model.stem.weight), ln_factor("stem")
    stages.append(Stage("stem", _spec(A) * inv, s * inv, 1,
                         f"Linear then LayerNorm; 1/sqrt(min var + eps) = {inv:.4g} on S", (_spec(A),)))
    weights.append(WeightLayer("stem", 0, _dist21(A, M), s, sq["stem"] + n, inv, tuple(A.shape[::-1])))
    for l, blk in enumerate(model.blocks):
        name = f"blocks.{l}"
        A1, M1 = _affine(blk.w1), _affine(_sub(ref, f"{name}.w1"))
        A2, M2 = _affine(blk.w2), _affine(_sub(ref, f"{name}.w2"))
        s1, s2, inv = _spec(blk.w1.weight), _spec(blk.w2.weight), ln_factor(name)
        k = len(stages)
        stages.append(Stage(name, (1.0 + _spec(A2) * frobenius(A1)) * inv, (1.0 + s1 * s2) * inv, 2,
                             f"N(h + W2 relu(W1 h + b1) + b2); 1/sqrt(min var + eps) = {inv:.4g} on S",
                             (_spec(A2), frobenius(A1))))
        weights.append(WeightLayer(f"{name}.w1", k, _dist21(A1, M1), s1, sq[f"{name}.w1"] + n, s2 * inv,
                               tuple(A1.shape[::-1])))
        weights.append(WeightLayer(f"{name}.w2", k, _dist21(A2, M2), s2, sq[f"{name}.w2"] + n, inv,
                               tuple(A2.shape[::-1])))
    head_ref = _affine(_sub(ref, "head"))
    return Net(stages, weights, model.head.weight.detach().double(), model.head.bias.detach().double(),
                head_ref if head_ref is not None else torch.zeros(model.head.out_features, model.head.in_features + 1,
                                                                  dtype=torch.float64, device=A.device),
                sq["head"] + n, B_x, math.sqrt(B_x ** 2 + 1.0), math.sqrt(model.head.in_features), False, n,
                math.sqrt(sq["stem"] / n + 1.0))


def _shortcut(model: nn.Module, blk: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(the block's shortcut, its layer name): resx's `shortcut`, torchvision's `downsample` (None: identity)."""
    if isinstance(model, ResNetBlocks):
        return (blk.downsample or nn.Identity()), f"{name}.downsample"
    return blk.shortcut, f"{name}.shortcut"


@torch.no_grad()
def _describe_resnet(model: nn.Module, x_S, ref, batch_size) -> Net:
    """resx's ResNet, or torchvision's BasicBlock ResNet adapted to small images (ResNetBlocks:
    conv1 + bn1 + ReLU as the stem, no max-pool; the same stages, `downsample` as the shortcut)."""
    if isinstance(model, ResNetBlocks) and not isinstance(model.maxpool, nn.Identity):
        raise TypeError("no bound for a torchvision ResNet with a max-pool stem; the small-image adaptation "
                        "(arch=resnet18|resnet34) has none")
    conv, bn = _conv_bn_modules(model, "stem")
    sq: dict[str, float] = {}
    hw: dict[str, tuple] = {}
    B_x = B_h = 0.0
    for i in range(0, len(x_S), batch_size):
        x = x_S[i:i + batch_size]
        B_x = max(B_x, x.double().flatten(1).norm(dim=1).max().item())
        _acc(sq, "stem", x)
        hw.setdefault("stem", tuple(x.shape[-2:]))
        h = model.embed(x)                                                  # (b, w, H, W)
        for l, blk in enumerate(model.blocks):
            if not isinstance(blk, (BasicBlock, TVBasicBlock)):
                raise TypeError(f"resnet blocks must be BasicBlock, got {type(blk).__name__}")
            name = block_prefix(model, l)
            shortcut, sc_name = _shortcut(model, blk, name)
            _acc(sq, f"{name}.conv1", h)
            hw.setdefault(f"{name}.conv1", tuple(h.shape[-2:]))
            a = F.relu(blk.bn1(blk.conv1(h)))
            _acc(sq, f"{name}.conv2", a)
            hw.setdefault(f"{name}.conv2", tuple(a.shape[-2:]))
            if not isinstance(shortcut, nn.Identity):
                _acc(sq, sc_name, h)
                hw.setdefault(sc_name, tuple(h.shape[-2:]))
            h = F.relu(shortcut(h) + blk.bn2(blk.conv2(a)))
        hw.setdefault("pool", tuple(h.shape[-2:]))
        phi = h.mean(dim=(2, 3))                                            # (b, 4w)
        _acc(sq, "head", phi)
        B_h = max(B_h, phi.double().norm(dim=1).max().item())
    n = len(x_S)
    stages, weights = [], []

    def conv_terms(name, conv, bn):
        c = ConvBN(conv, bn, hw[name])
        r = ConvBN(*_conv_bn_modules(ref, name), hw[name]) if ref is not None else None
        return c, c.dist21(r), c.patches * sq[name] + n * c.out_positions

    c, dist, x_sq = conv_terms("stem", conv, bn)
    stages.append(Stage("stem", c.frob_unrolled, c.spec, 1, "conv3x3-BN-ReLU (unrolled Frobenius norm)",
                        (c.frob_unrolled,)))
    weights.append(WeightLayer("stem", 0, dist, c.spec, x_sq, 1.0, c.dims))
    for l, blk in enumerate(model.blocks):
        name = block_prefix(model, l)
        shortcut, sc_name = _shortcut(model, blk, name)
        k = len(stages)
        c1, d1, x1 = conv_terms(f"{name}.conv1", blk.conv1, blk.bn1)
        c2, d2, x2 = conv_terms(f"{name}.conv2", blk.conv2, blk.bn2)
        grs_sc, lip_sc, sc_note, sc_budget = 1.0, 1.0, "identity shortcut", ()
        if not isinstance(shortcut, nn.Identity):
            cs, ds, xs = conv_terms(sc_name, shortcut[0], shortcut[1])
            grs_sc, lip_sc, sc_note, sc_budget = cs.spec_aug, cs.spec, "1x1 conv + BN shortcut", (cs.spec_aug,)
            weights.append(WeightLayer(sc_name, k, ds, cs.spec, xs, 1.0, cs.dims))
        stages.append(Stage(name, grs_sc + c2.spec_aug * c1.frob_unrolled, lip_sc + c1.spec * c2.spec, 2,
                             f"ReLU(shortcut(h) + BN2 conv2 ReLU(BN1 conv1 h)); {sc_note}",
                             sc_budget + (c2.spec_aug, c1.frob_unrolled)))
        weights.append(WeightLayer(f"{name}.conv1", k, d1, c1.spec, x1, c2.spec, c1.dims))
        weights.append(WeightLayer(f"{name}.conv2", k, d2, c2.spec, x2, 1.0, c2.dims))
    H, W = hw["pool"]
    stages.append(Stage("pool", 1.0 / math.sqrt(H * W), 1.0 / math.sqrt(H * W), 0,
                         f"global average pool over {H}x{W}: operator norm 1/sqrt(HW)"))
    head_ref = _affine(_sub(ref, "fc" if isinstance(model, ResNetBlocks) else "head"))
    Hx, Wx = hw["stem"]
    return Net(stages, weights, model.head.weight.detach().double(), model.head.bias.detach().double(),
                head_ref if head_ref is not None else torch.zeros(model.head.out_features, model.head.in_features + 1,
                                                                  dtype=torch.float64,
                                                                  device=model.head.weight.device),
                sq["head"] + n, B_x, math.sqrt(B_x ** 2 + Hx * Wx), B_h, True, n,
                math.sqrt(sq["stem"] / n + Hx * Wx))


def _conv_bn_modules(model: nn.Module, name: str) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The (conv, BN) pair a layer name refers to: "stem", "blocks.l.conv1|conv2|shortcut"
    (torchvision: "layerS.j.conv1|conv2|downsample")."""
    if name == "stem":
        return (model.conv1, model.bn1) if isinstance(model, ResNetBlocks) else (model.stem[0], model.stem[1])
    if name.endswith("shortcut") or name.endswith("downsample"):
        sc = model.get_submodule(name)
        return sc[0], sc[1]
    return model.get_submodule(name), model.get_submodule(name[:-5] + "bn" + name[-1])


class ConvBN:
    """An eval-mode conv followed by BN as one affine map x -> conv(x; s W) + t (theory.md 7; ours).

    s = gamma / sqrt(running_var + eps), t = beta - running_mean s: BN folded into the kernel.
    Operator norm: ||conv||_2 <= min(ceil(k/stride) ||W_mat||_2, sum_taps ||W_tap||_2), W_mat the
    (cout, cin k k) reshape: each output position applies W_mat to one patch and each input pixel
    lies in at most ceil(k/stride)^2 patches; the second is Young's inequality over the k*k shifts.
    Frobenius norm of the unrolled (Toeplitz) operator: exact, sum over taps of the number of
    output positions where the tap is in bounds times ||W_tap||_F^2, plus (bias augmentation)
    out_positions ||t||^2. Bias as an extra input channel of ones (its only nonzero tap the centre).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, hw_in: tuple):
        s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        self.W = conv.weight.detach().double() * s[:, None, None, None]      # (cout, cin, k, k)
        self.t = bn.bias.detach().double() - bn.running_mean.double() * s    # (cout,)
        k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        H, W = hw_in
        rows, cols = _tap_counts(k, stride, pad, H), _tap_counts(k, stride, pad, W)
        self.out_positions = len_out(H, k, stride, pad) * len_out(W, k, stride, pad)
        cover = math.ceil(k / stride)
        self.patches = cover * cover                  # max patches holding one input pixel
        Wm = self.W.flatten(1)                        # (cout, cin k k)
        self.A = torch.cat([Wm, self.t[:, None]], 1)  # (cout, cin k k + 1): augmented
        taps = self.W.pow(2).sum(dim=(0, 1))          # (k, k): ||W_tap||_F^2
        counts = torch.tensor(rows, dtype=torch.float64, device=taps.device)[:, None] * \
            torch.tensor(cols, dtype=torch.float64, device=taps.device)[None, :]
        self.frob_unrolled = math.sqrt((counts * taps).sum().item() + self.out_positions * self.t.pow(2).sum().item())
        young = sum(_spec(self.W[:, :, i, j]) for i in range(k) for j in range(k))
        self.spec = min(cover * _spec(Wm), young)
        self.spec_aug = cover * _spec(self.A)
        self.dims = (self.A.shape[1], self.A.shape[0])

    def dist21(self, ref: Optional["ConvBN"]) -> float:
        return _dist21(self.A, ref.A if ref is not None else None)


def len_out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _tap_counts(k: int, stride: int, pad: int, size: int) -> list[int]:
    """For each kernel offset i, the number of output positions r with 0 <= r*stride + i - pad < size."""
    out = len_out(size, k, stride, pad)
    return [sum(1 for r in range(out) if 0 <= r * stride + i - pad < size) for i in range(k)]


def _sub(model: Optional[nn.Module], name: str):
    return None if model is None else model.get_submodule(name)


def _affine(lin) -> Optional[torch.Tensor]:
    """[W, b] of an nn.Linear in float64, (out, in + 1); None for None."""
    if lin is None:
        return None
    return torch.cat([lin.weight.detach().double(), lin.bias.detach().double()[:, None]], 1)


def _spec(A: torch.Tensor) -> float:
    """Spectral norm (largest singular value), float64: sqrt of the largest eigenvalue of the smaller
    Gram matrix A A' or A'A (exact, and for resnet18's (512, 4609) layers 14x faster than an SVD;
    the eigenvalue's error is ~eps sigma_max^2, so sigma_max keeps ~15 digits)."""
    A = A.detach().double()
    if A.dim() != 2 or min(A.shape) == 0:
        return torch.linalg.matrix_norm(A, ord=2).item()
    gram = A @ A.T if A.shape[0] <= A.shape[1] else A.T @ A
    return math.sqrt(max(torch.linalg.eigvalsh(gram)[-1].item(), 0.0))


def frobenius(A: torch.Tensor) -> float:
    return A.detach().double().norm().item()


def _dist21(A: torch.Tensor, M: Optional[torch.Tensor]) -> float:
    """||A - M||_{2,1} over output units: sum of row distances (BFT's ||A^T - M^T||_{2,1})."""
    D = A if M is None else A - M.to(A.device)
    return D.norm(dim=1).sum().item()


def _acc(sq: dict, name: str, t: torch.Tensor):
    sq[name] = sq.get(name, 0.0) + t.double().pow(2).sum().item()


def _min(d: dict, name: str, v: torch.Tensor):
    d[name] = min(d.get(name, math.inf), v.min().item())


