"""Starting weights: torchvision's published files (fetched, cached, hash-checked), weights files, fine-tuning."""

import hashlib
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file

import resnetlab
from resnetlab import pretrained
from resnetlab.cli import main
from resnetlab.pretrained import WeightsError

FASHION = Path("/usr/share/datasets/fashion-mnist")
# The file torchvision's resnet18 IMAGENET1K_V1 weights are cached under (its URL's last part).
RESNET18_FILE = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch.hub cache, so no test touches (or depends on) the user's."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture
def published(hub, monkeypatch) -> torchvision.models.ResNet:
    """torchvision's resnet18 with seeded random weights, saved where its published weights are cached.

    Real published weights cannot be downloaded here; these stand in for them, in the same file format.
    """
    torch.manual_seed(7)  # not the trainer's seed, so a fresh initialisation cannot pass for these weights
    reference = torchvision.models.resnet18().eval()
    with torch.no_grad():  # BN statistics other than 0 and 1, so that loading them is checked too
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    hub.mkdir(parents=True)
    torch.save(reference.state_dict(), hub / RESNET18_FILE)
    # A stand-in cannot have the published file's SHA-256, which a cached file is checked against
    # (test_a_cached_file_is_checked_as_a_download_is).
    monkeypatch.setattr(pretrained, "_check_digest", lambda *args: None)
    return reference


def test_published_weights_give_torchvision_outputs(published):
    model = resnetlab.create_model("resnet18", weights="IMAGENET1K_V1").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), published(x), rtol=0, atol=1e-5)


def test_pretrained_true_means_the_default_weights(published):
    # resnet18 has one set of published weights, so DEFAULT is IMAGENET1K_V1, the file the fixture wrote.
    assert pretrained.pretrained_info("resnet18", "DEFAULT").tag == "IMAGENET1K_V1"
    model = resnetlab.create_model("resnet18", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), published(x), rtol=0, atol=1e-5)


def test_weights_saved_before_batch_norms_counted_their_batches_load(published, hub):
    """torchvision's first ResNet files predate BN's num_batches_tracked (PyTorch 0.4.1); its own loading
    starts the counters at zero, and so does resnetlab's."""
    state = {k: v for k, v in published.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, hub / RESNET18_FILE)
    model = resnetlab.create_model("resnet18", weights="IMAGENET1K_V1", progress=False).eval()  # torchvision's argument
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), published(x), rtol=0, atol=1e-5)
    assert int(model.bn1.num_batches_tracked) == 0


def test_weights_are_asked_of_a_cifar_depth_by_name():
    with pytest.raises(WeightsError, match="torchvision publishes no weights for resnet74"):
        resnetlab.create_model("resnet74", pretrained=True)  # built on the fly, not "unknown"


def test_default_tag_names_the_current_weights():
    info = pretrained.pretrained_info("resnet50", "DEFAULT")
    assert info.tag == "IMAGENET1K_V2" and len(info.categories) == 1000
    assert (info.resize_size, info.crop_size) == (232, 224)
    assert info.mean == [0.485, 0.456, 0.406] and info.std == [0.229, 0.224, 0.225]


def test_other_classes_and_one_channel_keep_what_fits(published):
    model = resnetlab.create_model("resnet18", num_classes=10, in_chans=1, weights="IMAGENET1K_V1").eval()
    assert model.fc.out_features == 10
    # A grey image is a colour image with three equal channels: summed conv1 filters see it the same way.
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(grey), published_features(published, grey.expand(-1, 3, -1, -1)),
                                   rtol=1e-4, atol=1e-5)


