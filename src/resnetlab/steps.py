"""One optimisation step, two ways: plain eager PyTorch, and the same step captured in a CUDA graph.

At CIFAR sizes a ResNet step is a few hundred small kernels; on a GPU the time goes to launching
them from Python, not to arithmetic. ``GraphedTrainStep`` records forward, loss, backward,
optimizer update and metric sums once, then replays them with one launch per step. It computes
exactly what ``TrainStep`` computes: the learning rate lives in a device tensor the optimizer reads,
inputs are copied into fixed buffers, and the sums accumulate in place. On a CPU (or with
``capture=False``) it runs the very same body eagerly, which is how the tests check the two agree.

``build_train_step`` is the one place that picks between them; the trainer and the benchmark both use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .devices import autocast_for
from .recipes import Recipe
from .runs import RunError


def make_optimizer(recipe: Recipe, model: nn.Module, device: torch.device, tensor_lr: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimizer. BN parameters and biases get no weight decay unless
    ``recipe.decay_norm_and_bias``.

    Decaying a BN scale only fights the next layer's rescaling; the 2015 paper decays everything,
    and at 1e-4 the difference is within noise. ``tensor_lr`` keeps the learning rate in a device
    tensor, which a CUDA graph can read on every replay.
    """
    spared = (lambda p: False) if recipe.decay_norm_and_bias else (lambda p: p.ndim <= 1)
    decay = [p for p in model.parameters() if not spared(p)]
    no_decay = [p for p in model.parameters() if spared(p)]
    # Two groups either way, so that a checkpoint's optimizer state always has the same shape.
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = torch.tensor(recipe.lr, device=device) if tensor_lr else recipe.lr
    # Fused kernels: one launch for the whole update instead of one per tensor.
    fused = {"fused": True} if device.type == "cuda" or tensor_lr else {}
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov, **fused)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, eps=recipe.adam_eps, capturable=tensor_lr, **fused)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=recipe.adam_eps, capturable=tensor_lr, **fused)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


class TrainStep:
    """Eager training step with metric sums kept on the device (read once per epoch, never per step)."""

    def __init__(self, forward: nn.Module, optimizer: torch.optim.Optimizer, label_smoothing: float, device: torch.device) -> None:
        self.forward, self.optimizer, self.device = forward, optimizer, device
        self.label_smoothing = label_smoothing
        zero = torch.zeros((), device=device)
        self.sums = {"loss": zero.clone(), "correct": zero.clone(), "seen": zero.clone()}

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # in place: a captured graph keeps reading this tensor
            else:
                group["lr"] = lr

    def _body(self, x: torch.Tensor, y: torch.Tensor, watched: list[nn.Parameter] | None = None) -> torch.Tensor | None:
        with autocast_for(self.device):
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        loss.backward()
        norms = torch.stack([p.grad.detach().float().norm() for p in watched]) if watched else None
        self.optimizer.step()
        self.sums["loss"] += loss.detach() * y.shape[0]
        self.sums["correct"] += (logits.detach().argmax(1) == y).sum()
        self.sums["seen"] += y.shape[0]
        return norms

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float, watched: list[nn.Parameter] | None = None) -> torch.Tensor | None:
        """One step at learning rate ``lr``; returns the gradient norms of ``watched`` when given."""
        self.set_lr(lr)
        self.optimizer.zero_grad(set_to_none=True)
        return self._body(x, y, watched)

    def read_sums(self) -> dict[str, float]:
        """The epoch's sums as numbers (one host sync)."""
        values = torch.stack([v.double() for v in self.sums.values()]).tolist()
        return dict(zip(self.sums, values))

    def reset_sums(self) -> None:
        """Start the next epoch's sums at zero."""
        for v in self.sums.values():
            v.zero_()


