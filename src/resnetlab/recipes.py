"""Training recipes by name: the papers' and the seed notebook's hyperparameters in one place.

A recipe is plain data. ``lr_at(recipe, step, total_steps, depth)`` turns it into the learning rate
of one step, so the schedule needs no state of its own and resuming needs nothing but the step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .typecheck import check_types

SCHEDULES = ("multistep", "onecycle", "cosine", "constant")
OPTIMIZERS = ("sgd", "adam", "adamw")
WARMUP_SHAPES = ("constant", "linear")


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of one training recipe."""

    name: str
    optimizer: str = "sgd"  # "sgd", "adam" (weight decay as an L2 term) or "adamw" (decoupled weight decay)
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    adam_eps: float = 1e-8  # Adam's and AdamW's epsilon: PyTorch's default; Keras's is 1e-7
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False  # decay BN parameters and biases too, as the papers and torchvision's reference do
    batch_size: int = 128
    steps: int | None = None  # iterations, as the papers count; or
    epochs: float | None = None  # passes over the training set
    schedule: str = "multistep"  # "multistep", "onecycle", "cosine" or "constant"
    milestones: tuple[float, ...] = ()  # fractions of the run where the lr drops by `gamma`
    gamma: float = 0.1
    warmup_steps: int = 0  # steps at `warmup_lr` before the real lr (the papers' 110+ layer warm-up)
    warmup_lr: float = 0.01
    # "constant" holds `warmup_lr` (the papers'); "linear" climbs from it to the schedule's lr (Goyal et al. 2017)
    warmup_shape: str = "constant"
    warmup_min_depth: int = 0  # the warm-up applies to nets this deep and deeper
    pad_crop: int = 0  # pixels of zero padding for the random crop; 0 disables it
    scale_crop: tuple[float, float] | None = None  # area range of a random box resized to full size (replaces pad_crop)
    scale_jitter: tuple[int, int] | None = None  # folders: shorter side drawn from this range, then a random crop
    flip: bool = False
    lighting: float = 0.0  # std of AlexNet's PCA colour noise (the 2015 paper's "standard color augmentation")
    label_smoothing: float = 0.0
    # Once training ends, the batch norms' running statistics recomputed as the average over this many
    # training batches with the final weights (Precise BN, Wu and Johnson 2021); 0 keeps the running averages.
    precise_bn: int = 0
    notes: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """The recipe ``to_dict`` (and a JSON round trip) gave."""
        return cls(**_tuples(data))


def _tuples(fields: dict) -> dict:
    """``fields`` with the sequence fields as tuples: from JSON or the command line they arrive as lists."""
    return {k: tuple(v) if k in ("milestones", "scale_crop", "scale_jitter") and isinstance(v, list) else v for k, v in fields.items()}


