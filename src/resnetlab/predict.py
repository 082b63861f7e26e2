"""Prediction on the user's own images: the top classes a trained run, or published weights, give
image files (``predict_images``, ``iter_predictions``), and the model's preprocessing as a
transform for the user's own pipelines (``Preprocess``).

Images are prepared as the model's evaluation prepares them, and ``views`` averages each image's
scores over test-time views as ``evaluate.evaluate_views`` does: the views and their averaging are
evaluation's, imported from there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from .evaluate import check_views, eval_mode, view_batches, view_probabilities, view_scales
from .loader import normalize


@dataclass
class Prediction:
    """The top classes for one image."""

    path: str
    classes: list[str]
    probabilities: list[float]

    def ranked(self) -> str:
        """``"Sneaker 91.2%  Sandal 5.0%  ..."``, most likely first."""
        return "  ".join(f"{c} {p:.1%}" for c, p in zip(self.classes, self.probabilities))


def predict_images(
    model: nn.Module, config: dict, paths: Sequence[str | Path | BinaryIO], top_k: int = 3,
    device: torch.device | str = "cpu", names: Sequence[str] | None = None, views: str | None = None,
    scales: Sequence[int] | None = None,
) -> list[Prediction]:
    """Classify image files with a trained model, preprocessing them exactly as its training data.

    Any size or colour mode is converted to the model's channels and resized to its input size,
    then normalised with the training set's statistics stored in the run's config. A config with
    ``resize_size`` (published weights, see ``pretrained.load_published``, and folders trained with
    scale augmentation) gets torchvision's evaluation preprocessing instead: shorter side resized,
    then the centre cropped to ``image_size``.
    ``paths`` may also be open binary files; ``names`` then labels the predictions (default: the paths).
    ``views`` averages each image's probabilities over views of it, as ``evaluate.evaluate_views`` does.
    """
    return list(iter_predictions(model, config, paths, top_k, device, names, views, scales, workers=0))


@torch.no_grad()
def iter_predictions(
    model: nn.Module, config: dict, paths: Sequence[str | Path | BinaryIO], top_k: int = 3,
    device: torch.device | str = "cpu", names: Sequence[str] | None = None, views: str | None = None,
    scales: Sequence[int] | None = None, batch_size: int = 64, workers: int | None = None,
) -> Iterator[Prediction]:
    """``predict_images``, a batch at a time, so that a folder of any size fits in memory and each
    answer comes as soon as its batch is done; ``workers`` decode in parallel (default one a CPU,
    up to 16, for more than one batch of files). A file that cannot be read stops the iteration with
    a ``DataError`` naming it, after the answers for the batches before it."""
    from .loader import decode_in_workers, default_workers

    device = torch.device(device)
    model = model.to(device)
    if views is not None:
        check_views(views, config.get("resize_size"), config["image_size"])
    if workers is None:
        workers = default_workers() if len(paths) > batch_size else 0
    items = _ImageViews(paths, config, views, view_scales(config["image_size"], scales))
    labels = list(names) if names is not None else [str(p) for p in paths]
    from .data import DataError

    done = 0
    batches = iter(decode_in_workers(items, list, batch_size=batch_size, num_workers=workers))
    with eval_mode(model):
        while done < len(paths):
            try:
                images = next(batches)
            except DataError:
                # One file of the batch is unreadable: answer those before it, one by one, until it fails again here.
                for i in range(done, min(done + batch_size, len(paths))):
                    yield from _rank(view_probabilities(model, [items[i]], config["mean"], config["std"], device),
                                     labels[i:i + 1], config["classes"], top_k)
                raise
            probs = view_probabilities(model, images, config["mean"], config["std"], device)
            yield from _rank(probs, labels[done:done + len(images)], config["classes"], top_k)
            done += len(images)


class _ImageViews(torch.utils.data.Dataset):
    """Image files as the model of ``config`` takes them: each a list of uint8 view batches (one
    batch of one view, unless ``views``)."""

    def __init__(self, paths: Sequence[str | Path | BinaryIO], config: dict, views: str | None, scales: Sequence[int]) -> None:
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
    is for its weights: an image (PIL image, file path or open binary file) in, the normalised float
    tensor (C, H, W) the model takes out, exactly what ``predict`` feeds it.

    ``config`` is a run's (``runs.load_model``) or published weights' (``pretrained.load_published``).
    Any size and colour mode is brought to the model's channels and input size (see
    ``data.load_image``), then normalised with the statistics the model was trained with. It fits
    torchvision's datasets as their ``transform``, and leaves a PIL image it is given as it was.
    """

    def __init__(self, config: dict) -> None:
        self.channels, self.image_size = config["channels"], config["image_size"]
        self.resize_to, self.mean, self.std = config.get("resize_size"), config["mean"], config["std"]

    def __call__(self, image) -> torch.Tensor:
        from .data import load_image

        return normalize(load_image(image, self.channels, self.image_size, self.resize_to)[None], self.mean, self.std)[0]

    def __repr__(self) -> str:
        size = (f"shorter side to {self.resize_to}, centre crop {self.image_size}" if self.resize_to
                else f"resize to {self.image_size}x{self.image_size}")
        return f"Preprocess({self.channels} channels, {size}, mean={self.mean}, std={self.std})"


def _rank(probs: torch.Tensor, labels: Sequence[str], classes: Sequence[str], top_k: int) -> list[Prediction]:
    """The ``top_k`` classes of each image's probabilities, most likely first."""
    top = probs.topk(min(top_k, probs.shape[1]), 1)
    return [
        Prediction(label, [classes[i] for i in idx.tolist()], val.tolist())
        for label, idx, val in zip(labels, top.indices, top.values)
    ]