def published_features(net: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """torchvision's resnet up to its last feature map (before pooling)."""
    return torch.nn.Sequential(*list(net.children())[:-2])(x)


def test_download_checks_the_hash_and_fills_the_cache(hub, tmp_path, monkeypatch):
    payload = tmp_path / "served.pth"
    torch.save(torchvision.models.resnet18().state_dict(), payload)
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    for name, good in ((f"resnet18-{digest[:8]}.pth", True), (f"resnet18-{'0' * 8}.pth", False)):
        served = tmp_path / "server" / name
        served.parent.mkdir(exist_ok=True)
        served.write_bytes(payload.read_bytes())
        fake = SimpleNamespace(url=served.as_uri(), name="IMAGENET1K_V1")
        monkeypatch.setattr(pretrained, "_published", lambda model_name, tag: fake)
        if good:
            path = pretrained.fetch_published("resnet18", "IMAGENET1K_V1", progress=False)
            assert path == hub / name and path.read_bytes() == payload.read_bytes()
        else:
            with pytest.raises(WeightsError, match="damaged or changed"):
                pretrained.fetch_published("resnet18", "IMAGENET1K_V1", progress=False)
    assert sorted(p.name for p in hub.iterdir()) == [f"resnet18-{digest[:8]}.pth"]  # no partial file left behind


def test_processes_fetching_the_same_weights_at_once_each_get_the_file(hub, tmp_path, monkeypatch):
    """torchrun starts one process per GPU and each builds the model: with an empty cache they all
    download at once, into the same folder, and none may fail because another moved its file."""
    payload = tmp_path / "served.pth"
    torch.save(torchvision.models.resnet18().state_dict(), payload)
    name = f"resnet18-{hashlib.sha256(payload.read_bytes()).hexdigest()[:8]}.pth"
    fake = SimpleNamespace(url=f"https://example.invalid/{name}", name="IMAGENET1K_V1")
    monkeypatch.setattr(pretrained, "_published", lambda model_name, tag: fake)
    others = ["rank 1"]

    def download(url, dst, hash_prefix=None, progress=True):
        Path(dst).write_bytes(payload.read_bytes())
        if others:  # another process runs its whole fetch while this one's download is still unchecked
            others.pop()
            pretrained.fetch_published("resnet18", "IMAGENET1K_V1", progress=False)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    path = pretrained.fetch_published("resnet18", "IMAGENET1K_V1", progress=False)
    assert path == hub / name and path.read_bytes() == payload.read_bytes()
    assert sorted(p.name for p in hub.iterdir()) == [name]  # no partial file left behind


def test_a_cached_file_is_checked_as_a_download_is(hub):
    """A file put in the cache by hand under the published name, but not the published file (here:
    random weights), is refused with the way out; the published file's digest passes."""
    hub.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), hub / RESNET18_FILE)
    with pytest.raises(WeightsError, match=r"is not the file published at https://download.pytorch.org/.*"
                                           r"SHA256 is .*, not f37072fd.*delete it to download it again"):
        resnetlab.create_model("resnet18", weights="IMAGENET1K_V1")
    digest = hashlib.sha256((hub / RESNET18_FILE).read_bytes()).hexdigest()
    pretrained._check_digest(hub / RESNET18_FILE, "url", digest[:8], None)  # its own digest: accepted
    with pytest.raises(WeightsError, match="MD5"):
        pretrained._check_digest(hub / RESNET18_FILE, "url", None, "0" * 32)


def test_unreachable_download_says_where_to_put_the_file(hub, monkeypatch):
    fake = SimpleNamespace(url=(hub.parent / "nowhere" / RESNET18_FILE).as_uri(), name="IMAGENET1K_V1")
    monkeypatch.setattr(pretrained, "_published", lambda model_name, tag: fake)
    with pytest.raises(WeightsError, match=f"put it at {hub / RESNET18_FILE}"):
        resnetlab.create_model("resnet18", weights="IMAGENET1K_V1")


@pytest.mark.parametrize(
    "name, weights, kwargs, match",
    [
        ("resnet20", "DEFAULT", {}, "publishes no weights for resnet20"),
        ("resnet18", "IMAGENET1K_V9", {}, "choose one of DEFAULT, IMAGENET1K_V1"),
        ("resnet50", "IMAGENET1K_V2", {"stride_in_1x1": True}, "stride on the 3x3"),
    ],
)
def test_unusable_tags_are_refused(hub, name, weights, kwargs, match):
    with pytest.raises(WeightsError, match=match):
        resnetlab.create_model(name, weights=weights, **kwargs)


