"""Benchmarks, side by side in one process: resnetlab against the loop most PyTorch scripts use.

``bench_train``: the typical script (a torchvision-style dataset yielding PIL images, torchvision
transforms, a DataLoader with worker processes, fp32, ``loss.item()`` every step) against
resnetlab's trainer path (data on the device, batched augmentation, channels_last, bf16 and a
CUDA-graphed step on GPUs; on a GPU also eager, so each technique's share shows). Both train the
same model from the same initial weights on the same data with the same recipe and steps, and both
are evaluated by the same code.

``bench_model``: model-step throughput on synthetic data (training and inference) of resnetlab's
model against torchvision's, with the same precision and memory format, and of the trainer's own
step (fused update, CUDA graph) on the same batch.

``bench_decode``: training crops cut from image files, torchvision's ImageFolder pipeline
against resnetlab's (crop parameters drawn first, JPEGs decoded at a reduced scale where the crop
allows).

Results go to ``benchmarks/results/`` as JSON with the device, versions and date.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .devices import autocast_for, pick_device, uses_channels_last
from .evaluate import evaluate
from .loader import DeviceLoader, channel_stats
from .models import create_model
from .recipes import get_recipe, lr_at
from .steps import build_train_step

RESULTS_DIR = Path("benchmarks/results")


@dataclass
class Timing:
    """What one contender measured."""

    name: str
    ms_per_step: float
    images_per_s: float
    test_accuracy: float | None = None
    speedup: float = 1.0  # the typical loop's time per step over this one's

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def environment(device: torch.device) -> dict:
    """Where a benchmark ran: device name, versions, date."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        name = f"{_cpu_name()}, {threads} thread{'s' if threads != 1 else ''}"
    import torchvision

    return {
        "device": name,
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "resnetlab": __version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_name() -> str:
    """The processor's marketing name where Linux tells it, else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PILImages(torch.utils.data.Dataset):
    """What torchvision's FashionMNIST/CIFAR10 ``__getitem__`` does: one PIL image per item, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images = images.permute(0, 2, 3, 1).squeeze(-1).numpy()  # HW or HWC, as torchvision stores them
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def _typical_optimizer(recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer as the usual script makes it: one group, PyTorch's default kernels."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay)
    adam = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return adam(model.parameters(), lr=recipe.lr, eps=recipe.adam_eps, weight_decay=recipe.weight_decay)


def _typical_loop(model: nn.Module, train_set, recipe, mean, std, steps: int, warmup: int, device: torch.device, workers: int) -> float:
    """The usual script's training loop; returns seconds per step after ``warmup`` steps."""
    import torchvision.transforms as T

    size = train_set.images.shape[-1]
    augment = []
    if recipe.pad_crop:
        augment.append(T.RandomCrop(size, padding=recipe.pad_crop))
    if recipe.scale_crop:
        augment.append(T.RandomResizedCrop(size, scale=recipe.scale_crop))
    if recipe.flip:
        augment.append(T.RandomHorizontalFlip())
    transform = T.Compose([*augment, T.ToTensor(), T.Normalize(mean, std)])
    dataset = _PILImages(train_set.images, train_set.labels, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=recipe.batch_size, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    optimizer = _typical_optimizer(recipe, model)
    model.train()
    step, start = 0, None
    while step < steps:
        for x, y in loader:
            if step == warmup:
                _sync(device)
                start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(recipe, step, steps)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the running-loss print every script has: a host sync each step
            step += 1
            if step == steps:
                break
    _sync(device)
    return (time.perf_counter() - start) / (steps - warmup)


def _resnetlab_loop(model: nn.Module, train_set, recipe, mean, std, steps: int, warmup: int, device: torch.device,
                    seed: int, graphed: bool, compile: bool) -> float:
    """resnetlab's training path (the trainer's step and inner loop); returns seconds per step after warm-up."""
    channels_last = uses_channels_last(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = DeviceLoader(train_set.images, train_set.labels, recipe.batch_size, mean, std, device, train=True,
                          pad_crop=recipe.pad_crop, scale_crop=recipe.scale_crop, flip=recipe.flip, seed=seed,
                          channels_last=channels_last)
    train_step = build_train_step(model, recipe, device, graphed, next(iter(loader)) if graphed else None, compile)
    step, epoch, start = 0, 0, None
    while step < steps:
        for x, y in loader.epoch(epoch):
            if step == warmup:
                _sync(device)
                start = time.perf_counter()
            train_step(x, y, lr_at(recipe, step, steps))
            step += 1
            if step == steps:
                break
        epoch += 1
    _sync(device)
    return (time.perf_counter() - start) / (steps - warmup)


@dataclass
class _Variant:
    """One way of running resnetlab's loop in the benchmark."""

    name: str
    how: str
    graphed: bool = False
    compile: bool = False


def _variants(device: torch.device, compile: bool) -> list[_Variant]:
    """The rows after the typical loop; the trainer's default path is the one named "resnetlab"."""
    if device.type != "cuda":
        rows = [_Variant("resnetlab", "data in memory, batched augmentation, channels_last, eager step, "
                                      "metrics summed without per-step reads")]
        if compile:
            rows.append(_Variant("+ compile", "the same, model through torch.compile", compile=True))
        return rows
    on_gpu = "data on the GPU, batched augmentation, bf16 + channels_last"
    rows = [
        _Variant("eager", f"{on_gpu}, eager step (--no-cuda-graph)"),
        _Variant("resnetlab", f"{on_gpu}, whole step in one CUDA graph", graphed=True),
    ]
    if compile:
        rows.append(_Variant("+ compile", f"{on_gpu}, torch.compile kernels in one CUDA graph", graphed=True, compile=True))
    return rows


def _keeps_cudnn_setting(bench: Callable) -> Callable:
    """Put cuDNN's autotuner setting back as it was after ``bench``, which sets it for its contenders."""

    @functools.wraps(bench)
    def wrapped(*args, **kwargs):
        before = torch.backends.cudnn.benchmark
        try:
            return bench(*args, **kwargs)
        finally:
            torch.backends.cudnn.benchmark = before

    return wrapped


@_keeps_cudnn_setting
def bench_train(
    model_name: str = "resnet20",
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    batch_size: int = 128,
    steps: int = 200,
    device: str = "auto",
    recipe_name: str = "fast",
    workers: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    compile: bool = False,
    repeat: int = 1,
    print_fn: Callable[[str], None] = print,
) -> dict:
    """Time the typical loop and resnetlab's loop on the same data, model and schedule; return the result dict.

    On a GPU resnetlab runs twice, eager and CUDA-graphed (and a third time compiled with
    ``compile``), so the table shows what each technique buys. A variant that fails is reported
    with its error and the others still run; the speedup line compares the trainer's default path.
    With ``repeat`` > 1 every contender runs that many times, in alternating rounds, and the
    median time counts (shared machines are noisy).
    """
    from .data import get_dataset

    dev = pick_device(device)
    if steps < 10:
        raise ValueError(f"--steps must be at least 10 to time anything, got {steps}")
    if repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {repeat}")
    if limit_test is not None and limit_test < 1:
        raise ValueError(f"--limit-test must be at least 1, got {limit_test}")
    if dataset.startswith("folder:") or dataset == "imagenet":
        # Both loops would decode files, and the difference would be the decoder's: `bench decode` times that.
        raise ValueError(f"bench train times datasets held in memory (fashion-mnist, mnist, cifar10, cifar100, signs), "
                         f"not {dataset}; `resnetlab bench decode` times reading image folders")
    # Both loops decay every parameter, as the usual script's one optimizer group does, so that their
    # accuracies compare at exactly the same schedule.
    recipe = get_recipe(recipe_name, batch_size=batch_size, steps=steps, decay_norm_and_bias=True)
    train_set = get_dataset(dataset, split="train", root=data_dir)
    test_set = get_dataset(dataset, split="test", root=data_dir)
    if recipe.batch_size > len(train_set):  # no whole batch: both loops would wait for one forever
        raise ValueError(f"--batch-size {recipe.batch_size} is larger than the {len(train_set):,} training images")
    if limit_test is not None:
        test_set.images, test_set.labels = test_set.images[:limit_test], test_set.labels[:limit_test]
    mean, std = channel_stats(train_set.images)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    warmup = min(10, steps // 5)

    torch.manual_seed(seed)
    initial = create_model(model_name, num_classes=len(train_set.classes), in_chans=train_set.images.shape[1]).to(dev)
    test_loader = DeviceLoader(test_set.images, test_set.labels, 500, mean, std, dev, train=False)
    contenders = [("typical loop", f"DataLoader ({workers} workers) + torchvision transforms, fp32, eager",
                   lambda m: _typical_loop(m, train_set, recipe, mean, std, steps, warmup, dev, workers))]
    for v in _variants(dev, compile):
        contenders.append((v.name, v.how, lambda m, v=v: _resnetlab_loop(
            m, train_set, recipe, mean, std, steps, warmup, dev, seed, v.graphed, v.compile)))
    rows: dict[str, dict] = {}
    runs: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
    for round_ in range(repeat):
        # Rounds alternate the contenders, so a slow spell of a shared machine hits both alike.
        for name, how, run in contenders:
            if "error" in rows.get(name, {}):
                continue
            model = copy.deepcopy(initial)
            torch.manual_seed(seed)
            # cuDNN's autotuner is one of resnetlab's settings (the trainer turns it on); scripts rarely do.
            torch.backends.cudnn.benchmark = name != "typical loop"
            if round_ == 0:
                print_fn(f"  {name}: {how}")
            try:
                runs[name].append(run(model))
            except Exception as e:  # one failing variant must not lose the others' numbers
                if name in ("typical loop", "resnetlab"):
                    raise
                print_fn(f"  {name}: failed: {type(e).__name__}: {e}")
                rows[name] = {"name": name, "how": how, "error": f"{type(e).__name__}: {e}"}
                runs[name].clear()  # a failure in a later round voids its earlier timings too
                continue
            if round_ == 0:  # the same seed and data every round: one evaluation says it
                model = model.to(memory_format=torch.contiguous_format)
                rows[name] = {"name": name, "how": how,
                              "test_accuracy": evaluate(model, test_loader, len(train_set.classes)).accuracy}
    timings = []
    typical = statistics.median(runs["typical loop"])
    for name, seconds in runs.items():
        if seconds:
            median = statistics.median(seconds)
            timing = Timing(name, median * 1e3, batch_size / median, rows[name]["test_accuracy"], typical / median)
            timings.append(timing)
            rows[name].update(timing.to_dict(), ms_per_step_runs=[t * 1e3 for t in seconds])
    speedup = rows["resnetlab"]["speedup"]
    result = {
        "benchmark": "train",
        "model": model_name, "dataset": dataset, "batch_size": batch_size, "steps": steps,
        "recipe": recipe_name, "workers": workers, "timed_steps": steps - warmup, "repeat": repeat,
        "test_examples": len(test_set.labels),
        "contenders": rows,
        "speedup": speedup,
        **environment(dev),
    }
    _print_table(timings, f"{model_name} on {dataset}, batch {batch_size}, {steps} steps, {result['device']}", print_fn)
    print_fn(f"speedup vs typical loop: {speedup:.2f}x")
    return result


def _print_table(timings: list[Timing], title: str, print_fn: Callable[[str], None]) -> None:
    print_fn(title)
    print_fn(f"{'':<16}{'ms/step':>10}{'img/s':>12}{'test acc':>10}{'speedup':>9}")
    for t in timings:
        acc = f"{t.test_accuracy:.2%}" if t.test_accuracy is not None else "-"
        print_fn(f"{t.name:<16}{t.ms_per_step:>10.2f}{t.images_per_s:>12,.0f}{acc:>10}{t.speedup:>8.2f}x")


def _time_calls(fn: Callable[[], None], iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


TORCHVISION_TWINS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@_keeps_cudnn_setting
def bench_model(
    model_name: str = "resnet50",
    batch_size: int | None = None,
    image_size: int = 224,
    steps: int | None = None,
    device: str = "auto",
    compile: bool = False,
    print_fn: Callable[[str], None] = print,
) -> dict:
    """Training and inference images/s of resnetlab's model and torchvision's, synthetic data, same precision."""
    import torchvision

    dev = pick_device(device)
    for flag, value in (("--batch-size", batch_size), ("--steps", steps)):
        if value is not None and value < 1:  # None: the device's default
            raise ValueError(f"{flag} must be at least 1, got {value}")
    batch_size = batch_size or (256 if dev.type == "cuda" else 8)
    steps = steps or (50 if dev.type == "cuda" else 3)
    if model_name not in TORCHVISION_TWINS:  # before anything is built or timed
        raise ValueError(f"torchvision has no {model_name!r} to compare with; use {', '.join(TORCHVISION_TWINS)}")
    if image_size < 32:  # five halvings leave a map of at least one pixel
        raise ValueError(f"--image-size must be at least 32 for an ImageNet ResNet, got {image_size}")
    from .data import check_side

    check_side(image_size, "--image-size")
    torch.backends.cudnn.benchmark = True  # same settings for both: this compares the model code alone
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device=dev)
    rows = []
    for name, build in (("torchvision", getattr(torchvision.models, model_name)), ("resnetlab", lambda: create_model(model_name))):
        model = build().to(dev).to(memory_format=torch.channels_last)
        forward = torch.compile(model) if compile else model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, **({"fused": True} if dev.type == "cuda" else {}))

        def train_step() -> None:
            with autocast_for(dev):
                loss = F.cross_entropy(forward(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        @torch.no_grad()
        def infer() -> None:
            with autocast_for(dev):
                forward(x)

        model.train()
        t_train = _time_calls(train_step, steps, max(1, steps // 5), dev)
        model.eval()
        t_infer = _time_calls(infer, steps, max(1, steps // 5), dev)
        rows.append({"name": name, "train_images_per_s": batch_size / t_train, "infer_images_per_s": batch_size / t_infer})
        del model, optimizer, forward

    # The trainer's own step on the same model and batch: the update fused and, on CUDA, the whole
    # step (forward, backward, optimizer, metric sums) replayed as one CUDA graph.
    graphed = dev.type == "cuda"
    model = create_model(model_name).to(dev).to(memory_format=torch.channels_last)
    step = build_train_step(model, get_recipe("he2016"), dev, graphed, sample=(x, y), compile=compile)
    t_step = _time_calls(lambda: step(x, y, 0.01), steps, max(1, steps // 5), dev)
    trainer = {"how": "build_train_step: " + ("fused SGD, one CUDA graph" if graphed else "eager, metrics on the device"),
               "train_images_per_s": batch_size / t_step}
    del model, step

    precision = "bf16 autocast" if dev.type == "cuda" else "fp32"
    result = {
        "benchmark": "model", "model": model_name, "batch_size": batch_size, "image_size": image_size,
        "steps": steps, "precision": precision, "memory_format": "channels_last", "compile": compile,
        "contenders": {r["name"]: r for r in rows},
        "train_ratio": rows[1]["train_images_per_s"] / rows[0]["train_images_per_s"],
        "infer_ratio": rows[1]["infer_images_per_s"] / rows[0]["infer_images_per_s"],
        "trainer_step": trainer,
        **environment(dev),
    }
    print_fn(f"{model_name}, {image_size}x{image_size}, batch {batch_size}, {precision}, channels_last, {result['device']}")
    print_fn(f"{'':<14}{'train img/s':>14}{'infer img/s':>14}")
    for r in rows:
        print_fn(f"{r['name']:<14}{r['train_images_per_s']:>14,.1f}{r['infer_images_per_s']:>14,.1f}")
    print_fn(f"{'trainer step':<14}{trainer['train_images_per_s']:>14,.1f}{'-':>14}  ({trainer['how']})")
    print_fn(f"resnetlab vs torchvision: training {result['train_ratio']:.2f}x, inference {result['infer_ratio']:.2f}x")
    return result


# Photo sizes the decode benchmark makes when given no folder: ImageNet's typical image, a phone's.
DECODE_SIZES: tuple[tuple[int, int], ...] = ((500, 375), (4000, 3000))


def _synthetic_photos(folder: Path, sizes: tuple[tuple[int, int], ...], count: int) -> dict[str, list[Path]]:
    """JPEGs (quality 90) of smooth colour ramps with grain, ``count`` of each size: a photo's entropy, roughly."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = {}
    for width, height in sizes:
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        paths = []
        for i in range(count):
            ramps = np.stack([x * (1 + i % 3) / width, y / height, (x + y) / (width + height)], -1) * 255
            pixels = np.clip(ramps + rng.normal(0, 12, ramps.shape), 0, 255).astype(np.uint8)
            path = folder / f"{width}x{height}-{i}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            paths.append(path)
        photos[f"{width}x{height}"] = paths
    return photos


def bench_decode(
    folder: str | Path | None = None,
    size: int = 224,
    count: int = 20,
    repeat: int = 3,
    sizes: tuple[tuple[int, int], ...] = DECODE_SIZES,
    print_fn: Callable[[str], None] = print,
) -> dict:
    """Training crops from image files, one process: torchvision's ImageFolder pipeline against resnetlab's.

    Both cut the same kinds of crop from the same files: RandomResizedCrop(``size``) (the
    ``imagenet`` recipe) and the 2015 paper's scale jitter (shorter side 8/7 to 15/7 of ``size``,
    then a random crop; ``he2015-imagenet``). torchvision's pipeline is the one its reference
    scripts use: PIL open and convert to RGB, the transform, then PILToTensor. ``folder`` times the
    user's own images (its first ``count``); otherwise synthetic JPEGs of ``sizes`` are made.
    """
    import tempfile

    from torchvision import transforms as T

    from .data import IMAGE_FORMATS, check_side, load_jitter_crop, load_random_crop

    check_side(size, "--image-size")
    if count < 1 or repeat < 1:
        raise ValueError("--count and --repeat must be at least 1")
    jitter = (round(size * 8 / 7), round(size * 15 / 7))  # 256-480 for 224
    with tempfile.TemporaryDirectory() as tmp:
        if folder is None:
            photos = _synthetic_photos(Path(tmp), sizes, count)
        else:
            from .data import get_dataset

            if not Path(folder).is_dir():
                raise ValueError(f"--folder {folder} is not a folder")
            found = get_dataset(f"folder:{folder}", "train", val_fraction=0.0)
            photos = {str(folder): [path for path, _ in found.samples[:count]]}
            for path in photos[str(folder)]:  # an unreadable file named as training names it, before any timing
                load_random_crop(path, 3, size, 0, (0.08, 1.0))

        def torchvision_crops(paths: list[Path], transform: Callable) -> None:
            from PIL import Image

            for path in paths:
                with open(path, "rb") as f:
                    # torchvision's pil_loader, kept to the raster decoders as resnetlab's own are.
                    T.PILToTensor()(transform(Image.open(f, formats=IMAGE_FORMATS).convert("RGB")))

        contenders = {
            "random-resized crop": (
                lambda paths: torchvision_crops(paths, T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()])),
                lambda paths: [load_random_crop(p, 3, size, i, (0.08, 1.0)) for i, p in enumerate(paths)],
            ),
            "scale jitter": (
                lambda paths: torchvision_crops(paths, T.Compose([
                    T.RandomChoice([T.Resize(s) for s in range(jitter[0], jitter[1] + 1)]),
                    T.RandomCrop(size), T.RandomHorizontalFlip(),
                ])),
                lambda paths: [load_jitter_crop(p, 3, size, i, jitter) for i, p in enumerate(paths)],
            ),
        }
        rows = []
        for photo_size, paths in photos.items():
            for crop, (theirs, ours) in contenders.items():
                runs: dict[str, list[float]] = {"torchvision": [], "resnetlab": []}
                for _ in range(repeat):  # alternating, so that a busy moment hurts both alike
                    for name, fn in (("torchvision", theirs), ("resnetlab", ours)):
                        start = time.perf_counter()
                        fn(paths)
                        runs[name].append(1e3 * (time.perf_counter() - start) / len(paths))
                tv, rl = statistics.median(runs["torchvision"]), statistics.median(runs["resnetlab"])
                rows.append({"images": photo_size, "crop": crop, "torchvision_ms_per_image": tv,
                             "resnetlab_ms_per_image": rl, "speedup": tv / rl})
    device = torch.device("cpu")
    result = {
        "benchmark": "decode", "model": f"crop{size}", "crop_size": size, "images_per_size": count, "repeat": repeat,
        "images": "the user's folder" if folder is not None else "synthetic JPEGs (quality 90)",
        "scale_jitter": list(jitter), "rows": rows, **environment(device),
    }
    result["device"] = f"{_cpu_name()}, one process"
    print_fn(f"training crops of {size} from image files, {result['device']}")
    width = max(12, *(len(r["images"]) + 2 for r in rows))  # a --folder's name may be long
    print_fn(f"{'images':<{width}}{'crop':<22}{'torchvision ms':>16}{'resnetlab ms':>14}{'speedup':>9}")
    for r in rows:
        print_fn(f"{r['images']:<{width}}{r['crop']:<22}{r['torchvision_ms_per_image']:>16.2f}"
                 f"{r['resnetlab_ms_per_image']:>14.2f}{r['speedup']:>8.2f}x")
    return result


def check_results_dir(out_dir: str | Path = RESULTS_DIR) -> Path:
    """``out_dir``, created, once it is known to take a file: checked before a benchmark runs for minutes."""
    out_dir = Path(out_dir).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise ValueError(f"--results {out_dir}: cannot write there ({e.strerror or e})") from None
    return out_dir


def save_result(result: dict, out_dir: str | Path = RESULTS_DIR) -> Path:
    """Write a benchmark result as JSON named by benchmark, model, device type and date."""
    out_dir = check_results_dir(out_dir)
    stamp = result["date"].replace(":", "").replace("-", "")[:15]
    path = out_dir / f"{result['benchmark']}-{result['model']}-{result['device_type']}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
