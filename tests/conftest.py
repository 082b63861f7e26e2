"""Fixtures shared by several test files."""

from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")


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