_HE2016 = Recipe(
    "he2016",
    lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128, steps=64_000,
    milestones=(0.5, 0.75), warmup_steps=400, warmup_lr=0.01, warmup_min_depth=110,
    pad_crop=4, flip=True,
    notes="He et al. 2015, CIFAR-10 (Section 4.2): SGD 0.9, wd 1e-4, lr 0.1, /10 at 32k and 48k of 64k "
    "iterations, batch 128, 4-pixel pad + crop + flip; 110+ layers start at 0.01 for a fixed 400 iterations "
    "(the paper: until training error falls below 80%, 'about 400 iterations'). Trains on all 50k images "
    "(the paper chose this schedule on a 45k/5k split). Unlike the paper: BN and biases are not decayed, "
    "and per-channel mean and std normalisation stands in for the per-pixel mean. See docs/recipes.md.",
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        _HE2016,
        replace(
            # The 2016 paper warms up every CIFAR net, not only the 110-layer ones (its appendix).
            _HE2016, name="he2016-preact", warmup_min_depth=0,
            notes="He et al. 2016, CIFAR (appendix): the 2015 schedule, with 0.01 for the first 400 iterations "
            "at every depth ('for all CIFAR experiments'). As he2016, BN and biases are not decayed and inputs "
            "are normalised per channel.",
        ),
        Recipe(
            "signs-adam",
            optimizer="adam", lr=1.5e-4, adam_eps=1e-7, momentum=0.0, weight_decay=0.0, batch_size=32, epochs=10,
            schedule="constant",
            notes="The seed notebook (2021): Adam at 0.00015, categorical cross-entropy, batch 32, 10 epochs "
            "(its 2017 version: Keras's default 0.001 for 2 epochs), Keras's Adam epsilon 1e-7. Unlike it: "
            "inputs are normalised per channel (the notebook's X / 255 only), and an epoch "
            "drops its last partial batch (Keras trains on it).",
        ),
        Recipe(
            "imagenet",
            lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=256, epochs=90, milestones=(1 / 3, 2 / 3),
            scale_crop=(0.08, 1.0), flip=True,
            notes="torchvision's reference recipe for its ResNet weights, for image folders (imagenet or "
            "folder:PATH; 224-pixel crops unless --image-size): SGD 0.9, lr 0.1 /10 every 30 of 90 epochs, wd "
            "1e-4, batch 256, random box of 8-100% of the area resized to full size + flip; held-out images "
            "resized to 256 and centre-cropped; unlike it, BN and biases are not decayed. Also the 2016 paper's "
            "ImageNet schedule (0.1, /10 at 30 and 60 epochs) with the scale and aspect-ratio augmentation of its "
            "ResNet-200. he2015-imagenet is the 2015 paper's own.",
        ),
        Recipe(
            "he2015-imagenet",
            lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=256, steps=600_000, milestones=(0.25, 0.5, 0.75),
            scale_jitter=(256, 480), flip=True, lighting=0.1,
            notes="He et al. 2015, ImageNet (Section 3.4), for image folders (imagenet or folder:PATH; 224-pixel "
            "crops unless --image-size): "
            "SGD 0.9, wd 1e-4, batch 256, lr 0.1 divided by 10 'when the error plateaus' within 60x10^4 "
            "iterations (fixed here at every 30 epochs' worth, 15, 30 and 45x10^4, the cadence of torchvision's "
            "reference); shorter side drawn from [256, 480], a random 224 crop, flip, AlexNet's PCA colour noise "
            "(std 0.1, principal components of this training set's pixels); per-channel mean and std "
            "normalisation stands in for the per-pixel mean, and BN and biases are not decayed. Tested on one "
            "centre crop; eval --ten-crop and --scales are the paper's.",
        ),
        Recipe(
            "fast",
            lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=64, epochs=4,
            schedule="onecycle", pad_crop=2, flip=True, label_smoothing=0.1,
            notes="Quick results: one-cycle lr (linear up for 25% of the run, linear down to zero), "
            "Nesterov SGD, label smoothing 0.1, 2-pixel pad + crop + flip. Batch 64 and lr 0.1 gave the best "
            "accuracy of short CPU runs on Fashion-MNIST (82% against 79% for batch 128 in 3 epochs of 6,000 images). "
            "On a GPU use --batch-size 512 --lr 0.4: resnet20 reached 93.92% on Fashion-MNIST in 10 epochs.",
        ),
    ]
}


def describe_recipe(recipe: Recipe) -> str:
    """One line of the hyperparameters that matter, e.g. ``sgd lr 0.1, momentum 0.9, ...``."""
    length = f"{recipe.steps:,} steps" if recipe.steps else f"{recipe.epochs:g} epochs"
    optimizer = recipe.optimizer
    if optimizer == "sgd" and recipe.momentum:
        optimizer += f" (momentum {recipe.momentum:g}{', Nesterov' if recipe.nesterov else ''})"
    parts = [f"{optimizer} lr {recipe.lr:g}", f"batch {recipe.batch_size}", length, recipe.schedule]
    if recipe.milestones:
        parts[-1] += " /" + f"{1 / recipe.gamma:g} at " + ", ".join(f"{m:.0%}" for m in recipe.milestones)
    if recipe.warmup_steps:
        deep = f" at {recipe.warmup_min_depth}+ layers" if recipe.warmup_min_depth else ""
        if recipe.warmup_shape == "linear":
            parts.append(f"lr rising linearly from {recipe.warmup_lr:g} over the first {recipe.warmup_steps} steps{deep}")
        else:
            parts.append(f"lr {recipe.warmup_lr:g} for the first {recipe.warmup_steps} steps{deep}")
    if recipe.weight_decay:
        parts.append(f"wd {recipe.weight_decay:g}")
    augment = [f"pad {recipe.pad_crop} + crop"] if recipe.pad_crop else []
    augment += [f"random-resized crop {recipe.scale_crop[0]:g}-{recipe.scale_crop[1]:g}"] if recipe.scale_crop else []
    augment += [f"shorter side {recipe.scale_jitter[0]}-{recipe.scale_jitter[1]} + crop"] if recipe.scale_jitter else []
    augment += ["flip"] if recipe.flip else []
    augment += [f"PCA colour noise {recipe.lighting:g}"] if recipe.lighting else []
    if augment:
        parts.append(" + ".join(augment))
    if recipe.label_smoothing:
        parts.append(f"label smoothing {recipe.label_smoothing:g}")
    if recipe.precise_bn:
        parts.append(f"batch-norm statistics recomputed over {recipe.precise_bn} batches at the end")
    return ", ".join(parts)


