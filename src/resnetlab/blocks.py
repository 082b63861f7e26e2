"""Residual blocks of He et al. 2015 (post-activation) and He et al. 2016 (pre-activation).

Every block computes ``out = F(x) + shortcut(x)``. The choices the papers study are
constructor arguments, so one class covers each block shape:

- ``preact=False`` is the 2015 unit: conv-BN-ReLU ..., conv-BN, add, ReLU.
- ``preact=True`` is the 2016 unit: BN-ReLU-conv ..., add, nothing after the add.
- ``order`` names any of the 2016 paper's five activation orders (its Figure 4), the two above included.
- ``mixing`` names how the shortcut and the branch are combined (the 2016 paper's Figure 2):
  plain addition, constant scaling, exclusive or shortcut-only gating, dropout on the shortcut.
- ``residual=False`` removes the shortcut: the "plain" twin used to show degradation.

Attribute names follow torchvision (``conv1``, ``bn1``, ``downsample.0``) so that
torchvision checkpoints load into the post-activation models unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .typecheck import as_sequence, is_integer

SHORTCUTS = ("A", "B", "C")
# The 2016 paper's Figure 4, (a) to (e): where BN and ReLU sit relative to the addition.
ORDERS = ("post", "bn_after_add", "relu_before_add", "relu_preact", "preact")
# Its Figure 2: how shortcut s and branch F(x) combine. The 1x1-conv shortcut, (e) there, is shortcut="C".
MIXINGS = ("add", "scale", "gate", "shortcut_gate", "dropout")


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
    if isinstance(option, nn.Module):  # torchvision's Bottleneck(inplanes, planes, stride, downsample)
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, not a module: blocks build their own projection, "
                         "so for torchvision's downsample pass shortcut='B' (a 1x1 projection where the shape changes)")
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


def resolve_order(order: str | None, preact: bool) -> str:
    """The activation order ``order`` and ``preact`` ask for together: ``preact=True`` is ``order="preact"``,
    and contradicts any other order; neither given is the 2015 paper's ``"post"``."""
    if preact and order not in (None, "preact"):
        raise ValueError(f"preact=True is order='preact', which contradicts order={order!r}: give only one of them")
    order = order or ("preact" if preact else "post")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return order