def test_weights_files_of_every_kind(tmp_path):
    torch.manual_seed(1)
    source = resnetlab.create_model("resnet20", num_classes=10, in_chans=1).eval()
    state = source.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")  # DistributedDataParallel's keys
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.ckpt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "lightning.ckpt")  # a module's `model`
    torch.save({"model_name": "resnet20", "model": state, "step": 8}, tmp_path / "checkpoint.pt")  # a resnetlab run's
    x = torch.randn(2, 1, 28, 28)
    for file in ("w.safetensors", "ddp.pth", "wrapped.ckpt", "lightning.ckpt", "checkpoint.pt"):
        model = resnetlab.create_model("resnet20", num_classes=10, in_chans=1, weights=str(tmp_path / file)).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_a_runs_weights_say_how_their_net_computes_and_are_refused_by_a_net_that_computes_otherwise(tmp_path):
    """A paper-layout ResNet-50's weights have torchvision's shapes: they loaded into torchvision's layout without
    a word and answered differently. A run's model.safetensors records the layout; loading checks it."""
    from safetensors import safe_open

    from resnetlab.runs import save_weights

    paper = resnetlab.create_model("resnet50", stride_in_1x1=True, num_classes=4)
    save_weights(paper, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["resnetlab.layout"]) == {"mixing": "add", "order": "post", "stride_in_1x1": True}
    same = resnetlab.create_model("resnet50", stride_in_1x1=True, num_classes=4, weights=str(tmp_path / "model.safetensors"))
    assert torch.equal(same.layer2[0].conv1.weight, paper.layer2[0].conv1.weight)
    with pytest.raises(WeightsError, match=r"built with stride_in_1x1=True, which compute otherwise in resnet50 as built "
                                           r"here: build it the same way \(create_model\('resnet50', stride_in_1x1=True"):
        resnetlab.create_model("resnet50", num_classes=4, weights=str(tmp_path / "model.safetensors"))
    save_weights(resnetlab.create_model("resnet20"), tmp_path)
    with pytest.raises(WeightsError, match=r"built with order='post'"):
        resnetlab.create_model("resnet20", order="bn_after_add", weights=str(tmp_path / "model.safetensors"))
    # A file without the record (saved elsewhere, or by an older resnetlab) loads as before.
    save_file(paper.state_dict(), tmp_path / "plain.safetensors")
    resnetlab.create_model("resnet50", num_classes=4, weights=str(tmp_path / "plain.safetensors"))


def test_a_weights_files_classifier_comes_with_it_unless_another_is_asked_for(tmp_path):
    """A file's trained head is kept when num_classes is not given (torchvision would fail to load it into
    1000 classes; dropping it silently would lose the training); Path and torchvision's enums name weights."""
    torch.manual_seed(2)
    trained = resnetlab.create_model("resnet20", num_classes=7).eval()
    torch.save(trained.state_dict(), tmp_path / "c7.pth")
    model = resnetlab.create_model("resnet20", weights=tmp_path / "c7.pth").eval()  # a Path
    x = torch.randn(2, 3, 32, 32)
    assert model.num_classes == 7
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)
    assert resnetlab.create_model("resnet20", num_classes=3, weights=str(tmp_path / "c7.pth")).fc.out_features == 3
    with pytest.raises(WeightsError, match="ResNet18_Weights.IMAGENET1K_V1 are torchvision's weights of another model, not resnet50"):
        resnetlab.create_model("resnet50", weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    with pytest.raises(WeightsError, match="a tag such as 'DEFAULT' or a file's path, not ''"):
        resnetlab.create_model("resnet20", weights="")


def test_torchvisions_weights_enum_names_the_published_weights(published):
    model = resnetlab.create_model("resnet18", weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), published(x), rtol=0, atol=1e-5)


