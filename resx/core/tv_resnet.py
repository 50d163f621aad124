"""torchvision's ResNets seen as resx sees its own: stem -> blocks -> head (issue 26).

`ResNetBlocks(net)` takes a `torchvision.models.ResNet` (BasicBlock or Bottleneck) and holds its
modules under torchvision's own names (`conv1`, `bn1`, `layer1`..`layer4`, `fc`), so that its state
dict is torchvision's, key for key, and adds the interface the margins, the insertion and the
jumpboard use: `embed` (the stem: conv1, bn1, relu, maxpool), `blocks` (every block of every stage
in order, a flat sequence whose `insert` puts a block into the right stage), `pool`, `head`, and
`new_block(position)`. Position k is the activation after the k-th block (0: the stem's output,
the input of layer1[0]); a new block there is a C -> C, stride-1 block of the network's own type,
so every position is shape-compatible.

`small_resnet(arch, in_channels, K)` is torchvision's resnet18 / resnet34 adapted to small images
the usual way (the CIFAR ResNets of He et al. 2016, sec. 4.2): the 7x7 stride-2 first convolution
becomes a 3x3 stride-1 one with the data's channels, and the max-pool is dropped (an Identity), so
an 8x8 or 32x32 image is not shrunk to 2x2 or 8x8 before layer1. Nothing else changes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models.resnet import BasicBlock as TVBasicBlock
from torchvision.models.resnet import Bottleneck as TVBottleneck

__all__ = ["ResNetBlocks", "StageBlocks", "TVBasicBlock", "TVBottleneck", "block_line", "last_norm",
           "pre_norm_branch", "small_resnet",
           "torchvision_small"]
TORCHVISION_ARCHS = {"resnet18": tvm.resnet18, "resnet34": tvm.resnet34}
STAGES = ("layer1", "layer2", "layer3", "layer4")


class StageBlocks:
    """The blocks of layer1..layer4 as one sequence (index, slice, len, iter) whose `insert(k, block)`
    puts `block` after the k-th block (k = 0: first in layer1), in that block's stage."""

    def __init__(self, owner: nn.Module):
        self.owner = owner

    def _flat(self) -> list[nn.Module]:
        return [b for name in STAGES for b in getattr(self.owner, name)]

    def __len__(self):
        return sum(len(getattr(self.owner, name)) for name in STAGES)

    def __iter__(self):
        return iter(self._flat())

    def __getitem__(self, index):
        return self._flat()[index]

    def locate(self, position: int) -> tuple[int, int]:
        """(stage 1..4, index inside the stage) where a block inserted at `position` goes."""
        if not 0 <= position <= len(self):
            raise ValueError(f"position={position} is not allowed: an integer from 0 to {len(self)}")
        if position == 0:
            return 1, 0
        seen = 0
        for s, name in enumerate(STAGES, 1):
            size = len(getattr(self.owner, name))
            if position <= seen + size:
                return s, position - seen
            seen += size
        raise AssertionError("unreachable")

    def name_of(self, index: int) -> str:
        """The state-dict prefix of the index-th block: "layerS.j"."""
        for name in STAGES:
            size = len(getattr(self.owner, name))
            if index < size:
                return f"{name}.{index}"
            index -= size
        raise IndexError("block index out of range")

    def insert(self, position: int, block: nn.Module):
        s, j = self.locate(position)
        old = list(getattr(self.owner, STAGES[s - 1]))
        setattr(self.owner, STAGES[s - 1], nn.Sequential(*old[:j], block, *old[j:]))


