"""Keras ResNets read into resnetlab: the seed notebook's, and Keras Applications'.

Reads a whole model as Keras saves it (``model.save``): the HDF5 file of tf.keras 2 and Keras 3
(``.h5``, the notebook's ``resnet50.h5``) or Keras 3's ``.keras`` archive. Two layouts are known:
the notebook's ResNet-50 (64x64 images, unpadded max pool, 2x2 average pool and flatten), read into
``signs_resnet50``, and ``keras.applications.ResNet50/101/152`` with a classifier of one's own
(padded max pool, global average pool), read into ``resnet50/101/152`` in the paper's layout.
Layers are matched by walking the model's graph from its input, not by name or by their order in
the file: the notebook's layers carry Keras's automatic names (``conv2d_17``, ...), the file lists a
block's shortcut between its main-path layers, and a convolutional block's last conv and its
shortcut conv can have the same shape. Every layer is checked against what resnetlab's model
computes (kernel, stride, padding, activation), so a model that loads computes what Keras computes.

Keras Applications' published weights files (weights alone, no graph) are read by layer name
(``read_keras_applications``).

Nothing in the file runs: the graph is JSON and the weights are HDF5 arrays.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import ResnetlabError

if TYPE_CHECKING:
    import h5py

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
# signs_resnet50's defaults: model_kwargs name only what a file changes.
_DEFAULTS = {"num_classes": 6, "in_chans": 3, "layers": [3, 4, 6, 3], "widths": [64, 128, 256, 512], "bn_eps": 1e-3}


# The files keras.applications.ResNet50/101/152(weights="imagenet") fetch, with the MD5s Keras checks.
# Their layout is the 2015 paper's (the stride on the first 1x1, as its Caffe models), with conv
# biases and batch-norm epsilon 1.001e-5; Keras's ResNet-50 weights are ported from the Caffe
# models the paper's authors released.
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
KERAS_APPLICATIONS = {
    "resnet50": ("resnet50_weights_tf_dim_ordering_tf_kernels.h5", "2cb95161c43110f7111970584f804107"),
    "resnet101": ("resnet101_weights_tf_dim_ordering_tf_kernels.h5", "f1aeb4b969a6efcfb50fad2f0c20cfc5"),
    "resnet152": ("resnet152_weights_tf_dim_ordering_tf_kernels.h5", "100835be76be38e30d865e96f2aaae62"),
}
KERAS_APPLICATIONS_LAYOUT = {"stride_in_1x1": True, "bias": True, "bn_eps": 1.001e-5}
# Keras's "caffe" preprocessing: BGR pixels 0-255 less the ImageNet mean. With conv1's colour filters
# put in RGB order, that is normalisation of RGB pixels scaled to 0-1 by this mean and std.
KERAS_APPLICATIONS_MEAN = [123.68 / 255, 116.779 / 255, 103.939 / 255]
KERAS_APPLICATIONS_STD = [1 / 255] * 3


class KerasError(ResnetlabError):
    """A Keras file that cannot be read, or whose model is in no layout resnetlab reads."""


@dataclass
class _Layer:
    name: str
    kind: str  # Keras's class name: Conv2D, BatchNormalization, ...
    config: dict
    inputs: list[str]  # the layers whose outputs it takes
    call_kwargs: dict  # what the model's code passed when calling it, e.g. {"training": True}
    # Its positional arguments that are not layers' outputs, None where one is (x / 255: [None, 255.0]).
    constants: list = field(default_factory=list)
    # Where its weights are stored: its name under the names of the models it is nested in (HDF5 files),
    # and the names a .keras archive gives it and them (see keras3_names).
    where: tuple[str, ...] = ()
    stored_as: tuple[str, ...] = ()


@dataclass
class KerasModel:
    """A Keras file's model in resnetlab's terms: ``create_model(model, **model_kwargs)``, fed RGB
    pixels scaled to 0-1 and normalised by ``mean`` and ``std``."""

    model: str  # signs_resnet50 (the notebook's layout), or resnet50/101/152 (Keras Applications')
    model_kwargs: dict  # the builder's arguments that differ from its defaults
    state_dict: dict[str, torch.Tensor]
    image_size: int | None  # None: the model takes any size
    keras_version: str
    mean: list[float]
    std: list[float]
    fed: str  # how its inputs were prepared, in words
    batch_stats: list[str] = field(default_factory=list)  # BN layers called with training=True
    classes: list[str] | None = None  # the class names resnetlab's own exports carry


def is_keras_file(path: str | Path) -> bool:
    """True for the suffixes Keras saves whole models under."""
    return Path(path).suffix.lower() in KERAS_SUFFIXES


def read_keras(path: str | Path) -> KerasModel:
    """The ResNet a Keras file holds, in resnetlab's terms: which model, its arguments and weights."""
    import h5py  # here, so that importing the models never loads it

    path = Path(path)
    if path.is_dir():
        raise KerasError(f"{path} is a folder, not a Keras file: give the .h5 or .keras file model.save() wrote")
    if not path.is_file():
        raise KerasError(f"{path} does not exist or is not a file")
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
                metadata = json.loads(archive.read("metadata.json"))
                version = metadata.get("keras_version", "3")
                # resnetlab's own exports (marked in their metadata) take pixels scaled to 0-1; other Keras
                # models with rescaling layers inside take what Keras's image loaders give, 0-255.
                pixel_max = 1 if "resnetlab" in metadata else 255
                about = metadata.get("resnetlab", {})
                weights_file = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        else:
            weights_file = h5py.File(path, "r")
            if "model_config" not in weights_file.attrs:
                with weights_file:
                    names = [_text(n) for n in weights_file.attrs.get("layer_names", [])]
                    weights_only = names or "layers" in weights_file or "model_weights" in weights_file
                if "conv1_conv" in names:
                    raise KerasError(f"{path} holds Keras Applications' weights alone; for their published ImageNet "
                                     "weights take weights='KERAS' (resnet50:KERAS on the command line)")
                if weights_only:
                    raise KerasError(f"{path} holds weights without the model's graph (saved by save_weights); "
                                     "save the whole model with model.save() and import that")
                raise KerasError(f"{path} is an HDF5 file but not a Keras model (it has no model_config)")
            config = json.loads(_text(weights_file.attrs["model_config"]))
            version = _text(weights_file.attrs.get("keras_version", "2"))
            pixel_max = 1 if "resnetlab" in weights_file.attrs else 255  # as for .keras files, below
            about = json.loads(_text(weights_file.attrs["resnetlab"])) if "resnetlab" in weights_file.attrs else {}
        with weights_file:
            layers = _layers(config, path)
            weights = (_keras3_weights(weights_file) if path.suffix.lower() == ".keras"
                       else _legacy_weights(weights_file["model_weights"]))
            keras = _convert(layers, weights, version, path, pixel_max)
            keras.classes = about.get("classes")
    # AttributeError and TypeError: JSON of another shape than Keras writes (a list where a dict belongs).
    except (OSError, KeyError, ValueError, AttributeError, TypeError, zipfile.BadZipFile) as err:
        raise KerasError(f"{path} is not a model file saved whole by Keras ({type(err).__name__}: {err})") from None
    _check_tensors(keras, path)
    return keras


