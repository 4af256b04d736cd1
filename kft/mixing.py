"""MixUp and CutMix as Keras layers that can run inside a compiled step.

The layers mix a batch with a random permutation of itself and return soft
labels. Every random draw comes from the layer's `keras.random.SeedGenerator`,
so the layers are reproducible with `seed=` and, run through
`layer.stateless_call` (or inside `kft.BatchAugmentModel.train_step`), their
seed state is carried as state: a different draw on every compiled step.

All draws and the mixing are `keras.ops`, with no host round trip; the
mixing is one fused elementwise op: `w * images + (1 - w) * partner`, where
the per-pixel weight `w` is `lam` for MixUp, 0 inside the CutMix box and 1
outside it, and 1 for a sample left unmixed.
"""

import keras
from keras import ops

MODES = ("batch", "sample")


class _BatchMix(keras.layers.Layer):
    """Shared mechanics of `MixUp`, `CutMix` and `MixUpOrCutMix`."""

    def __init__(self, *, mixup_alpha, cutmix_alpha, switch_prob, prob,
                 label_smoothing, mode, num_classes, seed, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("mixup_alpha", mixup_alpha),
                            ("cutmix_alpha", cutmix_alpha)):
            if not _is_number(value) or value < 0:
                raise ValueError(
                    f"Argument `{name}` must be a float >= 0. "
                    f"Received: {name}={value!r}"
                )
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError(
                "Arguments `mixup_alpha` and `cutmix_alpha` must not both be "
                "0: one of them must be > 0 to mix. Received: "
                f"mixup_alpha={mixup_alpha!r}, cutmix_alpha={cutmix_alpha!r}"
            )
        for name, value in (("switch_prob", switch_prob), ("prob", prob),
                            ("label_smoothing", label_smoothing)):
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"Argument `{name}` must be a float in [0, 1]. "
                    f"Received: {name}={value!r}"
                )
        if mode not in MODES:
            raise ValueError(
                f"Argument `mode` must be one of {MODES}. "
                f"Received: mode={mode!r}"
            )
        if num_classes is not None and (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, int)
            or num_classes < 2
        ):
            raise ValueError(
                "Argument `num_classes` must be None or an integer >= 2. "
                f"Received: num_classes={num_classes!r}"
            )
        self._mixup_alpha = float(mixup_alpha)
        self._cutmix_alpha = float(cutmix_alpha)
        self._switch_prob = float(switch_prob)
        self.prob = float(prob)
        self.label_smoothing = float(label_smoothing)
        self.mode = mode
        self.num_classes = num_classes
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # No weights to create: lets `stateless_call` run before any call.
        self.built = True

    def call(self, data):
        images, labels, as_dict = _unpack(data)
        images = ops.convert_to_tensor(images)
        labels = ops.convert_to_tensor(labels)
        if len(images.shape) != 4:
            raise ValueError(
                "The images must be a batch of shape (batch, height, width, "
                f"channels). Received: images.shape={images.shape}"
            )
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
        partner = keras.random.shuffle(ops.arange(batch), seed=seed)
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
        partner_images = ops.take(images, partner, axis=0)
        mixed = weight * images + (1 - weight) * partner_images
        lam = lam[:, None]
        targets = lam * targets + (1.0 - lam) * ops.take(targets, partner,
                                                         axis=0)
        return mixed, targets

    def compute_output_spec(self, data):
        images, labels, as_dict = _unpack(data)
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


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_alpha(alpha):
    if not _is_number(alpha) or alpha <= 0:
        raise ValueError(
            f"Argument `alpha` must be a float > 0. Received: alpha={alpha!r}"
        )


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
    mixed with a random permutation of the batch: by CutMix with probability
    `switch_prob`, else by MixUp; otherwise it is left as is. Labels are
    smoothed first, then mixed (timm's order); a sample left unmixed still
    gets smoothed labels.

    `mode="batch"` (the default, as in timm and both papers) draws one
    lambda, one choice and one box per batch, so published `alpha` values
    carry over; `mode="sample"` draws them per sample, which lowers the
    variance between batches at the same cost on device.

    The layer has no training switch: it always mixes. Inside `jax.jit` run
    it with `layer.stateless_call` and carry its non-trainable variables
    (its seed state), or let `kft.build_classifier(..., batch_augment=...)`
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
