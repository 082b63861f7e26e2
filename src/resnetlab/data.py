"""Datasets: the named benchmarks and the user's own image folders, as uint8 tensors.

``get_dataset(name, split)`` reads a split as it is stored; ``load_split`` (at the end) is what
training, evaluation and the experiments call: a split cut to a limit and sized for the model, kept
in memory or, for a big folder, left on disk. The named datasets come back
whole as an ``ArrayDataset`` (small enough to keep on the device); ``folder:PATH``
comes back as a ``FolderDataset`` that decodes lazily, because a user's folder can
be large, and so does ``imagenet``, a folder prepared once from ImageNet's own
archives. Training crops can be cut straight from the files (``load_random_crop``,
``load_jitter_crop``). Every problem a user can fix raises ``DataError`` with one message that
says which file, what is wrong, and what to do.

Files are looked for, in order, in ``root`` (the CLI's --data-dir), ``$RESNETLAB_DATA``,
the Debian dataset packages, then ``~/.cache/resnetlab/<name>``; in the first two,
both ``DIR/`` and ``DIR/<name>/`` are accepted. Nothing read from a file is ever
executed: CIFAR's pickles go through an unpickler that builds only numpy arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import random
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .errors import ResnetlabError
from .recipes import Recipe

try:  # numpy >= 2 moved the pickling helpers to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "cifar100", "signs")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# Official download locations and the SHA-256 of each file.
# - Fashion-MNIST: the values tensorflow/datasets (url_checksums/fashion_mnist.txt) and
#   Keras (datasets/fashion_mnist.py) publish. Checked offline: Debian's dataset-fashion-mnist
#   ships the same deflate streams with the gzip header stripped (no file name, mtime reset);
#   putting the original header back (FNAME flag, name, mtime 2017-08-31) gives files with
#   exactly these SHA-256s and torchvision's MD5s. tests/test_data.py repeats that check.
#   The S3 website endpoint serves only http; the checksum is what makes that safe.
# - MNIST: tensorflow/datasets' url_checksums/mnist.txt; the same four files (same sizes)
#   that torchvision fetches from its two mirrors (in its order since 0.22), with one MD5 list for both.
# - CIFAR: Keras (datasets/cifar10.py, cifar100.py) and torchvision's prototype datasets;
#   several public manifests pair them with the MD5s on the CIFAR page
#   (c58f30108f718f92721af3b95e74349a, eb9058c3a382ffc7106e4002c42a8d85). Not checkable here.
# Each dataset: its mirrors, tried in order, and its files' SHA-256s.
_DOWNLOADS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "fashion-mnist": (("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    }),
    "mnist": (("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"), {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    }),
    "cifar10": (("https://www.cs.toronto.edu/~kriz/",), {
        "cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    }),
    "cifar100": (("https://www.cs.toronto.edu/~kriz/",), {
        "cifar-100-python.tar.gz": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
    }),
}  # fmt: skip

# Where Debian's dataset packages put their files.
_SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
}

IMAGE_EXTENSIONS = {
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
}  # fmt: skip
# What each reader returns: images (N, C, H, W) uint8, labels (N,), class names.
_Arrays = tuple[np.ndarray, np.ndarray, list[str]]
# Pillow picks a decoder by a file's content, not its name: a ".png" holding PostScript would go to
# Ghostscript, an interpreter. Only these raster decoders are tried (JPEG's includes phones' multi-picture files).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ImageT = TypeVar("_ImageT", torch.Tensor, Image.Image)  # check_proportions returns what it is given


MAX_SIDE = 8192  # pixels: one RGB image this size is 800 MB as float32, and a batch of them tens of GB


def check_side(side: int, name: str) -> int:
    """``side`` when it is an image side resnetlab takes (1 to ``MAX_SIDE`` pixels), else a ValueError
    naming the argument (or flag) ``name``: a side of 100,000 would fill the machine's memory rather than fail."""
    if not 1 <= side <= MAX_SIDE:
        raise ValueError(f"{name} must be from 1 to {MAX_SIDE:,} pixels, not {side}")
    return side


class DataError(ResnetlabError):
    """A data problem the user can fix; the message names the file, the problem and the remedy."""


@dataclass
class ArrayDataset(torch.utils.data.Dataset):
    """A small dataset held in memory; ``ds[i]`` is an (image, label) pair, as a ``FolderDataset``'s, so
    either goes into a ``DataLoader``."""

    images: torch.Tensor  # uint8, (N, C, H, W), C = 1 or 3
    labels: torch.Tensor  # int64, (N,)
    classes: list[str]  # class names, index = label
    name: str  # what get_dataset was called with, so get_dataset(ds.name) loads it again

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Image ``i`` as uint8 (C, H, W) and its label."""
        return self.images[i], int(self.labels[i])


def fingerprint(ds: ArrayDataset | FolderDataset) -> str:
    """A digest of what a split holds, the same wherever its files are: its labels and pixels when in
    memory, its files' class folders, names and labels when left on disk (reading a million images, or
    even their sizes, to check a resume would take longer than the check is worth)."""
    digest = hashlib.sha256()
    if isinstance(ds, ArrayDataset):
        digest.update(ds.labels.numpy().tobytes())
        digest.update(ds.images.contiguous().numpy().tobytes())
    else:
        for path, label in ds.samples:
            digest.update(f"{path.parent.name}/{path.name}\t{label}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


class Samples(Sequence):
    """A folder dataset's (path, label) pairs, held as two numpy arrays.

    A list of a million Path objects takes about 400 bytes an image, and every DataLoader worker
    ends up with a private copy of it: reading a Python object writes its reference count, which
    unshares the memory page it sits on. Arrays of bytes and ints have no per-image objects to touch.
    """

    def __init__(self, pairs: Sequence[tuple[str | Path, int]]) -> None:
        self.paths = np.array([os.fsencode(p) for p, _ in pairs], dtype=bytes)
        self.labels = np.array([int(label) for _, label in pairs], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int | slice | np.ndarray) -> tuple[Path, int] | Samples:
        if isinstance(i, (slice, np.ndarray)):  # a range or an index array: the arrays cut, no Path made
            taken = Samples([])
            taken.paths, taken.labels = self.paths[i], self.labels[i]
            return taken
        return Path(os.fsdecode(self.paths[i])), int(self.labels[i])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Samples({len(self)} images)"


class FolderDataset(torch.utils.data.Dataset):
    """The user's own images, one subfolder per class; decodes lazily (for big folders used with DataLoader workers).

    Each item goes through ``load_image``, the function prediction uses, so a model
    sees user images the same way in training and in prediction.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        image_size: int | None,
        channels: int | None,
        name: str,
        resize_to: int | None = None,
    ) -> None:
        if not samples:
            raise DataError(f"{name}: this split has no images")
        self.samples = samples if isinstance(samples, Samples) else Samples(samples)
        self.classes = list(classes)
        self.image_size = image_size
        # Batches need one channel count; when none is asked for, a sample of the folder decides.
        self.channels = channels or _guess_channels(self.samples)
        self.name = name
        self.resize_to = resize_to  # see load_image: resize the shorter side, then crop the centre

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, count: int, seed: int = 0) -> FolderDataset:
        """``count`` images drawn with ``seed``, kept in folder order, decoded the same way.

        Drawn rather than the first ones: the files are sorted by class, so the first thousand of
        ImageNet would be a single class's.
        """
        if count >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).permutation(len(self))[:count])
        return FolderDataset(self.samples[keep], self.classes, self.image_size, self.channels, self.name, self.resize_to)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return load_image(path, self.channels, self.image_size, self.resize_to), label

    def to_arrays(self) -> ArrayDataset:
        """Decode every image into memory; they must share one size unless ``image_size`` is set."""
        images = [self[i][0] for i in range(len(self))]
        sizes = {tuple(image.shape[1:]) for image in images}
        if len(sizes) > 1:
            raise DataError(
                f"{self.name}: images have {len(sizes)} different sizes (e.g. {sorted(sizes)[:2]}); "
                "set an image size (--image-size) so they are resized to one"
            )
        return ArrayDataset(torch.stack(images), torch.from_numpy(self.samples.labels), list(self.classes), self.name)


