"""A trained run as a Keras model file (Keras 3's ``.keras``, or Keras 2's ``.h5``), written without Keras.

The file holds a functional model that ``keras.models.load_model`` rebuilds with any backend: a
``Normalization`` layer with the run's statistics (so it takes channels-last images scaled to 0-1,
as the seed notebook feeds its model), the network layer for layer, and a softmax classifier. Every
PyTorch padding is made explicit where Keras's "same" would differ (strided convolutions, the max
pool), so Keras computes what PyTorch computes. The networks of both papers and the seed notebook are
written: post-activation (ImageNet, CIFAR with any shortcut option, plain) and pre-activation.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .blocks import BasicBlock, Bottleneck, ZeroPadShortcut
from .keras_weights import keras3_names
from .models import ResNet
from .runs import atomic_write

KERAS_VERSION = "3.0.0"  # the oldest Keras 3 that reads the .keras files written here
KERAS2_VERSION = "2.6.0"  # the first Keras 2 with the Normalization layer these files begin with


@dataclass
class _Tensor:
    layer: str  # the Keras layer whose output it is
    shape: tuple  # (None, H, W, C) or (None, C)


@dataclass
class _Graph:
    """Keras layer configs and their weights, appended in the order the model computes them."""

    layers: list[dict] = field(default_factory=list)
    weights: list[list[np.ndarray]] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)  # the layers whose outputs each one takes

    def add(self, kind: str, inputs: list[_Tensor], shape: tuple, weights: list[np.ndarray] = (), **config) -> _Tensor:
        name = f"{kind.lower()}_{len(self.layers)}"
        arg = [self._ref(t) for t in inputs] if len(inputs) > 1 else self._ref(inputs[0])
        input_shape = [list(t.shape) for t in inputs] if len(inputs) > 1 else list(inputs[0].shape)
        self.layers.append({
            "module": "keras.layers", "class_name": kind, "registered_name": None, "name": name,
            "config": {"name": name, "trainable": True, "dtype": "float32", **config},
            "build_config": {"input_shape": input_shape},
            "inbound_nodes": [{"args": [arg], "kwargs": {}}],
        })
        self.weights.append([np.ascontiguousarray(w, dtype=np.float32) for w in weights])
        self.sources[name] = [t.layer for t in inputs]
        return _Tensor(name, shape)

    def sort_as_keras(self, output: str) -> None:
        """Put the layers in the order Keras gives a functional model's layers, which is the order an .h5
        file's weights are loaded in: deepest first (the longest path to the output), ties broken by
        a depth-first walk from the output that takes each layer's inputs in order."""
        inputs = {layer["name"]: self.sources.get(layer["name"], []) for layer in self.layers}
        depth = {output: 0}
        for layer in reversed(self.layers):  # consumers come after what they consume
            for source in inputs[layer["name"]]:
                depth[source] = max(depth.get(source, 0), depth[layer["name"]] + 1)
        seen, stack = {}, [output]
        while stack:  # first visits, from the output back
            name = stack.pop()
            if name not in seen:
                seen[name] = len(seen)
                stack.extend(reversed(inputs[name]))
        order = sorted(range(len(self.layers)), key=lambda i: (-depth[self.layers[i]["name"]], seen[self.layers[i]["name"]]))
        self.layers = [self.layers[i] for i in order]
        self.weights = [self.weights[i] for i in order]

    @staticmethod
    def _ref(t: _Tensor) -> dict:
        return {"class_name": "__keras_tensor__", "config": {"shape": list(t.shape), "dtype": "float32", "keras_history": [t.layer, 0, 0]}}


def export_keras(model: ResNet, config: dict, path: str | Path) -> Path:
    """Write ``model`` (with ``config``'s input size, statistics and classes) to ``path``: a ``.keras``
    file (Keras 3) or an ``.h5`` file in Keras 2's format, which Keras 2 (tf.keras, as in TensorFlow up
    to 2.15) and Keras 3 both read."""
    path = Path(path)
    if path.suffix.lower() not in (".keras", ".h5"):
        raise ValueError(f"a Keras model file ends in .keras (Keras 3) or .h5 (Keras 2 and 3), not {path.name}")
    _check_supported(model)
    _check_config(model, config)
    graph, output = _build(model, config)
    about = {"model": config["model"], "classes": config.get("classes")}  # what the outputs mean
    if path.suffix.lower() == ".keras":
        data = _keras3_archive(graph, output, config["model"], about)
    else:
        data = _keras2_hdf5(graph, output, config["model"], about)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


