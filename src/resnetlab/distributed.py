"""Several processes, one run: what ``torchrun`` needs from the trainer.

``torchrun --nproc-per-node=N -m resnetlab train ...`` starts N copies of the trainer with RANK,
WORLD_SIZE and LOCAL_RANK set. Each process draws the same epoch plan from (seed, epoch) and trains
on its own slice of every batch (the recipe's batch size is the global one); DistributedDataParallel
averages the gradients, so the weights stay identical everywhere. Process 0 alone writes the run
directory and evaluates. One process (no torchrun) needs none of this and pays nothing for it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints."""
        return self.rank == 0


def world_from_env() -> World:
    """The world torchrun describes in the environment; a single process when it is not set."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    return World(rank, size, local_rank)


def setup(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, Gloo on the CPU) and return this process's device."""
    if world.size == 1:
        return device
    if device.index is not None:  # it would be ignored: each process takes its own
        raise ValueError(f"--device {device} names one GPU, but under torchrun each process takes the GPU of its "
                         "LOCAL_RANK: give --device cuda")
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"several processes need CUDA or the CPU, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size)
    return device


def teardown(world: World) -> None:
    """Leave the process group, once every process is done."""
    if world.size > 1 and dist.is_initialized():
        # Not dist.barrier(): Gloo's barrier holds on to the collectives still finishing when it starts
        # and lets go of them later, from its own thread (see _all_reduce).
        done = torch.zeros(1, device="cuda" if dist.get_backend() == "nccl" else "cpu")
        _all_reduce(done)  # returns once every process has come this far
        dist.destroy_process_group()


def sum_across(tensors: dict[str, torch.Tensor], world: World) -> None:
    """Add up each tensor over all processes, in place."""
    if world.size > 1:
        for t in tensors.values():
            _all_reduce(t)


def _all_reduce(t: torch.Tensor, patience: float = 10.0) -> None:
    """``dist.all_reduce(t)``; with Gloo, returning only once Gloo has let go of ``t``.

    Gloo's worker thread drops its reference to a finished collective's tensor a moment after the
    caller's wait returns, and dropping a reference to a tensor that Python made takes the GIL.
    Should the interpreter be shutting down by then, Python ends that thread inside a C++
    destructor and the process aborts (SIGABRT): a torchrun run that had saved everything would
    fail. So wait until the tensor is held as it was before.
    """
    held = _references(t)
    dist.all_reduce(t)
    if dist.get_backend() != "gloo":
        return
    deadline = time.monotonic() + patience
    while _references(t) > held and time.monotonic() < deadline:
        time.sleep(0.001)


def _references(t: torch.Tensor) -> int:
    """How many references hold ``t``: Python's, and any the C++ side keeps (missing from torch's stubs)."""
    return t._use_count()  # type: ignore[attr-defined]


def share(value: T, world: World) -> T:
    """Process 0's ``value`` (any picklable object), on every process."""
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
