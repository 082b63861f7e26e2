"""Scoring a model on a labelled test set: each image seen once, or its scores averaged over the
2015 paper's test-time views, and the report ``resnetlab eval`` prints and writes.

Prediction on the user's own images (``predict``) shares the views and their averaging from here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .devices import autocast_for, pick_device, uses_channels_last
from .loader import normalize
from .models import eval_mode
from .pretrained import is_keras_tag, load_published, published_config

if TYPE_CHECKING:
    from .data import FolderDataset


_OUT_HOLDS = "eval.json and the confusion matrix are written into it"  # what eval --out is for


@dataclass
class EvalResult:
    """Loss, accuracy and confusion matrix of one pass over a labelled set."""

    loss: float
    accuracy: float
    top5: float | None
    confusion: list[list[int]]  # rows: true class, columns: predicted class

    @property
    def error(self) -> float:
        """The top-1 error, 1 - accuracy, as a fraction."""
        return 1.0 - self.accuracy

    @property
    def count(self) -> int:
        """How many images were scored."""
        return sum(map(sum, self.confusion))

    def per_class_accuracy(self) -> list[float | None]:
        """Recall of each class: correct predictions over examples of that class; None for a class
        with no examples (a test set cut by ``--limit-test``), whose accuracy is unknown rather than 0."""
        return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(self.confusion)]


class _Tally:
    """Loss, correct answers, top-5 hits and confusion of (logits, labels) pairs, summed on the device."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sums: dict[str, torch.Tensor] | None = None

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        k = self.num_classes
        if logits.shape[1:] != (k,):  # a shape, known on the host: no wait for the GPU
            raise ValueError(f"the model gives {tuple(logits.shape[1:])} scores an image, not one for each of the "
                             f"{k} classes")
        if self.sums is None:
            zero = torch.zeros((), device=y.device)
            self.sums = {"loss": zero.clone(), "correct": zero.clone(), "top5": zero.clone(),
                         "confusion": torch.zeros(k * k, dtype=torch.long, device=y.device)}
        s = self.sums
        s["loss"] += F.cross_entropy(logits, y, reduction="sum")
        pred = logits.argmax(1)
        s["correct"] += (pred == y).sum()
        if k > 5:
            s["top5"] += (logits.topk(5, 1).indices == y[:, None]).any(1).sum()
        s["confusion"] += torch.bincount(y * k + pred, minlength=k * k)

    def result(self) -> EvalResult:
        if self.sums is None:
            raise ValueError("nothing to evaluate: the test set is empty")
        s, k = self.sums, self.num_classes
        n = int(s["confusion"].sum())
        return EvalResult(
            loss=float(s["loss"]) / n,
            accuracy=float(s["correct"]) / n,
            top5=float(s["top5"]) / n if k > 5 else None,
            confusion=s["confusion"].view(k, k).tolist(),
        )


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> EvalResult:
    """Run ``model`` in eval mode over (inputs, labels) batches.

    Sums stay on the device and are read once at the end, so a GPU never waits on the host mid-pass.
    """
    tally = _Tally(num_classes)
    with eval_mode(model):
        for x, y in batches:
            with autocast_for(x.device):
                logits = model(x)
            tally.add(logits.float(), y)
    return tally.result()


# Test-time views (He et al. 2015, Section 3.4): "standard 10-crop testing" for the comparisons of
# Table 3, and for the best results the fully-convolutional form, "scores averaged at multiple scales
# (images are resized such that the shorter side is in {224, 256, 384, 480, 640})".
PAPER_SCALES: tuple[int, ...] = (224, 256, 384, 480, 640)


def view_scales(image_size: int, scales: Sequence[int] | None = None) -> tuple[int, ...]:
    """``scales``, or when None the 2015 paper's test scales (224 to 640 for its 224-pixel inputs) in
    proportion to ``image_size``: what ``scales=None`` means wherever test-time views are taken."""
    return tuple(round(s * image_size / 224) for s in PAPER_SCALES) if scales is None else tuple(scales)


