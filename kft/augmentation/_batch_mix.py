"""What `MixUp`, `CutMix` and `MixUpOrCutMix` share: draws and mixing.

`BatchMix` is their base layer: argument checks, label targets, the random
draws (whether to mix, MixUp or CutMix, lambda, the CutMix box) and the
mixing itself. Every draw comes from the layer's
`keras.random.SeedGenerator` and every step is `keras.ops`, with no host
round trip; the mixing is one fused elementwise op,
`w * images + (1 - w) * partner`, where the per-pixel weight `w` is `lam`
for MixUp, 0 inside the CutMix box and 1 outside it, and 1 for a sample
left unmixed. The partner of sample `i` of a batch of `B` is sample
`B - 1 - i`, as in timm.
"""

from typing import Literal
from typing import get_args

import keras
from keras import ops
# Not exported by Keras: tells whether variables are read from and written
# to a `keras.StatelessScope` (as in `stateless_call` and the trainers).

from kft import _compat
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_labels
from kft._validation import check_number
from kft._validation import check_seed

Mode = Literal["batch", "sample"]

MODES = get_args(Mode)

TRACED_CALL_HINT = """\
A {name} layer called directly inside a traced JAX function (jax.jit, \
jax.grad, jax.vmap, ...) would bake its seed state into the trace: every \
call would draw the same mix, and the layer would keep a leaked tracer as \
its state. Carry the seed state through the function instead:

    @jax.jit
    def mix(state, images, labels):
        (images, labels), state = layer.stateless_call(
            [], state, (images, labels))
        return images, labels, state

    state = [v.value for v in layer.non_trainable_variables]
    images, labels, state = mix(state, images, labels)  # new draw per call

To go on eagerly from there, write the state back: `for v, s in \
zip(layer.non_trainable_variables, state): v.assign(s)`. Or let the model \
mix each training batch: kft.build_classifier(..., batch_augment=layer)."""


class BatchMix(keras.layers.Layer):
    """Shared mechanics of `MixUp`, `CutMix` and `MixUpOrCutMix`.

    Not registered for serialization: only its subclasses are saved.
    """

    def __init__(self, *, mixup_alpha: float, cutmix_alpha: float,
                 switch_prob: float, prob: float, label_smoothing: float,
                 mode: Mode, num_classes: int | None, seed: int | None,
                 **kwargs):
        super().__init__(**kwargs)
        mixup_alpha = check_number("mixup_alpha", mixup_alpha, low=0.0)
        cutmix_alpha = check_number("cutmix_alpha", cutmix_alpha, low=0.0)
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError(
                "Arguments `mixup_alpha` and `cutmix_alpha` must not both be "
                "0: one of them must be > 0 to mix. Received: "
                f"mixup_alpha={mixup_alpha!r}, cutmix_alpha={cutmix_alpha!r}"
            )
        self._mixup_alpha = mixup_alpha
        self._cutmix_alpha = cutmix_alpha
        self._switch_prob = check_number("switch_prob", switch_prob,
                                         low=0.0, high=1.0)
        self.prob = check_number("prob", prob, low=0.0, high=1.0)
        self.label_smoothing = check_number("label_smoothing",
                                            label_smoothing, low=0.0,
                                            high=1.0)
        self.mode = check_choice("mode", mode, MODES)
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, min_value=2)
        self.num_classes = num_classes
        # `SeedGenerator` takes a Python int in [0, 2**32) only.
        self.seed = None if seed is None else check_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        # No weights to create: lets `stateless_call` run before any call.
        self.built = True

    def call(self, data):
        images, labels, as_dict = _unpack(data)
        images = ops.convert_to_tensor(images)
        labels = ops.convert_to_tensor(labels)
        # Before any draw: a draw would assign a tracer to the seed state.
        if _compat.is_traced(images, labels) and not _compat.in_stateless_scope():
            raise RuntimeError(
                TRACED_CALL_HINT.format(name=type(self).__name__))
        _check_batch(images.shape, labels.shape)
        images = ops.cast(images, self.compute_dtype)
        targets = self._targets(labels)
        images, targets = self._mix(images, targets)
        if as_dict:
            return {"images": images, "labels": targets}
        return images, targets

    def _classes(self, labels_shape):
        """The targets' class count for labels of `labels_shape`: integer
        labels need `num_classes`, one-hot rows must match it."""
        if len(labels_shape) == 1 or labels_shape[-1] == 1:
            if self.num_classes is None:
                raise ValueError(
                    "Integer class labels need `num_classes`: construct the "
                    "layer with num_classes=..., or pass one-hot labels. "
                    f"Received: labels.shape={labels_shape}, num_classes=None"
                )
            return self.num_classes
        width = labels_shape[-1]  # None in a symbolic call: not known
        if (self.num_classes is not None and width is not None
                and width != self.num_classes):
            raise ValueError(
                f"One-hot labels must have num_classes={self.num_classes} "
                f"columns. Received: labels.shape={labels_shape}"
            )
        return self.num_classes if width is None else width

    def _targets(self, labels):
        """Float (batch, classes) targets, label smoothing applied."""
        classes = self._classes(labels.shape)
        if len(labels.shape) == 1 or labels.shape[-1] == 1:
            # Out-of-range labels one-hot to zero rows (NaN after mixing
            # with smoothing off); values are only known outside a trace.
            if not _compat.is_traced(labels):
                check_labels(ops.convert_to_numpy(labels), classes,
                             name="labels")
            labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
            labels = ops.one_hot(labels, classes, dtype="float32")
        labels = ops.cast(labels, "float32")
        if self.label_smoothing:
            labels = (labels * (1.0 - self.label_smoothing)
                      + self.label_smoothing / classes)
        return labels

    def _draw(self, draws):
        """Per draw: whether it mixes, whether by CutMix, and lambda.

        The draw order (apply, switch, CutMix beta, MixUp beta) is part of
        what `seed=` reproduces; an unmixed draw gets `lam = 1`.
        """
        seed = self.seed_generator
        apply = keras.random.uniform((draws,), seed=seed) < self.prob
        if self._mixup_alpha > 0 and self._cutmix_alpha > 0:
            use_cutmix = (keras.random.uniform((draws,), seed=seed)
                          < self._switch_prob)
            lam = ops.where(
                use_cutmix,
                _beta(draws, self._cutmix_alpha, seed),
                _beta(draws, self._mixup_alpha, seed),
            )
        elif self._mixup_alpha > 0:
            use_cutmix = ops.zeros((draws,), "bool")
            lam = _beta(draws, self._mixup_alpha, seed)
        else:
            use_cutmix = ops.ones((draws,), "bool")
            lam = _beta(draws, self._cutmix_alpha, seed)
        lam = ops.where(apply, lam, 1.0)
        return lam, ops.logical_and(use_cutmix, apply)

    def _mix(self, images, targets):
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        lam, use_cutmix = self._draw(batch if self.mode == "sample" else 1)
        box, box_lam = _cutmix_box(lam, height, width, self.seed_generator)
        lam = ops.where(use_cutmix, box_lam, lam)
        weight = ops.where(use_cutmix[:, None, None],
                           1.0 - ops.cast(box, "float32"), lam[:, None, None])
        weight = ops.cast(weight[..., None], images.dtype)
        # timm's pairing: sample i with sample batch - 1 - i.
        mixed = weight * images + (1 - weight) * ops.flip(images, axis=0)
        lam = lam[:, None]
        targets = lam * targets + (1.0 - lam) * ops.flip(targets, axis=0)
        return mixed, targets

    def compute_output_spec(self, data):
        images, labels, as_dict = _unpack(data)
        _check_batch(images.shape, labels.shape)
        classes = self._classes(labels.shape)
        images = keras.KerasTensor(images.shape, self.compute_dtype)
        targets = keras.KerasTensor((images.shape[0], classes), "float32")
        if as_dict:
            return {"images": images, "labels": targets}
        return images, targets

    def _common_config(self):
        return {
            "prob": self.prob,
            "label_smoothing": self.label_smoothing,
            "mode": self.mode,
            "num_classes": self.num_classes,
            "seed": self.seed,
        }