class _Block(nn.Module):
    """What all blocks share: the activation order, the shortcut, and how the two paths combine.

    Subclasses make ``self.convs`` and ``self.bns`` (one BN per conv, torchvision's names) and the
    branch runs through them in the order ``self.order`` gives:

    ========================  ==============================================  ==============
    order (2016, Figure 4)    branch                                          after the add
    ========================  ==============================================  ==============
    ``post`` (a, 2015)        conv-BN-ReLU ... conv-BN                        ReLU
    ``bn_after_add`` (b)      conv-BN-ReLU ... conv                           BN, ReLU
    ``relu_before_add`` (c)   conv-BN-ReLU ... conv-BN-ReLU                   nothing
    ``relu_preact`` (d)       ReLU-conv-BN ... ReLU-conv-BN                   nothing
    ``preact`` (e, 2016)      BN-ReLU-conv ... BN-ReLU-conv                   nothing
    ========================  ==============================================  ==============

    ``drop_path``: the chance that a training step drops the block's branch F(x) for an image, leaving
    the shortcut path (stochastic depth, Huang et al. 2016); the net sets it (``ResNet``'s ``drop_path_rate``).
    """

    drop_path: float = 0.0

    def _configure(self, order: str | None, preact: bool, residual: bool, mixing: str, scales: tuple[float, float],
                   gate_bias: float, shortcut_dropout: float) -> None:
        order = resolve_order(order, preact)
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        self.order, self.preact, self.residual = order, order == "preact", residual
        self.mixing, self.scales, self.gate_bias, self.shortcut_dropout = mixing, tuple(scales), gate_bias, shortcut_dropout

    def _add_units(self, convs: list[nn.Conv2d], bns: list[nn.BatchNorm2d]) -> None:
        """Register ``conv1``, ``bn1``, ``conv2``, ... in the order they run: torchvision's order, so a
        state_dict lists its keys as torchvision's does (position-based converters rely on it); each BN
        before its conv in a pre-activation unit."""
        for i, (conv, bn) in enumerate(zip(convs, bns), 1):
            for name, module in ((f"bn{i}", bn), (f"conv{i}", conv))[:: 1 if self.order == "preact" else -1]:
                setattr(self, name, module)

    def _add_shortcut(self, in_planes: int, out_planes: int, stride: int, shortcut: str, bias: bool) -> None:
        """The shortcut (and gate) after the branch's layers, so summaries list them in torchvision's order."""
        self.downsample = make_shortcut(in_planes, out_planes, stride, shortcut, self.preact, bias) if self.residual else None
        # Gates are 1x1 convolutions of the block's input, one gate per output value (2016 paper, Section 3.1).
        self.gate = conv1x1(in_planes, out_planes, stride, bias=True) if self.residual and "gate" in self.mixing else None
        self.stride = stride

    def _bn_planes(self, conv_in: int, conv_out: int) -> int:
        """The channels a conv's BN sees: its input in full pre-activation, its output otherwise."""
        return conv_in if self.preact else conv_out

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        # Post-activation: the BN after the last conv. Pre-activation: the BN before it; a zero
        # gamma there zeroes the last conv's input, so the branch starts at zero either way.
        return self.bns[-1]

    @property
    def branch_end(self) -> nn.Module:
        """The module whose output is the branch F(x) as it reaches the addition (before a final ReLU)."""
        return self.convs[-1] if self.order in ("preact", "bn_after_add") else self.bns[-1]

    def init_gate(self) -> None:
        """Set the gate's bias: very negative starts the block close to its shortcut (the paper's best, -6)."""
        if self.gate is not None:
            nn.init.constant_(self.gate.bias, self.gate_bias)

    def zero_init_last_bn(self) -> None:
        """Start the residual branch at zero so that the block begins as the identity (Goyal et al. 2017)."""
        if self.order == "bn_after_add":  # its last BN comes after the addition: zeroing it would zero the shortcut too
            nn.init.zeros_(self.convs[-1].weight)
        else:
            nn.init.zeros_(self.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, preacted = self._branch(x)
        if self.residual and self.drop_path and self.training:
            from torchvision.ops import stochastic_depth  # here: torchvision.ops takes a second to import

            out = stochastic_depth(out, self.drop_path, "row", training=True)  # survivors scaled by 1 / (1 - p)
        if self.residual:
            # A pre-activation projection reads the normalised input, a post-activation one the raw input.
            s = x if self.downsample is None else self.downsample(preacted if self.preact else x)
            out = self._mix(s, out, x)
        if self.order == "bn_after_add":
            out = self.bns[-1](out)
        return F.relu(out) if self.order in ("post", "bn_after_add") else out

    def _branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F(x), and the normalised input that a pre-activation projection shortcut reads."""
        convs, bns, order = self.convs, self.bns, self.order
        if order == "preact":
            preacted = F.relu(bns[0](x))
            out = convs[0](preacted)
            for bn, conv in zip(bns[1:], convs[1:]):
                out = conv(F.relu(bn(out)))
            return out, preacted
        out = x
        if order == "relu_preact":
            for conv, bn in zip(convs, bns):
                out = bn(conv(F.relu(out)))
            return out, x
        # The other three orders are conv-BN-ReLU units that differ only in the last one.
        for conv, bn in zip(convs[:-1], bns[:-1]):
            out = F.relu(bn(conv(out)))
        out = convs[-1](out)
        if order == "bn_after_add":
            return out, x  # its BN and ReLU come after the addition
        out = bns[-1](out)
        return (F.relu(out) if order == "relu_before_add" else out), x

    def _mix(self, s: torch.Tensor, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.mixing == "add":
            # Out of place, unlike torchvision's `out += identity` and in-place ReLUs: a forward hook on a BN
            # (the layer responses of Figure 7) or on ``branch_end`` keeps the values it was given. On a GPU
            # the sum costs the same either way; on a CPU its fresh tensor costs ResNet-50 inference ~6%.
            return s + branch
        if self.mixing == "scale":
            return self.scales[0] * s + self.scales[1] * branch
        if self.mixing == "dropout":
            return F.dropout(s, self.shortcut_dropout, self.training) + branch
        g = torch.sigmoid(self.gate(x))
        return (1 - g) * s + (g * branch if self.mixing == "gate" else branch)


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets).

    ``order``: see ``_Block`` (``preact=True`` is ``order="preact"``, and refuses any other order). ``mixing``: ``"add"``;
    ``"scale"``, ``scales[0] * s + scales[1] * F(x)``; ``"gate"``, ``(1 - g) * s + g * F(x)``;
    ``"shortcut_gate"``, ``(1 - g) * s + F(x)``, with ``g = sigmoid(1x1 conv(x) + b)``, ``b``
    starting at ``gate_bias``; ``"dropout"``, dropout of rate ``shortcut_dropout`` on ``s``.
    """

    expansion = 1
    layers = 2  # weighted layers on the main path, for counting a net's depth

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: str = "B",
        preact: bool = False,
        residual: bool = True,
        bias: bool = False,
        order: str | None = None,
        mixing: str = "add",
        scales: tuple[float, float] = (0.5, 0.5),
        gate_bias: float = -6.0,
        shortcut_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self._configure(order, preact, residual, mixing, scales, gate_bias, shortcut_dropout)
        self._add_units(
            [conv3x3(in_planes, planes, stride, bias), conv3x3(planes, out_planes, 1, bias)],
            [nn.BatchNorm2d(self._bn_planes(in_planes, planes)), nn.BatchNorm2d(self._bn_planes(planes, out_planes))],
        )
        self._add_shortcut(in_planes, out_planes, stride, shortcut, bias)

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]

    @property
    def bns(self) -> list[nn.BatchNorm2d]:
        return [self.bn1, self.bn2]


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 expand (x4): ResNet-50/101/152 and the deep pre-activation CIFAR nets.

    ``stride_in_1x1=True`` puts the stride on the first 1x1 as in the paper, Caffe and Keras
    ("ResNet v1"); the default puts it on the 3x3 as torchvision does ("v1.5"), which costs
    more multiply-adds and gains about half a point of ImageNet accuracy. ``order`` and
    ``mixing`` as for ``BasicBlock``. ``filters=(F1, F2, F3)`` and ``kernel_size`` free the three
    convolutions' widths and the middle kernel, as the seed notebook's blocks allow (see
    ``identity_block``); by default they are ``(planes, planes, 4 * planes)`` and 3.
    """

    expansion = 4
    layers = 3

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
        order: str | None = None,
        mixing: str = "add",
        scales: tuple[float, float] = (0.5, 0.5),
        gate_bias: float = -6.0,
        shortcut_dropout: float = 0.5,
        filters: tuple[int, int, int] | None = None,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        f1, f2, out_planes = filters or (planes, planes, planes * self.expansion)
        self._configure(order, preact, residual, mixing, scales, gate_bias, shortcut_dropout)
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        if kernel_size % 2 == 0 and s3 > 1:
            raise ValueError(f"an even kernel ({kernel_size}) keeps the size only unstrided: use stride_in_1x1=True")
        # Keras's padding="same": an even kernel gets the extra row and column at the bottom and right.
        padding = kernel_size // 2 if kernel_size % 2 else "same"
        self._add_units(
            [conv1x1(in_planes, f1, s1, bias), nn.Conv2d(f1, f2, kernel_size, stride=s3, padding=padding, bias=bias),
             conv1x1(f2, out_planes, 1, bias)],
            [nn.BatchNorm2d(self._bn_planes(in_planes, f1)), nn.BatchNorm2d(self._bn_planes(f1, f2)),
             nn.BatchNorm2d(self._bn_planes(f2, out_planes))],
        )
        self._add_shortcut(in_planes, out_planes, stride, shortcut, bias)

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2, self.conv3]

    @property
    def bns(self) -> list[nn.BatchNorm2d]:
        return [self.bn1, self.bn2, self.bn3]


def identity_block(in_channels: int, f: int, filters: tuple[int, int, int], bias: bool = True, **notebook: object) -> Bottleneck:
    """The seed notebook's identity block: 1x1 conv (F1), f x f conv (F2), 1x1 conv (F3), each with
    BN, ReLU between, and the input added back before the last ReLU. Input and output have the same
    shape, so ``in_channels`` must equal F3. It starts as Keras starts the notebook's: conv biases,
    Glorot-uniform kernels, batch norms with Keras's epsilon (1e-3) and momentum (0.99, PyTorch's 0.01).

    Where the notebook's function takes the input tensor and returns the output, this builds the block,
    which is then called on it: ``identity_block(X.shape[1], 3, [64, 64, 256])(X)``.
    """
    _check_built_not_called("identity_block", in_channels, f, filters, notebook)
    if in_channels != filters[2]:
        raise ValueError(f"an identity block keeps its input's shape: in_channels ({in_channels}) must equal F3 ({filters[2]})")
    return _keras_defaults(Bottleneck(in_channels, filters[0], bias=bias, stride_in_1x1=True, filters=tuple(filters), kernel_size=f))


def convolutional_block(in_channels: int, f: int, filters: tuple[int, int, int], s: int = 2, bias: bool = True,
                        **notebook: object) -> Bottleneck:
    """The seed notebook's convolutional block: the identity block's three convolutions, the first with
    stride ``s``, and a 1x1 conv (stride ``s``) + BN on the shortcut so that the shapes match. Built, then
    called on the input, and started, as ``identity_block``'s.
    """
    _check_built_not_called("convolutional_block", in_channels, f, filters, notebook)
    return _keras_defaults(Bottleneck(in_channels, filters[0], stride=s, shortcut="C", bias=bias, stride_in_1x1=True,
                                 filters=tuple(filters), kernel_size=f))


# The notebook's keyword arguments, and what stands for each here.
_NOTEBOOK_ARGUMENTS = {
    "training": "call block.train() or block.eval() instead (training=True or False)",
    "initializer": "the block starts from Keras's Glorot-uniform weights already",
    # The 2018 notebook's: they only named its Keras layers (res2a_branch2a); a module is named where it sits.
    "stage": "it only named the notebook's Keras layers; a module is named by its place in the model",
    "block": "it only named the notebook's Keras layers; a module is named by its place in the model",
}


def _check_built_not_called(name: str, in_channels: object, f: object, filters: object, notebook: dict) -> None:
    """The notebook's functions take the tensor X, and training= and initializer=: here those are the
    mistakes worth naming."""
    if notebook:
        said = [f"{k}= ({_NOTEBOOK_ARGUMENTS[k]})" if k in _NOTEBOOK_ARGUMENTS else f"{k}=" for k in notebook]
        raise TypeError(f"{name} takes no {', '.join(said)}")
    if isinstance(in_channels, torch.Tensor):
        raise TypeError(f"{name} builds the block, which is then called on the input: "
                        f"{name}(X.shape[1], f, filters)(X), not {name}(X, f, filters)")
    if not (is_integer(in_channels) and is_integer(f)) or len(as_sequence(filters) or []) != 3:
        raise TypeError(f"{name} takes in_channels and f as whole numbers and filters as [F1, F2, F3], "
                        f"got {in_channels!r}, {f!r}, {filters!r}")


def _keras_defaults(block: Bottleneck) -> Bottleneck:
    """Keras's BatchNormalization epsilon (so that the notebook's weights give the notebook's outputs) and
    momentum, and its initial weights (so that a block trains from where the notebook's starts)."""
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.01
    keras_init(block)
    return block


def keras_init(module: nn.Module) -> None:
    """Keras's initial weights, which the notebook trained from: Glorot-uniform kernels, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.is_meta:
            nn.init.xavier_uniform_(m.weight)  # Keras's fans: k*k*in and k*k*out, as PyTorch's
            if m.bias is not None:
                nn.init.zeros_(m.bias)


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
