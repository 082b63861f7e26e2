"""Where a job runs and how: the device a ``--device`` name asks for, the precision and memory
layout used there, and the seeds that make it repeatable.

Training, evaluation, prediction, serving and the benchmarks all pick their device here, so that
none of them has to import the trainer for it. torch is imported by the functions that use it, so
that the command line can offer ``DEVICES`` without loading it (``resnetlab --help`` answers at once).
"""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """The device a name asks for; ``auto`` takes CUDA, then Apple's MPS, then the CPU."""
    import torch

    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for, but this PyTorch has no MPS device")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every generator the run touches; optionally insist on deterministic kernels."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS is only deterministic with a fixed workspace, set before its first use. Operations with no
        # deterministic kernel (a few CUDA backward passes) warn rather than stop the run.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def uses_channels_last(device: torch.device) -> bool:
    """Whether training and evaluation lay images and weights out channels-last (NHWC) on ``device``.

    cuDNN's tensor-core convolutions and oneDNN's CPU ones run NHWC natively (resnet20 is 15% faster
    so on two CPU cores); MPS gains nothing from it.
    """
    return device.type in ("cuda", "cpu")


def autocast_for(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA GPUs with bf16 tensor cores (no loss scaling needed); full precision elsewhere.

    GPUs before Ampere (V100, T4) lack bf16 tensor cores: there bf16 would be slower than fp32, not faster.
    """
    import torch

    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        # No cast cache: CUDA graph capture requires it off, and each weight is cast once per pass anyway.
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()
