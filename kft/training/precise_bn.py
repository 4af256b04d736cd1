"""Exact BatchNorm statistics while a run's moving averages are young."""

import math
from collections.abc import Iterator
from collections.abc import Sequence

import keras
import numpy as np

from kft._validation import check_int
from kft._validation import fail_argument
from kft.training.freezing import batch_norm_layers

# The share of its starting statistics a moving average may still hold
# once it counts as settled.
_SETTLED = 0.05


def settling_steps(momentum):
    """Steps after which a BatchNorm moving average of `momentum` holds at
    most 5% of the statistics it started from: 299 at Keras' default 0.99.

    Example:
    >>> settling_steps(0.99), settling_steps(0.9), settling_steps(0.0)
    (299, 29, 1)
    """
    if momentum <= 0:
        return 1
    if momentum >= 1:
        return math.inf
    return math.ceil(math.log(_SETTLED) / math.log(momentum))


class PreciseBatchNorm(keras.callbacks.Callback):
    """Gives the BatchNorm layers that train the exact statistics of the
    training images, before each validation and at each epoch's end, while
    their moving averages are young.

    A BatchNormalization layer that trains normalises with each batch's
    statistics and keeps a moving average of them, which inference
    (validation, `predict`, evaluation, exports) uses. At Keras' momentum
    of 0.99 the average still holds 79% of the statistics it started from
    after 24 steps and 5% after 299; those of a backbone built with
    `weights=None` are mean 0 and variance 1. A short run that trains
    BatchNorm thus validates, keeps and saves a model whose statistics do
    not belong to its weights (validation accuracy 0.21-0.33 in an
    18-step run from scratch, 0.67-0.71 with exact statistics). While the
    layers have trained fewer steps than `settling_steps` of their
    momentum (counted from `first_epoch`; at a momentum of 1, which never
    forgets, always), this sets the moving statistics of every BatchNorm
    layer that trains to those of `data` under the current weights
    (PreciseBN, Wu & Johnson 2021; the pass of `kft.adapt_batchnorm`: one
    forward pass over the images in stored order, without augmentation,
    frozen BatchNorm layers on their own statistics; the statistics copy
    is built and compiled once per set of layers that train). Training is
    unchanged (it normalises with batch statistics); only what inference
    sees is. Whether an epoch is
    recalibrated depends only on its number, so a resumed run
    recalibrates where the uninterrupted one did. `kft.fine_tune` adds it
    to phase 2 with `bn="train"`.

    Put it before callbacks that save or keep weights at an epoch's end
    (`ModelCheckpoint`): they then keep the exact statistics.

    Args:
        data: The training images: an `(x, y)` pair or an array of
            images, or a dataset of `(images, labels)` batches that can be
            read again (a `kft.data` dataset is read in stored order); not
            a one-shot iterator.
        first_epoch: The epoch in which the BatchNorm layers began to
            train (`initial_epoch` of the run's first `fit`), or the
            epochs in which more of them began (the epochs of a
            `GradualUnfreezing` `Milestones` schedule): the count restarts
            at the latest one reached, so a block unfrozen late is
            recalibrated too. Defaults to `0`.
        batch_size: Batch size for arrays. Defaults to `64`.

    Example:
    >>> import keras, numpy as np, kft
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> kft.freeze(model, "full", bn="train")
    ['stem', 'block1', 'block2', 'block3', 'head']
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3))
    >>> y = np.arange(8) % 3
    >>> precise = kft.callbacks.PreciseBatchNorm((x, y))
    >>> _ = model.fit(x, y, epochs=2, verbose=0, callbacks=[precise])
    >>> precise.recalibrated_epochs
    [0, 1]
    """

    def __init__(self, data, *, first_epoch: int | Sequence[int] = 0,
                 batch_size: int = 64):
        super().__init__()
        if isinstance(data, Iterator):
            raise ValueError(
                "Argument `data` must be images that can be read again "
                "(arrays or a dataset); a one-shot iterator is used up by "
                f"the first pass. Received: {type(data).__name__}")
        self.data = data
        # A NumPy array of epochs as a list of them (it is no Sequence).
        starts = (list(first_epoch)
                  if isinstance(first_epoch, (Sequence, np.ndarray))
                  else [first_epoch])
        if not starts:
            fail_argument("first_epoch", "an epoch >= 0 or a non-empty "
                          "sequence of them", first_epoch)
        self.first_epoch = first_epoch
        self._starts = sorted(check_int("first_epoch", epoch, min_value=0)
                              for epoch in starts)
        self.batch_size = check_int("batch_size", batch_size, min_value=1)
        self.recalibrated_epochs = []
        self._measure = None  # the pass of the last trainable set
        self._epoch = None
        self._batches = 0
        self._stale = False
        self._in_fit = False

    def on_train_begin(self, logs=None):
        self._in_fit, self._stale = True, False

    def on_train_end(self, logs=None):
        # The pass holds a copy of the model's BatchNorm layers.
        self._in_fit, self._measure = False, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._batches = epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches, self._stale = batch + 1, True

    def on_test_begin(self, logs=None):
        # Validation inside `fit` (its `evaluate` gets fit's callbacks).
        if self._in_fit:
            self._recalibrate_if_young()

    def on_epoch_end(self, epoch, logs=None):
        self._recalibrate_if_young()

    def _recalibrate_if_young(self):
        if not self._stale or self._epoch is None:
            return
        model = self.model  # Keras' property writes the step state back
        layers = [layer for layer in batch_norm_layers(model)
                  if layer.trainable]
        if not layers:
            return
        per_epoch = (self.params or {}).get("steps") or self._batches
        start = max([e for e in self._starts if e <= self._epoch],
                    default=self._epoch)
        trained = (self._epoch - start + 1) * per_epoch
        if trained >= max(settling_steps(layer.momentum)
                          for layer in layers):
            return
        from kft.adaptation.batchnorm import StatisticsPass
        from kft.adaptation.batchnorm import set_batch_statistics

        # Built and compiled once per set of layers, not every epoch.
        if self._measure is None or self._measure.layers != layers:
            self._measure = StatisticsPass(model, layers)
        set_batch_statistics(model, self.data, batch_size=self.batch_size,
                             name="data", measure=self._measure)
        self._stale = False
        self.recalibrated_epochs.append(self._epoch)
