"""`ImageDataset`, the dataset every `kft.data` loader returns.

Also the warning about skipped files (`SkippedFilesWarning`) that the
loaders and the dataset raise.
"""

import atexit
import copy
import functools
import numbers
import threading
import warnings
import weakref
from typing import Literal
from typing import get_args

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence

import grain
import keras
import numpy as np

from kft import _compat
from kft._validation import check_bool
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import check_seed
from kft._validation import fail_argument
from kft._validation import user_stacklevel
from kft.data._host_augment import HostAugmenter
from kft.data._host_augment import has_effect
from kft.data._images import SkippedFile
from kft.data import _sharding
from kft.data._sampling import Resampled
from kft.data._sampling import balanced_indices
from kft.data._sampling import pass_seed

# A `DataAdapter` given as `x` is used by `fit` as it is: Keras then knows
# the steps per epoch, and does not warn that `shuffle=True` is ignored
# (this dataset shuffles itself). Keras' grain adapter reports no length,
# so every first epoch ends in "Your input ran out of data".
DataAdapter = _compat.data_adapter_class()

LabelMode = Literal["int", "categorical"]
AugmentOn = Literal["host", "model"]
Sampling = Literal["all", "balanced"]
LABEL_MODES = get_args(LabelMode)
AUGMENT_ON = get_args(AugmentOn)
SAMPLINGS = get_args(Sampling)


class SkippedFilesWarning(UserWarning):
    """Warns that a loader left files out; see `dataset.skipped`."""


def warn_skipped(skipped, total, where):
    """Reports skipped files: count, first names and reasons."""
    if not skipped:
        return
    shown = "\n".join(f"  {s.path}: {s.reason}" for s in skipped[:10])
    more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    warnings.warn(
        _text(f"Skipped {len(skipped)} of {total} image files in {where}:\n"
              f"{shown}{more}\nThe full list is in `dataset.skipped` (and "
              "in run.json's `skipped_files` of a `kft train` run)."),
        SkippedFilesWarning,
        stacklevel=3,
    )


def _text(message):
    """`message` with file names of another encoding escaped (`\\udce9`):
    their lone surrogates failed wherever the warning was written as
    UTF-8 (a log file, pytest-xdist's channel)."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _collate(elements):
    """Stacks the examples of a batch (files that failed to load are not
    among them: grain drops the `None` a loader returns before batching,
    or `_Substituted` replaced them)."""
    return (np.stack([image for image, _ in elements]),
            np.asarray([label for _, label in elements]))


class _PassCounter:
    """Numbers the passes of a dataset and of the views that share it."""

    def __init__(self):
        self._next = 0
        self._said = False
        self._lock = threading.Lock()

    def take(self):
        with self._lock:
            number, self._next = self._next, self._next + 1
        return number

    def begun(self):
        """Passes numbered so far: the next pass's number."""
        with self._lock:
            return self._next

    def continue_at(self, number):
        with self._lock:
            self._next = number

    def first_word(self):
        """True once: a warning about every pass is given at the first."""
        with self._lock:
            first, self._said = not self._said, True
        return first


class _Substituted:
    """Element `i` of `source`, or where its file fails to decode (grain
    would drop it, shortening its batch) the next one that decodes, in
    pass order: the training reads (`ImageDataset.for_fit`) keep every
    batch's size, so every JAX process and device its share, and every
    pass its `len(dataset)` steps (picklable)."""

    def __init__(self, source):
        self.source = source

    def __call__(self, index):
        n = len(self.source)
        for step in range(n):
            element = self.source[(int(index) + step) % n]
            if element is not None:
                return element
        raise ValueError(
            "No image of this pass could be decoded; the files are listed "
            "in `dataset.skipped`.")


