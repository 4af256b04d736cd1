"""Feature caching: run a frozen backbone once, then train the head alone.

In feature extraction the backbone never changes, so every epoch recomputes
the same features. `cache_features` computes them once (inference mode,
batch by batch), keeping them in memory or, above a memory budget, in a
memory-mapped file; `fit_head` trains the model's own head layers on them.
The head model is built from the same layer objects, so training it trains
the full model's head: there is nothing to copy back.
"""

import os
import tempfile

import keras
import numpy as np
from keras.src.layers.preprocessing.image_preprocessing import (
    base_image_preprocessing_layer,
)

from kft.models.blocks import get_blocks

_RANDOM_IMAGE_LAYER = base_image_preprocessing_layer.BaseImagePreprocessingLayer


class FeatureCache:
    """Backbone features of a dataset, in memory or in a memory-mapped file.

    Made by `kft.cache_features`; train on it with `kft.fit_head`.

    Attributes:
        features: `(n, ...)` float32 array (`numpy.memmap` when on disk).
        labels: `(n,)` or `(n, classes)` labels, or `None`.
        path: The memory-mapped file, or `None` when in memory.
    """

    def __init__(self, features, labels, path=None):
        self.features = features
        self.labels = labels
        self.path = path

    def __len__(self):
        return len(self.features)

    def __repr__(self):
        where = f"file {self.path!r}" if self.path else "memory"
        return (f"FeatureCache({len(self)} x {self.features.shape[1:]}, "
                f"{self.features.nbytes / 2**20:.1f} MiB in {where})")


def split_head(model):
    """Splits a model into a feature model and a head model sharing layers.

    The split is before the first head layer with weights: weightless head
    layers in front of it (the pooling) go into the feature model, so the
    cached features are as small as possible. The head must be a chain of
    single-input layers (as `kft.build_classifier` builds it).

    Args:
        model: A functional model whose head is its top-level layers named
            `head*` (as in a kft classifier).

    Returns:
        `(features_model, head_model)`. `head_model` uses the model's own
        head layer objects and variables.

    Raises:
        ValueError: no head layer with weights, or a head that is not a
            chain.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> features, head = kft.feature_cache.split_head(model)
    >>> features.output.shape, head.output.shape
    ((None, 64), (None, 3))
    """
    names = {layer.name for layer in get_blocks(model).get("head", [])}
    ordered = [layer for layer in model.layers
               if layer.name in names or layer.name.startswith("head")]
    weighted = [i for i, layer in enumerate(ordered) if layer.weights]
    if not weighted:
        raise ValueError(
            "The model has no head layer with weights to train on cached "
            "features: kft looks for the top-level layers named `head*` "
            "(as `kft.build_classifier` names them). Found head layers: "
            f"{[layer.name for layer in ordered]}; top-level layers: "
            f"{[layer.name for layer in model.layers]}"
        )
    # Weightless head layers before the first weighted one (pooling)
    # belong to the features.
    first = weighted[0]
    chain = ordered[first:]
    feature_output = chain[0].input
    for previous, layer in zip(chain, chain[1:]):
        if layer.input is not previous.output:
            raise ValueError(
                "kft can train only a head that is a chain of layers on "
                f"cached features; layer {layer.name!r} does not take the "
                f"output of {previous.name!r}."
            )
    if chain[-1].output is not model.outputs[0] or len(model.outputs) != 1:
        raise ValueError(
            "kft can train only a single-output head on cached features; "
            f"the model's output is not the output of {chain[-1].name!r}."
        )
    features_model = keras.Model(model.inputs, feature_output,
                                 name=f"{model.name}_features")
    inputs = keras.Input(feature_output.shape[1:], name="features")
    x = inputs
    for layer in chain:
        x = layer(x)
    head_model = keras.Model(inputs, x, name=f"{model.name}_head")
    return features_model, head_model


def _check_cacheable(model, features_model):
    """Raises unless the feature part is frozen and augmentation-free."""
    if type(model).__name__ == "BatchAugmentModel":
        raise ValueError(
            "The model mixes its training batches (`batch_augment`), so its "
            "inputs differ every step and features cannot be cached. Train "
            "it with `fit`, or build it without `batch_augment`."
        )
    for layer in features_model._flatten_layers(include_self=False):
        leaf = not list(layer._flatten_layers(include_self=False,
                                              recursive=False))
        if leaf and layer.trainable_weights:
            raise ValueError(
                "Features can be cached only from a frozen backbone, but "
                f"layer {layer.name!r} has trainable weights. Call "
                "kft.freeze(model, 'feature_extraction') first."
            )
        if isinstance(layer, _RANDOM_IMAGE_LAYER) and any(
                isinstance(value, keras.random.SeedGenerator)
                for value in vars(layer).values()):
            raise ValueError(
                f"Layer {layer.name!r} augments images at random during "
                "training; cached features would freeze one draw. Remove "
                "the augmentation or train with `fit`."
            )


def _batches(data, batch_size):
    """Yields `(x, y or None)` batches of arrays or of a dataset."""
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        for start in range(0, len(x), batch_size):
            yield (x[start:start + batch_size],
                   None if y is None else y[start:start + batch_size])
        return
    if isinstance(data, np.ndarray):
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size], None
        return
    if getattr(data, "_augmenter", None) is not None:
        raise ValueError(
            "The dataset augments its images (augmentation="
            f"{data.augmentation.name!r}); cached features would freeze "
            "one draw. Load it with augmentation='none' to cache features."
        )
    for batch in data:
        if isinstance(batch, (tuple, list)):
            yield batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            yield batch, None