# The 2015 paper's ImageNet validation errors (top-1, top-5, in %) of its own nets, by test-time views:
# 10-crop (Table 3; the 34-layer ResNet with projection shortcuts where dimensions grow, option B,
# as these models have) and multi-scale fully-convolutional (Table 4, single models).
PAPER_IMAGENET_ERRORS: dict[tuple[str, str], tuple[float, float, str]] = {
    ("plain34", "ten-crop"): (28.54, 10.02, "Table 3"),
    ("resnet34", "ten-crop"): (24.52, 7.46, "Table 3"),
    ("resnet50", "ten-crop"): (22.85, 6.71, "Table 3"),
    ("resnet101", "ten-crop"): (21.75, 6.05, "Table 3"),
    ("resnet152", "ten-crop"): (21.43, 5.71, "Table 3"),
    ("resnet34", "scales"): (21.84, 5.71, "Table 4"),
    ("resnet50", "scales"): (20.74, 5.25, "Table 4"),
    ("resnet101", "scales"): (19.87, 4.60, "Table 4"),
    ("resnet152", "scales"): (19.38, 4.49, "Table 4"),
}


def paper_reference(model: str, views: str | None, scales: Sequence[int], num_classes: int) -> str | None:
    """What the 2015 paper reports for ``model`` tested this way on ImageNet, or None when it reports nothing."""
    if num_classes != 1000 or (views == "scales" and tuple(scales) != PAPER_SCALES):
        return None
    found = PAPER_IMAGENET_ERRORS.get((model, views))
    if found is None:
        return None
    top1, top5, table = found
    return (f"the 2015 paper reports {top1:.2f}% top-1 and {top5:.2f}% top-5 error for its {model} tested this way "
            f"on ImageNet's validation set ({table}), that is {100 - top1:.2f}% and {100 - top5:.2f}% accuracy")


def view_batches(path: str | Path, channels: int, image_size: int, resize_to: int | None, views: str,
                 scales: Sequence[int] = PAPER_SCALES) -> list[torch.Tensor]:
    """The uint8 views of one image file whose scores evaluation averages, as batches (V, C, H, W).

    ``"ten-crop"``: the shorter side resized to ``resize_to``, then the four corner and the centre
    ``image_size`` crops and their mirror images (torchvision's ``ten_crop``). ``"scales"``: the
    whole image with its shorter side resized to each of ``scales``, and its mirror image; the
    network takes any size (global average pooling), which is the paper's fully-convolutional form.
    """
    from torchvision.transforms.functional import resize, ten_crop

    from .data import check_proportions, load_image

    image = check_proportions(load_image(path, channels, None), path)
    if views == "ten-crop":
        return [torch.stack(ten_crop(resize(image, [resize_to], antialias=True), [image_size]))]
    if views == "scales":
        return [torch.stack([r, r.flip(-1)]) for r in (resize(image, [s], antialias=True) for s in scales)]
    raise ValueError(f"unknown test-time views {views!r}: choose ten-crop or scales")


def describe_views(views: str | None, scales: Sequence[int] = PAPER_SCALES) -> str | None:
    """How scores are averaged, in words (None: one view)."""
    if views == "scales":
        return f"scores averaged over shorter sides {', '.join(map(str, scales))} and their mirror images"
    return "10-crop testing" if views == "ten-crop" else None


def one_view(config: dict) -> str:
    """How a model of ``config`` sees an image when it is not averaged over views, in words."""
    size, resize = config["image_size"], config.get("resize_size")
    if resize:
        return f"one view: shorter side to {resize}, centre {size}x{size} crop"
    return f"one view: the whole image at {size}x{size}"


class _Views(torch.utils.data.Dataset):
    """A folder's test images as lists of view batches, decoded by DataLoader workers."""

    def __init__(self, dataset, resize_to: int | None, views: str, scales: Sequence[int]) -> None:
        self.dataset, self.resize_to, self.views, self.scales = dataset, resize_to, views, scales

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
        path, label = self.dataset.samples[i]
        ds = self.dataset
        return view_batches(path, ds.channels, ds.image_size, self.resize_to, self.views, self.scales), label


def _as_lists(items: list[tuple[list[torch.Tensor], int]]) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """Collate images' views as they are (``view_probabilities`` batches those of one shape)."""
    return [views for views, _ in items], torch.tensor([label for _, label in items])


