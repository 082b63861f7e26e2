"""``model.summary()`` as Keras prints it: layers, output shapes, parameters, totals and multiply-adds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from .models import eval_mode

# The functions that blocks and nets call in their own forward (not through a layer) and that Keras
# makes layers of: Activation("relu"), Add, Flatten, Dropout. Each call gets a row, so that the
# notebook's model reads row for row as its ``model.summary()``. What has no row on purpose: Keras's
# ZeroPadding2D, which is conv1's own padding here; its InputLayer, which computes nothing; and the
# products and sigmoid of the "scale" and "gate" mixings, which Keras's ResNets do not have (the
# gate's 1x1 conv is a layer and has its row).
_FUNCTION_ROWS = {
    F.relu: "relu", F.relu_: "relu", torch.relu: "relu", torch.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu",
    torch.Tensor.__add__: "add", torch.Tensor.__radd__: "add", torch.Tensor.__iadd__: "add",
    torch.add: "add", torch.Tensor.add: "add", torch.Tensor.add_: "add",
    torch.flatten: "flatten", torch.Tensor.flatten: "flatten",
    F.dropout: "dropout",
}


@dataclass
class SummaryRow:
    """One row: a layer (``kind`` its class), or a function a block or net calls itself (``kind`` in
    lower case: ``relu``, ``add``, ``flatten``, ``dropout``), named after the module that calls it."""

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

    def __repr__(self) -> str:  # short: a REPL shows the returned summary after the printed table
        size = "x".join(str(s) for s in self.input_size)
        return f"ModelSummary({self.title!r}, {size}, {len(self.rows)} rows, {self.total:,} params, {self.macs:,} MACs)"

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
    with torch.no_grad(), eval_mode(model), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size, dtype=weight.dtype, device=weight.device))
    # The counter reports FLOPs with a multiply and an add counted separately.
    return counter.get_total_flops() // 2


def summary(
    model: nn.Module,
    input_size: Sequence[int],
    title: str | None = None,
    print_fn: Callable[[str], object] | None = print,
) -> ModelSummary:
    """Print and return the Keras-style summary of ``model`` for one input of shape ``input_size`` (C, H, W).

    Rows are in execution order: the leaf layers, and the ReLUs, shortcut additions, flatten and
    dropout that blocks and nets call as functions, named after their caller: a post-activation
    block reads ``conv1, bn1, relu1, ..., bn3, downsample.0, downsample.1, add, relu``, as Keras lists
    BatchNormalization, Activation, ..., Add, Activation. The input is zeros of the model's
    parameters' dtype, on their device.
    """
    if len(input_size) != 3:
        raise ValueError(f"input_size is one image's (C, H, W), without the batch dimension; got {tuple(input_size)}")
    if min(input_size) < 1:
        raise ValueError(f"input_size's channel count and image sides must be positive, not {tuple(input_size)}")
    result = ModelSummary(title or type(model).__name__, tuple(input_size))
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != input_size[0]:  # said in the user's terms, not the conv's
        if input_size[-1] == first.in_channels:  # Keras's (H, W, C)
            c, h, w = input_size[-1], *input_size[:2]
            raise ValueError(f"input_size is (C, H, W), channels first: ({c}, {h}, {w}), not {tuple(input_size)}")
        raise ValueError(f"{result.title} takes {first.in_channels}-channel images, not {input_size[0]} "
                         f"(build it with in_chans={input_size[0]})")
    names = {m: n for n, m in model.named_modules()}
    recorded = {m for m in model.modules() if next(m.children(), None) is None and not isinstance(m, nn.Identity)}
    calls = _FunctionCalls(names, recorded, result.rows)
    hooks = []

    def record(module: nn.Module, _inputs, output) -> None:
        result.rows.append(SummaryRow(names[module], type(module).__name__, tuple(output.shape), _keras_params(module)))

    for module in model.modules():
        hooks.append(module.register_forward_pre_hook(calls.enter))
        hooks.append(module.register_forward_hook(calls.leave, always_call=True))
        if module in recorded:
            hooks.append(module.register_forward_hook(record))
    returned = []
    hooks.append(model.register_forward_hook(lambda _m, _i, output: returned.append(output)))
    try:
        with calls:
            result.macs = count_macs(model, input_size)
    finally:
        for h in hooks:
            h.remove()
    # A net that changes the shape past its last row by other means (a view, a reshape) would end its
    # table at a shape it does not return.
    shape = tuple(returned[0].shape) if returned and isinstance(returned[0], torch.Tensor) else None
    if shape and result.rows and result.rows[-1].output_shape != shape:
        result.rows.append(SummaryRow("flatten", "flatten", shape, 0))
    result.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result.non_trainable = non_trainable_count(model)
    if print_fn is not None:
        print_fn(str(result))
    return result


class _FunctionCalls(TorchFunctionMode):
    """Rows for the functions of ``_FUNCTION_ROWS`` that a module calls in its own forward, told apart
    from those inside layers (``nn.ReLU`` calls ``F.relu``; its row is its own) by a stack of the
    modules running, which the forward hooks ``enter`` and ``leave`` keep."""

    def __init__(self, names: dict[nn.Module, str], recorded: set[nn.Module], rows: list[SummaryRow]) -> None:
        super().__init__()
        self.names, self.recorded, self.rows = names, recorded, rows
        self.stack: list[tuple[nn.Module, dict[str, int]]] = []

    def enter(self, module: nn.Module, _inputs) -> None:
        self.stack.append((module, {}))

    def leave(self, module: nn.Module, _inputs, _output) -> None:
        if self.stack and self.stack[-1][0] is module:
            self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        kind = _FUNCTION_ROWS.get(func)
        if kind is None or not self.stack or not isinstance(output, torch.Tensor):
            return output
        module, seen = self.stack[-1]
        if module in self.recorded:
            return output
        if kind == "add" and not (len(args) == 2 and all(isinstance(a, torch.Tensor) for a in args)):
            return output  # an offset (x + 1), not two paths meeting
        seen[kind] = seen.get(kind, 0) + 1
        if kind == "relu":
            # Branch ReLUs are numbered as their units (relu1 after or before bn1, ...); the one after the
            # addition is the block's own, as torchvision's Bottleneck calls ``self.relu`` there.
            label = "relu" if seen.get("add") else f"relu{seen[kind]}"
        else:
            label = kind if seen[kind] == 1 else f"{kind}_{seen[kind]}"
        prefix = self.names.get(module, "")
        self.rows.append(SummaryRow(f"{prefix}.{label}" if prefix else label, kind, tuple(output.shape), 0))
        return output