def get_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ArrayDataset | FolderDataset:
    """Load one split of a named dataset (see ``DATASETS``), of ``imagenet`` (see ``prepare_imagenet``;
    a folder dataset) or of ``folder:PATH``.

    ``split`` is "train" or "test"; for folders "val" is the same as "test": the held-out
    part, either PATH's own val/ (or test/) subfolder or a seeded, stratified
    ``val_fraction`` of each class. ``image_size`` and ``channels`` (1 or 3), when given,
    resize and convert the images; otherwise they keep their stored size and colours.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), not {channels!r}")
    if image_size is not None:
        check_side(image_size, "image_size")
    name = resolve_dataset(name, root)
    if name.startswith("folder:"):
        return _load_folder(name, split, image_size, channels, val_fraction, seed)
    check_dataset(name)
    if split not in ("train", "test"):
        raise DataError(f"{name} has a 'train' and a 'test' split, not {split!r}")
    images, labels, classes = _LOADERS[name](name, split, root, download)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{name} {split}: labels run outside 0..{len(classes) - 1}; the files are corrupt: replace them")
    images = _fit_arrays(torch.from_numpy(np.ascontiguousarray(images)), channels, image_size)
    return ArrayDataset(images, torch.from_numpy(labels.astype(np.int64)), classes, name)


def load_image(
    path: str | Path | BinaryIO | Image.Image, channels: int | None, image_size: int | None, resize_to: int | None = None
) -> torch.Tensor:
    """Decode one image file of any mode into a uint8 tensor (channels, image_size, image_size).

    ``path`` may also be an open binary file (an upload, say) or a PIL image. Transparent pixels are put on white,
    16-bit and float images are scaled to 8 bits, the EXIF rotation is applied, and resizing is
    antialiased (bilinear). ``None`` keeps the stored size, or the image's own colours (1 channel
    if grayscale, else 3). With ``resize_to``, the image keeps its proportions instead: torchvision's
    evaluation preprocessing, shorter side resized to ``resize_to``, then the centre ``image_size``
    square cropped (what its published weights were measured with).
    """
    if resize_to is not None:
        from torchvision.transforms.functional import center_crop, resize  # what torchvision's presets call

        if image_size is None or resize_to < image_size:
            raise DataError(f"a centre crop of {image_size} needs a resize to at least that, not {resize_to}")
        image = check_proportions(load_image(path, channels, None), path)
        return center_crop(resize(image, [resize_to], antialias=True), [image_size])
    with _opened(path) as img:
        if image_size is not None and img.format == "JPEG":
            # libjpeg can decode at 1/2, 1/4 or 1/8 scale, never below the size asked for: a phone
            # photo shrunk to 224 decodes about four times faster, and the resize below still antialiases.
            img.draft(None, (image_size, image_size))
        img = _upright(img, channels)
    if image_size is not None:
        # Pillow widens the bilinear kernel when shrinking: that is the antialiasing.
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return _to_tensor(img)


MAX_ASPECT_RATIO = 32  # wider than any panorama a phone takes


def check_proportions(image: _ImageT, path: str | Path | BinaryIO | Image.Image) -> _ImageT:
    """``image`` (a (C, H, W) tensor or a PIL image), unless it is too thin for its shorter side to be
    resized to a network's input: a 12000x1 PNG of 93 bytes would become 256 x 3,072,000 pixels."""
    width, height = image.size if isinstance(image, Image.Image) else image.shape[:-3:-1]
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        name = _image_name(path)
        raise DataError(f"{name} is {width}x{height} pixels, its longer side more than {MAX_ASPECT_RATIO} times its "
                        "shorter: too thin to resize the shorter side to the network's input")
    return image


