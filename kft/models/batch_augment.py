"""A functional classifier whose JAX train step mixes each batch."""

import keras
import numpy as np

from kft._validation import check_labels
from kft._validation import fail_argument
from kft.models.classifier_model import Classifier
# Registers the mixing layers by name, for `batch_augment` configs.
from kft.augmentation import mixing  # noqa: F401

SPARSE_HINT = (
    "With a `batch_augment` layer the targets are soft (batch, classes) "
    "labels: compile with loss=keras.losses.CategoricalCrossentropy("
    "from_logits=True) and metrics=['accuracy'] (or CategoricalAccuracy); "
    "integer labels are one-hot encoded by the model."
)


@keras.saving.register_keras_serializable(package="kft")
class BatchAugmentModel(Classifier):
    """A functional model that mixes every training batch on device.

    Built like a functional model, plus a `batch_augment` layer (e.g.
    `kft.layers.MixUpOrCutMix`). Its JAX `train_step` runs the layer on
    `(images, labels)` before the forward pass, inside the compiled step;
    the layer's seed state is one of the model's non-trainable variables,
    so each step draws anew, a `seed=` makes training reproducible, and
    `evaluate` / `predict` never mix. Its layers are the functional graph's,
    so `kft.get_blocks`, `kft.freeze` and `kft.changing_trainable` work as
    on a plain model.

    Labels may be integers or one-hot: the model one-hot encodes integer
    labels (`num_classes` = its output width) for the loss and metrics in
    training and evaluation. Compile with a soft-label loss,
    `keras.losses.CategoricalCrossentropy(from_logits=True)`, and
    `metrics=["accuracy"]` (resolved to categorical accuracy, an argmax
    match); put label smoothing on the layer, not the loss. Sparse losses
    and metrics raise in `compile`. A compiled model saved with
    `model.save` loads compiled, its optimizer state restored (the layer's
    seed state restarts, as for Keras' own random layers).

    Args:
        *args: `inputs` and `outputs`, as for `keras.Model`.
        batch_augment: A `keras.layers.Layer` mapping `(images, labels)` to
            `(images, soft labels)`, or its serialized config.
        **kwargs: `name`, `trainable`, as for `keras.Model`; the metadata
            of `kft.Classifier`.

    Example:
    >>> import keras, kft
    >>> model = kft.build_classifier(
    ...     "simple_cnn", num_classes=3, weights=None, input_shape=(16, 16, 3),
    ...     batch_augment=kft.layers.MixUp(0.2, seed=0))
    >>> model.compile("adam",
    ...               keras.losses.CategoricalCrossentropy(from_logits=True),
    ...               metrics=["accuracy"])
    >>> isinstance(model, kft.BatchAugmentModel)
    True
    """

    def __init__(self, *args,
                 batch_augment: keras.layers.Layer | dict | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if batch_augment is None:
            # What `keras.models.clone_model` passes: it builds a functional
            # subclass from its inputs and outputs alone.
            raise TypeError(
                "A BatchAugmentModel needs its `batch_augment` layer (e.g. "
                "kft.layers.MixUpOrCutMix(...)); keras.models.clone_model "
                "cannot pass it. Clone it with clone = "
                "kft.BatchAugmentModel.from_config(model.get_config()) "
                "(then clone.set_weights(model.get_weights()) for the "
                "weights).")
        if isinstance(batch_augment, dict):
            batch_augment = keras.saving.deserialize_keras_object(
                batch_augment)
        if not isinstance(batch_augment, keras.layers.Layer):
            fail_argument("batch_augment", "a Keras layer taking (images, labels), "
                  "e.g. kft.layers.MixUpOrCutMix(...)", batch_augment,
                  TypeError)
        if len(self.outputs) != 1 or len(self.inputs) != 1:
            raise ValueError(
                "A BatchAugmentModel must have one image input and one "
                f"logits output. Received: {len(self.inputs)} inputs, "
                f"{len(self.outputs)} outputs"
            )
        self.num_classes = self.outputs[0].shape[-1]
        wanted = getattr(batch_augment, "num_classes", None)
        if wanted is not None and wanted != self.num_classes:
            raise ValueError(
                f"The `batch_augment` layer has num_classes={wanted} but the "
                f"model outputs {self.num_classes} classes."
            )
        self.batch_augment = batch_augment

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        for name, value in (("loss", loss),
                            ("metrics", kwargs.get("metrics"))):
            if _mentions_sparse(value):
                raise ValueError(
                    f"Argument `{name}` must take soft labels. {SPARSE_HINT} "
                    f"Received: {name}={value!r}"
                )
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compile_from_config(self, config):
        # Keras skips `compile` on load when a model overrides it, leaving
        # a loaded model that `fit` fails on; ours only adds checks, so the
        # saved arguments are replayed as Keras does for a plain model.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # Inside the compiled step an integer label >= num_classes one-hot
    # encodes to a row of zeros: a finite loss on nothing (Keras' sparse
    # losses do not check either). Host arrays are checked before each
    # entry point runs (datasets: `kft.fine_tune` and `kft.evaluate` check
    # them).
    def _check_labels(self, labels, name):
        if isinstance(labels, (list, tuple)) or (
                hasattr(labels, "__array__") and hasattr(labels, "shape")):
            labels = np.asarray(labels)  # JAX arrays too (concrete here)
        if isinstance(labels, np.ndarray) and labels.ndim and (
                labels.ndim == 1 or labels.shape[-1:] == (1,)):
            check_labels(labels.reshape(-1), self.num_classes, name=name)

    def fit(self, x=None, y=None, *args, **kwargs):
        validation = kwargs.get("validation_data")
        if not (isinstance(validation, (tuple, list))
                and len(validation) >= 2):
            validation = (None, None)
        self._check_labels(y, "y")
        self._check_labels(validation[1], "validation_data[1]")
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_labels(y, "y")
        return super().evaluate(x, y, *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        self._check_labels(y, "y")
        return super().train_on_batch(x, y, *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        self._check_labels(y, "y")
        return super().test_on_batch(x, y, *args, **kwargs)

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        key, images = _image_input(x)
        variables = self.non_trainable_variables
        with keras.StatelessScope(
            state_mapping=list(zip(variables, non_trainable))
        ) as scope:
            images, y = self.batch_augment((images, self._as_targets(y)))
        non_trainable = [scope.get_current_value(v) for v in variables]
        x = images if key is None else {key: images}
        return super().train_step(
            (trainable, non_trainable, optimizer_vars, metrics_vars),
            (x, y, sample_weight),
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        return super().compute_loss(x, self._as_targets(y), y_pred,
                                    sample_weight, training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, self._as_targets(y), y_pred,
                                       sample_weight)

    def _as_targets(self, y):
        """Integer labels -> float one-hot; (batch, classes) unchanged."""
        if y is None:
            raise ValueError(
                "A BatchAugmentModel trains and evaluates on (images, labels) "
                "batches. Received a batch without labels."
            )
        if len(y.shape) == 1 or y.shape[-1] == 1:
            y = keras.ops.reshape(keras.ops.cast(y, "int32"), (-1,))
            return keras.ops.one_hot(y, self.num_classes, dtype="float32")
        # Static under JAX; otherwise the loss fails on a broadcast.
        if y.shape[-1] != self.num_classes:
            raise ValueError(
                f"One-hot labels must have one column per class of the "
                f"model ({self.num_classes}). Received: labels.shape="
                f"{y.shape}"
            )
        return y

    def get_config(self):
        return {**super().get_config(),
                "batch_augment": keras.saving.serialize_keras_object(
                    self.batch_augment)}


def _image_input(x):
    """(input name or None, images) of a batch's single image input."""
    if isinstance(x, dict):
        (key, images), = x.items()
        return key, images
    return None, x


# Keras' losses and metrics that take integer labels.
_SPARSE_CLASSES = (
    keras.losses.SparseCategoricalCrossentropy,
    keras.metrics.SparseCategoricalAccuracy,
    keras.metrics.SparseCategoricalCrossentropy,
    keras.metrics.SparseTopKCategoricalAccuracy,
)
_SPARSE_FUNCTIONS = (
    keras.losses.sparse_categorical_crossentropy,
    keras.metrics.sparse_categorical_accuracy,
    keras.metrics.sparse_categorical_crossentropy,
    keras.metrics.sparse_top_k_categorical_accuracy,
)


def _mentions_sparse(value):
    """Whether a `compile` loss or metrics value takes integer labels."""
    if isinstance(value, str):
        # Keras resolves these identifiers to the sparse losses and metrics.
        return "sparse" in value.lower()
    if isinstance(value, dict):
        return any(_mentions_sparse(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_mentions_sparse(v) for v in value)
    if isinstance(value, _SPARSE_CLASSES):
        return True
    return callable(value) and any(value is f for f in _SPARSE_FUNCTIONS)
