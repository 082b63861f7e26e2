"""The seed notebook's ResNet-50 as its Keras code builds it, for tests that read Keras files.

``keras`` is the Keras module to build with: Keras 3, or tf.keras 2 (``tf_keras``) for the fixture
that ``fixtures/make_keras_fixture.py`` writes. The blocks call their batch norms with
``training=True`` by default, as the 2021 notebook does.
"""

import numpy as np


def main_path(keras, X, f, filters, s, training):
    """The three conv-BN layers both blocks share, the first with stride ``s``; the last BN un-activated."""
    L = keras.layers
    for i, (F, kernel, padding) in enumerate(zip(filters, (1, f, 1), ("valid", "same", "valid"))):
        X = L.Conv2D(F, kernel, strides=(s, s) if i == 0 else (1, 1), padding=padding)(X)
        X = L.BatchNormalization(axis=3)(X, training=training)
        if i < 2:
            X = L.Activation("relu")(X)
    return X


def identity_block(keras, X, f, filters, training=True):
    X_shortcut = X
    X = main_path(keras, X, f, filters, 1, training)
    X = keras.layers.Add()([X, X_shortcut])
    return keras.layers.Activation("relu")(X)


def convolutional_block(keras, X, f, filters, s=2, training=True):
    L = keras.layers
    X_shortcut = X
    X = main_path(keras, X, f, filters, s, training)
    X_shortcut = L.Conv2D(filters[2], 1, strides=(s, s), padding="valid")(X_shortcut)
    X_shortcut = L.BatchNormalization(axis=3)(X_shortcut, training=training)
    X = L.Add()([X, X_shortcut])
    return L.Activation("relu")(X)


def ResNet50(keras, input_shape=(64, 64, 3), classes=6, width=64, layers=(3, 4, 6, 3), training=True, preprocess=()):
    """The notebook's ResNet50 (width 64, layers 3-4-6-3); smaller widths and depths for small files;
    ``preprocess`` layers between the input and the stem, as modern Keras tutorials put them."""
    L = keras.layers
    X_input = L.Input(input_shape)
    X = X_input
    for layer in preprocess:
        X = layer(X)
    X = L.ZeroPadding2D((3, 3))(X)
    X = L.Conv2D(width, (7, 7), strides=(2, 2))(X)
    X = L.BatchNormalization(axis=3)(X)
    X = L.Activation("relu")(X)
    X = L.MaxPooling2D((3, 3), strides=(2, 2))(X)
    for stage, n in enumerate(layers):
        w = width * 2**stage
        X = convolutional_block(keras, X, 3, [w, w, 4 * w], s=1 if stage == 0 else 2, training=training)
        for _ in range(n - 1):
            X = identity_block(keras, X, 3, [w, w, 4 * w], training=training)
    X = L.AveragePooling2D((2, 2))(X)
    X = L.Flatten()(X)
    X = L.Dense(classes, activation="softmax")(X)
    return keras.models.Model(inputs=X_input, outputs=X)


