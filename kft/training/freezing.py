"""Freezing strategies and the BatchNorm policy, by `layer.trainable`."""

import numbers
import warnings
import weakref
from collections.abc import Sequence
from typing import Literal

import keras
import numpy as np

from kft import _compat
from kft.models import backbones
from kft._validation import check_choice
from kft._validation import fail_argument
from kft._validation import user_stacklevel
from kft.models.blocks import HEAD_HOW
from kft.models.blocks import get_blocks
from kft.models.blocks import head_and_body
from kft.training.state import changing_trainable

STRATEGIES = ("feature_extraction", "partial", "full")
BN_POLICIES = ("frozen", "train")

# Models already warned about frozen BatchNorm of a random initialisation.
_WARNED_RANDOM_BN = weakref.WeakSet()


def freeze(model: keras.Model,
           strategy: Literal["feature_extraction", "partial",
                             "full"] = "feature_extraction",
           n_blocks: int | None = None,
           bn: Literal["frozen", "train"] = "frozen",
           patterns=None) -> list[str]:
    """Sets which blocks of `model` train.

    - `"feature_extraction"`: only the head trains (the block named
      `"head"` of `kft.get_blocks`; a model without one raises).
    - `"partial"`: the top `n_blocks` blocks below the head (1 unless
      given), and the head. Without a head block: the top `n_blocks`
      blocks (`GradualUnfreezing` lets the last block play the head
      there: its stage k trains the top k + 1 blocks).
    - `"full"`: every block.

    BatchNorm policy: with `bn="frozen"` every BatchNormalization layer
    outside the head keeps `trainable=False`, which in Keras 3 also makes it
    run in inference mode, so its moving statistics never change, even in
    an unfrozen block (this is the flag `fit` respects; calling the backbone
    with `training=False` is overridden by `fit`). `bn="train"` lets BN in
    unfrozen blocks train and update its statistics. Layers without
    weights are not frozen by `trainable`: a frozen block's Dropout (such
    as EfficientNet's stochastic depth, `block*_drop`) still drops in
    `fit`, as in Keras (cached features, computed in inference mode, do
    not).

    Safe on a compiled model and inside callbacks of a running `fit`: the
    optimizer keeps the state of variables that stay trainable and the next
    step is compiled for the new trainable set (see `changing_trainable`).

    Args:
        model: A model from `kft.build_classifier`, or any model
            `kft.get_blocks` can split.
        strategy: One of `"feature_extraction"`, `"partial"`, `"full"`.
            Defaults to `"feature_extraction"`.
        n_blocks: For `"partial"`: how many blocks below the head train,
            from 1 to the number of such blocks; `None` means 1. Defaults
            to `None`.
        bn: `"frozen"` or `"train"`. Defaults to `"frozen"`.
        patterns: Block patterns passed to `kft.get_blocks`. Defaults to
            `None`.

    Returns:
        The list of names of the blocks that now train.

    Raises:
        ValueError: an unknown strategy or BatchNorm policy, a bad
            `n_blocks`, or `"feature_extraction"` for a model without a
            head block.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> kft.freeze(model, "partial")
    ['block3', 'head']
    >>> kft.freeze(model, "partial", n_blocks=2)
    ['block2', 'block3', 'head']
    """
    check_choice("strategy", strategy, STRATEGIES)
    blocks = get_blocks(model, patterns)
    head, body = head_and_body(blocks)
    if strategy == "partial":
        if n_blocks is None:
            n_blocks = 1
        if (isinstance(n_blocks, (bool, np.bool_))
                or not isinstance(n_blocks, numbers.Integral)
                or not 1 <= n_blocks <= len(body)):
            raise ValueError(
                f"Argument `n_blocks` must be an integer from 1 to "
                f"{len(body)} (the blocks below the head: {body}). "
                f"Received: n_blocks={n_blocks!r}"
            )
        names = body[len(body) - int(n_blocks):]
    elif n_blocks is not None:
        raise ValueError(
            f'Argument `n_blocks` is only used with strategy="partial". '
            f"Received: n_blocks={n_blocks!r}, strategy={strategy!r}"
        )
    elif strategy == "full":
        names = body
    elif head is None:
        raise ValueError(
            'Argument `strategy` must not be "feature_extraction" for a '
            'model without a "head" block: only the head would train, and '
            f"kft.get_blocks finds the blocks {body} and no head. "
            f"{HEAD_HOW}; or a block named \"head\" in `patterns`. "
            "Received: strategy='feature_extraction'")
    else:
        names = []
    if head is not None:
        names = names + [head]
    set_trainable_blocks(model, names, bn=bn, patterns=patterns)
    return names


def unfreeze_top(model: keras.Model, n_blocks: int,
                 bn: Literal["frozen", "train"] = "frozen",
                 patterns=None) -> list[str]:
    """Trains the head and the top `n_blocks` blocks below it: the same as
    `freeze(model, "partial", n_blocks, bn)`.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> kft.unfreeze_top(model, 2)
    ['block2', 'block3', 'head']
    """
    return freeze(model, "partial", n_blocks=n_blocks, bn=bn,
                  patterns=patterns)