def _check_batch(images_shape, labels_shape):
    """Image batch of rank 4, one label (row) per image, where shapes are
    static (always under JAX, traced or not)."""
    if len(images_shape) != 4:
        raise ValueError(
            "The images must be a batch of shape (batch, height, width, "
            f"channels). Received: images.shape={images_shape}"
        )
    if len(labels_shape) not in (1, 2):
        raise ValueError(
            "The labels must be integer class labels of shape (batch,) or "
            "(batch, 1), or one-hot rows of shape (batch, classes). "
            f"Received: labels.shape={labels_shape}"
        )
    images, labels = images_shape[0], labels_shape[0]
    if images is not None and labels is not None and images != labels:
        raise ValueError(
            f"The batch has {images} images but {labels} labels: each image "
            "needs one label (or one-hot row). Received: "
            f"images.shape={images_shape}, labels.shape={labels_shape}"
        )


def check_alpha(alpha):
    """Checks the `alpha` of `MixUp` and `CutMix`: a number > 0."""
    return check_number("alpha", alpha, low=0.0, low_open=True)


def _beta(n, alpha, seed):
    return keras.random.beta((n,), alpha, alpha, dtype="float32", seed=seed)


def _cutmix_box(lam, height, width, seed):
    """timm's `rand_bbox` and area-corrected lambda, vectorised over draws.

    The box has sides `int(side * sqrt(1 - lam))` around a uniform centre,
    clipped to the image; the returned lambda is `1 - clipped area / image
    area`, the fraction of the image that is really kept.
    """
    n = lam.shape[0]
    ratio = ops.sqrt(1.0 - lam)
    cut_h = ops.cast(ops.floor(height * ratio), "int32")
    cut_w = ops.cast(ops.floor(width * ratio), "int32")
    cy = keras.random.randint((n,), 0, height, seed=seed)
    cx = keras.random.randint((n,), 0, width, seed=seed)
    top = ops.clip(cy - cut_h // 2, 0, height)
    bottom = ops.clip(cy + cut_h // 2, 0, height)
    left = ops.clip(cx - cut_w // 2, 0, width)
    right = ops.clip(cx + cut_w // 2, 0, width)
    rows = ops.arange(height)[None, :]
    cols = ops.arange(width)[None, :]
    in_rows = ops.logical_and(rows >= top[:, None], rows < bottom[:, None])
    in_cols = ops.logical_and(cols >= left[:, None], cols < right[:, None])
    box = ops.logical_and(in_rows[:, :, None], in_cols[:, None, :])
    area = ops.cast((bottom - top) * (right - left), "float32")
    return box, 1.0 - area / float(height * width)


def _unpack(data):
    if isinstance(data, dict):
        if set(data) != {"images", "labels"}:
            raise ValueError(
                "A dict batch must have exactly the keys ['images', "
                f"'labels']. Received keys: {sorted(data)}"
            )
        return data["images"], data["labels"], True
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1], False
    length = (f" of length {len(data)}"
              if isinstance(data, (tuple, list)) else "")
    raise TypeError(
        "The layer takes `(images, labels)` or `{'images': ..., 'labels': "
        f"...}}`. Received: {type(data).__name__}{length}"
    )