def load_random_crop(
    path: str | Path, channels: int | None, size: int, seed: int, scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """torchvision's RandomResizedCrop of the image as stored, drawn from ``seed``: uint8 (channels, size, size).

    The box (area a fraction in ``scale`` of the whole image, aspect ratio in ``ratio``, in pixels)
    is chosen by torchvision's own ``RandomResizedCrop.get_params`` under ``torch.manual_seed(seed)``,
    so the crop is the one torchvision would cut with that seed, whichever process decodes it.
    A JPEG much larger than the box needs is decoded at 1/2, 1/4 or 1/8 scale, the box scaled with it.
    """
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.functional import resized_crop

    with _opened(path) as img:
        turned = img.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap the sides
        width, height = img.size[::-1] if turned else img.size
        with _seeded(seed):
            # get_params reads only the shape: an expanded view gives it one without allocating the image.
            box = RandomResizedCrop.get_params(torch.empty(1, 1, 1).expand(1, height, width), list(scale), list(ratio))
        if img.format == "JPEG":
            shrink = max(1.0, min(box[2], box[3]) / size)  # never decode the box below ``size`` pixels
            need = (math.ceil(width / shrink), math.ceil(height / shrink))
            img.draft(None, need[::-1] if turned else need)
        img = _upright(img, channels)
    sx, sy = img.width / width, img.height / height
    top, left, h, w = round(box[0] * sy), round(box[1] * sx), max(1, round(box[2] * sy)), max(1, round(box[3] * sx))
    return _to_tensor(resized_crop(img, top, left, h, w, [size, size], antialias=True))


def load_jitter_crop(path: str | Path, channels: int | None, size: int, seed: int, sides: tuple[int, int]) -> torch.Tensor:
    """The 2015 paper's scale augmentation, drawn from ``seed``: uint8 (channels, size, size).

    The image is resized so that its shorter side is a whole number drawn uniformly from ``sides``
    (256 to 480 in the paper), then a ``size`` square is cut at a uniformly random place
    (torchvision's ``Resize`` and ``RandomCrop``). A JPEG far larger is decoded at a reduced scale.
    """
    from torchvision.transforms import RandomCrop
    from torchvision.transforms.functional import crop, resize

    with _seeded(seed):
        side = int(torch.randint(sides[0], sides[1] + 1, ()))
        with _opened(path) as img:
            if img.format == "JPEG":
                img.draft(None, (side, side))  # both sides stay at least ``side``
            img = check_proportions(_upright(img, channels), path)
        img = resize(img, [side], antialias=True)
        top, left, h, w = RandomCrop.get_params(img, (size, size))
    return _to_tensor(crop(img, top, left, h, w))


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torch's CPU generator seeded with ``seed`` inside, as it was outside: torchvision's random
    transforms then draw what they would after ``torch.manual_seed(seed)``, without that call's
    costly seeding of every GPU."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


@contextmanager
def _opened(path: str | Path | BinaryIO | Image.Image) -> Iterator[Image.Image]:
    """An image file opened lazily (size and format known, pixels not yet decoded); any failure to read
    it, here or while the caller decodes it, becomes one ``DataError`` that names the file.
    A PIL image comes as a copy, which the caller may turn upright without touching the original."""
    if isinstance(path, Image.Image):
        yield path.copy()
        return
    if isinstance(path, (str, Path)):
        path = Path(path)
        if path.is_dir():
            raise DataError(f"{path} is a folder, not an image: pass the images in it as a list, "
                            f"e.g. resnetlab.data.image_files({str(path)!r})")
        if not path.is_file():
            raise DataError(f"{path} does not exist or is not a file")
    name = _image_name(path)
    # A file in a folder can be left out of it; an open file (an upload) can only be sent again.
    advice = "remove it or re-save it as PNG or JPEG" if isinstance(path, Path) else "re-save it as PNG or JPEG"
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 megapixels, which phones' largest photos pass; it refuses twice that (below).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path, formats=IMAGE_FORMATS)
        with opened as img:
            yield img
    except Image.DecompressionBombError:  # a PNG or JPEG already: too many pixels, whatever the format
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise DataError(f"{name} has more pixels than Pillow opens from a file it cannot trust ({limit:,}); "
                        "resize it first") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = str(err) if isinstance(path, Path) else str(err).replace(f" {path!r}", "")  # not "<_io.BytesIO ...>"
        raise DataError(f"{name} is not a readable image ({reason}); {advice}") from None


def _image_name(image: str | Path | BinaryIO | Image.Image) -> str | Path:
    """How messages name an image: its path, an open file's ``name`` (a file on disk's path; an upload's
    file name, where the server sets one), else "the image"."""
    if isinstance(image, (str, Path)):
        return image
    name = getattr(image, "name", None)
    return name if isinstance(name, str) and name else "the image"


def _upright(img: Image.Image, channels: int | None) -> Image.Image:
    """Decode an opened image upright (EXIF rotation applied), transparency on white, in L or RGB.

    ``channels`` None keeps the image's own colours: L if grayscale, else RGB.
    """
    img.load()  # decode now, so a truncated file fails inside _opened, with its name
    gray = img.mode in _GRAY_MODES
    # Phones store the rotation in EXIF; without this their photos arrive sideways.
    ImageOps.exif_transpose(img, in_place=True)
    img = _flatten_mode(img)
    # convert() copies even to the same mode: the copy outlives the file, which closing destroys.
    return img.convert("L" if (channels or (1 if gray else 3)) == 1 else "RGB")


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 (C, H, W) from an L or RGB image."""
    tensor = torch.from_numpy(np.array(img))
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def _flatten_mode(img: Image.Image) -> Image.Image:
    """Bring exotic modes to ones that convert cleanly to L or RGB."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # convert("L") would clip these at 255 rather than scale them.
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        if img.mode == "F" and values.max() <= 1.0:
            top = 1.0
        return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        # Transparent pixels hold arbitrary colours (often black); white is what the viewer showed.
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return img


def _guess_channels(samples: Samples, sample: int = 64) -> int:
    """1 if every image of an even sample of the folder is grayscale, else 3 (reads headers only)."""
    step = max(1, len(samples) // sample)
    for path, _ in samples[::step]:
        try:
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                if img.mode not in _GRAY_MODES:
                    return 3
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue  # load_image reports a bad file, with its name, when it is reached
    return 1


def _fit_arrays(images: torch.Tensor, channels: int | None, image_size: int | None) -> torch.Tensor:
    """Convert a uint8 batch to the asked channels (PIL's luma weights) and square size (antialiased)."""
    if channels == 1 and images.shape[1] == 3:
        # PIL's convert("L") in integer form (ITU-R 601-2 luma), so both paths give the same pixels.
        weights = torch.tensor([19595, 38470, 7471], dtype=torch.int64).view(1, 3, 1, 1)
        images = (((images.to(torch.int64) * weights).sum(1, keepdim=True) + 0x8000) >> 16).to(torch.uint8)
    elif channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1).contiguous()
    if image_size is not None and images.shape[-2:] != (image_size, image_size):
        # Chunks keep the float copy small when a large set is upscaled.
        images = torch.cat([
            F.interpolate(chunk.float(), (image_size, image_size), mode="bilinear", antialias=True)
            .round().clamp(0, 255).to(torch.uint8)
            for chunk in images.split(4096)
        ])  # fmt: skip
    return images


# ----------------------------------------------------------------------------- finding and fetching


def _cache_dir(name: str) -> Path:
    return Path.home() / ".cache" / "resnetlab" / name


def _search_dirs(name: str, root: str | Path | None) -> list[Path]:
    """The folders to look in, in order (see the module docstring)."""
    dirs = []
    # A dataset's own file named instead of its folder (--data-dir datasets/train_signs.h5); a stale
    # RESNETLAB_DATA is only one more place to look, which must not stop a --data-dir that is right.
    if root and Path(root).expanduser().is_file():
        root = Path(root).expanduser()
        raise DataError(f"--data-dir {root} is a file, not a folder: give its folder, --data-dir {root.parent}")
    for base in (root, os.environ.get("RESNETLAB_DATA")):
        if base:
            base = Path(base).expanduser()
            dirs += [base, base / name]
    dirs += [Path(d) for d in _SYSTEM_DIRS.get(name, ())]
    dirs.append(_cache_dir(name))
    return dirs


_NOTED: set[tuple[str, Path]] = set()


def found_elsewhere(name: str, root: str | Path) -> bool:
    """Whether dataset ``name``, asked for in ``root``, was read from another folder of the search order
    (see ``_note_elsewhere``): ``root`` does not hold it."""
    return (name, Path(root).expanduser()) in _NOTED


def _note_elsewhere(name: str, root: str | Path | None, found: Path) -> None:
    """Say so when a dataset was asked for in ``root`` but found elsewhere in the search order.

    The fallback is right for a shared --data-dir that holds some datasets but not others; said
    aloud, it also catches a mistyped --data-dir, which would otherwise train on the system's copy
    without a word.
    """
    if not root:
        return
    base = Path(root).expanduser()
    if found in (base, base / name) or (name, base) in _NOTED:
        return
    _NOTED.add((name, base))
    why = "" if base.is_dir() else " (no such folder)"
    print(f"note: {name} is not in --data-dir {base}{why}; reading the copy in {found}", file=sys.stderr)


def _how_to_get(name: str, what: str) -> str:
    """The remedies for a missing dataset, as one sentence; ``what`` names the files."""
    ways = ["run `sudo apt-get install dataset-fashion-mnist`"] if name == "fashion-mnist" else []
    ways.append(f"put {what} in --data-dir or $RESNETLAB_DATA")
    if name in _DOWNLOADS:
        ways.append(f"connect to the network so they can be downloaded from {' or '.join(_DOWNLOADS[name][0])}")
    return "To get them, " + ", or ".join(ways) + "."


def _not_found(name: str, root: str | Path | None, what: str) -> DataError:
    looked = ", ".join(str(d) for d in _search_dirs(name, root))
    return DataError(f"{name}: {what} not found (looked in {looked}). {_how_to_get(name, what)}")


def _fetch(name: str, files: Sequence[str], root: str | Path | None) -> Path:
    """Download ``files`` of a named dataset from its first mirror that has them, checking their SHA-256;
    returns their folder."""
    mirrors, checksums = _DOWNLOADS[name]
    dest = Path(root).expanduser() / name if root else _cache_dir(name)
    made = [p for p in (dest, *dest.parents) if not p.exists()]  # deepest first
    for file in files:
        failures: list[tuple[str, OSError | DataError]] = []
        for base_url in mirrors:
            try:
                _download(base_url + file, dest / file, checksums[file])
                break
            except (OSError, DataError) as err:  # URLError and HTTPError are OSErrors too; DataError, a checksum
                failures.append((base_url + file, err))
        else:
            for folder in made:  # made for the download (a mistyped --data-dir's too): empty ones only mislead
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            wrong = [err for _, err in failures if isinstance(err, DataError)]
            if wrong:  # a file came, but not the published one: that says more than another mirror's refusal
                raise wrong[0]
            tried = "; ".join(f"{url} ({_why_not(err)})" for url, err in failures)
            # Every file the dataset needs, its test split's too, not just those this split was fetching.
            needed = list(checksums)
            needed = ", ".join(needed[:-1]) + " and " + needed[-1] if len(needed) > 1 else needed[0]
            raise DataError(f"{name}: could not download {file} into {dest}: {tried}. {_how_to_get(name, needed)}")
    return dest


def _why_not(err: OSError) -> object:
    """A failed request's reason as a user reads it: "HTTP Error 403: Forbidden", "[Errno 101] Network is unreachable"."""
    if isinstance(err, urllib.error.HTTPError):
        return err
    return getattr(err, "reason", None) or err  # a URLError's own text wraps its reason in "<urlopen error ...>"


def _download(url: str, dest: Path, sha256: str) -> None:
    """Stream ``url`` to a temporary file, check its SHA-256, then rename it into place."""
    from tqdm.auto import tqdm  # a widget in Jupyter, where stderr is no terminal; imported here, as few commands download

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise DataError(
                f"{url}: the download's SHA-256 is {digest.hexdigest()}, not the published {sha256}; "
                "it was corrupted or changed on the way. Run again, or fetch the file yourself and put it in --data-dir"
            )
        os.replace(tmp, dest)  # atomic: a crash never leaves a half file under the real name
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped when it is gzip (by content, not by name)."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path} cannot be read ({err}); it is truncated or corrupt: delete it and get it again"
        ) from None


