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
import weakref

import keras
import numpy as np

from kft import _compat
from kft._evaluation_step import without_penalty_in_evaluation
from kft._progress import finish
from kft._validation import check_finite_images
from kft._validation import check_int
from kft._validation import check_verbose
from kft._validation import fail_argument
from kft._writing import output_path
from kft.distributed.data_parallel import predict_padded
from kft.distributed.data_parallel import check_batch_size
from kft.distributed.processes import every_example
from kft.models.batch_augment import BatchAugmentModel
from kft.models.blocks import wrapped_model
from kft.training.fit_data import as_pair
from kft.training.fit_data import batches
from kft.training.fit_data import check_data_labels
from kft.training.fit_data import checked_class_weight
from kft.training.fit_data import classifier_classes
from kft.training.fit_data import is_random_image_layer
from kft.training.fit_data import num_examples
from kft.training.head import split_head
from kft.training.head import wrapper_features

__all__ = ["FeatureCache", "cache_features", "can_cache_features",
           "fit_head", "split_head"]

class FeatureCache:
    """Backbone features of a dataset, in memory or in a memory-mapped file.

    Made by `kft.cache_features`; train on it with `kft.fit_head`.

    Attributes:
        features: `(n, ...)` float32 array (`numpy.memmap` when on disk).
        labels: `(n,)` or `(n, classes)` labels, or `None`.
        path: The memory-mapped file (deleted once `features` is
            garbage-collected), or `None` when in memory.
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


def _uncacheable_layer(features_model):
    """Why a layer of `features_model` rules caching out, or `None`."""
    for layer in _compat.flatten_layers(features_model, include_self=False):
        leaf = not list(_compat.flatten_layers(layer, include_self=False,
                                              recursive=False))
        if leaf and layer.trainable_weights:
            return (
                "Features can be cached only from a frozen backbone, but "
                f"layer {layer.name!r} has trainable weights. Call "
                "kft.freeze(model, 'feature_extraction') first."
            )
        if is_random_image_layer(layer):
            return (
                f"Layer {layer.name!r} augments images at random during "
                "training; cached features would freeze one draw. Remove "
                "the augmentation or train with `fit`."
            )
    return None


def _random_weightless(layer):
    """A layer without weights that draws at random in training (a
    `Dropout`): it holds a seed generator."""
    return (not isinstance(layer, keras.Model) and not layer.weights
            and any(isinstance(value, keras.random.SeedGenerator)
                    for value in vars(layer).values()))


def _split(model):
    """`split_head`, with the random weightless layers right in front of
    the head's first layer with weights (a linear head's `head_dropout`)
    moved into the head model: in the features model they would run in
    inference mode, i.e. be off while the head trains on the cache."""
    inner = wrapped_model(model)
    if inner is not None:
        features_model, head_model = _split(inner)
        return wrapper_features(model, inner, features_model), head_model
    features_model, head_model = split_head(model)
    layers, chain = list(model.layers), head_model.layers[1:]
    first = [id(layer) for layer in layers].index(id(chain[0]))
    start = first
    while start > 1 and _random_weightless(layers[start - 1]):
        try:
            # Only a chain can move: each layer takes the one before.
            if layers[start - 1].input is not layers[start - 2].output:
                break
        except (AttributeError, ValueError):
            break
        start -= 1
    if start == first:
        return features_model, head_model
    feature_output = layers[start].input
    features_model = keras.Model(model.inputs, feature_output,
                                 name=f"{model.name}_features")
    x = inputs = keras.Input(feature_output.shape[1:], name="features")
    for layer in layers[start:first] + chain:
        x = layer(x)
    return features_model, keras.Model(inputs, x, name=f"{model.name}_head")


def _split_for_caching(model):
    """`(features_model, None)`, or `(None, why caching cannot work)`."""
    if isinstance(model, BatchAugmentModel):
        return None, (
            "The model mixes its training batches (`batch_augment`), so its "
            "inputs differ every step and features cannot be cached. Train "
            "it with `fit`, or build it without `batch_augment`."
        )
    from kft.adaptation.dann import DomainAdaptationModel

    if isinstance(model, DomainAdaptationModel):
        # Its step also aligns the two domains' features: a head trained
        # on cached source features alone would drop that term.
        return None, (
            "A DomainAdaptationModel trains on source and target batches "
            "together (its loss aligns their features), so its head cannot "
            "train on cached features. Train it with `fit` on "
            "kft.adaptation.domain_pairs(...), or pass "
            "cache_features=False.")
    try:
        features_model, _ = _split(model)
    except ValueError as error:
        return None, str(error)
    reason = _uncacheable_layer(features_model)
    return (None, reason) if reason else (features_model, None)


def can_cache_features(model) -> tuple[bool, str | None]:
    """Whether `cache_features` can cache `model`'s features, and why not.

    Caching needs a head `split_head` can split off, a frozen feature part
    without random augmentation layers, and a model that does not mix its
    training batches (a `kft.BatchAugmentModel`).

    Returns:
        `(True, None)`, or `(False, reason)` with the reason as a sentence
        (the message `cache_features` raises).

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> kft.feature_cache.can_cache_features(model)[0]
    False
    >>> _ = kft.freeze(model, "feature_extraction")
    >>> kft.feature_cache.can_cache_features(model)
    (True, None)
    """
    _, reason = _split_for_caching(model)
    return reason is None, reason


class _FeatureWriter:
    """Collects feature batches in memory, then in a file past a budget."""

    def __init__(self, memory_budget, directory):
        self.memory_budget, self.directory = memory_budget, directory
        self.in_memory, self.file, self.path = [], None, None
        self.count, self.shape = 0, None

    def add(self, out):
        self.count += len(out)
        self.shape = out.shape[1:]
        if self.file is not None:
            self.file.write(out.tobytes())
            return
        self.in_memory.append(out)
        if self.count * out[0].nbytes > self.memory_budget:
            if self.directory is not None:
                os.makedirs(self.directory, exist_ok=True)
            # A file of its own: caches made in one directory (train and
            # validation) must not write over each other.
            handle, self.path = tempfile.mkstemp(
                suffix=".f32", prefix="kft-features-", dir=self.directory)
            self.file = os.fdopen(handle, "wb")
            for part in self.in_memory:
                self.file.write(part.tobytes())
            self.in_memory = []

    def features(self):
        """All features: a read-only memmap of the file, or one array."""
        if self.file is None:
            return np.concatenate(self.in_memory)
        self.file.close()
        features = np.memmap(self.path, np.float32, "r",
                             shape=(self.count, *self.shape))
        # Views of the memmap keep it alive, so the file goes with the last.
        weakref.finalize(features, _remove_file, self.path)
        return features

    def discard(self):
        """Closes and removes the file of a cache that was not finished."""
        if self.file is not None:
            self.file.close()
            _remove_file(self.path)


def _remove_file(path):
    try:
        os.remove(path)
    except OSError:
        # Already gone, or still mapped where that forbids removal.
        pass


def cache_features(model, data, *, batch_size: int = 32,
                   memory_budget: int = 2**30, directory: str | None = None,
                   verbose: int = 1) -> FeatureCache:
    """Computes the frozen backbone's features of `data` once.

    Runs everything before the head's first layer with weights (see
    `split_head`) in inference mode, batch by batch through one compiled
    predict step; a dropout layer right before that layer (a linear
    head's `head_dropout`) is left to the head, so it stays on in
    `fit_head`. Features are kept in memory until they pass
    `memory_budget` bytes; then they go to a memory-mapped file, so a
    dataset larger than RAM can be cached.

    Features are computed in inference mode: a backbone's own dropout
    layers (EfficientNet has some) are off, as in `predict`. A `fit` of the
    full model would apply them, so there the two differ; for backbones
    without dropout they are the same.

    Under data parallel (`kft.data_parallel`) each batch is split over the
    devices; a batch that does not split evenly (the last one) is padded
    with copies of an image whose features are then dropped, which is
    exact since inference computes each example alone.

    Args:
        model: A model whose backbone is frozen (`kft.freeze(model,
            "feature_extraction")`).
        data: `(x, y)` arrays (a tuple or list), an `x` array, or a
            dataset yielding `(x, y)` batches without augmentation (e.g.
            `kft.data.from_arrays`).
        batch_size: Batch size for arrays. Defaults to `32`.
        memory_budget: Bytes kept in memory before spilling to a file.
            Defaults to `2**30` (1 GiB).
        directory: Where the memory-mapped file goes (a new file of its
            own, `kft-features-*.f32`, deleted once the cache's features
            are garbage-collected). Defaults to `None`: the system's
            temporary directory.
        verbose: `1` shows a progress bar. Defaults to `1`.

    Returns:
        A `FeatureCache`.

    Raises:
        ValueError: a trainable backbone layer, augmentation in the model
            or the dataset, a `batch_augment` model, no data, or a bad
            `batch_size` / `memory_budget` (see `can_cache_features`).

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
    if not isinstance(model, keras.Model):
        fail_argument("model", "a keras.Model", model, TypeError)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    memory_budget = check_int("memory_budget", memory_budget, min_value=1)
    verbose = check_verbose(verbose)
    if directory is not None:
        directory = output_path(directory, "directory")
    features_model, reason = _split_for_caching(model)
    if reason is not None:
        raise ValueError(reason)
    if isinstance(data, (tuple, list)) and len(data) == 2 and (
            data[1] is None):
        data = (np.asarray(data[0]), None)
        check_finite_images(data[0], "data")
    else:
        data = as_pair(data, "data")
    # Every process caches every example: the head then trains on the
    # same arrays everywhere, as in one process.
    data = every_example(data)
    total = num_examples(data)
    if total is None:
        total = getattr(data, "num_examples", None)  # a kft dataset's
    progress = keras.utils.Progbar(total, unit_name="image", verbose=verbose)
    writer, labels = _FeatureWriter(memory_budget, directory), []
    try:
        for x, y in batches(data, batch_size):
            # Under data parallel a batch that does not split is padded.
            out = predict_padded(features_model, x).astype(np.float32,
                                                             copy=False)
            if y is not None:
                labels.append(np.asarray(y))
            writer.add(out)
            progress.add(len(out))
    except BaseException:
        # Ctrl-C or bad data part way: a spilled file (gigabytes on the
        # datasets that spill) would stay in the temporary directory.
        writer.discard()
        raise
    finish(progress, writer.count)  # else the next line runs on from it
    if writer.count == 0:
        raise ValueError("Argument `data` must hold at least one image; it "
                         "yielded no batches.")
    features = writer.features()
    labels = np.concatenate(labels) if labels else None
    if labels is not None and len(labels) != len(features):
        raise ValueError(
            f"Got {len(labels)} labels for {len(features)} images; every "
            "batch must have labels, or none."
        )
    return FeatureCache(features, labels, writer.path)


def fit_head(model, cache: FeatureCache, *,
             validation_data: FeatureCache | None = None,
             batch_size: int = 32, epochs: int = 1, **fit_kwargs):
    """Trains the model's head on cached features with `fit`.

    The head model shares the model's head layers, so the model itself
    ends up trained. It is compiled like the model (the same optimizer
    object, loss, metrics, `run_eagerly`, `jit_compile` and
    `steps_per_execution`), which must therefore be compiled. Under data
    parallel (`kft.data_parallel`) the head trains sharded like the model:
    `batch_size` and the last batch must split over the devices.

    Args:
        model: The compiled model the cache was made from.
        cache: A `FeatureCache` with labels.
        validation_data: A `FeatureCache` with labels, or `None`. Defaults
            to `None`.
        batch_size: Defaults to `32`.
        epochs: Defaults to `1`.
        **fit_kwargs: More `fit` arguments (`callbacks`, `shuffle`,
            `verbose`, `initial_epoch`, `class_weight`, ...): `class_weight`
            is checked as `fine_tune` checks it, `"balanced"` counted from
            the cached labels trained on. Callbacks see the head model as
            `self.model`; its weights are the model's head weights.

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
    # Keras' fit trains nothing at epochs=0 or -1, and took verbose=5.
    epochs = check_int("epochs", epochs, min_value=1)
    if "verbose" in fit_kwargs:
        fit_kwargs["verbose"] = check_verbose(fit_kwargs["verbose"])
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
    num_classes = classifier_classes(model)
    if num_classes is not None:
        # JAX gathers a label past the last class silently (loss 0).
        for name, value in (("cache", cache),
                            ("validation_data", validation_data)):
            if value is not None:
                check_data_labels((value.features, value.labels),
                                  num_classes, name, f"{name}.labels")
        if fit_kwargs.get("class_weight") is not None:
            # As the model's `fit` and `fine_tune` take it ("balanced"
            # counted from the cached labels trained on; Keras' head model
            # took negative weights and classes it lacks, and failed on
            # "balanced").
            fit_kwargs["class_weight"] = checked_class_weight(
                fit_kwargs["class_weight"], cache.features, cache.labels,
                num_classes, fit_kwargs.get("validation_split"))
    # Under data parallel the head trains sharded like the model: every
    # batch, the last included, must split over the devices.
    check_batch_size(batch_size, len(cache.features), data_name="`cache`")
    if validation_data is not None:
        check_batch_size(batch_size, len(validation_data.features),
                         data_name="`validation_data`")
    _, head = _split(model)
    # Its weights carry the model's penalty terms (L2-SP's beta on the
    # head): left out of its validation loss, as the model's.
    without_penalty_in_evaluation(head)
    config = _compat.compile_config(model)
    # `model.optimizer` is already a `LossScaleOptimizer` wherever the
    # user's compile scaled the loss: not wrapped again (or newly, after
    # `auto_scale_loss=False`, which Keras does not record).
    head.compile(optimizer=model.optimizer, loss=config.get("loss"),
                 metrics=config.get("metrics"),
                 loss_weights=config.get("loss_weights"),
                 weighted_metrics=config.get("weighted_metrics"),
                 # The model's, set after compile too (`model.run_eagerly
                 # = True`, as Keras' debugging advice goes).
                 run_eagerly=model.run_eagerly,
                 steps_per_execution=model.steps_per_execution,
                 jit_compile=model.jit_compile and not model.run_eagerly,
                 auto_scale_loss=False)
    validation = (None if validation_data is None
                  else (validation_data.features, validation_data.labels))
    return head.fit(cache.features, cache.labels, batch_size=batch_size,
                    epochs=epochs, validation_data=validation, **fit_kwargs)
