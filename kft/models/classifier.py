"""A pretrained backbone with a new classification head."""

from collections.abc import Sequence
from typing import Literal

import keras

from kft._validation import fail_argument
from kft._validation import check_choice
from kft._validation import check_class_names
from kft._validation import check_int
from kft._validation import check_number
from kft.layers import preprocessing
from kft.models import backbones
from kft.models import init_draws
from kft.models.batch_augment import BatchAugmentModel
from kft.models.classifier_model import Classifier
from kft.ops import cpu_convs

HEADS = ("linear", "mlp")
POOLINGS = ("avg", "max", "flatten")

Head = Literal["linear", "mlp"]
Pooling = Literal["avg", "max", "flatten"]


def build_classifier(
        backbone: str = "resnet50", num_classes: int | None = None, *,
        weights: backbones.Weights = "imagenet",
        input_shape: Sequence | None = None, head: Head = "linear",
        dropout: float = 0.0, pooling: Pooling = "avg",
        hidden_units: int = 512,
        batch_augment: keras.layers.Layer | None = None,
        fast_cpu_convs: Literal["auto"] | bool = "auto",
        class_names: Sequence[str] | None = None,
) -> keras.Model:
    """Builds raw images -> preprocessing -> backbone -> pooling -> new head.

    The model takes pixels in [0, 255] and returns logits (compile with
    `from_logits=True`). Its preprocessing is a layer named `"preprocess"`
    built from stock Keras layers (`kft.layers.preprocessing`). `kft.get_blocks` finds the backbone's blocks and a
    `"head"` block: the backbone is the layer created by
    `kft.create_backbone` (its `kft_backbone` attribute names the registry
    entry), the head the layers after it, named `head_*`.

    Args:
        backbone: Registry name, see `kft.list_backbones()` (case, `_` and
            `-` forgiven: `"ResNet50"`, `"efficientnet_b0"`). Defaults to
            `"resnet50"`.
        num_classes: Number of classes, an integer (Python or numpy) of at
            least 2.
        weights: `"imagenet"`, `None` or a local weights file of the
            backbone (see `kft.create_backbone`). Defaults to `"imagenet"`.
        input_shape: `(height, width, 3)`; height and width may be
            `None`. Other channel counts only for a backbone whose
            preprocessing is `"tf"` or `"none"` (e.g. `"simple_cnn"`,
            `weights=None`). Defaults to the backbone's default size.
        head: `"linear"` (dropout, then one Dense layer) or `"mlp"`
            (Dense(hidden_units) -> BatchNorm -> ReLU -> Dropout -> Dense).
            Defaults to `"linear"`.
        dropout: Dropout rate before the last Dense layer, in [0, 1).
            Defaults to `0.0`.
        pooling: `"avg"`, `"max"` or `"flatten"` (needs a known height
            and width). A ConvNeXt pools inside the backbone, before its
            final LayerNorm, as the original model does (no `head_pool`
            layer then). Defaults to `"avg"`.
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
        class_names: The distinct label of each class, in class-index
            order, kept in the model's `kft_metadata` (what `kft.export`
            and `kft.predict` report). `num_classes` may then be left out. Defaults to
            `None`.

    Returns:
        A functional `keras.Model` named `kft_<backbone>` (the registered
        name).

    Raises:
        ValueError: unknown backbone (suggests close names, lists the known
            ones), `num_classes` below 2, an unknown `head` / `pooling` /
            bad `dropout`, `pooling="flatten"` with unknown sizes, or
            repeated `class_names`.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=10,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> model.output.shape
    (None, 10)
    >>> [layer.name for layer in model.layers][:3]
    ['image', 'preprocess', 'simple_cnn']
    """
    spec = backbones.get_backbone(backbone)
    if class_names is not None:
        class_names = list(check_class_names(class_names, num_classes))
        if num_classes is None and len(class_names) < 2:
            fail_argument("class_names", "at least 2 names, one per class "
                          "(a classifier tells 2 classes or more apart)",
                          class_names)
        num_classes = len(class_names) if num_classes is None else num_classes
    num_classes = check_int("num_classes", num_classes, min_value=2)
    hidden_units = check_int("hidden_units", hidden_units, min_value=1)
    check_choice("head", head, HEADS)
    if head != "mlp" and hidden_units != 512:
        # Only the MLP head has a hidden layer: dropping it would ignore
        # the request.
        fail_argument("hidden_units", f'left at its default (512) with '
                      f'head={head!r} (only head="mlp" has a hidden layer)',
                      hidden_units)
    check_choice("pooling", pooling, POOLINGS)
    dropout = check_number("dropout", dropout, low=0.0, high=1.0,
                           high_open=True)
    if fast_cpu_convs not in ("auto", True, False):
        fail_argument("fast_cpu_convs", '"auto", True or False', fast_cpu_convs)
    if input_shape is None:
        input_shape = (spec.default_size, spec.default_size, 3)
    input_shape = backbones.check_input_shape(input_shape)
    if pooling == "flatten" and None in input_shape[:2]:
        # The head's Dense layer needs the flattened feature length.
        fail_argument("pooling", f'"avg" or "max" for an input_shape with '
                      f"unknown sizes ({input_shape})", pooling)
    with init_draws.bucketed_draws():
        # ConvNeXt normalises its pooled features (Keras' `pooling=`,
        # the original model); pooled after its final LayerNorm, they were
        # 0.46 (relative) off at 64 px.
        inner = (pooling if spec.norm_after_pooling
                 and pooling in ("avg", "max") else None)
        base = _backbone(spec, weights, input_shape, fast_cpu_convs, inner)
        inputs = keras.Input(input_shape, name="image")
        x = preprocessing(spec.preprocess, input_shape,
                          name="preprocess")(inputs)
        x = base(x)
        if inner is None:
            x = _pooling(pooling)(x)
        outputs = _head(x, head, hidden_units, dropout, num_classes)
    name = f"kft_{spec.name}"
    if batch_augment is not None:
        model = BatchAugmentModel(inputs, outputs, name=name,
                                  batch_augment=batch_augment)
    else:
        model = Classifier(inputs, outputs, name=name)
    # Whether the backbone starts from trained weights; `kft.freeze` warns
    # about frozen BatchNorm statistics of a random initialisation.
    model._kft_pretrained = weights is not None
    # What inference needs; `kft.export` writes it with the saved model.
    model.kft_metadata = {
        "backbone": spec.name, "input_shape": list(input_shape),
        "preprocessing": spec.preprocess, "num_classes": num_classes,
        "class_names": class_names}
    return model