def test_bad_weights_files_are_refused_without_running_them(tmp_path):
    torch.save(resnetlab.create_model("resnet20").state_dict(), tmp_path / "r20.pth")
    with pytest.raises(WeightsError, match="does not hold resnet32 weights"):
        resnetlab.create_model("resnet32", weights=str(tmp_path / "r20.pth"))
    torch.save(resnetlab.create_model("resnet20", num_classes=100).state_dict(), tmp_path / "r20c100.pth")
    model = resnetlab.create_model("resnet20", num_classes=10, weights=str(tmp_path / "r20c100.pth"))
    assert model.fc.out_features == 10  # another task's head is left out, the rest loads
    torch.save(resnetlab.create_model("resnet20", in_chans=1).state_dict(), tmp_path / "grey.pth")
    with pytest.raises(WeightsError, match=r"conv1.weight is \(16, 1, 3, 3\) there, \(16, 3, 3, 3\) here "
                                           r"\(build it with in_chans=1\)"):
        resnetlab.create_model("resnet20", weights=str(tmp_path / "grey.pth"))
    assert resnetlab.create_model("resnet20", in_chans=1, weights=str(tmp_path / "grey.pth")).conv1.in_channels == 1
    with pytest.raises(WeightsError, match=r"conv1.weight is \(16, 3, 3, 3\) there, \(32, 3, 3, 3\) here$"):
        resnetlab.create_model("resnet20", widths=(32, 64, 128), weights=str(tmp_path / "r20.pth"))

    marker = tmp_path / "ran"
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(Exploit(str(marker))))
    with pytest.raises(WeightsError, match=r"holds Python objects besides tensors, which resnetlab does not load") as err:
        resnetlab.create_model("resnet20", weights=str(tmp_path / "evil.pth"))
    assert "\n" not in str(err.value) and "weights_only set to False" not in str(err.value)  # no advice to run it
    assert not marker.exists()
    with pytest.raises(WeightsError, match="does not exist"):
        resnetlab.create_model("resnet20", weights=str(tmp_path / "missing.safetensors"))
    # A download that failed is no unsafe pickle: it is no weights file at all.
    (tmp_path / "page.pth").write_text("<!DOCTYPE html><title>404</title>")
    with pytest.raises(WeightsError, match=r"page.pth is not a weights file .* starts with b'<!DOCTYP'; is it a download that failed"):
        resnetlab.create_model("resnet20", weights=str(tmp_path / "page.pth"))
    # Read by what they hold, not by their names: safetensors bytes as .bin, prefixes of torch.compile(DDP(model)).
    reference = resnetlab.create_model("resnet20")
    save_file(reference.state_dict(), tmp_path / "weights.bin")
    wrapped = {f"_orig_mod.module.{k}": v for k, v in reference.state_dict().items()}
    torch.save(wrapped, tmp_path / "compiled-ddp.pth")
    for name in ("weights.bin", "compiled-ddp.pth"):
        loaded = resnetlab.create_model("resnet20", weights=str(tmp_path / name))
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))


