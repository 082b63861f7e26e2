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
    [expected] = predict_images(model, config, [tmp_path / "photos" / "a" / "0.png"])
    model.train()
    [pred] = predict_images(model, config, [tmp_path / "photos" / "a" / "0.png"])
    assert model.training
    # ...and its answer was the evaluated model's (the running statistics, not one image's own).
    assert pred.classes == expected.classes and np.allclose(pred.probabilities, expected.probabilities, rtol=1e-5)
    folder = get_dataset(f"folder:{tmp_path / 'photos'}", "train", image_size=28, val_fraction=0.0)
    result = evaluate_views(model, folder, config["mean"], config["std"], 10, "scales", scales=[28], workers=0)
    assert result.count == 2 and model.training


@pytest.fixture
def png(tmp_path):
    """A small grey PNG, as Fashion-MNIST's images are."""
    path = tmp_path / "shoe.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    return path


def _photo(path, size=(480, 360)):
    """A JPEG photo far larger than the run's 28x28 input: libjpeg could decode it at 1/8 scale."""
    rng = np.random.default_rng(5)
    smooth = Image.fromarray(rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)).resize(size)
    smooth.save(path, quality=90)
    return path


def test_a_large_jpeg_file_gives_one_tensor_however_given_and_it_is_what_predict_feeds(trained_run, tmp_path):
    """One tensor for the file however it is given, and that tensor is what ``predict_images`` classifies.
    Its decoded PIL image cannot be decoded at reduced scale, as the file is (and training on folders
    decodes it): it differs, by a few levels of 255."""
    photo = _photo(tmp_path / "photo.jpg")
    model, config = load_model(trained_run)
    preprocess = Preprocess(config)
    expected = preprocess(photo)
    assert torch.equal(preprocess(str(photo)), expected)
    with open(photo, "rb") as file:
        assert torch.equal(preprocess(file), expected)
    decoded = preprocess(Image.open(photo).convert("RGB"))
    levels = ((decoded - expected).abs() * torch.tensor(config["std"]).view(-1, 1, 1) * 255).max().item()
    assert 0 < levels < 12

    with torch.no_grad():
        probs = model(expected[None]).softmax(1)[0]
    [pred] = predict_images(model, config, [photo], top_k=len(config["classes"]))
    ranked = probs.sort(descending=True)
    assert pred.classes == [config["classes"][i] for i in ranked.indices.tolist()]
    np.testing.assert_allclose(pred.probabilities, ranked.values.tolist(), rtol=1e-6)