def randomise(model, seed=0):
    """Weights and batch-norm statistics far from their initial values, so that a wrong mapping shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if type(layer).__name__ not in ("Conv2D", "Dense", "BatchNormalization"):
            continue  # a Normalization layer keeps the statistics it adapted to
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = weights
            weights = [rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                       rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2, var.shape)]
        else:  # kernels scaled by fan-in (He) so that activations keep their range; small biases
            weights = [rng.normal(0, np.sqrt(2 / np.prod(w.shape[:-1])) if w.ndim > 1 else 0.05, w.shape) for w in weights]
        layer.set_weights([w.astype("float32") for w in weights])


def test_images():
    """Three 64x64 RGB images unlike each other: noise, a yellow square on black, a horizontal ramp."""
    rng = np.random.default_rng(1)
    images = np.zeros((3, 64, 64, 3), dtype=np.uint8)
    images[0] = rng.integers(0, 256, (64, 64, 3))
    images[1, 16:48, 8:40] = (250, 200, 40)
    images[2] = np.linspace(0, 255, 64).astype(np.uint8)[None, :, None]
    return images


def write_keras3_files(out):
    """Keras 3 files for the tests (run in a subprocess, so Keras's global state stays out of the tests):
    a small notebook model saved as .keras and .h5, the full-size notebook model, the small one's
    weights alone, Keras Applications' ResNet50 as a published weights file and fine-tuned with a head
    of one's own, some of these rewritten as tf.keras 2 writes them (``as_tf_keras2``), a model of
    another layout, and Keras's answers for the same images."""
    import os
    from pathlib import Path

    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    out = Path(out)
    images = test_images()
    results = {"images": images}
    for name, shape in (("small", dict(width=4, layers=(1, 2, 1, 1))), ("full", {})):
        model = ResNet50(keras, **shape)
        randomise(model)
        inference = ResNet50(keras, training=False, **shape)
        inference.set_weights(model.get_weights())
        results[f"{name}_probs"] = np.asarray(inference.predict(images / 255.0, verbose=0))
        results[f"{name}_count"] = model.count_params()
        model.save(out / f"{name}.keras")
        if name == "small":
            model.save(out / "small.h5")
            model.save_weights(out / "small.weights.h5")
    # Keras Applications' ResNet50 with random weights, saved as Keras 2 saved its published ImageNet
    # weights (save_weights to HDF5: every layer's group at the top), and its answers for 224x224 images
    # under its own "caffe" preprocessing. (Random batch-norm statistics let the activations grow
    # through 16 blocks, so the answers are compared as logits, relative to their size.)
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group
    import h5py

    applications = keras.applications.ResNet50(weights=None, classifier_activation=None)  # logits: softmax saturates
    randomise(applications, seed=3)
    with h5py.File(out / "resnet50_weights_tf_dim_ordering_tf_kernels.h5", "w") as f:
        save_weights_to_hdf5_group(f, applications)
    rng = np.random.default_rng(4)
    photos = np.stack([rng.integers(0, 256, (224, 224, 3)), np.repeat(np.linspace(0, 255, 224)[:, None, None], 224, 1).repeat(3, 2)])
    photos[1, 60:160, 40:120] = (240, 30, 30)  # a red block on a vertical ramp
    photos = photos.astype(np.uint8)
    results["photos"] = photos
    preprocessed = keras.applications.resnet50.preprocess_input(photos.astype("float32"))
    results["applications_logits"] = np.asarray(applications.predict(preprocessed, verbose=0))

    # Augmentation and rescaling inside the model, as modern Keras tutorials do it: fed 0-255 pixels.
    L = keras.layers
    normalization = L.Normalization()
    normalization.adapt(images.astype("float32") / 127.5 - 1)  # statistics stored with the weights
    preprocess = (L.RandomFlip("horizontal"), L.Rescaling([1 / 127.5, 1 / 100, 1 / 60], offset=-1), normalization)
    rescaled = ResNet50(keras, training=False, width=4, layers=(1, 2, 1, 1), preprocess=preprocess)
    randomise(rescaled, seed=6)
    rescaled.save(out / "rescaled.keras")
    results["rescaled_probs"] = np.asarray(rescaled.predict(images.astype("float32"), verbose=0))
    # The same by arithmetic on the input tensor (Keras 3 records each operation), saved in both formats;
    # first a cast to float, as models fed uint8 images have.
    arithmetic = ResNet50(keras, training=False, width=4, layers=(1, 2, 1, 1), preprocess=(
        lambda x: 1.0 - (keras.ops.cast(x, "float32") / 255.0 - 0.5) * np.array([2.0, 3.0, 4.0], "float32"),))
    randomise(arithmetic, seed=10)
    arithmetic.save(out / "arithmetic.keras")
    arithmetic.save(out / "arithmetic.h5")
    as_tf_keras2(out / "arithmetic.h5", out / "arithmetic_tf_keras2.h5")  # TFOpLambda layers
    results["arithmetic_probs"] = np.asarray(arithmetic.predict(images.astype("float32"), verbose=0))
    results["normalization"] = np.stack([np.asarray(normalization.mean).reshape(-1), np.asarray(normalization.variance).reshape(-1)])

    # Transfer learning as Keras users do it: Keras Applications' ResNet50 without its top, a classifier
    # of one's own (a linear one, for logits), images of any size.
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    head = L.Dense(5)(L.Dropout(0.2)(L.GlobalAveragePooling2D()(base.output)))
    tuned = keras.models.Model(base.input, head)
    randomise(tuned, seed=5)
    tuned.save(out / "tuned.keras")
    results["tuned_logits"] = np.asarray(tuned.predict(keras.applications.resnet50.preprocess_input(images.astype("float32")), verbose=0))

    # keras.io's transfer learning: augmentation in a Sequential of its own, preprocess_input called on
    # its output, the base called as one layer; saved in both formats. And the whole model as a
    # Sequential, rescaling its 0-255 input. Both are fed 0-255 pixels.
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    randomise(base, seed=7)
    inputs = L.Input((None, None, 3))
    augmented = keras.Sequential([L.RandomFlip("horizontal")], name="augmentation")(inputs)
    features = base(keras.applications.resnet50.preprocess_input(augmented), training=False)
    nested = keras.models.Model(inputs, L.Dense(4)(L.Dropout(0.2)(L.GlobalAveragePooling2D()(features))))
    randomise(nested, seed=8)
    nested.save(out / "nested.keras")
    nested.save(out / "nested.h5")
    as_tf_keras2(out / "nested.h5", out / "nested_tf_keras2.h5")  # TensorFlow's transfer learning tutorial, in tf.keras 2
    results["nested_logits"] = np.asarray(nested.predict(images.astype("float32"), verbose=0))
    # The base's layers in the model itself, built on preprocess_input's output (input_tensor=...).
    inputs = L.Input((64, 64, 3))
    base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=keras.applications.resnet50.preprocess_input(inputs))
    inline = keras.models.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(base.output)))
    randomise(inline, seed=11)
    inline.save(out / "inline.h5")
    as_tf_keras2(out / "inline.h5", out / "inline_tf_keras2.h5")
    results["inline_logits"] = np.asarray(inline.predict(images.astype("float32"), verbose=0))
    sequential = keras.Sequential([L.Input((64, 64, 3)), keras.Sequential([L.Rescaling(1 / 127.5, offset=-1)]), base,
                                   L.GlobalAveragePooling2D(), L.Dense(3)])
    randomise(sequential, seed=9)
    sequential.save(out / "sequential.keras")
    results["sequential_logits"] = np.asarray(sequential.predict(images.astype("float32"), verbose=0))

    inputs = L.Input((64, 64, 3))
    other = keras.models.Model(inputs, L.Dense(6)(L.Flatten()(L.Conv2D(8, 3)(inputs))))
    other.save(out / "other.keras")
    np.savez(out / "predictions.npz", **results)