class Exploit:
    """A pickle that would create a file when unpickled by an unrestricted loader."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_predict_with_published_weights_matches_torchvision(published, tmp_path, capsys):
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (180, 260, 3), dtype=np.uint8)).save(photo)
    from resnetlab.predict import predict_images
    from resnetlab.pretrained import load_published

    model, config = load_published("resnet18:IMAGENET1K_V1")
    [pred] = predict_images(model, config, [photo], top_k=5)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    x = weights.transforms()(torchvision.transforms.functional.pil_to_tensor(Image.open(photo)))[None]
    with torch.no_grad():
        probs = published(x).softmax(1)[0]
    top = probs.topk(5)
    assert pred.classes == [weights.meta["categories"][i] for i in top.indices.tolist()]
    np.testing.assert_allclose(pred.probabilities, top.values.tolist(), rtol=1e-4)

    assert main(["predict", "--pretrained", "resnet18:IMAGENET1K_V1", str(photo), str(photo), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{photo}: {pred.ranked()}"] * 2


def test_predict_without_images_or_with_unknown_weights_fails_cleanly(hub, tmp_path, capsys):
    assert main(["predict", str(tmp_path)]) == 2
    assert "no images given" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")  # images are checked first, before any download
    assert main(["predict", "--pretrained", "plain18", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: torchvision publishes no weights for plain18") and err.count("\n") == 1
    assert main(["predict", "--pretrained", "nosuch", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.startswith("error: unknown model 'nosuch'")
    assert main(["predict", "--pretrained", "resnet18", str(tmp_path / "missing.png")]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err  # not a download first
    assert main(["serve"]) == 2
    assert "give a run directory or --pretrained" in capsys.readouterr().err
    assert main(["predict", "--pretrained", "resnet18", str(tmp_path / "x.png"), "--top-k", "0"]) == 2
    assert "--top-k must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fine_tuning_starts_from_the_published_weights(published, tmp_path, capsys):
    out = tmp_path / "run"
    # A tiny lr barely moves the weights, so the run's convolutions must still be the published ones
    # (conv1 summed to grey); a fresh initialisation would differ by tenths.
    code = main(["train", "--model", "resnet18", "--weights", "IMAGENET1K_V1", "--limit-train", "128", "--limit-test", "64",
                 "--batch-size", "64", "--steps", "2", "--lr", "1e-7", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["weights"] == "IMAGENET1K_V1"
    np.testing.assert_allclose(config["mean"], [np.mean([0.485, 0.456, 0.406])])
    np.testing.assert_allclose(config["std"], [np.mean([0.229, 0.224, 0.225])])
    trained = load_file(out / "model.safetensors")
    reference = published.state_dict()
    torch.testing.assert_close(trained["conv1.weight"], reference["conv1.weight"].sum(1, keepdim=True), rtol=0, atol=1e-4)
    for key, value in reference.items():
        if key.endswith(".weight") and value.ndim == 4 and key != "conv1.weight":
            torch.testing.assert_close(trained[key], value, rtol=0, atol=1e-4, msg=key)
    assert trained["fc.weight"].shape == (10, 512)


def test_serve_published_weights_answers_as_predict_does(published, tmp_path):
    import threading
    import urllib.request

    from resnetlab.predict import predict_images
    from resnetlab.pretrained import load_published
    from resnetlab.serve import PredictionServer

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(photo)
    server = PredictionServer(None, port=0, top_k=5, pretrained="resnet18:IMAGENET1K_V1")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(server.url) as reply:
            page = reply.read().decode()
        with urllib.request.urlopen(server.url + "info") as reply:
            info = json.loads(reply.read())
        with urllib.request.urlopen(urllib.request.Request(server.url + "predict", data=photo.read_bytes())) as reply:
            answer = json.loads(reply.read())
    finally:
        server.shutdown()
        server.server_close()
    assert "tench" in page and "and 980 more" in page and "centre-cropped to 224x224" in page
    assert (info["image_size"], info["resize_size"], len(info["classes"])) == (224, 256, 1000)
    [pred] = predict_images(*load_published("resnet18:IMAGENET1K_V1"), [photo], top_k=5)
    assert [p["class"] for p in answer["predictions"]] == pred.classes
    np.testing.assert_allclose([p["probability"] for p in answer["predictions"]], pred.probabilities, rtol=1e-5)


@pytest.fixture
def imagenet_val(tmp_path) -> Path:
    """The 1000 class folders, named so that they sort in class order, one image each (tests evaluate a few)."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "val"
    for i in range(1000):
        (folder / f"n{i:08d}").mkdir(parents=True)
        size = (260, 190) if i % 2 else (170, 240)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"n{i:08d}" / "a.png")
    return folder


def drawn_classes(confusion: list[list[int]]) -> list[int]:
    """The classes whose image --limit-test drew: with one image a class, the rows holding a prediction."""
    return [i for i, row in enumerate(confusion) if sum(row) == 1]


