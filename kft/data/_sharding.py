"""Each process' part of every global batch (several JAX processes).

With `count` processes a dataset's `batch_size` is the global batch:
process `index` loads the `index`-th of `count` equal slices of each
global batch of the (shuffled) pass. The processes' local batches, put
together in process order (as `jax.make_array_from_process_local_data`
does), are exactly the global batches one process would train on: the
same run on 1 or N processes sees the same batches. A last global batch
of `r` examples keeps `r - r % count` of them (each process must load
the same number); the `r % count` left out change every pass when the
dataset shuffles.
"""

import numpy as np


def local_batch_size(batch_size, count, name="batch_size"):
    """Examples per process of a global batch of `batch_size` (the
    argument `name`, for the message).

    >>> local_batch_size(32, 4)
    8
    """
    if batch_size % count:
        raise ValueError(
            f"Argument `{name}` (the global batch) must be divisible by "
            f"the {count} processes that share it. Received: "
            f"{name}={batch_size}")
    return batch_size // count


def shard_sizes(num_examples, batch_size, count, drop_remainder):
    """`(full global batches, examples per process in the last partial
    batch, examples left out per pass)`.

    >>> shard_sizes(10, 4, 2, False), shard_sizes(11, 4, 2, False)
    ((2, 1, 0), (2, 1, 1))
    """
    full, rest = divmod(num_examples, batch_size)
    if drop_remainder:
        return full, 0, rest
    return full, rest // count, rest % count


def shard_positions(num_examples, batch_size, index, count, drop_remainder):
    """Positions in a pass of the examples process `index` loads.

    >>> shard_positions(10, 4, 1, 2, False).tolist()
    [2, 3, 6, 7, 9]
    """
    local = local_batch_size(batch_size, count)
    full, last, _ = shard_sizes(num_examples, batch_size, count,
                                drop_remainder)
    starts = np.arange(full) * batch_size + index * local
    positions = (starts[:, None] + np.arange(local)).ravel()
    tail = full * batch_size + index * last + np.arange(last)
    return np.concatenate([positions, tail]).astype(np.int64)
