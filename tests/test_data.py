"""Dataset readers: every format built here on disk, byte for byte, then read back exactly."""

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from resnetlab import data
from resnetlab.data import ArrayDataset, DataError, FolderDataset, get_dataset, load_image, load_jitter_crop, load_random_crop, load_split, load_splits

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
SYSTEM_DIRS = dict(data._SYSTEM_DIRS)  # before the fixture below hides them
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's cache, $RESNETLAB_DATA, the system datasets, or the network."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)
    monkeypatch.setattr(data, "_SYSTEM_DIRS", {})

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


# ----------------------------------------------------------------------------- writers of the real formats


def write_idx(path: Path, array: np.ndarray, gz: bool = False, code: int = 0x08) -> Path:
    """IDX as LeCun specifies it: 0, 0, the type code (0x08: uint8), ndim, big-endian sizes, then the
    values (``array`` in the big-endian type of ``code``)."""
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist(folder: Path, split: str = "train", n: int = 12, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, n, dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
    return images, labels


class Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle wrote CIFAR's: strings as STRING opcodes, numpy.core names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_py2_string

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{obj.__name__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj, path: Path) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def cifar_arrays(n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    return RNG.integers(0, 256, (n, 3072), dtype=np.uint8), RNG.integers(0, classes, n)


def write_cifar10_py(folder: Path, n: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cifar-10-batches-py with five train batches of n and a test batch of n."""
    folder.mkdir(parents=True)
    train = [cifar_arrays(n, 10) for _ in range(5)]
    test = cifar_arrays(n, 10)
    for i, (pixels, labels) in enumerate(train, 1):
        batch = {b"batch_label": b"training batch %d of 5" % i, b"labels": labels.tolist(), b"data": pixels,
                 b"filenames": [b"img_%d.png" % j for j in range(n)]}  # fmt: skip
        py2_pickle(batch, folder / f"data_batch_{i}")
    py2_pickle({b"batch_label": b"testing batch 1 of 1", b"labels": test[1].tolist(), b"data": test[0]},
               folder / "test_batch")  # fmt: skip
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    py2_pickle({b"num_cases_per_batch": n, b"label_names": names, b"num_vis": 3072}, folder / "batches.meta")
    train_x = np.concatenate([p for p, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return train_x, train_y, test[0], test[1]


def write_cifar100_binary(folder: Path, n: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cifar-100-binary: records of coarse label, fine label, 3072 pixels."""
    folder.mkdir(parents=True)
    pixels, fine = cifar_arrays(n, 100)
    coarse = fine // 5
    records = np.concatenate([coarse[:, None], fine[:, None], pixels], axis=1).astype(np.uint8)
    (folder / "train.bin").write_bytes(records.tobytes())
    (folder / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)) + "\n")
    return pixels, fine, records


def make_tar(archive: Path, source: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    return archive


def save_image(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def write_signs(folder: Path, split: str = "train", n: int = 6, **arrays) -> Path:
    """A SIGNS file as the course's: uint8 (N, 64, 64, 3) images, class numbers, list_classes 0..5.
    ``arrays`` replace or add datasets by key; None leaves one out."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = {f"{split}_set_x": RNG.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
                f"{split}_set_y": np.arange(n) % 6, "list_classes": np.arange(6), **arrays}
    with h5py.File(folder / f"{split}_signs.h5", "w") as f:
        for key, value in contents.items():
            if value is not None:
                f[key] = value
    return folder / f"{split}_signs.h5"


# ----------------------------------------------------------------------------- MNIST-style IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_pixels_labels_and_classes(tmp_path, gz):
    images, labels = write_mnist(tmp_path, "test", gz=gz)
    ds = get_dataset("mnist", "test", root=tmp_path, download=False)
    assert isinstance(ds, ArrayDataset) and len(ds) == 12 and ds.name == "mnist"
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (12, 1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    assert ds.classes == [str(d) for d in range(10)]


def test_fashion_classes_and_root_name_subfolder(tmp_path):
    write_mnist(tmp_path / "fashion-mnist")
    ds = get_dataset("fashion-mnist", root=tmp_path, download=False)
    # Label i is the i-th name of Zalando's README table: every prediction and confusion matrix reads them.
    assert ds.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.mark.parametrize("code, dtype", [(0x08, ">u1"), (0x09, ">i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")])
def test_every_idx_type_is_read_big_endian_as_the_format_says(tmp_path, code, dtype):
    """LeCun's format stores every multi-byte value most significant byte first, whatever the machine."""
    values = np.array([[0, 1, -2], [100, -100, 127]] if dtype != ">u1" else [[0, 1, 2], [100, 200, 255]])
    array = (values * (1.5 if dtype[1] == "f" else 1)).astype(dtype)
    got = data._read_idx(write_idx(tmp_path / "x.idx", array, code=code))
    assert got.tolist() == array.tolist() and got.dtype == np.dtype(dtype).newbyteorder("=")


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_names_the_file(tmp_path, gz):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())[:-100]
    if gz:
        path.write_bytes(gzip.compress(raw))
    else:
        path.unlink()
        path = tmp_path / "train-images-idx3-ubyte"
        path.write_bytes(raw)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        get_dataset("mnist", root=tmp_path, download=False)


def test_cut_gzip_stream_and_bad_magic(tmp_path):
    write_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-20])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*truncated or corrupt"):
        get_dataset("mnist", root=tmp_path, download=False)
    labels.write_bytes(gzip.compress(b"PK\x03\x04 a zip file"))
    with pytest.raises(DataError, match="not an IDX file"):
        get_dataset("mnist", root=tmp_path, download=False)


def test_idx_gzip_is_read_no_further_than_its_header_promises(tmp_path, monkeypatch):
    """A small .gz that inflates to far more than its header says is refused after reading one byte past it."""
    write_mnist(tmp_path)
    header = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 12)
    bomb = gzip.compress(header + bytes(12) + bytes(1 << 28), compresslevel=9)  # 256 KiB on disk
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(bomb)
    asked = []
    real_read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", 
                        lambda self, size=-1: asked.append((Path(self.name).name, size)) or real_read(self, size))
    with pytest.raises(DataError, match=r"holds 21\+ bytes but its header \[12\] promises 20; it is truncated or corrupt"):
        get_dataset("mnist", root=tmp_path, download=False)
    assert [size for name, size in asked if name.startswith("train-labels")] == [4, 4, 13], "the bomb was inflated"