@torch.no_grad()
def evaluate_views(model: nn.Module, dataset: FolderDataset, mean: list[float], std: list[float], num_classes: int, views: str,
                   scales: Sequence[int] | None = None, resize_to: int | None = None,
                   device: torch.device | str = "cpu", workers: int | None = None) -> EvalResult:
    """Evaluate on a folder dataset with each image's class probabilities averaged over its views.

    The loss is the cross-entropy of the averaged probabilities. See ``view_batches`` for the views;
    ``workers`` decode images in parallel (by default one a CPU, up to 16).
    """
    from .loader import decode_in_workers, default_workers

    check_views(views, resize_to, dataset.image_size)
    scales = view_scales(dataset.image_size, scales)
    device = torch.device(device)
    tally = _Tally(num_classes)
    items = _Views(dataset, resize_to, views, scales)
    # Closed on the way out: an error's traceback (which a notebook keeps) would otherwise hold the pass
    # under way, and with it the decoding workers and their shared-memory batches.
    with closing(decode_in_workers(items, _as_lists, batch_size=32,
                                   num_workers=default_workers() if workers is None else workers)) as loader, eval_mode(model):
        for images, labels in loader:
            # Clamped: a probability that underflowed to zero would make the loss infinite.
            tally.add(view_probabilities(model, images, mean, std, device).clamp_min(1e-30).log(), labels.to(device))
    return tally.result()


def check_views(views: str | None, resize_to: int | None, image_size: int) -> None:
    """Refuse test-time views a model's preprocessing cannot give."""
    if views == "ten-crop" and (resize_to is None or resize_to <= image_size):
        raise ValueError("ten-crop testing cuts crops from an image resized larger than the model's input: it needs "
                         "a run trained on a folder with scale augmentation (recipe imagenet or he2015-imagenet, or "
                         "--recipe-arg scale_crop or scale_jitter), or --pretrained")


def view_probabilities(model: nn.Module, images: Sequence[Sequence[torch.Tensor]], mean: list[float], std: list[float],
                       device: torch.device) -> torch.Tensor:
    """(N, classes) probabilities of N images, each averaged over its views.

    ``images[i]`` holds image i's uint8 views (V, C, H, W), one batch for each kind of view (each
    scale). Views of one kind and one shape go through the model together: ten crops always do,
    whole images at a scale do when they share their proportions.
    """
    probs, count = None, 0
    for kind in range(len(images[0])):
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, views in enumerate(images):
            by_shape.setdefault(tuple(views[kind].shape), []).append(i)
        for (v, *_), members in by_shape.items():
            batch = torch.stack([images[i][kind] for i in members]).flatten(0, 1)
            with autocast_for(device):
                p = model(normalize(batch.to(device), mean, std)).float().softmax(1)
            if probs is None:
                probs = torch.zeros(len(images), p.shape[1], device=device)
            probs[torch.tensor(members, device=device)] += p.view(len(members), v, -1).sum(1)
        count += images[0][kind].shape[0]
    return probs / count


def unsettled_statistics(model: nn.Module, steps: int, left_at_most: float = 1e-3) -> str | None:
    """Why the model's test accuracy may lag far behind its training accuracy after ``steps`` steps, or
    None: its batch norms' running statistics, which evaluation uses, still hold more than
    ``left_at_most`` of their starting values (a batch norm keeps 1 - momentum of them each step). The
    start, a variance of 1, can be many times a layer's own: a few per cent left of it is too much."""
    momenta = [m.momentum for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.momentum is not None]
    if not momenta or (1 - min(momenta)) ** steps <= left_at_most:
        return None
    slowest = min(momenta)
    needed = math.ceil(math.log(left_at_most) / math.log(1 - slowest))
    return (f"after {steps} step{'s' * (steps != 1)} the batch norms' running statistics, which evaluation uses, "
            f"still hold {(1 - slowest) ** steps:.1%} of their starting values (each step takes in {slowest:g} of a "
            f"batch's: bn_momentum), so the test accuracy may lag far behind the training accuracy. Recompute them "
            f"from the training images once training ends (--recipe-arg precise_bn=200){', use --model-arg bn_momentum=0.1' if slowest < 0.1 else ''}"
            f", or train for {needed:,} steps or more")


def statistics_note(model: nn.Module, config: dict, steps: int) -> str | None:
    """``unsettled_statistics`` for a run trained ``steps`` steps as its ``config`` says: none where it
    started from weights (their statistics are already near the data's) or recomputed them (precise BN)."""
    if config.get("weights") or config.get("recipe", {}).get("precise_bn"):
        return None
    return unsettled_statistics(model, steps)