class _Pass(grain.DatasetIterator):
    """One pass over an `ImageDataset`, numbered and begun at its first
    batch."""

    def __init__(self, dataset):
        super().__init__()
        self._dataset = dataset
        self._batches = None
        self._plan = None
        self._position = 0

    def __next__(self):
        if self._batches is None:
            # Keras' first `fit`/`evaluate` of a model reads one batch for
            # its shapes: that read takes no pass number, so a model's
            # epochs read the same passes whether or not anything built
            # its compiled loss before (an `evaluate`, `kft.lr_find`).
            self._plan = self._dataset._plan()
            self._batches = self._dataset._start_pass(
                peek=_compat.read_by_symbolic_build())
        try:
            batch = next(self._batches)
        except StopIteration:
            self._check(None)
            raise
        self._check(len(batch[1]))
        self._position += 1
        return batch

    def _check(self, size):
        """Refuses a batch (`size` examples, `None` for the pass' end)
        other than planned under several devices or processes: files that
        failed while read (`check="header"`) shortened an evaluation
        pass, and each device and process must get its share of every
        batch (JAX raised `IndivisibleError`, or processes went apart)."""
        if self._plan is None:
            return
        length, full, last = self._plan
        planned = (None if self._position >= length else
                   last if self._position == length - 1 else full)
        if size == planned:
            return
        skipped = self._dataset.skipped
        raise ValueError(
            "Files of this dataset failed to decode while read by several "
            "devices or processes, which each need their share of every "
            f"batch: batch {self._position + 1} of {length} holds "
            f"{size or 0} examples, not the {planned or 0} planned (the "
            f"last file skipped: {skipped[-1].path if skipped else 'none'}; "
            f"`dataset.skipped` lists all {len(skipped)}). Build the dataset "
            "with check=\"full\" to leave bad files out before training.")

    def get_state(self):
        return {} if self._batches is None else self._batches.get_state()

    def set_state(self, state):
        raise NotImplementedError(
            "An ImageDataset pass cannot be restored mid-way; a resumed "
            "fit starts a new pass.")


# Passes whose prefetch thread may still run. A script that stops reading
# a pass (`next(iter(data))`, an error in `fit`) and ends left the thread
# running JAX (host augmentation) while Python shut down: the process
# aborted ("terminate called without an active exception", exit 134).
# They are closed, their threads joined, before the interpreter finalizes.
_PREFETCHING = weakref.WeakSet()


def _close_prefetching():
    for iterator in list(_PREFETCHING):
        try:
            iterator.close()
            # grain closes it again from `__del__` while the interpreter
            # finalizes, when its module globals are gone (a printed
            # AttributeError): once is enough.
            iterator.close = _closed
        except Exception:  # noqa: BLE001 - exiting: close what can be
            pass


def _closed():
    pass


atexit.register(_close_prefetching)