# The recipe a model trains with unless told, where it is not ``fast``: the notebook's net with the
# notebook's Adam (SGD at fast's learning rate 0.1 makes its conv biases and Glorot-started layers diverge).
MODEL_RECIPES = {"signs_resnet50": "signs-adam"}


def default_recipe(model: str) -> str:
    """The name of the recipe ``model`` trains with when none is given: ``fast``, or its own (``MODEL_RECIPES``)."""
    return MODEL_RECIPES.get(model, "fast")


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """The named recipe, with the given fields replaced (``None`` values are ignored)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "steps" in overrides and "epochs" in overrides:
        raise ValueError("give the run's length as steps or as epochs, not both")
    if "steps" in overrides:
        overrides.setdefault("epochs", None)
    elif "epochs" in overrides:
        overrides["steps"] = None
    fields = [k for k in recipe.to_dict() if k not in ("name", "notes")]
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(f"recipes have no field {', '.join(sorted(unknown))}; they have {', '.join(fields)}")
    overrides = check_types(Recipe, _tuples(overrides))  # NumPy numbers as Python's, which config.json can hold
    recipe = replace(recipe, **overrides)
    for key in ("lr", "batch_size", "steps", "epochs", "adam_eps"):
        value = getattr(recipe, key)
        if value is not None and not (0 < value < math.inf):
            raise ValueError(f"{key.replace('_', '-')} must be positive and finite, got {value}")
    for key in ("weight_decay", "momentum", "gamma", "warmup_lr", "lighting", "label_smoothing"):
        if not 0 <= getattr(recipe, key) < math.inf:
            raise ValueError(f"{key.replace('_', '-')} must be zero or more, and finite, got {getattr(recipe, key)}")
    if recipe.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {recipe.schedule!r}")
    if recipe.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {recipe.optimizer!r}")
    if recipe.warmup_shape not in WARMUP_SHAPES:
        raise ValueError(f"warmup-shape must be one of {', '.join(WARMUP_SHAPES)}, not {recipe.warmup_shape!r}")
    if recipe.label_smoothing > 1:
        raise ValueError(f"label-smoothing is a fraction of the target, at most 1, got {recipe.label_smoothing}")
    if recipe.optimizer == "sgd" and recipe.nesterov and not recipe.momentum:
        raise ValueError(f"recipe {recipe.name} uses Nesterov momentum, which needs a momentum above 0: "
                         "add --recipe-arg nesterov=false")
    changed = {k: v for k, v in overrides.items() if v != getattr(RECIPES[name], k)}
    _check_milestones(recipe, changed)
    if recipe.warmup_shape == "linear" and recipe.schedule == "onecycle":
        raise ValueError("the onecycle schedule climbs linearly from 0 itself: drop warmup_shape=linear, or use "
                         "--recipe-arg schedule=cosine with it")
    if "warmup_shape" in changed and not recipe.warmup_steps:
        raise ValueError(f"warmup_shape={recipe.warmup_shape} shapes a warm-up, and recipe {recipe.name} has none: "
                         "add --recipe-arg warmup_steps=N")
    for key in ("warmup_steps", "pad_crop", "precise_bn"):
        if getattr(recipe, key) < 0:
            raise ValueError(f"{key.replace('_', '-')} must be zero or more, got {getattr(recipe, key)}")
    return recipe


def _check_milestones(recipe: Recipe, changed: dict) -> None:
    """Refuse milestones that would silently never apply: given in steps, or changed for a schedule without drops."""
    for m in recipe.milestones:
        if not 0 < m < 1:
            raise ValueError(f"milestones are fractions of the run between 0 and 1 (the papers' 32k and 48k of 64k "
                             f"steps are [0.5, 0.75]), got {m:g}")
    if list(recipe.milestones) != sorted(recipe.milestones):
        raise ValueError(f"milestones must be in increasing order, got {list(recipe.milestones)}")
    given = sorted({"milestones", "gamma"} & set(changed))
    if given and recipe.schedule != "multistep":
        raise ValueError(f"{' and '.join(given)}: only the multistep schedule uses {'them' if len(given) > 1 else 'it'}, "
                         f"and recipe {recipe.name} uses {recipe.schedule}; add --recipe-arg schedule=multistep")


PAPERS_CIFAR_STEPS = 64_000  # the run the papers' 400-step warm-up was chosen for


def warmup_note(recipe: Recipe, total_steps: int, depth: int) -> str | None:
    """A line for a run too short for the papers' fixed warm-up: 400 steps at lr 0.01 are 0.6% of their
    64,000, but in a run of a few hundred steps they reach past the first lr drop, so the run never trains
    at the recipe's lr. None when the warm-up leaves the run alone."""
    if not recipe.warmup_steps or depth < recipe.warmup_min_depth:
        return None
    drops = recipe.schedule == "multistep" and recipe.milestones
    first_drop = recipe.milestones[0] if drops else 0.5  # a schedule without drops: half the run is too much
    if recipe.warmup_steps < first_drop * total_steps:
        return None
    where = (f"up to the lr drop at step {math.ceil(first_drop * total_steps)} of this {total_steps}-step run, so it never "
             f"trains at lr {recipe.lr:g}" if drops else f"half or more of this {total_steps}-step run")
    scaled = max(1, round(recipe.warmup_steps * total_steps / PAPERS_CIFAR_STEPS))
    holds = "holds lr" if recipe.warmup_shape == "constant" else "climbs from lr"
    return (f"recipe {recipe.name} {holds} {recipe.warmup_lr:g} for its first {recipe.warmup_steps} steps, {where}; "
            f"for a short run scale the warm-up with it (--recipe-arg warmup_steps={scaled}, as the papers' 400 of "
            f"64,000) or drop it (--recipe-arg warmup_steps=0)")


