"""Test-time views (He et al. 2015, Section 3.4): 10-crop testing and multi-scale fully-convolutional scores."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from resnetlab import runs
from resnetlab.cli import main
from resnetlab.data import get_dataset
from resnetlab.evaluate import evaluate_run
from resnetlab.loader import normalize
from resnetlab.train import TrainConfig, train


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run of the imagenet recipe on a folder of photos of mixed proportions (held out: 2 a class)."""
    root = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(4)
    for c in ("ant", "bee", "cow"):
        (root / "photos" / c).mkdir(parents=True)
        for i in range(20):
            h, w = (30, 47) if i % 2 else (52, 33)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "photos" / c / f"{i}.png")
    result = train(TrainConfig(model="resnet8", dataset=f"folder:{root / 'photos'}", recipe="imagenet", image_size=24,
                               batch_size=8, steps=6, workers=0, device="cpu", out=str(root / "run"), progress=False))
    return result.run_dir


def expected(run_dir, views) -> tuple[float, float]:
    """Loss and accuracy written out by hand with torchvision's transforms: softmax averaged over each image's views."""
    model, config = runs.load_model(run_dir)
    losses, hits = [], []
    for path, label in get_dataset(config["dataset"], "test", seed=config["seed"]).samples:
        image = T.PILToTensor()(Image.open(path).convert("RGB"))
        crops = torch.stack(views(image, config))
        with torch.no_grad():
            probs = model.eval()(normalize(crops, config["mean"], config["std"])).softmax(1).mean(0)
        losses.append(-probs[label].log().item())
        hits.append(probs.argmax().item() == label)
    return float(np.mean(losses)), float(np.mean(hits))


def test_ten_crop_testing_averages_torchvisions_ten_crops(folder_run):
    config = runs.read_config(folder_run)
    assert config["resize_size"] == 27  # 24 / 0.875
    report = evaluate_run(folder_run, device="cpu", views="ten-crop")
    loss, accuracy = expected(folder_run, lambda image, c: T.TenCrop(c["image_size"])(T.Resize(c["resize_size"])(image)))
    assert report.result.count == 6
    assert report.result.loss == pytest.approx(loss, rel=1e-5)
    assert report.result.accuracy == pytest.approx(accuracy)
    assert json.loads((folder_run / "eval.json").read_text())["views"] == "10-crop testing"


def test_multi_scale_testing_averages_whole_images_at_each_scale_and_their_mirrors(folder_run):
    report = evaluate_run(folder_run, device="cpu", views="scales", scales=(24, 40))

    def whole_images(image, _):
        resized = [T.Resize(s)(image) for s in (24, 40)]
        return [v for r in resized for v in (r, r.flip(-1))]

    # Views of different sizes cannot share a batch: average them one at a time.
    model, config = runs.load_model(folder_run)
    losses = []
    for path, label in get_dataset(config["dataset"], "test", seed=config["seed"]).samples:
        views = whole_images(T.PILToTensor()(Image.open(path).convert("RGB")), config)
        with torch.no_grad():
            probs = torch.stack([model.eval()(normalize(v[None], config["mean"], config["std"]))[0].softmax(0) for v in views])
        losses.append(-probs.mean(0)[label].log().item())
    assert views[0].shape[1:] in ((24, 37), (37, 24))  # whole images, proportions kept
    assert report.result.loss == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_views_are_refused_where_they_cannot_be_cut(folder_run, tmp_path, capsys):
    squashed = tmp_path / "squashed"
    config = runs.read_config(folder_run)
    train(TrainConfig(model="resnet8", dataset=config["dataset"], image_size=24, batch_size=8, steps=1, workers=0,
                      device="cpu", out=str(squashed), progress=False))
    assert runs.read_config(squashed)["resize_size"] is None  # the fast recipe squashes: no larger image to crop from
    assert main(["eval", str(squashed), "--ten-crop", "--device", "cpu"]) == 2
    assert "ten-crop testing cuts crops from an image resized larger" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):  # one kind of views at a time (argparse's own message)
        main(["eval", str(folder_run), "--ten-crop", "--scales", "--device", "cpu"])
    assert "not allowed with argument --ten-crop" in capsys.readouterr().err
    assert main(["eval", str(folder_run), "--scales", "0", "--device", "cpu"]) == 2
    assert "--scales are image sides from 1 to 8,192 pixels, not 0" in capsys.readouterr().err
    assert main(["eval", str(folder_run), "--scales", "32", "100000", "--device", "cpu"]) == 2
    assert "--scales are image sides from 1 to 8,192 pixels, not 100000" in capsys.readouterr().err


