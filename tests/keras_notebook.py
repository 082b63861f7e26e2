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
    of one's own, a model of another layout, and Keras's answers for the same images."""
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
    # The same by arithmetic on the input tensor (Keras 3 records each operation), saved in both formats.
    arithmetic = ResNet50(keras, training=False, width=4, layers=(1, 2, 1, 1),
                          preprocess=(lambda x: 1.0 - (x / 255.0 - 0.5) * np.array([2.0, 3.0, 4.0], "float32"),))
    randomise(arithmetic, seed=10)
    arithmetic.save(out / "arithmetic.keras")
    arithmetic.save(out / "arithmetic.h5")
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
    results["nested_logits"] = np.asarray(nested.predict(images.astype("float32"), verbose=0))
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
