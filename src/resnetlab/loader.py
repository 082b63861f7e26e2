"""Batches for training and evaluation, made on the training device.

Small datasets live on the device as one uint8 tensor. Each epoch draws one permutation and
every example's crop offset and flip up front from a generator seeded by (seed, epoch), so an
epoch is the same whether it runs straight through or is resumed half way. Augmentation and
normalisation then run on whole batches on the device: no per-image Python, no worker processes.

Because every process draws the same plan from (seed, epoch) without talking to the others,
several processes (torchrun) each take their own slice of every batch (``rank``, ``world``).
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

if TYPE_CHECKING:
    from .data import ArrayDataset, FolderDataset


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), on the 0-1 scale.

    A channel that never varies gets a standard deviation of 1 (left unscaled): dividing by zero
    would turn every batch into NaNs.
    """
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    std = x.std(1)
    return x.mean(1).tolist(), torch.where(std > 0, std, 1.0).tolist()


def colour_pca(images: torch.Tensor, pixels: int = 1_000_000, seed: int = 0) -> dict[str, list]:
    """Principal components of the pixel colours of uint8 images (N, C, H, W), on the 0-1 scale: what
    AlexNet's colour noise (``lighting``) moves pixels along. A seeded sample of ``pixels`` pixels.

    Returns {"eigval": [C], "eigvec": [C][C]}, the eigenvectors as columns, largest eigenvalue first.
    """
    x = images.transpose(0, 1).reshape(images.shape[1], -1)
    g = torch.Generator().manual_seed(seed)
    if x.shape[1] > pixels:
        x = x[:, torch.randint(0, x.shape[1], (pixels,), generator=g)]
    # atleast_2d: one channel's covariance is its variance, and its one component is brightness.
    eigval, eigvec = torch.linalg.eigh(torch.atleast_2d(torch.cov(x.double() / 255)))
    return {"eigval": eigval.flip(0).clamp(min=0).tolist(), "eigvec": eigvec.flip(1).tolist()}