def _check_tensors(keras: KerasModel, path: Path) -> None:
    """Refuse tensors that would not make the model the file's config describes: values that are not
    finite (a damaged file), or shapes other than the config's (an edited one), before anything is
    built at the config's size."""
    from .models import create_model
    from .runs import first_non_finite

    damaged = first_non_finite(keras.state_dict)
    if damaged:
        raise KerasError(f"{path}: {damaged} holds values that are not finite numbers (NaN or infinite); the file is damaged")
    with torch.device("meta"):  # shapes only: a config asking for a huge layer allocates nothing here
        expected = create_model(keras.model, **keras.model_kwargs).state_dict()
    for key, tensor in keras.state_dict.items():
        if key not in expected or tensor.shape != expected[key].shape:
            wanted = tuple(expected[key].shape) if key in expected else "no such tensor"
            raise KerasError(f"{path}: {key} is {tuple(tensor.shape)} in the file, but the model its config describes "
                             f"has {wanted}; the file is damaged or was edited")


# --- the file formats -----------------------------------------------------------------------------


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_MODELS = ("Functional", "Model", "Sequential")


def _layers(config: dict, path: Path) -> dict[str, _Layer]:
    """The layers of a functional or sequential model's config, in the order Keras lists them, with the
    models nested in it opened into one graph: a base model called as one layer (keras.io's transfer
    learning, ``base(inputs, training=False)``) or a Sequential of augmentation layers."""
    if config.get("class_name") not in _MODELS or "layers" not in config.get("config", {}):
        raise KerasError(
            f"{path} holds a Keras {config.get('class_name')} model; only functional and sequential models "
            "(built from layers, as the notebook's ResNet50) can be read"
        )
    layers: dict[str, _Layer] = {}
    _open_model(config, layers, feeds=None, where=(), stored_as=(), training={})
    return layers


def _open_model(config: dict, into: dict[str, _Layer], feeds: list[str] | None, where: tuple[str, ...],
                stored_as: tuple[str, ...], training: dict) -> str:
    """Add a model's layers to ``into`` and return the name of its output layer. A nested model's layers
    are named ``model/layer``; its input layer is left out, its first layers taking ``feeds`` (the
    layers the model was called on) instead, and the ``training`` flag it was called with is theirs
    unless they set their own."""
    sequential = config["class_name"] == "Sequential"
    entries = config["config"]["layers"]
    if sequential and (not entries or entries[0]["class_name"] != "InputLayer") and feeds is None:
        # A Sequential built without Input(...) records its input shape apart from its layers.
        shape = config["config"].get("build_input_shape")
        entries = [{"class_name": "InputLayer", "config": {"name": "input", "batch_shape": shape}}, *entries]
    archive_names = _archive_names(entries, sequential)
    renamed: dict[str, str] = {}  # a layer's name in this model's config -> its name in ``into``
    previous = list(feeds or [])  # a Sequential's layer takes the one before it
    for entry in entries:
        name = entry.get("name") or entry["config"]["name"]
        if sequential:
            inputs, kwargs, constants = previous, {}, []
        else:
            inputs, kwargs, constants = _inbound(entry)
            inputs = [renamed[i] for i in inputs]
        if entry["class_name"] == "InputLayer" and feeds is not None:
            renamed[name] = feeds[0]
        elif _is_model(entry):
            called_with = {k: v for k, v in kwargs.items() if k == "training"}
            renamed[name] = _open_model(entry, into, inputs, (*where, name), (*stored_as, archive_names[id(entry)]),
                                        {**training, **called_with})
        else:
            kind, constants = _layer_kind(entry, constants, kwargs)
            qualified = "/".join((*where, name))
            into[qualified] = _Layer(qualified, kind, entry["config"], inputs, {**training, **kwargs}, constants,
                                     (*where, name), (*stored_as, archive_names.get(id(entry), "")))
            renamed[name] = qualified
        previous = [renamed[name]]
    if sequential:
        return previous[0]
    outputs = config["config"]["output_layers"]
    return renamed[outputs[0] if isinstance(outputs[0], str) else outputs[0][0]]


def _archive_names(entries: list[dict], sequential: bool) -> dict[int, str]:
    """The name a .keras archive stores each entry's variables under, by the entry's ``id``. It numbers a
    Sequential's layers without its input layer, a functional model's with it."""
    counted = [e for e in entries if not (sequential and e["class_name"] == "InputLayer")]
    return dict(zip(map(id, counted), keras3_names([e["class_name"] for e in counted])))


def _is_model(entry: dict) -> bool:
    """Whether a config entry is a model nested in the one it is listed in, rather than a layer."""
    return entry["class_name"] in _MODELS and "layers" in entry.get("config", {})


def _is_keras_op(entry: dict) -> bool:
    """Whether a config entry is one of Keras 3's functions on tensors (``x[..., 2]``, ``ops.add``) rather
    than the layer of that name. Its module says so; HDF5 files omit modules, but there a function's
    config lacks the "trainable" of every layer but the input, and of every nested model (tf.keras 2's
    Sequential's config is its name and layers alone)."""
    if _is_model(entry):
        return False
    module = entry.get("module")
    if module:
        return module.startswith("keras.src.ops")
    return entry["class_name"] != "InputLayer" and "trainable" not in entry["config"]


