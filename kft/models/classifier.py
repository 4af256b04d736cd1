"""A pretrained backbone with a new classification head."""

import keras

from kft.models import backbones
from kft.ops import cpu_convs
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft.layers import Preprocess
from kft.models.batch_augment import BatchAugmentModel

HEADS = ("linear", "mlp")
POOLINGS = ("avg", "max", "flatten")


def build_classifier(backbone="resnet50", num_classes=None, *,
                     weights="imagenet", input_shape=None, head="linear",
                     dropout=0.0, pooling="avg", hidden_units=512,
                     batch_augment=None, fast_cpu_convs="auto"):
    """Builds raw images -> preprocessing -> backbone -> pooling -> new head.

    The model takes pixels in [0, 255] and returns logits (compile with
    `from_logits=True`). Its layers are named so `kft.get_blocks` finds the
    backbone's blocks and a `"head"` block: the backbone is the layer named
    after its registry entry, head layers start with `head_`.

    Args:
        backbone: Registry name, see `kft.list_backbones()` (case, `_` and
            `-` forgiven: `"ResNet50"`, `"efficientnet_b0"`). Defaults to
            `"resnet50"`.
        num_classes: Number of classes, an integer (Python or numpy) of at
            least 2.
        weights: `"imagenet"`, `None` or a local weights file of the
            backbone (see `kft.create_backbone`). Defaults to `"imagenet"`.
        input_shape: `(height, width, 3)`. Defaults to the backbone's
            default size.
        head: `"linear"` (dropout, then one Dense layer) or `"mlp"` (the
            seeds' head: Dense(hidden_units) -> BatchNorm -> ReLU -> Dropout
            -> Dense). Defaults to `"linear"`.
        dropout: Dropout rate before the last Dense layer, in [0, 1).
            Defaults to `0.0`.
        pooling: `"avg"`, `"max"` or `"flatten"`. Defaults to `"avg"`.
        hidden_units: Width of the MLP head's hidden layer. Defaults to
            `512`.
        batch_augment: `None`, or a layer such as
            `kft.layers.MixUpOrCutMix` that mixes each training batch inside
            the compiled train step (a `kft.BatchAugmentModel` is returned;
            compile it with a soft-label loss, see there). Defaults to
            `None`.
        fast_cpu_convs: `"auto"` (when JAX runs on CPU), `True` or
            `False`: compute the backbone's depthwise convolutions, and
            convolutions on maps smaller than their kernel, as shifted
            slices (`kft.fast_cpu_convs`), several times faster under XLA on
            CPU, same results up to float rounding. Defaults to `"auto"`.

    Returns:
        A functional `keras.Model` named `kft_<backbone>` (the registered
        name).

    Raises:
        ValueError: unknown backbone (suggests close names, lists the known
            ones), `num_classes` below 2, or an unknown `head` / `pooling` /
            bad `dropout`.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=10,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> model.output.shape
    (None, 10)
    """
    spec = backbones.get_backbone(backbone)
    num_classes = check_int("num_classes", num_classes, min_value=2)
    hidden_units = check_int("hidden_units", hidden_units, min_value=1)
    check_choice("head", head, HEADS)
    check_choice("pooling", pooling, POOLINGS)
    dropout = check_number("dropout", dropout, low=0.0, high=1.0,
                           high_open=True)
    if fast_cpu_convs not in ("auto", True, False):
        raise ValueError(
            'Argument `fast_cpu_convs` must be "auto", True or False. '
            f"Received: fast_cpu_convs={fast_cpu_convs!r}"
        )
    if input_shape is None:
        input_shape = (spec.default_size, spec.default_size, 3)
    input_shape = backbones.check_input_shape(input_shape)
    base = backbones.create_backbone(spec.name, weights=weights,
                                     input_shape=input_shape)
    if fast_cpu_convs == "auto":
        import jax

        fast_cpu_convs = jax.default_backend() == "cpu"
    if fast_cpu_convs:
        pretrained = base._kft_pretrained
        base = cpu_convs.fast_cpu_convs(base)
        base._kft_pretrained = pretrained
    inputs = keras.Input(tuple(input_shape), name="image")
    x = Preprocess(spec.preprocess, name="preprocess")(inputs)
    x = base(x)
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="head_pool")(x)
    else:
        x = keras.layers.Flatten(name="head_pool")(x)
    if head == "mlp":
        x = keras.layers.Dense(hidden_units, name="head_fc")(x)
        x = keras.layers.BatchNormalization(name="head_bn")(x)
        x = keras.layers.ReLU(name="head_relu")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="head_dense")(x)
    if batch_augment is not None:
        model = BatchAugmentModel(inputs, outputs, name=f"kft_{spec.name}",
                                  batch_augment=batch_augment)
    else:
        model = keras.Model(inputs, outputs, name=f"kft_{spec.name}")
    # Whether the backbone starts from trained weights; `kft.freeze` warns
    # about frozen BatchNorm statistics of a random initialisation.
    model._kft_pretrained = weights is not None
    return model