def _backbone(spec, weights, input_shape, fast_cpu_convs, pooling=None):
    """The marked backbone, its convolutions in CPU form if asked for."""
    base = backbones.create_backbone(spec.name, weights=weights,
                                     input_shape=input_shape,
                                     pooling=pooling)
    if fast_cpu_convs == "auto":
        import jax

        fast_cpu_convs = jax.default_backend() == "cpu"
    if fast_cpu_convs:
        pretrained = base._kft_pretrained
        # The clone shares the backbone's other layers, so it is marked
        # like it (see `Backbone`); the pretrained flag is carried by hand.
        base = cpu_convs.fast_cpu_convs(base)
        base._kft_pretrained = pretrained
    return base


def _pooling(pooling):
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="head_pool")
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="head_pool")
    return keras.layers.Flatten(name="head_pool")


def _head(x, head, hidden_units, dropout, num_classes):
    """Logits from pooled features: the `head_*` layers after pooling."""
    if head == "mlp":
        x = keras.layers.Dense(hidden_units, name="head_fc")(x)
        x = keras.layers.BatchNormalization(name="head_bn")(x)
        x = keras.layers.ReLU(name="head_relu")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 logits under a mixed policy, as Keras advises: 16-bit logits
    # tie and flip classes (bf16: 0.04 off at |logit| ~ 15).
    return keras.layers.Dense(num_classes, name="head_dense",
                              dtype="float32")(x)


def carry_over(model, wrapper):
    """Gives `wrapper`, a model built around `model`, what kft reads from
    `model`: its class names and backbone (`kft_metadata`, for
    `kft.predict` / `kft.export`), whether it was pretrained, and its
    dtype policy (a wrapper built after the global policy was reset would
    compile without `mixed_float16`'s loss scaling). Returns `wrapper`."""
    if getattr(model, "kft_metadata", None) is not None:
        wrapper.kft_metadata = dict(model.kft_metadata)
    if getattr(model, "_kft_pretrained", None) is not None:
        wrapper._kft_pretrained = model._kft_pretrained
    wrapper.dtype_policy = model.dtype_policy
    return wrapper