def test_eval_published_weights_on_an_imagenet_folder_as_torchvision_measures(published, imagenet_val, tmp_path, capsys):
    folder = imagenet_val
    out = tmp_path / "report"
    code = main(["eval", "--pretrained", "resnet18:IMAGENET1K_V1", "--dataset", f"folder:{folder}", "--limit-test", "12",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "resnet18:IMAGENET1K_V1 on" in printed and "(12 test images, one view: shorter side to 256, centre 224x224 crop)" in printed
    assert "torchvision publishes 69.76% top-1 for these weights" in printed
    report = json.loads((out / "eval.json").read_text())
    assert report["views"] == "one view: shorter side to 256, centre 224x224 crop"
    confusion = report["confusion_matrix"]
    drawn = drawn_classes(confusion)
    assert len(drawn) == 12 and drawn != list(range(12))  # spread over the classes, not the first twelve
    predicted = [confusion[i].index(1) for i in drawn]

    preprocess = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    images = [preprocess(torchvision.transforms.functional.pil_to_tensor(Image.open(folder / f"n{i:08d}" / "a.png")))
              for i in drawn]
    with torch.no_grad():
        assert predicted == published(torch.stack(images)).argmax(1).tolist()


def test_ten_crop_testing_of_published_weights_averages_torchvisions_ten_crops(published, imagenet_val, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["eval", "--pretrained", "resnet18", "--dataset", f"folder:{imagenet_val}", "--limit-test", "3",
                 "--ten-crop", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "(one centre crop)" in capsys.readouterr().out  # the published number is not a 10-crop one
    report = json.loads((out / "eval.json").read_text())
    assert report["views"] == "10-crop testing" and report["examples"] == 3

    views = torchvision.transforms.Compose([torchvision.transforms.Resize(256), torchvision.transforms.TenCrop(224)])
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    losses = []
    for i in drawn_classes(report["confusion_matrix"]):
        image = torchvision.transforms.functional.pil_to_tensor(Image.open(imagenet_val / f"n{i:08d}" / "a.png"))
        crops = torch.stack(views(image)).float() / 255
        with torch.no_grad():
            probs = published((crops - mean) / std).softmax(1).mean(0)
        losses.append(-probs[i].log().item())
    assert report["loss"] == pytest.approx(np.mean(losses), rel=1e-4)


def test_eval_published_weights_needs_the_thousand_classes(hub, tmp_path, capsys, monkeypatch):
    photos = tmp_path / "photos"
    for c in ("cat", "dog"):
        (photos / c).mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(photos / c / "a.png")
    fetched = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, *args, **kwargs: fetched.append(url))
    assert main(["eval", "--pretrained", "resnet18", "--dataset", f"folder:{photos}", "--device", "cpu"]) == 2
    assert "has 2 class folders" in capsys.readouterr().err
    assert fetched == []  # refused before 45 MB of weights were fetched for nothing
    assert main(["eval", "--pretrained", "resnet18", "--device", "cpu"]) == 2
    assert "--pretrained needs --dataset imagenet, or folder:PATH" in capsys.readouterr().err


def test_the_transform_of_published_weights_is_torchvisions(published, tmp_path):
    """``Preprocess`` of published weights gives what torchvision's ``weights.transforms()`` gives."""
    from resnetlab.predict import Preprocess
    from resnetlab.pretrained import load_published

    photo = Image.fromarray(np.random.default_rng(5).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    _, config = load_published("resnet18:IMAGENET1K_V1")
    ours = Preprocess(config)(photo)
    theirs = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()(torchvision.transforms.functional.pil_to_tensor(photo))
    assert ours.shape == (3, 224, 224)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_timm_builds_the_input_resnetlab_feeds_published_weights_and_runs(published, trained_run, tmp_path):
    """timm's ``resolve_model_data_config(model)`` + ``create_transform`` read ``model.pretrained_cfg``;
    without it they would resize bicubically to 248 before the crop (timm's defaults)."""
    timm_data = pytest.importorskip("timm.data")
    from resnetlab.predict import Preprocess
    from resnetlab.pretrained import load_published
    from resnetlab.runs import load_model

    photo = Image.fromarray(np.random.default_rng(6).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    for model, config in (load_published("resnet18:IMAGENET1K_V1"), load_model(trained_run)):
        timm_config = timm_data.resolve_model_data_config(model)
        timms = timm_data.create_transform(**timm_config)(photo.convert("L" if config["channels"] == 1 else "RGB"))
        # timm resizes the 8-bit image and rounds; resnetlab resizes floats as torchvision does: one grey level apart.
        one_level = 1 / 255 / min(config["std"])
        torch.testing.assert_close(timms, Preprocess(config)(photo), rtol=0, atol=1.001 * one_level)
    assert load_model(trained_run)[0].pretrained_cfg["input_size"] == (1, 28, 28)
    model = resnetlab.create_model("resnet18", weights="IMAGENET1K_V1", num_classes=10, in_chans=1)
    assert model.pretrained_cfg["num_classes"] == 10 and model.pretrained_cfg["input_size"] == (1, 224, 224)
    imagenet_mean = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms().mean
    assert model.pretrained_cfg["mean"] == pytest.approx([sum(imagenet_mean) / 3])  # conv1 was summed over colours
    assert not hasattr(resnetlab.create_model("resnet18"), "pretrained_cfg"), "no weights, no preprocessing to state"
