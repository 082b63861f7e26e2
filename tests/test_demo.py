"""``resnetlab demo``: its steps at a tiny scale, and its mistakes refused before minutes of training."""

from pathlib import Path

import numpy as np
import pytest
from conftest import fashion_mnist_here

import resnetlab.demo
from resnetlab.cli import main


def test_an_out_that_is_a_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resnetlab.demo, "DEMO", {**resnetlab.demo.DEMO, "limit_train": 64, "steps": 1, "epochs": None})
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert main(["demo", "--out", str(taken)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and "--out" in err and err.count("\n") == 1, (out, err)
    assert taken.read_text() == "mine"


@pytest.mark.skipif(not fashion_mnist_here(), reason="the Fashion-MNIST files are not here")
def test_the_demo_runs_every_step_and_every_file_it_names_exists(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resnetlab.demo, "DEMO", {**resnetlab.demo.DEMO, "limit_train": 128, "epochs": 1})
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    (run_dir,) = tmp_path.iterdir()
    assert "128 images, 1 epoch, cpu" in out
    listed = out.split("Where everything is:")[1].split("\n\n")[0]
    for line in listed.strip().splitlines():
        for path in line.split(None, 2)[-1].split(", "):
            assert Path(path).exists(), path
    # Each sample is a test image, named by its true class, so that predict's answers can be read against it.
    from PIL import Image

    from resnetlab.data import get_dataset

    test = get_dataset("fashion-mnist", split="test")
    names = [f"{i}-{test.classes[int(test.labels[i])].replace('/', '-').replace(' ', '-')}.png" for i in range(8)]
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == sorted(names)
    assert names[0] == "0-Ankle-boot.png"
    for i, name in enumerate(names):
        with Image.open(run_dir / "samples" / name) as image:
            assert np.array_equal(np.asarray(image), test.images[i, 0].numpy()), name
    assert f"resnetlab predict {run_dir} {run_dir / 'samples'}" in out  # a next step that works as printed
