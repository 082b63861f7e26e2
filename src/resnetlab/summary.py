"""``model.summary()`` as Keras prints it: layers, output shapes, parameters, totals and multiply-adds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .blocks import BasicBlock, Bottleneck, ResidualMLPBlock

_BLOCKS = (BasicBlock, Bottleneck, ResidualMLPBlock)


@dataclass
class SummaryRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


@dataclass
class ModelSummary:
    """What ``summary`` measured. ``str()`` gives the Keras-style table."""

    title: str
    input_size: tuple[int, ...]
    rows: list[SummaryRow] = field(default_factory=list)
    trainable: int = 0
    non_trainable: int = 0
    macs: int = 0

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def __str__(self) -> str:
        name_w = max([len(f"{r.name} ({r.kind})") for r in self.rows] + [20]) + 2
        shape_w = max([len(_shape(r.output_shape)) for r in self.rows] + [12]) + 2
        width = name_w + shape_w + 12
        lines = [f'Model: "{self.title}"', "_" * width]
        lines.append(f"{'Layer (type)':<{name_w}}{'Output Shape':<{shape_w}}{'Param #':>12}")
        lines.append("=" * width)
        for r in self.rows:
            lines.append(f"{r.name + ' (' + r.kind + ')':<{name_w}}{_shape(r.output_shape):<{shape_w}}{r.params:>12,}")
        lines.append("=" * width)
        lines.append(f"Total params: {self.total:,}")
        lines.append(f"Trainable params: {self.trainable:,}")
        lines.append(f"Non-trainable params: {self.non_trainable:,}")
        lines.append("_" * width)
        size = "x".join(str(s) for s in self.input_size)
        scaled = f"{self.macs / 1e9:.2f} G" if self.macs >= 1e9 else f"{self.macs / 1e6:.1f} M"
        lines.append(f"Multiply-accumulates: {self.macs:,} ({scaled}) for one {size} input")
        return "\n".join(lines)


def _shape(shape: tuple[int, ...]) -> str:
    return "(None, " + ", ".join(str(s) for s in shape[1:]) + ")"


def _keras_params(module: nn.Module) -> int:
    """A layer's own parameters as Keras counts them: BN moving mean and variance included."""
    n = sum(p.numel() for p in module.parameters(recurse=False))
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
        n += module.running_mean.numel() + module.running_var.numel()
    return n


def non_trainable_count(model: nn.Module) -> int:
    """Frozen parameters plus BN running statistics (not ``num_batches_tracked``), as Keras reports them."""
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stats = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    )
    return frozen + stats


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass for one input, counted by ``torch.utils.flop_counter``.
    The input has the dtype and device of the model's parameters (a bfloat16 model takes a bfloat16 input)."""
    weight = next(model.parameters())
    # Each module's own mode is given back, not the model's: ``model.train()`` would wake the batch
    # norms a fine-tuner keeps frozen in eval mode.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size, dtype=weight.dtype, device=weight.device))
    finally:
        for m, training in modes:
            m.training = training
    # The counter reports FLOPs with a multiply and an add counted separately.
    return counter.get_total_flops() // 2


def summary(
    model: nn.Module,
    input_size: Sequence[int],
    title: str | None = None,
    print_fn=print,
) -> ModelSummary:
    """Print and return the Keras-style summary of ``model`` for one input of shape ``input_size`` (C, H, W).

    Rows are the leaf layers in execution order, plus one row per residual block for its addition. The
    input is zeros of the model's parameters' dtype, on their device.
    """
    if len(input_size) != 3:
        raise ValueError(f"input_size is one image's (C, H, W), without the batch dimension; got {tuple(input_size)}")
    if min(input_size) < 1:
        raise ValueError(f"input_size's channel count and image sides must be positive, not {tuple(input_size)}")
    result = ModelSummary(title or type(model).__name__, tuple(input_size))
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != input_size[0]:  # said in the user's terms, not the conv's
        raise ValueError(f"{result.title} takes {first.in_channels}-channel images, not {input_size[0]} "
                         f"(build it with in_chans={input_size[0]})")
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def record(module: nn.Module, _inputs, output) -> None:
        if isinstance(module, _BLOCKS):
            if module.residual:
                result.rows.append(SummaryRow(names[module], "add", tuple(output.shape), 0))
            return
        result.rows.append(SummaryRow(names[module], type(module).__name__, tuple(output.shape), _keras_params(module)))

    for module in model.modules():
        leaf = next(module.children(), None) is None
        if (leaf and not isinstance(module, nn.Identity)) or isinstance(module, _BLOCKS):
            hooks.append(module.register_forward_hook(record))
    returned = []
    hooks.append(model.register_forward_hook(lambda _m, _i, output: returned.append(output)))
    try:
        result.macs = count_macs(model, input_size)
    finally:
        for h in hooks:
            h.remove()
    # The head flattens the pooled map in a function, not a layer: without this row a classifier-less
    # net's table would end at (C, 1, 1) while the net returns (C,).
    shape = tuple(returned[0].shape) if returned and isinstance(returned[0], torch.Tensor) else None
    if shape and result.rows and result.rows[-1].output_shape != shape:
        result.rows.append(SummaryRow("flatten", "Flatten", shape, 0))
    result.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result.non_trainable = non_trainable_count(model)
    if print_fn is not None:
        print_fn(str(result))
    return result
