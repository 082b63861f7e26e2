"""Training: one recipe, one dataset held on the device, one loop.

``train(TrainConfig(...))`` runs a whole job and leaves a run directory (see ``runs``);
``resume(run_dir)`` continues one. The loop is plain PyTorch: nothing to subclass, no callbacks.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm  # a widget in Jupyter (where stderr is no terminal, so a text bar would be off)

from . import __version__, distributed, runs
from .data import DataError, check_side, fingerprint, found_elsewhere, folder_sizes, load_splits, reload_sizes, resolve_dataset
from .devices import arithmetic_change, check_device_name, environment, kernel_choices, pick_device, seeded, uses_channels_last
from .errors import ResnetlabError
from .evaluate import EvalResult, evaluate, statistics_note
from .loader import DeviceLoader, channel_stats, check_scale_jitter, colour_pca, dataset_shape, make_loader, scaled_jitter, stats_sample
from .models import create_model, depth_of, registered_by
from .pretrained import input_stats, is_file_spec, weights_layout, weights_name
from .recipes import Recipe, default_recipe, get_recipe, lr_at, warmup_note
from .steps import TrainStep, build_train_step
from .typecheck import check_types, is_integer


@dataclass
class TrainConfig:
    """What to train, on what, and how. ``None`` means "the recipe's value" (for ``recipe``, the model's recipe)."""

    model: str = "resnet20"
    dataset: str = "fashion-mnist"
    data_dir: str | os.PathLike | None = None  # paths are kept as text, which config.json holds
    recipe: str | None = None  # None: the model's (recipes.default_recipe: fast; signs-adam for signs_resnet50)
    epochs: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    image_size: int | None = None  # the side images are resized to (folders: 64 unless told; named datasets: their own)
    device: str | torch.device = "auto"  # kept as text ("cuda:0")
    seed: int = 0
    # Which images a folder holds out for testing and which --limit draws take: apart from `seed`, so that
    # runs of several seeds are scored on one test set and differ only in weights, order and augmentation.
    data_seed: int = 0
    out: str | os.PathLike | None = None
    compile: bool = False
    deterministic: bool = False
    cuda_graph: bool = True  # on CUDA, replay the whole step as one CUDA graph
    eval_every: int = 1  # epochs between test-set evaluations (the last epoch is always evaluated)
    progress: bool = True  # progress bars within epochs, on a terminal; a line for each epoch is printed either way
    grad_norm_every: int = 0  # record every weight's gradient norm every N steps (0: never)
    # Stop when the loss is no longer a finite number; experiments train on, as the papers' failing variants did.
    stop_on_divergence: bool = True
    model_kwargs: dict = field(default_factory=dict)
    recipe_overrides: dict = field(default_factory=dict)  # any other recipe field, e.g. {"schedule": "cosine"}
    weights: str | os.PathLike | Enum | None = None  # starting weights: a torchvision tag (IMAGENET1K_V2, DEFAULT) or a file
    workers: int | None = None  # folder datasets: processes decoding images (default: one a CPU, up to 16)

    def __post_init__(self) -> None:
        # Paths, torch.devices and torchvision's weights enums become the text config.json keeps; then
        # every field is checked against its annotation, so that a value of the wrong kind is named
        # here rather than failing deep inside training.
        for name in ("data_dir", "out"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.device, torch.device):
            self.device = str(self.device)
        if self.weights is not None:
            self.weights = weights_name(self.weights, self.model)
        for name in ("model_kwargs", "recipe_overrides"):
            if not isinstance(getattr(self, name), Mapping):
                raise TypeError(f"{name} must be a dict of option names and values, not {getattr(self, name)!r}")
            setattr(self, name, dict(getattr(self, name)))  # any mapping (Hydra's DictConfig): config.json holds a dict
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name, value in check_types(TrainConfig, fields).items():
            # NumPy's numbers become Python's (config.json holds those); an int given for a float stays an int.
            if type(fields[name]) not in (bool, int, float, str):
                setattr(self, name, value)
        check_device_name(self.device)
        if self.eval_every < 1:
            raise ValueError(f"eval_every (--eval-every) must be at least 1, got {self.eval_every}")
        for name in ("seed", "data_seed"):
            if not 0 <= getattr(self, name) < 2**32:  # torch's range; its own message names no flag
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be from 0 to 2**32 - 1, got {getattr(self, name)}")
        for name, least in (("limit_train", 1), ("limit_test", 1), ("workers", 0), ("grad_norm_every", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                flag = f" (--{name.replace('_', '-')})" if name != "grad_norm_every" else ""  # experiments set it, no flag
                raise ValueError(f"{name}{flag} must be at least {least}, got {value}")
        # A run's files name its directory in UTF-8 (TensorBoard's writer, config.json); without --out the
        # directory is named after the dataset.
        for name, value, fix in (("out (--out)", self.out, "give another"), ("dataset (--dataset)", self.dataset, "rename it")):
            try:
                str(value or "").encode()
            except UnicodeEncodeError:
                raise ValueError(f"{name} {str(value)!r} has a name that is not text (UTF-8): {fix}") from None
        if self.image_size is not None:
            check_side(self.image_size, "image_size (--image-size)")
        resolve_recipe(self)  # the recipe's ranges (lr, steps, ...) and names, checked now rather than when training starts


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: Path
    steps: int
    seconds: float
    test: EvalResult | None
    history: list[dict]
    model: nn.Module  # the trained model, on the training device, in eval mode

    @property
    def test_accuracy(self) -> float | None:
        """The last evaluation's test accuracy (a fraction): this call's (``test``), or, for a run that
        ``resume`` found finished, the one its history ends with. None if the run ended with none."""
        if self.test is not None:
            return self.test.accuracy
        return self.history[-1].get("test_acc") if self.history else None


class Interrupted(KeyboardInterrupt):
    """Training stopped early (Ctrl-C or ``stop_at``) after saving a resumable checkpoint.

    A ``KeyboardInterrupt``, as Ctrl-C's own is: a sweep that catches ``Exception`` around each run
    to go on past a failing one still stops when its user asks it to.
    """

    def __init__(self, run_dir: Path, step: int, processes: int = 1, model: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(f"stopped at step {step}; continue with: {_resume_command(run_dir, processes, model)}")
        self.run_dir, self.step = run_dir, step
        self.signum = signum  # what stopped it (SIGINT for stop_at too): the command line exits with 128 + it


def _resume_command(run_dir: Path, processes: int, model: str = "") -> str:
    """The command that continues a run, with as many processes as trained it, and with the module that
    registered its model when that is the user's own."""
    launcher = f"torchrun --nproc-per-node={processes} -m resnetlab" if processes > 1 else "resnetlab"
    module = registered_by(model)
    imports = f" --import {module}" if module else ""
    return f"{launcher}{imports} train --resume {run_dir}"


class Diverged(ResnetlabError, RuntimeError):
    """The training loss stopped being a finite number."""


def _new_run_dir(config: TrainConfig) -> tuple[Path, runs.RunLock]:
    """The run's directory, locked for this process: ``--out``, checked under the lock (a run another
    process started a moment ago is refused), or a new one under runs/."""
    if config.out:
        out = Path(config.out)
        lock = runs.RunLock(out)
        try:
            # Checked by train() before the data were read, and again here: another process may have started
            # a run there since.
            _refuse_taken_out(config)
            if (out / runs.CONFIG).exists():
                # A run that failed before its first checkpoint left nothing to resume: it starts again here.
                runs.clear_unstarted(out)
        except runs.RunError:
            lock.release()
            raise
        return out, lock
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.model}-{config.dataset.replace(':', '_').replace('/', '_')}-{stamp}"
    # Made here, under a name no other run took: two runs started in the same second get -2, -3, ...
    for n in itertools.count(1):
        run_dir = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir, runs.RunLock(run_dir)
        except FileExistsError:
            continue


def _refuse_taken_out(config: TrainConfig) -> None:
    """A RunError if ``--out`` cannot take a new run: a file, or a folder holding a run or a model."""
    out = runs.out_folder(config.out, "a run directory is one (new, or one a failed run left)")
    if (out / runs.CHECKPOINT).exists():
        raise runs.RunError(f"{out} already holds a run; continue it with --resume {out} or pick another --out")
    if (out / runs.WEIGHTS).exists():
        raise runs.RunError(f"{out} already holds a model; pick another --out (--weights {out / runs.WEIGHTS} "
                            "starts from it)")


def resolve_recipe(config: TrainConfig) -> Recipe:
    """The recipe ``config`` names, with its recipe overrides and then its flags (``--lr`` and the like) applied."""
    flags = {"epochs": config.epochs, "steps": config.steps, "batch_size": config.batch_size, "lr": config.lr,
             "weight_decay": config.weight_decay}
    name = config.recipe or default_recipe(config.model)
    recipe = get_recipe(name, **{**config.recipe_overrides, **{k: v for k, v in flags.items() if v is not None}})
    given = sorted({"warmup_steps", "warmup_lr", "warmup_shape"} & set(config.recipe_overrides))
    depth = depth_of(config.model)
    if given and recipe.warmup_steps and depth < recipe.warmup_min_depth:  # asked for, and silently skipped
        raise ValueError(f"recipe {recipe.name} warms up nets of {recipe.warmup_min_depth} layers and deeper, and "
                         f"{config.model} has {depth}: add --recipe-arg warmup_min_depth=0 for its {' and '.join(given)}")
    return recipe


# Training needs autograd whatever mode the caller is in: a notebook's earlier cell may have left
# torch.set_grad_enabled(False), or the call may sit inside torch.no_grad() or torch.inference_mode().
@torch.inference_mode(False)
@torch.enable_grad()
def train(config: TrainConfig | None = None, stop_at: int | None = None, **overrides: Any) -> TrainResult:
    """Train a model as ``config`` says and write its run directory.

    Keyword arguments override fields of ``config`` (``train(model="resnet56", epochs=2)``).
    ``stop_at`` ends the run after that many steps by raising ``Interrupted``, leaving it resumable
    (beyond the run's last step it changes nothing).

    The run draws from Python's, NumPy's and torch's global generators, seeded with its seed; when it
    ends they are put back as they were, so the caller's own draws go on undisturbed. ``deterministic=True``
    also switches torch to deterministic algorithms while the run trains (a switch of the whole process,
    put back as it was too).
    """
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"train takes a TrainConfig, not {type(config).__name__} (a dict's fields go as keywords: train(**fields))")
    _check_stop_at(stop_at, 0)
    config = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    recipe = resolve_recipe(config)
    world = distributed.world_from_env()
    device = distributed.setup(world, pick_device(config.device))
    _check_model_kwargs(config.model_kwargs)
    if config.out and world.is_main:
        _refuse_taken_out(config)  # before the data are read: a taken --out is refused at once
    # imagenet names a folder prepared from its archives: by process 0 alone, the others wait for its name.
    config.dataset = distributed.share(resolve_dataset(config.dataset, config.data_dir) if world.is_main else None, world)
    recipe, data = _load_data(config, recipe)
    # Whatever can be refused is refused before the run directory is made: a run that cannot start leaves nothing.
    model, model_kwargs = _build_model(config, data)
    _check_recipe_fits(recipe, data, config.dataset)
    stats = _input_statistics(config, recipe, data)
    saved = _run_config(config, recipe, data, model_kwargs, stats, device, world)

    run_dir, lock = _new_run_dir(config) if world.is_main else (None, None)
    try:
        run_dir = distributed.share(run_dir, world)  # one name, though clocks may differ
        if world.is_main:
            runs.write_json(run_dir / runs.CONFIG, saved)
            if note := warmup_note(recipe, saved["total_steps"], depth_of(config.model)):
                print(f"note: {note}", file=sys.stderr)
        return _run(saved, run_dir, data.train_set, data.test_set, device, config.progress, stop_at, checkpoint=None,
                    world=world, workers=config.workers, model=model)
    finally:
        if lock is not None:
            lock.release()


def _check_model_kwargs(model_kwargs: Mapping) -> None:
    """Refuse builder arguments that the dataset decides, or that build a model with nothing to train."""
    fixed = [k for k in ("num_classes", "in_chans") if k in model_kwargs]
    if fixed:
        raise ValueError(f"{' and '.join(fixed)} {'come' if len(fixed) > 1 else 'comes'} from the dataset (its classes "
                         "and colour channels): drop the --model-arg")
    if model_kwargs.get("features_only"):
        raise ValueError("features_only builds a backbone without a classifier, which has nothing to train on labels; "
                         "train the classifier, then load its model.safetensors with create_model(..., features_only=True, weights=...)")


class _Data(NamedTuple):
    """A new run's training and test splits, and the shape of their images."""

    train_set: torch.utils.data.Dataset
    test_set: torch.utils.data.Dataset
    channels: int
    image_size: int  # the side images are trained at
    resize_to: int | None  # a folder's held-out images: their shorter side before the centre crop (None: squashed)


def _load_data(config: TrainConfig, recipe: Recipe) -> tuple[Recipe, _Data]:
    """The splits ``config`` names, sized as ``recipe`` trains them; and the recipe, its scale jitter fitted to that size."""
    size, resize_to = folder_sizes(config.dataset, config.image_size, recipe)
    if recipe.scale_jitter is not None and size and "scale_jitter" not in config.recipe_overrides:
        # The paper's shorter sides 256-480 go with 224-pixel crops: other crops keep the proportions.
        recipe = replace(recipe, scale_jitter=scaled_jitter(recipe.scale_jitter, size))
    train_set, test_set = load_splits(config.dataset, config.data_dir, config.limit_train, config.limit_test, config.data_seed,
                                      size, resize_to)
    return recipe, _Data(train_set, test_set, *dataset_shape(train_set), resize_to)


def _build_model(config: TrainConfig, data: _Data) -> tuple[nn.Module, dict]:
    """The model to train, and the builder arguments config.json records. Built before anything is written,
    so that a bad name, unusable weights or images of a size the model cannot take fail first."""
    model_kwargs = {"num_classes": len(data.train_set.classes), "in_chans": data.channels, **weights_layout(config.weights),
                    **config.model_kwargs}
    with seeded(config.seed):  # the model's fresh layers start as the seed says
        model = create_model(config.model, weights=config.weights, **model_kwargs)
    if model.fixed_input_size not in (None, data.image_size):
        side = model.fixed_input_size
        raise ValueError(f"{config.model} takes {side}x{side} images (its head flattens a 2x2 map, as Keras's layout does), "
                         f"and {config.dataset}'s are {data.image_size}x{data.image_size}: add --image-size {side}")
    return model, model_kwargs


def _check_recipe_fits(recipe: Recipe, data: _Data, dataset: str) -> None:
    """Refuse a recipe the data cannot serve: scale jitter it cannot take, or batches larger than its training set.
    Checked before anything is written, rather than when the loader is made."""
    if recipe.scale_jitter is not None:
        check_scale_jitter(recipe.scale_jitter, data.image_size, from_files=dataset.startswith("folder:"))
    if len(data.train_set) < recipe.batch_size:
        raise ValueError(f"batch size {recipe.batch_size} (recipe {recipe.name}) is larger than the {len(data.train_set)} "
                         f"training examples; give --batch-size {len(data.train_set)} or less")


def _input_statistics(config: TrainConfig, recipe: Recipe, data: _Data) -> dict[str, object]:
    """The part of config.json that describes the inputs: ``mean`` and ``std``, their normalisation, and
    ``colour_pca``, the colour components the recipe's lighting noise moves pixels along (None without it)."""
    # Published weights expect the statistics they were trained with, not this dataset's.
    published = config.weights and input_stats(config.model, config.weights, data.channels)
    # One decoded sample of the training images for the normalisation and the colour components.
    sample = stats_sample(data.train_set, seed=config.data_seed, workers=config.workers) if not published or recipe.lighting else None
    mean, std = published or channel_stats(sample)
    return {"mean": mean, "std": std, "colour_pca": colour_pca(sample, seed=config.data_seed) if recipe.lighting else None}


def _run_config(config: TrainConfig, recipe: Recipe, data: _Data, model_kwargs: dict, stats: dict, device: torch.device,
                world: distributed.World) -> dict:
    """What a new run's config.json holds: what it trains, on what and how, so that it can be resumed and its model rebuilt."""
    steps_per_epoch = len(data.train_set) // recipe.batch_size
    return {
        "model": config.model,
        "model_kwargs": model_kwargs,
        "weights": config.weights and (str(Path(config.weights).resolve()) if is_file_spec(config.weights) else config.weights),
        "dataset": config.dataset,
        "data_dir": config.data_dir and str(Path(config.data_dir).expanduser().absolute()),
        "classes": data.train_set.classes,
        "channels": data.channels,
        "image_size": data.image_size,
        "resize_size": data.resize_to,
        **stats,  # mean, std, colour_pca
        "recipe": recipe.to_dict(),
        "total_steps": recipe.steps or max(1, round(recipe.epochs * steps_per_epoch)),
        "steps_per_epoch": steps_per_epoch,
        "train_examples": len(data.train_set),
        "test_examples": len(data.test_set),
        "data_fingerprint": _data_fingerprint(data.train_set, data.test_set),  # see resume's --data-dir
        "limit_train": config.limit_train,
        "limit_test": config.limit_test,
        "seed": config.seed,
        "data_seed": config.data_seed,
        "deterministic": config.deterministic,
        "compile": config.compile,
        "cuda_graph": config.cuda_graph,
        "eval_every": config.eval_every,
        "grad_norm_every": config.grad_norm_every,
        "stop_on_divergence": config.stop_on_divergence,
        "device": str(device),
        "processes": world.size,
        "versions": {"resnetlab": __version__, "torch": torch.__version__},
        "environment": environment(device),  # each resume adds its own to "resumed"
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _check_stop_at(stop_at: int | None, step: int) -> None:
    """``stop_at`` must lie ahead of ``step``, where the run stands: a step already passed would never come."""
    if stop_at is not None and (not is_integer(stop_at) or stop_at <= step):
        where = f"the run stands at step {step}" if step else "steps count from 1"
        raise ValueError(f"stop_at must be a step after {step} ({where}), got {stop_at!r}")


@torch.inference_mode(False)
@torch.enable_grad()
def resume(run_dir: str | Path, device: str | torch.device = "auto", progress: bool = True, stop_at: int | None = None,
           workers: int | None = None, data_dir: str | None = None) -> TrainResult:
    """Continue a run from its last checkpoint, with the same data, recipe and randomness.

    ``device`` and ``workers`` may differ from the first run's: they change where and how fast, not what.
    So may ``data_dir``, where the same data now lives (a folder dataset's folder, or the folder holding
    a named dataset's files). The data, moved or not, must be the run's: its classes, image counts and
    digest (see ``data.fingerprint``).
    """
    run_dir = Path(run_dir)
    world = distributed.world_from_env()
    saved = runs.read_config(run_dir)
    lock = runs.RunLock(run_dir) if world.is_main else None
    try:
        return _resume(run_dir, saved, world, device, progress, stop_at, workers, data_dir)
    finally:
        if lock is not None:
            lock.release()


def _resume(run_dir: Path, saved: dict, world: distributed.World, device: str | torch.device, progress: bool, stop_at: int | None,
            workers: int | None, data_dir: str | None) -> TrainResult:
    processes = saved.get("processes", 1)
    if processes != world.size:  # each process's share of the batch, and so every step, would differ
        raise runs.RunError(f"{run_dir} was trained by {processes} process{'es' if processes > 1 else ''}, and "
                            f"resuming with {world.size} would change the run; continue with: "
                            f"{_resume_command(run_dir, processes, saved['model'])}")
    checkpoint = runs.load_checkpoint(run_dir)
    if checkpoint.get("model_name") != saved["model"]:
        raise runs.RunError(f"{run_dir / runs.CHECKPOINT} is a checkpoint of {checkpoint.get('model_name')}, not {saved['model']}")
    _check_stop_at(stop_at, checkpoint["step"])
    moved = data_dir is not None
    if moved:
        data_dir = str(Path(data_dir).expanduser().absolute())
        if not Path(data_dir).is_dir():  # it would be saved as the data's new home
            raise DataError(f"--data-dir {data_dir} is not a folder; give the folder the run's data moved to")
        saved = {**saved, **({"dataset": f"folder:{data_dir}"} if saved["dataset"].startswith("folder:") else {"data_dir": data_dir})}
    train_set, test_set = load_splits(
        saved["dataset"], saved["data_dir"], saved["limit_train"], saved["limit_test"], runs.data_seed(saved),
        **reload_sizes(saved["dataset"], saved),
    )
    if moved and not saved["dataset"].startswith("folder:") and found_elsewhere(saved["dataset"], data_dir):
        # Read from another copy, the run would go on; but config.json would then name a folder without its data.
        raise DataError(f"{saved['dataset']} is not in --data-dir {data_dir}: give the folder its files moved to, "
                        "or leave --data-dir out")
    # Moved or not, the data must be what the run started on: a folder may have lost or gained images since.
    where = data_dir if moved else saved["dataset"].removeprefix("folder:")
    found = (list(train_set.classes), len(train_set), len(test_set))
    if found != (saved["classes"], saved["train_examples"], saved["test_examples"]):
        raise runs.RunError(f"{where} holds {len(found[0])} classes and {found[1]:,} + {found[2]:,} images, not the run's "
                            f"{len(saved['classes'])} and {saved['train_examples']:,} + {saved['test_examples']:,}: not the same data")
    expected = saved.get("data_fingerprint")  # runs of earlier versions have none: counts and classes only
    if expected and expected != _data_fingerprint(train_set, test_set):
        raise runs.RunError(f"{where} holds as many images of the same classes as the run's data, but other "
                            "images or labels (or in another order): not the same data")
    device = distributed.setup(world, pick_device(device))
    rewrite = moved  # eval and later resumes find the data there too
    # Another session of training: process 0, which writes config.json, records where it runs.
    if world.is_main and checkpoint["step"] < saved["total_steps"]:
        sessions = saved.get("resumed", [])
        before = (sessions[-1] if sessions else saved).get("environment")
        now = environment(device)
        saved = {**saved, "resumed": [*sessions, {"step": checkpoint["step"], "device": str(device), "environment": now,
                                                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}]}
        change = arithmetic_change(before, now) if before else {}
        if change:
            said = ", ".join(f"{key} {was} -> {is_}" for key, (was, is_) in change.items())
            threads = f"; OMP_NUM_THREADS={before['threads']} gives it its thread count back" if "threads" in change else ""
            print(f"note: the run goes on with other arithmetic than it had ({said}): from step {checkpoint['step']} its "
                  f"numbers will drift, in the last bits at first, from an uninterrupted run's{threads}", file=sys.stderr)
        rewrite = True
    if rewrite and world.is_main:
        runs.write_json(run_dir / runs.CONFIG, saved)
    return _run(saved, run_dir, train_set, test_set, device, progress, stop_at, checkpoint, world, workers)


def _data_fingerprint(train_set: torch.utils.data.Dataset, test_set: torch.utils.data.Dataset) -> dict[str, str]:
    """What config.json records of a run's data, to tell the same data moved from other data."""
    return {"train": fingerprint(train_set), "test": fingerprint(test_set)}


def _run(saved: dict, run_dir: Path, train_set, test_set, device: torch.device, progress: bool, stop_at: int | None,
         checkpoint: dict | None, world: distributed.World = distributed.World(), workers: int | None = None,
         model: nn.Module | None = None) -> TrainResult:
    """Train from ``checkpoint`` (None: from the first step) to the run's last step, or to ``stop_at``."""
    recipe = Recipe.from_dict(saved["recipe"])
    # The graphed step is captured as the run is set up, so the kernel choices hold from here on.
    with seeded(saved["seed"]), kernel_choices(device, saved["deterministic"]):
        channels_last = uses_channels_last(device)
        if model is None:  # resuming: the checkpoint's weights replace these
            model = runs.build_model(saved)
        model = model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        train_loader, test_loader = _loaders(saved, recipe, train_set, test_set, device, channels_last, world, workers)
        try:
            run = _start(saved, run_dir, recipe, model, device, world, checkpoint, train_loader)
        except BaseException:  # a graphed step's capture has started the workers, which hold the run's lock too
            train_loader.close()
            raise
        history = runs.read_metrics(run_dir, missing_ok=True)
        result_test: EvalResult | None = None
        total_steps, steps_per_epoch = saved["total_steps"], saved["steps_per_epoch"]

        board = _Board(run_dir) if world.is_main else None
        started = time.perf_counter() - run.elapsed
        ctrl_c = _StepEndInterrupt(enabled=world.size == 1)
        try:
            if run.step == total_steps and world.is_main:
                # A finished run resumed: a kill between its last checkpoint and its weights (written second)
                # left the weights an epoch behind, which nothing else would write again.
                runs.save_weights(model, run_dir)
            while run.step < total_steps:
                epoch, start_batch = divmod(run.step, steps_per_epoch)
                epoch_start, resumed_seen = time.perf_counter(), start_batch * recipe.batch_size  # restored sums: not timed here
                try:
                    lr = _train_epoch(run, train_loader, stop_at, ctrl_c, progress and world.is_main)
                except DataError:  # a file that cannot be read, met mid-epoch: keep the steps taken
                    # Unless the weights went NaN, or other processes' sums would be missing: then the last checkpoint stands.
                    if world.size == 1 and math.isfinite(run.train_step.read_sums()["loss"]):
                        run.elapsed = time.perf_counter() - started
                        _save(run)
                    raise
                # A Ctrl-C stops the run as stop_at does, at the end of the step under way (see _StepEndInterrupt).
                stop_now = ctrl_c.requested or run.step == stop_at
                last = run.step >= total_steps
                if stop_now and not last and run.step % steps_per_epoch:  # mid-epoch: no row to write
                    run.elapsed = time.perf_counter() - started
                    distributed.sum_across(run.train_step.sums, world)  # the partial epoch's sums, of every process
                    _stop_if_diverged(run)
                    _save(run)
                    raise Interrupted(run_dir, run.step, world.size, saved["model"], ctrl_c.signum)
                row = _epoch_row(run, lr, epoch_start, resumed_seen)
                if last and recipe.precise_bn and world.is_main:  # process 0 evaluates and saves the weights
                    _precise_bn(model, train_loader, epoch + 1, recipe.precise_bn)
                if world.is_main and (last or (epoch + 1) % saved["eval_every"] == 0):
                    result_test = _evaluate_into(row, model, test_loader, len(saved["classes"]))
                run.elapsed = row["time"] = time.perf_counter() - started
                history.append(row)
                _end_epoch(run, row, board, last)
                if stop_now and not last:
                    raise Interrupted(run_dir, run.step, world.size, saved["model"], ctrl_c.signum)
        except Interrupted:  # a KeyboardInterrupt too, raised above with the run saved: it goes on as it is
            raise
        except KeyboardInterrupt:
            # A second Ctrl-C, or several processes (the others may be inside a collective): the step under way
            # may be half done (batch norms updated, weights not), so the last checkpoint stays as it is.
            raise Interrupted(run_dir, run.saved_step, world.size, saved["model"], ctrl_c.signum) from None
        except DataError as err:  # a file that cannot be read, met mid-run: say where the run stands
            raise DataError(f"{err}. The run is saved at step {run.saved_step}; continue it with: "
                            f"resnetlab train --resume {run_dir}") from None
        finally:
            ctrl_c.restore()
            train_loader.close()
            test_loader.close()
            if board is not None:
                board.close()
        return TrainResult(run_dir, run.step, run.elapsed, result_test, history, model.eval())


@dataclass
class _RunState:
    """What the loop's helpers share: the run being trained, and how far it has got."""

    saved: dict  # the run's config.json
    run_dir: Path
    recipe: Recipe
    device: torch.device
    world: distributed.World
    model: nn.Module
    train_step: TrainStep
    step: int
    elapsed: float  # seconds of training, the run's earlier sessions included
    saved_step: int  # the step of the checkpoint on disk
    grad_log: dict | None  # None: gradient norms are not recorded
    watched: list[tuple[str, nn.Parameter]]  # conv and fc weights, input to output
    pending_norms: list[torch.Tensor] = field(default_factory=list)


def _loaders(saved: dict, recipe: Recipe, train_set, test_set, device: torch.device, channels_last: bool,
             world: distributed.World, workers: int | None) -> tuple[DeviceLoader, DeviceLoader]:
    """The training batches (this process's share, augmented as the recipe says) and the test batches."""
    train_loader = make_loader(
        train_set, recipe.batch_size, saved["mean"], saved["std"], device, train=True,
        pad_crop=recipe.pad_crop, scale_crop=recipe.scale_crop, scale_jitter=recipe.scale_jitter, flip=recipe.flip,
        lighting=recipe.lighting, colour_pca=saved.get("colour_pca"), seed=saved["seed"],
        channels_last=channels_last, rank=world.rank, world=world.size, workers=workers,
    )
    test_loader = make_loader(
        test_set, max(256, recipe.batch_size), saved["mean"], saved["std"], device, train=False, channels_last=channels_last,
        workers=workers,
    )
    return train_loader, test_loader


def _start(saved: dict, run_dir: Path, recipe: Recipe, model: nn.Module, device: torch.device, world: distributed.World,
           checkpoint: dict | None, train_loader: DeviceLoader) -> _RunState:
    """The run ready for its next step: the first, or where ``checkpoint`` left it (weights, randomness, sums, files)."""
    step, elapsed = 0, 0.0
    if world.is_main:
        runs.remove_partial_writes(run_dir)  # a killed run's; no other process writes here (it is locked)
    if checkpoint is not None:
        runs.load_state(model, checkpoint["model"], run_dir / runs.CHECKPOINT, saved["model"])
        step, elapsed = checkpoint["step"], checkpoint["elapsed"]
        torch.set_rng_state(checkpoint["rng"])
        if device.type == "cuda" and "cuda_rng" in checkpoint:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
        if world.is_main:
            runs.truncate_metrics(run_dir, step)
    grad_every = saved.get("grad_norm_every", 0)
    # The graph replays one fixed step: recording gradient norms needs the eager one, and so (here)
    # does DistributedDataParallel, whose gradient averaging runs in hooks a graph would not replay.
    graphed = device.type == "cuda" and saved.get("cuda_graph", True) and not grad_every and world.size == 1
    try:
        train_step = build_train_step(
            model, recipe, device, graphed, next(iter(train_loader)) if graphed else None, saved["compile"],
            optimizer_state=checkpoint["optimizer"] if checkpoint is not None else None, processes=world.size,
        )
    except runs.RunError as err:  # the checkpoint's optimizer state, which only the optimizer can check
        raise runs.RunError(f"{run_dir / runs.CHECKPOINT}: {err}") from None
    if checkpoint is not None and world.is_main:  # the saved sums are already those of every process
        if set(checkpoint["sums"]) != set(train_step.sums):
            raise runs.RunError(f"{run_dir / runs.CHECKPOINT} is damaged: its epoch sums are "
                                f"{', '.join(sorted(checkpoint['sums']))}, not {', '.join(sorted(train_step.sums))}")
        for k, v in checkpoint["sums"].items():
            train_step.sums[k].copy_(v)
    grad_log = runs.read_grad_norms(run_dir, step) if grad_every else None
    watched = [(n, p) for n, p in model.named_parameters() if p.ndim > 1]
    return _RunState(saved, run_dir, recipe, device, world, model, train_step, step, elapsed, step, grad_log, watched)


def _train_epoch(run: _RunState, train_loader: DeviceLoader, stop_at: int | None, ctrl_c: _StepEndInterrupt,
                 progress: bool) -> float:
    """Train to the end of the epoch, or of the run, or to ``stop_at`` or a Ctrl-C; returns the last step's learning rate."""
    recipe, total_steps, steps_per_epoch = run.recipe, run.saved["total_steps"], run.saved["steps_per_epoch"]
    grad_every, depth = run.saved.get("grad_norm_every", 0), depth_of(run.saved["model"])
    epoch, start_batch = divmod(run.step, steps_per_epoch)
    end = min((epoch + 1) * steps_per_epoch, total_steps)
    # Labelled as the line printed when it ends, so a last epoch cut short by --steps is 2.5/2.5, not 3/3.
    # Closed however the epoch ends, so an error is printed on a line of its own, not after the bar.
    with tqdm(total=(end - run.step) * recipe.batch_size, desc=_epoch_label(end, total_steps, steps_per_epoch),
              leave=False, disable=None if progress else True,  # None: on a terminal or in a notebook only
              unit="img", unit_scale=True) as bar:  # the rate reads as images/s
        for x, y in train_loader.epoch(epoch, start_batch):
            lr = lr_at(recipe, run.step, total_steps, depth)
            if grad_every and run.step % grad_every == 0:
                # Kept on the device until the epoch ends: no host sync inside the step.
                run.pending_norms.append(run.train_step(x, y, lr, watched=[p for _, p in run.watched]))
                run.grad_log["steps"].append(run.step)
            else:
                run.train_step(x, y, lr)
            run.step += 1
            bar.update(recipe.batch_size)
            if progress and (run.device.type == "cpu" or run.step % 50 == 0):  # a read syncs a GPU: not every step
                totals = run.train_step.read_sums()
                bar.set_postfix(loss=f"{totals['loss'] / totals['seen']:.3f}", acc=f"{totals['correct'] / totals['seen']:.1%}")
            if run.step >= total_steps or run.step == stop_at or ctrl_c.requested:
                break
    return lr


def _stop_if_diverged(run: _RunState) -> dict:
    """The epoch's sums so far; Diverged if their loss is not finite, so that no NaN weights are saved
    over the last good checkpoint. Read before every save, not every step: a read waits for the GPU."""
    totals = run.train_step.read_sums()
    if not math.isfinite(totals["loss"]) and run.saved.get("stop_on_divergence", True):
        kept = f"the run's last checkpoint, step {run.saved_step}, is kept" if run.saved_step else "nothing was saved"
        raise Diverged(f"training diverged: the loss is {totals['loss']} in the epoch up to step {run.step} "
                       f"(too high a learning rate?); {kept}")
    return totals


def _epoch_row(run: _RunState, lr: float, epoch_start: float, resumed_seen: int) -> dict:
    """The epoch's metrics row from the sums of every process, test columns empty; Diverged if the loss is not finite."""
    distributed.sum_across(run.train_step.sums, run.world)
    totals = _stop_if_diverged(run)
    seen = totals["seen"]
    return {
        "epoch": round(run.step / run.saved["steps_per_epoch"], 4), "step": run.step, "lr": lr,
        "train_loss": totals["loss"] / seen, "train_acc": totals["correct"] / seen,
        "test_loss": None, "test_acc": None,
        # Timed after reading the sums, which waits for the device to finish the epoch's steps.
        "images_per_s": (seen - resumed_seen) / max(1e-9, time.perf_counter() - epoch_start),
    }


def _evaluate_into(row: dict, model: nn.Module, test_loader: DeviceLoader, num_classes: int) -> EvalResult:
    """Evaluate the trained weights on the test set, filling the epoch's test columns of ``row``.

    Through the plain model, which shares the trained weights: not through DistributedDataParallel,
    since process 0 evaluates alone and DDP would wait for the others, and not through torch.compile's
    module, which would compile twice more (eval mode, the short last batch), costing more seconds
    than it saves on a test set evaluated a few times.
    """
    result = evaluate(model, test_loader, num_classes)
    row["test_loss"], row["test_acc"] = result.loss, result.accuracy
    return result


def _write_row(run_dir: Path, row: dict, board: _Board | None) -> None:
    """Add the epoch's row to metrics.jsonl, and to TensorBoard's events when it is installed."""
    runs.append_metrics(run_dir, row)
    if board is not None:
        board.add(row)


def _end_epoch(run: _RunState, row: dict, board: _Board | None, last: bool) -> None:
    """Close the epoch that ``row`` describes: its sums start afresh, its row is written, the run saved, its line printed."""
    run.train_step.reset_sums()  # before saving, so that a run resumed here starts the next epoch's sums at zero
    if run.world.is_main:
        _write_row(run.run_dir, row, board)
    _save(run)
    if run.world.is_main:
        tqdm.write(_epoch_line(row, run.saved["total_steps"], run.saved["steps_per_epoch"]))
        if last and (note := statistics_note(run.model, run.saved, run.step)):
            print(f"note: {note}", file=sys.stderr)


def _save(run: _RunState) -> None:
    """Write the run's checkpoint and weights, and the gradient norms recorded since the last save."""
    if not run.world.is_main:  # process 0 writes; the sums it saves are already those of every process
        run.pending_norms.clear()
        return
    if run.grad_log is not None:
        run.grad_log["layers"] = [n for n, _ in run.watched]
        run.grad_log["norms"] += [t.tolist() for t in run.pending_norms]
        run.pending_norms.clear()
        runs.write_json(run.run_dir / runs.GRAD_NORMS, run.grad_log)
    # The checkpoint first: killed between the two writes, the run can still be resumed.
    runs.save_checkpoint(run.run_dir, {
        "model_name": run.saved["model"], "model": run.model.state_dict(), "optimizer": run.train_step.optimizer.state_dict(),
        "step": run.step, "elapsed": run.elapsed, "sums": {k: v.cpu() for k, v in run.train_step.sums.items()},
        "rng": torch.get_rng_state(),
        # The device's generator draws a GPU run's dropout masks (mixing="dropout").
        **({"cuda_rng": torch.cuda.get_rng_state(run.device)} if run.device.type == "cuda" else {}),
    })
    runs.save_weights(run.model, run.run_dir)
    run.saved_step = run.step


class _StepEndInterrupt:
    """Ctrl-C, or SIGTERM (what a cluster's scheduler or ``docker stop`` sends before killing), taken at
    the end of the training step under way, so that the checkpoint it leads to holds whole steps and the
    resumed run ends as an uninterrupted one would; a second signal interrupts at once. Only where
    Python lets a handler be set (the main thread) and ``enabled``."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.requested, self.pid, self.signum = False, os.getpid(), signal.SIGINT
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS} if self.enabled else {}

    def _handle(self, signum: int, frame) -> None:
        # Again; or in a forked DataLoader worker that inherited this handler (for SIGTERM: Ctrl-C they
        # ignore, loader._ignore_ctrl_c), which ends rather than finishing a step it has not got.
        if self.requested or os.getpid() != self.pid:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        tqdm.write(f"{what}: stopping after this step and saving it (a second one stops at once, keeping the last checkpoint)")

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class _Board:
    """The run's TensorBoard events (in RUN/tensorboard) when TensorBoard is installed. They copy
    metrics.jsonl's numbers, so a failure to write them (a full disk) is said once and the run goes on
    without them: the checkpoint's own write says whether the run can go on at all."""

    KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s")

    def __init__(self, run_dir: Path) -> None:
        self.folder, self.writer = run_dir / "tensorboard", None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional
            return
        try:
            self.writer = SummaryWriter(log_dir=str(self.folder))
        except OSError as e:
            self._give_up(e)

    def add(self, row: dict) -> None:
        def write() -> None:
            for key in self.KEYS:
                if row[key] is not None:
                    self.writer.add_scalar(key, row[key], row["step"])
            self.writer.flush()

        if self.writer is not None:
            self._guarded(write)

    def close(self) -> None:
        if self.writer is not None:
            self._guarded(self.writer.close)

    def _guarded(self, call: Callable[[], None]) -> None:
        try:
            call()
        except OSError as e:
            self._give_up(e)

    def _give_up(self, e: OSError) -> None:
        self.writer = None
        print(f"note: TensorBoard's events cannot be written to {self.folder} ({e.strerror or e}); the run goes on "
              f"without them, and {runs.METRICS} holds the same numbers", file=sys.stderr)


def _epoch_label(step: int, total_steps: int, steps_per_epoch: int) -> str:
    """``epoch E/N``: the epochs trained at ``step``, of the run's; fractional where --steps cuts an epoch short."""
    return f"epoch {round(step / steps_per_epoch, 4):g}/{round(total_steps / steps_per_epoch, 4):g}"


def _precise_bn(model: nn.Module, train_loader: DeviceLoader, epoch: int, batches: int) -> None:
    """Recompute the batch norms' running statistics as the average over ``batches`` training batches (of
    the order of ``epoch``, one the run has not trained on) with the final weights: running averages lag
    the weights they were gathered with, by far when they take in little of each batch (Keras's 0.99)."""
    from torch.optim.swa_utils import update_bn  # resets the statistics and averages them over the batches given

    update_bn(itertools.islice(train_loader.epoch(epoch, 0), batches), model)


def _epoch_line(row: dict, total_steps: int, steps_per_epoch: int) -> str:
    """The line printed when an epoch ends."""
    test = f"  test loss {row['test_loss']:.4f} acc {row['test_acc']:.2%}" if row["test_acc"] is not None else ""
    return (
        f"{_epoch_label(row['step'], total_steps, steps_per_epoch)}  step {row['step']}  lr {row['lr']:.4g}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}{test}  "
        f"{row['images_per_s']:.0f} img/s  {row['time']:.0f}s"
    )