def _build(model: ResNet, config: dict) -> tuple[_Graph, _Tensor]:
    """The model's layers in Keras's terms, in order, and its output."""
    side, channels = config["image_size"], config["channels"]
    graph = _Graph()
    graph.layers.append({"module": "keras.layers", "class_name": "InputLayer", "registered_name": None, "name": "image",
                         "config": {"batch_shape": [None, side, side, channels], "dtype": "float32", "name": "image"},
                         "inbound_nodes": []})
    graph.weights.append([])
    x = _Tensor("image", (None, side, side, channels))
    x = graph.add("Normalization", [x], x.shape, axis=-1, invert=False,
                  mean=list(map(float, config["mean"])), variance=[float(s) ** 2 for s in config["std"]])

    x = _conv(graph, model.conv1, x)
    if not model.preact:  # a pre-activation net normalises inside its first unit
        x = _relu(graph, _batch_norm(graph, model.bn1, x))
    if isinstance(model.maxpool, nn.MaxPool2d):
        x = _max_pool(graph, x, model.maxpool.padding, activated=not model.preact)
    for block in model.blocks():
        x = _preact_block(graph, block, x) if model.preact else _block(graph, block, x)
    if model.final_relu:  # a pre-activation net's BN-ReLU after its last unit
        x = _relu(graph, _batch_norm(graph, model.final_bn, x))

    if isinstance(model.avgpool, nn.AvgPool2d):  # the notebook's 2x2 pool and flatten
        h = x.shape[1] // 2
        if h != 1:
            raise ValueError(f"the notebook's layout flattens a 1x1 map; a {config['image_size']}-pixel input leaves {h}x{h}")
        x = graph.add("AveragePooling2D", [x], (None, 1, 1, x.shape[3]), pool_size=[2, 2], strides=[2, 2], padding="valid")
        x = graph.add("Flatten", [x], (None, x.shape[3]))
    else:
        x = graph.add("GlobalAveragePooling2D", [x], (None, x.shape[3]))
    fc = model.fc
    x = graph.add("Dense", [x], (None, fc.out_features), [_array(fc.weight).T, _array(fc.bias)],
                  units=fc.out_features, activation="softmax", use_bias=True)
    graph.sort_as_keras(x.layer)
    return graph, x


def _keras3_archive(graph: _Graph, output: _Tensor, name: str, about: dict) -> bytes:
    """A .keras file: config.json, metadata.json, and model.weights.h5 with each layer's variables under
    its class name, numbered, as Keras 3 writes them."""
    import h5py

    model_config = {
        "module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
        "config": {"name": name, "trainable": True, "layers": graph.layers,
                   "input_layers": ["image", 0, 0], "output_layers": [output.layer, 0, 0]},
        "build_config": {"input_shape": None}, "compile_config": None,
    }
    weights = io.BytesIO()
    with h5py.File(weights, "w") as f:
        for stored_as, arrays in zip(keras3_names([layer["class_name"] for layer in graph.layers]), graph.weights):
            group = f.create_group(f"layers/{stored_as}/vars")
            for i, w in enumerate(arrays):
                group.create_dataset(str(i), data=w)
        f.create_group("vars")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("metadata.json", json.dumps({
            "keras_version": KERAS_VERSION, "date_saved": datetime.now(timezone.utc).strftime("%Y-%m-%d@%H:%M:%S"),
            "resnetlab": about,
        }))
        z.writestr("config.json", json.dumps(model_config))
        z.writestr("model.weights.h5", weights.getvalue())
    return archive.getvalue()


# Keras 2 names a layer's weights, in the order it creates them.
_KERAS2_WEIGHTS = {"Conv2D": ("kernel", "bias"), "Dense": ("kernel", "bias"),
                   "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance")}