# ----------------------------------------------------------------------------- MNIST and Fashion-MNIST

# IDX type codes (the third magic byte); values are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format): 0, 0, type code, ndim, then ndim big-endian uint32 sizes.

    The file is read as a stream and never past what its header promises, so a damaged or hostile
    gzip cannot inflate into more memory than the images it claims to hold.
    """
    try:
        with path.open("rb") as raw_file:
            gz = raw_file.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES:
                raise DataError(f"{path} is not an IDX file (its magic number is {head.hex() or 'missing'})")
            dtype, ndim = np.dtype(_IDX_DTYPES[head[2]]), head[3]
            sizes = f.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise DataError(f"{path} is truncated inside its header; delete it and get it again")
            shape = [int(d) for d in np.frombuffer(sizes, ">u4", ndim)]
            expected = math.prod(shape) * dtype.itemsize
            body = _read_at_most(f, expected + 1)  # one byte more tells a longer file from a whole one
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} cannot be read ({err}); it is truncated or corrupt: delete it and get it again") from None
    if len(body) != expected:
        raise DataError(
            f"{path} holds {4 + 4 * ndim + len(body)}{'+' if len(body) > expected else ''} bytes but its header "
            f"{shape} promises {4 + 4 * ndim + expected}; it is truncated or corrupt: delete it and get it again"
        )
    return np.frombuffer(body, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _read_at_most(f: BinaryIO, limit: int, chunk: int = 1 << 24) -> bytes:
    """Up to ``limit`` bytes of ``f``, read in chunks so that memory follows what the file really holds."""
    parts = []
    while limit > 0 and (part := f.read(min(limit, chunk))):
        parts.append(part)
        limit -= len(part)
    return b"".join(parts)


def _load_idx(name: str, split: str, root: str | Path | None, download: bool) -> _Arrays:
    prefix = "train" if split == "train" else "t10k"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    paths = _locate(_search_dirs(name, root), [(s, s + ".gz") for s in stems])
    if paths is None:
        if not download:
            raise _not_found(name, root, " and ".join(s + ".gz" for s in stems))
        folder = _fetch(name, [s + ".gz" for s in stems], root)
        paths = [folder / (s + ".gz") for s in stems]
    _note_elsewhere(name, root, paths[0].parent)
    images, labels = _read_idx(paths[0]), _read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{paths[0]} holds {images.dtype} of shape {images.shape}, not uint8 images (N, H, W)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{paths[1]} holds {labels.shape} labels for the {len(images)} images of {paths[0]}")
    if labels.dtype.kind not in "iu":  # float labels would be truncated to classes without a word
        raise DataError(f"{paths[1]} holds {labels.dtype} labels, not whole numbers; it is not a labels file")
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(d) for d in range(10)]
    return images[:, None], labels, list(classes)


def _locate(dirs: Sequence[Path], wanted: Sequence[Sequence[str]]) -> list[Path] | None:
    """The first folder holding every wanted file, each given as alternative names."""
    for d in dirs:
        found = [next((d / n for n in names if (d / n).is_file()), None) for names in wanted]
        if all(found):
            return found
    return None


# ----------------------------------------------------------------------------- CIFAR-10 and CIFAR-100


class _CifarFormat(NamedTuple):
    folder: str  # what the archive unpacks to
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str  # file with the class names
    label_bytes: int  # binary records: label bytes before the 3072 pixels (fine label last); 0 = pickles
    names_key: bytes = b""  # pickles: key of the class names in the meta dict
    labels_key: bytes = b""  # pickles: key of the labels in a batch dict


_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_FORMATS = {
    "cifar10": (
        _CifarFormat("cifar-10-batches-py", "cifar-10-python.tar.gz", _CIFAR_BATCHES, ("test_batch",),
                     "batches.meta", 0, b"label_names", b"labels"),
        _CifarFormat("cifar-10-batches-bin", "cifar-10-binary.tar.gz", tuple(b + ".bin" for b in _CIFAR_BATCHES),
                     ("test_batch.bin",), "batches.meta.txt", 1),
    ),
    "cifar100": (
        _CifarFormat("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
                     "meta", 0, b"fine_label_names", b"fine_labels"),
        _CifarFormat("cifar-100-binary", "cifar-100-binary.tar.gz", ("train.bin",), ("test.bin",),
                     "fine_label_names.txt", 2),
    ),
}  # fmt: skip


def _load_cifar(name: str, split: str, root: str | Path | None, download: bool) -> _Arrays:
    formats = _CIFAR_FORMATS[name]
    dirs = _search_dirs(name, root)
    for d in dirs:
        for fmt in formats:
            if (d / fmt.folder).is_dir():
                _note_elsewhere(name, root, d)
                return _read_cifar(d / fmt.folder, fmt, split)
        for fmt in formats:
            if (d / fmt.archive).is_file():
                _note_elsewhere(name, root, d)
                return _read_cifar(_extract(d / fmt.archive, fmt.folder, _cache_dir(name)), fmt, split)
    if not download:
        raise _not_found(name, root, f"{formats[0].archive} (or its {formats[0].folder} folder)")
    archive = _fetch(name, [formats[0].archive], root) / formats[0].archive
    return _read_cifar(_extract(archive, formats[0].folder, _cache_dir(name)), formats[0], split)


def _read_cifar(folder: Path, fmt: _CifarFormat, split: str) -> _Arrays:
    read = _read_cifar_binary if fmt.label_bytes else _read_cifar_pickle
    files = [folder / f for f in (*(fmt.train if split == "train" else fmt.test), fmt.meta)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}: it is incomplete; extract {fmt.archive} again")
    *batches, meta = files
    parts = [read(f, fmt) for f in batches]
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    if fmt.label_bytes:
        text = _read_bytes(meta).decode("utf-8", "replace")
        classes = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = _unpickle(meta).get(fmt.names_key)
        if not isinstance(names, list):
            raise DataError(f"{meta} has no {fmt.names_key.decode()} list; it is not CIFAR's meta file")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return images, labels, classes


def _read_cifar_binary(path: Path, fmt: _CifarFormat) -> tuple[np.ndarray, np.ndarray]:
    """Records of ``label_bytes`` label bytes then 3072 pixels (1024 red, 1024 green, 1024 blue)."""
    size = fmt.label_bytes + 3072
    raw = np.frombuffer(_read_bytes(path), np.uint8)
    if raw.size == 0 or raw.size % size:
        raise DataError(
            f"{path} holds {raw.size} bytes, not whole {size}-byte CIFAR records; it is truncated or corrupt"
        )
    records = raw.reshape(-1, size)
    return records[:, fmt.label_bytes :], records[:, fmt.label_bytes - 1].astype(np.int64)


def _read_cifar_pickle(path: Path, fmt: _CifarFormat) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data, labels = batch.get(b"data"), batch.get(fmt.labels_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path} has no uint8 'data' array of 3072-pixel rows; it is not a CIFAR batch")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{path} has {labels.size} {fmt.labels_key.decode()} for {len(data)} images")
    return data, labels


_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and plain containers, and nothing else.

    A pickle names the functions that rebuild it; a planted file could name os.system.
    Refusing every other name means nothing in the file is ever run.
    """

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which CIFAR files never do") from None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the originals are Python 2 pickles with byte-string keys.
            result = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as err:  # a damaged pickle can fail in many ways; all mean the same to the user
        raise DataError(
            f"{path} is not a valid CIFAR python file ({err}); it is corrupt or was tampered with: "
            "delete it and get the official archive again"
        ) from None
    if not isinstance(result, dict):
        raise DataError(f"{path} holds a {type(result).__name__}, not a CIFAR dict")
    return result


