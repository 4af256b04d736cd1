"""AdaBN (Li et al., 2016): BatchNorm statistics re-estimated on target data.

A network's BatchNorm layers store the mean and variance of their inputs on
the training domain; on a shifted domain those no longer centre and scale
the activations. AdaBN replaces them with the target data's, changing
nothing else: no parameter is trained.
"""

import jax
import keras
import numpy as np

from kft import _compat
from kft._validation import check_int
from kft.adaptation._data import image_batches
from kft.models.init_draws import bucketed_draws
from kft.training.freezing import batch_norm_layers


def _model_image_shape(model):
    shape = tuple(model.inputs[0].shape[1:]) if getattr(
        model, "inputs", None) else None
    return shape


def batch_statistics(model, data, *, batch_size=64, name="target_data",
                     layers=None):
    """Per-channel mean and variance of every BatchNorm layer's input on
    `data`, each layer seeing inputs normalised with its upstream layers'
    batch statistics (as in training).

    `layers` (BatchNorm layers of `model`) restricts the measure to them:
    the others normalise with their moving statistics, as a frozen
    BatchNorm layer does in training.

    Returns:
        `(bn_layers, means, variances, num_images)`: the layers of `model`
        (as `kft.training.freezing.batch_norm_layers` lists them), float64
        arrays, one per layer, and the images measured. Pooled exactly over
        all images: per-batch moments combined, not a moving average.
    """
    batch_size = check_int("batch_size", batch_size, min_value=1)
    measure = StatisticsPass(model, layers)
    return (measure.layers,
            *measure(data, batch_size=batch_size, name=name))


class StatisticsPass:
    """The statistics copy of `model` (`_statistics_model`) and its
    compiled pass, kept for repeated measures of the same layers
    (`kft.callbacks.PreciseBatchNorm` measures every epoch): built and
    traced once, each call reads the model's current weights.

    Args:
        model: The model.
        layers: Its BatchNorm layers to measure; `None` for all.
    """

    def __init__(self, model, layers=None):
        only = None if layers is None else {id(layer) for layer in layers}
        # The copy is built from the model's own layers: its nodes on them
        # go when it is built (the copy keeps its own graph), else each
        # copy stayed alive with the model.
        with _compat.graph_nodes_kept(model):
            self._clone, copies = _statistics_model(model, only)
        # The model's own layers, those of its classifier graph (not, say,
        # a domain discriminator's).
        self.layers = [layer for layer in batch_norm_layers(model)
                       if id(layer) in copies]
        if not self.layers:
            raise ValueError(
                f"Model {model.name!r} has no BatchNormalization layer: "
                "there are no statistics to adapt or compare.")
        self._copies = [copies[id(layer)] for layer in self.layers]
        self._image_shape = _model_image_shape(model)
        self._runs = {}

    def __call__(self, data, *, batch_size=64, name="target_data"):
        """`(means, variances, num_images)` of `data` under the model's
        current weights, pooled exactly over all images."""
        clone = self._clone
        for old, new in zip(self.layers, self._copies):
            # Their weights (not statistics) shape what layers below see.
            for source, target in zip(old.weights, new.weights):
                target.assign(source.value)
        run = self._run(clone)
        trainable = [v.value for v in clone.trainable_variables]
        non_trainable = [v.value for v in clone.non_trainable_variables]
        total = 0
        sums = [0.0] * len(self.layers)
        squares = [0.0] * len(self.layers)
        for images in image_batches(data, name, batch_size,
                                    expected_shape=self._image_shape):
            n = len(images)
            # One fetch of every layer's moments per batch, not one per
            # array (each a wait on the device).
            moments = jax.device_get(run(trainable, non_trainable, images))
            for i, (mean, var) in enumerate(moments):
                mean = np.asarray(mean, "float64")
                var = np.asarray(var, "float64")
                # E[x] and E[x^2] of the batch, weighted by its size.
                sums[i] = sums[i] + n * mean
                squares[i] = squares[i] + n * (var + mean * mean)
            total += n
        means = [s / total for s in sums]
        variances = [np.maximum(q / total - m * m, 0.0)
                     for q, m in zip(squares, means)]
        return means, variances, total

    def _run(self, clone):
        # One program per trainable set of the copy's variables (shared
        # with the model, whose set can change between calls): the values
        # are passed in `stateless_call`'s two lists, split by that set.
        key = tuple(v.trainable for v in clone.variables)
        if key not in self._runs:
            positions = [
                (_index(clone.non_trainable_variables, layer.moving_mean),
                 _index(clone.non_trainable_variables,
                        layer.moving_variance))
                for layer in self._copies]

            # The weights are arguments, not constants baked into the
            # program: the same architecture then compiles to the same
            # program, which the persistent compilation cache can reuse
            # across calls.
            @jax.jit
            def run(trainable, non_trainable, images):
                _, updated = clone.stateless_call(
                    trainable, non_trainable, images, training=False)
                return [(updated[m], updated[v]) for m, v in positions]

            self._runs[key] = run
        return self._runs[key]