def _keras2_hdf5(graph: _Graph, output: _Tensor, name: str, about: dict) -> bytes:
    """An .h5 file as Keras 2's model.save writes it: the graph as JSON in ``model_config`` (inbound
    nodes as [layer, 0, 0, {}] lists) and each layer's weights under ``model_weights``."""
    import h5py

    layers = []
    for layer in graph.layers:
        config = dict(layer["config"])
        if layer["class_name"] == "InputLayer":
            config["batch_input_shape"] = config.pop("batch_shape")
        sources = graph.sources.get(layer["name"])
        nodes = [[[source, 0, 0, {}] for source in sources]] if sources else []
        layers.append({"class_name": layer["class_name"], "config": config, "name": layer["name"], "inbound_nodes": nodes})
    model_config = {"class_name": "Functional", "config": {"name": name, "layers": layers, "input_layers": [["image", 0, 0]],
                                                            "output_layers": [[output.layer, 0, 0]]}}
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs["keras_version"] = KERAS2_VERSION
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(model_config)
        f.attrs["resnetlab"] = json.dumps(about)
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = np.array([layer["name"].encode() for layer in layers])
        for layer, arrays in zip(layers, graph.weights):
            names = [f"{layer['name']}/{w}:0" for w in _KERAS2_WEIGHTS.get(layer["class_name"], ())[:len(arrays)]]
            sub = group.create_group(layer["name"])
            sub.attrs["weight_names"] = np.array([n.encode() for n in names])
            for n, w in zip(names, arrays):
                sub.create_dataset(n, data=w)
    return buffer.getvalue()


def _array(t: torch.Tensor) -> np.ndarray:
    """A parameter or buffer as the float32 array Keras files hold, whatever the model's dtype and device."""
    return t.detach().to("cpu", torch.float32).numpy()


def _check_supported(model: ResNet) -> None:
    if model.out_indices is not None or not isinstance(model.fc, nn.Linear):
        raise ValueError("Keras export writes a classifier; a backbone (features_only, or num_classes=0) has none")
    unsupported = ([f"order={model.order!r}"] if model.order not in ("post", "preact") else []) + (
        [f"mixing={model.mixing!r}"] if model.mixing != "add" else [])
    # A block class of the user's own would be written as the stock block it derives from: another net.
    unsupported += sorted({f"{type(b).__name__} blocks" for b in model.blocks() if type(b) not in (BasicBlock, Bottleneck)})
    if unsupported:
        raise ValueError("Keras export writes the networks of the papers and the notebook (post- or pre-activation "
                         f"units that add their shortcut), not {', '.join(unsupported)}")


def _check_config(model: ResNet, config: dict) -> None:
    """Refuse a config that does not describe ``model``: Keras could not load the file, or its outputs
    would carry other classes' names."""
    channels = model.conv1.in_channels
    if config["channels"] != channels:
        raise ValueError(f"the model takes {channels}-channel images; the config says {config['channels']}")
    if not len(config["mean"]) == len(config["std"]) == channels:
        raise ValueError(f"{channels} channels need {channels} means and standard deviations; the config has "
                         f"{len(config['mean'])} and {len(config['std'])}")
    classes = config.get("classes")
    if classes is not None and len(classes) != model.fc.out_features:
        raise ValueError(f"the model has {model.fc.out_features} classes; the config names {len(classes)}")


def _max_pool(graph: _Graph, x: _Tensor, p: int, activated: bool) -> _Tensor:
    """PyTorch's 3x3/2 max pool, which pads with minus infinity. After a ReLU zeros pad the same, as Keras
    Applications write it; before one (pre-activation nets) the pool takes each pixel's 3x3 neighbourhood
    with Keras's "same" padding, which leaves the border out as minus infinity does, then every second."""
    if p and not activated:
        x = graph.add("MaxPooling2D", [x], x.shape, pool_size=[3, 3], strides=[1, 1], padding="same")
        h = (x.shape[1] - 1) // 2 + 1
        return graph.add("MaxPooling2D", [x], (None, h, h, x.shape[3]), pool_size=[1, 1], strides=[2, 2], padding="valid")
    if p:
        x = _pad(graph, x, p)
    h = (x.shape[1] - 3) // 2 + 1
    return graph.add("MaxPooling2D", [x], (None, h, h, x.shape[3]), pool_size=[3, 3], strides=[2, 2], padding="valid")


def _pad(graph: _Graph, x: _Tensor, p: int) -> _Tensor:
    return graph.add("ZeroPadding2D", [x], (None, x.shape[1] + 2 * p, x.shape[2] + 2 * p, x.shape[3]), padding=[[p, p], [p, p]])


