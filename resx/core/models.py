"""The two post-normalized residual architectures and block insertion (theory.md sections 2-3).

Both models share one skeleton, `stem -> blocks -> head`, with `blocks` an `nn.ModuleList`, so that
"insert after block k" is `blocks.insert(k, new_block)` (k = 0: right after the stem) and the
activation at position k is the stem's output (k = 0) or block k's output.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RunConfig
from .tv_resnet import TORCHVISION_ARCHS, ResNetBlocks, last_norm, pre_norm_branch, small_resnet  # noqa: F401

LN_EPS = 1e-6  # LayerNorm epsilon; a zero mlp block changes h by a factor 1/sqrt(1 - eps + eps) ~ eps/2


# ---------------------------------------------------------------------------------------------
# mlp: h -> N(h + W2 relu(W1 h + b1) + b2), N a LayerNorm without affine parameters

class PostLNBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.w1 = nn.Linear(width, width)
        self.w2 = nn.Linear(width, width)

    def forward(self, h):
        return F.layer_norm(h + self.w2(F.relu(self.w1(h))), h.shape[-1:], eps=LN_EPS)

    def zero_init_(self):
        """W2 = 0, b2 = 0, b1 = 0, W1 Kaiming: the block is N(h), i.e. h up to eps (theory.md 3)."""
        nn.init.kaiming_normal_(self.w1.weight, nonlinearity="relu")
        nn.init.zeros_(self.w1.bias)
        nn.init.zeros_(self.w2.weight)
        nn.init.zeros_(self.w2.bias)
        return self

    live_parameters = ("w2.weight", "w2.bias")

    def line(self, h, direction):
        """(u, post) such that, with the live parameters at eta d (a zero block moved along d), the
        block maps h to post(h + eta u) for every eta: u = d_W relu(W1 h + b1) + d_b, post the
        LayerNorm. A line search computes u once, then each step is a LayerNorm, not two Linears."""
        u = F.linear(F.relu(self.w1(h)), direction["w2.weight"], direction["w2.bias"])
        return u, lambda z: F.layer_norm(z, z.shape[-1:], eps=LN_EPS)


class MLP(nn.Module):
    """Post-LN residual MLP; every block output has ||h|| <= sqrt(w) (norm control, theory.md 2)."""

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int):
        super().__init__()
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(PostLNBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)

    def embed(self, x):
        return F.layer_norm(self.stem(x.flatten(1)), (self.stem.out_features,), eps=LN_EPS)

    def features(self, x):
        """The representation before the head: (n, w)."""
        return self.pool(run_blocks(self, self.embed(x), 0))

    def pool(self, h):
        return h

    def forward(self, x):
        return self.head(self.features(x))

    def new_block(self, position: int) -> PostLNBlock:
        return PostLNBlock(self.stem.out_features).zero_init_()


# ---------------------------------------------------------------------------------------------
# resnet: ResNet-v1 with BasicBlocks, three stages of widths w, 2w, 4w (torchvision's recipe)

def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, h):
        return F.relu(self.shortcut(h) + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))))

    def zero_init_(self):
        """BN2 weight = bias = 0: the branch is exactly 0 and ReLU(h + 0) = h for h >= 0 (theory.md 3)."""
        nn.init.zeros_(self.bn2.weight)
        nn.init.zeros_(self.bn2.bias)
        return self

    live_parameters = ("bn2.weight", "bn2.bias")

    def line(self, h, direction):
        """(u, post) such that, with BN2's (weight, bias) at eta d (a zero block moved along d), the
        block maps h to post(h + eta u) for every eta, in eval mode with an identity shortcut:
        u = d_weight zhat + d_bias, zhat BN2's input normalised by its running statistics, post
        the ReLU. A line search computes u once, then each step is a ReLU, not two convolutions."""
        if self.training or not isinstance(self.shortcut, nn.Identity):
            raise ValueError("BasicBlock.line needs eval mode and an identity shortcut (an inserted block)")
        bn2 = self.bn2
        v = self.conv2(F.relu(self.bn1(self.conv1(h))))
        zhat = (v - bn2.running_mean[:, None, None]) / torch.sqrt(bn2.running_var[:, None, None] + bn2.eps)
        return zhat * direction["bn2.weight"][:, None, None] + direction["bn2.bias"][:, None, None], F.relu


def resnet_plan(width: int, blocks_per_stage: int) -> list[tuple[int, int, int]]:
    """(in channels, out channels, stride) of every block, stages w, 2w, 4w with strides 1, 2, 2."""
    plan, cin = [], width
    for stage, stride in enumerate((1, 2, 2)):
        cout = width * 2**stage
        for b in range(blocks_per_stage):
            plan.append((cin, cout, stride if b == 0 else 1))
            cin = cout
    return plan


class ResNet(nn.Module):
    """ResNet-(6b+2) for small images; `depth` = b blocks per stage."""

    def __init__(self, in_channels: int, width: int, depth: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(BasicBlock(*spec) for spec in resnet_plan(width, depth))
        self.head = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embed(self, x):
        return self.stem(x)

    def features(self, x):
        """Globally pooled representation before the head: (n, 4w)."""
        return self.pool(run_blocks(self, self.embed(x), 0))

    def pool(self, h):
        return h.mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))

    def channels_at(self, position: int) -> int:
        """Channels of the activation after block `position` (0: the stem)."""
        if position == 0:
            return self.stem[0].out_channels
        return self.blocks[position - 1].conv2.out_channels

    def new_block(self, position: int) -> BasicBlock:
        c = self.channels_at(position)
        block = BasicBlock(c, c, 1)
        nn.init.kaiming_normal_(block.conv1.weight, mode="fan_out", nonlinearity="relu")
        nn.init.kaiming_normal_(block.conv2.weight, mode="fan_out", nonlinearity="relu")
        return block.zero_init_()


def run_blocks(model: nn.Module, h: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """h through blocks[start:stop]: the activation at position `stop` from the one at `start`."""
    for block in model.blocks[start:stop]:
        h = block(h)
    return h


class FromPosition(nn.Module):
    """`model` read from the activation at `position` on: h_k -> logits (blocks[k:], pool, head).
    For evaluating a model whose blocks before k are fixed on stored activations h_k."""

    def __init__(self, model: nn.Module, position: int):
        super().__init__()
        self.model, self.position = model, position

    def forward(self, h):
        return self.model.head(self.model.pool(run_blocks(self.model, h, self.position)))


def build_model(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The old model of a run; seeded by the caller. resnet18 / resnet34: torchvision's, adapted to
    small images (tv_resnet.small_resnet; depth and width do not apply)."""
    if cfg.arch in TORCHVISION_ARCHS:
        if len(input_shape) != 3:
            raise ValueError(f"{cfg.arch} needs image inputs (C, H, W); the dataset gives {tuple(input_shape)}")
        return small_resnet(cfg.arch, input_shape[0], num_classes)
    if cfg.arch == "mlp":
        in_features = 1
        for s in input_shape:
            in_features *= s
        return MLP(in_features, cfg.width, cfg.depth, num_classes)
    if len(input_shape) != 3:
        raise ValueError(f"resnet needs image inputs (C, H, W); the dataset gives {tuple(input_shape)}")
    return ResNet(input_shape[0], cfg.width, cfg.depth, num_classes)


