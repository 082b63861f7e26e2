"""The downloaders against the real files: the published checksums accept the real bytes, the files
land where the readers look, and published weights are fetched from torchvision's own URLs."""

import hashlib
import io
import struct
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision

from resnetlab import data, pretrained
from resnetlab.data import get_dataset

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
# Debian ships the official deflate streams under a gzip header without the file name and with
# its own mtime; the official files' headers named the file and carried these mtimes (2017-08-31).
OFFICIAL_MTIMES = {"train": 1504176606, "t10k": 1504176627}


def official_fashion_file(name: str) -> bytes:
    """The file the official Fashion-MNIST mirror serves, rebuilt from Debian's copy."""
    debian = (DEBIAN_FASHION / name).read_bytes()
    mtime = struct.pack("<I", OFFICIAL_MTIMES[name.split("-")[0]])
    return b"\x1f\x8b\x08\x08" + mtime + debian[8:10] + name.removesuffix(".gz").encode() + b"\0" + debian[10:]


class Response(io.BytesIO):
    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body))}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No user cache, $RESNETLAB_DATA or system dataset is seen."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)
    monkeypatch.setattr(data, "_SYSTEM_DIRS", {})


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_the_official_fashion_mnist_files_download_with_the_published_checksums(tmp_path, monkeypatch):
    (base,), sums = data._DOWNLOADS["fashion-mnist"]
    served = {base + name: official_fashion_file(name) for name in sums}
    # torchvision's MD5s of the same four files: the rebuilt bytes are the published ones.
    md5 = {name: hashlib.md5(served[base + name]).hexdigest() for name in sums}
    assert md5 == dict(torchvision.datasets.FashionMNIST.resources)
    fetched = []

    def urlopen(url, timeout=None):
        fetched.append(url)
        return Response(served[url])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    train = get_dataset("fashion-mnist", "train", root=tmp_path / "data")
    test = get_dataset("fashion-mnist", "test", root=tmp_path / "data")
    assert sorted(fetched) == sorted(served)  # each file once, from the official mirror
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"


def test_the_download_tables_name_the_files_the_readers_read():
    idx = {f"{p}-{kind}-idx{n}-ubyte.gz" for p in ("train", "t10k") for kind, n in (("images", 3), ("labels", 1))}
    assert set(data._DOWNLOADS["mnist"][1]) == set(data._DOWNLOADS["fashion-mnist"][1]) == idx
    assert [f for f, *_ in torchvision.datasets.MNIST.resources] == [f for f, *_ in torchvision.datasets.FashionMNIST.resources]
    assert set(data._DOWNLOADS["mnist"][0]) == set(torchvision.datasets.MNIST.mirrors)  # both (0.22 put ossci first)
    assert list(data._DOWNLOADS["fashion-mnist"][0]) == torchvision.datasets.FashionMNIST.mirrors
    # The archives' SHA-256 as Keras publishes them (file_hash in keras.datasets.cifar10 and cifar100).
    published = {"cifar10": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                 "cifar100": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"}
    for name, dataset in (("cifar10", torchvision.datasets.CIFAR10), ("cifar100", torchvision.datasets.CIFAR100)):
        (base,), sums = data._DOWNLOADS[name]
        fmt = data._CIFAR_FORMATS[name][0]
        assert base + fmt.archive == dataset.url and fmt.folder == dataset.base_folder
        assert sums == {fmt.archive: published[name]}


@pytest.mark.parametrize("model", pretrained.TORCHVISION_MODELS)
def test_published_weights_come_from_torchvisions_url_with_its_hash_and_cache_file(model, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    asked = []

    def download(url, dst, hash_prefix=None, progress=True):
        asked.append((url, hash_prefix))
        Path(dst).write_bytes(b"stand-in")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    for weights in torchvision.models.get_model_weights(model):
        path = pretrained.fetch_published(model, weights.name, progress=False)
        file = weights.url.rsplit("/", 1)[1]
        # torchvision's load_state_dict_from_url: <hub>/checkpoints/<file>, SHA-256 prefix from the name.
        assert path == tmp_path / "hub" / "checkpoints" / file
        assert asked[-1] == (weights.url, file.split("-")[-1].split(".")[0])
        assert weights.url.startswith("https://download.pytorch.org/models/") and len(asked[-1][1]) == 8