def lr_at(recipe: Recipe, step: int, total_steps: int, depth: int = 0) -> float:
    """The learning rate for 0-based ``step`` of a run of ``total_steps``."""
    if recipe.warmup_steps and depth >= recipe.warmup_min_depth and step < recipe.warmup_steps:
        if recipe.warmup_shape == "constant":
            return recipe.warmup_lr
        # timm's rule: warmup_lr at the first step, then equal steps up to the lr the schedule gives where
        # the warm-up ends, so that the two meet without a jump.
        target = _scheduled_lr(recipe, recipe.warmup_steps, total_steps)
        return recipe.warmup_lr + (target - recipe.warmup_lr) * step / recipe.warmup_steps
    return _scheduled_lr(recipe, step, total_steps)


def _scheduled_lr(recipe: Recipe, step: int, total_steps: int) -> float:
    """The schedule's learning rate for ``step``, warm-up aside."""
    if recipe.schedule == "constant":
        return recipe.lr
    if recipe.schedule == "multistep":
        drops = sum(step >= m * total_steps for m in recipe.milestones)
        return recipe.lr * recipe.gamma**drops
    if recipe.schedule == "cosine":
        # Half a cosine from lr down to zero over the run (Loshchilov and Hutter 2017, without restarts).
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    if recipe.schedule == "onecycle":
        peak = max(1, int(0.25 * total_steps))
        if step < peak:
            return recipe.lr * (step + 1) / peak
        return recipe.lr * max(0.0, (total_steps - step) / max(1, total_steps - peak))
    raise ValueError(f"unknown schedule {recipe.schedule!r}")
