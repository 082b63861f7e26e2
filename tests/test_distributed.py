"""Several processes (torchrun): batches split without overlap, gradients averaged, one run directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import noise_photos

from resnetlab import distributed, runs
from resnetlab.loader import DeviceLoader
from resnetlab.models import create_model
from resnetlab.recipes import get_recipe
from resnetlab.steps import build_train_step, make_optimizer

FASHION = Path("/usr/share/datasets/fashion-mnist")
RECIPE = get_recipe("fast", label_smoothing=0.1)


def fake_data(n: int = 256):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 12, 12), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def loader(rank: int = 0, world: int = 1) -> DeviceLoader:
    images, labels = fake_data()
    return DeviceLoader(images, labels, 32, [0.5], [0.25], train=True, pad_crop=2, flip=True, seed=5, rank=rank, world=world)


def test_each_process_gets_its_own_slice_of_every_batch():
    whole = list(loader().epoch(1))
    parts = [list(loader(rank, 2).epoch(1)) for rank in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 8
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
        assert x0.shape[0] == x1.shape[0] == 16
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)


@pytest.mark.parametrize("crop", [{"scale_crop": (0.08, 1.0)}, {"scale_jitter": (20, 30)}], ids=["scale-crop", "jitter"])
def test_crops_from_files_are_the_same_whichever_process_cuts_them(tmp_path, crop):
    """Each process decodes only its slice of a folder batch, and cuts exactly the crops one process would."""
    from resnetlab.data import get_dataset
    from resnetlab.loader import make_loader

    noise_photos(tmp_path, ("a", "b"), 8, lambda i: (24 + 4 * i, 40))
    folder = get_dataset(f"folder:{tmp_path}", "train", image_size=16, val_fraction=0.0)
    pca = {"eigval": [0.05, 0.01, 0.001], "eigvec": torch.eye(3).tolist()}

    def batches(rank: int = 0, world: int = 1):
        return list(make_loader(folder, 8, [0.5] * 3, [0.25] * 3, torch.device("cpu"), train=True, workers=0, flip=True,
                                seed=2, lighting=0.1, colour_pca=pca, rank=rank, world=world, **crop).epoch(1))

    whole, parts = batches(), [batches(rank, 2) for rank in (0, 1)]
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)


def test_one_named_gpu_is_refused_under_torchrun_rather_than_ignored():
    world = distributed.World(rank=1, size=2, local_rank=1)
    with pytest.raises(ValueError, match="under torchrun each process takes the GPU of its LOCAL_RANK: give --device cuda"):
        distributed.setup(world, torch.device("cuda", 0))  # refused before any GPU or process group is touched

def test_the_batch_must_split_evenly_over_the_processes():
    images, labels = fake_data()
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        DeviceLoader(images, labels, 32, [0.5], [0.25], train=True, rank=0, world=3)


def _train_three_steps(rank: int, folder: str) -> None:
    """One of two processes: three steps through the trainer's step, then its weights to a file."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = create_model("resnet8", in_chans=1)
    step = build_train_step(model, RECIPE, torch.device("cpu"), processes=2)
    for i, (x, y) in zip(range(3), loader(rank, 2).epoch(0)):
        step(x, y, 0.05 * (i + 1))
    torch.save({k: v.detach() for k, v in model.named_parameters()}, f"{folder}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_take_the_step_of_one_process_with_their_gradients_averaged(tmp_path):
    mp.spawn(_train_three_steps, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    # The same three steps in one process: each half batch through the net on its own (batch norm
    # sees what one process sees), the two losses averaged, as DistributedDataParallel averages gradients.
    torch.manual_seed(0)
    model = create_model("resnet8", in_chans=1)
    optimizer = make_optimizer(RECIPE, model, torch.device("cpu"))
    for i, (x, y) in zip(range(3), loader().epoch(0)):
        for group in optimizer.param_groups:
            group["lr"] = 0.05 * (i + 1)
        optimizer.zero_grad()
        halves = [F.cross_entropy(model(x[r::2]), y[r::2], label_smoothing=0.1) for r in (0, 1)]
        (sum(halves) / 2).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"processes disagree on {name}"
        assert torch.allclose(ranks[0][name], p.detach(), atol=1e-5, rtol=1e-4), name
    assert not torch.equal(ranks[0]["fc.weight"], create_model("resnet8", in_chans=1).fc.weight)  # it did train


def _sum_many_times(rank: int, folder: str) -> None:
    """One of two processes: fifty sums, each checked to be released by Gloo when sum_across returns."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    world = distributed.World(rank=rank, size=2, local_rank=rank)
    for i in range(50):
        sums = {"loss": torch.full((1,), float(rank)), "correct": torch.full((3,), i + rank)}
        distributed.sum_across(sums, world)
        assert sums["loss"].item() == 1 and sums["correct"].tolist() == [2 * i + 1] * 3
        # Held by Gloo's thread still, the last reference would be dropped there, under the GIL; at
        # interpreter exit that aborts the process (SIGABRT), after a run had saved everything.
        assert [t._use_count() for t in sums.values()] == [1, 1], f"sum {i}: Gloo still holds the tensors"
    distributed.teardown(world)


def test_sums_across_processes_are_let_go_of_before_they_return(tmp_path):
    mp.spawn(_sum_many_times, args=(str(tmp_path),), nprocs=2)


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_torchrun_trains_one_run_written_by_process_zero(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "resnetlab",
           "train", "--model", "resnet8", "--limit-train", "1024", "--limit-test", "1000", "--batch-size", "64",
           "--epochs", "2", "--device", "cpu", "--out", str(out), "--no-progress"]
    # A process that aborts (SIGABRT) prints its Python stacks first, so that a rare failure explains itself.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    # Both ends of stderr: a process's own last words come first, torchrun's summary of the failure last.
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-1500:]
    assert done.stdout.count("run directory:") == 1  # printed by process 0 only
    config = runs.read_config(out)
    assert config["processes"] == 2
    rows = runs.read_metrics(out)
    assert [r["step"] for r in rows] == [16, 32]  # 1,024 images in global batches of 64
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert rows[1]["test_acc"] > 0.4
    model, _ = runs.load_model(out)  # the weights process 0 wrote load back
    assert model.fc.out_features == 10


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as_process(rank: int, port: int, out: str, stop_at: int | None, resume_it: bool) -> None:
    """One of two processes of a torchrun-like launch: train (maybe stopping early) or resume."""
    import os

    from resnetlab.train import Interrupted, TrainConfig, resume, train

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        if resume_it:
            resume(out, device="cpu", progress=False)
        else:
            train(TrainConfig(model="resnet8", limit_train=512, limit_test=200, batch_size=64, steps=20, recipe="he2016",
                              device="cpu", out=out, progress=False, seed=3), stop_at=stop_at)
    except Interrupted:
        pass
    # As the command line leaves: a barrier first, so that no process tears its connections down while
    # another is still evaluating or writing (Gloo then aborted the slower one).
    distributed.teardown(distributed.world_from_env())


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_two_processes_stopped_mid_epoch_resume_to_the_same_run(tmp_path):
    from resnetlab.train import Interrupted, resume

    assert str(Interrupted(Path("r"), 11, 2)).endswith("continue with: torchrun --nproc-per-node=2 -m resnetlab train --resume r")
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    for out, stop_at, resume_it in ((straight, None, False), (stopped, 11, False), (stopped, None, True)):
        mp.spawn(_run_as_process, args=(_free_port(), out, stop_at, resume_it), nprocs=2)
        if stop_at:
            assert runs.load_checkpoint(Path(out))["step"] == 11  # mid-epoch: 8 steps an epoch
            # One process would take each step on twice the images: another run than the one stopped.
            with pytest.raises(runs.RunError, match="trained by 2 processes, and resuming with 1 would change the run; "
                                                    "continue with: torchrun --nproc-per-node=2 -m resnetlab train --resume"):
                resume(out, device="cpu", progress=False)
    a, b = (runs.read_metrics(d) for d in (straight, stopped))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [8, 16, 20]
    for ra, rb in zip(a, b):  # the stopped epoch's sums came through the checkpoint, from both processes
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)
        assert rb["train_acc"] == pytest.approx(ra["train_acc"])
    wa, wb = (runs.load_model(d)[0].state_dict() for d in (straight, stopped))
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k