class ResNetBlocks(nn.Module):
    """A torchvision ResNet with resx's interface; its modules are `net`'s own (shared, not copied)."""

    def __init__(self, net: tvm.ResNet):
        super().__init__()
        if not isinstance(net, tvm.ResNet):
            raise TypeError(f"expected a torchvision.models.ResNet, got {type(net).__name__}")
        for name in ("conv1", "bn1", "relu", "maxpool") + STAGES + ("avgpool", "fc"):
            setattr(self, name, getattr(net, name))
        kinds = {type(b) for name in STAGES for b in getattr(net, name)}
        if not kinds or not kinds <= {TVBasicBlock, TVBottleneck} or len(kinds) > 1:
            raise TypeError(f"expected torchvision BasicBlock or Bottleneck blocks, found {sorted(k.__name__ for k in kinds)}")
        self.block_type = kinds.pop()
        self.groups, self.base_width, self.norm_layer = net.groups, net.base_width, net._norm_layer
        self.blocks = StageBlocks(self)

    @property
    def head(self) -> nn.Linear:
        return self.fc

    @property
    def stem(self) -> nn.Sequential:
        """conv1, bn1, relu, maxpool as one module (the same modules, not copies; `embed` runs them)."""
        return nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)

    def embed(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def pool(self, h):
        return torch.flatten(self.avgpool(h), 1)

    def features(self, x):
        """The pooled representation before the head: (n, C_last)."""
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.pool(h)

    def forward(self, x):
        """torchvision's ResNet._forward_impl, step for step."""
        return self.fc(self.features(x))

    def channels_at(self, position: int) -> int:
        """Channels of the activation at `position` (0: the stem's output)."""
        if position == 0:
            return self.conv1.out_channels
        block = self.blocks[position - 1]
        return (block.conv3 if isinstance(block, TVBottleneck) else block.conv2).out_channels

    def stage_of(self, position: int) -> int:
        """The stage (1..4) a block inserted at `position` joins."""
        return self.blocks.locate(position)[0]

    def new_block(self, position: int) -> nn.Module:
        """A C -> C stride-1 block of the network's type, initialised as torchvision does (Kaiming
        fan_out convolutions, BN weight 1 and bias 0), then zero_init_residual's step: the last BN's
        weight = 0 (its bias is 0), so the branch is 0 and ReLU(h + 0) = h for h >= 0 (theory.md 3)."""
        C = self.channels_at(position)
        if self.block_type is TVBasicBlock:
            block = TVBasicBlock(C, C, norm_layer=self.norm_layer)
        else:
            if C % TVBottleneck.expansion:
                raise ValueError(f"position {position}: {C} channels are not a multiple of the bottleneck "
                                 f"expansion {TVBottleneck.expansion}")
            block = TVBottleneck(C, C // TVBottleneck.expansion, groups=self.groups, base_width=self.base_width,
                                 norm_layer=self.norm_layer)
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        last = last_norm(block)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return block

    def to_torchvision(self, template: tvm.ResNet) -> tvm.ResNet:
        """A torchvision ResNet (a deep copy of `template`, whose stem and head are kept as classes)
        holding copies of this model's modules, stage by stage: f_J as the user's own class."""
        import copy
        out = copy.deepcopy(template)
        for name in ("conv1", "bn1", "relu", "maxpool") + STAGES + ("avgpool", "fc"):
            setattr(out, name, copy.deepcopy(getattr(self, name)))
        return out


def pre_norm_branch(block: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
    """(v, bn): the input of the BatchNorm that ends a conv block's residual branch, and that BN,
    eval mode: conv2 relu(bn1 conv1 h) (BasicBlock, resx's or torchvision's) or
    conv3 relu(bn2 conv2 relu(bn1 conv1 h)) (torchvision's Bottleneck). (n, C, H, W)"""
    a = F.relu(block.bn1(block.conv1(h)))
    if hasattr(block, "conv3"):
        return block.conv3(F.relu(block.bn2(block.conv2(a)))), block.bn3
    return block.conv2(a), block.bn2


def block_line(block: nn.Module, h: torch.Tensor, direction: dict):
    """resx's `BasicBlock.line` for a zero torchvision block: with the last BN's (weight, bias) at
    eta d the block maps h to ReLU(h + eta u), u = d_weight zhat + d_bias, zhat the BN's input
    normalised by its running statistics (eval mode, identity shortcut). A line search computes u
    once; each step is then a ReLU, not the block's convolutions."""
    if block.training or block.downsample is not None:
        raise ValueError("block_line needs eval mode and an identity shortcut (an inserted block)")
    v, bn = pre_norm_branch(block, h)
    name = "bn3" if bn is getattr(block, "bn3", None) else "bn2"
    zhat = (v - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    d_w, d_b = direction[f"{name}.weight"], direction[f"{name}.bias"]
    return zhat * d_w[:, None, None] + d_b[:, None, None], F.relu


def last_norm(block: nn.Module) -> nn.Module:
    """The BatchNorm before a torchvision block's residual sum: bn3 (Bottleneck) or bn2 (BasicBlock)."""
    return block.bn3 if isinstance(block, TVBottleneck) else block.bn2


def small_resnet(arch: str, in_channels: int, num_classes: int) -> ResNetBlocks:
    """torchvision's `arch` (resnet18 | resnet34) for small images: conv1 3x3 stride 1 with
    `in_channels` inputs, no max-pool (module docstring); Kaiming-initialised like torchvision's."""
    return ResNetBlocks(torchvision_small(arch, in_channels, num_classes))


def torchvision_small(arch: str, in_channels: int, num_classes: int) -> tvm.ResNet:
    """The adaptation on torchvision's own class: what a user who trains with torchvision builds
    (`m.conv1 = nn.Conv2d(C, 64, 3, 1, 1, bias=False); m.maxpool = nn.Identity()`), and what
    the state dicts of `small_resnet` load into."""
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"arch={arch!r} is not allowed: one of {sorted(TORCHVISION_ARCHS)}")
    net = TORCHVISION_ARCHS[arch](num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net
