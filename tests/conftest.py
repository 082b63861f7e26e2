"""Fixtures shared by several test files."""

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")


def run(capsys, *argv) -> tuple[int, str, str]:
    """``resnetlab ARGV...`` in this process: its exit status, standard output and standard error."""
    from resnetlab.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def fails_cleanly(capsys, *argv, match: str) -> str:
    """``resnetlab ARGV...`` fails as the command line promises: status 2, one ``error:`` line with
    ``match`` in it, no traceback. Returns the line."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("error: ") and match in err, err
    return err


def with_files_limited_to(max_bytes: int, code: str, *args: object) -> str:
    """Run the Python ``code`` (``sys.argv[1:]`` are ``args``) in a process whose files cannot grow past
    ``max_bytes``, as on a disk that fills up: each write past it fails with a real OSError (EFBIG),
    from Python's writes and from libraries' own. Returns what it prints; a failure fails the test."""
    import subprocess
    import sys

    prelude = ("import resource, signal\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails, rather than the process ending\n"
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_bytes}, {max_bytes}))\n")
    done = subprocess.run([sys.executable, "-c", prelude + code, *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def fashion_mnist_here() -> bool:
    """Whether the Fashion-MNIST files are in Debian's folder or under $RESNETLAB_DATA (a GPU machine's copy)."""
    data = os.environ.get("RESNETLAB_DATA")
    folders = [FASHION] + ([Path(data), Path(data) / "fashion-mnist"] if data else [])
    return any((d / "t10k-images-idx3-ubyte.gz").exists() for d in folders)


def noise_photos(root: Path, classes: Sequence[str], per_class: int, shape: Callable[[int], tuple[int, int]],
                 seed: int = 0) -> Path:
    """A folder of random-pixel RGB PNGs, one subfolder per class; image ``i`` is ``shape(i)`` (height, width)."""
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (*shape(i), 3), dtype=torch.uint8, generator=g)
            Image.fromarray(pixels.numpy()).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished run of a few seconds (resnet8, 512 real Fashion-MNIST images), for tests that only read it."""
    if not FASHION.exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from resnetlab.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(model="resnet8", limit_train=512, limit_test=200, batch_size=64, steps=16, device="cpu",
                      out=str(out), progress=False))
    return out