def test_eval_cli_prints_how_scores_were_averaged(folder_run, capsys):
    assert main(["eval", str(folder_run), "--scales", "24", "32", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "(6 test images, scores averaged over shorter sides 24, 32 and their mirror images)" in printed
    # --scales alone: the paper's 224-640 for 224-pixel inputs, in proportion for this 24-pixel run.
    assert main(["eval", str(folder_run), "--scales", "--device", "cpu", "--out", str(folder_run / "scaled")]) == 0
    assert "shorter sides 24, 27, 41, 51, 69 and their mirror images" in capsys.readouterr().out


def test_a_papers_imagenet_net_is_evaluated_beside_the_papers_numbers(tmp_path, capsys):
    """A 1000-class resnet34 run tested with 10 crops prints the 2015 paper's Table 3 row; other views, none."""
    rng = np.random.default_rng(5)
    for i in range(1000):
        (tmp_path / "photos" / f"n{i:08d}").mkdir(parents=True)
        for k in range(2):  # one for training, one held out
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"n{i:08d}" / f"{k}.png")
    run = tmp_path / "run"
    train(TrainConfig(model="resnet34", dataset=f"folder:{tmp_path / 'photos'}", recipe="imagenet", image_size=16,
                      batch_size=4, steps=1, limit_train=8, limit_test=2, workers=0, device="cpu", out=str(run),
                      progress=False))
    assert main(["eval", str(run), "--ten-crop", "--limit-test", "2", "--device", "cpu"]) == 0
    assert ("the 2015 paper reports 24.52% top-1 and 7.46% top-5 error for its resnet34 tested this way on ImageNet's "
            "validation set (Table 3)") in capsys.readouterr().out
    assert json.loads((run / "eval.json").read_text())["reference"].startswith("the 2015 paper reports 24.52%")
    assert main(["eval", str(run), "--scales", "16", "24", "--limit-test", "2", "--device", "cpu"]) == 0
    assert "the 2015 paper reports" not in capsys.readouterr().out  # Table 4 used the paper's five scales


def test_predict_averages_the_same_views_as_eval(folder_run, capsys):
    """predict --ten-crop on the held-out files gives the probabilities eval's 10-crop testing averaged."""
    from resnetlab.predict import predict_images

    model, config = runs.load_model(folder_run)
    held_out = get_dataset(config["dataset"], "test", seed=config["seed"]).samples
    answers = predict_images(model, config, [p for p, _ in held_out], top_k=3, views="ten-crop")
    for (path, label), answer in zip(held_out, answers, strict=True):
        image = T.PILToTensor()(Image.open(path).convert("RGB"))
        crops = torch.stack(T.TenCrop(config["image_size"])(T.Resize(config["resize_size"])(image)))
        with torch.no_grad():
            probs = model.eval()(normalize(crops, config["mean"], config["std"])).softmax(1).mean(0)
        assert answer.probabilities == pytest.approx(sorted(probs.tolist(), reverse=True), rel=1e-5)
    assert main(["predict", str(folder_run), str(held_out[0][0]), "--scales", "24", "32", "--device", "cpu"]) == 0
    after = capsys.readouterr().out
    assert after.startswith(f"{held_out[0][0]}: ")
    # The images may follow --scales, as they may follow any flag: what is not a side is an image.
    assert main(["predict", str(folder_run), "--scales", "24", "32", str(held_out[0][0]), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == after
    assert main(["predict", str(folder_run), "--device", "cpu", "--scales", str(held_out[0][0])]) == 0
    assert capsys.readouterr().out.startswith(f"{held_out[0][0]}: ")
    with pytest.raises(SystemExit):
        main(["eval", str(folder_run), "--scales", "24", "big"])
    assert "resnetlab eval" in (err := capsys.readouterr().err) and "expected image sides in pixels, got 'big'" in err
    for side in ("-5", "nan", "2.5"):  # a mistyped side on predict is no image's name ("-5 does not exist" before)
        with pytest.raises(SystemExit):
            main(["predict", str(folder_run), str(held_out[0][0]), "--scales", side])
        assert f"expected image sides in pixels, got '{side}'" in capsys.readouterr().err


def test_the_prediction_page_averages_the_views_it_was_started_with(folder_run):
    import threading
    import urllib.request

    from resnetlab.predict import predict_images
    from resnetlab.serve import PredictionServer

    server = PredictionServer(folder_run, port=0, top_k=3, views="ten-crop")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert "then seen as ten 24x24 crops (the corners, the centre, and their mirror images), the scores of these " \
               "views averaged" in server.page()
        model, config = runs.load_model(folder_run)
        path = get_dataset(config["dataset"], "test", seed=config["seed"]).samples[0][0]
        with urllib.request.urlopen(urllib.request.Request(server.url + "predict", data=path.read_bytes())) as reply:
            answer = json.loads(reply.read())
    finally:
        server.shutdown()
        server.server_close()
    (expected,) = predict_images(model, config, [path], top_k=3, views="ten-crop")
    (single,) = predict_images(model, config, [path], top_k=3)
    assert [p["probability"] for p in answer["predictions"]] == pytest.approx(expected.probabilities, rel=1e-5)
    assert expected.probabilities != pytest.approx(single.probabilities, rel=1e-5)  # the views changed the answer