class GraphedTrainStep(TrainStep):
    """``TrainStep`` captured once in a CUDA graph and replayed (whole-network capture).

    Needs fixed batch shapes (the training loader drops the last partial batch) and an optimizer
    built with ``tensor_lr=True``. Capture runs a few warm-up steps on a side stream, as CUDA
    graphs require, then puts weights, BN statistics and optimizer state back exactly as they
    were, so the first real step starts from the same state as the eager path would.
    """

    def __init__(
        self,
        forward: nn.Module,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        label_smoothing: float,
        sample: tuple[torch.Tensor, torch.Tensor],
        capture: bool = True,
        warmup: int = 3,
    ) -> None:
        device = sample[0].device
        super().__init__(forward, optimizer, label_smoothing, device)
        if not all(isinstance(g["lr"], torch.Tensor) for g in optimizer.param_groups):
            raise ValueError("a graphed step needs an optimizer with tensor learning rates (make_optimizer(tensor_lr=True))")
        self.static_x = sample[0].clone()
        self.static_y = sample[1].clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        if capture and device.type == "cuda":
            self._capture(model, warmup)

    def _capture(self, model: nn.Module, warmup: int) -> None:
        saved_model = {k: v.clone() for k, v in model.state_dict().items()}
        saved_optim = {p: {k: v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)}
                       for p, st in self.optimizer.state.items()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self.optimizer.zero_grad(set_to_none=True)
                self._body(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(stream)
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body(self.static_x, self.static_y)
        # Undo the warm-up and capture steps in place: the graph holds these very tensors.
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved_model[k])
            for p, state in self.optimizer.state.items():
                for k, v in state.items():
                    if not isinstance(v, torch.Tensor):
                        continue
                    if p in saved_optim:
                        v.copy_(saved_optim[p][k])  # a resumed run's momentum
                    else:
                        # A zero momentum buffer gives the same first update as a missing one (dampening 0).
                        v.zero_()
        self.reset_sums()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float, watched: list[nn.Parameter] | None = None) -> None:
        if watched:
            raise ValueError("gradient norms are recorded by the eager step only")
        if x.shape != self.static_x.shape or y.shape != self.static_y.shape:
            # copy_ would broadcast a smaller batch into the buffer and train on copies of it.
            raise ValueError(f"a graphed step takes batches of {tuple(self.static_x.shape)}, not {tuple(x.shape)}")
        self.set_lr(lr)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._body(self.static_x, self.static_y)


# Optimizer settings that say how the update runs, not what it computes.
_HOW_TO_RUN = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state, keeping how ``optimizer`` was built to run.

    The checkpoint may come from the other path: the graphed one keeps the learning rate in a
    tensor and uses fused kernels. Loading would bring those settings along; a graph capture would
    then meet an unfused update that reads the rate back to the host, and an eager CPU run would
    meet a CUDA-side rate. So the momentum comes from the checkpoint and the rest stays this run's.
    """
    own = [{k: g[k] for k in _HOW_TO_RUN if k in g} for g in optimizer.param_groups]
    tensor_lr = [isinstance(g["lr"], torch.Tensor) for g in optimizer.param_groups]
    device = next(iter(optimizer.param_groups[0]["params"])).device
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as err:
        raise RunError(f"the checkpoint's optimizer state does not fit this model's parameters ({err})") from None
    for group, settings, as_tensor in zip(optimizer.param_groups, own, tensor_lr):
        group.update(settings)
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=device) if as_tensor else lr
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                # load_state_dict pairs buffers with parameters by position, never by shape: a buffer of
                # another shape would fail, or broadcast, at the first update.
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                    raise RunError(f"the checkpoint's optimizer state does not fit this model's parameters "
                                   f"(its {k} of shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)})")
                # Loaded buffers keep the saved layout; a fused kernel ignores strides, so a run saved
                # without channels_last (MPS) and resumed with it would update the wrong elements.
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
            if "step" in state and (group.get("capturable") or group.get("fused")):
                state["step"] = state["step"].to(p.device, torch.float32)  # Adam's step count beside the weights


def build_train_step(
    model: nn.Module,
    recipe: Recipe,
    device: torch.device,
    graphed: bool = False,
    sample: tuple[torch.Tensor, torch.Tensor] | None = None,
    compile: bool = False,
    optimizer_state: dict | None = None,
    processes: int = 1,
) -> TrainStep:
    """The training step a run uses: its optimizer, then the eager or the CUDA-graphed step.

    A graphed step needs ``sample``, a training batch on the device: the graph is captured for its
    shapes. ``optimizer_state`` (a checkpoint's) is loaded before any capture, since the graph
    records the optimizer's state tensors themselves. With ``compile`` the model runs through
    ``torch.compile``; graphed as well, the compiled kernels are captured in the step's graph.
    With several ``processes`` (torchrun) the model is wrapped in DistributedDataParallel, which
    averages the gradients of all processes, and the step stays eager.
    """
    if graphed and (device.type != "cuda" or sample is None or processes > 1):
        raise ValueError("a CUDA-graphed step needs a CUDA device, a sample batch and a single process")
    optimizer = make_optimizer(recipe, model, device, tensor_lr=graphed)
    if optimizer_state is not None:
        load_optimizer_state(optimizer, optimizer_state)
    forward = model
    if processes > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        forward = torch.compile(forward)
    model.train()
    if graphed:
        return GraphedTrainStep(forward, model, optimizer, recipe.label_smoothing, sample)
    return TrainStep(forward, optimizer, recipe.label_smoothing, device)
