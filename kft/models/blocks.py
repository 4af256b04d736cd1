"""Splitting a model into ordered named blocks, stem to head.

The head has one definition, used by every part of kft: the block named
`"head"` of `get_blocks`. Without patterns, that is the top-level layers
with weights that follow the model's kft backbone (`head_layers`).
"""

import re
import warnings
from collections.abc import Mapping
from collections.abc import Sequence

import keras

from kft import _compat
from kft._validation import fail_argument
from kft._validation import user_stacklevel
from kft.models.backbones import backbone_name
from kft.models.backbones import get_backbone
from kft.models.registry import resolve_backbone_name

HEAD = "head"
# How a model gets a "head" block, for messages.
HEAD_HOW = ('The head is the layers after the backbone of a '
            'kft.build_classifier model, or else a top-level layer with '
            'weights named "head" (e.g. keras.layers.Dense(3, name="head"))')


# `None`, regexes, `(name, regex)` pairs or a `{name: regex}` dict.
Patterns = Sequence[str | tuple[str, str]] | Mapping[str, str] | None


def get_blocks(model: keras.Model, patterns: Patterns = None) -> dict:
    """Splits `model` into ordered named blocks of layers, stem to head.

    Every layer that has weights lands in exactly one block:

    - a model holding a kft backbone as a top-level layer (a
      `kft.build_classifier` model), or a kft backbone itself: the
      backbone's registered blocks, then `"head"` for the layers after the
      backbone. A kft backbone is a model whose `kft_backbone` attribute
      names its registry entry (`kft.create_backbone` sets it, see
      `kft.models.backbones.Backbone`); layer names do not count;
    - with `patterns`: a block per pattern, matched (`re.search`) against
      the names of the model's layers, nested models opened up;
    - a model whose only top-level layer with weights is another model
      (such as `kft.augmentation.attach`'s wrapper, see `wrapped_model`):
      that model's blocks;
    - otherwise: one block per top-level layer with weights, named after
      the layer; a BatchNormalization joins the block of the layer before
      it, and a layer named "head" and the layers after it form the head.

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
        TypeError: `patterns` of another kind, or a `model` that is not a
            `keras.Model`.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> list(kft.get_blocks(model))
    ['stem', 'block1', 'block2', 'block3', 'head']
    """
    if not isinstance(model, keras.Model):
        # Every freezing and summary function starts here.
        fail_argument("model", "a keras.Model", model, TypeError)
    if patterns is not None:
        return _split(_leaf_units(model), _as_pairs(patterns), model.name)
    if backbone_name(model) is not None:
        return _backbone_blocks(model)
    inner = wrapped_model(model)
    if inner is not None:
        # Freezing "the last 2 blocks" of an attached model means its
        # classifier's.
        return get_blocks(inner)
    blocks, head, found, previous = {}, [], False, None
    for layer in _weighted(model.layers):
        if not found and backbone_name(layer) is not None:
            blocks.update(_backbone_blocks(layer))
            found = True
        elif found or head or layer.name == HEAD:
            # A layer named "head" and every layer after it: the head (a
            # classifier after it was frozen with the body).
            head.append(layer)
        elif previous is not None and isinstance(
                layer, keras.layers.BatchNormalization):
            # It normalises the layer before it: alone, under bn="frozen",
            # its block would train nothing (a partial or gradual stage
            # spent on it).
            blocks[previous].append(layer)
        else:
            _warn_if_named_like_a_backbone(layer)
            blocks[layer.name] = [layer]
            previous = layer.name
    if head:
        blocks[HEAD] = head
    return blocks


def _warn_if_named_like_a_backbone(layer):
    # A model saved by kft before backbones were marked (2026-12-02) loads
    # with a plain Functional backbone: one block, and `freeze(model,
    # "partial")` would train no layer of it.
    name = resolve_backbone_name(layer.name)
    if isinstance(layer, keras.Model) and name is not None:
        warnings.warn(
            f"Layer {layer.name!r} is named like kft's backbone {name!r} but "
            "was not made by kft.create_backbone (a model saved by kft "
            "before 2026-12-02, or a keras.applications model), so it is one "
            f"block here instead of the registered blocks of {name!r}. For "
            f"those, build the model with kft.build_classifier({name!r}, "
            "...) and copy the weights over: "
            "new.set_weights(model.get_weights()), or new.load_weights of "
            "its .weights.h5 file.",
            stacklevel=user_stacklevel())


