"""ImageNet 2012 from its official archives, prepared by torchvision's functions into class folders."""

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import DataError, get_dataset, prepare_imagenet

scipy_io = pytest.importorskip("scipy.io")
imagenet = pytest.importorskip("torchvision.datasets.imagenet")

# Leaf synsets in ILSVRC2012_ID order (the devkit's), deliberately not in WordNet ID order.
SYNSETS = [(1, "n03000000", "crane"), (2, "n01000000", "tench, Tinca tinca"), (3, "n02000000", "goldfish")]
VAL_LABELS = [3, 1, 1, 2, 3]  # ILSVRC2012_IDs of val images 1..5, as ILSVRC2012_validation_ground_truth.txt lists them


def jpeg(colour: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (colour, 0, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archives(folder: Path) -> dict[str, str]:
    """The three ImageNet archives in their real layout; returns each file's MD5."""
    folder.mkdir(parents=True)
    # meta.mat: the 'synsets' struct array, fields in the devkit's order; one non-leaf synset (children) too.
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    synsets = np.zeros(len(SYNSETS) + 1, dtype=[(f, object) for f in fields])
    for row, (idx, wnid, words) in enumerate(SYNSETS + [(1001, "n09999999", "fish")]):
        parent = idx == 1001
        synsets[row] = (idx, wnid, words, "a gloss", 2 if parent else 0, np.array([2, 3]) if parent else np.zeros(0),
                        1 if parent else 0, 0 if parent else 2)
    meta = io.BytesIO()
    scipy_io.savemat(meta, {"synsets": synsets})
    with tarfile.open(folder / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
            "".join(f"{i}\n" for i in VAL_LABELS).encode())
    with tarfile.open(folder / "ILSVRC2012_img_val.tar", "w") as tar:
        for n, label in enumerate(VAL_LABELS, 1):
            add(tar, f"ILSVRC2012_val_{n:08d}.JPEG", jpeg(60 * label))
    with tarfile.open(folder / "ILSVRC2012_img_train.tar", "w") as tar:
        for idx, wnid, _ in SYNSETS:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for k in range(2):
                    add(class_tar, f"{wnid}_{k}.JPEG", jpeg(60 * idx))
            add(tar, f"{wnid}.tar", inner.getvalue())
    return {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}


@pytest.fixture
def archives(tmp_path, monkeypatch) -> Path:
    """The archives, with torchvision's MD5 table pointing at them (the real ones are ImageNet's own)."""
    folder = tmp_path / "ILSVRC2012"
    md5 = write_archives(folder)
    table = {key: (name, md5[name]) for key, (name, _) in imagenet.ARCHIVE_META.items()}
    monkeypatch.setattr(imagenet, "ARCHIVE_META", table)
    monkeypatch.setenv("HOME", str(tmp_path))  # no cache of the user's is looked at
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)
    return folder


def test_archives_become_class_folders_in_wordnet_order(archives):
    leftover = archives / "val.partial" / "n01000000" / "from_an_interrupted_run.JPEG"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(jpeg(0))  # an extraction stopped half way is started again, not used
    train = get_dataset("imagenet", "train", root=archives, image_size=16)
    val = get_dataset("imagenet", "test", root=archives, image_size=16)
    assert train.classes == val.classes == ["n01000000", "n02000000", "n03000000"]  # sorted WordNet IDs
    assert sorted(p.name for p, _ in train.samples)[:2] == ["n01000000_0.JPEG", "n01000000_1.JPEG"]
    assert [label for _, label in train.samples] == [0, 0, 1, 1, 2, 2]
    # Validation images sorted into the classes the ground truth names: ID 3 is goldfish, n02000000.
    by_name = {p.name: val.classes[label] for p, label in val.samples}
    assert by_name == {"ILSVRC2012_val_00000001.JPEG": "n02000000", "ILSVRC2012_val_00000002.JPEG": "n03000000",
                       "ILSVRC2012_val_00000003.JPEG": "n03000000", "ILSVRC2012_val_00000004.JPEG": "n01000000",
                       "ILSVRC2012_val_00000005.JPEG": "n02000000"}
    assert int(val[0][0][0].float().mean()) == pytest.approx(60 * 2, abs=3)  # n01000000 is ID 2's red
    assert not list(archives.glob("*.partial")) and not list((archives / "train").glob("*.tar"))
    assert prepare_imagenet(archives) == archives  # prepared once: found, not extracted again


def test_train_and_eval_take_imagenet_by_name(archives, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--model", "resnet8", "--dataset", "imagenet", "--data-dir", str(archives), "--image-size", "16",
            "--recipe", "imagenet", "--steps", "2", "--batch-size", "3", "--workers", "0", "--device", "cpu", "--out", str(run)]
    assert main(args) == 0, capsys.readouterr().err
    assert (run / "config.json").read_text().count(f"folder:{archives}") == 1  # the run names the prepared folder
    assert main(["eval", str(run), "--ten-crop", "--device", "cpu"]) == 0
    assert "(5 test images, 10-crop testing)" in capsys.readouterr().out


def test_the_papers_recipe_crops_224_pixels_unless_told(archives, tmp_path):
    from resnetlab import runs
    from resnetlab.train import TrainConfig, train

    train(TrainConfig(model="resnet8", dataset="imagenet", data_dir=str(archives), recipe="he2015-imagenet", steps=1,
                      batch_size=3, workers=0, device="cpu", out=str(tmp_path / "run"), progress=False))
    config = runs.read_config(tmp_path / "run")
    assert (config["image_size"], config["resize_size"]) == (224, 256)


def test_a_corrupt_archive_is_named_and_nothing_half_made_is_left(archives, capsys):
    (archives / "ILSVRC2012_img_val.tar").write_bytes(b"truncated")
    with pytest.raises(DataError, match="ILSVRC2012_img_val.tar is not present in the root directory or is corrupted"):
        prepare_imagenet(archives)
    assert not (archives / "val").exists()
    assert main(["train", "--dataset", "imagenet", "--data-dir", str(archives), "--steps", "1"]) == 2
    assert "corrupted" in capsys.readouterr().err


def test_missing_imagenet_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)
    with pytest.raises(DataError, match="ImageNet needs an account: download the archives from https://image-net.org"):
        get_dataset("imagenet", "train", root=tmp_path / "empty")


def test_data_command_prepares_imagenet_and_describes_it(archives, capsys):
    assert main(["data", "imagenet", "--data-dir", str(archives)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"imagenet: folder:{archives}" and (archives / "train").is_dir()
    assert out[1].split()[:3] == ["train", "6", "images"] and out[2].split()[:4] == ["held", "out", "5", "images"]
    assert out[3] == "  3 classes, 2 training images each: n01000000, n02000000, n03000000"


def test_imagenet_prepared_by_torchvision_is_named_as_torchvision_names_its_classes(tmp_path):
    """With its meta.bin, a prepared ImageNet's 1000 WordNet folders read as torchvision's class names."""
    import torch
    from torchvision.models import ResNet50_Weights

    root = tmp_path / "imagenet"
    wnids = [f"n{i:08d}" for i in range(1000)]
    for split in ("train", "val"):
        for wnid in wnids:
            (root / split / wnid).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / wnid / "a.png")
    assert get_dataset(f"folder:{root}", "train").classes == wnids  # no meta.bin: the folder names
    torch.save(({w: (f"name of {w}",) for w in wnids}, wnids), root / imagenet.META_FILE)  # torchvision's format
    names = get_dataset(f"folder:{root}", "test").classes
    assert names == ResNet50_Weights.IMAGENET1K_V1.meta["categories"] and names[0] == "tench"