def predict_files(folder):
    """Keras's answers for every NAME.keras and NAME.h5 in ``folder`` on NAME.npz's images ``x``, saved as
    NAME.keras.npy and NAME.h5.npy (run in a subprocess, as ``write_keras3_files``)."""
    import os
    from pathlib import Path

    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    for path in sorted([*Path(folder).glob("*.keras"), *Path(folder).glob("*.h5")]):
        model = keras.models.load_model(path)
        np.save(f"{path}.npy", np.asarray(model.predict(np.load(path.with_suffix(".npz"))["x"], verbose=0)))


# --- tf.keras 2's HDF5 files, written without TensorFlow ---------------------------------------------

TF_KERAS2_VERSION = "2.21.0"  # the tf_keras whose files these rewrites copy
# Keras 3's ops on a tensor and a constant, as the TensorFlow functions tf.keras 2 records them under.
_TF_FUNCTIONS = {"Add": "__operators__.add", "Subtract": "math.subtract", "Multiply": "math.multiply",
                 "TrueDivide": "math.truediv", "Divide": "math.truediv"}
_KERAS3_ONLY = {"quantization_config", "synchronized", "renorm", "renorm_clipping", "renorm_momentum", "build_input_shape"}
_NESTED = ("Functional", "Sequential")


def as_tf_keras2(source, out):
    """Rewrite the ``.h5`` file Keras 3 saved into the one tf.keras 2 (``tf_keras``; TensorFlow <= 2.15's
    Keras) saves for the same model, in the layout tf_keras 2.21 was seen to write, so that tests need
    no TensorFlow: inbound nodes as ``[[layer, node_index, tensor_index, kwargs], ...]`` (a nested
    model's output as its node 1), ``batch_input_shape``, dtypes by name, weights as ``kernel:0``; and
    what Keras 3 records as ops, tf.keras 2's TFOpLambda layers instead: ``preprocess_input``'s
    ``x[..., ::-1]`` as one SlicingOpLambda ``tf.__operators__.getitem`` (Keras 3: three GetItems
    stacked), its mean as ``tf.nn.bias_add``, and ``x / 255.0``, ``1.0 - x``, ... as
    ``tf.math.truediv``, ``tf.math.subtract`` (a constant first argument as ``_CONSTANT_VALUE``).
    (tf_keras 2.21 loads the files this writes and answers as Keras 3 did: checked by hand.)"""
    import json

    import h5py

    text = h5py.string_dtype()
    with h5py.File(source, "r") as src, h5py.File(out, "w") as dst:
        model = _tf_keras2_model(json.loads(src.attrs["model_config"]), {})
        weights = dst.create_group("model_weights")
        for attrs in (dst.attrs, weights.attrs):
            attrs["backend"], attrs["keras_version"] = "tensorflow", TF_KERAS2_VERSION
        dst.attrs["model_config"] = json.dumps(model)
        names = [entry["name"] for entry in model["config"]["layers"]]
        weights.attrs["layer_names"] = np.array(names, dtype=text)
        for name in [*names, "top_level_model_weights"]:
            group = weights.create_group(name)
            stored = src["model_weights"].get(name)  # none for what Keras 3 records as ops
            kept = [n.decode() if isinstance(n, bytes) else str(n) for n in stored.attrs["weight_names"]] if stored else []
            group.attrs["weight_names"] = np.array([f"{n}:0" for n in kept], dtype=text) if kept else np.array([])
            for n in kept:
                group[f"{n}:0"] = stored[n][()]