def _layer_kind(entry: dict, constants: list, kwargs: dict) -> tuple[str, list]:
    """A layer's kind (``ops.Add`` for Keras 3's function, tf.keras 2's TFOpLambda read as the same) and
    the constant arguments it is called with."""
    kind = entry["class_name"]
    if _is_keras_op(entry):
        return f"ops.{kind}", constants
    if kind in _TF_OP_LAYERS:
        return _tf_op(kind, entry["config"], constants, kwargs)
    return kind, constants


def _inbound(entry: dict) -> tuple[list[str], dict, list]:
    """The names of the layers a functional model's layer is called on, the keywords it is called with,
    and its other arguments (constants, such as the index of a ``x[..., 2]``)."""
    inputs, kwargs, constants = [], {}, []
    for node in entry.get("inbound_nodes", []):
        if isinstance(node, dict):  # Keras 3: {"args": [tensor, ...], "kwargs": {...}}
            args = node["args"][0] if node["args"] and isinstance(node["args"][0], list) else node["args"]
            for arg in args:
                tensor = isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__"
                if tensor:
                    inputs.append(arg["config"]["keras_history"][0])
                constants.append(None if tensor else arg)
            kwargs.update(node.get("kwargs", {}))
        else:  # tf.keras 2: [[layer_name, node_index, tensor_index, kwargs], ...]
            # A TFOpLambda (a TensorFlow function called on a tensor) writes its one call unlisted, a first
            # argument that is no tensor as ["_CONSTANT_VALUE", -1, value, kwargs], and its other arguments
            # among the kwargs, where a tensor is [layer_name, node_index, tensor_index].
            for name, _, value, *rest in ([node] if node and isinstance(node[0], str) else node):
                given = name == "_CONSTANT_VALUE"
                if not given:
                    inputs.append(name)
                constants.append(value if given else None)
                call = rest[0] if rest else {}
                inputs += [v[0] for v in call.values() if _tensor_reference(v)]
                kwargs.update(call)
    return inputs, kwargs, constants


def _tensor_reference(value) -> bool:
    """Whether a tf.keras 2 call argument names a layer's output ([layer_name, node_index, tensor_index])
    rather than being a constant."""
    return (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
            and all(isinstance(v, int) for v in value[1:]))


# tf.keras 2 records a TensorFlow function called on a Keras tensor as a TFOpLambda layer (a SlicingOpLambda
# for x[...]) named after the function. Those that preprocess_input and arithmetic on the input write are
# read as the Keras 3 ops that compute the same, so that one path folds both kinds of file into the
# normalisation: the function's Keras 3 op, and the keyword its second argument is stored under.
_TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")
_TF_OPS = {
    "__operators__.add": ("Add", "y"), "math.add": ("Add", "y"),
    "math.subtract": ("Subtract", "y"), "math.multiply": ("Multiply", "y"),
    "math.truediv": ("TrueDivide", "y"), "math.divide": ("Divide", "y"),
    "nn.bias_add": ("Add", "bias"),  # preprocess_input's "caffe" mean, one value a channel
    "__operators__.getitem": ("GetItem", "slice_spec"),  # preprocess_input's x[..., ::-1]
    "cast": ("Cast", "dtype"),  # tf.cast(inputs, tf.float32) of uint8 images, before preprocess_input
}


def _tf_op(kind: str, config: dict, constants: list, kwargs: dict) -> tuple[str, list]:
    """A tf.keras 2 TFOpLambda as the Keras 3 op that computes the same, with the arguments Keras 3 stores
    for it (``x - 3.0``: [None, 3.0]); ``kind`` unchanged for any other function, which no layout has."""
    function = config.get("function")
    if function not in _TF_OPS or kwargs.get("data_format") not in (None, "NHWC", "N...C"):  # bias_add's
        return kind, constants
    op, keyword = _TF_OPS[function]
    if keyword not in kwargs:
        return kind, constants
    second = kwargs[keyword]
    if keyword == "slice_spec":
        second = _keras3_index(second)
    return f"ops.{op}", [*constants, None if _tensor_reference(second) else second]


def _keras3_index(spec):
    """A tf.keras 2 slice spec as Keras 3 writes the same index: slices {"start", "stop", "step"} and
    {"class_name": "__ellipsis__"} in Keras 3's serialised form, integers as they are."""
    if isinstance(spec, list):
        return [_keras3_index(s) for s in spec]
    if isinstance(spec, dict) and spec.get("class_name") == "__ellipsis__":
        return _ELLIPSIS
    if isinstance(spec, dict) and {"start", "stop", "step"} >= spec.keys():
        return {"class_name": "__slice__", "config": {k: spec.get(k) for k in ("start", "stop", "step")}}
    return spec


# A layer's stored arrays by Keras's names (kernel, bias, gamma, ...).
_Weights = Callable[[_Layer], dict[str, np.ndarray]]


def _legacy_arrays(group: h5py.Group, where: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A layer's arrays in the HDF5 format of model.save (under ``model_weights``) and of Keras 2's
    save_weights (at the top): ``LAYER/LAYER/kernel:0`` and so on, named in the group's
    ``weight_names``. A nested model's layers are in the model's group, among its other layers'."""
    group = group[where[0]]
    names = [_text(n) for n in group.attrs.get("weight_names", [])]
    if len(where) > 1:
        names = [n for n in names if n.split("/")[-2] == where[-1]]
    # "conv2d/kernel:0" (tf.keras 2) or "conv2d/kernel" (Keras 3): keep "kernel".
    return {n.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[n]) for n in names}


def _legacy_weights(group: h5py.Group) -> _Weights:
    return lambda layer: _legacy_arrays(group, layer.where)