@dataclass
class EvalReport:
    """``resnetlab eval``'s findings and the files it wrote."""

    source: str  # what was evaluated: a run directory, or published weights as MODEL:TAG
    dataset: str
    classes: list[str]
    result: EvalResult
    files: list[Path]
    reference: str | None = None  # what the weights are published, or the paper reports, to reach, when known
    views: str = "one view"  # how each image was seen: its one view, or the views its scores were averaged over
    split: str = "test"  # or "train": the images a run trained on
    note: str | None = None  # why the score may mislead (a run's unsettled batch-norm statistics)
    step: int | None = None  # the training step of a run's weights

    def to_dict(self) -> dict:
        r = self.result
        return {
            "dataset": self.dataset,
            "split": self.split,
            "views": self.views,
            "reference": self.reference,
            "step": self.step,
            "versions": {"resnetlab": __version__, "torch": torch.__version__},
            "examples": r.count,
            "loss": r.loss,
            "accuracy": r.accuracy,
            "error": r.error,
            "top5_accuracy": r.top5,
            "per_class_accuracy": dict(zip(self.classes, r.per_class_accuracy())),
            "classes": self.classes,
            "confusion_matrix": r.confusion,
        }

    def text(self) -> str:
        r = self.result
        images = "training images" if self.split == "train" else "test images"
        lines = [f"{self.source} on {self.dataset} ({r.count} {images}, {self.views})"]
        lines.append(f"accuracy {r.accuracy:.2%}  error {r.error:.2%}  loss {r.loss:.4f}")
        if r.top5 is not None:
            lines.append(f"top-5 accuracy {r.top5:.2%}")
        per_class = list(zip(self.classes, r.per_class_accuracy()))
        if len(per_class) > 20:  # ImageNet's thousand lines would bury the totals: the hardest classes only
            lines.append("lowest per-class accuracies (eval.json has them all):")
            per_class = sorted([ca for ca in per_class if ca[1] is not None], key=lambda ca: ca[1])[:10]
        width = max(len(c) for c, _ in per_class) + 2
        lines += [f"  {c:<{width}}{'no test images' if a is None else f'{a:.2%}'}" for c, a in per_class]
        lines += [self.reference] if self.reference else []
        lines += [f"note: {n}" for n in self.note.split("\n")] if self.note else []
        lines += [f"wrote {f}" for f in self.files]
        return "\n".join(lines)


