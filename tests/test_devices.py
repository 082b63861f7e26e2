"""Device choices that a CPU machine can check: what layout and precision each device gets, and which GPU
a process of a multi-GPU run takes (CUDA calls stood in for)."""

import warnings
from contextlib import nullcontext

import torch

from resnetlab import distributed
from resnetlab.devices import autocast_for, uses_channels_last


def test_channels_last_where_the_convolutions_run_it_natively():
    assert uses_channels_last(torch.device("cuda")) and uses_channels_last(torch.device("cpu"))
    assert not uses_channels_last(torch.device("mps"))  # MPS gains nothing from it


def test_bf16_autocast_only_on_gpus_with_bf16_tensor_cores(monkeypatch):
    """Ampere (8.0) and later; a V100 (7.0) would run bf16 slower than fp32. The CPU trains in fp32."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert isinstance(autocast_for(cuda), nullcontext)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": this machine has none, the check is of the choice
        chosen = autocast_for(cuda)
    assert isinstance(chosen, torch.autocast) and chosen.fast_dtype == torch.bfloat16
    assert isinstance(autocast_for(torch.device("cpu")), nullcontext)


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    """The sixth of eight processes, the second on its machine, takes cuda:1: its global rank names no GPU here."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    assert distributed.setup(distributed.World(5, 8, 1), torch.device("cuda")) == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]