class _BatchStatistics(keras.layers.BatchNormalization):
    """A BatchNormalization that normalises with its batch's statistics
    whatever `training` says, recording them in its moving statistics
    (momentum 0): AdaBN's pass, with the rest of the model in inference
    mode (augmentation and dropout off)."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=True, mask=mask)


def _statistics_model(model, only=None):
    """`(copy, {id(BatchNorm layer of model): its _BatchStatistics})`.

    The copy is `model`'s inference graph (`kft.deploy.inference_model`: a
    plain functional model without random augmentation, also for an
    `attach`ed model, a `BatchAugmentModel` or a `DomainAdaptationModel`)
    with each BatchNormalization (each whose id is in `only`, if given)
    replaced by a `_BatchStatistics` holding copies of its weights; the
    model itself is not touched.
    """
    from kft.deploy.inference import inference_model

    copies = {}

    def swap(layer):
        if not isinstance(layer, keras.layers.BatchNormalization) or (
                only is not None and id(layer) not in only):
            return layer
        new = _BatchStatistics.from_config(
            {**layer.get_config(), "momentum": 0.0, "trainable": True})
        copies[id(layer)] = (layer, new)
        return new

    with bucketed_draws():  # replaced by the model's weights
        clone = keras.models.clone_model(inference_model(model),
                                         clone_function=swap, recursive=True)
    for old, new in copies.values():
        new.set_weights([np.array(v.value) for v in old.weights])
    return clone, {key: new for key, (_, new) in copies.items()}


def _index(variables, variable):
    for i, v in enumerate(variables):
        if v is variable:
            return i
    raise RuntimeError(f"Variable {variable.path} not found in the clone")


def adapt_batchnorm(model: keras.Model, target_data, *,
                    batch_size: int = 64) -> list[str]:
    """AdaBN: sets every BatchNorm layer's moving statistics to those of
    `target_data`.

    One pass over the target images through a copy of the model whose
    BatchNorm layers normalise with batch statistics (as PyTorch's AdaBN
    recipe with `momentum=None`); each layer's input mean and variance
    are pooled exactly over all images and written into the model's
    `moving_mean` / `moving_variance`. Weights, trainable flags, the
    optimizer and the compiled state are left alone; the next step of a
    compiled model reads the new statistics. Use batches large enough for
    per-batch statistics to be meaningful (>= 16).

    Args:
        model: A built Keras model with BatchNormalization layers (nested
            backbones included).
        target_data: Target images: an array `(n, h, w, c)` in the
            model's pixel range, an `(x, y)` pair (labels unused), or a
            dataset yielding image or `(images, labels)` batches.
        batch_size: Batch size for arrays. Defaults to `64`.

    Returns:
        The names of the adapted layers.

    Raises:
        ValueError: no BatchNorm layer, no images, or images of another
            shape than the model's input.

    Example:
    >>> import kft, numpy as np
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> x = np.random.default_rng(0).uniform(0, 255, (32, 16, 16, 3))
    >>> sorted(kft.adapt_batchnorm(model, x))
    ['block1_bn', 'block2_bn', 'block3_bn', 'stem_bn']
    """
    return [layer.name for layer in set_batch_statistics(
        model, target_data, batch_size=batch_size)]


def set_batch_statistics(model, data, *, batch_size=64, name="target_data",
                         measure=None):
    """Sets the moving statistics of the BatchNorm layers `measure` (a
    `StatisticsPass` of `model`; by default one of all of them) measures
    on `data`; returns the layers set. Also inside a running `fit`."""
    batch_size = check_int("batch_size", batch_size, min_value=1)
    # Inside a running fit: write its step state back first, so the
    # statistics are those of the step's weights and the assignment is
    # not overwritten, then make the next step read the variables again
    # (no retrace: only values change).
    _compat.sync_fit_state(model)
    measure = measure or StatisticsPass(model)
    means, variances, _ = measure(data, batch_size=batch_size, name=name)
    layers = measure.layers
    for layer, mean, var in zip(layers, means, variances):
        layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(var.astype(layer.moving_variance.dtype))
    _compat.reread_fit_state(model)
    return layers