def evaluate_run(
    run_dir: str | Path,
    dataset: str | None = None,
    *,
    data_dir: str | None = None,
    limit_test: int | None = None,
    device: str | torch.device = "auto",
    views: str | None = None,
    scales: Sequence[int] | None = None,
    out: str | Path | None = None,
    split: str = "test",
) -> EvalReport:
    """Evaluate a trained run on a test set (or its training images) and write ``eval.json`` and the
    confusion matrix into ``out`` (default: the run directory, replacing the last ones there).

    ``views`` ("ten-crop" or "scales", see ``view_batches``) averages each image's scores over several
    views of it; that needs image files, so a run trained on a folder.

    ``split="train"`` scores the training images instead, unaugmented: on the run's own dataset, the
    ones it trained on (its ``limit_train``, a folder's seeded draw), ``limit_test`` of them if given.
    Against the test score it tells overfitting (a gap) from batch-norm running statistics that have
    not settled (chance on both). Its files are ``eval-train.json`` and ``confusion-train.*``.
    """
    from .data import class_folder_names, load_split, own_held_out, reload_sizes, resolve_dataset
    from .loader import dataset_shape
    from .plots import plot_confusion
    from .runs import data_seed, load_model, out_folder, read_metrics, write_json

    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', not {split!r}")
    run_dir = Path(run_dir)
    if out is not None:  # refused before the test set is scored, which may take minutes
        out_folder(out, _OUT_HOLDS)
    dev = pick_device(device)
    model, config = load_model(run_dir, dev)
    own = config["dataset"]
    # A folder run given --data-dir alone is its own folder, moved there: tested on the images its
    # training held out, not on all of them (most of which it trained on).
    moved = dataset is None and data_dir is not None and (own or "").startswith("folder:")
    if moved:
        name = resolve_dataset(f"folder:{data_dir}")
    else:
        name = resolve_dataset(dataset, data_dir) if dataset else own
    if name is None:
        raise ValueError(f"{run_dir} names no dataset to test on (an imported model): give one with --dataset")
    if views is not None and not name.startswith("folder:"):
        raise ValueError(f"test-time views (--ten-crop, --scales) are cut from image files: {name} is not a folder")
    if split == "train":
        if name != own and not moved:
            raise ValueError(f"--split train scores the images the run trained on, which are {own}'s, not {name}'s")
        # Those training drew: its limit_train of them, or fewer if told. Seeded draws of a folder, as a named
        # dataset's first N, are the start of one order, so the fewer are among those it trained on.
        limit = min((n for n in (limit_test, config.get("limit_train")) if n is not None), default=None)
        whole = False
    else:
        # Another folder, with no train/ and val/ of its own, is a test set in full; the run's own folder
        # is tested on the images its training held out.
        limit = limit_test
        whole = (name != own and not moved and name.startswith("folder:")
                 and own_held_out(Path(name.removeprefix("folder:"))) is None)
    test = load_split(name, split, data_dir or config.get("data_dir"), limit=limit, seed=data_seed(config),
                      on_disk=views is not None, whole=whole, **reload_sizes(name, config))
    expected = (len(config["classes"]), config["channels"], config["image_size"])
    found = (len(test.classes), *dataset_shape(test))
    if found != expected:
        raise ValueError(
            f"{name} ({found[0]} classes of {found[1]}x{found[2]}x{found[2]}) does not fit this run's model "
            f"({expected[0]} classes of {expected[1]}x{expected[2]}x{expected[2]})"
        )
    unnamed = config["classes"] == [str(i) for i in range(len(config["classes"]))]  # an import given no names
    exported = class_folder_names(config["classes"])  # the run's own data written out by `resnetlab data --export`
    # A folder run on a named dataset's export, tested on the named dataset itself.
    named_export = class_folder_names(test.classes) == config["classes"]
    # A named dataset is the run's own when it trained on it (or an import was pointed at it): the run's
    # names for its classes may be the user's own (SIGNS's digits called "zero", "one", ...).
    checked = name.startswith("folder:") or name != own
    if checked and list(test.classes) not in (config["classes"], exported) and not unnamed and not named_export:
        # Labels are class indices: a test set whose classes are others (MNIST's digits for a
        # Fashion-MNIST run, folders named otherwise) would be scored against the wrong classes.
        differ = next(f"{a!r} where the run has {b!r}" for a, b in zip(test.classes, config["classes"]) if a != b)
        if not name.startswith("folder:"):
            raise ValueError(f"{name}'s classes are not the run's ({differ}): its labels would be scored as "
                             "other classes; test the run on a dataset with the classes it was trained on")
        more = ", ..." if len(config["classes"]) > 5 else ""
        raise ValueError(f"{name}'s class folders are not the run's classes ({differ}); name them as the run's "
                         f"({', '.join(config['classes'][:5])}{more}) or as `resnetlab data --export` does "
                         f"({', '.join(exported[:5])}{more})")
    scales = view_scales(config["image_size"], scales)
    result = _score(model, test, config, views, scales, dev)
    # The papers report test errors: nothing to hold a training-set score against.
    reference = paper_reference(config["model"], views, scales, len(config["classes"])) if split == "test" else None
    rows = read_metrics(run_dir, missing_ok=True) if "recipe" in config else []  # an import has no training of ours
    notes = [statistics_note(model, config, rows[-1]["step"]) if rows else None]
    if split == "test" and name == own and limit_test is None and rows and result.count > (config.get("limit_test") or math.inf):
        # metrics.jsonl's test scores are those of the run's limit_test images, not of all of them
        notes.append(f"the run was tested on {config['limit_test']:,} of these {result.count:,} test images (metrics.jsonl): "
                     f"--limit-test {config['limit_test']} scores the same ones")
    report = EvalReport(str(run_dir), name, config["classes"], result, [], reference,
                        describe_views(views, scales) or one_view(config), split, "\n".join(filter(None, notes)) or None,
                        rows[-1]["step"] if rows else None)
    out = Path(out) if out is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-train" if split == "train" else ""  # beside the test set's files, not over them
    write_json(out / f"eval{suffix}.json", report.to_dict())
    report.files.append(out / f"eval{suffix}.json")
    title = f"{config['model']} on {name}" + (" (training images)" if split == "train" else "")
    report.files += plot_confusion(result.confusion, config["classes"], out / f"confusion{suffix}", title)
    return report