def cache_features(model, data, *, batch_size=32, memory_budget=2**30,
                   directory=None, verbose=1):
    """Computes the frozen backbone's features of `data` once.

    Runs everything before the head's first layer with weights (see
    `split_head`) in inference mode, batch by batch through one compiled
    predict step. Features are kept in memory until they pass
    `memory_budget` bytes; then they go to a memory-mapped file, so a
    dataset larger than RAM can be cached.

    Features are computed in inference mode: a backbone's own dropout
    layers (EfficientNet has some) are off, as in `predict`. A `fit` of the
    full model would apply them, so there the two differ; for backbones
    without dropout they are the same.

    Args:
        model: A model whose backbone is frozen (`kft.freeze(model,
            "feature_extraction")`).
        data: `(x, y)` arrays, an `x` array, or a dataset yielding `(x, y)`
            batches without augmentation (e.g. `kft.data.from_arrays`).
        batch_size: Batch size for arrays. Defaults to `32`.
        memory_budget: Bytes kept in memory before spilling to a file.
            Defaults to `2**30` (1 GiB).
        directory: Where the memory-mapped file goes. Defaults to a new
            temporary directory.
        verbose: `1` shows a progress bar. Defaults to `1`.

    Returns:
        A `FeatureCache`.

    Raises:
        ValueError: a trainable backbone layer, augmentation in the model
            or the dataset, a `batch_augment` model, no data, or a bad
            `batch_size` / `memory_budget`.

    Example:
    >>> import numpy as np, kft
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> _ = kft.freeze(model, "feature_extraction")
    >>> x = np.zeros((10, 16, 16, 3), "float32")
    >>> cache = kft.cache_features(model, (x, np.zeros(10)), verbose=0)
    >>> cache.features.shape
    (10, 64)
    """
    for name, value in (("batch_size", batch_size),
                        ("memory_budget", memory_budget)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"Argument `{name}` must be a positive integer. "
                f"Received: {name}={value!r}"
            )
    features_model, _ = split_head(model)
    _check_cacheable(model, features_model)
    total = None
    if isinstance(data, tuple) and len(data) == 2:
        total = len(data[0])
    elif isinstance(data, np.ndarray):
        total = len(data)
    progress = keras.utils.Progbar(total, unit_name="image",
                                   verbose=verbose)
    in_memory, labels, spilled, path, count = [], [], None, None, 0
    for x, y in _batches(data, batch_size):
        out = np.asarray(features_model.predict_on_batch(x), np.float32)
        if y is not None:
            labels.append(np.asarray(y))
        count += len(out)
        if spilled is None:
            in_memory.append(out)
            if count * out[0].nbytes > memory_budget:
                directory = directory or tempfile.mkdtemp(prefix="kft-")
                os.makedirs(directory, exist_ok=True)
                path = os.path.join(directory, "features.f32")
                spilled = open(path, "wb")
                for part in in_memory:
                    spilled.write(part.tobytes())
                in_memory = []
        else:
            spilled.write(out.tobytes())
        progress.add(len(out))
        shape = out.shape[1:]
    if count == 0:
        raise ValueError("Argument `data` must hold at least one image; it "
                         "yielded no batches.")
    if spilled is not None:
        spilled.close()
        features = np.memmap(path, np.float32, "r", shape=(count, *shape))
    else:
        features = np.concatenate(in_memory)
    labels = np.concatenate(labels) if labels else None
    if labels is not None and len(labels) != count:
        raise ValueError(
            f"Got {len(labels)} labels for {count} images; every batch must "
            "have labels, or none."
        )
    return FeatureCache(features, labels, path)


def fit_head(model, cache, *, validation_data=None, batch_size=32,
             epochs=1, **fit_kwargs):
    """Trains the model's head on cached features with `fit`.

    The head model shares the model's head layers, so the model itself
    ends up trained. It is compiled like the model (same optimizer object,
    loss and metrics), which must therefore be compiled.

    Args:
        model: The compiled model the cache was made from.
        cache: A `FeatureCache` with labels.
        validation_data: A `FeatureCache` with labels, or `None`. Defaults
            to `None`.
        batch_size: Defaults to `32`.
        epochs: Defaults to `1`.
        **fit_kwargs: More `fit` arguments (`callbacks`, `shuffle`,
            `verbose`, `initial_epoch`, ...). Callbacks see the head model
            as `self.model`; its weights are the model's head weights.

    Returns:
        The `History` of the head model's `fit`.

    Example:
    >>> import keras, numpy as np, kft
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> _ = kft.freeze(model, "feature_extraction")
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> x, y = np.zeros((10, 16, 16, 3), "float32"), np.arange(10) % 3
    >>> cache = kft.cache_features(model, (x, y), verbose=0)
    >>> history = kft.fit_head(model, cache, epochs=2, verbose=0)
    >>> len(history.history["loss"])
    2
    """
    if not getattr(model, "compiled", False):
        raise ValueError(
            "Compile the model before `fit_head`: the head trains with the "
            "model's optimizer, loss and metrics."
        )
    for name, value in (("cache", cache), ("validation_data", validation_data)):
        if value is None and name == "validation_data":
            continue
        if not isinstance(value, FeatureCache) or value.labels is None:
            raise ValueError(
                f"Argument `{name}` must be a FeatureCache with labels (from "
                f"kft.cache_features(model, (x, y))). Received: {name}="
                f"{value!r}"
            )
    _, head = split_head(model)
    config = model._compile_config.config
    head.compile(optimizer=model.optimizer, loss=config.get("loss"),
                 metrics=config.get("metrics"),
                 loss_weights=config.get("loss_weights"),
                 weighted_metrics=config.get("weighted_metrics"))
    validation = (None if validation_data is None
                  else (validation_data.features, validation_data.labels))
    return head.fit(cache.features, cache.labels, batch_size=batch_size,
                    epochs=epochs, validation_data=validation, **fit_kwargs)
