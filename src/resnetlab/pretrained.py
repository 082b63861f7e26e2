"""Starting weights: torchvision's published ImageNet weights, Keras Applications' (tag ``KERAS``),
or a weights file of your own.

The ImageNet ResNets share torchvision's state_dict keys, so torchvision's weights load as they
are. They are fetched the way torchvision fetches them (same URL, same cache file under
``torch.hub.get_dir()/checkpoints``, SHA-256 prefix checked on download) but read with
``weights_only=True``, so a tampered file cannot run code.

A model built for other data keeps what fits: a different number of classes gets a fresh
classifier, and one input channel gets ``conv1`` summed over the red, green and blue filters
(a grey pixel is a colour pixel with three equal values).

``load_published`` is to published weights what ``runs.load_model`` is to a run: the model, and
the config that evaluation and prediction read.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import ResnetlabError
from .keras_weights import (
    KERAS_APPLICATIONS,
    KERAS_APPLICATIONS_LAYOUT,
    KERAS_APPLICATIONS_MEAN,
    KERAS_APPLICATIONS_STD,
    KERAS_APPLICATIONS_URL,
    KerasError,
    is_keras_file,
    read_keras,
    read_keras_applications,
)
from .runs import LAYOUT_KEY, key_mismatch, model_layout, pretrained_cfg

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

# Names whose layout is torchvision's, so its published weights fit them.
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# Keras Applications' ImageNet weights: their tag, and the top-1 accuracy (%) keras.io reports for them.
KERAS_TAG = "KERAS"
KERAS_TOP1 = {"resnet50": 74.9, "resnet101": 76.4, "resnet152": 76.6}


class WeightsError(ResnetlabError):
    """Weights that cannot be found, fetched, read or fitted to the model; the message says why."""


@dataclass
class PretrainedInfo:
    """What a set of published weights expects of its input, and what its outputs mean."""

    tag: str  # e.g. "IMAGENET1K_V2"
    categories: list[str]
    mean: list[float]
    std: list[float]
    resize_size: int  # shorter side before the centre crop
    crop_size: int
    accuracy: float | None  # ImageNet top-1 (%), as the publisher reports it
    source: str = "torchvision"  # who publishes them


def is_file_spec(weights: str) -> bool:
    """True when ``weights`` names a file rather than a published tag like ``IMAGENET1K_V2``."""
    return os.sep in weights or "." in weights or Path(weights).exists()


def _published(model_name: str, tag: str):
    """torchvision's weights enum member for ``model_name`` and ``tag`` (``DEFAULT`` allowed)."""
    import torchvision

    if model_name not in TORCHVISION_MODELS:
        from .models import UnknownModelError, create_model

        try:
            with torch.device("meta"):  # by name alone, as create_model knows them: CIFAR depths such as resnet74 too
                create_model(model_name)
        except UnknownModelError:
            raise WeightsError(f"unknown model {model_name!r}; published weights exist for {', '.join(TORCHVISION_MODELS)}") from None
        raise WeightsError(
            f"torchvision publishes no weights for {model_name}; these take a tag: {', '.join(TORCHVISION_MODELS)}. "
            f"Train {model_name} (resnetlab train --model {model_name}), or start it from a weights file of your own "
            "(create_model's weights=, train's --weights)"
        )
    enum = torchvision.models.get_model_weights(model_name)
    try:
        return enum[tag.upper()]
    except KeyError:
        tags = ", ".join(["DEFAULT", *published_tags(model_name)])
        raise WeightsError(f"{model_name} has no published weights {tag!r}; choose one of {tags}") from None


def published_tags(model_name: str) -> list[str]:
    """The weight tags for ``model_name`` (``DEFAULT`` aside): torchvision's, then ``KERAS``."""
    import torchvision

    tags = [w.name for w in torchvision.models.get_model_weights(model_name)] if model_name in TORCHVISION_MODELS else []
    return tags + ([KERAS_TAG] if model_name in KERAS_APPLICATIONS else [])