def test_tensors_give_what_the_pil_image_of_their_pixels_gives(trained_run, tmp_path):
    """As torchvision's ``weights.transforms()``: a uint8 (C, H, W) tensor, or a float one in [0, 1]."""
    from torchvision.transforms.functional import pil_to_tensor

    model, config = load_model(trained_run)
    preprocess = Preprocess(config)
    rng = np.random.default_rng(7)
    for mode, shape in (("RGB", (37, 50, 3)), ("L", (37, 50))):
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
        expected = preprocess(image)
        pixels = pil_to_tensor(image)
        assert torch.equal(preprocess(pixels), expected)
        assert torch.equal(preprocess(pixels.float() / 255), expected)
        # Floats a pipeline normalised and put back (ImageNet's red channel statistics) are off by float
        # rounding, 254.99997 for 255: they still name the bytes they came from.
        undone = (pixels.float() / 255 - 0.485) / 0.229 * 0.229 + 0.485
        assert not torch.equal((undone * 255).to(torch.uint8), pixels)  # truncation would lose a level here and there
        assert torch.equal(preprocess(undone.clamp(0, 1)), expected)
        assert torch.equal(pixels, pil_to_tensor(image))  # the caller's tensor is left as it was
    assert preprocess(pixels).shape == (1, 28, 28)

    with pytest.raises(TypeError, match=r"Image\.fromarray.*torch\.from_numpy"):
        preprocess(np.asarray(image))  # (H, W) or (H, W, C)? Pillow's and torch's layouts differ: the caller says
    with pytest.raises(ValueError, match=r"\[0, 1\].*-2\.1"):
        preprocess(torch.linspace(-2.1, 2.0, 3 * 8 * 8).reshape(3, 8, 8))  # already normalised
    with pytest.raises(ValueError, match=r"\(C, H, W\).*\(2, 3, 8, 8\)"):
        preprocess(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"1 or 3 channels.*5"):
        preprocess(torch.zeros(5, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"not 64: this one looks channels-last \(H, W, C\).*permute\(2, 0, 1\)"):
        preprocess(torch.zeros(64, 64, 3, dtype=torch.uint8))  # as Keras holds a SIGNS image
    with pytest.raises(TypeError, match=r"uint8.*int64"):
        preprocess(torch.zeros(3, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="PIL image, an image file"):
        preprocess(42)


def test_predict_images_refuses_names_that_do_not_match_the_images(trained_run, png):
    model, config = load_model(trained_run)
    paths = [png] * 3
    with pytest.raises(ValueError, match=r"names: 1 given for 3 images"):
        predict_images(model, config, paths, names=["a"])
    assert [p.path for p in predict_images(model, config, paths, names=["a", "b", "c"])] == ["a", "b", "c"]


def test_one_path_or_open_file_is_one_image(trained_run, png):
    """Not a sequence of characters, each taken for a file name."""
    model, config = load_model(trained_run)
    [expected] = predict_images(model, config, [png])
    for single in (png, str(png)):
        assert predict_images(model, config, single) == [expected]
    with open(png, "rb") as file:
        [pred] = predict_images(model, config, file, names=["upload"])
    assert (pred.classes, pred.probabilities) == (expected.classes, expected.probabilities)


def test_a_folder_given_as_an_image_is_called_a_folder(trained_run, tmp_path):
    from resnetlab.data import DataError

    model, config = load_model(trained_run)
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError, match=r"photos is a folder.*image_files"):
        predict_images(model, config, [tmp_path / "photos"])
    with pytest.raises(DataError, match=r"photos is a folder"):
        Preprocess(config)(tmp_path / "photos")


def test_top_k_below_one_is_refused_and_above_the_classes_gives_them_all(trained_run, png):
    model, config = load_model(trained_run)
    for k in (0, -1):
        with pytest.raises(ValueError, match=f"top_k must be at least 1, not {k}"):
            predict_images(model, config, [png], top_k=k)
    [pred] = predict_images(model, config, [png], top_k=100)
    assert sorted(pred.classes) == sorted(config["classes"])
    assert sum(pred.probabilities) == pytest.approx(1, abs=1e-5)


def test_unreadable_images_are_passed_over_in_their_place_when_asked(trained_run, tmp_path):
    """``on_unreadable``: each unreadable file's error goes to it, in order, at batch edges too and with
    views decoded by workers, and every other image gets the answer it gets alone."""
    from resnetlab.data import DataError, load_split
    from resnetlab.predict import iter_predictions

    model, config = load_model(trained_run)
    test = load_split("fashion-mnist", "test", None, limit=20, seed=0)
    paths, bad = [], {0, 7, 8, 19}
    for i, image in enumerate(test.images):
        paths.append(tmp_path / f"{i:02d}.png")
        if i in bad:
            paths[-1].write_bytes(b"not a PNG")
        else:
            Image.fromarray(image[0].numpy()).save(paths[-1])
    errors = []
    answers = list(iter_predictions(model, config, paths, 3, "cpu", views="scales", batch_size=8, workers=2,
                                    on_unreadable=errors.append))
    good = [p for i, p in enumerate(paths) if i not in bad]
    assert [a.path for a in answers] == [str(p) for p in good]
    assert [str(e).split(" ", 1)[0] for e in errors] == [str(paths[i]) for i in sorted(bad)]
    alone = iter_predictions(model, config, good, 3, "cpu", views="scales", batch_size=8, workers=0)
    for a, b in zip(answers, alone, strict=True):
        assert a.classes == b.classes and a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    # Without it, the first unreadable file stops the answers, after those before it.
    stopped = iter_predictions(model, config, paths[1:], 3, "cpu", batch_size=8, workers=0)
    assert [next(stopped).path for _ in range(6)] == [str(p) for p in paths[1:7]]
    with pytest.raises(DataError, match="07.png is not a readable image"):
        next(stopped)


def test_decoded_images_are_predicted_as_their_files_are(trained_run, png):
    """A notebook holds PIL images and tensors: each is answered as its file is, and named "image N"."""
    from torchvision.transforms.functional import pil_to_tensor

    model, config = load_model(trained_run)
    [expected] = predict_images(model, config, [png])
    image = Image.open(png)
    pixels = pil_to_tensor(image)
    answers = predict_images(model, config, [image, image.copy(), pixels, png])
    assert [a.path for a in answers] == [str(png), "image 2", "image 3", str(png)]  # an opened image: its file's name
    for one in (image, pixels):  # alone, not taken for a sequence of rows
        answers += predict_images(model, config, one)
    assert len(answers) == 6
    for answer in answers:  # in a batch of 4 or 1: the same to float rounding
        assert answer.classes == expected.classes
        np.testing.assert_allclose(answer.probabilities, expected.probabilities, rtol=1e-5)
    batch = torch.stack([pixels, pixels])  # (N, C, H, W): N images
    assert len(predict_images(model, config, batch)) == 2
    with pytest.raises(TypeError, match=r"PIL images or \(C, H, W\) tensors, not ndarray: Image.fromarray"):
        predict_images(model, config, np.asarray(image))


def test_many_open_files_are_predicted_where_workers_are_spawned(trained_run, png):
    """On macOS and Windows worker processes are spawned, and an open file cannot be sent to one: more
    files than a batch, which would go to workers, are decoded in the calling process instead."""
    import subprocess
    import sys

    script = ("import multiprocessing, sys\n"
              "from resnetlab.predict import iter_predictions\n"
              "from resnetlab.runs import load_model\n"
              "if __name__ == '__main__':\n"
              "    multiprocessing.set_start_method('spawn')\n"
              "    model, config = load_model(sys.argv[1])\n"
              "    files = [open(sys.argv[2], 'rb') for _ in range(70)]\n"
              "    print(len(list(iter_predictions(model, config, files, batch_size=64))))\n")
    done = subprocess.run([sys.executable, "-c", script, str(trained_run), str(png)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout == "70\n", done.stderr
