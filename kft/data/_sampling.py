"""Balanced sampling: each epoch's examples, every class equally likely."""

import numpy as np

from kft._validation import mixed_seed


def pass_seed(seed, number):
    """The shuffle seed of pass `number` over a dataset seeded `seed`
    (`kft._validation.mixed_seed`: with `seed + number`, seed `s + 1` read
    the orders of seed `s` one pass later).

    >>> pass_seed(0, 1) != pass_seed(1, 0)
    True
    """
    return mixed_seed(seed, number)


def balanced_indices(labels, num_examples, seed, epoch):
    """`num_examples` example indices drawn with replacement so that every
    class present in `labels` is equally likely; the same for the same
    `seed` and `epoch`.

    >>> balanced_indices(np.array([0, 0, 0, 1]), 4, seed=0, epoch=0).shape
    (4,)
    """
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True,
                                        return_counts=True)
    del classes  # only the classes present are drawn
    rng = np.random.default_rng([seed, epoch])
    which = rng.integers(0, len(counts), num_examples)
    offsets = np.floor(rng.random(num_examples) * counts[which]).astype(
        np.int64)
    return order[starts[which] + offsets]


class Resampled:
    """Element `i` is element `indices[i]` of `source` (picklable)."""

    def __init__(self, source):
        self.source = source

    def __call__(self, index):
        return self.source[int(index)]
