"""A per-block view of what trains."""

from collections.abc import Callable

import keras

from kft import _compat
from kft.models.blocks import get_blocks
from kft.regularizers.penalty import PenaltyState
from kft.training.freezing import batch_norm_layers


def _count(variables):
    return sum(_size(v.shape) for v in variables)


def _size(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def trainable_summary(model: keras.Model, patterns=None,
                      print_fn: Callable[[str], object] | None = print) -> str:
    """Prints and returns a table of the model's blocks and what trains.

    Columns: block, parameters, trainable parameters, state (`trainable`,
    `frozen` or `partial`), BatchNorm mode (`frozen`: inference mode,
    statistics fixed; `train`; `mixed`; `-` when the block has none). The
    last line is the total, e.g. "Trainable: 195 / 26,483 (0.7%)", without
    a bound penalty's anchors and Fisher values (`kft.regularize`).
    Parameters count every weight, BatchNorm's moving mean and variance
    too, as Keras' `model.summary()` does (PyTorch's
    `sum(p.numel() for p in model.parameters())` leaves those buffers out:
    for ResNet50 with a 10-class head the seeds' 23,528,522 is 23,608,202
    here, 53,120 of moving statistics and 26,560 of the biases Keras'
    ResNet50 convolutions have and torchvision's have not).

    Args:
        model: A model `kft.get_blocks` can split.
        patterns: Block patterns for `kft.get_blocks`. Defaults to `None`.
        print_fn: Called with the text; `None` prints nothing. Defaults to
            `print`.

    Returns:
        The table as a string (printed, a notebook does not show it
        again as a cell's value).

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> _ = kft.freeze(model, "feature_extraction")
    >>> text = kft.trainable_summary(model, print_fn=None)
    >>> text.splitlines()[-1]
    'Trainable: 195 / 26,483 (0.7%)'
    """
    rows = [("block", "params", "trainable", "state", "bn")]
    blocks = get_blocks(model, patterns)
    for name, layers in blocks.items():
        params = sum(_count(layer.weights) for layer in layers)
        trainable = sum(_count(layer.trainable_weights) for layer in layers)
        # State ignores BatchNorm, whose policy has its own column.
        flags = {
            sub.trainable
            for layer in layers
            for sub in _compat.flatten_layers(layer)
            if _compat.is_leaf_with_weights(sub)
            and not isinstance(sub, keras.layers.BatchNormalization)
        }
        state = {frozenset({True}): "trainable",
                 frozenset({False}): "frozen"}.get(frozenset(flags), "partial")
        bn_flags = {bn.trainable for layer in layers
                    for bn in batch_norm_layers(layer)}
        if trainable == 0:
            state = "frozen"
        elif not flags and bn_flags == {True}:
            # A block of BatchNorm layers alone, all training.
            state = "trainable"
        bn = {frozenset(): "-", frozenset({False}): "frozen",
              frozenset({True}): "train"}.get(frozenset(bn_flags), "mixed")
        rows.append((name, f"{params:,}", f"{trainable:,}", state, bn))
    # A bound penalty's anchors and Fisher values are copies, not
    # parameters of the model.
    copies = {id(v) for layer in _compat.flatten_layers(model)
              if isinstance(layer, PenaltyState) for v in layer.weights}
    in_blocks = {id(v) for layers in blocks.values() for layer in layers
                 for v in layer.weights}
    # Weights outside the blocks (a DomainAdaptationModel's discriminator
    # and schedule state), so that the rows add up to the total.
    other = [v for v in model.weights
             if id(v) not in in_blocks and id(v) not in copies]
    if other:
        training = {id(v) for v in model.trainable_weights}
        trainable_other = [v for v in other if id(v) in training]
        rows.append(("(other)", f"{_count(other):,}",
                     f"{_count(trainable_other):,}", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(
            cell.ljust(w) if i in (0, 3, 4) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    total = _count(v for v in model.weights if id(v) not in copies)
    trainable = _count(model.trainable_weights)
    lines.append(
        f"Trainable: {trainable:,} / {total:,} "
        f"({100.0 * trainable / max(total, 1):.1f}%)"
    )
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
        return _Shown(text)
    return text


class _Shown(str):
    """A table already printed: a notebook does not show it again as the
    cell's value (one escaped line of it, under the printed table)."""

    def _ipython_display_(self):
        pass