def _score(model: nn.Module, ds, config: dict, views: str | None, scales: Sequence[int], device: torch.device) -> EvalResult:
    """A test set scored as a run's or published weights' ``config`` says: each image once, in the
    trainer's batches (channels_last where the trainer uses it), or averaged over ``views``."""
    from .loader import make_loader

    if views is None:
        loader = make_loader(ds, 256, config["mean"], config["std"], device, train=False,
                             channels_last=uses_channels_last(device))
        return evaluate(model, loader, len(config["classes"]))
    return evaluate_views(model, ds, config["mean"], config["std"], len(config["classes"]), views, scales,
                          config.get("resize_size"), device)


def evaluate_published(
    spec: str, dataset: str, *, data_dir: str | None = None, limit_test: int | None = None, device: str | torch.device = "auto",
    views: str | None = None, scales: Sequence[int] | None = None, out: str | Path | None = None,
) -> EvalReport:
    """Evaluate published weights (``MODEL`` or ``MODEL:TAG``) on an ImageNet-style folder.

    Images are preprocessed as the weights were measured (shorter side resized, centre crop, the
    weights' own normalisation), so the accuracy is comparable with the published one.
    ``dataset`` is ``folder:PATH`` with the 1000 ImageNet class folders named by WordNet ID
    (n01440764, ...), whose sorted order is torchvision's class order; a PATH with train/ and
    val/ is evaluated on val/. With ``out``, ``eval.json`` is written there. ``views`` as for ``evaluate_run``.
    """
    from .data import DataError, get_dataset, own_held_out, resolve_dataset
    from .runs import out_folder, write_json

    if out is not None:  # refused before anything is downloaded or scored
        out_folder(out, _OUT_HOLDS)
    dataset = resolve_dataset(dataset, data_dir)
    if not dataset.startswith("folder:"):
        raise DataError(f"published ImageNet weights are evaluated on imagenet or an ImageNet-style folder "
                        f"(folder:PATH), not {dataset}")
    dev = pick_device(device)
    config = published_config(spec)  # the folder is checked before the weights are fetched
    path = Path(dataset.removeprefix("folder:")).expanduser()
    # A folder without train/ and val/ is the evaluation set itself: nothing held out, all of it evaluated.
    split = "test" if own_held_out(path) is not None else "train"
    ds = get_dataset(dataset, split=split, root=data_dir, image_size=config["image_size"], channels=3, val_fraction=0.0)
    if len(ds.classes) != len(config["classes"]):
        raise DataError(
            f"{path} has {len(ds.classes)} class folders; {config['model']}'s ImageNet weights need all "
            f"{len(config['classes'])}, one folder each named by WordNet ID (n01440764, ...), so that their "
            "sorted order is torchvision's class order"
        )
    ds.resize_to = config["resize_size"]
    if limit_test is not None:
        if limit_test <= 0:
            raise ValueError(f"--limit-test must be positive, got {limit_test}")
        ds = ds.subset(limit_test)
    model, _ = load_published(spec, dev)
    scales = view_scales(config["image_size"], scales)
    result = _score(model, ds, config, views, scales, dev)
    top1 = config["published_top1"]
    references = [f"{config['published_by']} publishes {top1:.2f}% top-1 for these weights on ImageNet's 50,000 "
                  "validation images" + (" (one centre crop)" if views else "") if top1 is not None else None]
    if is_keras_tag(config["weights"]):  # the paper's layout, and for ResNet-50 the paper's own weights
        references.append(paper_reference(config["model"], views, scales, len(config["classes"])))
    reference = "; ".join(r for r in references if r) or None
    report = EvalReport(f"{config['model']}:{config['weights']}", dataset, config["classes"], result, [], reference,
                        describe_views(views, scales) or one_view(config))
    if out is not None:
        write_json(Path(out) / "eval.json", {"model": config["model"], "weights": config["weights"], **report.to_dict()})
        report.files.append(Path(out) / "eval.json")
    return report
