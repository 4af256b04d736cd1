"""Splitting a model into ordered named blocks, stem to head."""

import re

import keras

from kft.models import backbones

HEAD = "head"


def get_blocks(model, patterns=None):
    """Splits `model` into ordered named blocks of layers, stem to head.

    Every layer that has weights lands in exactly one block:

    - a model from `kft.build_classifier` (or any model holding a registered
      backbone as a layer, or a registered backbone itself): the backbone's
      registered blocks, then `"head"` for the layers after the backbone;
    - with `patterns`: a block per pattern, matched (`re.search`) against
      the names of the model's layers, nested models opened up;
    - otherwise: one block per top-level layer with weights.

    Args:
        model: A built `keras.Model`.
        patterns: `None`, a list of regexes (each its own block, named by the
            pattern), or a dict / list of `(name, regex)` pairs, stem first.
            Defaults to `None`.

    Returns:
        `dict` mapping block name to its list of layers, in order.

    Raises:
        ValueError: a layer matched by no pattern or by two (both named), or
            a pattern that matches nothing.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> list(kft.get_blocks(model))
    ['stem', 'block1', 'block2', 'block3', 'head']
    """
    if patterns is not None:
        return _split(_leaf_units(model), _as_pairs(patterns), model.name)
    if model.name in backbones.list_backbones():
        spec = backbones.get_backbone(model.name)
        return _split(_weighted(model.layers), spec.blocks, model.name)
    blocks, head, found = {}, [], False
    for layer in _weighted(model.layers):
        if (
            isinstance(layer, keras.Model)
            and layer.name in backbones.list_backbones()
            and not found
        ):
            spec = backbones.get_backbone(layer.name)
            blocks.update(_split(_weighted(layer.layers), spec.blocks,
                                 layer.name))
            found = True
        elif found:
            head.append(layer)
        else:
            blocks[layer.name] = [layer]
    if not found:
        return blocks
    if head:
        blocks[HEAD] = head
    return blocks


def head_and_body(blocks):
    """(head block name or None, ordered list of the other block names).

    The head is the block named `"head"`; a model without one has none, so
    every block counts as body."""
    names = list(blocks)
    if HEAD in blocks:
        return HEAD, [n for n in names if n != HEAD]
    return None, names


def _weighted(layers):
    return [layer for layer in layers if layer.weights]


def _leaf_units(model):
    units = []
    for layer in _weighted(model.layers):
        if isinstance(layer, keras.Model):
            units.extend(_leaf_units(layer))
        else:
            units.append(layer)
    return units


def _as_pairs(patterns):
    if isinstance(patterns, dict):
        pairs = list(patterns.items())
    elif isinstance(patterns, (list, tuple)):
        pairs = [(p, p) if isinstance(p, str) else tuple(p) for p in patterns]
    else:
        raise TypeError(
            "Argument `patterns` must be a list of regexes or a dict of "
            f"block name to regex. Received: patterns={patterns!r}"
        )
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(s, str) for s in pair):
            raise TypeError(
                "Each block pattern must be a regex string or a (name, "
                f"regex) pair of strings. Received: {pair!r}"
            )
    return pairs


def _split(layers, pairs, where):
    compiled = [(name, re.compile(regex)) for name, regex in pairs]
    blocks = {name: [] for name, _ in pairs}
    for layer in layers:
        hits = [(n, r.pattern) for n, r in compiled if r.search(layer.name)]
        if not hits:
            raise ValueError(
                f"Layer {layer.name!r} of {where!r} matches no block pattern. "
                f"Patterns: {[r for _, r in pairs]}"
            )
        if len(hits) > 1:
            raise ValueError(
                f"Layer {layer.name!r} of {where!r} matches two block "
                f"patterns: {hits[0]} and {hits[1]}."
            )
        blocks[hits[0][0]].append(layer)
    empty = [name for name, members in blocks.items() if not members]
    if empty:
        raise ValueError(
            f"Block pattern(s) {empty} match no layer with weights in "
            f"{where!r}."
        )
    return blocks