def test_idx_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), gz=True)
    with pytest.raises(DataError, match="labels for the 12 images"):
        get_dataset("mnist", root=tmp_path, download=False)
    # IDX may hold floats; as labels they would be truncated to class 0 without a word.
    floats = bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 12) + np.full(12, 0.7, ">f4").tobytes()  # type 0x0D: float32
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(floats))
    with pytest.raises(DataError, match="holds float32 labels, not whole numbers"):
        get_dataset("mnist", root=tmp_path, download=False)


def test_search_order(tmp_path, monkeypatch):
    """root (--data-dir), then $RESNETLAB_DATA (DIR or DIR/<name>), then ~/.cache/resnetlab/<name>."""
    write_mnist(tmp_path / "home" / ".cache" / "resnetlab" / "mnist", n=3)
    assert len(get_dataset("mnist", download=False)) == 3
    write_mnist(tmp_path / "env" / "mnist", n=4)
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "env"))
    assert len(get_dataset("mnist", download=False)) == 4
    write_mnist(tmp_path / "given", n=5)
    assert len(get_dataset("mnist", root=tmp_path / "given", download=False)) == 5
    monkeypatch.setattr(data, "_SYSTEM_DIRS", {"mnist": (str(tmp_path / "system"),)})
    write_mnist(tmp_path / "system", n=6)
    assert len(get_dataset("mnist", download=False)) == 4, "$RESNETLAB_DATA comes before the system folder"
    monkeypatch.delenv("RESNETLAB_DATA")
    assert len(get_dataset("mnist", download=False)) == 6, "the system folder comes before the cache"


def test_a_data_dir_without_the_dataset_says_where_it_was_read_instead(tmp_path, monkeypatch, capsys):
    """A mistyped --data-dir must not train on the system's copy without a word."""
    monkeypatch.setattr(data, "_NOTED", set())
    monkeypatch.setattr(data, "_SYSTEM_DIRS", {"mnist": (str(tmp_path / "system"),)})
    write_mnist(tmp_path / "system", n=6)
    write_mnist(tmp_path / "system", "test", n=2)
    assert len(get_dataset("mnist", root=tmp_path / "dtaa", download=False)) == 6
    assert len(get_dataset("mnist", "test", root=tmp_path / "dtaa", download=False)) == 2
    err = capsys.readouterr().err
    assert err == f"note: mnist is not in --data-dir {tmp_path / 'dtaa'} (no such folder); reading the copy in {tmp_path / 'system'}\n"
    (tmp_path / "other").mkdir()
    get_dataset("mnist", root=tmp_path / "other", download=False)
    assert capsys.readouterr().err == f"note: mnist is not in --data-dir {tmp_path / 'other'}; reading the copy in {tmp_path / 'system'}\n"
    write_mnist(tmp_path / "given" / "mnist", n=5)
    assert len(get_dataset("mnist", root=tmp_path / "given", download=False)) == 5
    assert capsys.readouterr().err == "", "nothing to say when the data is where it was asked for"


def test_missing_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=r"not found \(looked in .*given.*\)") as err:
        get_dataset("fashion-mnist", root=tmp_path / "given", download=False)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)


# ----------------------------------------------------------------------------- downloads (network faked)


def test_offline_download_names_both_remedies(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        get_dataset("fashion-mnist")
    message = str(err.value)
    assert message.startswith("fashion-mnist: could not download train-images-idx3-ubyte.gz into ")
    assert ": http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz (" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert ("put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz in --data-dir") in message  # all four, the test split's too
    assert "--data-dir" in message and "$RESNETLAB_DATA" in message and "network" in message
    assert "\n" not in message
    # The folders a failed download made are gone again, a mistyped --data-dir's parents too; others stay.
    with pytest.raises(DataError, match="could not download"):
        get_dataset("mnist", root=tmp_path / "typo" / "deeper")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


class FakeResponse(io.BytesIO):
    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body))}


def test_download_checks_sha256_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(b"<html>captive portal"))
    with pytest.raises(DataError, match="SHA-256 is .* not the published"):
        get_dataset("mnist", root=tmp_path)
    assert list(tmp_path.iterdir()) == [], "no partial or unverified file, nor the empty folder made for it, may remain"


def test_download_verified_then_loaded(tmp_path, monkeypatch):
    images, labels = write_mnist(tmp_path / "server", "test")
    served = {p.name: p.read_bytes() for p in (tmp_path / "server").iterdir()}
    sums = {name: hashlib.sha256(body).hexdigest() for name, body in served.items()}
    monkeypatch.setitem(data._DOWNLOADS, "mnist", (("https://example.invalid/mnist/",), sums))
    fetched = []

    def serve(url, timeout=None):
        fetched.append(url)
        return FakeResponse(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    ds = get_dataset("mnist", "test")  # into ~/.cache/resnetlab/mnist
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images)) and ds.labels.tolist() == labels.tolist()
    assert sorted(p.name for p in (tmp_path / "home/.cache/resnetlab/mnist").iterdir()) == sorted(served)
    assert len(fetched) == 2
    get_dataset("mnist", "test")
    assert len(fetched) == 2, "a second load reads the cache"


