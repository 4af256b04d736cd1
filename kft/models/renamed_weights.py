"""Weights files whose paths name a nested model's old class.

Keras files a nested model's weights under its class name in snake case
(`layers/backbone/...`). kft's backbone and attached models were plain
`Functional` models before `kft.models.backbones.Backbone` and
`kft.Classifier` (2026-12-02), so a `.weights.h5` file written then holds
`layers/functional/...`, and Keras refuses it for today's model of the same
layers ("objects could not be loaded"). `Classifier.load_weights` pairs the
file's paths with the model's own and loads it when every weight finds its
place.
"""

import os
import re
import tempfile

import numpy as np


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


def _pairs(given, expected):
    """`{path in given: path in expected}` for every weight of the two h5
    groups when their trees match (names equal where both hold them, the
    other children paired in Keras' order, shapes equal), else `None`."""
    import h5py

    given_is_data = isinstance(given, h5py.Dataset)
    if given_is_data or isinstance(expected, h5py.Dataset):
        if given_is_data and isinstance(expected, h5py.Dataset) and (
                given.shape == expected.shape):
            return {given.name: expected.name}
        return None
    # Weightless layers (pooling, activations) leave empty groups, which
    # differ with the layers a version adds or drops.
    given_names = [n for n in given if _holds_weights(given[n])]
    expected_names = [n for n in expected if _holds_weights(expected[n])]
    only_given = sorted(set(given_names) - set(expected_names), key=_natural)
    only_expected = sorted(set(expected_names) - set(given_names),
                           key=_natural)
    if len(only_given) != len(only_expected):
        return None
    pairs = [(n, n) for n in given_names if n in expected_names]
    mapping = {}
    for a, b in pairs + list(zip(only_given, only_expected)):
        sub = _pairs(given[a], expected[b])
        if sub is None:
            return None
        mapping.update(sub)
    return mapping


def load_renamed(model, filepath, load):
    """Loads the `.weights.h5` file `filepath` into `model` with `load`
    (Keras' `load_weights`) after filing its weights under the model's own
    paths. Returns `False`, loading nothing, when the file's tree is not
    the model's with other names (or is no h5 file)."""
    import h5py

    filepath = os.fspath(filepath)
    if not filepath.endswith(".weights.h5") or not h5py.is_hdf5(filepath):
        return False
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "renamed.weights.h5")
        model.save_weights(path)  # the model's own paths
        with h5py.File(filepath, "r") as given, h5py.File(
                path, "r+") as renamed:
            mapping = _pairs(given, renamed)
            if not mapping or all(a == b for a, b in mapping.items()):
                return False  # not a renaming: Keras' own error stands
            expected = []
            renamed.visititems(lambda name, item: expected.append(
                "/" + name) if isinstance(item, h5py.Dataset) else None)
            if sorted(mapping.values()) != sorted(expected):
                return False
            for source, target in mapping.items():
                renamed[target][...] = np.asarray(given[source])
        load(path)
    return True