# ---------------------------------------------------------------------------------------------
# insertion

@dataclass(frozen=True)
class PreservationReport:
    """How well the zero-initialised block preserves f_old on S (theory.md 3)."""
    position: int
    max_abs_logit_diff: float      # max |f_new(x) - f_old(x)| over S, eval mode
    max_abs_logit_diff_train: float  # the same with BatchNorm in batch-statistics mode
    relative_diff: float           # max_abs_logit_diff / max |f_old(x)|
    loss_diff: float               # |L_S(f_new) - L_S(f_old)|
    live_parameters: tuple[str, ...]   # names in f_new with nonzero gradient at phi0

    @property
    def preserved(self) -> bool:
        return self.relative_diff <= 1e-4

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["live_parameters"] = list(self.live_parameters)
        d["preserved"] = self.preserved
        return d


def check_positions(model: nn.Module, positions=None) -> list[int]:
    """`positions` (default every one, 0..len(blocks)) as a list, each checked to be in range."""
    last = len(model.blocks)
    if last == 0:
        raise ValueError("the model has no residual blocks; positions are defined by blocks")
    positions = list(range(last + 1)) if positions is None else [int(k) for k in positions]
    for k in positions:
        if not 0 <= k <= last:
            raise ValueError(f"position={k} is not allowed: an integer from 0 to {last}")
    return positions


def live_parameters_of(block: nn.Module) -> tuple[str, ...]:
    """The names, inside `block`, of the parameters whose gradient at phi0 is nonzero (theory.md 3):
    the block's own `live_parameters`, or a torchvision block's last BatchNorm (weight, bias)."""
    names = getattr(block, "live_parameters", None)
    if names is not None:
        return tuple(names)
    last = last_norm(block)
    name = next(n for n, m in block.named_modules() if m is last)
    return (f"{name}.weight", f"{name}.bias")


def block_prefix(model: nn.Module, position: int) -> str:
    """The state-dict prefix of blocks[position]: "blocks.k" (resx) or "layerS.j" (torchvision)."""
    if isinstance(model, ResNetBlocks):
        return model.blocks.name_of(position)
    return f"blocks.{position}"


def live_parameter_names(model: nn.Module, position: int) -> tuple[str, ...]:
    """Names of the new block's parameters whose gradient at phi0 is nonzero (theory.md 3)."""
    block = model.blocks[position]
    return tuple(f"{block_prefix(model, position)}.{name}" for name in live_parameters_of(block))