class ImageDataset(grain.IterDataset, DataAdapter):
    """Batches of `(images, labels)` for `model.fit`, with class metadata.

    A `grain.IterDataset`, so `model.fit(dataset)` consumes it directly.
    It is also its own Keras data adapter: `fit`, `evaluate` and `predict`
    know `len(dataset)` steps per pass (progress bars show `3/29`, not
    `3/Unknown`). `fit`'s `shuffle`, `class_weight` and `sample_weight`
    do not apply to it: the dataset shuffles itself when built with
    `shuffle=True`, and its batches carry no sample weights unless made
    with `with_class_weight` (which a kft model's `fit` calls for a
    `class_weight` given; it refuses `sample_weight`).

    Each pass (epoch) reshuffles with a seed mixed from `seed` and `n`
    (`kft.data._sampling.pass_seed`), `n` counting the passes read so far
    (a pass counts from its first batch, and the batch Keras reads for the
    shapes on a model's first `fit` or `evaluate` counts as none: the
    orders are the same on one device and under `kft.data_parallel`,
    whatever ran on the model before). A process that resumes a run counts
    from 0 again, in other orders than the uninterrupted run's, unless
    `kft.callbacks.BackupAndRestore(..., data=dataset)` continues the
    count. With `sampling="balanced"` each pass instead draws
    `num_examples` examples with replacement, every class present equally
    likely (a class, then an example of it), seeded by `seed` and the
    epoch: rare classes are seen as often as common ones, some examples of
    common classes not at all in a pass. `class_counts` stays the stored
    counts.

    With several JAX processes (`kft.distributed`) `batch_size` is the
    global batch and each process yields its slice of every global batch
    (`shard`, see `kft.data._sharding`): the processes together train on
    the batches one process would (host augmentation aside: each process
    draws its own transforms for its slice, so the draws differ from one
    process's). `len(dataset)` is the number of global
    batches, the same in every process. Images are float32
    pixels in [0, 255], `(batch, height, width, 3)`; labels are int32
    class indices (`label_mode="int"`) or one-hot float32 rows.
    Loaders build it; you rarely construct one yourself.

    Attributes:
        class_names: Class names, index `i` is label `i`.
        numbered_classes: Whether `class_names` are `"0"`, `"1"`, ...
            made up by the loader (`from_arrays` without `class_names`):
            evaluating a model then names the classes as the model does.
        class_counts: `{class name: number of examples}`, without the
            files found bad so far.
        skipped: Tuple of `kft.data.SkippedFile` left out by the loader
            (bad files found while scanning or, with
            `check="header"`, while training).
        paths: Tuple of the files read, in unshuffled order, or `None`
            for data not read from files.
        num_examples: Number of examples per pass, without the files found
            bad so far.
        batch_size: Examples per batch.
        augmentation: The Keras augmentation layer, or `None`.
        augment_on: `"host"` (applied in this pipeline) or `"model"`
            (left to the model, see `kft.augmentation.attach`).
        augments: Whether this pipeline augments the batches (on a CPU
            device): `augment_on="host"` with a preset other than
            `"none"`.
        sampling: `"all"` (each example once per pass) or `"balanced"`.
        class_weight: `{class index: weight}` when batches carry sample
            weights (see `with_class_weight`), else `None`.

    Example:
    >>> import numpy as np, kft
    >>> ds = kft.data.from_arrays(np.zeros((10, 8, 8, 1)),
    ...                           np.arange(10) % 2, batch_size=4)
    >>> len(ds), ds.num_batches, [x.shape for x, _ in ds]
    (3, 3, [(4, 8, 8, 3), (4, 8, 8, 3), (2, 8, 8, 3)])
    >>> ds.augments, kft.data.from_arrays(
    ...     np.zeros((2, 8, 8, 3)), [0, 1], augmentation="light").augments
    (False, True)
    """

    def __init__(self, source: grain.MapDataset, *,
                 class_names: Sequence[str],
                 class_counts: Mapping[str, int] | Callable[[], Mapping],
                 batch_size: int, shuffle: bool, seed: int,
                 num_workers: int, label_mode: LabelMode = "int",
                 augmentation: keras.Model | None = None,
                 augment_on: AugmentOn = "host",
                 drop_remainder: bool = False,
                 skipped: Sequence[SkippedFile] = (),
                 paths: Sequence[str] | None = None,
                 labels: Sequence[int] | Callable[[], Sequence[int]]
                 | None = None,
                 sampling: Sampling = "all",
                 shard="auto", numbered_classes: bool = False):
        super().__init__()
        self.numbered_classes = bool(numbered_classes)
        if shard != "auto":
            from kft.distributed.processes import data_shard

            shard = data_shard(shard)
        self._shard = shard
        check_choice("label_mode", label_mode, LABEL_MODES)
        check_choice("sampling", sampling, SAMPLINGS)
        if sampling == "balanced" and labels is None:
            raise ValueError(
                "Argument `labels` (each example's class) is required for "
                "sampling='balanced'. Received: labels=None")
        self.sampling = sampling
        self._example_labels = labels
        self.class_weight = None
        check_choice("augment_on", augment_on, AUGMENT_ON)
        self._batch_size = check_int("batch_size", batch_size, min_value=1)
        self._source = source
        self.class_names = list(class_names)
        self._class_counts = class_counts
        self._bad_labels = []
        self.shuffle = check_bool("shuffle", shuffle)
        # Not `seed`: `grain.IterDataset` has a `seed()` method.
        self._shuffle_seed = check_seed(seed)
        self.num_workers = check_int("num_workers", num_workers, min_value=0)
        self.label_mode = label_mode
        self.augmentation = augmentation
        self.augment_on = augment_on
        self.drop_remainder = drop_remainder
        self._skipped = list(skipped)
        self.paths = None if paths is None else tuple(paths)
        self._passes = _PassCounter()
        self._lock = threading.Lock()
        self._fills_short_passes = False
        self._feeds_devices = False
        self._augmenter = None
        # "none" is an `Identity` layer: nothing to run on the host.
        if augment_on == "host" and has_effect(augmentation):
            self._augmenter = HostAugmenter(augmentation)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def augments(self) -> bool:
        """Whether the dataset augments its batches itself, on the host.

        `True` when built with `augment_on="host"` and an augmentation
        that changes images (not the `"none"` preset); `False` means the
        batches are the decoded images as they are, so features computed
        from them can be cached.
        """
        return self._augmenter is not None

    @property
    def class_counts(self) -> dict[str, int]:
        if callable(self._class_counts):
            self._class_counts = self._class_counts()
        counts = dict(self._class_counts)
        with self._lock:
            for label in self._bad_labels:
                counts[self.class_names[label]] -= 1
        return counts

    @property
    def skipped(self) -> tuple[SkippedFile, ...]:
        return tuple(self._skipped)

    @property
    def num_examples(self) -> int:
        return len(self._source) - len(self._bad_labels)

    def __len__(self) -> int:
        """Batches per pass, fixed when the dataset is made: the steps of
        an epoch of a kft model's `fit`, which keeps its batches whole
        when files fail to decode while read (`check="header"`,
        `for_fit`). Such a file leaves evaluation reads one example
        shorter: `num_batches`, the steps Keras runs over them, counts it
        out from the pass after (in one process).
        """
        return self._batches_of(len(self._source))

    def _batches_of(self, examples):
        index, count = self.shard
        if count > 1:
            full, last, _ = self._shard_sizes(count)
            return full + (1 if last else 0)
        full, rest = divmod(examples, self.batch_size)
        return full + (1 if rest and not self.drop_remainder else 0)

    def _examples_read(self):
        """Examples a single process's pass yields: those not known to
        fail, unless failed ones are replaced (`for_fit`)."""
        return (len(self._source) if self._fills_short_passes
                else self.num_examples)

    def _plan(self):
        """`(batches, examples per batch, in the last)` of a pass in this
        process read by Keras' steps (`get_jax_iterator`), or `None` with
        one device in one process or for another read."""
        from kft.distributed.data_parallel import batch_shards

        _, count = self.shard
        if not self._feeds_devices or count == 1 and batch_shards() == 1:
            return None
        full = _sharding.local_batch_size(self.batch_size, count)
        return self.num_batches, full, self.partial_batch_size or full

    @property
    def shard(self) -> tuple[int, int]:
        """`(index, count)`: which slice of each global batch this
        process loads; `(0, 1)` in a single process."""
        from kft.distributed.processes import data_shard

        return data_shard(self._shard)

    def _shard_sizes(self, count):
        _sharding.local_batch_size(self.batch_size, count)
        return _sharding.shard_sizes(len(self._source), self.batch_size,
                                     count, self.drop_remainder)

    def with_shard(self, shard) -> "ImageDataset":
        """This dataset loading slice `shard` of each global batch.

        `shard` is `"auto"` (the JAX process; the default of every
        loader), `None` (everything) or `(index, count)`.

        >>> import numpy as np, kft
        >>> ds = kft.data.from_arrays(np.arange(10.0).reshape(10, 1, 1, 1),
        ...                           np.zeros(10, int), batch_size=4,
        ...                           shuffle=False)
        >>> [x[..., 0].ravel().tolist() for x, _ in ds.with_shard((1, 2))]
        [[2.0, 3.0], [6.0, 7.0], [9.0]]
        """
        from kft.distributed.processes import data_shard

        view = self._view()
        view._shard = shard if shard == "auto" else data_shard(shard)
        return view

    def _record_failure(self, path, label, reason):
        """Reports a file that failed while read; called once per file."""
        with self._lock:
            self._skipped.append(SkippedFile(str(path), reason))
            self._bad_labels.append(int(label))
        warnings.warn(
            _text(f"Skipped {path} while reading it: {reason}. It is left "
                  "out of later passes too; the full list is in "
                  "`dataset.skipped`."),
            SkippedFilesWarning,
            stacklevel=2,
        )

    # Keras `DataAdapter` interface: `fit(dataset)` uses the dataset itself.

    @property
    def num_batches(self) -> int:
        return self._batches_of(self._examples_read())

    @property
    def has_partial_batch(self) -> bool:
        if self.shard[1] > 1:
            return self.partial_batch_size is not None
        return not self.drop_remainder and \
            self._examples_read() % self.batch_size != 0

    @property
    def partial_batch_size(self) -> int | None:
        if self.shard[1] > 1:
            return self._shard_sizes(self.shard[1])[1] or None
        if not self.has_partial_batch:
            return None
        return self._examples_read() % self.batch_size

    def get_numpy_iterator(self):
        return self

    def get_jax_iterator(self):
        # Under a data-parallel distribution a batch that does not split
        # over the devices would fail deep in JAX (IndivisibleError).
        from kft.distributed.data_parallel import check_data_batches

        check_data_batches(self, None, name="dataset")
        # Keras' steps feed the devices: a pass shortened by a file that
        # failed while read is refused there (`_Pass._check`); kft's own
        # reads (`kft.evaluate`) pad their batches instead.
        view = self._view(share_passes=True)
        view._feeds_devices = True
        return view

    def get_tf_dataset(self):
        return _compat.grain_adapter(self).get_tf_dataset()

    def get_torch_dataloader(self):
        return _compat.grain_adapter(self).get_torch_dataloader()

    def _labels(self, labels):
        labels = np.asarray(labels, dtype=np.int32)
        if self.label_mode == "categorical":
            return np.eye(len(self.class_names), dtype=np.float32)[labels]
        return labels

    def _finish_batch(self, batch, pass_states=None):
        images, labels = batch
        if self._augmenter is not None:
            from kft.distributed.processes import data_shard

            # Each process augments its slice of a global batch with its
            # own draws (the same draws would repeat in every slice).
            images = self._augmenter(images, data_shard(self._shard)[0],
                                     pass_states)
        images = images.astype(np.float32, copy=False)
        if self.class_weight is None:
            return images, self._labels(labels)
        weights = np.asarray([self.class_weight.get(int(label), 1.0)
                              for label in labels], dtype=np.float32)
        return images, self._labels(labels), weights

    @property
    def example_labels(self) -> np.ndarray | None:
        """Each stored example's class index (in `paths` order), or `None`
        when the loader did not record them."""
        if callable(self._example_labels):
            self._example_labels = self._example_labels()
        if self._example_labels is None:
            return None
        return np.asarray(self._example_labels, dtype=np.int64)

    @property
    def shuffle_seed(self) -> int:
        """The seed of the passes' shuffles (pass k: mixed from
        `shuffle_seed` and k), balanced draws and host augmentation
        (`with_seed` sets it)."""
        return self._shuffle_seed

    @property
    def passes_begun(self) -> int:
        """Passes begun so far over this dataset (and the views that share
        its passes): the next pass is number `passes_begun`, which decides
        its shuffle order, balanced draws and host augmentation."""
        return self._passes.begun()

    def continue_passes_at(self, number: int) -> None:
        """Makes the next pass number `number`, as in a run that had read
        `number` passes: a resumed run then reads the passes (orders,
        draws, augmentation) the uninterrupted run would have read
        (`kft.runs.RunBackup(data=...)` does this).

        >>> import numpy as np, kft
        >>> ds = kft.data.from_arrays(np.arange(6.0).reshape(6, 1, 1, 1),
        ...                           np.zeros(6, int), batch_size=6, seed=1)
        >>> first = [x.ravel().tolist() for x, _ in ds]
        >>> second = [x.ravel().tolist() for x, _ in ds]
        >>> ds.passes_begun
        2
        >>> ds.continue_passes_at(1)
        >>> [x.ravel().tolist() for x, _ in ds] == second
        True
        """
        self._passes.continue_at(check_int("number", number, min_value=0))

    def for_fit(self) -> "ImageDataset":
        """This dataset as the training data of a `fit`: an example whose
        file fails to decode while read (`check="header"`) is replaced by
        the next example of the pass that decodes, so every batch keeps
        its size (every device and JAX process its share) and every pass
        the `len(dataset)` steps Keras counts on. kft's models
        (`kft.build_classifier`) read their training data this way by
        themselves; elsewhere (evaluation, `kft.cache_features`) the
        example is left out instead, as a copy would count twice. Shares
        this dataset's passes."""
        view = self._view(share_passes=True)
        view._fills_short_passes = True
        return view

    def in_order(self) -> "ImageDataset":
        """This dataset read in stored order, each example once.

        Shares the examples (no copy): no shuffling, no balanced
        sampling and no host augmentation, so a second pass meets the same
        examples in the same order, as evaluation needs (`kft.evaluate`
        reads datasets this way). With
        several JAX processes each one reads every example (not its slice
        of each global batch): what is computed from the whole dataset
        (a report, statistics, a Fisher) is the same in every process and
        the same as in one.

        >>> import numpy as np, kft
        >>> ds = kft.data.from_arrays(np.zeros((3, 4, 4, 3)), [2, 0, 1],
        ...                           sampling="balanced")
        >>> next(iter(ds.in_order()))[1].tolist()
        [2, 0, 1]
        """
        ordered = self._view()
        ordered._fills_short_passes = False
        ordered.shuffle, ordered.sampling = False, "all"
        ordered._shard = (0, 1)
        ordered._augmenter = None  # random draws would differ every pass
        return ordered

    def with_class_weight(self, class_weight: Mapping[int, float]
                          ) -> "ImageDataset":
        """This dataset with batches `(images, labels, sample_weights)`.

        `model.fit` ignores its `class_weight` argument for an
        `ImageDataset`; this puts the weights into the batches instead,
        the weight of each example being its class' (1 for a class not in
        `class_weight`). See `kft.training.class_weights`; for weights
        from the class counts, pass
        `kft.balanced_class_weight(ds.example_labels, len(ds.class_names))`.

        The view counts its passes together with this dataset, so a
        shuffled pass through either takes the next order (`fine_tune`
        makes one view per phase; its phase 2 does not replay phase 1's
        orders).

        Args:
            class_weight: `{class index: weight}`, weights finite and >= 0
                (0 leaves the class out of the loss).
                An index without examples here (a model may have more
                classes than the data) weighs nothing.

        Raises:
            TypeError: `class_weight` is not a mapping.
            ValueError: a key that is not an integer >= 0, or a weight
                that is not a finite number >= 0.

        >>> import numpy as np, kft
        >>> ds = kft.data.from_arrays(np.zeros((3, 4, 4, 3)), [0, 1, 1],
        ...                           shuffle=False)
        >>> next(iter(ds.with_class_weight({1: 0.5})))[2].tolist()
        [1.0, 0.5, 0.5]
        """
        weighted = self._view(share_passes=True)
        weighted.class_weight = self._checked_weights(class_weight)
        return weighted

    def _checked_weights(self, class_weight):
        what = ("a dict {class index >= 0: weight >= 0} (e.g. "
                "kft.balanced_class_weight(ds.example_labels, "
                "len(ds.class_names)))")
        if not isinstance(class_weight, Mapping):
            fail_argument("class_weight", what, class_weight, TypeError)
        weights = {}
        for key, value in class_weight.items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(
                    key, numbers.Integral) or key < 0:
                fail_argument("class_weight", what, dict(class_weight))
            # 0 leaves a class out of the loss, as Keras' class_weight.
            weights[int(key)] = check_number(f"class_weight[{key}]", value,
                                             low=0)
        return weights

    def with_seed(self, seed: int) -> "ImageDataset":
        """This dataset read from its first pass with `seed`.

        A view (no copy of the examples) whose passes are numbered from 0
        again: pass k is shuffled (or balanced-sampled) with a seed mixed
        from `seed` and k, and host augmentation draws from the preset's
        seeds moved by `seed`. The same seed gives the same batches
        whatever read this dataset (or another view) before, as runs
        compared by seed need
        (`kft.compare_strategies` trains each run on
        `train.with_seed(seed)`).

        Raises:
            ValueError: `seed` is not an integer in [0, 2**32).

        >>> import numpy as np, kft
        >>> ds = kft.data.from_arrays(np.zeros((6, 4, 4, 3)), range(6),
        ...                           batch_size=6)
        >>> first = next(iter(ds.with_seed(3)))[1].tolist()
        >>> _ = list(ds), list(ds)  # two passes through the dataset
        >>> next(iter(ds.with_seed(3)))[1].tolist() == first
        True
        """
        view = self._view()
        view._shuffle_seed = check_seed(seed)
        if self._augmenter is not None:
            view._augmenter = self._augmenter.fork(seed=view._shuffle_seed)
        return view

    def peek(self) -> tuple:
        """The first batch of the next pass, without beginning it.

        `next(iter(dataset))` begins a pass, so the `fit` that follows
        reads the passes after it: other orders and augmentation draws
        than without the look (`passes_begun`). `peek` reads the batch
        that pass will start with and leaves the count as it was.

        >>> import numpy as np, kft
        >>> ds = kft.data.from_arrays(np.zeros((6, 4, 4, 3)), range(6),
        ...                           batch_size=3)
        >>> images, labels = ds.peek()[:2]
        >>> images.shape, ds.passes_begun
        ((3, 4, 4, 3), 0)
        >>> next(iter(ds))[1].tolist() == labels.tolist()
        True
        """
        batches = self._start_pass(peek=True)
        try:
            return next(batches)
        finally:
            if hasattr(batches, "close"):  # its prefetch thread
                batches.close()
                _PREFETCHING.discard(batches)

    def _view(self, share_passes=False):
        view = copy.copy(self)
        view._lock = threading.Lock()
        if not share_passes:
            view._passes = _PassCounter()
            if self._augmenter is not None:
                # Passes of its own draw their own augmentation: reading
                # the view must not change what this dataset draws next.
                view._augmenter = self._augmenter.fork()
        return view

    def __iter__(self):
        # A pass is numbered (its order drawn) at its first batch, not when
        # the iterator is made: without a distribution Keras' `fit` makes
        # one more iterator at each epoch's end that it never reads (with
        # one it does not), so counting iterators would shuffle epoch 2 on
        # 1 device unlike on N devices. Unread iterators load nothing.
        return _Pass(self)

    def _start_pass(self, peek=False):
        epoch = self._passes.begun() if peek else self._passes.take()
        dataset = self._source
        if self.sampling == "balanced":
            indices = balanced_indices(self.example_labels, len(dataset),
                                       self._shuffle_seed, epoch)
            dataset = grain.MapDataset.source(indices).map(
                Resampled(dataset))
        elif self.shuffle:
            dataset = dataset.shuffle(seed=pass_seed(self._shuffle_seed,
                                                     epoch))
        index, count = self.shard
        batch_size = self.batch_size
        if count > 1:
            # Same seed, same order in every process: each takes its
            # slice of every global batch.
            dataset, batch_size = self._local_part(dataset, index, count,
                                                   epoch)
        if self._fills_short_passes:
            dataset = grain.MapDataset.range(len(dataset)).map(
                _Substituted(dataset))
        dataset = dataset.to_iter_dataset(grain.ReadOptions(
            num_threads=self.num_workers,
            prefetch_buffer_size=max(2 * self.batch_size, 16),
        ))
        dataset = dataset.batch(batch_size,
                                drop_remainder=self.drop_remainder,
                                batch_fn=_collate)
        # Each pass draws its augmentation from states of its own.
        dataset = dataset.map(functools.partial(
            self._finish_batch, pass_states=HostAugmenter.pass_states(epoch)))
        if self.num_workers > 0:
            dataset = grain.experimental.ThreadPrefetchIterDataset(
                dataset, prefetch_buffer_size=2)
        iterator = iter(dataset)
        if self.num_workers > 0:
            _PREFETCHING.add(iterator)
        return iterator

    def _local_part(self, dataset, index, count, epoch):
        _, _, left_out = self._shard_sizes(count)
        if left_out and not self.drop_remainder and self._passes.first_word():
            warnings.warn(
                f"{left_out} of the {len(dataset)} examples are left out of "
                f"each pass: the last global batch must split evenly over "
                f"the {count} processes (batch_size={self.batch_size}). "
                "Which ones changes every pass when the dataset shuffles.",
                stacklevel=user_stacklevel())
        positions = _sharding.shard_positions(
            len(dataset), self.batch_size, index, count, self.drop_remainder)
        local = grain.MapDataset.source(positions).map(Resampled(dataset))
        return local, _sharding.local_batch_size(self.batch_size, count)

    def __str__(self):
        # At most 10 classes' counts: a notebook showed 1,000.
        counts = ", ".join(f"{k}: {v}" for k, v in list(
            self.class_counts.items())[:10]) + (
            ", ..." if len(self.class_counts) > 10 else "")
        return (
            f"ImageDataset({self.num_examples} examples, "
            f"{len(self.class_names)} classes ({counts}), "
            f"batch_size={self.batch_size}, skipped={len(self._skipped)})"
        )

    __repr__ = __str__  # a notebook shows the repr
