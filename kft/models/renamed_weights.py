"""Weights files whose paths name a nested model's old class.

Keras files a nested model's weights under its class name in snake case
(`layers/backbone/...`). kft's backbones were plain `Functional` models
before `kft.models.backbones.Backbone` (2026-12-02), and so were the models
`kft.augmentation.attach` wraps before `kft.Classifier` (2026-12-04): a
`.weights.h5` file written then holds `layers/functional/...`, and Keras
refuses it for today's model of the same layers ("objects could not be
loaded"). `Classifier.load_weights` pairs such a file's paths with the
model's own and loads it when every weight finds its place.
"""

import os
import re
import tempfile
import warnings

import numpy as np

# The class whose name old files hold where today's models have kft's.
_OLD = "functional"
# Keras' top-level group of the optimizer's variables: kept as the model's
# own (an old file's slots follow an old trainable set, and Keras ignores
# a file's optimizer when the model has none built).
_OPTIMIZER = "optimizer"


def _natural(name):
    # Keras numbers repeated names "conv2d", "conv2d_1", ..., "conv2d_10":
    # layer order, which the file's alphabetical order is not.
    match = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    return match.group(1), int(match.group(2) or 0)


def _holds_weights(item):
    import h5py

    if isinstance(item, h5py.Dataset):
        return True
    return any(_holds_weights(child) for child in item.values())


def _children(group):
    """Names of `group`'s children that hold weights, the top level's
    optimizer left out."""
    return [name for name in group
            if not (group.name == "/" and name == _OPTIMIZER)
            and _holds_weights(group[name])]


def _pairs(given, expected, mismatched):
    """`{path in given: path in expected}` for every weight of the two h5
    groups when their trees match, else `None`: names equal where both
    hold them; the other children paired in Keras' order, which only names
    of one class each side give (`functional`, `functional_1` and
    `backbone`, `backbone_1`); shapes equal, or (`mismatched` a list) the
    pairs of other shapes appended to it."""
    import h5py

    given_is_data = isinstance(given, h5py.Dataset)
    if given_is_data or isinstance(expected, h5py.Dataset):
        if not (given_is_data and isinstance(expected, h5py.Dataset)):
            return None
        if given.shape == expected.shape:
            return {given.name: expected.name}
        if mismatched is None:
            return None
        mismatched.append((given.name, given.shape, expected.shape))
        return {}
    # Weightless layers (pooling, activations) leave empty groups, which
    # differ with the layers a version adds or drops.
    given_names, expected_names = _children(given), _children(expected)
    only_given = sorted(set(given_names) - set(expected_names), key=_natural)
    only_expected = sorted(set(expected_names) - set(given_names),
                           key=_natural)
    if len(only_given) != len(only_expected) or (len(only_given) > 1 and (
            len({_natural(n)[0] for n in only_given}) > 1
            or len({_natural(n)[0] for n in only_expected}) > 1)):
        return None  # no order tells which is which
    pairs = [(n, n) for n in given_names if n in expected_names]
    mapping = {}
    for a, b in pairs + list(zip(only_given, only_expected)):
        sub = _pairs(given[a], expected[b], mismatched)
        if sub is None:
            return None
        mapping.update(sub)
    return mapping


def looks_renamed(model, filepath):
    """Whether `filepath` is a `.weights.h5` file of the old layout for
    `model`: a top-level `functional` group with weights where no layer of
    `model` with weights is a plain Functional model."""
    import h5py

    filepath = os.fspath(filepath)
    if not filepath.endswith(".weights.h5") or not h5py.is_hdf5(filepath):
        return False
    with h5py.File(filepath, "r") as file:
        layers = file["layers"] if "layers" in file else {}
        old = any(_natural(name)[0] == _OLD and _holds_weights(layers[name])
                  for name in layers)
    return old and not any(type(layer).__name__.lower() == _OLD
                           and layer.weights for layer in model.layers)


def load_renamed(model, filepath, load, skip_mismatch=False):
    """Loads the `.weights.h5` file `filepath` into `model` with `load`
    (Keras' `load_weights`) after filing its weights under the model's own
    paths. Returns `False`, loading nothing, when the file's tree is not
    the model's with other names. With `skip_mismatch`, weights of other
    shapes (a new head) keep the model's values, with a warning, as
    Keras' `skip_mismatch` does."""
    import h5py

    mismatched = [] if skip_mismatch else None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "renamed.weights.h5")
        model.save_weights(path)  # the model's own paths
        with h5py.File(os.fspath(filepath), "r") as given, h5py.File(
                path, "r+") as renamed:
            mapping = _pairs(given, renamed, mismatched)
            if not mapping:
                return False
            expected = []
            renamed.visititems(lambda name, item: expected.append(
                "/" + name) if isinstance(item, h5py.Dataset)
                and not name.startswith(_OPTIMIZER + "/") else None)
            skipped = {target for target in expected
                       if target not in set(mapping.values())}
            if skipped and not skip_mismatch:
                return False
            for source, target in mapping.items():
                renamed[target][...] = np.asarray(given[source])
        load(path)
    if mismatched:
        warnings.warn(
            f"{len(mismatched)} weight(s) of {os.fspath(filepath)!r} have "
            "other shapes than the model's and were skipped (skip_mismatch="
            "True), e.g. " + ", ".join(
                f"{source} {shape} (the model's: {own})"
                for source, shape, own in mismatched[:3]) + ".",
            stacklevel=3)
    return True