_VARIABLES = {
    "Normalization": ("mean", "variance", "count"),  # when adapted; given ones are in its config
    "Conv2D": ("kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def keras3_names(kinds: list[str]) -> list[str]:
    """The names a .keras archive stores layers' variables under, given their classes in the model's
    layer order: the class in snake case, numbered from its second use (conv2d, conv2d_1, ...)."""
    names, used = [], {}
    for kind in kinds:
        base = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", kind)).lower()
        names.append(f"{base}_{used[base]}" if base in used else base)
        used[base] = used.get(base, 0) + 1
    return names


def _keras3_weights(f: h5py.File) -> _Weights:
    """Weights of a .keras archive: ``layers/NAME/vars/0, 1, ...`` in the order the layer made them, a
    nested model's layers under ``layers/MODEL/layers/NAME``.

    NAME is not the layer's name but its class in snake case, numbered in the model's layer order
    (conv2d, conv2d_1, ...), which is how Keras 3 addresses them so that files do not depend on
    the names a session generated.
    """
    top = f["layers"] if "layers" in f else f["_layer_checkpoint_dependencies"]  # the latter: Keras 3.0

    def get(layer: _Layer) -> dict[str, np.ndarray]:
        group = top.get(layer.stored_as[0])
        for name in layer.stored_as[1:]:
            group = group["layers"].get(name) if group is not None and "layers" in group else None
        stored = group["vars"] if group is not None and "vars" in group else {}
        names = list(_VARIABLES.get(layer.kind, ()))
        if layer.kind == "BatchNormalization":  # a BN without scale or centre has no gamma or beta
            names = [n for n in names if (n != "gamma" or layer.config.get("scale", True)) and (n != "beta" or layer.config.get("center", True))]
        elif not layer.config.get("use_bias", True):
            names.remove("bias")
        return {name: np.asarray(stored[str(i)]) for i, name in enumerate(names) if str(i) in stored}

    return get


# --- the graph walk -------------------------------------------------------------------------------


class _Graph:
    """A model's layers, followed from its input, each checked against the layouts resnetlab reads (the
    notebook's ResNet-50, Keras Applications' ResNets) and its weights stored under resnetlab's names."""

    def __init__(self, layers: dict[str, _Layer], weights: _Weights, path: Path) -> None:
        self.layers, self.path = layers, path
        self._weights = weights
        self.state: dict[str, torch.Tensor] = {}  # what the walk has read so far, under resnetlab's names
        self.epsilons: set[float] = set()
        self.batch_stats: list[str] = []  # batch norms called with training=True
        self.consumers: dict[str, list[str]] = {name: [] for name in layers}
        for layer in layers.values():
            for source in layer.inputs:
                self.consumers[source].append(layer.name)

    def fail(self, layer: _Layer, wanted: str) -> KerasError:
        shown = _describe(layer)
        return KerasError(
            f"{self.path} is in neither ResNet layout resnetlab reads (the seed notebook's, Keras Applications'): "
            f"its layer {layer.name!r} is a {layer.kind}{' ' + shown if shown else ''}, where {wanted} belongs"
        )

    def next(self, layer: _Layer, wanted: str) -> _Layer:
        """The one layer that takes ``layer``'s output."""
        after = self.consumers[layer.name]
        if len(after) != 1:
            raise KerasError(f"{self.path}: {wanted} should follow {layer.name!r}, but {len(after)} layers take its output")
        return self.layers[after[0]]

    def expect(self, layer: _Layer, kind: str, wanted: str, **config) -> _Layer:
        """``layer`` itself, after checking its class and the config values that change its output."""
        if layer.kind != kind or any(_normal(layer.config.get(k)) != _normal(v) for k, v in config.items()):
            raise self.fail(layer, wanted)
        return layer

    def tensors(self, layer: _Layer, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """All of ``layer``'s stored arrays as float32 tensors, after checking that ``names`` are there."""
        stored = _as_tensors(self._weights(layer))
        missing = [n for n in names if n not in stored]
        if missing:
            raise KerasError(f"{self.path}: layer {layer.name!r} has no stored {', '.join(missing)}")
        return stored

    def conv(self, layer: _Layer, key: str) -> None:
        """Store a conv's kernel and bias as resnetlab's ``key``."""
        config = layer.config
        if (_normal(config.get("dilation_rate", (1, 1))) not in ((1, 1), 1) or config.get("groups", 1) != 1
                or config.get("data_format", "channels_last") != "channels_last"):
            raise self.fail(layer, "an undilated, ungrouped, channels-last conv")
        if not config.get("use_bias", True):
            raise KerasError(f"{self.path}: conv {layer.name!r} has no bias; the notebook's convs (and signs_resnet50's) have one")
        self.state.update(_conv_state(key, self.tensors(layer, ("kernel", "bias"))))

    def batch_norm(self, layer: _Layer, key: str) -> None:
        """Store a batch norm's scale, offset and moving statistics as resnetlab's ``key``."""
        self.expect(layer, "BatchNormalization", "BatchNormalization(axis=3)")
        if _normal(layer.config.get("axis")) not in (3, -1, (3,), (-1,)):
            raise self.fail(layer, "BatchNormalization over the channels (axis=3)")
        self.state.update(_bn_state(key, self.tensors(layer, ("moving_mean", "moving_variance"))))
        self.epsilons.add(float(layer.config.get("epsilon", 1e-3)))
        if layer.call_kwargs.get("training") is True:
            self.batch_stats.append(layer.name)


def _as_tensors(stored: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.array(array, dtype=np.float32)) for name, array in stored.items()}


def _conv_state(key: str, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Keras conv's kernel and bias under resnetlab's ``key``."""
    return {f"{key}.weight": stored["kernel"].permute(3, 2, 0, 1).contiguous(), f"{key}.bias": stored["bias"]}  # HWIO -> OIHW


def _bn_state(key: str, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Keras batch norm's scale, offset and moving statistics under resnetlab's ``key``."""
    ones = torch.ones_like(stored["moving_mean"])
    # A layer built with scale=False or center=False stores no gamma or beta.
    return {f"{key}.weight": stored.get("gamma", ones), f"{key}.bias": stored.get("beta", 0 * ones),
            f"{key}.running_mean": stored["moving_mean"], f"{key}.running_var": stored["moving_variance"],
            f"{key}.num_batches_tracked": torch.tensor(0)}


def _dense_state(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Keras Dense layer as resnetlab's classifier ``fc``."""
    return {"fc.weight": stored["kernel"].t().contiguous(), "fc.bias": stored["bias"]}


def _normal(value):
    """Config values compared the same whether Keras wrote 3, [3, 3] or (3, 3)."""
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    return value


def _describe(layer: _Layer) -> str:
    keys = ("filters", "kernel_size", "strides", "padding", "pool_size", "activation", "units", "function")
    # A function named by text (TFOpLambda's "math.add") says what the layer does; a Lambda's is marshalled
    # bytecode, never run or read here, and unreadable in a message.
    shown = {k: layer.config[k] for k in keys if k in layer.config and (k != "function" or isinstance(layer.config[k], str))}
    return json.dumps(shown) if shown else ""


def _convert(layers: dict[str, _Layer], weights: _Weights, version: str, path: Path, pixel_max: int) -> KerasModel:
    """Walk the graph from its input: the stem, then block after block, then the classifier. ``pixel_max``:
    the largest pixel value the model is fed when it rescales its input itself (255 or 1)."""
    graph = _Graph(layers, weights, path)
    inputs = [layer for layer in layers.values() if layer.kind == "InputLayer"]
    if len(inputs) != 1:
        raise KerasError(f"{path}: the model has {len(inputs)} inputs; a ResNet has one")
    shape = inputs[0].config.get("batch_input_shape") or inputs[0].config.get("batch_shape")
    if not shape or len(shape) != 4 or shape[1] != shape[2]:
        raise KerasError(f"{path}: the model's input is {shape}; resnetlab reads models of square images (N, H, W, C)")
    side, in_chans = shape[1], shape[3]
    if in_chans not in (1, 3):  # resnetlab's runs are fed grayscale or RGB images, nothing else
        raise KerasError(f"{path}: the model takes images of {in_chans} channels; resnetlab reads models of "
                         "1 (grayscale) or 3 (RGB)")

    first, folded, bgr = _preprocessing(graph, inputs[0], in_chans, pixel_max)
    layer, width, padded_pool = _stem(graph, first)
    if bgr:  # the model reverses its input's channels itself: resnetlab's takes RGB
        graph.state["conv1.weight"] = graph.state["conv1.weight"].flip(1)
    stages: list[list[int]] = []  # each block's F1, grouped by stage
    while len(graph.consumers[layer.name]) == 2:  # a block starts where the shortcut leaves the main path
        layer = _block(graph, layer, stages)
    if not stages:
        raise KerasError(f"{path}: no residual block follows the stem")
    num_classes, global_pool = _head(graph, layer, 4 * stages[-1][0], side)

    widths = [stage[0] for stage in stages]
    if any(len(set(stage)) != 1 for stage in stages) or widths != [width * 2**i for i in range(len(widths))]:
        raise KerasError(f"{path}: the stem has {width} filters and the stages' F1 are {stages}; "
                         "resnetlab's ResNets need the stem's width, doubling at every stage")
    if len(graph.epsilons) != 1:
        raise KerasError(f"{path}: the batch norms use several epsilons ({sorted(graph.epsilons)}); resnetlab's models have one")
    eps, depths = graph.epsilons.pop(), [len(s) for s in stages]
    if padded_pool != global_pool:
        raise KerasError(f"{path}: its stem is {'Keras Applications' if padded_pool else 'the notebook'}'s but its "
                         f"head is {'Keras Applications' if global_pool else 'the notebook'}'s; resnetlab has no such ResNet")
    if not padded_pool:  # the notebook's layout, fed X / 255 unless the model rescales its input itself
        found = {"num_classes": num_classes, "in_chans": in_chans, "layers": depths, "widths": widths, "bn_eps": eps}
        kwargs = {k: v for k, v in found.items() if v != _DEFAULTS[k]}
        mean, std = folded or ([0.0] * in_chans, [1.0] * in_chans)
        fed = _rescaled(pixel_max) if folded else "scaled to 0-1, as the notebook's X / 255"
        return KerasModel("signs_resnet50", kwargs, graph.state, side, version, mean, std, fed, graph.batch_stats)
    # Keras Applications' layout; its users feed it BGR pixels less the ImageNet mean ("caffe" preprocessing).
    name = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}.get(tuple(depths))
    if name is None or widths != [64, 128, 256, 512]:
        raise KerasError(f"{path}: a Keras Applications ResNet with stages of {depths} blocks and widths {widths} "
                         "is none of ResNet-50, 101 or 152")
    kwargs = {**KERAS_APPLICATIONS_LAYOUT, "bn_eps": eps}
    if num_classes != 1000:
        kwargs["num_classes"] = num_classes
    if in_chans != 3:
        kwargs["in_chans"] = in_chans
    fed = _rescaled(pixel_max) if folded else "normalised as Keras's preprocess_input for ResNets does (BGR, less the ImageNet mean)"
    if folded:  # the model prepares its pixels itself: no preprocess_input outside it
        mean, std = folded
    elif in_chans == 3:
        graph.state["conv1.weight"] = graph.state["conv1.weight"].flip(1)  # BGR filters to RGB
        mean, std = KERAS_APPLICATIONS_MEAN, KERAS_APPLICATIONS_STD
    else:
        mean, std = [sum(KERAS_APPLICATIONS_MEAN) / 3], KERAS_APPLICATIONS_STD[:1]  # grayscale
    return KerasModel(name, kwargs, graph.state, side, version, mean, std, fed, graph.batch_stats)


def _rescaled(pixel_max: int) -> str:
    return f"pixels 0-{pixel_max} prepared by the model's own layers (Rescaling, Normalization, preprocess_input)"


# Layers that change nothing when a model predicts: augmentation, and noise or dropout on the input.
_INACTIVE_WHEN_PREDICTING = {"RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
                             "RandomBrightness", "GaussianNoise", "Dropout"}
_ARITHMETIC = {"ops.Add", "ops.Subtract", "ops.Multiply", "ops.Divide", "ops.TrueDivide"}  # x / 255.0, ...
_RESCALING = {"Rescaling", "Normalization", *_ARITHMETIC}
_FLOAT_TYPES = ("float16", "bfloat16", "float32", "float64")


def _cast_to_float(layer: _Layer) -> bool:
    """Whether ``layer`` casts to a floating-point type, which leaves 0-255 pixel values as they are
    (tf.keras 2 stores the type among the call's arguments, Keras 3 in the config)."""
    target = next((c for c in layer.constants if isinstance(c, str)), layer.config.get("dtype"))
    return layer.kind == "ops.Cast" and target in _FLOAT_TYPES


def _preprocessing(graph: _Graph, input_layer: _Layer, channels: int,
                   pixel_max: int) -> tuple[_Layer, tuple[list[float], list[float]] | None, bool]:
    """Skip what a model puts between its input and the stem: augmentation, inactive when predicting, casts
    to a floating-point type, and ``Rescaling``, ``Normalization`` and the ops of ``preprocess_input`` called on the model's input
    (``x[..., ::-1]`` as three ``x[..., i]`` stacked, then the ImageNet mean subtracted), which are
    folded into the normalisation of 0-1 pixels. Returns the layer the stem follows, the (mean, std)
    that do to RGB pixels scaled to 0-1 what the model's own rescaling did to pixels up to
    ``pixel_max`` (None without any), and whether the stem is fed the channels reversed (BGR)."""
    layer = input_layer
    # The layers so far turn the input x into scale * x + offset, both indexed by the input's channels.
    scale, offset, rescaled = np.ones(channels), np.zeros(channels), False
    bgr = False  # whether the layers past ``layer`` see the input's channels reversed
    while True:
        reversed_by = _channel_reversal(graph, layer)
        if reversed_by is not None:
            layer, bgr, rescaled = reversed_by, not bgr, True
            continue
        after = graph.consumers[layer.name]
        following = graph.layers[after[0]] if len(after) == 1 else None
        if following is None or not (following.kind in _INACTIVE_WHEN_PREDICTING | _RESCALING or _cast_to_float(following)):
            break
        layer = following
        if layer.kind == "Rescaling":
            factor, shift = (_per_channel(layer.config.get(k, d), channels) for k, d in (("scale", 1.0), ("offset", 0.0)))
        elif layer.kind == "Normalization":
            factor, shift = _normalization(graph, layer, channels)
        elif layer.kind in _ARITHMETIC:
            factor, shift = _arithmetic(graph, layer, channels)
        else:
            continue
        if bgr:  # the layer's channel i is the input's channel 2 - i
            factor, shift = factor[::-1], shift[::-1]
        scale, offset, rescaled = scale * factor, offset * factor + shift, True
    if not rescaled:
        return layer, None, False
    # For pixels x scaled to 0-1 the model sees scale * pixel_max * x + offset, which is (x - mean) / std:
    std = 1 / (pixel_max * scale)
    return layer, ((-offset * std).tolist(), std.tolist()), bgr


_ELLIPSIS = {"class_name": "__ellipsis__", "config": {}}
_WHOLE, _REVERSED = ({"class_name": "__slice__", "config": {"start": None, "stop": None, "step": step}} for step in (None, -1))


def _channel_reversal(graph: _Graph, layer: _Layer) -> _Layer | None:
    """The layer whose output is ``layer``'s with its channels reversed, as preprocess_input writes
    ``x[..., ::-1]``: one GetItem in tf.keras 2 files, ``ops.stack([x[..., 2], x[..., 1], x[..., 0]],
    axis=-1)`` in Keras 3's; None if something else takes ``layer``'s output."""
    after = [graph.layers[name] for name in graph.consumers[layer.name]]
    if (len(after) == 1 and after[0].kind == "ops.GetItem" and len(after[0].inputs) == 1
            and after[0].constants in ([None, [_ELLIPSIS, _REVERSED]], [None, [_WHOLE, _WHOLE, _WHOLE, _REVERSED]])):
        return after[0]
    if len(after) != 3 or any(a.kind != "ops.GetItem" or len(graph.consumers[a.name]) != 1 for a in after):
        return None
    stack = graph.layers[graph.consumers[after[0].name][0]]
    if stack.kind != "ops.Stack" or stack.config.get("axis") not in (-1, 3):
        return None
    picked = [graph.layers[name].constants for name in stack.inputs]
    if picked != [[None, [_ELLIPSIS, i]] for i in (2, 1, 0)]:
        return None
    return stack


def _arithmetic(graph: _Graph, layer: _Layer, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """An addition, subtraction, multiplication or division of the input by a constant (one value, or one
    a channel) as factor * x + shift."""
    constants = layer.constants
    given = [c for c in constants if c is not None]
    if len(layer.inputs) != 1 or len(constants) != 2 or len(given) != 1:
        raise graph.fail(layer, "arithmetic with one constant")
    value = given[0]["config"]["value"] if isinstance(given[0], dict) else given[0]
    if np.asarray(value).size not in (1, channels):
        raise graph.fail(layer, "arithmetic with one value for each channel")
    value, ones, constant_first = _per_channel(value, channels), np.ones(channels), constants[0] is not None
    if layer.kind == "ops.Add":
        return ones, value
    if layer.kind == "ops.Subtract":
        return (-ones, value) if constant_first else (ones, -value)
    if layer.kind == "ops.Multiply":
        return value, np.zeros(channels)
    if constant_first:  # a constant divided by the pixels is not a rescaling
        raise graph.fail(layer, "a division of the pixels by a constant")
    return 1 / value, np.zeros(channels)


def _per_channel(value, channels: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float64).reshape(-1), (channels,)).copy()


def _normalization(graph: _Graph, layer: _Layer, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """A Normalization layer's (x - mean) / sqrt(variance) as factor * x + shift."""
    if layer.config.get("invert") or _normal(layer.config.get("axis", -1)) not in (-1, 3, (-1,), (3,)):
        raise graph.fail(layer, "a Normalization over the channels (axis=-1), not inverted")
    given = layer.config.get("mean")
    if given is not None:
        mean, variance = given, layer.config["variance"]
    else:  # adapted to data: the statistics are stored with the weights
        stored = graph.tensors(layer, ("mean", "variance"))
        mean, variance = stored["mean"].double().numpy(), stored["variance"].double().numpy()
    deviation = np.maximum(np.sqrt(_per_channel(variance, channels)), 1e-7)  # Keras's epsilon() floor
    return 1 / deviation, -_per_channel(mean, channels) / deviation


def _stem(graph: _Graph, input_layer: _Layer) -> tuple[_Layer, int, bool]:
    """ZeroPadding2D(3), 7x7/2 conv, BN, ReLU, [ZeroPadding2D(1)], 3x3/2 max pool: the last layer, the
    conv's filters, and whether the pool is padded."""
    layer = graph.expect(graph.next(input_layer, "ZeroPadding2D((3, 3))"), "ZeroPadding2D", "ZeroPadding2D((3, 3))",
                         padding=((3, 3), (3, 3)))
    conv = graph.expect(graph.next(layer, "the 7x7 conv"), "Conv2D", "a 7x7/2 'valid' conv",
                        kernel_size=(7, 7), strides=(2, 2), padding="valid", activation="linear")
    graph.conv(conv, "conv1")
    bn = graph.next(conv, "BatchNormalization")
    graph.batch_norm(bn, "bn1")
    layer = _relu(graph, graph.next(bn, "ReLU"))
    layer = graph.next(layer, "MaxPooling2D")
    padded = layer.kind == "ZeroPadding2D"  # Keras Applications pad the pool as torchvision's does; the notebook does not
    if padded:
        graph.expect(layer, "ZeroPadding2D", "ZeroPadding2D((1, 1))", padding=((1, 1), (1, 1)))
        layer = graph.next(layer, "MaxPooling2D")
    layer = graph.expect(layer, "MaxPooling2D", "a 3x3/2 'valid' max pool", pool_size=(3, 3), strides=(2, 2), padding="valid")
    return layer, conv.config["filters"], padded


def _block(graph: _Graph, start: _Layer, stages: list[list[int]]) -> _Layer:
    """The block whose input is ``start``'s output: a convolutional block (projection shortcut) opens a
    new stage, an identity block joins the current one. Returns the block's closing ReLU."""
    path = graph.path
    branches = [_branch(graph, graph.layers[name]) for name in graph.consumers[start.name]]
    if len({b[-1].name for b in branches}) != 1:
        raise KerasError(f"{path}: the two paths leaving {start.name!r} do not meet in one Add layer")
    add = branches[0][-1]
    main, shortcut = sorted((b[:-1] for b in branches), key=len, reverse=True)
    if shortcut:
        stages.append([])
    elif not stages:
        raise KerasError(f"{path}: the first block after the stem has no projection shortcut; the notebook's is a convolutional block")
    s, b = len(stages), len(stages[-1])
    stride = (1 if s == 1 else 2) if b == 0 else 1  # the first stage keeps the stem's size
    if len(main) != 8:
        raise KerasError(f"{path}: the block after {start.name!r} has {len(main)} layers on its main path; "
                         "the notebook's has 8 (3 conv, 3 BN, 2 ReLU)")
    c1, n1, r1, c2, n2, r2, c3, n3 = main
    graph.expect(c1, "Conv2D", f"a 1x1/{stride} 'valid' conv", kernel_size=(1, 1), strides=(stride, stride), padding="valid", activation="linear")
    graph.expect(c2, "Conv2D", "a 3x3 'same' conv", kernel_size=(3, 3), strides=(1, 1), padding="same", activation="linear")
    graph.expect(c3, "Conv2D", "a 1x1 conv", kernel_size=(1, 1), strides=(1, 1), padding="valid", activation="linear")
    f1, f2, f3 = (c.config["filters"] for c in (c1, c2, c3))
    if f2 != f1 or f3 != 4 * f1:
        raise KerasError(f"{path}: a block's filters are {[f1, f2, f3]}; signs_resnet50's are [F1, F1, 4 x F1]")
    stages[-1].append(f1)
    prefix = f"layer{s}.{b}"
    for i, (conv, norm) in enumerate(((c1, n1), (c2, n2), (c3, n3)), 1):
        graph.conv(conv, f"{prefix}.conv{i}")
        graph.batch_norm(norm, f"{prefix}.bn{i}")
    _relu(graph, r1)
    _relu(graph, r2)
    if shortcut:
        conv, norm = shortcut
        graph.expect(conv, "Conv2D", f"a 1x1/{stride} shortcut conv", kernel_size=(1, 1), strides=(stride, stride), padding="valid", activation="linear")
        graph.conv(conv, f"{prefix}.downsample.0")
        graph.batch_norm(norm, f"{prefix}.downsample.1")
    return _relu(graph, graph.next(add, "ReLU"))


def _head(graph: _Graph, layer: _Layer, channels: int, side: int | None) -> tuple[int, bool]:
    """The notebook's 2x2 average pool and flatten, or global average pooling; then a Dense classifier
    (Dropout before it does nothing at inference). The number of classes, and whether pooling is global."""
    layer = graph.next(layer, "the pooling")
    global_pool = layer.kind == "GlobalAveragePooling2D"
    if not global_pool:
        graph.expect(layer, "AveragePooling2D", "AveragePooling2D((2, 2)) or GlobalAveragePooling2D()", pool_size=(2, 2), padding="valid")
        layer = graph.expect(graph.next(layer, "Flatten"), "Flatten", "Flatten()")
    dense = graph.next(layer, "the Dense classifier")
    while dense.kind == "Dropout":
        dense = graph.next(dense, "the Dense classifier")
    if graph.consumers[dense.name]:
        raise KerasError(f"{graph.path}: layers follow the classifier {dense.name!r}; resnetlab's ResNets end in one Dense layer")
    if dense.kind != "Dense" or dense.config.get("activation") not in ("softmax", "linear"):
        raise graph.fail(dense, "a Dense classifier (softmax or linear)")
    tensors = graph.tensors(dense, ("kernel", "bias"))
    if tensors["kernel"].shape[0] != channels:
        raise KerasError(f"{graph.path}: the classifier takes {tensors['kernel'].shape[0]} features, not the {channels} "
                         f"channels of one pixel: signs_resnet50 reads models for 64x64 images (this one takes {side}x{side})")
    graph.state.update(_dense_state(tensors))
    return dense.config["units"], global_pool


def _branch(graph: _Graph, layer: _Layer) -> list[_Layer]:
    """The layers from ``layer`` to the Add it leads to, the Add last."""
    path = [layer]
    while layer.kind != "Add":
        layer = graph.next(layer, "an Add closing the block")
        path.append(layer)
        if len(path) > 9:
            raise KerasError(f"{graph.path}: no Add closes the block that starts at {path[0].name!r}")
    return path


def _relu(graph: _Graph, layer: _Layer) -> _Layer:
    if layer.kind == "ReLU" and not layer.config.get("max_value") and not layer.config.get("negative_slope"):
        return layer
    return graph.expect(layer, "Activation", "Activation('relu')", activation="relu")


# --- a run directory ------------------------------------------------------------------------------


def import_keras(path: str | Path, out: str | Path, dataset: str | None = None,
                 classes: list[str] | None = None, image_size: int | None = None,
                 data_dir: str | Path | None = None) -> tuple[Path, KerasModel]:
    """Write a Keras file's model as a run directory that ``eval``, ``predict``, ``serve`` and ``export`` take.

    Inputs are fed as the model was: the notebook's scaled to 0-1 (``X_train_orig / 255.``), Keras
    Applications' through their "caffe" preprocessing. ``dataset`` is what ``eval`` tests on by
    default (by default SIGNS for the notebook's layout, ImageNet for a 1000-class Keras Applications
    model, else none: ``eval --dataset`` then says); ``classes`` names the outputs (default their
    indices, which are SIGNS's class names). ``image_size`` is the side images are resized to for a
    model whose input size is not fixed (default 224, Keras Applications' own). ``data_dir`` is where
    ``eval`` finds the dataset's files, as a trained run records it (the notebook's ``datasets/``).
    """
    from datetime import datetime, timezone

    from . import __version__
    from .models import create_model
    from .data import check_dataset
    from .runs import CHECKPOINT, CONFIG, WEIGHTS, out_folder, save_weights, write_json

    out = out_folder(out, "a run directory is one")
    if any((out / name).exists() for name in (CONFIG, WEIGHTS, CHECKPOINT)):
        raise KerasError(f"{out} already holds a run or a model; give a new directory with --out")
    if dataset is not None:
        dataset = check_dataset(dataset)  # named as eval will read it; nothing is loaded now
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise KerasError(f"--data-dir {data_dir} is not a folder; give the folder that holds the dataset's files")
    if classes is not None and (len(set(classes)) != len(classes) or not all(classes)):
        raise KerasError(f"class names must be distinct and not empty: {','.join(classes)}")
    if image_size is not None and image_size < 1:
        raise KerasError(f"--image-size must be a positive number of pixels, not {image_size}")
    keras = read_keras(path)
    if image_size is not None and keras.image_size is not None and image_size != keras.image_size:
        raise KerasError(f"{path} takes {keras.image_size}x{keras.image_size} images only; drop --image-size")
    model = create_model(keras.model, **keras.model_kwargs)
    num_classes, channels = model.num_classes, model.conv1.in_channels
    if dataset is None:
        dataset = "signs" if keras.model == "signs_resnet50" else "imagenet" if num_classes == 1000 else None
    names = classes or keras.classes or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise KerasError(f"{len(names)} class names given for a model with {num_classes} outputs")
    model.load_state_dict(keras.state_dict)
    config = {
        "model": keras.model,
        "model_kwargs": {"num_classes": num_classes, "in_chans": channels, **keras.model_kwargs},
        "weights": None,
        "imported_from": str(Path(path).resolve()),
        "keras_version": keras.keras_version,
        "dataset": dataset,
        "data_dir": data_dir and str(Path(data_dir).expanduser().absolute()),
        "classes": names,
        "channels": channels,
        "image_size": keras.image_size or image_size or 224,  # a model of any size: Keras Applications' own by default
        "resize_size": None,
        "mean": [m + 0.0 for m in keras.mean],  # -0.0 (a rescaling without offset) reads as 0
        "std": keras.std,
        "colour_pca": None,
        "seed": 0,
        "versions": {"resnetlab": __version__, "torch": torch.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_weights(model, out)
    try:
        write_json(out / CONFIG, config)
    except BaseException:  # weights without their config would be neither a run nor a folder import may use
        (out / WEIGHTS).unlink(missing_ok=True)
        raise
    return out, keras


# --- Keras Applications' ImageNet ResNets ---------------------------------------------------------

def read_keras_applications(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict for resnet50/101/152 built with ``KERAS_APPLICATIONS_LAYOUT`` from a Keras
    Applications weights file (layers named ``conv2_block1_0_conv`` ...; with or without the classifier)."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            names = [_text(n) for n in group.attrs["layer_names"]]
            state = {}
            for name in names:
                key = _keras_applications_key(name)
                if key is None:
                    continue
                stored = _as_tensors(_legacy_arrays(group, (name,)))
                if name.endswith("_conv"):
                    state.update(_conv_state(key, stored))
                elif name.endswith("_bn"):
                    state.update(_bn_state(key, stored))
                else:  # the classifier
                    state.update(_dense_state(stored))
    except (OSError, KeyError, ValueError) as err:
        raise KerasError(f"{path} is not a Keras Applications ResNet weights file ({type(err).__name__}: {err})") from None
    if "conv1.weight" not in state:
        raise KerasError(f"{path} has no layer conv1_conv: not a Keras Applications ResNet weights file")
    state["conv1.weight"] = state["conv1.weight"].flip(1)  # BGR filters (Caffe's order) to RGB
    return state


def _keras_applications_key(name: str) -> str | None:
    """resnetlab's module for a Keras Applications layer: conv1_conv -> conv1, conv3_block2_1_bn ->
    layer2.1.bn1, conv2_block1_0_conv -> layer1.0.downsample.0, predictions -> fc; None for layers
    without weights."""
    if name in ("conv1_conv", "conv1_bn"):
        return "conv1" if name.endswith("conv") else "bn1"
    if name == "predictions":
        return "fc"
    match = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", name)
    if match is None:
        return None
    stage, block, unit, kind = int(match[1]) - 1, int(match[2]) - 1, int(match[3]), match[4]
    if unit == 0:  # the projection shortcut
        return f"layer{stage}.{block}.downsample.{0 if kind == 'conv' else 1}"
    return f"layer{stage}.{block}.{kind}{unit}"
