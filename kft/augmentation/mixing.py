"""MixUp and CutMix as Keras layers that can run inside a compiled step.

The layers mix each sample with its partner and return soft labels. As in
timm (`x.flip(0)`), the partner of sample `i` of a batch of `B` is sample
`B - 1 - i`: every sample of an even batch is mixed with another one, and in
an odd batch the middle sample is its own partner, so it keeps its image and
(smoothed) label. timm's `Mixup` requires an even batch; these layers accept
any size.

Every random draw comes from the layer's `keras.random.SeedGenerator`, so
the layers are reproducible with `seed=`. Called eagerly, a layer advances
its seed state on every call. Inside a traced JAX function (`jax.jit`,
`jax.grad`, `jax.vmap`) the state can only advance if it is carried in and
out: run the layer with `layer.stateless_call`, or let
`kft.BatchAugmentModel.train_step` do it; a direct call there raises
instead of drawing the same mix on every compiled call.

All draws and the mixing are `keras.ops`, with no host round trip; the
mixing is one fused elementwise op: `w * images + (1 - w) * partner`, where
the per-pixel weight `w` is `lam` for MixUp, 0 inside the CutMix box and 1
outside it, and 1 for a sample left unmixed.
"""

import jax
import keras
from keras import ops
# Not exported by Keras: tells whether variables are read from and written
# to a `keras.StatelessScope` (as in `stateless_call` and the trainers).
from keras.src.backend.common.stateless_scope import in_stateless_scope

from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_labels
from kft._validation import check_number

MODES = ("batch", "sample")

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