def is_keras_tag(weights: str | None) -> bool:
    """True for the tag of Keras Applications' weights."""
    return bool(weights) and weights.upper() == KERAS_TAG


def weights_layout(weights: str | None) -> dict:
    """The builder arguments that published weights need: Keras Applications' were trained in the
    paper's layout (stride on the first 1x1), with conv biases and Keras's batch-norm epsilon."""
    return dict(KERAS_APPLICATIONS_LAYOUT) if is_keras_tag(weights) else {}


def pretrained_info(model_name: str, tag: str) -> PretrainedInfo:
    """The preprocessing and class names that published weights were trained with."""
    if is_keras_tag(tag):
        _keras_file(model_name)
        imagenet = pretrained_info("resnet50", "IMAGENET1K_V1")  # the same 1000 classes in the same order
        return PretrainedInfo(KERAS_TAG, imagenet.categories, KERAS_APPLICATIONS_MEAN, KERAS_APPLICATIONS_STD,
                              256, 224, KERAS_TOP1[model_name], source="Keras Applications")
    weights = _published(model_name, tag)
    preprocess = weights.transforms()
    metrics = weights.meta.get("_metrics", {}).get("ImageNet-1K", {})
    return PretrainedInfo(
        tag=weights.name,
        categories=list(weights.meta["categories"]),
        mean=list(preprocess.mean),
        std=list(preprocess.std),
        resize_size=preprocess.resize_size[0],
        crop_size=preprocess.crop_size[0],
        accuracy=metrics.get("acc@1"),
    )


def published_config(spec: str) -> dict:
    """The config of published weights, ``spec`` being ``MODEL`` or ``MODEL:TAG``, without fetching them.

    It has the keys of a run's config.json that prediction reads (classes, channels, image_size,
    mean, std), plus ``resize_size`` for torchvision's resize-then-crop, ``published_top1``, the
    ImageNet accuracy published for the weights, and ``published_by``.
    """
    model_name, _, tag = spec.partition(":")
    info = pretrained_info(model_name, tag or "DEFAULT")
    return {
        "model": model_name, "weights": info.tag, "dataset": f"ImageNet-1k ({info.source} {info.tag})",
        "classes": info.categories, "channels": 3, "image_size": info.crop_size, "resize_size": info.resize_size,
        "mean": info.mean, "std": info.std, "published_top1": info.accuracy, "published_by": info.source,
    }