def test_download_falls_back_to_the_next_mirror(tmp_path, monkeypatch):
    images, labels = write_mnist(tmp_path / "server", "test")
    served = {p.name: p.read_bytes() for p in (tmp_path / "server").iterdir()}
    sums = {name: hashlib.sha256(body).hexdigest() for name, body in served.items()}
    sums |= {"train-images-idx3-ubyte.gz": "0" * 64, "train-labels-idx1-ubyte.gz": "0" * 64}  # never served
    mirrors = ("https://first.invalid/mnist/", "http://second.invalid/mnist/")
    monkeypatch.setitem(data._DOWNLOADS, "mnist", (mirrors, sums))
    fetched = []

    def serve(url, timeout=None):
        fetched.append(url)
        if url.startswith(mirrors[0]):
            raise urllib.error.HTTPError(url, 403, "Forbidden", {}, None)
        return FakeResponse(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    ds = get_dataset("mnist", "test", root=tmp_path / "data")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert [u.split("/")[2] for u in fetched] == ["first.invalid", "second.invalid"] * 2  # each file: first, then second
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(served)

    # Both refuse: the message names each mirror's answer.
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: (_ for _ in ()).throw(
        urllib.error.HTTPError(url, 403 if "first" in url else 404, "no", {}, None)))
    with pytest.raises(DataError) as err:
        get_dataset("mnist", "train", root=tmp_path / "data")
    message = str(err.value)
    assert "https://first.invalid/mnist/train-images-idx3-ubyte.gz (HTTP Error 403: no)" in message
    assert "http://second.invalid/mnist/train-images-idx3-ubyte.gz (HTTP Error 404: no)" in message
    assert "downloaded from https://first.invalid/mnist/ or http://second.invalid/mnist/" in message


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_python_pickles_like_the_originals(tmp_path):
    train_x, train_y, test_x, test_y = write_cifar10_py(tmp_path / "cifar-10-batches-py")
    train = get_dataset("cifar10", root=tmp_path, download=False)
    test = get_dataset("cifar10", "test", root=tmp_path, download=False)
    assert train.images.shape == (20, 3, 32, 32) and len(test) == 4
    assert torch.equal(train.images, torch.from_numpy(train_x.reshape(-1, 3, 32, 32)))
    assert train.labels.tolist() == train_y.tolist() and test.labels.tolist() == test_y.tolist()
    assert torch.equal(test.images[1, 2], torch.from_numpy(test_x[1, 2048:].reshape(32, 32))), "channel 2 is blue"
    assert train.classes[:3] == ["airplane", "automobile", "bird"] and len(train.classes) == 10


def test_a_missing_cifar_batch_is_named_as_missing(tmp_path):
    write_cifar10_py(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py lacks data_batch_3: it is incomplete; extract cifar-10-python.tar.gz again"):
        get_dataset("cifar10", root=tmp_path, download=False)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit()}, protocol=4))
    with pytest.raises(DataError, match=r"test_batch is not a valid CIFAR python file .*system"):
        get_dataset("cifar10", "test", root=tmp_path, download=False)
    assert not marker.exists()


def test_cifar100_binary_fine_labels(tmp_path):
    pixels, fine, _ = write_cifar100_binary(tmp_path / "cifar100" / "cifar-100-binary")
    ds = get_dataset("cifar100", root=tmp_path, download=False)
    assert torch.equal(ds.images, torch.from_numpy(pixels.reshape(-1, 3, 32, 32)))
    assert ds.labels.tolist() == fine.tolist()
    assert ds.classes == [f"fine{i}" for i in range(100)]


def test_cifar10_binary_and_truncated_record(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)]:
        pixels, labels = cifar_arrays(3, 10)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], 1).astype(np.uint8).tobytes())
        expected.append(labels)
    (folder / "batches.meta.txt").write_text("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n")
    ds = get_dataset("cifar10", root=tmp_path, download=False)
    assert ds.labels.tolist() == np.concatenate(expected).tolist() and ds.classes[-1] == "truck"
    with open(folder / "data_batch_3.bin", "ab") as f:
        f.write(b"\x01" * 10)
    with pytest.raises(DataError, match="data_batch_3.bin holds 9229 bytes, not whole 3073-byte"):
        get_dataset("cifar10", root=tmp_path, download=False)


def test_cifar100_python_archive_is_downloaded_checked_unpacked_and_read(tmp_path, monkeypatch):
    """cifar-100-python.tar.gz as the CIFAR page serves it: train, test and meta pickled by Python 2,
    fine and coarse labels, and a stray file.txt~; the fine labels and their names are read."""
    folder = tmp_path / "build" / "cifar-100-python"
    folder.mkdir(parents=True)
    splits = {}
    for split, n in (("train", 6), ("test", 3)):
        pixels, fine = cifar_arrays(n, 100)
        splits[split] = pixels, fine
        py2_pickle({b"filenames": [b"apple_s_%06d.png" % i for i in range(n)], b"batch_label": b"%s batch" % split.encode(),
                    b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(), b"data": pixels},
                   folder / split)  # fmt: skip
    names = [b"apple", b"aquarium_fish"] + [b"fine%d" % i for i in range(2, 100)]
    py2_pickle({b"fine_label_names": names, b"coarse_label_names": [b"coarse%d" % i for i in range(20)]}, folder / "meta")
    (folder / "file.txt~").write_bytes(b"")
    archive = make_tar(tmp_path / "cifar-100-python.tar.gz", folder).read_bytes()
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    monkeypatch.setitem(data._DOWNLOADS, "cifar100", ((url.rsplit("/", 1)[0] + "/",), {
        "cifar-100-python.tar.gz": hashlib.sha256(archive).hexdigest()}))
    monkeypatch.setattr(urllib.request, "urlopen", lambda asked, timeout=None: FakeResponse({url: archive}[asked]))
    for split, (pixels, fine) in splits.items():
        ds = get_dataset("cifar100", split, root=tmp_path / "data")
        assert torch.equal(ds.images, torch.from_numpy(pixels.reshape(-1, 3, 32, 32))) and ds.labels.tolist() == fine.tolist()
        assert ds.classes[:2] == ["apple", "aquarium_fish"] and len(ds.classes) == 100
    assert sorted(p.name for p in (tmp_path / "data" / "cifar100").iterdir()) == ["cifar-100-python", "cifar-100-python.tar.gz"]


def test_cifar_tar_gz_is_extracted_next_to_it(tmp_path):
    build = tmp_path / "build"
    pixels, fine, _ = write_cifar100_binary(build / "cifar-100-binary")
    store = tmp_path / "store"
    store.mkdir()
    make_tar(store / "cifar-100-binary.tar.gz", build / "cifar-100-binary")
    ds = get_dataset("cifar100", root=store, download=False)
    assert ds.labels.tolist() == fine.tolist()
    assert (store / "cifar-100-binary" / "train.bin").is_file()
    assert [p.name for p in store.iterdir() if p.name.startswith(".")] == [], "no temporary folder left"


