"""The named networks of both ResNet papers and the seed notebook, built from one ``ResNet`` class.

- ImageNet family (2015 paper, Table 1): ``resnet18`` ... ``resnet152``, their plain twins
  ``plain18``/``plain34`` (Figure 4) and pre-activation twins ``preact_resnet18`` ... ``preact_resnet152``;
  ``resnet200`` and ``preact_resnet200`` (2016 paper, Table 5).
- CIFAR family (2015 paper, Section 4.2): 6n+2 layers, 16-32-64 channels, option A shortcuts:
  ``resnet20`` ... ``resnet1202`` and ``plain20`` ... ``plain110``; the 2016 paper's Table 3:
  ``preact_resnet110`` (basic blocks, 6n+2) and ``resnet164``/``resnet1001`` with their pre-activation
  twins ``preact_resnet164``/``preact_resnet1001`` (bottlenecks, 9n+2). Any other depth:
  ``cifar_resnet(depth, ...)`` or ``create_model("resnet74")``.
- ``signs_resnet50``: the seed notebook's Keras ResNet-50 for 64x64x3 SIGNS images and 6 classes.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import operator
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, overload

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BasicBlock, Bottleneck, keras_init, resolve_order
from .errors import ResnetlabError
from .typecheck import as_sequence, check_types, is_integer

STEMS = ("imagenet", "cifar", "keras")


class ResNet(nn.Module):
    """A residual (or plain) network: a stem, stages of blocks, global pooling and a classifier.

    Args:
        block: ``BasicBlock`` or ``Bottleneck`` (a subclass of either), or its name, ``"basic"`` or ``"bottleneck"``.
        layers: blocks per stage, e.g. ``[3, 4, 6, 3]`` for ResNet-50.
        widths: the planes of each stage (the output has ``planes * block.expansion`` channels). The
            third positional argument, where torchvision's ``ResNet`` takes ``num_classes``.
        num_classes: classes of the classifier; 0 for none, ``forward`` then returns the pooled features
            (as ``reset_classifier(0)`` and timm's ``num_classes=0``).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max pool), ``"cifar"`` (one 3x3 conv) or
            ``"keras"`` (the seed notebook's: 7x7/2 conv, unpadded max pool; its bias comes with ``bias``).
        shortcut: ``"A"``, ``"B"`` or ``"C"`` (see ``blocks.make_shortcut``).
        preact: 2016 pre-activation units, with one BN-ReLU after the last stage.
        order: any activation order of the 2016 paper's Figure 4 (``blocks.ORDERS``); ``"preact"`` is
            ``preact=True`` (any other order with ``preact=True`` is refused), ``"relu_preact"`` gets a
            ReLU after the last stage.
        mixing: how shortcut and branch combine (``blocks.MIXINGS``, the 2016 paper's Figure 2), with
            ``scales``, ``gate_bias`` and ``shortcut_dropout`` as in ``blocks.BasicBlock``.
        residual: ``False`` builds the plain twin (no shortcuts at all).
        stride_in_1x1: bottleneck stride on the first 1x1 (paper) instead of the 3x3 (torchvision); basic
            blocks have no 1x1 conv, so the paper's layout of every net can be asked for alike.
        zero_init_residual: start every residual branch at zero (its last BN's gamma = 0).
        bias: conv biases, as in Keras (``signs_resnet50``).
        bn_eps: the epsilon of every batch norm (PyTorch's 1e-5; Keras's default is 1e-3).
        bn_momentum: how much of a batch's statistics each batch norm's running ones take in at every
            training step (PyTorch's 0.1; Keras's momentum=0.99 is 0.01, which needs a few hundred
            steps to forget the starting values); ``None`` averages all batches alike.
        features_only: a backbone without pooling, classifier (``num_classes`` is 0) or any stage past its
            deepest map, whose forward returns the feature maps at ``out_indices`` of ``feature_info``
            (as timm's ``features_only``); ``feature_info`` then lists the maps up to the deepest.
        out_indices: which feature maps: 0 is the stem's, 1 and on each stage's, -1 the last (default all).
        drop_rate: dropout of the pooled features before the classifier, in training (timm's ``drop_rate``).
        drop_path_rate: stochastic depth (Huang et al. 2016): in training, each image drops a block's branch
            F(x), leaving the shortcut path, with a chance rising linearly from 0 at the first block to this
            at the last (timm's ``drop_path_rate`` and rule). Neither changes the weights or the eval-mode output.

    Whole numbers may be NumPy integers, and lists any sequence of them (a tuple, a range, a 1-d array).
    """

    # torchvision's module names, declared so that type checkers take code written for torchvision's
    # ResNet as it runs: ``model.fc = nn.Linear(model.fc.in_features, 5)``, ``model.maxpool = nn.Identity()``.
    # CIFAR nets stop at layer3; ``fc`` is an ``nn.Identity`` without classes, and None in a backbone.
    conv1: nn.Conv2d
    bn1: nn.Module
    relu: nn.Module
    maxpool: nn.Module
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential
    avgpool: nn.Module
    fc: nn.Linear

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck] | str,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        shortcut: str = "B",
        preact: bool = False,
        residual: bool = True,
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
        bias: bool = False,
        order: str | None = None,
        mixing: str = "add",
        scales: tuple[float, float] = (0.5, 0.5),
        gate_bias: float = -6.0,
        shortcut_dropout: float = 0.5,
        bn_eps: float = 1e-5,
        bn_momentum: float | None = 0.1,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        if is_integer(widths):
            raise TypeError(f"ResNet's third argument is widths (each stage's planes), not num_classes as in "
                             f"torchvision's ResNet: pass num_classes={widths} by keyword")
        # Every argument as passed (locals() holds nothing else yet): options typed on the command line get
        # checked, and NumPy numbers and arrays become the ints and lists that the layers and configs expect.
        given = check_types(ResNet.__init__, locals())
        layers, widths, scales, out_indices = given["layers"], given["widths"], given["scales"], given["out_indices"]
        num_classes, in_chans = given["num_classes"], given["in_chans"]
        block = _block_class(block)
        super().__init__()
        if in_chans < 1 or num_classes < 0:
            raise ValueError(f"in_chans must be at least 1 and num_classes at least 0, got {in_chans} and {num_classes}")
        for name, p in (("shortcut_dropout", shortcut_dropout), ("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
            if not 0 <= p < 1:
                raise ValueError(f"{name} is a probability below 1, not {p}")
        if drop_path_rate and not residual:
            raise ValueError("drop_path_rate skips blocks' branches, keeping their shortcuts: a plain net has none")
        if bn_eps <= 0:
            raise ValueError(f"bn_eps must be positive, not {bn_eps}")
        if bn_momentum is not None and not 0 < bn_momentum <= 1:
            raise ValueError(f"bn_momentum is the share of each batch's statistics, above 0 and at most 1 (or None), not {bn_momentum}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if len(layers) != len(widths):
            raise ValueError("layers and widths must have one entry per stage")
        if min(layers, default=0) < 1 or min(widths, default=0) < 1:
            raise ValueError(f"every stage needs at least one block and one plane, got layers={layers} and widths={widths}")
        if out_indices is not None and not features_only:
            raise ValueError("out_indices chooses a backbone's feature maps: give features_only=True too")
        order = resolve_order(order, preact)
        preact = order == "preact"
        self.preact, self.residual, self.stem, self.order, self.mixing = preact, residual, stem, order, mixing

        # The modules are made in state_dict order (torchvision's keys), and that order is also the order
        # they draw their initial weights from the random generator: a seeded model depends on it.
        self._make_stem(in_chans, widths[0], bias)
        block_kwargs: dict = dict(shortcut=shortcut, residual=residual, bias=bias, order=order, mixing=mixing,
                                  scales=scales, gate_bias=gate_bias, shortcut_dropout=shortcut_dropout)
        if issubclass(block, Bottleneck):
            block_kwargs["stride_in_1x1"] = stride_in_1x1
        self.num_stages = len(layers)
        self.num_features = self._make_stages(block, layers, widths, block_kwargs)
        # timm's rule for stochastic depth: from 0 at the first block up to drop_path_rate at the last.
        own_forward = drop_path_rate and next((type(b) for b in self.blocks() if type(b).forward is not BasicBlock.forward), None)
        if own_forward:  # the stock forward applies it: a block's own would silently leave it out
            raise ValueError(f"drop_path_rate is applied by the stock blocks' forward, which {own_forward.__name__} "
                             "overrides: override _branch instead, or apply it in your forward (self.drop_path)")
        for k, b in enumerate(self.blocks()):
            b.drop_path = drop_path_rate * k / max(1, sum(layers) - 1)
        self.drop_rate = drop_rate  # dropout of the pooled features, before the classifier (timm's)
        self._make_head(self.num_features)

        maps = self._feature_maps(widths, block.expansion)
        self.feature_info = FeatureInfo(maps, range(len(maps)))
        # A plain int for forward_head to read: torch.compile (torch 2.4's, at least) cannot read FeatureInfo in one graph.
        self._keras_side = 2 * maps[-1]["reduction"]  # the side that leaves the Keras head's 2x2 map
        self.out_indices = None
        if features_only:
            self._prune_to_backbone(maps, out_indices)
        else:
            self.reset_classifier(num_classes)
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.eps, m.momentum = bn_eps, bn_momentum
        self._init_weights(zero_init_residual)

    def _make_stem(self, in_chans: int, width: int, bias: bool) -> None:
        """``conv1``, ``bn1``, ``relu`` and ``maxpool``: the ImageNet and Keras stems halve the image twice
        (a 7x7/2 conv, a 3x3/2 max pool), the CIFAR stem keeps its size (one 3x3 conv)."""
        if self.stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=bias)
        else:
            self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=bias)
        # A pre-activation net normalises inside its first unit, so its stem is the conv alone (2016 paper).
        self.bn1 = nn.Identity() if self.preact else nn.BatchNorm2d(width)
        self.relu = nn.Identity() if self.preact else nn.ReLU(inplace=True)
        if self.stem == "imagenet":
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        elif self.stem == "keras":
            self.maxpool = nn.MaxPool2d(3, stride=2)
        else:
            self.maxpool = nn.Identity()

    def _make_stages(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], widths: Sequence[int],
                     block_kwargs: dict) -> int:
        """``layer1``, ``layer2``, ...: every stage but the first halves the map in its first block.
        Returns the channels of the last stage's output."""
        in_planes = widths[0]
        for i, (n, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(block(in_planes, planes, stride if j == 0 else 1, **block_kwargs))
                in_planes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        return in_planes

    def _make_head(self, channels: int) -> None:
        """``final_bn``, ``final_act`` and ``avgpool``; the classifier ``fc`` comes with ``reset_classifier``."""
        self.final_bn = nn.BatchNorm2d(channels) if self.preact else nn.Identity()
        # Units that end in the addition leave the last one un-activated: the head gets the ReLU (2016 paper).
        # A module rather than a call, so that the last feature map is some module's output (feature_info's).
        self.final_act = nn.ReLU() if self.order in ("preact", "relu_preact") else nn.Identity()
        # Keras layout: a fixed 2x2 average pool and flatten, exact for 64x64 inputs; elsewhere global pooling.
        self.avgpool = nn.AvgPool2d(2) if self.stem == "keras" else nn.AdaptiveAvgPool2d(1)

    def _feature_maps(self, widths: Sequence[int], expansion: int) -> list[dict]:
        """What each feature map is, timm's way: index 0 the stem's output (before any max pool), then the
        stages', the last as the head sees it."""
        # The stem's conv and its max pool both have stride 2, or (the CIFAR stem) neither.
        stem_stride = 1 if self.stem == "cifar" else 2
        maps = [{"module": "relu", "num_chs": widths[0], "reduction": stem_stride}] + [
            {"module": f"layer{i + 1}", "num_chs": w * expansion, "reduction": stem_stride * stem_stride * 2**i}
            for i, w in enumerate(widths)
        ]
        if self.final_relu:
            maps[-1]["module"] = "final_act"
        return maps

    def _prune_to_backbone(self, maps: list[dict], out_indices: Sequence[int] | None) -> None:
        """Make the net a ``features_only`` backbone returning the maps at ``out_indices``. It has no head,
        and no stage past its deepest map (timm's pruning), so that no weight goes unused. They are removed
        after being made, rather than never made, so that a seeded backbone draws the weights of the same
        net built with ``num_classes=0``."""
        self.out_indices = tuple(self._take_indices(out_indices))
        deepest = max(self.out_indices)
        self.feature_info = FeatureInfo(maps[: deepest + 1], self.out_indices)
        self.avgpool = self.fc = None
        self.num_classes = 0
        for i in range(deepest + 1, self.num_stages + 1):
            delattr(self, f"layer{i}")
        if deepest < self.num_stages:
            self.final_bn, self.final_act = nn.Identity(), nn.Identity()

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He initialisation of the convs, batch norms at the identity, then the blocks' own choices."""
        if self.conv1.weight.is_meta:
            return  # built only to count or trace shapes: there are no values to initialise
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 ("Delving deep into rectifiers"), as torchvision does.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.residual:
            for block_module in self.blocks():
                block_module.init_gate()
        if zero_init_residual and self.residual:
            for block_module in self.blocks():
                block_module.zero_init_last_bn()

    @property
    def fixed_input_size(self) -> int | None:
        """The image side the net takes, for a Keras-layout net (its head flattens a 2x2 map); None for
        those that pool globally and take any size."""
        if self.stem != "keras" or self.fc is None:
            return None
        return self._keras_side

    @property
    def final_relu(self) -> bool:
        """Whether the net ends in a ReLU after its last stage (pre-activation units, ``relu_preact``)."""
        return isinstance(self.final_act, nn.ReLU)

    def stages(self) -> list[nn.Sequential]:
        """The stages in order (``layer1``, ``layer2``, ...); a backbone's up to its deepest map."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages) if hasattr(self, f"layer{i + 1}")]

    def blocks(self) -> list[BasicBlock | Bottleneck]:
        """Every block of every stage, in order."""
        return [b for stage in self.stages() for b in stage]

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's: the feature maps at ``indices`` of ``feature_info``, shallowest first, after the final
        feature map (``forward_features``'s) unless ``intermediates_only``.

        ``indices``: None for all (the stem's, index 0, then each stage's; a backbone's up to its deepest),
        an int n for the last n, or a sequence (negative ones count from the end). They index the whole
        net's maps, so a backbone refuses those of the stages it left out. ``norm`` takes a pre-activation
        net's last stage map after its final BN-ReLU, as the classifier sees it. ``stop_early`` runs no
        stage past the deepest map asked for (the final map is then that stage's).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"feature maps come as NCHW, not {output_fmt}")
        wanted = self._take_indices(indices)
        x = self.relu(self.bn1(self.conv1(x)))
        features = [x] if 0 in wanted else []
        x = self.maxpool(x)
        stages = self.stages()[: max(wanted)] if stop_early else self.stages()
        for i, stage in enumerate(stages, 1):
            x = stage(x)
            if i in wanted:
                features.append(self._finish(x) if norm and i == self.num_stages else x)
        if intermediates_only:
            return features
        return (self._finish(x) if len(stages) == self.num_stages else x), features

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map as the head sees it: after the final BN-ReLU of pre-activation nets."""
        return self.final_act(self.final_bn(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map after the last stage (and the final BN-ReLU of pre-activation nets)."""
        return self.forward_intermediates(x, [self.num_stages], intermediates_only=True, norm=True)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the last feature map and classify it; ``pre_logits`` stops before the classifier."""
        if self.fc is None:
            raise ValueError("a features_only backbone has no head: its forward returns the feature maps")
        if self.stem == "keras" and torch.jit.is_tracing():
            # A trace keeps no Python branch (and warns at one): a reshape to the 2x2 map fails in the graph instead.
            x = x.reshape(x.shape[0], x.shape[1], 2, 2)
        elif self.stem == "keras":
            # The fixed 2x2 pool would read a corner of any larger map without a word.
            fits = (x.shape[-2] == 2) & (x.shape[-1] == 2)
            traced = isinstance(fits, torch.fx.Proxy)  # torch.fx (create_feature_extractor) traces no branch on a shape
            if traced or not fits:  # the message is made only where it may be needed, not at every forward
                side = self._keras_side
                message = f"this model flattens a 2x2 map (Keras's layout, as signs_resnet50) and so takes {side}x{side} images"
                if not traced:
                    raise ValueError(message)
                torch._assert(fits, message)
        pooled = torch.flatten(self.avgpool(x), 1)
        if self.drop_rate:
            pooled = F.dropout(pooled, self.drop_rate, self.training)
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (N, num_classes) for images (N, in_chans, H, W); pooled features (N, num_features)
        with ``num_classes=0``; a backbone's (``features_only``) maps, one per ``out_indices``."""
        if self.out_indices is not None:  # a backbone's maps are those its head would have seen
            return self.forward_intermediates(x, self.out_indices, norm=True, stop_early=True, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module | None:
        """The classifier (``fc``): an ``nn.Identity`` with 0 classes, None for a features_only backbone."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` classes; 0 makes ``forward`` return the pooled features.

        ``global_pool`` is timm's argument; the papers' nets average, so only ``"avg"`` is taken (for the
        unpooled map, ``forward_features``).
        """
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r}: these models pool by averaging, as the papers' do; "
                             "for the map before pooling, call forward_features")
        if self.out_indices is not None:
            raise ValueError("a features_only backbone has no classifier to reset; build the model without features_only")
        if not is_integer(num_classes) or num_classes < 0:
            raise ValueError(f"num_classes must be a whole number, 0 (no classifier) or more, not {num_classes!r}")
        self.num_classes = operator.index(num_classes)
        self.fc = nn.Linear(self.num_features, self.num_classes) if self.num_classes > 0 else nn.Identity()

    def _take_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """``indices`` of ``feature_info`` as forward_intermediates takes them (see there), sorted."""
        count = self.num_stages + 1
        if indices is None:
            return list(range(len(self.feature_info)))
        if is_integer(indices):
            if not 0 < indices <= count:
                raise ValueError(f"the last n feature maps: n from 1 to {count}, got {indices}")
            taken = list(range(count - indices, count))
        else:
            given = as_sequence(indices)
            if given is None or not all(is_integer(i) for i in given):
                raise ValueError(f"feature indices are a whole number (the last n maps) or a sequence of them, not {indices!r}")
            given = [operator.index(i) for i in given]
            taken = [i + count if i < 0 else i for i in given]
            if not taken or any(not 0 <= i < count for i in taken) or len(set(taken)) != len(taken):
                raise ValueError(f"feature indices must be distinct, from 0 (the stem) to {self.num_stages} "
                                 f"(the last stage), or -1 (the last) back to -{count}; got {given}")
        left_out = [i for i in taken if i >= len(self.feature_info)]
        if left_out:
            raise ValueError(f"stage {left_out[0]} was left out of this backbone (out_indices={self.out_indices}); "
                             f"build it with out_indices that include {left_out[0]}, or without features_only")
        return sorted(taken)


class FeatureInfo(list):
    """A model's feature maps (dicts of ``num_chs``, ``reduction``, ``module``), indexed as
    ``forward_intermediates`` indexes them, which ``channels()``, ``reduction()`` and ``module_name()``
    answer for those a model returns (a backbone's ``out_indices``), as timm's ``FeatureInfo`` does.

    ``module`` names the module whose output the map is, so torchvision's
    ``create_feature_extractor(model, info.module_name())`` returns a backbone's maps: a pre-activation
    net's last map is ``final_act``'s, after its final BN-ReLU (``forward_intermediates`` with ``norm=True``).
    """

    def __init__(self, info: Sequence[dict], out_indices: Sequence[int]) -> None:
        super().__init__(info)
        self.out_indices = tuple(out_indices)

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> list[dict] | dict:
        """The dicts of ``idx`` (default: the returned maps), with only ``keys`` if given."""
        chosen = self.out_indices if idx is None else idx
        pick = (lambda d: d) if keys is None else (lambda d: {k: d[k] for k in keys})
        return pick(self[chosen]) if isinstance(chosen, int) else [pick(self[i]) for i in chosen]

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> list | object:
        """One key of the dicts of ``idx`` (default: the returned maps)."""
        chosen = self.out_indices if idx is None else idx
        return self[chosen][key] if isinstance(chosen, int) else [self[i][key] for i in chosen]

    # One index gives one answer, and several (or none: the returned maps) a list, as timm's do.
    @overload
    def channels(self, idx: int) -> int: ...
    @overload
    def channels(self, idx: Sequence[int] | None = None) -> list[int]: ...
    def channels(self, idx: int | Sequence[int] | None = None) -> list[int] | int:
        """The maps' channel counts (default: the returned maps')."""
        return self.get("num_chs", idx)

    @overload
    def reduction(self, idx: int) -> int: ...
    @overload
    def reduction(self, idx: Sequence[int] | None = None) -> list[int]: ...
    def reduction(self, idx: int | Sequence[int] | None = None) -> list[int] | int:
        """How many times smaller than the input each map is, in height and width (its total stride)."""
        return self.get("reduction", idx)

    @overload
    def module_name(self, idx: int) -> str: ...
    @overload
    def module_name(self, idx: Sequence[int] | None = None) -> list[str]: ...
    def module_name(self, idx: int | Sequence[int] | None = None) -> list[str] | str:
        """The modules whose outputs the maps are (see the class)."""
        return self.get("module", idx)


# --- registry -----------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., ResNet]] = {}
# Per model name, the options its builder sets itself (resnet18's block and layers, plain18's residual=False):
# create_model takes one of them only with the same value, since another would be another network.
_FIXED: dict[str, dict[str, object]] = {}


class UnknownModelError(ResnetlabError, ValueError):
    """Raised for a model name that is not registered."""


def register_model(fn: Callable[..., ResNet], fixed: dict[str, object] | None = None) -> Callable[..., ResNet]:
    """Register a builder under its function name, so ``create_model(name)`` finds it; ``fixed``: the
    options it sets itself, which ``create_model`` refuses to change."""
    _REGISTRY[fn.__name__] = fn
    _FIXED[fn.__name__] = fixed or {}
    return fn


def registered_by(name: str) -> str | None:
    """The module that registered model ``name`` when it is a user's that ``--import`` can import, else
    None: resnetlab's own models, and those of a script (``__main__``), which no other process can import."""
    builder = _REGISTRY.get(name)
    module = getattr(builder, "__module__", "") or ""
    return module if builder is not None and module.split(".")[0] not in ("resnetlab", "__main__") else None


def list_models(pattern: str | Sequence[str] = "*", pretrained: bool = False,
                exclude_filters: str | Sequence[str] = ()) -> list[str]:
    """Registered model names matching a shell-style pattern (or any of several), less those matching
    ``exclude_filters``, in a natural order (resnet20 before resnet110); with ``pretrained``, only those
    with published weights (``weights=`` tags), as timm's ``list_models``."""
    def natural(name: str) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))

    def matches(name: str, patterns: str | Sequence[str]) -> bool:
        patterns = [patterns] if isinstance(patterns, str) else patterns
        return any(fnmatch.fnmatchcase(name, p.lower()) for p in patterns)  # names are lower case

    names = sorted((n for n in _REGISTRY if matches(n, pattern) and not matches(n, exclude_filters)), key=natural)
    if pretrained:
        from .pretrained import published_tags

        names = [n for n in names if published_tags(n)]
    return names


def describe_model(name: str) -> str:
    """The first line of a registered model's docstring."""
    doc = (_REGISTRY[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


_CIFAR_NAME = re.compile(r"^(resnet|plain|preact_resnet)(\d+)$")


def create_model(
    name: str, num_classes: int | None = None, in_chans: int | None = None, weights: str | os.PathLike | None = None,
    pretrained: bool = False, progress: bool = True, **overrides: Any,
) -> ResNet:
    """Build a registered model by name, optionally with starting weights.

    ``num_classes`` and ``in_chans`` default to the model family's own (1000 and 3 for ImageNet,
    10 and 3 for CIFAR, 6 and 3 for SIGNS); ``num_classes=0`` leaves out the classifier, so that the
    model returns its pooled features. Other keyword arguments override the builder's, e.g.
    ``create_model("resnet50", stride_in_1x1=True)`` for the paper's stride placement, but not what
    the name fixes: its depth's blocks and layers, ``residual=False`` of ``plain*``, ``order="preact"``
    of ``preact_*`` (for those, ``ResNet`` or ``cifar_resnet``, or the twin name).
    Names like ``resnet74`` or ``plain200`` that fit the CIFAR depth formulas build on the fly.

    ``weights`` is torchvision's published tag (``"DEFAULT"`` or ``"IMAGENET1K_V1"`` for resnet18 to
    resnet152, ``"IMAGENET1K_V2"`` for resnet50 to resnet152), downloaded once into torch's cache; ``"KERAS"``,
    Keras Applications' ImageNet weights for resnet50/101/152, which builds the paper's layout
    (stride on the first 1x1) with conv biases; torchvision's enums (``ResNet50_Weights.DEFAULT``); or a
    weights file (.safetensors, .pth, a Keras model), whose classifier comes with it unless
    ``num_classes`` asks for another. Another class count keeps a fresh classifier; ``in_chans=1`` gets
    conv1 summed over colours (see ``resnetlab.pretrained``). ``pretrained=True`` is ``weights="DEFAULT"``,
    as in timm; ``progress`` shows a download's progress bar, as in torchvision. ``features_only=True``
    (with ``out_indices``) builds a backbone whose forward returns the feature maps ``feature_info``
    describes, loading a classifier's weights without its head.
    """
    if pretrained and weights is None:
        weights = "DEFAULT"
    if weights is not None:
        from .pretrained import (WeightsError, is_file_spec, is_keras_tag, load_weights, read_weights, weights_layout,
                                 weights_name)

        weights = weights_name(weights, name)
        if overrides.get("stride_in_1x1") and not is_file_spec(weights) and not is_keras_tag(weights):
            # The tensors would fit, but they were trained with the stride on the 3x3: another network.
            raise WeightsError("torchvision's weights were trained with the stride on the 3x3; drop stride_in_1x1")
        # A file is read first (once), so that its trained classifier comes with it unless asked for another.
        loaded = read_weights(name, weights, progress) if is_file_spec(weights) else None
        if loaded is not None and num_classes is None and not overrides.get("features_only"):
            num_classes = loaded.num_classes
        overrides = {**overrides, **weights_layout(weights)}
        return load_weights(create_model(name, num_classes, in_chans, **overrides), name, weights, progress, loaded=loaded)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if in_chans is not None:
        overrides["in_chans"] = in_chans
    if name in _REGISTRY:
        return _REGISTRY[name](**_check_options(name, _REGISTRY[name], overrides, _FIXED[name]))
    match = _CIFAR_NAME.match(name)
    if match:
        kind, depth = match.group(1), int(match.group(2))
        only_bottlenecks = (depth - 2) % 9 == 0 and (depth - 2) % 6 != 0  # 3 layers a block reach it, 2 do not
        block = overrides.pop("block", "bottleneck" if only_bottlenecks else "basic")
        if cifar_blocks_per_stage(depth, block, missing_ok=True):
            overrides = _check_options(name, cifar_resnet, overrides, _cifar_fixed(kind, depth, block))
            return cifar_resnet(depth, block=block, **_KINDS[kind], **overrides)
    close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `resnetlab models` lists them"
    if match:
        hint += " (CIFAR nets by depth have 6n+2 layers, basic blocks: 8, 14, 20, ...; or 9n+2, bottlenecks: 11, 29, 47, ...)"
    raise UnknownModelError(f"unknown model {name!r}{hint}")


def _same(value: object, fixed: object) -> bool:
    """Whether an option repeats what a name fixes: ``layers=(2, 2, 2, 2)`` does ``[2, 2, 2, 2]``."""
    if isinstance(fixed, (list, tuple)):
        return isinstance(value, Sequence) and not isinstance(value, str) and list(value) == list(fixed)
    return type(value) is type(fixed) and value == fixed  # types first: a NumPy array compares element-wise


def _check_options(name: str, builder: Callable[..., ResNet], options: dict, fixed: dict[str, object]) -> dict:
    """``options`` less those that repeat what model ``name`` fixes. One line, rather than Python's TypeError,
    for an option that would change what the name fixes, or that neither the builder nor ``ResNet`` takes."""
    for key, value in options.items():
        if key in fixed and not _same(value, fixed[key]):
            if key in ("preact", "order", "residual"):
                twin = re.sub(r"^(plain|preact_resnet)", "resnet", name)
                raise ValueError(f"{name} fixes {key}={fixed[key]!r}; use create_model({twin!r}, {key}={value!r})")
            raise ValueError(f"{name} fixes {key}; for other depths or blocks build ResNet(block, layers, ...) "
                             "or cifar_resnet(depth, block=...)")
    known = (set(inspect.signature(builder).parameters) | set(inspect.signature(ResNet.__init__).parameters)) - {
        "self", "kwargs", "overrides", *fixed}
    unknown = sorted(set(options) - known - set(fixed))
    if unknown:
        raise TypeError(f"no {name} option {', '.join(unknown)}; the options are {', '.join(sorted(known))}")
    return {k: v for k, v in options.items() if k not in fixed}


def depth_of(name: str) -> int:
    """The layer count a model's name ends in (``resnet110`` -> 110, ``preact_resnet1001`` -> 1001; 0 if none)."""
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else 0


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode, then each of its modules back in the mode it was in: a trainer's model
    evaluated mid-run must go on training with batch statistics and dropout, and layers a fine-tuner
    keeps in eval mode (frozen batch norms) must stay there, which ``model.train()`` would undo."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --- ImageNet family (2015 paper, Table 1) ------------------------------------------------------

_IMAGENET = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
    200: (Bottleneck, [3, 24, 36, 3]),  # the 2016 paper's Table 5
}


# What a name's prefix fixes: a plain net has no shortcuts, a pre-activation one its units' order.
_KINDS: dict[str, dict[str, object]] = {
    "resnet": {}, "plain": {"residual": False}, "preact_resnet": {"preact": True, "order": "preact"},
}


def _register_imagenet(kind: str, depth: int, doc: str) -> None:
    block, layers = _IMAGENET[depth]
    fixed = {"block": block, "layers": layers, **_KINDS[kind]}

    def builder(**kwargs) -> ResNet:
        return ResNet(**fixed, **kwargs)

    builder.__name__ = builder.__qualname__ = f"{kind}{depth}"
    builder.__doc__ = doc
    register_model(builder, fixed)


for _depth in (18, 34):
    _register_imagenet("resnet", _depth, f"ResNet-{_depth} (2015 paper, Table 1); state_dict keys match torchvision's.")
for _depth in (50, 101, 152):
    _register_imagenet("resnet", _depth, f"ResNet-{_depth} (2015 paper, Table 1), torchvision stride (v1.5); "
                                         "stride_in_1x1=True for the paper's.")
_register_imagenet("resnet", 200, "ResNet-200 (2016 paper, Table 5: the original unit), torchvision's layout and stride.")
for _depth in (18, 34):
    _register_imagenet("plain", _depth, f"The {_depth}-layer plain net of the 2015 paper's Figure 4: ResNet-{_depth} "
                                        "without shortcuts.")
for _depth in (18, 34, 50, 101, 152, 200):
    _table = " (the 2016 paper's Table 5)" if _depth >= 152 else ""
    _register_imagenet("preact_resnet", _depth, f"ResNet-{_depth} with the 2016 paper's pre-activation units{_table}.")


# --- CIFAR family (2015 paper Section 4.2, 2016 paper Section 4) --------------------------------

_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
MAX_CIFAR_DEPTH = 10_000


def _block_class(block: type[BasicBlock | Bottleneck] | str) -> type[BasicBlock | Bottleneck]:
    """The block class named by ``block`` (``"basic"``, ``"bottleneck"``), or ``block`` itself if it is one."""
    if isinstance(block, str):
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {', '.join(map(repr, _BLOCKS))}, got {block!r}")
        return _BLOCKS[block]
    if not (isinstance(block, type) and issubclass(block, (BasicBlock, Bottleneck))):
        raise TypeError(f"block must be BasicBlock, Bottleneck (or a subclass) or its name, not {block!r}")
    return block


def cifar_resnet(
    depth: int,
    block: type[BasicBlock | Bottleneck] | str = "basic",
    preact: bool = False,
    residual: bool = True,
    shortcut: str | None = None,
    num_classes: int = 10,
    in_chans: int = 3,
    widths: Sequence[int] = (16, 32, 64),
    **kwargs: Any,
) -> ResNet:
    """A CIFAR-style net of any valid depth: 6n+2 layers with basic blocks, 9n+2 with bottlenecks.

    Three stages of n blocks on 32x32 (or 28x28) inputs, 16-32-64 planes. The shortcut defaults to
    option A for basic blocks (2015 paper) and option B for bottlenecks, whose first block must
    widen 16 to 64 channels (2016 paper).
    """
    n = cifar_blocks_per_stage(depth, block)
    block = _block_class(block)
    if shortcut is None:  # by the block's kind, so that a subclass of BasicBlock keeps option A too
        shortcut = "A" if block.expansion == 1 else "B"
    return ResNet(
        block, [n] * 3, widths, num_classes=num_classes, in_chans=in_chans, stem="cifar",
        shortcut=shortcut, preact=preact, residual=residual, **kwargs,
    )


def cifar_blocks_per_stage(depth: int, block: type[BasicBlock | Bottleneck] | str, missing_ok: bool = False) -> int:
    """n, the blocks in each of a CIFAR net's three stages: its depth is 6n+2 with basic blocks (two layers
    each), 9n+2 with bottlenecks (three), e.g. 18 for ResNet-110 and for ResNet-164 of bottlenecks.
    A depth of neither form is a ValueError, or 0 if ``missing_ok``; an unknown block or a depth past
    ``MAX_CIFAR_DEPTH`` always one."""
    per_block = _block_class(block).layers
    if depth > MAX_CIFAR_DEPTH:  # each layer costs memory as it is built: a typo's extra digits would fill the machine
        raise ValueError(f"depth {depth:,}: CIFAR nets are built up to {MAX_CIFAR_DEPTH:,} layers (the papers' deepest has 1,202)")
    n, rest = divmod(depth - 2, 3 * per_block)
    if rest or n < 1:
        if missing_ok:
            return 0
        raise ValueError(f"depth {depth} is not {3 * per_block}n+2 for {getattr(block, '__name__', block)} blocks")
    return n


def _cifar_fixed(kind: str, depth: int, block: str) -> dict[str, object]:
    """What a CIFAR net's name fixes: its depth (so its stages' blocks), its stem and its kind. The block
    stays free: ResNet-110 of bottlenecks is the 2016 paper's ablations' other net."""
    return {"depth": depth, "layers": [cifar_blocks_per_stage(depth, block)] * 3, "stem": "cifar", **_KINDS[kind]}


def _register_cifar(kind: str, depth: int, doc: str, block: str = "basic") -> None:
    def builder(**kwargs) -> ResNet:
        return cifar_resnet(depth, **_KINDS[kind], **{"block": block, **kwargs})

    builder.__name__ = builder.__qualname__ = f"{kind}{depth}"
    builder.__doc__ = doc
    register_model(builder, _cifar_fixed(kind, depth, block))


for _depth in (20, 32, 44, 56, 110, 1202):
    _register_cifar("resnet", _depth, f"ResNet-{_depth} for CIFAR (2015 paper, Table 6), option A shortcuts.")
for _depth in (20, 32, 44, 56, 110):
    _register_cifar("plain", _depth, f"The {_depth}-layer plain CIFAR net (2015 paper, Figure 6).")
_register_cifar("preact_resnet", 110, "Pre-activation ResNet-110 (2016 paper, Table 3), basic blocks.")
for _depth in (164, 1001):
    _register_cifar("resnet", _depth, f"Bottleneck ResNet-{_depth} for CIFAR with the original unit (2016 paper, Table 3).",
                    block="bottleneck")
    _register_cifar("preact_resnet", _depth, f"Pre-activation bottleneck ResNet-{_depth} for CIFAR (2016 paper, Table 3).",
                    block="bottleneck")


# --- The seed notebook --------------------------------------------------------------------------


def signs_resnet50(
    num_classes: int = 6,
    in_chans: int = 3,
    layers: Sequence[int] = (3, 4, 6, 3),
    widths: Sequence[int] = (64, 128, 256, 512),
    **kwargs: Any,
) -> ResNet:
    """The seed notebook's Keras ResNet-50 for 64x64 SIGNS images.

    Its layout: ZeroPadding2D(3) + 7x7/2 conv, conv biases everywhere, the stride on the first 1x1
    of each convolutional block, Keras's batch-norm epsilon (1e-3), a 2x2 average pool, flatten and a
    dense layer; initialised as Keras initialises it (``keras_init``, and batch norms keeping 0.99 of
    their moving statistics each step: ``bn_momentum=0.01``). Keras reports 23,600,006 parameters: 23,546,886 trainable plus 53,120 BN moving
    statistics. ``layers`` and ``widths`` (each stage's F1; F3 is 4 x F1) give the notebook's layout
    at other sizes, as ``resnetlab import`` needs for Keras files of such variants.
    """
    kwargs = {"stem": "keras", "bias": True, "stride_in_1x1": True, "bn_eps": 1e-3, "bn_momentum": 0.01, **kwargs}
    model = ResNet(Bottleneck, list(layers), widths=list(widths), num_classes=num_classes, in_chans=in_chans, **kwargs)
    keras_init(model)
    for block in model.blocks() if model.residual else []:
        block.init_gate()  # a gate's bias starts where its option says, not at Keras's zero
    return model


register_model(signs_resnet50, fixed={"block": Bottleneck})