def _extract(archive: Path, folder: str, fallback: Path) -> Path:
    """Unpack a CIFAR archive next to itself (or into ``fallback`` if that is read-only); returns the folder.

    Refuses links, devices, absolute paths and '..' before writing anything.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _safe_members(tar, archive)
            for dest in (archive.parent, fallback):
                if (dest / folder).is_dir():  # unpacked before, or just now by another process
                    return dest / folder
                unpacked = _unpack_into(tar, members, archive, folder, dest)
                if unpacked is not None:
                    return unpacked
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        # gzip reports a damaged stream as an OSError (BadGzipFile) or an EOFError, tarfile as a TarError.
        raise DataError(f"{archive} cannot be unpacked ({err}); it is truncated or corrupt: delete it and get it again")
    raise DataError(f"{archive}: no writable folder to unpack it into (tried {archive.parent} and {fallback})")


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Every entry of ``tar``, once none of them is an absolute path, goes up through '..', or is a link or device."""
    members = tar.getmembers()
    for m in members:
        if m.name.startswith("/") or ".." in PurePosixPath(m.name).parts or not (m.isfile() or m.isdir()):
            raise DataError(
                f"{archive} contains an unsafe entry {m.name!r} (absolute path, '..', link or device); "
                "it is not an official CIFAR archive: delete it and download the original"
            )
    return members