def test_processes_unpacking_the_same_archive_at_once_all_read_it(tmp_path, monkeypatch):
    """torchrun's processes each load the data: the first to finish unpacking renames its folder into
    place, and the others, finding it there, read it rather than fail."""
    build, store = tmp_path / "build", tmp_path / "store"
    pixels, fine, _ = write_cifar100_binary(build / "cifar-100-binary")
    store.mkdir()
    make_tar(store / "cifar-100-binary.tar.gz", build / "cifar-100-binary")
    extractall = tarfile.TarFile.extractall
    others = ["rank 1"]

    def slow_extractall(self, *args, **kwargs):
        extractall(self, *args, **kwargs)
        if others:  # another process unpacks the archive whole while this one is still at it
            others.pop()
            get_dataset("cifar100", root=store, download=False)

    monkeypatch.setattr(tarfile.TarFile, "extractall", slow_extractall)
    ds = get_dataset("cifar100", root=store, download=False)
    assert ds.labels.tolist() == fine.tolist() and torch.equal(ds.images, torch.from_numpy(pixels.reshape(-1, 3, 32, 32)))
    assert sorted(p.name for p in store.iterdir()) == ["cifar-100-binary", "cifar-100-binary.tar.gz"]


@pytest.mark.parametrize("evil", ["../escaped", "/tmp/absolute-resnetlab-test", "link"])
def test_unsafe_archive_members_are_refused(tmp_path, evil):
    store = tmp_path / "store"
    store.mkdir()
    with tarfile.open(store / "cifar-10-python.tar.gz", "w:gz") as tar:
        member = tarfile.TarInfo(evil)
        if evil == "link":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(member)
        else:
            member.size = 3
            tar.addfile(member, io.BytesIO(b"bad"))
    with pytest.raises(DataError, match="unsafe entry"):
        get_dataset("cifar10", root=store, download=False)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/absolute-resnetlab-test").exists()
    assert list(store.iterdir()) == [store / "cifar-10-python.tar.gz"]


# ----------------------------------------------------------------------------- SIGNS