def _conv(graph: _Graph, conv: nn.Conv2d, x: _Tensor) -> _Tensor:
    """A PyTorch convolution as Keras's: "valid" when unpadded, "same" where that pads as PyTorch does
    (stride 1), else zeros padded explicitly and a "valid" convolution."""
    k, s = conv.kernel_size[0], conv.stride[0]
    p = conv.padding if isinstance(conv.padding, str) else conv.padding[0]
    kernel = _array(conv.weight).transpose(2, 3, 1, 0)  # OIHW -> HWIO
    bias = None if conv.bias is None else _array(conv.bias)
    if p == "same" or (p and s == 1 and k % 2 == 1 and p == k // 2):
        return _conv_layer(graph, x, kernel, bias, s, "same")
    if p:
        x = _pad(graph, x, p)
    return _conv_layer(graph, x, kernel, bias, s, "valid")


def _conv_layer(graph: _Graph, x: _Tensor, kernel: np.ndarray, bias: np.ndarray | None, stride: int, padding: str,
                trainable: bool = True) -> _Tensor:
    k, channels = kernel.shape[0], kernel.shape[3]
    h = -(-x.shape[1] // stride) if padding == "same" else (x.shape[1] - k) // stride + 1
    weights = [kernel] if bias is None else [kernel, bias]
    out = graph.add("Conv2D", [x], (None, h, h, channels), weights, filters=channels, kernel_size=[k, k],
                    strides=[stride, stride], padding=padding, use_bias=bias is not None, activation="linear")
    graph.layers[-1]["config"]["trainable"] = trainable
    return out


def _batch_norm(graph: _Graph, bn: nn.BatchNorm2d, x: _Tensor) -> _Tensor:
    weights = [_array(t) for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)]
    # Keras has no cumulative average (PyTorch's momentum None): such a net gets PyTorch's default, which
    # matters only to training it further in Keras.
    return graph.add("BatchNormalization", [x], x.shape, weights, axis=-1, epsilon=bn.eps, momentum=1 - (bn.momentum or 0.1))


def _relu(graph: _Graph, x: _Tensor) -> _Tensor:
    return graph.add("Activation", [x], x.shape, activation="relu")


def _block(graph: _Graph, block: nn.Module, x: _Tensor) -> _Tensor:
    """conv-BN-ReLU ... conv-BN, plus the shortcut, then ReLU."""
    out = x
    for i, (conv, bn) in enumerate(zip(block.convs, block.bns)):
        out = _batch_norm(graph, bn, _conv(graph, conv, out))
        if i < len(block.convs) - 1:
            out = _relu(graph, out)
    if block.residual:
        shortcut = block.downsample
        if isinstance(shortcut, nn.Sequential):  # a projection: 1x1 conv and BN
            s = _batch_norm(graph, shortcut[1], _conv(graph, shortcut[0], x))
        elif isinstance(shortcut, ZeroPadShortcut):
            s = _zero_pad_shortcut(graph, shortcut, x, out.shape[3])
        else:
            s = x
        out = graph.add("Add", [out, s], out.shape)
    return _relu(graph, out)


def _preact_block(graph: _Graph, block: nn.Module, x: _Tensor) -> _Tensor:
    """BN-ReLU-conv ... BN-ReLU-conv, plus the shortcut (a changing one, projection or zero-padded
    identity, reads the normalised input, as the block's forward has it)."""
    preacted = _relu(graph, _batch_norm(graph, block.bns[0], x))
    out = _conv(graph, block.convs[0], preacted)
    for bn, conv in zip(block.bns[1:], block.convs[1:]):
        out = _conv(graph, conv, _relu(graph, _batch_norm(graph, bn, out)))
    shortcut = block.downsample
    if isinstance(shortcut, nn.Sequential):  # a projection: a 1x1 conv, no BN of its own
        s = _conv(graph, shortcut[0], preacted)
    elif isinstance(shortcut, ZeroPadShortcut):
        s = _zero_pad_shortcut(graph, shortcut, preacted, out.shape[3])
    else:
        s = x
    return graph.add("Add", [out, s], out.shape)


def _zero_pad_shortcut(graph: _Graph, shortcut: ZeroPadShortcut, x: _Tensor, channels: int) -> _Tensor:
    """Option A (subsample, zero channels on both sides) as a fixed 1x1 convolution: ones from each
    input channel to its place among the outputs, zeros elsewhere, not trained."""
    kernel = np.zeros((1, 1, x.shape[3], channels), dtype=np.float32)
    kernel[0, 0, np.arange(x.shape[3]), shortcut.extra // 2 + np.arange(x.shape[3])] = 1
    return _conv_layer(graph, x, kernel, None, shortcut.stride, "valid", trainable=False)