def set_trainable_blocks(model: keras.Model, names: Sequence[str],
                         bn: Literal["frozen", "train"] = "frozen",
                         patterns=None) -> None:
    """Makes exactly the blocks in `names` trainable, all others frozen.

    The building block of the strategies and of gradual unfreezing.

    Args:
        model: A model `kft.get_blocks` can split.
        names: Names of the blocks to train.
        bn: BatchNorm policy, `"frozen"` or `"train"` (see `freeze`).
            Defaults to `"frozen"`.
        patterns: Block patterns for `kft.get_blocks`. Defaults to `None`.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> kft.set_trainable_blocks(model, ["block3", "head"])
    """
    check_choice("bn", bn, BN_POLICIES)
    if isinstance(names, str):
        # Read as its letters, it named blocks 'h', 'e', 'a', 'd'.
        fail_argument("names", f"a list of block names (e.g. [{names!r}])",
                      names, TypeError)
    names = list(names)  # a generator read twice was empty the second time
    blocks = get_blocks(model, patterns)
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise ValueError(
            f"Unknown block(s) {unknown}. The model's blocks are "
            f"{list(blocks)}."
        )
    head, _ = head_and_body(blocks)
    if bn == "frozen":
        _warn_if_random_batch_norm(model, blocks, names, head)
    with changing_trainable(model):
        # Containers must be trainable for their layers' flags to count;
        # that sets every layer's flag, so layers outside the blocks (a
        # DomainAdaptationModel's discriminator) get theirs back: a flag
        # the user set, not one `model.trainable = False` set (Keras'
        # "freeze all, then unfreeze" trains them again, as before).
        outside = _outside_blocks(model, blocks) if model.trainable else []
        model.trainable = True
        for layer, flag in outside:
            layer.trainable = flag
        for name, layers in blocks.items():
            train = name in names
            for layer in layers:
                layer.trainable = train
                if train and bn == "frozen" and name != head:
                    for bn_layer in batch_norm_layers(layer):
                        bn_layer.trainable = False


def _outside_blocks(model, blocks):
    """`(layer, trainable)` of the outermost layers of `model` with
    weights that neither hold nor are inside a block's layer."""
    inside = {id(sub) for layers in blocks.values() for layer in layers
              for sub in _compat.flatten_layers(layer)}
    found = []

    def visit(layer):
        for sub in _compat.flatten_layers(layer, include_self=False,
                                          recursive=False):
            if id(sub) in inside or not sub.weights:
                continue
            if any(id(s) in inside for s in _compat.flatten_layers(sub)):
                visit(sub)  # a container of block layers (the backbone)
            else:
                found.append((sub, sub.trainable))

    visit(model)
    return found


def _pretrained(model):
    """Whether `model`'s backbone started from trained weights; `None` when
    unknown (a model not built by kft, or reloaded from a file)."""
    flag = getattr(model, "_kft_pretrained", None)
    if flag is not None:
        return flag
    backbone = backbones.find_backbone(model)
    return None if backbone is None else getattr(backbone, "_kft_pretrained",
                                                 None)


def _warn_if_random_batch_norm(model, blocks, names, head):
    # Only BN in a training block matters: a frozen block's BN runs in
    # inference mode whatever the policy (its weightless random layers,
    # such as EfficientNet's stochastic depth, still run in training).
    if model in _WARNED_RANDOM_BN or _pretrained(model) is not False:
        return
    layers = [bn_layer for name in names if name != head
              for layer in blocks[name]
              for bn_layer in batch_norm_layers(layer)]
    # Statistics a `bn="train"` run (or `kft.adapt_batchnorm`) has set
    # are the data's, not the init's: freezing them then is a choice. One
    # layer still at the init's is enough to warn (a partial run taught
    # only the top block's).
    if not any(_initial_statistics(layer) for layer in layers):
        return
    warnings.warn(
        f"Model {model.name!r} was built with weights=None, so its "
        "backbone's BatchNorm layers hold random-init statistics (mean 0, "
        "variance 1); bn=\"frozen\" keeps them fixed in the blocks that "
        "train, where they then do not normalise. Pass bn=\"train\" "
        "(`--bn train` of `kft train` / `kft compare`) to learn the "
        "statistics of your data.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )
    _WARNED_RANDOM_BN.add(model)


def _initial_statistics(layer):
    """Whether BatchNorm `layer` still holds its initial statistics (mean
    0, variance 1)."""
    # From `.value`: converting the variable itself warns (numpy 2's
    # `copy` keyword, which Keras' `__array__` does not take).
    mean = np.asarray(layer.moving_mean.value)
    variance = np.asarray(layer.moving_variance.value)
    return not mean.any() and bool((variance == 1).all())


def batch_norm_layers(layer: keras.layers.Layer) -> list:
    """The BatchNormalization layers in `layer` (itself included)."""
    return [
        sub
        for sub in _compat.flatten_layers(layer)
        if isinstance(sub, keras.layers.BatchNormalization)
    ]