def wrapped_model(model: keras.Model):
    """The model inside `model` when `model` only adds weightless layers
    around it, called once (`kft.augmentation.attach`'s wrapper), else
    `None`.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> wrapped_model(kft.augmentation.attach(model, "light")) is model
    True
    """
    weighted = _weighted(model.layers)
    if len(weighted) == 1 and isinstance(weighted[0], keras.Model) and len(
            _compat.call_inputs(weighted[0])) == 1:
        return weighted[0]
    return None


def head_layers(model: keras.Model) -> list:
    """The layers of `model`'s `"head"` block, in order; `[]` without one.

    For a model holding a kft backbone (a `kft.build_classifier` model),
    the top-level layers with weights after the backbone. Weightless layers
    (pooling, activations, dropout) are in no block; in a functional model
    they sit between these in `model.layers`.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(16, 16, 3),
    ...                              head="mlp")
    >>> [layer.name for layer in head_layers(model)]
    ['head_fc', 'head_bn', 'head_dense']
    """
    return list(get_blocks(model).get(HEAD, []))


def head_and_body(blocks: dict) -> tuple:
    """`(head block name or None, ordered list of the other block names)`.

    The head is the block named `"head"` (see `head_layers`); a model
    without one has none, so every block counts as body.

    Example:
    >>> head_and_body({"stem": [], "block1": [], "head": []})
    ('head', ['stem', 'block1'])
    """
    names = list(blocks)
    if HEAD in blocks:
        return HEAD, [n for n in names if n != HEAD]
    return None, names


def _backbone_blocks(backbone):
    name = backbone_name(backbone)
    if resolve_backbone_name(name) is None:
        # A model saved with a backbone of the user's registry, loaded in
        # a process that did not register it ("Unknown backbone", for a
        # name the user never gave).
        raise ValueError(
            f"Backbone {backbone.name!r} of this model was built from "
            f"backbone {name!r}, which is not registered in this process "
            "(a saved model keeps the name, not the spec): call "
            "kft.register_backbone(...) with its spec first (or give "
            "kft.get_blocks and kft.freeze `patterns=` naming the "
            "blocks).")
    spec = get_backbone(name)
    return _split(_weighted(backbone.layers), spec.blocks, backbone.name)


def _weighted(layers):
    # A bound penalty's anchors are no block; a subclassed model lists
    # their layer (`kft.regularize`'s) among its own. Imported here:
    # kft.regularizers imports this module.
    from kft.regularizers.penalty import PenaltyState

    return [layer for layer in layers
            if layer.weights and not isinstance(layer, PenaltyState)]


def _leaf_units(model):
    units = []
    for layer in _weighted(model.layers):
        if isinstance(layer, keras.Model):
            units.extend(_leaf_units(layer))
        else:
            units.append(layer)
    return units


def _as_pairs(patterns):
    what = ("a list of regexes, or a dict or list of (block name, regex) "
            "pairs of strings")
    if isinstance(patterns, dict):
        pairs = list(patterns.items())
    elif isinstance(patterns, (list, tuple)):
        pairs = [(p, p) if isinstance(p, str) else p for p in patterns]
    else:
        fail_argument("patterns", what, patterns, TypeError)
    for pair in pairs:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(s, str) for s in pair)):
            fail_argument("patterns", what, patterns, TypeError)
        try:
            re.compile(pair[1])
        except re.error as error:
            raise ValueError(
                f"Argument `patterns` holds a regex that does not compile, "
                f"{pair[1]!r} (block {pair[0]!r}): {error}. Patterns are "
                "Python regexes searched in layer names (re.search); "
                "re.escape a literal name.") from None
    return [tuple(pair) for pair in pairs]


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
