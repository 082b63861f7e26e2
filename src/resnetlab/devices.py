"""Where a job runs and how: the device a ``--device`` name asks for, the precision and memory
layout used there, and the seeds that make it repeatable.

Training, evaluation, prediction, serving and the benchmarks all pick their device here, so that
none of them has to import the trainer for it. torch is imported by the functions that use it, so
that the command line can check a ``--device`` name without loading it (``resnetlab --help`` answers at once).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_NAMES = "auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N (the N-th GPU) or mps"


def check_device_name(name: str) -> str:
    """``name`` if it names a device ``pick_device`` knows (one of ``DEVICES``, or ``cuda:N``), else ``ValueError``.

    Needs no torch, so that the command line can check ``--device`` before loading it.
    """
    kind, sep, index = name.partition(":")
    if kind not in DEVICES or (sep and not (kind == "cuda" and index.isascii() and index.isdigit())):  # not "cuda:²"
        raise ValueError(f"unknown device {name!r}; choose from {DEVICE_NAMES}")
    return name


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """The device a name (or a ``torch.device``) asks for; ``auto`` takes CUDA, then Apple's MPS, then the CPU.

    ``cuda:N`` also makes GPU N the process's current CUDA device, as the training step's CUDA graph needs.
    """
    import torch

    name = check_device_name(str(name))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for, but PyTorch sees no CUDA GPU here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for, but this PyTorch has no MPS device")
    device = torch.device(name)
    if device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ValueError(f"--device {name} was asked for, but this machine has {count} CUDA GPU{'s' * (count != 1)}, "
                             "numbered from 0")
        # Streams, CUDA graphs and tensors made without a device go to the current GPU: make it this one.
        torch.cuda.set_device(device)
    return device


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Within the block, every generator a run draws from seeded with ``seed``: Python's, NumPy's and
    torch's (on every device). On the way out the caller's states come back, so that a script's own
    draws (a random search's next learning rate) go on as if no run had been trained in between.

    The GPU's generator is put back when CUDA was in use before the block; otherwise there is nothing
    of the caller's to keep, and reading it would start CUDA on a machine that trains on the CPU.
    """
    import numpy as np
    import torch

    kept = random.getstate(), np.random.get_state(), torch.get_rng_state()
    gpu = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(kept[0])
        np.random.set_state(kept[1])
        torch.set_rng_state(kept[2])
        if gpu is not None:
            torch.cuda.set_rng_state(gpu)


@contextmanager
def kernel_choices(device: torch.device, deterministic: bool) -> Iterator[None]:
    """Within the block: deterministic kernels if ``deterministic``, else cuDNN's autotuner on a GPU.

    These are switches of the whole process, so they are put back as they were on the way out: a script
    that trains a run and then goes on computing keeps the settings it had.
    """
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    if deterministic:
        # cuBLAS is only deterministic with a fixed workspace, set before its first use. Operations with no
        # deterministic kernel (a few CUDA backward passes) warn rather than stop the run.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    changed = deterministic or device.type == "cuda"
    try:
        yield
    finally:
        # Only what was set is put back: a Ctrl-C can land inside one of torch's lazy imports, and touching
        # torch again here could then raise an error of its own in place of the interrupt.
        if changed:
            enabled, warn_only, torch.backends.cudnn.benchmark, workspace = before
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
            if workspace is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
            else:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


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


def environment(device: torch.device) -> dict:
    """What a run's numbers depend on beyond its settings: the libraries, and the machine's arithmetic.

    On a CPU the thread count and the vector instructions decide how each sum is split and ordered, so
    a run repeats bit for bit only where both are the same (on a GPU, the GPU and its libraries).
    """
    import platform

    import numpy
    import PIL
    import torch
    import torchvision

    env = {
        "device": device.type, "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": numpy.__version__, "pillow": PIL.__version__, "platform": platform.platform(),
        "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    revision = source_revision()
    if revision:
        env["resnetlab_revision"] = revision
    return env


def source_revision() -> str | None:
    """The git commit this package runs from, ``+changes`` if its files differ from it, when it runs
    from a git checkout (an editable install, whose version number stays the same from commit to
    commit); None for an installed package, or where git is missing or slow."""
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent
    try:
        # Tracked by the repository around it: a package installed into a virtual environment that sits
        # inside some other checkout is not that checkout's code.
        tracked = subprocess.run(["git", "-C", str(here), "ls-files", "--error-unmatch", "--", "__init__.py"],
                                 capture_output=True, timeout=5)
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if tracked.returncode != 0 or commit.returncode != 0:
            return None
        # Without git's optional index lock, which would make a commit made meanwhile fail.
        changed = subprocess.run(["git", "--no-optional-locks", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                                 capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit.stdout.strip() + ("+changes" if changed.returncode != 0 or changed.stdout.strip() else "")


def arithmetic_change(before: dict, now: dict) -> dict[str, tuple]:
    """What changed between two ``environment``s that decides a run's sums, as {key: (before, now)}:
    empty when a run resumed in ``now`` repeats, bit for bit, the steps it would have taken in ``before``."""
    if before.get("device") != now.get("device"):
        keys: tuple[str, ...] = ("device",)
    elif now.get("device") == "cuda":  # a GPU's sums do not depend on the CPU beside it
        keys = ("gpu", "cuda", "cudnn", "torch")
    else:
        keys = ("cpu", "threads", "torch")
    return {key: (before.get(key), now.get(key)) for key in keys if before.get(key) != now.get(key)}