def new_block_parameter_names(model: nn.Module, position: int) -> tuple[str, ...]:
    return tuple(f"{block_prefix(model, position)}.{name}" for name, _ in model.blocks[position].named_parameters())


@torch.no_grad()
def calibrate_batchnorm_(block: nn.Module, h: torch.Tensor, batch_size: int = 512):
    """Set the new block's BN running statistics to their average over the activations h on S.

    Cumulative averaging (momentum=None); the block output stays h since BN2 is zeroed.
    """
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    was_training = block.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    block.train()
    for i in range(0, len(h), batch_size):
        block(h[i:i + batch_size])
    for bn in bns:
        bn.momentum = 0.1
    block.train(was_training)


@torch.no_grad()
def activations_at(model: nn.Module, x: torch.Tensor, position: int, batch_size: int = 1024) -> torch.Tensor:
    """The activation after block `position` (0: the stem's output), eval mode, batched."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        out.append(run_blocks(model, model.embed(x[i:i + batch_size]), 0, position))
    model.train(was)
    return torch.cat(out)


@torch.no_grad()
def _logits(model, x, train_mode: bool, batch_size: int = 1024):
    was = model.training
    model.train(train_mode)
    out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def candidate_block(model: nn.Module, position: int, x_S: torch.Tensor, seed: int) -> nn.Module:
    """The zero-initialised block for `position`, seeded, on the model's device, and (conv blocks)
    with its BatchNorm statistics calibrated on the activations of S at that position."""
    return candidate_blocks(model, [position], x_S, seed)[position]


@torch.no_grad()
def candidate_blocks(model: nn.Module, positions, x_S: torch.Tensor, seed: int,
                     batch_size: int = 512) -> dict[int, nn.Module]:
    """`candidate_block` at every position in `positions`, the BatchNorms of all of them calibrated
    in ONE streamed pass of `model` over x_S (not one pass per position): each chunk's activation
    at position k goes through candidate k in train mode, with cumulative averaging (momentum=None)
    over the chunks, as `calibrate_batchnorm_` does on stored activations. Memory O(chunk)."""
    first = next(model.parameters())
    blocks = {}
    for k in positions:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 7919 * k)
            block = model.new_block(k)
        blocks[k] = block.to(device=first.device, dtype=first.dtype)
    todo = {k for k, b in blocks.items() if any(isinstance(m, nn.BatchNorm2d) for m in b.modules())}
    if todo:
        bns = [m for k in todo for m in blocks[k].modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        for k in todo:
            blocks[k].train()
        was = model.training
        model.eval()
        stop = max(todo)
        for i in range(0, len(x_S), batch_size):
            h = model.embed(x_S[i:i + batch_size])
            for j in range(stop + 1):
                if j in todo:
                    blocks[j](h)
                if j < stop:
                    h = model.blocks[j](h)
        model.train(was)
        for bn in bns:
            bn.momentum = 0.1
    for block in blocks.values():
        block.eval()
    return blocks


def insert_block(model: nn.Module, position: int, x_S: torch.Tensor, y_S: torch.Tensor,
                 seed: int = 0, block: nn.Module | None = None) -> tuple[nn.Module, PreservationReport]:
    """f_new: a copy of `model` with a zero-initialised block after block `position` (theory.md 3).

    Never mutates `model` (nor `block`, which is copied). The block is `candidate_block(model,
    position, x_S, seed)` unless given. The report measures preservation on S in eval mode and in
    train mode (one batch of S, since batch statistics depend on the batch).
    """
    if not 0 <= position <= len(model.blocks):
        raise ValueError(f"position={position} is not allowed: an integer from 0 to {len(model.blocks)}")
    new = copy.deepcopy(model)
    block = copy.deepcopy(block) if block is not None else candidate_block(model, position, x_S, seed)
    new.blocks.insert(position, block)
    new.train(model.training)

    old_logits, new_logits = _logits(model, x_S, False), _logits(new, x_S, False)
    batch = x_S[:256]
    # train mode updates BN running statistics: measure on copies so `model` stays untouched
    old_train = _logits(copy.deepcopy(model), batch, True)
    new_train = _logits(copy.deepcopy(new), batch, True)
    diff = (new_logits - old_logits).abs().max().item()
    scale = max(old_logits.abs().max().item(), 1e-12)
    loss_old = F.cross_entropy(old_logits.float(), y_S).item()
    loss_new = F.cross_entropy(new_logits.float(), y_S).item()
    report = PreservationReport(
        position=position,
        max_abs_logit_diff=diff,
        max_abs_logit_diff_train=(new_train - old_train).abs().max().item(),
        relative_diff=diff / scale,
        loss_diff=abs(loss_new - loss_old),
        live_parameters=live_parameter_names(new, position),
    )
    return new, report