def normalize(images: torch.Tensor, mean: list[float] | torch.Tensor, std: list[float] | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, scaled to 0-1 and standardised per channel."""
    m = torch.as_tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - m) / s


def crop_and_flip(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``size x size`` windows at per-image offsets (dy, dx) from padded images, mirroring where ``flip``.

    One gather for the whole batch: the row and column indices of every output pixel are built
    by broadcasting, and the flip just reverses the column indices.
    """
    n, c = padded.shape[:2]
    ar = torch.arange(size, device=padded.device)
    rows = (dy.view(n, 1) + ar).view(n, 1, size, 1)
    cols = dx.view(n, 1) + torch.where(flip.view(n, 1), ar.flip(0), ar)
    cols = cols.view(n, 1, 1, size)
    batch = torch.arange(n, device=padded.device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=padded.device).view(1, c, 1, 1)
    return padded[batch, chan, rows, cols]


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Cut a box out of each image and resize it to ``size x size`` (bilinear), mirroring where ``flip``.

    ``boxes`` holds (centre x, centre y, width, height) per image, as fractions of the image side.
    One ``grid_sample`` does the whole batch: each box is an affine map from output to input
    coordinates. Returns float images on the 0-255 scale.
    """
    n = images.shape[0]
    cx, cy, w, h = boxes.to(torch.float32).unbind(1)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0] = torch.where(flip, -w, w)
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_boxes(n: int, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """(n, 4) crop boxes for ``resized_crop``: area a uniform fraction in ``scale`` of the image,
    aspect ratio log-uniform in [3/4, 4/3] (torchvision's RandomResizedCrop), sides clipped to the
    image, placed uniformly inside it."""
    area = torch.empty(n).uniform_(*scale, generator=generator)
    ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator).exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = w / 2 + torch.rand(n, generator=generator) * (1 - w)
    cy = h / 2 + torch.rand(n, generator=generator) * (1 - h)
    return torch.stack([cx, cy, w, h], 1)


@dataclass
class EpochPlan:
    """Everything random about one epoch: the order of the examples and how each is augmented."""

    order: torch.Tensor
    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    boxes: torch.Tensor | None = None  # scale augmentation's crop boxes, when it is on
    crop_seeds: torch.Tensor | None = None  # folders: instead of boxes, a seed for each image's crop from its file
    lighting: torch.Tensor | None = None  # (N, C) weights of the colour components, when colour noise is on


class DeviceLoader:
    """Batches of a dataset held on the device.

    Args:
        images: uint8 (N, C, H, W); moved to ``device`` once.
        labels: int64 (N,).
        batch_size: examples per batch.
        mean, std: per-channel normalisation (0-1 scale).
        train: shuffle, augment and drop the last partial batch; otherwise keep order, no augmentation.
        pad_crop: zero padding for the random crop (0 = no crop).
        scale_crop: (smallest, largest) area fraction of a random box, cut out and resized back to
            the full side (scale augmentation, as torchvision's RandomResizedCrop); replaces pad_crop.
        scale_jitter: (shortest, longest) shorter side of a folder image before a random crop
            (the 2015 paper's scale augmentation); ``FolderLoader`` only.
        flip: random horizontal flips.
        lighting: std of AlexNet's colour noise: each image moves along the principal components
            ``colour_pca`` (from the training set) by N(0, lighting) times each one's eigenvalue.
        seed: with the epoch number, fixes every random choice of that epoch.
        channels_last: hand the model NHWC batches (faster convolutions on GPUs and on CPUs).
        rank, world: with several processes, this one yields every ``world``-th example of each
            training batch, starting at ``rank`` (``batch_size`` stays the global batch).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: list[float],
        std: list[float],
        device: torch.device | str = "cpu",
        *,
        train: bool = True,
        pad_crop: int = 0,
        flip: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world: int = 1,
        scale_crop: tuple[float, float] | None = None,
        lighting: float = 0.0,
        colour_pca: dict | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self._configure(labels, images.shape[-1], batch_size, mean, std, device, train=train, pad_crop=pad_crop,
                        flip=flip, seed=seed, channels_last=channels_last, rank=rank, world=world,
                        scale_crop=scale_crop, scale_jitter=None, lighting=lighting, colour_pca=colour_pca)
        # Pad once for the whole dataset: each batch is then a single gather.
        images = images.to(self.device)
        self.images = F.pad(images, (self.pad,) * 4) if self.pad else images

    def _configure(self, labels: torch.Tensor, size: int, batch_size: int, mean: list[float], std: list[float],
                   device: torch.device | str, *, train: bool, pad_crop: int, flip: bool, seed: int, channels_last: bool,
                   rank: int, world: int, scale_crop: tuple[float, float] | None, scale_jitter: tuple[int, int] | None,
                   lighting: float, colour_pca: dict | None) -> None:
        """Check and keep the settings both loaders share (the crop kinds, colour noise, sharding)."""
        if scale_crop is not None and not 0 < scale_crop[0] <= scale_crop[1] <= 1:
            raise ValueError(f"scale_crop must be two area fractions 0 < low <= high <= 1, got {scale_crop}")
        if sum(x is not None and x != 0 for x in (pad_crop, scale_crop, scale_jitter)) > 1:
            raise ValueError("pad_crop, scale_crop and scale_jitter are three kinds of crop: set one of them")
        if lighting and colour_pca is None:
            raise ValueError("colour noise (lighting) needs the training set's colour components (colour_pca)")
        self.scale = tuple(scale_crop) if train and scale_crop is not None else None
        self.jitter = tuple(scale_jitter) if train and scale_jitter is not None else None
        self.lighting = lighting if train else 0.0
        if self.lighting:
            # Each component scaled by its eigenvalue, as rows: a batch's colour shifts are then one matmul.
            eigval, eigvec = (torch.tensor(colour_pca[k], dtype=torch.float32) for k in ("eigval", "eigvec"))
            self._components = (eigvec * eigval).T.contiguous().to(device)
        if train and len(labels) < batch_size:
            raise ValueError(f"batch size {batch_size} is larger than the {len(labels)} training examples")
        if train and batch_size % world:
            raise ValueError(f"batch size {batch_size} does not split evenly over {world} processes")
        self.rank, self.world = (rank, world) if train else (0, 1)  # every process evaluates whole batches
        self.device = torch.device(device)
        self.labels = labels.to(self.device)
        self.size, self.pad = size, pad_crop if train else 0
        self.batch_size, self.mean, self.std = batch_size, mean, std
        # Made once: a small tensor copied from the host on every batch would make the host wait for the GPU.
        self._mean_std = [torch.tensor(v, device=self.device) for v in (mean, std)]
        self.train, self.flip, self.seed = train, flip, seed
        self.channels_last = channels_last

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's permutation and augmentation, drawn on the CPU so they are the same on every device."""
        n = self.num_examples
        if not self.train:
            zeros = torch.zeros(n, dtype=torch.long)
            return EpochPlan(torch.arange(n), zeros, zeros, zeros.bool())
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        # Drawn after the rest, so that turning them on leaves the other draws as they were.
        boxes = random_boxes(n, self.scale, g) if self.scale else None
        lighting = torch.randn(n, len(self._mean_std[0]), generator=g) * self.lighting if self.lighting else None
        return EpochPlan(order, dy, dx, flip, boxes, lighting=lighting)

    def _fetch(self, batches: list[tuple[torch.Tensor, torch.Tensor]], plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) on the device for each batch, already padded for the crop.

        Each batch comes as its indices twice: on the CPU and on the device.
        """
        for _, idx in batches:
            yield self.images[idx], self.labels[idx]

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (normalised float batch, labels) for one epoch, beginning at batch ``start_batch``."""
        p = self.plan(epoch)
        # The plan crosses to the device in one copy per epoch: a copy from pageable host memory
        # per batch would wait until the GPU had finished the step already queued.
        order, dy, dx, flip = (t.to(self.device) for t in (p.order, p.dy, p.dx, p.flip))
        boxes = p.boxes.to(self.device) if p.boxes is not None else None
        lighting = p.lighting.to(self.device) if p.lighting is not None else None
        spans = [slice(b * self.batch_size, (b + 1) * self.batch_size) for b in range(start_batch, len(self))]
        shard = slice(self.rank, None, self.world)
        batches = [(p.order[s][shard], order[s][shard]) for s in spans]
        for (_, idx), (raw, labels) in zip(batches, self._fetch(batches, p)):
            if boxes is not None:
                raw = resized_crop(raw, boxes[idx], flip[idx], self.size)
            elif self.train and (self.pad or self.flip):
                raw = crop_and_flip(raw, dy[idx], dx[idx], flip[idx], self.size)
            x = normalize(raw, *self._mean_std)
            if lighting is not None:  # the colour shift on the 0-1 scale, divided by std as the pixels were
                shift = (lighting[idx] @ self._components) / self._mean_std[1]
                x = x + shift[:, :, None, None]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def close(self) -> None:
        """Let go of what the loader holds beyond its tensors (a ``FolderLoader``'s worker processes)."""


class FolderLoader(DeviceLoader):
    """Batches of a dataset too big for memory (a folder of images), decoded by DataLoader workers.

    Same epoch plans, augmentation and normalisation as ``DeviceLoader``, but scale augmentation
    crops each image from its file in the workers, seeded by the plan: ``scale_crop`` with
    torchvision's RandomResizedCrop (``data.load_random_crop``), ``scale_jitter`` as the 2015 paper
    (``data.load_jitter_crop``). ``dataset[i]`` must return (uint8 (C, H, W) image, label).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, labels: torch.Tensor, batch_size: int, mean: list[float],
                 std: list[float], device: torch.device | str = "cpu", *, train: bool = True, pad_crop: int = 0,
                 flip: bool = False, seed: int = 0, channels_last: bool = False, rank: int = 0, world: int = 1,
                 scale_crop: tuple[float, float] | None = None, workers: int = 4,
                 scale_jitter: tuple[int, int] | None = None, lighting: float = 0.0, colour_pca: dict | None = None) -> None:
        size = dataset[0][0].shape[-1]
        self._configure(labels, size, batch_size, mean, std, device, train=train, pad_crop=pad_crop, flip=flip, seed=seed,
                        channels_last=channels_last, rank=rank, world=world, scale_crop=scale_crop,
                        scale_jitter=scale_jitter, lighting=lighting, colour_pca=colour_pca)
        if self.jitter is not None:
            check_scale_jitter(self.jitter, size, from_files=True)
        self.dataset, self.workers = dataset, workers
        # One DataLoader for every epoch, made at the first: its workers last as long as this loader,
        # rather than starting again each epoch (where processes are spawned, as on macOS and
        # Windows, each start imports torch again: seconds, and hundreds of MB, a worker).
        self._keys, self._decoder, self._pass = _EpochKeys(), None, None

    def plan(self, epoch: int) -> EpochPlan:
        p = super().plan(epoch)
        if p.boxes is not None or self.jitter is not None:
            # Crop each image from its file, as torchvision does, rather than from a copy squashed to
            # the training size: a small box of a photo keeps its detail and its proportions.
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) ^ 0x5EED)
            p.boxes, p.crop_seeds = None, torch.randint(0, 2**62, (self.num_examples,), generator=g)
        return p

    def _fetch(self, batches: list[tuple[torch.Tensor, torch.Tensor]], plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        keys = [cpu.tolist() for cpu, _ in batches]
        if plan.crop_seeds is not None:  # the same for every epoch: this loader's recipe decides it
            keys = [list(zip(k, plan.crop_seeds[cpu].tolist())) for k, (cpu, _) in zip(keys, batches)]
        if self._decoder is None:
            dataset = self.dataset if plan.crop_seeds is None else _RandomCrops(self.dataset, self.size, self.scale, self.jitter)
            # Kept from epoch to epoch for training only: a test set's pool would double the processes held.
            self._decoder = _reporting_loader(dataset, batch_sampler=self._keys, num_workers=self.workers,
                                             persistent_workers=self.train and self.workers > 0,
                                             pin_memory=self.device.type == "cuda")
        # The DataLoader reads its batch sampler as each pass starts (_raise_reported's first batch), in this
        # process: only the keys change from epoch to epoch, and the workers are sent each batch's.
        self._keys.batches = keys
        self._pass = _raise_reported(self._decoder)
        for images, labels in self._pass:
            images = images.to(self.device, non_blocking=True)
            yield (F.pad(images, (self.pad,) * 4) if self.pad else images), labels.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the workers now. Left to the garbage collector, they would last as long as anything holds
        the epoch under way, as the traceback of an error raised in it does: forked with the run's open
        lock file, they would hold the run's lock after the run has let it go."""
        if self._pass is not None:  # a test loader's workers belong to the pass under way, and end with it
            self._pass.close()
            self._pass = None
        # DataLoader has no public way to stop persistent workers: its iterator's own shutdown (private API).
        iterator = getattr(self._decoder, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._decoder = None


class _EpochKeys:
    """A FolderLoader's batch sampler: the keys of the epoch under way, a list of them a batch."""

    def __init__(self) -> None:
        self.batches: list[list] = []

    def __iter__(self) -> Iterator[list]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def decode_in_workers(dataset: torch.utils.data.Dataset, collate_fn: Callable = default_collate,
                      errors_in_batch: bool = False, **kwargs: Any) -> Iterator:
    """The batches of a ``DataLoader`` over ``dataset`` (``kwargs`` are its own).

    A file a worker cannot read stops the iteration with that file's own ``DataError`` (one line),
    instead of the DataLoader's copy of it, which carries the worker's traceback in its message. With
    ``errors_in_batch`` the error takes the item's place in its batch instead (``collate_fn`` must
    take it, as ``list`` does), and the iteration goes on.
    """
    return _raise_reported(_reporting_loader(dataset, collate_fn, errors_in_batch, **kwargs))


def _reporting_loader(dataset: torch.utils.data.Dataset, collate_fn: Callable = default_collate,
                     errors_in_batch: bool = False, **kwargs) -> torch.utils.data.DataLoader:
    """The ``DataLoader`` of ``decode_in_workers``, to go through more than once (with ``_raise_reported``)."""
    collate = collate_fn if errors_in_batch else partial(_collate_reported, collate_fn)
    # Its own generator for the workers' base seed (the decoding draws nothing random): the caller's
    # global generator, which a run puts back as it found it, is left alone.
    kwargs.setdefault("generator", torch.Generator())
    return torch.utils.data.DataLoader(_Reporting(dataset), collate_fn=collate, worker_init_fn=_ignore_ctrl_c, **kwargs)


def _ignore_ctrl_c(worker_id: int) -> None:
    """A terminal's Ctrl-C reaches every process of its group: a worker that ended on it left the trainer,
    which finishes its step and saves before it stops (train._StepEndInterrupt), waiting for a batch that
    never came. Workers end when their loader stops them. (SIGTERM still ends them: multiprocessing's
    exit sends it to every worker left and waits for each.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _raise_reported(loader: torch.utils.data.DataLoader) -> Iterator:
    """One pass over a ``_reporting_loader``: its batches, an unreadable file's ``DataError`` raised."""
    from .data import DataError

    for batch in loader:
        if isinstance(batch, DataError):
            raise batch
        yield batch


class _Reporting(torch.utils.data.Dataset):
    """``dataset``'s items, or the ``DataError`` an item raised, returned rather than raised."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        from .data import DataError

        try:
            return self.dataset[key]
        except DataError as err:
            return err


def _collate_reported(collate_fn: Callable, items: list):
    from .data import DataError

    return next((item for item in items if isinstance(item, DataError)), None) or collate_fn(items)


class _RandomCrops(torch.utils.data.Dataset):
    """A folder's images cut by scale augmentation, ``scale`` (RandomResizedCrop) or ``jitter`` (the
    2015 paper's): item (index, seed) -> (crop, label)."""

    def __init__(self, dataset, size: int, scale: tuple[float, float] | None, jitter: tuple[int, int] | None) -> None:
        self.dataset, self.size, self.scale, self.jitter = dataset, size, scale, jitter

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from .data import load_jitter_crop, load_random_crop

        (path, label), seed, channels = self.dataset.samples[key[0]], key[1], self.dataset.channels
        if self.jitter is not None:
            return load_jitter_crop(path, channels, self.size, seed, self.jitter), label
        return load_random_crop(path, channels, self.size, seed, self.scale), label


def scaled_jitter(sides: Sequence[int], size: int) -> tuple[int, ...]:
    """Scale jitter's shorter sides for ``size``-pixel crops, in the proportion the 2015 paper's 256-480
    have to its 224-pixel crops (each rounded up, so a crop always fits)."""
    return tuple(math.ceil(side * size / 224) for side in sides)


def check_scale_jitter(sides: tuple[int, int], size: int, from_files: bool) -> None:
    """Scale jitter resizes image files (``from_files``), and its ``size`` crop must fit in the smallest
    resized image."""
    if not from_files:
        raise ValueError("scale jitter resizes image files: it needs a folder dataset (folder:PATH)")
    low, high = sides
    if not size <= low <= high:
        scaled = ",".join(map(str, scaled_jitter((256, 480), size)))
        raise ValueError(f"scale jitter's shorter sides {low}-{high} must be at least the training size {size}; "
                         f"the paper's 256-480 for 224-pixel crops is --recipe-arg scale_jitter=[{scaled}] at this size")


def dataset_shape(ds: ArrayDataset | FolderDataset) -> tuple[int, int]:
    """(channels, side) of a dataset's images, in memory or in a folder."""
    if hasattr(ds, "images"):
        return int(ds.images.shape[1]), int(ds.images.shape[-1])
    image = ds[0][0]
    return int(image.shape[0]), int(image.shape[-1])


def stats_sample(ds: ArrayDataset | FolderDataset, sample: int = 2000, seed: int = 0, workers: int | None = None) -> torch.Tensor:
    """The uint8 images a dataset's statistics are taken from: all of them in memory, or a seeded
    sample of ``sample`` images of a folder, decoded by ``workers`` processes (default one a CPU)."""
    if hasattr(ds, "images"):
        return ds.images
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(ds), generator=g)[:sample].tolist()
    with closing(decode_in_workers(torch.utils.data.Subset(ds, picks), batch_size=64,
                                   num_workers=default_workers() if workers is None else workers)) as batches:
        return torch.cat([images for images, _ in batches])


def make_loader(ds: ArrayDataset | FolderDataset, batch_size: int, mean: list[float], std: list[float], device: torch.device, train: bool,
                workers: int | None = None, **kwargs: Any) -> DeviceLoader:
    """A ``DeviceLoader`` for a dataset in memory, a ``FolderLoader`` for one left on disk.

    ``workers`` (folders only) decode images in parallel; by default one a CPU, up to 16.
    """
    if hasattr(ds, "images"):
        sides = kwargs.pop("scale_jitter", None)
        if sides is not None and train:
            check_scale_jitter(sides, int(ds.images.shape[-1]), from_files=False)
        return DeviceLoader(ds.images, ds.labels, batch_size, mean, std, device, train=train, **kwargs)
    labels = torch.from_numpy(ds.samples.labels)
    if workers is None:
        workers = default_workers()
    if workers < 0:
        raise ValueError(f"--workers must be 0 (decode in the training process) or more, got {workers}")
    return FolderLoader(ds, labels, batch_size, mean, std, device, train=train, workers=workers, **kwargs)


def default_workers() -> int:
    """Processes that decode image files: one for each CPU this process may use, up to 16."""
    return min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