def _unpack_into(
    tar: tarfile.TarFile, members: list[tarfile.TarInfo], archive: Path, folder: str, dest: Path
) -> Path | None:
    """``dest / folder``, unpacked from ``tar``; None, with nothing written, where ``dest`` is read-only.

    The archive goes into a new hidden folder in ``dest`` and its ``folder`` is then renamed into place:
    a rename is atomic, so no half-unpacked folder is ever found.
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    except OSError:
        return None
    try:
        # The "data" filter (Python >= 3.12, and security releases before) is a second guard.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp, members=members, **safe)
        if not (tmp / folder).is_dir():
            raise DataError(f"{archive} has no {folder}/ folder; it is not the CIFAR archive its name says")
        try:
            os.replace(tmp / folder, dest / folder)
        except OSError as err:
            # Another process (torchrun starts one per GPU) renamed its whole copy into place first.
            if not (dest / folder).is_dir():
                raise DataError(f"{archive} was unpacked, but not renamed to {dest / folder} ({err}): "
                                "move aside whatever is there and try again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / folder


# ----------------------------------------------------------------------------- SIGNS


def _load_signs(name: str, split: str, root: str | Path | None, download: bool) -> _Arrays:
    """The deeplearning.ai SIGNS files; they have no public download, so ``download`` changes nothing."""
    file = f"{split}_signs.h5"
    found = _locate(_search_dirs(name, root), [(file,)])
    if found is None:
        # The course's notebooks read datasets/ beside themselves; pointed to, never read unasked.
        here = f" There is a datasets/{file} here: give --data-dir datasets." if (Path("datasets") / file).is_file() else ""
        raise DataError(
            f"signs: {file} not found (looked in {', '.join(map(str, _search_dirs(name, root)))}). "
            "The SIGNS files (train_signs.h5, test_signs.h5) come with the deeplearning.ai course "
            "'Convolutional Neural Networks' (its datasets/ folder) and cannot be downloaded here; "
            f"put them in --data-dir or $RESNETLAB_DATA.{here}"
        )
    import h5py  # here: only SIGNS is stored as HDF5, and every command loads this module

    path = found[0]
    _note_elsewhere(name, root, path.parent)
    keys = [f"{split}_set_x", f"{split}_set_y", "list_classes"]
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            if missing:
                raise DataError(f"{path} has no {', '.join(missing)} (it has {', '.join(f.keys()) or 'nothing'}); "
                                f"a SIGNS file holds {', '.join(keys)}: rename its datasets to those")
            images, labels, names = (np.asarray(f[k]) for k in keys)
        # The course's files number their classes; others may name them.
        classes = [c.decode() if isinstance(c, bytes) else str(int(c)) for c in names.reshape(-1).tolist()]
    except (OSError, ValueError, TypeError) as err:
        raise DataError(
            f"{path} is not a SIGNS file ({err}); get the original train_signs.h5 / test_signs.h5"
        ) from None
    if labels.ndim == 2 and min(labels.shape) > 1:  # (1, N) and (N, 1) are the course's own layouts
        # A row an image (the notebook's Y.T), or a column an image, as its convert_to_one_hot gives them.
        axis = 1 if labels.shape[0] == len(images) else 0
        raise DataError(f"{path}: {split}_set_y is one-hot {labels.shape}; store the class numbers, "
                        f"one per image (y.argmax(axis={axis})), as the course's files do")
    labels = labels.reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(labels) != len(images):
        raise DataError(f"{path}: {split}_set_x is {images.dtype} {images.shape} with {len(labels)} labels, "
                        "not uint8 (N, H, W, 3) images with one label each")  # fmt: skip
    if not np.array_equal(labels, np.round(labels)):
        raise DataError(f"{path}: {split}_set_y holds {labels[labels != np.round(labels)][0]}; labels are class numbers")
    if labels.size and labels.max() >= len(classes):
        raise DataError(f"{path}: list_classes has {len(classes)} entries but {split}_set_y has labels up to "
                        f"{labels.max():g}: give list_classes one entry a class, or correct the labels")
    return images.transpose(0, 3, 1, 2), labels.astype(np.int64), classes


_LOADERS: dict[str, Callable[[str, str, str | Path | None, bool], _Arrays]] = {
    "fashion-mnist": _load_idx,
    "mnist": _load_idx,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "signs": _load_signs,
}


def class_folder_names(classes: Sequence[str]) -> list[str]:
    """The folders ``export_folder`` writes classes into: ``INDEX-NAME``, a slash in a name a dash."""
    width = len(str(len(classes) - 1))
    return [f"{i:0{width}d}-{name.replace('/', '-')}" for i, name in enumerate(classes)]


def export_folder(splits: dict[str, ArrayDataset], out: str | Path) -> Path:
    """Write datasets held in memory as an image folder: ``out/SPLIT/CLASS/N.png`` for each split.

    Class folders are named ``INDEX-NAME`` (a slash in a name becomes a dash), so that their sorted
    order is the dataset's class order and ``folder:OUT`` gives every image its label. The folder is
    written beside ``out`` and renamed when complete; an existing ``out`` is never written into.
    """
    out = Path(out).expanduser()
    if out.exists():
        raise DataError(f"{out} already exists; give a new folder to export into")
    train = splits.get("train")
    if train is not None:
        missing = sorted(set(range(len(train.classes))) - set(train.labels.tolist()))
        if missing:  # a folder dataset needs images in every class folder
            names = ", ".join(class_folder_names(train.classes)[i] for i in missing[:5])
            raise DataError(f"the exported training images would hold none of class {names}"
                            f"{', ...' if len(missing) > 5 else ''}: export more (--limit-train)")
    # A new folder of this process's own, so that nothing of the user's (an "OUT.partial", say) is touched.
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    partial.mkdir(parents=True)
    try:
        for split, ds in splits.items():
            folders = [partial / split / name for name in class_folder_names(ds.classes)]
            for folder in folders:
                folder.mkdir(parents=True)
            for n, (image, label) in enumerate(zip(ds.images, ds.labels.tolist())):
                pixels = image.permute(1, 2, 0).numpy()  # (H, W, C), as Pillow takes them
                Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(folders[label] / f"{n}.png")
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- ImageNet

# ImageNet cannot be downloaded without an account at image-net.org; these are the files it gives.
IMAGENET_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_val.tar", "ILSVRC2012_img_train.tar")


def _not_a_folder(path: Path) -> DataError:
    if path.exists():
        return DataError(f"{path} is not a folder; give folder:PATH with one subfolder of images per class")
    return DataError(f"{path} does not exist; give folder:PATH with one subfolder of images per class (for a run whose "
                     "folder has moved: train --resume RUN --data-dir NEW, eval RUN --data-dir NEW)")


def check_dataset(spec: str) -> str:
    """``spec`` checked without reading any data, as a run records it: ``folder:PATH`` must be a folder
    (and comes back with PATH absolute), any other name one of ``DATASETS`` or ``imagenet``."""
    if spec.startswith("folder:"):
        folder = Path(spec.removeprefix("folder:")).expanduser()
        if not folder.is_dir():
            raise _not_a_folder(folder)
        return f"folder:{folder.absolute()}"
    if spec not in (*DATASETS, "imagenet"):
        raise DataError(f"unknown dataset {spec!r}: choose one of {', '.join(DATASETS)}, imagenet, or folder:PATH")
    return spec


def resolve_dataset(name: str, root: str | Path | None = None) -> str:
    """``imagenet`` becomes ``folder:DIR``, its folders prepared from the archives (``prepare_imagenet``);
    ``folder:PATH`` gets an absolute PATH, so that a run's config names its folder from wherever it
    is read (``eval``, ``--resume``); other names are returned as they are."""
    if name == "imagenet":
        return f"folder:{prepare_imagenet(root)}"
    if name.startswith("folder:"):
        return f"folder:{Path(name.removeprefix('folder:')).expanduser().absolute()}"
    return name


def prepare_imagenet(root: str | Path | None = None) -> Path:
    """The ImageNet 2012 folder, with train/ and val/ holding one subfolder per WordNet ID.

    Looked for where the other datasets are (``root``, ``$RESNETLAB_DATA``, the cache). A folder with
    the official archives (``IMAGENET_ARCHIVES``) is prepared once, by torchvision's own ImageNet
    functions, which check each archive's MD5 and sort the validation images into class folders
    with the devkit's ground truth. Each split is extracted beside its final name and renamed when
    complete, so an interrupted preparation starts that split again instead of using half of it.
    The training archive is 138 GB: extracting it takes hours and as much disk again.
    """
    dirs = _search_dirs("imagenet", root)
    for folder in dirs:
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            return folder
    archives = next((d for d in dirs if any((d / a).is_file() for a in IMAGENET_ARCHIVES)), None)
    if archives is None:
        raise DataError(
            f"imagenet: neither train/ and val/ folders nor the archives {', '.join(IMAGENET_ARCHIVES)} were found "
            f"(looked in {', '.join(map(str, dirs))}). ImageNet needs an account: download the archives from "
            "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php into --data-dir or $RESNETLAB_DATA"
        )
    try:
        import scipy.io  # noqa: F401  (torchvision reads the devkit's meta.mat with it)
    except ImportError:
        raise DataError("reading ImageNet's devkit needs scipy: pip install scipy (or 'resnetlab[imagenet]')") from None
    from torchvision.datasets import imagenet

    try:
        if not (archives / imagenet.META_FILE).is_file():
            imagenet.parse_devkit_archive(archives)
        for split, parse in (("val", imagenet.parse_val_archive), ("train", imagenet.parse_train_archive)):
            if not (archives / split).is_dir():
                partial = archives / f"{split}.partial"
                shutil.rmtree(partial, ignore_errors=True)
                print(f"imagenet: extracting the {split} images into {archives / split} (once)", file=sys.stderr)
                parse(archives, folder=partial.name)
                partial.rename(archives / split)
    except RuntimeError as err:  # torchvision's words for a missing or corrupt archive (wrong MD5)
        raise DataError(f"imagenet: {err}") from None
    return archives


# ----------------------------------------------------------------------------- image folders


def _scan(folder: Path) -> dict[str, list[str]]:
    """Class name -> sorted image files under it (subfolders included, hidden entries skipped)."""
    return {c: image_files(folder / c) for c in _class_names(folder)}


def _path_order(path: str) -> list[str]:
    """Sort key that orders file paths as ``pathlib.Path`` does (folder by folder), without making a Path of each."""
    return path.split(os.sep)


def _class_names(folder: Path) -> list[str]:
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    for name in names:
        try:
            name.encode()
        except UnicodeEncodeError:  # bytes no character has: the name could not go into config.json or a report
            shown = name.encode(errors="surrogateescape").decode(errors="replace")
            raise DataError(f"{folder}: the class folder {shown!r} has a name that is not text (UTF-8); rename it") from None
    return names


def image_files(folder: Path | str) -> list[str]:
    """The image files under ``folder``, its subfolders included, hidden ones skipped, in pathlib's order."""
    return sorted(_image_files(folder), key=_path_order)


