"""Residual blocks of He et al. 2015 (post-activation) and He et al. 2016 (pre-activation).

Every block computes ``out = F(x) + shortcut(x)``. The choices the papers study are
constructor arguments, so one class covers each block shape:

- ``preact=False`` is the 2015 unit: conv-BN-ReLU ..., conv-BN, add, ReLU.
- ``preact=True`` is the 2016 unit: BN-ReLU-conv ..., add, nothing after the add.
- ``residual=False`` removes the shortcut: the "plain" twin used to show degradation.

Attribute names follow torchvision (``conv1``, ``bn1``, ``downsample.0``) so that
torchvision checkpoints load into the post-activation models unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("A", "B", "C")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution with padding 1."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=bias)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1x1 convolution."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=bias)


class ZeroPadShortcut(nn.Module):
    """Option A of the 2015 paper: identity with strided subsampling and zero-padded channels.

    It has no parameters, which is why the CIFAR nets of the paper use it: the
    parameter counts of its Table 6 assume it.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError("option A shortcut cannot reduce channels; use option B or C")
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # Pad the new channels evenly on both sides, as the reference CIFAR code does.
        front = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, front, self.extra - front))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_channels={self.extra}"


def make_shortcut(
    in_planes: int,
    out_planes: int,
    stride: int,
    option: str,
    preact: bool,
    bias: bool = False,
) -> nn.Module | None:
    """Build the shortcut module for one block, or ``None`` for a plain identity.

    Option A: parameter-free subsampling and zero padding where the shape changes.
    Option B: 1x1 projection (+ BN in post-activation nets) only where the shape changes.
    Option C: projection in every block.
    Pre-activation projections have no BN of their own: they read the block's
    already normalised input (2016 paper, Keras ResNetV2).
    """
    if option not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {option!r}")
    changes_shape = stride != 1 or in_planes != out_planes
    if option == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride) if changes_shape else None
    if option == "B" and not changes_shape:
        return None
    conv = conv1x1(in_planes, out_planes, stride, bias=bias)
    if preact:
        return nn.Sequential(conv)
    return nn.Sequential(conv, nn.BatchNorm2d(out_planes))


class _Block(nn.Module):
    """What all blocks share: the add, the shortcut choice and the activation order."""

    expansion = 1

    def _finish(self, out: torch.Tensor, x: torch.Tensor, preacted: torch.Tensor) -> torch.Tensor:
        if self.residual:
            if self.downsample is None:
                out = out + x
            else:
                # A pre-activation projection reads the normalised input, a post-activation one the raw input.
                out = out + self.downsample(preacted if self.preact else x)
        return out if self.preact else F.relu(out)

    def zero_init_last_bn(self) -> None:
        """Start the residual branch at zero so that the block begins as the identity (Goyal et al. 2017)."""
        nn.init.zeros_(self.last_bn.weight)


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: str = "B",
        preact: bool = False,
        residual: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.preact, self.residual = preact, residual
        out_planes = planes * self.expansion
        # Pre-activation normalises the block's input; post-activation normalises each conv's output.
        self.bn1 = nn.BatchNorm2d(in_planes if preact else planes)
        self.conv1 = conv3x3(in_planes, planes, stride, bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, out_planes, 1, bias)
        self.downsample = (
            make_shortcut(in_planes, out_planes, stride, shortcut, preact, bias) if residual else None
        )
        self.stride = stride

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        # Post-activation: the BN after the last conv. Pre-activation: the BN before it; a zero
        # gamma there zeroes the last conv's input, so the branch starts at zero either way.
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            preacted = F.relu(self.bn1(x))
            out = self.conv1(preacted)
            out = self.conv2(F.relu(self.bn2(out)))
        else:
            preacted = x
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
        return self._finish(out, x, preacted)


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 expand (x4): ResNet-50/101/152 and the deep pre-activation CIFAR nets.

    ``stride_in_1x1=True`` puts the stride on the first 1x1 as in the paper, Caffe and Keras
    ("ResNet v1"); the default puts it on the 3x3 as torchvision does ("v1.5"), which costs
    more multiply-adds and gains about half a point of ImageNet accuracy.
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: str = "B",
        preact: bool = False,
        residual: bool = True,
        bias: bool = False,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        self.preact, self.residual = preact, residual
        out_planes = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_planes if preact else planes)
        self.conv1 = conv1x1(in_planes, planes, s1, bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3, bias)
        self.bn3 = nn.BatchNorm2d(planes if preact else out_planes)
        self.conv3 = conv1x1(planes, out_planes, 1, bias)
        self.downsample = (
            make_shortcut(in_planes, out_planes, stride, shortcut, preact, bias) if residual else None
        )
        self.stride = stride

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            preacted = F.relu(self.bn1(x))
            out = self.conv1(preacted)
            out = self.conv2(F.relu(self.bn2(out)))
            out = self.conv3(F.relu(self.bn3(out)))
        else:
            preacted = x
            out = F.relu(self.bn1(self.conv1(x)))
            out = F.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
        return self._finish(out, x, preacted)


class ResidualMLPBlock(nn.Module):
    """The residual unit on vectors: two Linear layers with BatchNorm1d, for tabular or embedded inputs.

    Same ordering choice as the convolutional blocks: ``preact=False`` is
    Linear-BN-ReLU-Linear-BN, add, ReLU; ``preact=True`` is BN-ReLU-Linear-BN-ReLU-Linear, add.
    """

    def __init__(self, dim: int, hidden: int | None = None, preact: bool = False, residual: bool = True) -> None:
        super().__init__()
        hidden = hidden or dim
        self.preact, self.residual = preact, residual
        self.bn1 = nn.BatchNorm1d(dim if preact else hidden)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden if preact else dim)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            out = self.fc1(F.relu(self.bn1(x)))
            out = self.fc2(F.relu(self.bn2(out)))
            return out + x if self.residual else out
        out = F.relu(self.bn1(self.fc1(x)))
        out = self.bn2(self.fc2(out))
        return F.relu(out + x) if self.residual else F.relu(out)