def _tf_keras2_model(entry, used):
    """A functional or sequential model's config as tf.keras 2 writes it; ``used`` counts the names of
    TFOpLambda layers, which tf.keras 2 numbers (tf.math.subtract, tf.math.subtract_1, ...)."""
    config = entry["config"]
    if entry["class_name"] == "Sequential":
        return {"class_name": "Sequential", "config": {"name": config["name"], "layers": [
            {"class_name": e["class_name"], "config": _tf_keras2_config(e)} for e in config["layers"]]}}
    nested = {e["name"] for e in config["layers"] if e["class_name"] in _NESTED}
    renamed, picked, reversals = {}, {}, set()

    def ref(tensor):
        name, node, index = tensor["config"]["keras_history"]
        return [renamed.get(name, name), node + (name in nested), index]  # a nested model's node 0 is its own input

    def constant(value):
        return value["config"]["value"] if isinstance(value, dict) else value

    def unique(name):
        used[name] = used.get(name, -1) + 1
        return f"{name}_{used[name]}" if used[name] else name

    layers = []
    for e in config["layers"]:
        kind, node = e["class_name"], (e["inbound_nodes"] or [None])[0]
        if kind == "InputLayer" or "trainable" in e["config"]:  # a layer
            converted = _tf_keras2_model(e, used) if kind in _NESTED else {"class_name": kind, "config": _tf_keras2_config(e)}
            nodes = []
            for n in e["inbound_nodes"]:
                args = n["args"][0] if isinstance(n["args"][0], list) else n["args"][:1]
                kwargs = {k: v for k, v in n["kwargs"].items() if v is not None}
                nodes.append([ref(t) + [kwargs] for t in args])
            layers.append({**converted, "name": e["name"], "inbound_nodes": nodes})
            continue
        args = node["args"]
        if kind == "Cast":  # tf.cast(x, dtype): the type among the call's arguments
            name = renamed[e["name"]] = unique("tf.cast")
            layers.append({"class_name": "TFOpLambda", "config": _tf_op_config(name, "cast"), "name": name,
                           "inbound_nodes": [ref(args[0]) + [{"dtype": e["config"]["dtype"]}]]})
            continue
        if kind == "GetItem":  # one channel of x[..., ::-1], absorbed by the Stack that follows
            picked[e["name"]] = (ref(args[0]), args[1][1])
            continue
        if kind == "Stack":
            sources = [picked[t["config"]["keras_history"][0]] for t in args[0]]
            if [i for _, i in sources] != [2, 1, 0] or len({str(s) for s, _ in sources}) != 1:
                raise ValueError("tf.keras 2 writes no such Stack")
            name = renamed[e["name"]] = unique("tf.__operators__.getitem")
            reversals.add(name)
            spec = [{"class_name": "__ellipsis__"}, {"start": None, "stop": None, "step": -1}]
            layers.append({"class_name": "SlicingOpLambda", "config": _tf_op_config(name, "__operators__.getitem"),
                           "name": name, "inbound_nodes": [sources[0][0] + [{"slice_spec": spec}]]})
            continue
        first_given = not (isinstance(args[0], dict) and args[0].get("class_name") == "__keras_tensor__")
        tensor, value = (args[1], constant(args[0])) if first_given else (args[0], constant(args[1]))
        source = ref(tensor)
        if kind == "Add" and source[0] in reversals:  # preprocess_input's mean: tf.nn.bias_add
            function, call = "nn.bias_add", source + [{"bias": np.ravel(value).tolist(), "data_format": "NHWC"}]
        elif kind in _TF_FUNCTIONS:
            function = _TF_FUNCTIONS[kind]
            call = (["_CONSTANT_VALUE", -1, value, {"y": source, "name": None}] if first_given
                    else source + [{"y": value, "name": None}])
        else:
            raise ValueError(f"no tf.keras 2 form known here for Keras 3's op {kind}")
        name = renamed[e["name"]] = unique(f"tf.{function}")
        layers.append({"class_name": "TFOpLambda", "config": _tf_op_config(name, function), "name": name, "inbound_nodes": [call]})
    ends = {}
    for key in ("input_layers", "output_layers"):
        given = config[key] if isinstance(config[key][0], list) else [config[key]]
        ends[key] = [[renamed.get(n, n), i, t] for n, i, t in given]
    return {"class_name": entry["class_name"], "config": {"name": config["name"], "trainable": config.get("trainable", True),
                                                         "layers": layers, **ends}}


def _tf_op_config(name, function):
    return {"name": name, "trainable": True, "dtype": "float32", "function": function}


def _tf_keras2_config(entry):
    """A layer's own config as tf.keras 2 writes it: input shapes as batch_input_shape, dtypes by name,
    a batch norm's axis as a list, without what Keras 3 alone writes."""
    config = {}
    for key, value in entry["config"].items():
        if key in _KERAS3_ONLY:
            continue
        if key == "dtype" and isinstance(value, dict):  # Keras 3's DTypePolicy
            value = value["config"]["name"]
        if key.endswith("_initializer") and isinstance(value, dict):  # Keras 3's initializers also take axes
            value = {**value, "config": {k: v for k, v in value["config"].items() if k not in ("input_axes", "output_axes")}}
        config["batch_input_shape" if key == "batch_shape" else key] = value
    if entry["class_name"] == "BatchNormalization":
        config["axis"] = [a % 4 for a in (config["axis"] if isinstance(config["axis"], list) else [config["axis"]])]
    if entry["class_name"] == "Dense":
        config.setdefault("activity_regularizer", None)
    if entry["class_name"].startswith("Random"):  # tf.keras 2's augmentation layers take no data_format
        config.pop("data_format", None)
    return config