def _image_files(top: Path | str) -> Iterator[str]:
    """Image files under ``top``, its subfolders included, hidden ones skipped.

    ``os.scandir`` knows which entries are folders without a stat per file: ImageNet's 1.28 million
    files are listed several times faster than with ``Path.rglob``.
    """
    for entry in os.scandir(top):
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _image_files(entry.path)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
            yield entry.path


HELD_OUT_FOLDERS = ("val", "validation", "valid", "test")  # torchvision's name first, then Keras's and others'


def own_held_out(path: Path) -> Path | None:
    """PATH's val/ (or validation/, valid/, test/) folder when PATH splits its images itself (train/ beside
    it); else None."""
    held_out = next((path / s for s in HELD_OUT_FOLDERS if (path / s).is_dir()), None)
    return held_out if (path / "train").is_dir() else None


def _load_folder(
    spec: str, split: str, image_size: int | None, channels: int | None, val_fraction: float, seed: int
) -> FolderDataset:
    """One split of ``folder:PATH``: PATH's own train/ and val/ (or test/) where it has them, else a seeded
    ``val_fraction`` of each class held out (see ``get_dataset``)."""
    path = Path(spec.removeprefix("folder:")).expanduser()
    if split not in ("train", "val", "test"):
        raise DataError(f"{spec}: the splits are 'train' and 'val' (or 'test'), not {split!r}")
    if not path.is_dir():
        raise _not_a_folder(path)
    held_out = own_held_out(path)
    if held_out is not None:
        top = path  # the dataset's own folder, where torchvision's ImageNet keeps its meta.bin
        classes, by_class = _split_by_folders(path, held_out, split)
    else:
        if not 0 <= val_fraction < 1:
            raise DataError(f"the validation fraction must be in [0, 1), not {val_fraction}")
        top = _folder_of_classes(path)
        classes, by_class = _split_by_fraction(spec, top, split, val_fraction, seed)
    label = {c: i for i, c in enumerate(classes)}
    samples = [(p, label[c]) for c in sorted(by_class) for p in by_class[c]]
    return FolderDataset(samples, _imagenet_names(top, classes), image_size, channels, spec)


def _split_by_folders(path: Path, held_out: Path, split: str) -> tuple[list[str], dict[str, list[str]]]:
    """The classes (train/'s subfolders) and each class's files in ``split``, for a PATH with train/ and
    ``held_out`` (its val/ or test/) of its own."""
    train = path / "train"
    if split == "train":
        by_class = _scan(train)
        return _check_classes(train, by_class), by_class
    # Listing every training file just to name the classes would cost ImageNet half a minute.
    classes = _require_classes(train, _class_names(train))
    by_class = _scan(held_out)
    unknown = sorted(set(by_class) - set(classes))
    if unknown:
        raise DataError(f"{held_out} has classes missing from {train}: {', '.join(unknown)}; "
                        "add them to train/ or remove them")  # fmt: skip
    if not any(by_class.values()):
        raise DataError(f"{held_out} holds no images: add some, in the class subfolders train/ has")
    return classes, by_class


def _folder_of_classes(path: Path) -> Path:
    """The folder whose subfolders are the classes: PATH, or PATH/train when that is all PATH holds
    (held-out images are then drawn from train/ as from any folder of classes)."""
    # Split folders without their partner would otherwise be taken for classes named "train" or "val".
    # (A "train" beside other classes, as in cars, buses and trains, is a class.)
    subfolders = set(_class_names(path))
    if subfolders == {"train"}:
        return path / "train"
    if subfolders and subfolders <= set(HELD_OUT_FOLDERS):
        raise DataError(f"{path} has {'/ and '.join(sorted(subfolders))}/ but no train/: put the training images "
                        f"in {path / 'train'}, one subfolder a class")
    return path


def _split_by_fraction(
    spec: str, folder: Path, split: str, val_fraction: float, seed: int
) -> tuple[list[str], dict[str, list[str]]]:
    """The classes of ``folder`` and each class's files in ``split``, ``val_fraction`` of each class held out."""
    by_class = _scan(folder)
    classes = _check_classes(folder, by_class)
    picked = {}
    for c, files in by_class.items():
        train_files, held = _split_class(files, c, val_fraction, seed)
        picked[c] = train_files if split == "train" else held
    if not any(picked.values()):  # every class has images, but the fraction took all of them or none
        if split == "train":  # each class has one image, and a fraction over 0.5 rounds to holding it out
            raise DataError(f"{spec}: validation fraction {val_fraction} holds out every class's only image, so the "
                            "training split would be empty: give a fraction of 0.5 or less, or add images")
        if val_fraction == 0:
            raise DataError(f"{spec}: nothing is held out for testing (validation fraction 0)")
        raise DataError(f"{spec}: no class has two images, so none can be held out for testing: add images")
    return classes, picked