def load_published(spec: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A model with published weights (fetched if not cached), ``spec`` being ``MODEL`` or
    ``MODEL:TAG``, in eval mode on ``device``, and its ``published_config``."""
    from .models import create_model

    config = published_config(spec)
    model = create_model(config["model"], weights=config["weights"])
    return model.to(device).eval(), config


def _keras_file(model_name: str) -> tuple[str, str]:
    """The file name and MD5 of Keras Applications' weights for ``model_name``."""
    if model_name not in KERAS_APPLICATIONS:
        raise WeightsError(f"Keras Applications publish ImageNet weights for {', '.join(KERAS_APPLICATIONS)}, not {model_name}")
    return KERAS_APPLICATIONS[model_name]


def fetch_published(model_name: str, tag: str, progress: bool = True) -> Path:
    """The cached file of published weights, downloaded (and its hash checked) if not there yet.

    torchvision's go where torchvision keeps them; Keras Applications' are read from Keras's own
    cache (``$KERAS_HOME/models``, default ``~/.keras/models``) when Keras fetched them already.
    """
    if is_keras_tag(tag):
        filename, md5 = _keras_file(model_name)
        url = KERAS_APPLICATIONS_URL + filename
        keras_cache = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models" / filename
        # Older Keras releases kept another ResNet50 file under this name: only the published one is taken.
        if keras_cache.is_file() and _file_digest(keras_cache, "md5") == md5:
            return keras_cache
        sha256 = None
    else:
        url = _published(model_name, tag).url
        filename, md5 = url.rsplit("/", 1)[-1], None
        match = torch.hub.HASH_REGEX.search(filename)  # torchvision's names end in the SHA-256's first digits
        sha256 = match.group(1) if match else None
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.exists():
        _download(url, path, sha256, md5, progress)
    else:  # a file put there by hand, or by another program, is checked as a download would be
        _check_digest(path, url, sha256, md5)
    return path


def _check_digest(path: Path, url: str, sha256: str | None, md5: str | None) -> None:
    """Refuse a cached file whose SHA-256 does not begin as its name says (torchvision's), or whose MD5
    is not the one Keras checks."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        digest = _file_digest(path, algorithm)
        if not digest.startswith(expected):
            raise WeightsError(f"{path} is not the file published at {url} (its {algorithm.upper()} is "
                               f"{digest[:12]}..., not {expected}...); delete it to download it again")


def _file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file, read a megabyte at a time (weights files run to hundreds)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, path: Path, sha256: str | None, md5: str | None, progress: bool) -> None:
    """Fetch ``url`` to ``path`` through a temporary name, so that a broken or changed download leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: torchrun's processes (one per GPU) may all be fetching the same file at once.
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        torch.hub.download_url_to_file(url, str(partial), sha256, progress=progress)
        if md5 is not None and (digest := hashlib.md5(partial.read_bytes()).hexdigest()) != md5:
            raise RuntimeError(f"MD5 {digest}, expected {md5}")
        partial.replace(path)
    except OSError as err:  # URLError and HTTPError are OSErrors too
        reason = getattr(err, "reason", None) or err
        raise WeightsError(f"could not download {url} ({reason}); fetch it yourself and put it at {path}") from None
    except RuntimeError as err:  # a hash check
        raise WeightsError(f"{url} arrived damaged or changed ({err}); run again") from None
    finally:
        partial.unlink(missing_ok=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a .safetensors file, a torch.save file or a Keras ResNet (.h5, .keras; see
    ``keras_weights``), without running code from it."""
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():  # a run directory, given for its weights
        raise WeightsError(f"{path} is a folder; the weights of the run it holds are {path / 'model.safetensors'}")
    if not path.is_file():
        raise WeightsError(f"{path} does not exist or is not a file")
    if is_keras_file(path):
        try:
            return read_keras(path).state_dict
        except KerasError as err:
            raise WeightsError(str(err)) from None
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte header length, then the header's "{" (a .bin may be one); torch.save: a zip, or a pickle.
    safetensors = len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size
    if not (safetensors or head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        # torch.load would call an HTML error page or a git-lfs pointer an unsafe pickle.
        raise WeightsError(f"{path} is not a weights file (safetensors or torch.save's): it starts with {head[:8]!r}; "
                           "is it a download that failed?")
    try:
        state = load_file(path) if safetensors else torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused an object: loading it would run the file's code
        raise WeightsError(f"{path} holds Python objects besides tensors, which resnetlab does not load (loading them "
                           "could run code from the file); save the weights alone: torch.save(model.state_dict(), "
                           "path) or a .safetensors file") from None
    except Exception as err:  # damaged files fail in many ways; all mean the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WeightsError(f"{path} is not a readable weights file ({type(err).__name__}: {reason})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # checkpoints that wrap the weights (Lightning and others)
    elif isinstance(state, dict) and "model_name" in state and isinstance(state.get("model"), dict):
        state = state["model"]  # a resnetlab run's checkpoint.pt
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state_dict (a mapping of names to tensors)")
    # Saved from DistributedDataParallel, torch.compile or a Lightning module's `model`: the same weights under
    # prefixes, in any nesting (torch.compile(DDP(model)) gives "_orig_mod.module.").
    prefixes = ("module.", "_orig_mod.", "model.")
    while state and (prefix := next((p for p in prefixes if all(k.startswith(p) for k in state)), None)):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _saved_layout(path: str | Path) -> dict:
    """The ``model_layout`` a resnetlab run wrote into its model.safetensors; {} for any other file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            layout = (f.metadata() or {}).get(LAYOUT_KEY)
        return json.loads(layout) if layout else {}
    except Exception:  # not a safetensors file (torch.save's), or no metadata: nothing to compare
        return {}


def weights_name(weights: str | os.PathLike | WeightsEnum, model_name: str) -> str:
    """``weights`` as resnetlab names them: a tag or a file's path. Also takes a ``Path`` and torchvision's
    weights enums (``ResNet50_Weights.IMAGENET1K_V2``), as torchvision's builders do."""
    from torchvision.models import WeightsEnum, get_model_weights

    if isinstance(weights, WeightsEnum):
        if model_name not in TORCHVISION_MODELS or type(weights) is not get_model_weights(model_name):
            raise WeightsError(f"{type(weights).__name__}.{weights.name} are torchvision's weights of another model, not {model_name}")
        return weights.name
    if isinstance(weights, os.PathLike):
        return os.fspath(weights)
    if not isinstance(weights, str) or not weights.strip():
        raise WeightsError(f"weights must be a tag such as 'DEFAULT' or a file's path, not {weights!r}")
    return weights


def _keras_weights(path: str) -> tuple[str, dict[str, torch.Tensor], float, str]:
    """How to name a Keras file in errors, its state_dict, its batch norms' epsilon (which a state_dict
    does not carry, so the model must have been built with it), and how to build the model it fits."""
    try:
        keras = read_keras(path)
    except KerasError as err:
        raise WeightsError(str(err)) from None
    source = f"{path} (Keras: {keras.model} {keras.model_kwargs or 'as in the notebook'})"
    options = "".join(f", {k}={v!r}" for k, v in keras.model_kwargs.items())
    build = f"; it fits create_model({keras.model!r}{options}), or `resnetlab import {path}` makes a run of it"
    return source, keras.state_dict, keras.model_kwargs.get("bn_eps", 1e-3), build


@dataclass
class LoadedWeights:
    """Weights read, before they are fitted to a model: how to name them in errors, their state_dict,
    the batch-norm epsilon they need (None: any), and how to build the model they fit (for errors)."""

    source: str
    state: dict[str, torch.Tensor]
    eps: float | None = None
    build: str = ""

    @property
    def num_classes(self) -> int | None:
        """The classes of their classifier (None: they have none)."""
        fc = self.state.get("fc.weight")
        return fc.shape[0] if fc is not None and fc.ndim == 2 else None


def read_weights(model_name: str, weights: str, progress: bool = True) -> LoadedWeights:
    """Published weights (a tag such as ``IMAGENET1K_V2`` or ``DEFAULT``, fetched if need be) or a file, read."""
    if is_keras_file(weights):
        return LoadedWeights(*_keras_weights(weights))
    if is_file_spec(weights):
        return LoadedWeights(weights, read_state_dict(weights))
    if is_keras_tag(weights):
        path = fetch_published(model_name, weights, progress)
        try:
            state = read_keras_applications(path)
        except KerasError as err:
            raise WeightsError(str(err)) from None
        return LoadedWeights(f"{model_name} {KERAS_TAG} ({path})", state, KERAS_APPLICATIONS_LAYOUT["bn_eps"])
    path = fetch_published(model_name, weights, progress)
    return LoadedWeights(f"{model_name} {weights.upper()} ({path})", read_state_dict(path))


def load_weights(model: nn.Module, model_name: str, weights: str, progress: bool = True,
                 loaded: LoadedWeights | None = None) -> nn.Module:
    """Load published weights (a tag such as ``IMAGENET1K_V2`` or ``DEFAULT``) or a file into ``model``
    (``loaded``: the same weights read already, see ``read_weights``).

    Every tensor must fit except the classifier, which stays freshly initialised when the class
    count differs, and ``conv1``, which is summed over colours for a one-channel model.
    """
    loaded = loaded or read_weights(model_name, weights, progress)
    source, state, eps, build = loaded.source, loaded.state, loaded.eps, loaded.build
    own = model.state_dict()
    state = dict(state)
    if getattr(model, "out_indices", None) is not None:
        # A backbone leaves out the head and every stage past its deepest map: their tensors have no place.
        built = {k.split(".")[0] for k in own}
        state = {k: v for k, v in state.items() if k.split(".")[0] in built}
    for key in ("fc.weight", "fc.bias"):
        if key in state and (key not in own or state[key].shape != own[key].shape):
            del state[key]  # another task's classes (keep the fresh head), or a model without one
    conv = state.get("conv1.weight")
    if conv is not None and "conv1.weight" in own and conv.shape[1] == 3 and own["conv1.weight"].shape[1] == 1:
        state["conv1.weight"] = conv.sum(1, keepdim=True)
    # BN's num_batches_tracked came with PyTorch 0.4.1: files saved before (torchvision's first ResNet weights)
    # lack it, and torchvision's own loading starts it at zero, as the model here already has it.
    counters = [k for k in own if k.endswith("num_batches_tracked")]
    problem = key_mismatch(own, state, source, model_name, optional=("fc.weight", "fc.bias", *counters))
    if problem:
        raise WeightsError(problem + build)
    wrong = [k for k in state if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        there, here = tuple(state[k].shape), tuple(own[k].shape)
        # The one mismatch with a fix by argument: weights of grey images (a Fashion-MNIST run) in a colour model.
        hint = f" (build it with in_chans={there[1]})" if k == "conv1.weight" and there[:1] + there[2:] == here[:1] + here[2:] else ""
        raise WeightsError(f"{source} does not fit {model_name}: {k} is {there} there, {here} here{hint}")
    saved = _saved_layout(weights) if is_file_spec(weights) and not is_keras_file(weights) else {}
    differ = {k: v for k, v in saved.items() if k in (built := model_layout(model)) and built[k] != v}
    if differ:  # they would load, and answer as another net
        options = ", ".join(f"{k}={v!r}" for k, v in differ.items())
        raise WeightsError(f"{source} holds the weights of a net built with {options}, which compute otherwise in "
                           f"{model_name} as built here: build it the same way (create_model({model_name!r}, {options}, "
                           "weights=...), or --model-arg)")
    if eps is not None and any(m.eps != eps for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))):
        hint = f" (`resnetlab import {weights}` records it)" if is_keras_file(weights) else ""
        raise WeightsError(f"{source}'s batch norms use epsilon {eps}: build the model with bn_eps={eps}{hint}")
    model.load_state_dict(state, strict=False)
    if not is_file_spec(weights):  # published weights say how their input was prepared; a file does not
        info = pretrained_info(model_name, weights)
        channels = model.conv1.in_channels
        mean, std = _for_channels(info.mean, info.std, channels)
        model.pretrained_cfg = pretrained_cfg(channels, info.crop_size, info.resize_size, mean, std, model.num_classes)
    return model


def input_stats(model_name: str, weights: str, channels: int) -> tuple[list[float], list[float]] | None:
    """The normalisation published weights and Keras models expect, for ``channels`` input channels
    (see ``_for_channels``); None for other files."""
    if is_keras_file(weights):
        keras = read_keras(weights)
        mean, std = keras.mean, keras.std
    elif is_file_spec(weights):
        return None
    else:
        info = pretrained_info(model_name, weights)
        mean, std = info.mean, info.std
    return _for_channels(mean, std, channels)


def _for_channels(mean: list[float], std: list[float], channels: int) -> tuple[list[float], list[float]]:
    """Colour statistics for ``channels`` input channels: one channel gets their averages, since its conv1
    was summed over colours."""
    if channels == 1 and len(mean) == 3:
        return [sum(mean) / 3], [sum(std) / 3]
    return mean, std
