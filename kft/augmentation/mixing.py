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

This module holds the three public layers; their shared draws and mixing
are in `kft.augmentation._batch_mix`.
"""

import keras

from kft.augmentation._batch_mix import MODES
from kft.augmentation._batch_mix import BatchMix
from kft.augmentation._batch_mix import Mode
from kft.augmentation._batch_mix import check_alpha

__all__ = ["MODES", "CutMix", "MixUp", "MixUpOrCutMix"]


@keras.saving.register_keras_serializable(package="kft")
class MixUpOrCutMix(BatchMix):
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

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 *, switch_prob: float = 0.5, prob: float = 1.0,
                 label_smoothing: float = 0.1, mode: Mode = "batch",
                 num_classes: int | None = None, seed: int | None = None,
                 **kwargs):
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
class MixUp(BatchMix):
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

    def __init__(self, alpha: float = 0.2, *, prob: float = 1.0,
                 label_smoothing: float = 0.0, mode: Mode = "batch",
                 num_classes: int | None = None, seed: int | None = None,
                 **kwargs):
        check_alpha(alpha)
        super().__init__(mixup_alpha=alpha, cutmix_alpha=0.0, switch_prob=0.0,
                         prob=prob, label_smoothing=label_smoothing, mode=mode,
                         num_classes=num_classes, seed=seed, **kwargs)

    def get_config(self):
        return {**super().get_config(), "alpha": self._mixup_alpha,
                **self._common_config()}


@keras.saving.register_keras_serializable(package="kft")
class CutMix(BatchMix):
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

    def __init__(self, alpha: float = 1.0, *, prob: float = 1.0,
                 label_smoothing: float = 0.0, mode: Mode = "batch",
                 num_classes: int | None = None, seed: int | None = None,
                 **kwargs):
        check_alpha(alpha)
        super().__init__(mixup_alpha=0.0, cutmix_alpha=alpha, switch_prob=1.0,
                         prob=prob, label_smoothing=label_smoothing, mode=mode,
                         num_classes=num_classes, seed=seed, **kwargs)

    def get_config(self):
        return {**super().get_config(), "alpha": self._cutmix_alpha,
                **self._common_config()}