def _imagenet_names(folder: Path, wnids: list[str]) -> list[str]:
    """The class names torchvision gives ImageNet's 1000 classes ("tench", ...) where ``folder`` is
    ImageNet as torchvision prepares it (its meta.bin lists the same WordNet IDs); else ``wnids``."""
    if len(wnids) != 1000:
        return wnids
    from torchvision.datasets import imagenet

    meta = folder / imagenet.META_FILE
    if not meta.is_file():
        return wnids
    try:
        wnid_to_classes, _ = torch.load(meta, weights_only=True)
    except (OSError, RuntimeError, EOFError, TypeError, ValueError, pickle.UnpicklingError):  # not torchvision's file
        return wnids
    if sorted(wnid_to_classes) != wnids:
        return wnids
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _check_classes(folder: Path, by_class: dict[str, list[str]]) -> list[str]:
    """The class names, once every class folder is known to hold images."""
    _require_classes(folder, list(by_class))
    empty = [c for c, files in by_class.items() if not files]
    if empty:
        raise DataError(f"{folder}: class folder(s) {', '.join(empty)} hold no images "
                        f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove them")  # fmt: skip
    return sorted(by_class)


def _require_classes(folder: Path, names: list[str]) -> list[str]:
    """``names``, the class folders of ``folder``, unless it has none."""
    if not names:
        raise DataError(f"{folder} has no subfolders; put each class's images in a subfolder named after the class")
    return names


def _split_class(files: list[str], name: str, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) for one class: a seeded shuffle, then the last ``val_fraction`` held out.

    Seeding with the class name keeps each class's split fixed when other classes change.
    Every class with two or more images gets at least one held-out image, and keeps one for training.
    """
    shuffled = list(files)
    random.Random(f"{seed}/{name}").shuffle(shuffled)
    held = round(len(shuffled) * val_fraction)
    if val_fraction > 0 and len(shuffled) > 1:
        held = min(max(held, 1), len(shuffled) - 1)
    cut = len(shuffled) - held
    return sorted(shuffled[:cut], key=_path_order), sorted(shuffled[cut:], key=_path_order)


IN_MEMORY_BYTES = 4 << 30  # folders whose decoded pixels fit in this stay in memory; bigger ones stream
FOLDER_IMAGE_SIZE = 64  # the side folder images are resized to unless told
IMAGENET_IMAGE_SIZE = 224  # the same with a scaling recipe (imagenet, he2015-imagenet)


def load_split(dataset: str, split: str, data_dir: str | None = None, image_size: int | None = None,
               limit: int | None = None, seed: int = 0, resize_to: int | None = None, on_disk: bool = False,
               whole: bool = False, channels: int | None = None) -> ArrayDataset | FolderDataset:
    """One split cut to ``limit`` examples: uint8 arrays in memory, or a big image folder left on disk.

    ``channels`` (1 or 3) converts the images; None keeps their own (a folder's sample decides).
    ``whole`` takes every image of a folder that has no train/ and val/ of its own, rather than the
    tenth a training run holds out of it (of a named dataset, it takes the training split).
    For folders (``folder:PATH``, ``imagenet``) alone: ``image_size`` defaults to ``FOLDER_IMAGE_SIZE``,
    as batches need one size and photos rarely share one; ``resize_to`` keeps each image's proportions,
    shorter side resized to it, centre cropped to ``image_size``, and then leaves a training split on
    disk, for crops from the stored images; ``on_disk`` leaves any folder on disk, however small.
    """
    dataset = resolve_dataset(dataset, data_dir)  # imagenet is a folder too
    if limit is not None and limit <= 0:
        # The limits are --limit-train and --limit-test: a ValueError naming the flag, as the CLI's own checks.
        raise ValueError(f"--limit-{split} must be positive, got {limit}")
    if not dataset.startswith("folder:"):
        ds = get_dataset(dataset, "train" if whole else split, root=data_dir, image_size=image_size, seed=seed,
                         channels=channels)
        return ds if limit is None else ArrayDataset(ds.images[:limit], ds.labels[:limit], ds.classes, ds.name)

    if image_size is None:
        image_size = FOLDER_IMAGE_SIZE
    if whole:
        found = _whole_folder(dataset, data_dir, image_size, seed, channels)
    else:
        found = get_dataset(dataset, split, root=data_dir, image_size=image_size, seed=seed, channels=channels)
    # The same images, decoded with resize_to (which get_dataset does not take).
    ds = FolderDataset(found.samples, found.classes, image_size, found.channels, found.name, resize_to)
    if limit is not None:
        ds = ds.subset(limit, seed)
    cropped = resize_to is not None and split == "train"  # crops are cut from the stored images
    too_big = len(ds) * ds.channels * image_size**2 > IN_MEMORY_BYTES
    return ds if on_disk or cropped or too_big else ds.to_arrays()


def _whole_folder(
    dataset: str, data_dir: str | None, image_size: int, seed: int, channels: int | None
) -> FolderDataset:
    """Every image of ``folder:PATH``: its "train" split with nothing held out."""
    return get_dataset(dataset, "train", root=data_dir, image_size=image_size, seed=seed, channels=channels,
                       val_fraction=0.0)


def folder_sizes(dataset: str, image_size: int | None, recipe: Recipe) -> tuple[int | None, int | None]:
    """The side a dataset is trained at (None: a named dataset's own; a folder's is FOLDER_IMAGE_SIZE unless
    told) and the shorter side its held-out images are resized to before their centre crop (None: squashed to the side).

    Folders trained with scale augmentation are ImageNet's way: 224-pixel crops unless told, and
    held-out images evaluated as torchvision evaluates its ImageNet models, shorter side to 8/7 of
    the crop (256 for 224), then the centre crop.
    """
    if not dataset.startswith("folder:"):
        return image_size, None
    if recipe.scale_crop is None and recipe.scale_jitter is None:
        return FOLDER_IMAGE_SIZE if image_size is None else image_size, None
    size = check_side(IMAGENET_IMAGE_SIZE if image_size is None else image_size, "--image-size")
    return size, round(size / 0.875)


def reload_sizes(dataset: str, config: dict) -> dict:
    """``load_split``'s sizing for reloading a run's data: a folder's training size, held-out resize and
    channels; a named dataset's size alone (--image-size may have resized it; resizing to the size it
    already has leaves it untouched), as it keeps its own colours."""
    if not dataset.startswith("folder:"):
        return {"image_size": config["image_size"]}
    return {"image_size": config["image_size"], "resize_to": config.get("resize_size"), "channels": config["channels"]}


def load_splits(
    dataset: str, data_dir: str | None, limit_train: int | None, limit_test: int | None, seed: int,
    image_size: int | None = None, resize_to: int | None = None, channels: int | None = None,
) -> list[ArrayDataset | FolderDataset]:
    """The training and test splits (see ``load_split``).

    A folder's held-out images take the training images' channels: each split's own sample could
    find a colour image in one and none in the other, and the model takes one channel count.
    """
    dataset = resolve_dataset(dataset, data_dir)  # imagenet is a folder too
    train = load_split(dataset, "train", data_dir, image_size, limit_train, seed, resize_to, channels=channels)
    if dataset.startswith("folder:"):
        channels = train.channels if isinstance(train, FolderDataset) else int(train.images.shape[1])
    return [train, load_split(dataset, "test", data_dir, image_size, limit_test, seed, resize_to, channels=channels)]
