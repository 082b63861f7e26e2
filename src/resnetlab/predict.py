"""Prediction on the user's own images: the top classes a trained run, or published weights, give
image files (``predict_images``, ``iter_predictions``), and the model's preprocessing as a
transform for the user's own pipelines (``Preprocess``).

Images are prepared as the model's evaluation prepares them, and ``views`` averages each image's
scores over test-time views as ``evaluate.evaluate_views`` does: the views and their averaging are
evaluation's, imported from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import nn

from .evaluate import check_views, eval_mode, view_batches, view_probabilities, view_scales
from .loader import normalize

if TYPE_CHECKING:
    from .data import DataError


@dataclass
class Prediction:
    """The top classes for one image."""

    path: str
    classes: list[str]
    probabilities: list[float]

    def ranked(self) -> str:
        """``"Sneaker 91.2%  Sandal 5.0%  ..."``, most likely first."""
        return "  ".join(f"{c} {p:.1%}" for c, p in zip(self.classes, self.probabilities))


ImageFile = str | Path | BinaryIO  # a path, or an open binary file (an upload, say)
Images = ImageFile | Image.Image | torch.Tensor  # what predict_images takes: files, or images already decoded


def predict_images(
    model: nn.Module, config: dict, paths: Images | Iterable[Images], top_k: int = 3,
    device: torch.device | str | None = None, names: Sequence[str] | None = None, views: str | None = None,
    scales: Sequence[int] | None = None,
) -> list[Prediction]:
    """Classify image files with a trained model, preprocessing them exactly as its training data.

    Any size or colour mode is converted to the model's channels and resized to its input size,
    then normalised with the training set's statistics stored in the run's config. A config with
    ``resize_size`` (published weights, see ``pretrained.load_published``, and folders trained with
    scale augmentation) gets torchvision's evaluation preprocessing instead: shorter side resized,
    then the centre cropped to ``image_size``. Each image becomes the tensor ``Preprocess`` gives.

    ``paths`` are image files or open binary files, or one of them alone; a folder is refused (pass
    the images in it, ``data.image_files(folder)``). Images already decoded are taken as ``Preprocess``
    takes them: PIL images, and (C, H, W) tensors (a tensor (N, C, H, W) is N of them). ``names``
    labels the predictions, one an image (default: the paths; "image N", counted from 1, for the others).
    ``top_k`` is at least 1; more than the model's classes gives them all.
    ``device`` is where the model runs: by default where its parameters are, the model left there;
    another device moves the model there in place (``nn.Module.to``), and it stays there afterwards.
    ``views`` averages each image's probabilities over views of it, as ``evaluate.evaluate_views`` does.
    """
    return list(iter_predictions(model, config, paths, top_k, device, names, views, scales, workers=0))


@torch.no_grad()
def iter_predictions(
    model: nn.Module, config: dict, paths: Images | Iterable[Images], top_k: int = 3,
    device: torch.device | str | None = None, names: Sequence[str] | None = None, views: str | None = None,
    scales: Sequence[int] | None = None, batch_size: int = 64, workers: int | None = None,
    on_unreadable: Callable[[DataError], None] | None = None,
) -> Iterator[Prediction]:
    """``predict_images``, a batch at a time, so that a folder of any size fits in memory and each
    answer comes as soon as its batch is done; ``workers`` decode in parallel (default one a CPU,
    up to 16, for more than one batch of files). A file that cannot be read stops the iteration with
    a ``DataError`` naming it, after the answers for the images before it; or, given
    ``on_unreadable``, that error goes to it and the other images are answered."""
    from .data import DataError
    from .loader import decode_in_workers, default_workers

    # A str and an open file are iterable themselves: their characters, or lines, are no file names.
    one = isinstance(paths, (str, Path, Image.Image)) or hasattr(paths, "read") or getattr(paths, "ndim", 0) == 3
    paths = [_image_or_file(p) for p in ([paths] if one else paths)]
    labels = [_label(p, i) for i, p in enumerate(paths)] if names is None else list(names)
    if len(labels) != len(paths):
        raise ValueError(f"names: {len(labels)} given for {len(paths)} images; give one name an image, or none")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, not {top_k}")
    if views is not None:
        check_views(views, config.get("resize_size"), config["image_size"])
    device = _device_of(model) if device is None else torch.device(device)
    model.to(device)  # in place: the server and the CLI, calling again, find it there
    if workers is None:  # an open file cannot be sent to a worker process that is spawned (macOS, Windows)
        workers = default_workers() if len(paths) > batch_size and not any(hasattr(p, "read") for p in paths) else 0
    items = _ImageViews(paths, config, views, view_scales(config["image_size"], scales))

    done = 0
    with eval_mode(model):
        for batch in decode_in_workers(items, list, errors_in_batch=True, batch_size=batch_size, num_workers=workers):
            # Each item is an image's list of views, or the DataError its file raised.
            readable = [i for i, image in enumerate(batch) if not isinstance(image, DataError)]
            answers = iter(_rank(view_probabilities(model, [batch[i] for i in readable], config["mean"], config["std"], device),
                                 [labels[done + i] for i in readable], config["classes"], top_k) if readable else [])
            for image in batch:  # in the order given, an unreadable image in its place
                if not isinstance(image, DataError):
                    yield next(answers)
                elif on_unreadable is None:
                    raise image
                else:
                    on_unreadable(image)
            done += len(batch)


def _image_or_file(image: Images) -> Image.Image | ImageFile:
    """An image to predict as the decoder takes it: a tensor as its PIL image, which gets the same answer."""
    if isinstance(image, torch.Tensor):
        return _pil_image(image)
    if isinstance(image, (Image.Image, str, Path)) or hasattr(image, "read"):
        return image
    raise TypeError(f"predict_images takes image files (paths or open binary files), PIL images or (C, H, W) tensors, "
                    f"not {type(image).__name__}" + (": Image.fromarray(array) makes a PIL image of Pillow's layout"
                                                     if isinstance(image, np.ndarray) else ""))


def _label(image: Image.Image | ImageFile, i: int) -> str:
    """A prediction's default name: the file's path, an open file's name, else "image N" (from 1)."""
    if isinstance(image, (str, Path)):
        return str(image)
    name = getattr(image, "name", None) or getattr(image, "filename", None)  # open files', PIL's of a file
    return name if isinstance(name, str) and name else f"image {i + 1}"