class _BatchMix(keras.layers.Layer):
    """Shared mechanics of `MixUp`, `CutMix` and `MixUpOrCutMix`."""

    def __init__(self, *, mixup_alpha, cutmix_alpha, switch_prob, prob,
                 label_smoothing, mode, num_classes, seed, **kwargs):
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
        # `SeedGenerator` takes a Python int only.
        self.seed = None if seed is None else check_int("seed", seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        # No weights to create: lets `stateless_call` run before any call.
        self.built = True

    def call(self, data):
        images, labels, as_dict = _unpack(data)
        images = ops.convert_to_tensor(images)
        labels = ops.convert_to_tensor(labels)
        # Before any draw: a draw would assign a tracer to the seed state.
        if _is_traced(images, labels) and not in_stateless_scope():
            raise RuntimeError(
                TRACED_CALL_HINT.format(name=type(self).__name__))
        _check_batch(images.shape, labels.shape)
        images = ops.cast(images, self.compute_dtype)
        targets = self._targets(labels)
        images, targets = self._mix(images, targets)
        if as_dict:
            return {"images": images, "labels": targets}
        return images, targets

    def _targets(self, labels):
        """Float (batch, classes) targets, label smoothing applied."""
        if len(labels.shape) == 1 or labels.shape[-1] == 1:
            if self.num_classes is None:
                raise ValueError(
                    "Integer class labels need `num_classes`: construct the "
                    "layer with num_classes=..., or pass one-hot labels. "
                    f"Received: labels.shape={labels.shape}, num_classes=None"
                )
            # Out-of-range labels one-hot to zero rows (NaN after mixing
            # with smoothing off); values are only known outside a trace.
            if not _is_traced(labels):
                check_labels(ops.convert_to_numpy(labels), self.num_classes,
                             name="labels")
            labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
            labels = ops.one_hot(labels, self.num_classes, dtype="float32")
        elif (self.num_classes is not None
              and labels.shape[-1] != self.num_classes):
            raise ValueError(
                f"One-hot labels must have num_classes={self.num_classes} "
                f"columns. Received: labels.shape={labels.shape}"
            )
        labels = ops.cast(labels, "float32")
        if self.label_smoothing:
            classes = labels.shape[-1]
            labels = (labels * (1.0 - self.label_smoothing)
                      + self.label_smoothing / classes)
        return labels

    def _mix(self, images, targets):
        seed = self.seed_generator
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        draws = batch if self.mode == "sample" else 1
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
        use_cutmix = ops.logical_and(use_cutmix, apply)
        box, box_lam = _cutmix_box(lam, height, width, seed)
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
        classes = self.num_classes
        if len(labels.shape) > 1 and labels.shape[-1] != 1:
            classes = labels.shape[-1]
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


def _is_traced(*tensors):
    """Whether JAX is tracing: under `jit`, or with traced inputs (`grad`)."""
    # Under `jit` every new array is a tracer, even without traced inputs.
    probe = ops.zeros(())
    return any(isinstance(t, jax.core.Tracer) for t in (probe, *tensors))


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


def _check_alpha(alpha):
    check_number("alpha", alpha, low=0.0, low_open=True)


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


@keras.saving.register_keras_serializable(package="kft")
class MixUpOrCutMix(_BatchMix):
    """MixUp or CutMix on each batch, with timm's `Mixup` semantics.

    With probability `prob` a batch (or, in `"sample"` mode, a sample) is
    mixed with the batch in reverse order, as timm does (sample `i` with
    sample `batch - 1 - i`; in an odd batch the middle sample is its own
    partner and stays unmixed): by CutMix with probability `switch_prob`,
    else by MixUp; otherwise it is left as is. Labels are smoothed first,
    then mixed (timm's order); a sample left unmixed still gets smoothed
    labels.

    `mode="batch"` (the default, as in timm and both papers) draws one
    lambda, one choice and one box per batch, so published `alpha` values
    carry over; `mode="sample"` draws them per sample, which lowers the
    variance between batches at the same cost on device.

    The layer has no training switch: it always mixes. Called directly
    inside `jax.jit` (or another JAX transform) it raises, since its seed
    state could not advance: run it with `layer.stateless_call` and carry
    its non-trainable variables (its seed state) in and out, as in the
    second example, or let `kft.build_classifier(..., batch_augment=...)`
    do it in the train step.

    Args:
        mixup_alpha: Beta(alpha, alpha) parameter of MixUp; `0` disables
            MixUp. Defaults to `0.8`.
        cutmix_alpha: Beta(alpha, alpha) parameter of CutMix; `0` disables
            CutMix. Defaults to `1.0`.
        switch_prob: Probability of CutMix when both are enabled. Defaults
            to `0.5`.
        prob: Probability of mixing a batch (or sample). Defaults to `1.0`.
        label_smoothing: Label smoothing epsilon. Defaults to `0.1`.
        mode: `"batch"` or `"sample"`. Defaults to `"batch"`.
        num_classes: Needed for integer labels. Defaults to `None`.
        seed: Seed of the layer's `SeedGenerator`. Defaults to `None`.

    Call arguments:
        data: `(images, labels)` or `{"images": ..., "labels": ...}`;
            images `(batch, height, width, channels)`, labels integer
            `(batch,)` or one-hot `(batch, classes)`. Returns the same
            structure with float `(batch, classes)` labels.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.layers.MixUpOrCutMix(num_classes=3, seed=0)
    >>> batch = (np.zeros((4, 8, 8, 3)), np.array([0, 1, 2, 0]))
    >>> images, labels = layer(batch)
    >>> labels.shape
    (4, 3)

    Under `jax.jit`, with the seed state passed in and out:
    >>> import jax
    >>> @jax.jit
    ... def mix(state, batch):
    ...     return layer.stateless_call([], state, batch)
    >>> state = [v.value for v in layer.non_trainable_variables]
    >>> (_, first), state = mix(state, batch)
    >>> (_, second), state = mix(state, batch)
    >>> bool((first != second).any())  # a new draw on every call
    True

    References:
        - [Zhang et al., mixup](https://arxiv.org/abs/1710.09412)
        - [Yun et al., CutMix](https://arxiv.org/abs/1905.04899)
    """

    def __init__(self, mixup_alpha=0.8, cutmix_alpha=1.0, *, switch_prob=0.5,
                 prob=1.0, label_smoothing=0.1, mode="batch",
                 num_classes=None, seed=None, **kwargs):
        super().__init__(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                         switch_prob=switch_prob, prob=prob,
                         label_smoothing=label_smoothing, mode=mode,
                         num_classes=num_classes, seed=seed, **kwargs)

    def get_config(self):
        return {
            **super().get_config(),
            "mixup_alpha": self._mixup_alpha,
            "cutmix_alpha": self._cutmix_alpha,
            "switch_prob": self._switch_prob,
            **self._common_config(),
        }


@keras.saving.register_keras_serializable(package="kft")
class MixUp(_BatchMix):
    """MixUp: `lam * x_i + (1 - lam) * x_j` with `lam ~ Beta(alpha, alpha)`.

    Same call and state handling as `MixUpOrCutMix`, with MixUp only.

    Args:
        alpha: Beta(alpha, alpha) parameter, > 0. Defaults to `0.2`.
        prob: Probability of mixing a batch (or sample). Defaults to `1.0`.
        label_smoothing: Label smoothing epsilon. Defaults to `0.0`.
        mode: `"batch"` or `"sample"`. Defaults to `"batch"`.
        num_classes: Needed for integer labels. Defaults to `None`.
        seed: Seed of the layer's `SeedGenerator`. Defaults to `None`.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.layers.MixUp(0.2, num_classes=2, seed=0)
    >>> _, labels = layer((np.zeros((2, 8, 8, 3)), np.array([0, 1])))
    >>> np.asarray(labels).sum(axis=1)
    array([1., 1.], dtype=float32)
    """

    def __init__(self, alpha=0.2, *, prob=1.0, label_smoothing=0.0,
                 mode="batch", num_classes=None, seed=None, **kwargs):
        _check_alpha(alpha)
        super().__init__(mixup_alpha=alpha, cutmix_alpha=0.0, switch_prob=0.0,
                         prob=prob, label_smoothing=label_smoothing, mode=mode,
                         num_classes=num_classes, seed=seed, **kwargs)

    def get_config(self):
        return {**super().get_config(), "alpha": self._mixup_alpha,
                **self._common_config()}


@keras.saving.register_keras_serializable(package="kft")
class CutMix(_BatchMix):
    """CutMix: a box of a partner image pasted in, labels mixed by area.

    The box follows timm (`int(side * sqrt(1 - lam))` around a uniform
    centre, clipped), and the label weight is the area-corrected
    `lam = 1 - box area / image area`, so labels match the pixels.

    Args:
        alpha: Beta(alpha, alpha) parameter, > 0. Defaults to `1.0`.
        prob: Probability of mixing a batch (or sample). Defaults to `1.0`.
        label_smoothing: Label smoothing epsilon. Defaults to `0.0`.
        mode: `"batch"` or `"sample"`. Defaults to `"batch"`.
        num_classes: Needed for integer labels. Defaults to `None`.
        seed: Seed of the layer's `SeedGenerator`. Defaults to `None`.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.layers.CutMix(num_classes=2, seed=0)
    >>> batch = layer({"images": np.zeros((2, 8, 8, 3)),
    ...                "labels": np.array([0, 1])})
    >>> batch["labels"].shape
    (2, 2)
    """

    def __init__(self, alpha=1.0, *, prob=1.0, label_smoothing=0.0,
                 mode="batch", num_classes=None, seed=None, **kwargs):
        _check_alpha(alpha)
        super().__init__(mixup_alpha=0.0, cutmix_alpha=alpha, switch_prob=1.0,
                         prob=prob, label_smoothing=label_smoothing, mode=mode,
                         num_classes=num_classes, seed=seed, **kwargs)

    def get_config(self):
        return {**super().get_config(), "alpha": self._cutmix_alpha,
                **self._common_config()}
