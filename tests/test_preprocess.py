"""A trained model's preprocessing as a transform for the user's own pipelines (``predict.Preprocess``)."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from resnetlab.evaluate import evaluate_run
from resnetlab.predict import Preprocess, predict_images
from resnetlab.runs import load_model


def test_a_torchvision_image_folder_with_the_runs_transform_scores_as_eval(trained_run, tmp_path):
    """torchvision's ImageFolder (which opens every image as RGB) with ``Preprocess`` as its transform
    gives the accuracy `resnetlab eval` gives on the same folder of real Fashion-MNIST PNGs."""
    from resnetlab.data import export_folder
    from resnetlab.data import load_split

    test = load_split("fashion-mnist", "test", None, limit=120, seed=0)
    photos = export_folder({"val": test}, tmp_path / "fm") / "val"  # class folders 0-T-shirt-top, 1-Trouser, ...

    model, config = load_model(trained_run)
    folder = torchvision.datasets.ImageFolder(str(photos), transform=Preprocess(config))
    assert len(folder) == 120 and folder.classes[0] == "0-T-shirt-top"  # sorted as the run's classes
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(folder, batch_size=50):
            assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
            correct += (model(x).argmax(1) == y).sum().item()

    report = evaluate_run(trained_run, dataset=f"folder:{photos}", device="cpu")
    assert report.result.accuracy == pytest.approx(correct / len(folder), abs=1e-9)
    assert report.result.count == 120  # every image of a folder that is not the run's own
    assert 0.2 < correct / len(folder) < 1.0  # a model that learned something, on images it did not see


def test_the_transform_feeds_the_model_what_predict_does_and_leaves_the_image_as_it_was(trained_run, tmp_path):
    """A sideways phone photo (EXIF orientation 6) and a transparent PNG, given as PIL images."""
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(tmp_path / "sideways.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 256, (33, 47, 4), dtype=np.uint8), "RGBA").save(tmp_path / "clear.png")

    model, config = load_model(trained_run)
    preprocess = Preprocess(config)
    for name in ("sideways.jpg", "clear.png"):
        image = Image.open(tmp_path / name)
        size, mode = image.size, image.mode
        with torch.no_grad():
            probs = model(preprocess(image)[None]).softmax(1)[0]
        assert image.size == size and image.mode == mode  # the caller's image is not turned or converted
        assert torch.equal(preprocess(image), preprocess(tmp_path / name))
        [pred] = predict_images(model, config, [tmp_path / name], top_k=3)
        top = probs.topk(3)
        assert pred.classes == [config["classes"][i] for i in top.indices.tolist()]
        np.testing.assert_allclose(pred.probabilities, top.values.tolist(), rtol=1e-5)
    assert "1 channels, resize to 28x28" in repr(preprocess)


def test_predicting_and_evaluating_views_leave_a_training_model_training(trained_run, tmp_path):
    """As ``evaluate`` does: a model evaluated mid-training goes on with batch statistics afterwards."""
    from resnetlab.data import get_dataset
    from resnetlab.evaluate import evaluate_views

    for c in ("a", "b"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 40 if c == "a" else 200, np.uint8)).save(tmp_path / "photos" / c / "0.png")
    model, config = load_model(trained_run)
    model.train()
    predict_images(model, config, [tmp_path / "photos" / "a" / "0.png"])
    assert model.training
    folder = get_dataset(f"folder:{tmp_path / 'photos'}", "train", image_size=28, val_fraction=0.0)
    result = evaluate_views(model, folder, config["mean"], config["std"], 10, "scales", scales=[28], workers=0)
    assert result.count == 2 and model.training