def _device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class _ImageViews(torch.utils.data.Dataset):
    """Image files as the model of ``config`` takes them: each a list of uint8 view batches (one
    batch of one view, unless ``views``)."""

    def __init__(self, paths: Sequence[ImageFile], config: dict, views: str | None, scales: Sequence[int]) -> None:
        self.paths, self.views, self.scales = paths, views, scales
        self.channels, self.size, self.resize_to = config["channels"], config["image_size"], config.get("resize_size")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        from .data import load_image  # the decoder shared with folder datasets

        if self.views is None:
            return [load_image(self.paths[i], self.channels, self.size, self.resize_to)[None]]
        return view_batches(self.paths[i], self.channels, self.size, self.resize_to, self.views, self.scales)


class Preprocess:
    """A trained model's input preprocessing as a transform, as torchvision's ``weights.transforms()``
    is for its weights: an image in, the normalised float tensor (C, H, W) the model takes out,
    exactly what ``predict_images`` feeds it.

    The image may be a PIL image, an image file (path or open binary file), or a tensor (C, H, W)
    of 1 or 3 channels as torchvision's transforms take one: uint8, or float in [0, 1] (rounded to
    8 bits, as the model's training images were); a PIL image and the tensor of its pixels give the
    same tensor. A numpy array is refused: its layout, (H, W, C) or (C, H, W), would be a guess.
    One difference between a file and its decoded image: a JPEG file much larger than the model's
    input is decoded at 1/2, 1/4 or 1/8 scale, as training and evaluation on folders decode it, which
    an image already decoded cannot be; the two then differ by a few levels of 255.

    ``config`` is a run's (``runs.load_model``) or published weights' (``pretrained.load_published``).
    Any size and colour mode is brought to the model's channels and input size (see
    ``data.load_image``), then normalised with the statistics the model was trained with. It fits
    torchvision's datasets as their ``transform``, and leaves an image it is given as it was.
    """

    def __init__(self, config: dict) -> None:
        self.channels, self.image_size = config["channels"], config["image_size"]
        self.resize_to, self.mean, self.std = config.get("resize_size"), config["mean"], config["std"]

    def __call__(self, image: Image.Image | ImageFile | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            image = _pil_image(image)
        elif isinstance(image, np.ndarray):
            raise TypeError("Preprocess takes no numpy array: Image.fromarray(array) for Pillow's (H, W) or (H, W, C) "
                            "uint8 layout (np.asarray(image)'s), torch.from_numpy(array) for a (C, H, W) one")
        elif not isinstance(image, (Image.Image, str, Path)) and not hasattr(image, "read"):
            raise TypeError("Preprocess takes a PIL image, an image file (path or open binary file) or a (C, H, W) "
                            f"tensor, not {type(image).__name__}")
        from .data import load_image

        pixels = load_image(image, self.channels, self.image_size, self.resize_to)
        return normalize(pixels[None], self.mean, self.std)[0]

    def __repr__(self) -> str:
        size = (f"shorter side to {self.resize_to}, centre crop {self.image_size}" if self.resize_to
                else f"resize to {self.image_size}x{self.image_size}")
        return f"Preprocess({self.channels} channels, {size}, mean={self.mean}, std={self.std})"


def _pil_image(pixels: torch.Tensor) -> Image.Image:
    """The PIL image of a (C, H, W) tensor, uint8 or float in [0, 1]: through it, a tensor gets the
    answer its PIL image gets, to the last bit."""
    from torchvision.transforms.functional import to_pil_image

    pixels = pixels.detach().cpu()
    if pixels.ndim != 3:
        raise ValueError(f"a tensor image is (C, H, W), one image, not {tuple(pixels.shape)}")
    if pixels.shape[0] not in (1, 3):
        hint = ": this one looks channels-last (H, W, C), as Keras and NumPy hold images: pixels.permute(2, 0, 1)" \
            if pixels.shape[-1] in (1, 3) else ""
        raise ValueError(f"a tensor image is (C, H, W) with 1 or 3 channels (grey or RGB), not {pixels.shape[0]}{hint}")
    if pixels.is_floating_point():
        low, high = pixels.min().item(), pixels.max().item()
        if low < 0 or high > 1:
            raise ValueError(f"a float tensor image holds values in [0, 1], as torchvision's to_tensor gives, not "
                             f"{low:.3g} to {high:.3g}: give it before normalising, Preprocess normalises it")
        # to_pil_image would truncate (254.99 -> 254); rounding gives back the bytes the floats came from.
        pixels = (pixels * 255).round().to(torch.uint8)
    elif pixels.dtype != torch.uint8:
        raise TypeError(f"a tensor image is uint8, or float in [0, 1], not {pixels.dtype}")
    return to_pil_image(pixels)


def _rank(probs: torch.Tensor, labels: Sequence[str], classes: Sequence[str], top_k: int) -> list[Prediction]:
    """The ``top_k`` classes of each image's probabilities, most likely first (all of them, when fewer)."""
    top = probs.topk(min(top_k, probs.shape[1]), 1)
    return [
        Prediction(label, [classes[i] for i in idx.tolist()], val.tolist())
        for label, idx, val in zip(labels, top.indices, top.values)
    ]