def test_signs_h5(tmp_path):
    x = RNG.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    y = np.array([0, 5, 2, 3, 1])
    with h5py.File(tmp_path / "test_signs.h5", "w") as f:
        f["test_set_x"], f["test_set_y"], f["list_classes"] = x, y, np.arange(6)
    ds = get_dataset("signs", "test", root=tmp_path)
    assert torch.equal(ds.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ds.labels.tolist() == y.tolist() and ds.classes == ["0", "1", "2", "3", "4", "5"]
    with pytest.raises(DataError, match="train_signs.h5 not found.*deeplearning.ai"):
        get_dataset("signs", "train", root=tmp_path)
    (tmp_path / "train_signs.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="train_signs.h5 is not a SIGNS file"):
        get_dataset("signs", "train", root=tmp_path)


def test_signs_labels_in_the_notebooks_layouts_and_the_ones_refused(tmp_path):
    labels = np.arange(6) % 6
    for layout in (labels.reshape(1, -1), labels.reshape(-1, 1)):  # the course's raw (1, N); a column
        write_signs(tmp_path, train_set_y=layout)
        assert get_dataset("signs", root=tmp_path).labels.tolist() == labels.tolist()
    write_signs(tmp_path, train_set_y=np.eye(6)[labels])  # the notebook's convert_to_one_hot(...).T
    with pytest.raises(DataError, match=r"train_signs.h5: train_set_y is one-hot \(6, 6\); store the class numbers"):
        get_dataset("signs", root=tmp_path)
    many = np.arange(12) % 6
    for one_hot, axis in ((np.eye(6)[many].T, 0), (np.eye(6)[many], 1)):  # convert_to_one_hot's (6, N), and its .T
        write_signs(tmp_path, train_set_x=np.zeros((12, 64, 64, 3), np.uint8), train_set_y=one_hot)
        with pytest.raises(DataError, match=rf"one-hot \({one_hot.shape[0]}, {one_hot.shape[1]}\).*y\.argmax\(axis={axis}\)"):
            get_dataset("signs", root=tmp_path)


def test_signs_list_classes_shorter_than_the_labels_names_both(tmp_path):
    write_signs(tmp_path, list_classes=np.arange(3))
    with pytest.raises(DataError, match="list_classes has 3 entries but train_set_y has labels up to 5"):
        get_dataset("signs", root=tmp_path)


def test_a_signs_file_with_other_keys_lists_the_keys_it_has(tmp_path):
    x = RNG.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    write_signs(tmp_path, train_set_x=None, train_set_y=None, X_train=x, Y_train=np.arange(6))
    with pytest.raises(DataError, match=r"train_signs.h5 has no train_set_x, train_set_y \(it has X_train, "
                                        r"Y_train, list_classes\)"):
        get_dataset("signs", root=tmp_path)


def test_a_data_dir_that_is_a_file_names_its_folder(tmp_path):
    """The course's files given as the data folder, ``--data-dir datasets/train_signs.h5``: any named dataset."""
    file = write_signs(tmp_path / "datasets")
    for name in ("signs", "mnist"):
        with pytest.raises(DataError, match=f"--data-dir {file} is a file, not a folder: give its folder, "
                                            f"--data-dir {tmp_path / 'datasets'}"):
            get_dataset(name, root=file, download=False)


def test_a_stale_resnetlab_data_naming_a_file_does_not_stop_a_right_data_dir(tmp_path, monkeypatch):
    file = write_signs(tmp_path / "datasets")
    monkeypatch.setenv("RESNETLAB_DATA", str(file))
    assert len(get_dataset("signs", root=tmp_path / "datasets", download=False)) > 0


def test_signs_not_found_points_to_the_courses_datasets_folder_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_signs(tmp_path / "datasets")
    with pytest.raises(DataError, match=r"not found .* There is a datasets/train_signs.h5 here: give --data-dir datasets"):
        get_dataset("signs", root=tmp_path / "elsewhere")  # refused, not read from here behind the user's back
    with pytest.raises(DataError) as err:
        get_dataset("signs", "test", root=tmp_path / "elsewhere")
    assert "--data-dir datasets" not in str(err.value), "no test_signs.h5 here to point to"
    assert len(get_dataset("signs", root="datasets")) == 6


# ----------------------------------------------------------------------------- conversions of named datasets


def test_channels_and_size_of_array_datasets(tmp_path):
    write_cifar10_py(tmp_path / "cifar-10-batches-py")
    rgb = get_dataset("cifar10", "test", root=tmp_path)
    gray = get_dataset("cifar10", "test", root=tmp_path, channels=1)
    first = Image.fromarray(rgb.images[0].permute(1, 2, 0).numpy()).convert("L")
    assert torch.equal(gray.images[0, 0], torch.from_numpy(np.array(first))), "same luma as PIL"
    write_mnist(tmp_path, "test")
    mnist = get_dataset("mnist", "test", root=tmp_path, channels=3, image_size=32)
    assert mnist.images.shape == (12, 3, 32, 32) and mnist.images.dtype == torch.uint8
    assert torch.equal(mnist.images[:, 0], mnist.images[:, 2])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"name": "imagenet22k"}, DataError, "unknown dataset 'imagenet22k': choose one of fashion-mnist, .*, imagenet, or folder:PATH"),
        ({"name": "mnist", "split": "val"}, DataError, "'train' and a 'test' split"),
        # out of range, not a data problem: ValueError, as errors.py says
        ({"name": "mnist", "channels": 2}, ValueError, "channels must be 1"),
        ({"name": "mnist", "image_size": 0}, ValueError, "image_size must be from 1 to 8,192 pixels, not 0"),
        ({"name": "mnist", "image_size": 100_000}, ValueError, "image_size must be from 1 to 8,192 pixels, not 100000"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        get_dataset(**kwargs)


def test_a_named_dataset_trained_at_another_size_is_resumed_and_evaluated_at_that_size(tmp_path):
    """--image-size 32 on MNIST: the run's config says 32, and eval and resume must reload at 32."""
    from resnetlab.evaluate import evaluate_run
    from resnetlab.train import Interrupted, TrainConfig, resume, train

    write_mnist(tmp_path / "data", "train", n=32)
    write_mnist(tmp_path / "data", "test", n=8)
    config = TrainConfig(model="resnet8", dataset="mnist", data_dir=str(tmp_path / "data"), image_size=32, steps=3,
                         batch_size=16, device="cpu", out=str(tmp_path / "run"), progress=False)
    with pytest.raises(Interrupted):
        train(config, stop_at=1)
    assert resume(tmp_path / "run", device="cpu", progress=False).steps == 3
    assert sum(map(sum, evaluate_run(tmp_path / "run", device="cpu").result.confusion)) == 8
    # Reloading at the stored size leaves the pixels as they are, so runs trained without --image-size are untouched.
    stored = get_dataset("mnist", root=tmp_path / "data")
    assert torch.equal(get_dataset("mnist", root=tmp_path / "data", image_size=28).images, stored.images)


# ----------------------------------------------------------------------------- image folders and load_image


def make_folder(root: Path, counts: dict[str, int]) -> dict[str, list[Path]]:
    """PNG and JPEG, RGB, RGBA and grayscale, of several sizes."""
    made = {}
    for c, n in counts.items():
        made[c] = []
        for i in range(n):
            size = (10 + i % 3, 12)
            if i % 3 == 0:
                p = save_image(root / c / f"{i:03d}.png", RNG.integers(0, 256, (*size, 4), dtype=np.uint8))
            elif i % 3 == 1:
                p = save_image(root / c / f"{i:03d}.JPG", RNG.integers(0, 256, (*size, 3), dtype=np.uint8), quality=95)
            else:
                p = save_image(root / c / "nested" / f"{i:03d}.png", RNG.integers(0, 256, size, dtype=np.uint8))
            made[c].append(p)
    return made


def test_folder_split_is_seeded_stratified_and_disjoint(tmp_path):
    made = make_folder(tmp_path / "pics", {"cat": 10, "dog": 20, "eel": 1})
    (tmp_path / "pics" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "pics" / ".hidden").mkdir()
    spec = f"folder:{tmp_path / 'pics'}"
    train = get_dataset(spec, "train", image_size=8, val_fraction=0.2, seed=1)
    val = get_dataset(spec, "val", image_size=8, val_fraction=0.2, seed=1)
    assert isinstance(train, FolderDataset) and train.classes == ["cat", "dog", "eel"] and train.name == spec
    held = [label for _, label in val.samples]
    assert (held.count(0), held.count(1), held.count(2)) == (2, 4, 0), "20% of each class; a lone image trains"
    all_files = {p for files in made.values() for p in files}
    assert {p for p, _ in train.samples} | {p for p, _ in val.samples} == all_files
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    again = get_dataset(spec, "test", image_size=8, val_fraction=0.2, seed=1)
    assert again.samples == val.samples, "same seed, same split ('test' = 'val')"
    other = get_dataset(spec, "val", image_size=8, val_fraction=0.2, seed=2)
    assert other.samples != val.samples
    image, label = train[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8 and label == 0
    arrays = train.to_arrays()
    assert arrays.images.shape == (len(train), 3, 8, 8) and arrays.labels.tolist() == [lab for _, lab in train.samples]
    batch, labels = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch.shape == (4, 3, 8, 8) and labels.tolist() == [0, 0, 0, 0]
    pickle.dumps(train)  # what DataLoader workers need


def test_folder_with_train_and_val_subfolders(tmp_path):
    make_folder(tmp_path / "d" / "train", {"a": 2, "b": 3})
    make_folder(tmp_path / "d" / "val", {"b": 1})
    spec = f"folder:{tmp_path / 'd'}"
    assert len(get_dataset(spec, "train")) == 5
    val = get_dataset(spec, "val", channels=1, image_size=5)
    assert val.classes == ["a", "b"] and [lab for _, lab in val.samples] == [1] and val[0][0].shape == (1, 5, 5)
    make_folder(tmp_path / "d" / "val", {"zebra": 1})
    with pytest.raises(DataError, match="classes missing from .*train: zebra"):
        get_dataset(spec, "val")


def test_a_train_folder_alone_is_split_and_a_val_folder_alone_is_refused(tmp_path):
    """train/ without val/ is a folder of classes to hold a tenth out of, not one class named "train"."""
    make_folder(tmp_path / "d" / "train", {"a": 10, "b": 10})
    spec = f"folder:{tmp_path / 'd'}"
    train, held_out = get_dataset(spec, "train"), get_dataset(spec, "val")
    assert train.classes == held_out.classes == ["a", "b"]
    assert (len(train), len(held_out)) == (18, 2)
    (tmp_path / "d" / "train").rename(tmp_path / "d" / "val")
    with pytest.raises(DataError, match=r"has val/ but no train/: put the training images in .*d/train, one subfolder a class"):
        get_dataset(spec, "train")
    (tmp_path / "d" / "val").rename(tmp_path / "d" / "train")
    make_folder(tmp_path / "d" / "validation", {"b": 1})  # Keras's name for it
    assert [label for _, label in get_dataset(spec, "val").samples] == [1]
    # A class that happens to be called "train" beside others is a class.
    make_folder(tmp_path / "vehicles", {"bus": 2, "car": 2, "train": 2})
    assert get_dataset(f"folder:{tmp_path / 'vehicles'}", val_fraction=0).classes == ["bus", "car", "train"]


def test_folder_native_size_and_channel_guess(tmp_path):
    for i in range(3):
        save_image(tmp_path / "g" / "x" / f"{i}.png", np.full((6, 7), i, np.uint8))
    ds = get_dataset(f"folder:{tmp_path / 'g'}", val_fraction=0)
    assert ds.channels == 1 and ds.to_arrays().images.shape == (3, 1, 6, 7)
    save_image(tmp_path / "g" / "x" / "big.png", np.zeros((9, 9), np.uint8))
    with pytest.raises(DataError, match="different sizes.*--image-size"):
        get_dataset(f"folder:{tmp_path / 'g'}", val_fraction=0).to_arrays()
    with pytest.raises(DataError, match=r"nothing is held out for testing \(validation fraction 0\)"):
        get_dataset(f"folder:{tmp_path / 'g'}", "val", val_fraction=0)
    save_image(tmp_path / "one" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    save_image(tmp_path / "one" / "b" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="no class has two images, so none can be held out"):
        get_dataset(f"folder:{tmp_path / 'one'}", "val")
    (tmp_path / "one" / "train").mkdir()
    for c in "ab":
        (tmp_path / "one" / c).rename(tmp_path / "one" / "train" / c)
        (tmp_path / "one" / "val" / c).mkdir(parents=True)
    with pytest.raises(DataError, match="one/val holds no images: add some, in the class subfolders train/ has"):
        get_dataset(f"folder:{tmp_path / 'one'}", "val")


def test_a_fraction_that_holds_out_every_image_says_the_training_split_is_empty(tmp_path):
    for c in "ab":
        save_image(tmp_path / "one" / c / "0.png", np.zeros((4, 4), np.uint8))
    assert len(get_dataset(f"folder:{tmp_path / 'one'}", "val", val_fraction=0.9)) == 2
    with pytest.raises(DataError, match=r"one: validation fraction 0.9 holds out every class's only image, so the "
                                        r"training split would be empty: give a fraction of 0.5 or less, or add images"):
        get_dataset(f"folder:{tmp_path / 'one'}", "train", val_fraction=0.9)


def test_imagenet_by_name_is_loaded_as_its_folder_is(tmp_path):
    """At the folder default size, and its held-out images in the training images' channels."""
    for split, shape in (("train", (40, 40)), ("val", (40, 40, 3))):
        for c in ("n01", "n02"):
            save_image(tmp_path / "imagenet" / split / c / "0.png", np.zeros(shape, np.uint8))
    side = data.FOLDER_IMAGE_SIZE
    assert load_split("imagenet", "test", str(tmp_path)).images.shape == (2, 3, side, side)
    train, test = load_splits("imagenet", str(tmp_path), None, None, 0)
    assert train.images.shape == test.images.shape == (2, 1, side, side)


def test_folder_problems(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no subfolders"):
        get_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "cats").mkdir()
    with pytest.raises(DataError, match="class folder.* cats hold no images"):
        get_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="nowhere does not exist.*moved: train --resume RUN --data-dir NEW"):
        get_dataset(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="afile is not a folder"):
        get_dataset(f"folder:{tmp_path / 'afile'}")
    make_folder(tmp_path / "ok", {"a": 2})
    with pytest.raises(DataError, match=r"fraction must be in \[0, 1\)"):
        get_dataset(f"folder:{tmp_path / 'ok'}", val_fraction=1.5)


def test_load_image_exact_pixels_and_resize(tmp_path):
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = save_image(tmp_path / "a.png", rgb)
    assert torch.equal(load_image(path, 3, None), torch.from_numpy(rgb).permute(2, 0, 1))
    small = load_image(path, 3, 4)
    assert small.shape == (3, 4, 4) and small.dtype == torch.uint8
    # Antialiased: shrinking a fine checkerboard gives grey, not a sample of black or white.
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    assert abs(int(load_image(save_image(tmp_path / "b.png", board), 1, 8).float().mean()) - 127) < 3


def test_load_image_odd_modes(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # the rest: transparent black
    out = load_image(save_image(tmp_path / "rgba.png", rgba), 3, None)
    assert out[:, 0, 0].tolist() == [255, 0, 0] and out[:, 3, 3].tolist() == [255, 255, 255]

    gray16 = np.array([[0, 65535], [257 * 100, 257 * 200]], np.uint16)
    out = load_image(save_image(tmp_path / "g16.png", gray16), 1, None)
    assert out[0].tolist() == [[0, 255], [100, 200]], "16-bit is scaled, not clipped"

    palette = Image.new("P", (3, 3), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png", 3, None)
    assert out[:, 0, 0].tolist() == [255, 255, 255] and out[:, 1, 1].tolist() == [0, 0, 255]

    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    assert load_image(tmp_path / "c.tif", 3, None)[:, 0, 0].tolist() == [255, 0, 0]
    Image.new("1", (3, 3), 1).save(tmp_path / "bw.bmp")
    assert load_image(tmp_path / "bw.bmp", 3, 2).unique().tolist() == [255]
    Image.new("LA", (2, 2), (40, 255)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png", 1, None).unique().tolist() == [40]


def test_load_image_applies_exif_rotation(tmp_path):
    img = Image.fromarray(np.zeros((2, 6, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg", 3, None).shape == (3, 6, 2)


def test_random_crops_of_a_big_turned_jpeg_are_torchvisions_crops_of_the_upright_photo(tmp_path):
    # A 1600x1200 phone photo stored sideways (EXIF orientation 6): the crop box is drawn on the upright
    # 1200x1600 picture, as torchvision draws it after ImageOps.exif_transpose; small boxes decode at a
    # reduced scale, so the pixels agree to within JPEG rounding, not exactly.
    y, x = np.mgrid[0:1200, 0:1600]
    photo = np.stack([x / 7 % 256, y / 5 % 256, (x + y) / 11 % 256], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save_image(tmp_path / "phone.jpg", photo, quality=92, exif=exif)
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert upright.size == (1200, 1600)
    for seed in range(4):
        ours = load_random_crop(path, 3, 96, seed, (0.08, 1.0)).float()
        torch.manual_seed(seed)
        theirs = T.PILToTensor()(T.RandomResizedCrop(96)(upright)).float()
        assert ours.shape == (3, 96, 96)
        assert (ours - theirs).abs().mean() < 1.5, seed


def test_scale_jitter_resizes_the_shorter_side_then_crops_at_random(tmp_path):
    # 90x60 with the column number as red: after a resize of the shorter side (60) to 40, a 20-pixel
    # crop spans a third of the columns' range, and two seeds pick different places.
    red = np.tile(np.linspace(0, 255, 90), (60, 1))
    path = save_image(tmp_path / "wide.png", np.stack([red, red * 0, red * 0], -1).astype(np.uint8))
    crops = [load_jitter_crop(path, 3, 20, seed, (40, 40)) for seed in range(6)]
    assert all(c.shape == (3, 20, 20) for c in crops)
    spans = [float(c[0, 0, -1]) - float(c[0, 0, 0]) for c in crops]
    assert spans == pytest.approx([255 * 19 / 60] * 6, abs=4)  # 20 of 60 resized columns, less one step
    assert len({float(c[0, 0, 0]) for c in crops}) > 1
    # With a range of sides: torchvision's Resize and RandomCrop under the same seed.
    for seed in range(4):
        torch.manual_seed(seed)
        side = int(torch.randint(30, 61, ()))
        expected = T.PILToTensor()(T.RandomCrop(20)(T.Resize(side)(Image.open(path).convert("RGB"))))
        assert torch.equal(load_jitter_crop(path, 3, 20, seed, (30, 60)), expected)


def test_load_image_rejects_non_images(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"this is text")
    with pytest.raises(DataError, match="fake.png is not a readable image"):
        load_image(tmp_path / "fake.png", 3, 32)
    good = save_image(tmp_path / "cut.png", RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.png is not a readable image"):
        load_image(good, 3, 32)
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.jpg", 3, 32)
    make_folder(tmp_path / "f", {"a": 2})
    (tmp_path / "f" / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    ds = get_dataset(f"folder:{tmp_path / 'f'}", val_fraction=0, image_size=4)
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        ds.to_arrays()


def test_an_image_file_holding_postscript_never_reaches_ghostscript(tmp_path, monkeypatch):
    """Pillow chooses a decoder by content: an EPS named .png would be run through Ghostscript."""
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    eps = tmp_path / "photo.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto showpage\n%%EOF\n")
    with Image.open(eps) as img:
        assert img.format == "EPS"  # what Pillow alone makes of it
    with pytest.raises(DataError, match="photo.png is not a readable image"):
        load_image(eps, 3, 8)
    with pytest.raises(DataError, match="the image is not a readable image"):
        load_image(io.BytesIO(eps.read_bytes()), 3, 8)  # an upload to the prediction page
    assert calls == []


def test_a_limit_on_a_folder_draws_from_every_class_not_the_first(tmp_path):
    make_folder(tmp_path / "f", {"a": 10, "b": 10, "c": 10})
    train = load_split(f"folder:{tmp_path / 'f'}", "train", image_size=4, limit=9)
    assert len(train) == 9 and set(train.labels.tolist()) == {0, 1, 2}  # in order, all nine would be a's


def test_a_folders_held_out_images_take_the_training_images_channels(tmp_path):
    """Each split samples its own images for their colours: one colour photo among the held-out
    images must not give them three channels when the training images have one."""
    for split, colour in (("train", False), ("val", True)):
        for c in ("a", "b"):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            for i in range(3):
                mode, fill = ("RGB", (200, 10, 10)) if colour and i == 0 else ("L", 90)
                Image.new(mode, (12, 12), fill).save(tmp_path / "f" / split / c / f"{i}.png")
    train, test = load_splits(f"folder:{tmp_path / 'f'}", None, None, None, 0, image_size=8)
    assert train.images.shape[1:] == test.images.shape[1:] == (1, 8, 8)
    assert get_dataset(f"folder:{tmp_path / 'f'}", "val").channels == 3  # the split alone would have said colour


@pytest.mark.parametrize("size", [(300, 200), (200, 300)])
def test_resize_then_centre_crop_is_torchvisions_evaluation_transform(tmp_path, size):
    """Published weights were measured with Resize(256) (the shorter side, proportions kept) and
    CenterCrop(224): a landscape or portrait photo gives torchvision's very pixels for the image as a tensor
    (as ``weights.transforms()`` takes it), and within 1 of 255 of them where PIL resizes."""
    photo = tmp_path / "photo.png"
    Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(photo)
    got = load_image(photo, 3, 224, resize_to=256)
    assert torch.equal(got, T.CenterCrop(224)(T.Resize(256)(T.PILToTensor()(Image.open(photo)))))
    by_pil = T.PILToTensor()(T.CenterCrop(224)(T.Resize(256)(Image.open(photo))))
    assert (got.int() - by_pil.int()).abs().max() <= 1


def test_an_image_too_thin_to_resize_by_its_shorter_side_is_refused(tmp_path):
    """Resizing a 12000x1 PNG (93 bytes) to a shorter side of 256 would make 786 million pixels."""
    from resnetlab.evaluate import view_batches

    thin = tmp_path / "thin.png"
    Image.new("L", (12000, 1)).save(thin)
    too_thin = "thin.png is 12000x1 pixels, its longer side more than 32 times its shorter"
    with pytest.raises(DataError, match=too_thin):
        load_image(thin, 3, 224, resize_to=256)
    with pytest.raises(DataError, match=too_thin):
        view_batches(thin, 3, 224, 256, "scales", [224])
    with pytest.raises(DataError, match=too_thin):
        load_jitter_crop(thin, 3, 224, 0, (256, 480))
    assert load_image(thin, 3, 8).shape == (3, 8, 8)  # squashed to a square, as runs without resize_to see it
    panorama = tmp_path / "panorama.png"
    Image.new("L", (320, 10)).save(panorama)
    assert load_image(panorama, 1, 8, resize_to=9).shape == (1, 8, 8)


def test_large_photos_load_quietly_and_bombs_are_refused(tmp_path, monkeypatch, recwarn):
    """PIL warns from MAX_IMAGE_PIXELS (89 megapixels, which the largest phone photos pass) and refuses
    twice that: the first load without a word, the second is one DataError. Scaled down here."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    large = save_image(tmp_path / "large.png", RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8))  # 1,600 pixels
    assert load_image(large, 3, 8).shape == (3, 8, 8)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    bomb = save_image(tmp_path / "bomb.png", RNG.integers(0, 256, (50, 50, 3), dtype=np.uint8))  # 2,500 > 2 x 1,000
    # It is a PNG already: the advice is to make it smaller, not to re-save it as one.
    with pytest.raises(DataError, match=r"bomb.png has more pixels than Pillow opens from a file it cannot trust "
                                        r"\(2,000\); resize it first$"):
        load_image(bomb, 3, 8)


# ----------------------------------------------------------------------------- the real Fashion-MNIST


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(data, "_SYSTEM_DIRS", SYSTEM_DIRS)
    train = get_dataset("fashion-mnist", download=False)
    test = get_dataset("fashion-mnist", "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


# Debian ships the official deflate streams with the gzip header stripped (no name, new
# mtime); these mtimes (2017-08-31) are what the official files' headers carried.
OFFICIAL_MTIMES = {"train": 1504176606, "t10k": 1504176627}


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
@pytest.mark.parametrize("file", sorted(data._DOWNLOADS["fashion-mnist"][1]))
def test_sha256_constants_match_the_debian_files(file):
    debian = (DEBIAN_FASHION / file).read_bytes()
    assert debian[:4] == b"\x1f\x8b\x08\x00", "header without a file name"
    name = file.removesuffix(".gz").encode() + b"\0"
    mtime = struct.pack("<I", OFFICIAL_MTIMES[file.split("-")[0]])
    official = b"\x1f\x8b\x08\x08" + mtime + debian[8:10] + name + debian[10:]
    assert hashlib.sha256(official).hexdigest() == data._DOWNLOADS["fashion-mnist"][1][file]


def test_big_jpegs_decode_at_a_reduced_scale_to_the_same_picture(tmp_path):
    # A smooth 1600x1200 "photo": decoding it at 1/4 scale (libjpeg's draft mode) then resizing to 200
    # must give the picture a full decode and resize gives, to within JPEG rounding.
    y, x = np.mgrid[0:1200, 0:1600]
    photo = np.stack([x / 7 % 256, y / 5 % 256, (x + y) / 11 % 256], -1).astype(np.uint8)
    path = save_image(tmp_path / "photo.jpg", photo, quality=92)
    fast = load_image(path, 3, 200).float()
    with Image.open(path) as img:
        img.load()  # no draft: the whole image decoded
        full = torch.from_numpy(np.array(img.convert("RGB").resize((200, 200), Image.Resampling.BILINEAR)))
    assert fast.shape == (3, 200, 200)
    assert (fast - full.permute(2, 0, 1).float()).abs().mean() < 1.0
    with Image.open(path) as img:
        img.draft(None, (200, 200))
        assert img.size == (400, 300)  # the reduced decode really happens (1/4 scale, still above 200)

    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.jpg is not a readable image"):
        load_image(truncated, 3, 200)


def test_folder_samples_are_a_sequence_of_paths_and_labels_that_keeps_odd_file_names(tmp_path):
    # Held as arrays (no object per image, which DataLoader workers would each copy), read back as pairs;
    # a file name that is not UTF-8 (Latin-1 "café") still reaches its file.
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for name in ("a.png", "b.png"):
            Image.new("RGB", (4, 4), (200 if cls == "dog" else 0, 0, 0)).save(tmp_path / cls / name)
    odd = os.path.join(os.fsencode(tmp_path / "dog"), b"caf\xe9.png")
    Image.new("RGB", (4, 4), (200, 0, 0)).save(os.fsdecode(odd))
    ds = get_dataset(f"folder:{tmp_path}", "train", image_size=4, val_fraction=0.0)
    assert len(ds.samples) == 5 and [label for _, label in ds.samples] == [0, 0, 1, 1, 1]
    assert ds.samples[1] == (tmp_path / "cat" / "b.png", 0)
    assert ds.samples[2:4] == [(tmp_path / "dog" / "a.png", 1), (tmp_path / "dog" / "b.png", 1)]
    odd_index = [os.fsencode(path) for path, _ in ds.samples].index(odd)
    assert ds[odd_index][0][0].float().mean() == 200
    subset = ds.subset(3, seed=1)
    assert len(subset.samples) == 3 and set(subset.samples) < set(ds.samples)
    assert list(subset.samples) == sorted(subset.samples, key=list(ds.samples).index)  # folder order kept
    assert subset.samples == ds.subset(3, seed=1).samples and ds.subset(9) is ds


def test_folder_files_are_ordered_folder_by_folder_as_pathlib_orders_them(tmp_path):
    # A plain string sort would put "a-b/x.png" and "a.png" before "a/x.png" ('-' and '.' sort before '/');
    # the order decides the seeded split, so it must stay pathlib's, whatever lists the files.
    for rel in ("cls/a/x.png", "cls/a-b/x.png", "cls/a.png", "cls/B.png", "other/y.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2)).save(tmp_path / rel)
    ds = get_dataset(f"folder:{tmp_path}", "train", image_size=2, val_fraction=0.0)
    files = [path for path, label in ds.samples if label == 0]
    assert files == sorted(tmp_path / rel for rel in ("cls/a/x.png", "cls/a-b/x.png", "cls/a.png", "cls/B.png"))
    assert [p.relative_to(tmp_path / "cls").as_posix() for p in files] == ["B.png", "a/x.png", "a-b/x.png", "a.png"]


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_a_named_dataset_goes_into_a_dataloader_as_a_folder_does():
    ds = get_dataset("fashion-mnist", "test", root=DEBIAN_FASHION, download=False)
    assert isinstance(ds, torch.utils.data.Dataset)
    image, label = ds[3]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28) and type(label) is int
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=16)))
    assert torch.equal(images, ds.images[:16]) and torch.equal(labels, ds.labels[:16])
