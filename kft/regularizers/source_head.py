"""A classifier that keeps the source task's head beside its new head."""

import keras
from keras import ops

from kft._evaluation_step import without_penalty_in_evaluation
from kft._validation import check_int
from kft._validation import fail_argument
from kft.models.backbones import backbone_name
from kft.models.batch_augment import BatchAugmentModel
from kft.models.blocks import head_layers
from kft.models.classifier import carry_over
from kft.models.classifier_model import Classifier


@keras.saving.register_keras_serializable(package="kft")
class KeptSourceHead(keras.layers.Layer):
    """Holds a source head (a linear layer, frozen) on the pooled features.

    In the graph it takes `[backbone input, features]` and returns the
    features unchanged; `logits(features)` gives the source task's logits.
    Its weights are created non-trainable, so no freezing strategy trains
    them. A bound `kft.LwF` makes it add the distillation loss in
    training (`add_loss`, inside the compiled step).

    Args:
        num_source_classes: Width of the source head, >= 2.
    """

    def __init__(self, num_source_classes: int, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_source_classes = check_int(
            "num_source_classes", num_source_classes, min_value=2)
        self.distillation = None

    def build(self, input_shape):
        _, features_shape = input_shape
        units = (features_shape[-1], self.num_source_classes)
        self.kernel = self.add_weight(shape=units, name="kernel",
                                      trainable=False)
        self.bias = self.add_weight(shape=units[1:], name="bias",
                                    initializer="zeros", trainable=False)

    def call(self, inputs, training=None):
        images, features = inputs
        if training and self.distillation is not None:
            self.add_loss(self.distillation(images, features))
        return features

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(inputs[1].shape, dtype=self.compute_dtype)

    def logits(self, features):
        features = ops.cast(features, "float32")
        return ops.matmul(features, self.kernel) + self.bias

    def get_config(self):
        return {**super().get_config(),
                "num_source_classes": self.num_source_classes}


@keras.saving.register_keras_serializable(package="kft")
class SourceLogits(keras.layers.Layer):
    """Applies a `KeptSourceHead`'s source head (for `source_classifier`)."""

    def __init__(self, kept: KeptSourceHead, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not isinstance(kept, KeptSourceHead):
            fail_argument("kept", "a KeptSourceHead (the layer "
                          "kft.with_source_head adds)", kept, TypeError)
        self.kept = kept

    def build(self, input_shape):
        # A loaded `source_classifier` model holds a new, unbuilt copy.
        if not self.kept.built:
            self.kept.build((None, input_shape))

    def call(self, features):
        return self.kept.logits(features)

    def get_config(self):
        return {**super().get_config(),
                "kept": keras.saving.serialize_keras_object(self.kept)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["kept"] = keras.saving.deserialize_keras_object(
            config["kept"])
        return cls(**config)


def with_source_head(model: keras.Model, source_head) -> keras.Model:
    """The classifier `model` with a source head kept beside its new head.

    The returned model shares `model`'s layers and weights and outputs the
    same target logits, and carries its `kft_metadata` (class names for
    `kft.export`); it also holds the source head (a copy, frozen) on
    the pooled backbone features, so `source_classifier(model)` measures
    the source task after fine-tuning, and `kft.LwF` can distil it.

    Args:
        model: A `kft.build_classifier` model (a chain: input, preprocess,
            backbone, pooling, head), a `kft.BatchAugmentModel` too.
        source_head: The source task's last linear layer: a `Dense`, or
            the source classifier whose `"head"` block ends with one.

    Returns:
        A model of `model`'s class (`keras.Model` or
        `kft.BatchAugmentModel`).

    Raises:
        ValueError: a model without a kft backbone and head, a head of a
            width that does not fit the features.

    Example:
    >>> import kft
    >>> source = kft.build_classifier("simple_cnn", 5, weights=None,
    ...                               input_shape=(16, 16, 3))
    >>> target = kft.build_classifier("simple_cnn", 4, weights=None,
    ...                               input_shape=(16, 16, 3))
    >>> model = kft.with_source_head(target, source)
    >>> kft.source_classifier(model).output.shape
    (None, 5)
    """
    dense = _source_dense(source_head)
    layers = list(model.layers)
    found = [i for i, layer in enumerate(layers)
             if backbone_name(layer) is not None]
    heads = head_layers(model)
    if not found or not heads or found[0] + 2 > len(layers):
        raise ValueError(
            "Argument `model` must be a kft classifier (a kft backbone, "
            "pooling, then `head_*` layers, as kft.build_classifier builds "
            f"it). Received layers: {[layer.name for layer in layers]}")
    b = found[0]
    pooling = layers[b + 1]
    for previous, layer in zip(layers, layers[1:]):
        # A nested model's `input` / `output` are its own graph's.
        nested = isinstance(layer, keras.Model) or isinstance(
            previous, keras.Model)
        if not nested and layer.input is not previous.output:
            raise ValueError(
                f"Argument `model` must be a chain of layers; layer "
                f"{layer.name!r} does not take {previous.name!r}'s output.")
    if pooling.weights or len(pooling.output.shape) != 2:
        raise ValueError(
            "The layer after the backbone must be a weightless pooling to "
            f"(batch, features). Received: {pooling.name!r}")
    features_dim = pooling.output.shape[-1]
    if dense.kernel.shape[0] != features_dim:
        raise ValueError(
            f"The source head takes {dense.kernel.shape[0]} features but "
            f"the model's pooling gives {features_dim}.")
    kept = KeptSourceHead(dense.kernel.shape[1], name="kept_source_head")
    inputs = keras.Input(model.input.shape[1:], name=model.input.name)
    x = inputs
    for i, layer in enumerate(layers[1:], start=1):
        if i == b:
            backbone_input = x
        x = layer(x)
        if i == b + 1:
            x = kept([backbone_input, x])
    kept.kernel.assign(ops.convert_to_numpy(dense.kernel))
    kept.bias.assign(ops.convert_to_numpy(dense.bias))
    if isinstance(model, BatchAugmentModel):
        new = BatchAugmentModel(inputs, x, name=model.name,
                                batch_augment=model.batch_augment)
    else:
        # Its config keeps the class names through `model.save`.
        new = Classifier(inputs, x, name=model.name)
    return carry_over(model, new)


def kept_source_head(model):
    """The model's `KeptSourceHead`; raises if it has none."""
    kept = [layer for layer in model.layers
            if isinstance(layer, KeptSourceHead)]
    if not kept:
        raise ValueError(
            "The model keeps no source head: build it with "
            "kft.with_source_head(model, source_head).")
    return kept[0]


def source_classifier(model: keras.Model) -> keras.Model:
    """The source task's classifier inside a `with_source_head` model:
    same input, backbone and weights, the kept source head's logits;
    compiled for `evaluate` (integer labels, accuracy).

    Example:
    >>> import kft, numpy as np
    >>> base = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                             input_shape=(16, 16, 3))
    >>> model = kft.with_source_head(base, base.get_layer("head_dense"))
    >>> source = kft.source_classifier(model)
    >>> source.output.shape
    (None, 3)
    >>> loss, accuracy = source.evaluate(np.zeros((2, 16, 16, 3)),
    ...                                  np.array([0, 1]),
    ...                                  verbose=0)
    """
    kept = kept_source_head(model)
    source = keras.Model(model.inputs, SourceLogits(kept)(kept.output),
                         name=f"{model.name}_source")
    # Its weights carry the fine-tuned model's penalty terms: left out of
    # its evaluation, as the model's.
    without_penalty_in_evaluation(source)
    # What it is for: the old task's scores after fine-tuning.
    source.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    return source


def _source_dense(source_head):
    if isinstance(source_head, keras.Model):
        heads = head_layers(source_head)
        source_head = heads[-1] if heads else None
    if not isinstance(source_head, keras.layers.Dense):
        fail_argument("source_head", "a Dense layer or a kft classifier "
                      "whose head ends with one", source_head, TypeError)
    # The kept head is one linear layer with a bias: logits.
    problem = (
        "is not built (it holds no weights yet)" if not source_head.built
        else "has no bias (use_bias=False)" if source_head.bias is None
        else f"has activation {source_head.activation.__name__!r}"
        if source_head.activation is not keras.activations.linear else None)
    if problem:
        fail_argument("source_head", "a built Dense layer with a bias and "
                      "no activation (the source task's logits)",
                      f"{source_head.name!r}, which {problem}")
    return source_head
