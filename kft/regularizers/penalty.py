"""What L2-SP, EWC and LwF share: anchors held as model state, per-variable
terms run by Keras' weight-regularizer pass, and the side file.

A penalty is bound to a model by `kft.regularize`. Its anchors (the
weights at that moment, theta_0) and Fisher values become non-trainable
variables of a `PenaltyState` layer attached to the model, so the compiled
train step receives them as state (never as constants baked into the
trace). Each penalised weight gets a `variable.regularizer`: Keras adds the
regularizers of `model.trainable_weights` to the loss inside the traced
step (`Layer.losses`), reading every variable's traced value. So the
penalty covers exactly the weights that train now, and follows the
trainable set whenever kft re-traces the step on a change.

Keras adds those regularizers in its evaluation step too. The penalty is
left out there (`kft._evaluation_step`): `val_loss` is the task's loss,
so a monitor on it compares epochs before and after weights unfreeze
alike (the penalty's backbone part is 0 while the backbone is frozen).
"""

import collections
import json
import re
import warnings

import keras
import numpy as np
from keras import ops

from kft import _compat
from kft._evaluation_step import penalty_is_left_out
from kft._validation import check_number
from kft._validation import fail_argument
from kft._writing import npz_bytes
from kft._writing import write_file

# Attribute of the model holding the `PenaltyState` layer.
STATE_ATTRIBUTE = "kft_penalty_state"
_CONFIG_KEY = "__config__"


@keras.saving.register_keras_serializable(package="kft")
class PenaltyState(keras.layers.Layer):
    """Non-trainable anchors (and Fisher values) of a bound penalty.

    Not part of the functional graph; `kft.freeze` never makes its
    variables trainable (they are created non-trainable). Loading weights
    written without a penalty keeps them (with a warning).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def add_copy(self, kind, index, values):
        """A non-trainable float32 variable holding `values`."""
        values = np.asarray(values, dtype="float32")
        variable = self.add_weight(
            shape=values.shape, initializer="zeros", trainable=False,
            dtype="float32", name=f"{kind}_{index}")
        variable.assign(values)
        return variable

    def load_own_variables(self, store):
        # A weights file written without a penalty, or with another one,
        # has no entry or other entries for this layer; refusing it would
        # stop the model's own weights loading.
        stored = len(store.keys())
        if stored != len(self.weights):
            if self.weights:
                written = ("without one" if not stored else
                           f"with another: {stored} stored values, not "
                           f"{len(self.weights)}")
                warnings.warn(
                    "The weights file holds no anchors for the model's "
                    f"bound penalty (written {written}): its anchors stay "
                    "the weights at kft.regularize, not the loaded ones. To "
                    "anchor at these, load them before kft.regularize.",
                    UserWarning, stacklevel=2)
            return
        super().load_own_variables(store)

    def call(self, inputs):
        return inputs


class VariableTerm:
    """`variable.regularizer` of a penalised weight: the penalty's term for
    it, plus any regularizer the weight had before (kept, not replaced)."""

    def __init__(self, term, scale, anchor=None, fisher=None,
                 previous=None):
        self.term, self.scale = term, scale
        self.anchor, self.fisher = anchor, fisher
        self.previous = previous

    def __call__(self, value):
        if penalty_is_left_out():  # evaluating: the weight's own one only
            return (ops.zeros((), "float32") if self.previous is None else
                    ops.cast(self.previous(value), "float32"))
        # Inside the traced step, reading a variable returns its traced
        # value (Keras' StatelessScope): the anchors and the strength are
        # state, not constants (a new strength needs no new compilation).
        anchor, fisher = (None if v is None else ops.convert_to_tensor(v)
                          for v in (self.anchor, self.fisher))
        value = ops.cast(value, "float32")
        loss = ops.convert_to_tensor(self.scale) * self.term(
            value, anchor, fisher)
        if self.previous is not None:
            loss = loss + ops.cast(self.previous(value), "float32")
        return loss


class Penalty:
    """Base of kft's forgetting penalties (see `kft.regularize`).

    Subclasses set `strength_names` and implement `bind(model, binding)`.
    """

    strength_names = ()

    def __init__(self, **strengths):
        for name, value in strengths.items():
            check_number(name, value, low=0.0)
        self._strengths = {k: float(v) for k, v in strengths.items()}
        # Anchors / Fisher values read from a side file (`load_penalty`),
        # by variable path; `None`: take the model's weights at binding.
        self.saved_anchors = None
        self.saved_fisher = None
        self.bound = None

    def get_config(self):
        return dict(self._strengths)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # -- binding ------------------------------------------------------------

    def bind(self, model, binding):
        raise NotImplementedError

    def anchors_for(self, variables, model):
        """path -> float32 array: saved anchors (checked against
        `variables`), else the variables' current values."""
        if self.saved_anchors is None:
            # `.value`: Keras' `numpy()` warns under NumPy 2 (per variable).
            return {v.path: np.asarray(v.value, "float32")
                    for v in variables}
        return entries_for("anchors", self.saved_anchors, variables, model)

    # -- side file ----------------------------------------------------------

    def save(self, path):
        """Writes the bound penalty's config, anchors and Fisher values
        (npz keyed by variable path) to `path`; `kft.load_penalty` reads it.
        """
        if self.bound is None:
            raise ValueError(
                f"{self!r} is not bound to a model: call "
                "kft.regularize(model, penalty) before penalty.save(path).")
        head = {"class": type(self).__name__, "config": self.get_config()}
        fisher = getattr(self, "fisher", None)
        if fisher is not None:  # EWC's: what its values are, beside them
            head["fisher"] = {"kind": fisher.kind,
                              "num_samples": fisher.num_samples,
                              "normalize": fisher.normalize}
        arrays = {_CONFIG_KEY: np.array(json.dumps(head))}
        for p, variable in self.bound.anchors.items():
            arrays[f"anchor:{p}"] = variable.numpy()
        for p, variable in self.bound.fisher.items():
            arrays[f"fisher:{p}"] = variable.numpy()
        write_file(path, npz_bytes(**arrays))
        return path


def check_unique_paths(model, what):
    """Raises unless `model`'s weights have distinct paths: anchors and
    Fisher values are kept (and saved) by path, and two
    `keras.applications` backbones built in one model share theirs (one
    would be anchored to the other's weights)."""
    counts = collections.Counter(
        v.path for v in _compat.weight_variables(model))
    repeated = [path for path, n in counts.items() if n > 1]
    if repeated:
        raise ValueError(
            f"{what} keeps its values by variable path, but model "
            f"{model.name!r} has {len(repeated)} paths held by several "
            f"variables (e.g. {repeated[:3]}): backbones built with the "
            "same layer names (keras.applications). Build each one inside "
            "its own name scope, e.g. `with keras.name_scope(\"rgb\"): "
            "keras.applications.MobileNetV3Small(..., name=\"rgb\")`, so "
            "their variables get distinct paths.")


def _stable_keys(paths):
    """A key per variable path that another model of the same architecture
    gives its variable too: each path segment without the number Keras
    appends to automatic names (`layer_normalization_1`, `variable_35`:
    counters of the process, which differ between two models built in one
    process, or before and after `load_model`), then the path's rank among
    those with that name, by those numbers (counters grow in the order
    layers are made, the same in both models)."""
    def parts(path):
        return [re.fullmatch(r"(.*?)(?:_(\d+))?", part).groups()
                for part in path.split("/")]

    names = ["/".join(name for name, _ in parts(path)) for path in paths]
    numbers = [tuple(-1 if n is None else int(n) for _, n in parts(path))
               for path in paths]
    keys = []
    for name, number in zip(names, numbers):
        rank = sum(other == name and earlier < number
                   for other, earlier in zip(names, numbers))
        keys.append(f"{name}#{rank}")
    return keys


def entries_for(what, entries, variables, model):
    """`{variable path: array}` of `entries` (path -> array, from another
    model of the same architecture or a file) for `variables`: by path,
    or, where paths hold automatic numbers that differ (ConvNeXt's layer
    scales), by their stable keys. Raises as `check_entries` when neither
    fits, and when `entries` hold variables `model` has no counterpart of
    (a head's aside)."""
    if all(v.path in entries and np.shape(entries[v.path]) == tuple(v.shape)
           for v in variables):
        _check_unused(what, entries, model)
        return {v.path: entries[v.path] for v in variables}
    # Stable keys of all the model's variables (as `entries` was written),
    # not only of those asked for.
    model_keys = dict(zip((v.path for v in variables),
                          _stable_keys([v.path for v in variables])))
    entry_keys = dict(zip(_stable_keys(list(entries)), entries))
    found = {v.path: entry_keys.get(model_keys[v.path]) for v in variables}
    if all(path is not None and np.shape(entries[path]) == tuple(v.shape)
           for v, path in zip(variables, found.values())):
        _check_unused(what, entries, model)
        return {key: entries[path] for key, path in found.items()}
    check_entries(what, entries, variables)
    return {v.path: entries[v.path] for v in variables}


def _check_unused(what, entries, model):
    """Refuses entries for variables `model` has no counterpart of (by
    path or stable key), a head's aside (the source task's head, kft's
    `head_*` layers, a kept source head): those of a deeper model of the
    same family (an EfficientNetB1's Fisher holds every path of a B0's)."""
    paths = [v.path for v in model.variables]
    known = set(paths) | set(_stable_keys(paths))
    foreign = [path for path, key in zip(entries, _stable_keys(list(entries)))
               if path not in known and key not in known
               and not path.split("/")[0].startswith("head")
               and "source_head" not in path]
    if foreign:
        raise ValueError(
            f"The {what} hold {len(foreign)} entries for variables this "
            f"model does not have, e.g. {foreign[:4]}: computed for another "
            "(deeper) model? Compute them on the pretrained model of this "
            "architecture.")


def check_entries(what, entries, variables):
    """Raises naming the variables `entries` (path -> array) lacks and the
    shapes that differ."""
    missing = [v.path for v in variables if v.path not in entries]
    wrong = [f"{v.path}: model {tuple(v.shape)}, {what} "
             f"{tuple(np.shape(entries[v.path]))}" for v in variables
             if v.path in entries
             and tuple(np.shape(entries[v.path])) != tuple(v.shape)]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"missing for {len(missing)} variable(s) of the "
                         f"model: {missing[:8]}"
                         + (" ..." if len(missing) > 8 else ""))
        if wrong:
            parts.append(f"shapes differ for {len(wrong)}: {wrong[:8]}")
        raise ValueError(
            f"The {what} do not fit this model (computed for another "
            f"model?): {'; '.join(parts)}. The {what} hold "
            f"{len(entries)} entries, e.g. {sorted(entries)[:4]}.")


def load_penalty(path):
    """Reads a penalty written by `penalty.save(path)`, with its anchors
    and Fisher values; bind it with `kft.regularize(model, penalty)`.

    Example:
    >>> import kft, tempfile, os
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> path = os.path.join(tempfile.mkdtemp(), "l2sp.npz")
    >>> _ = kft.regularize(model, kft.L2SP(0.01)).save(path)
    >>> kft.load_penalty(path)
    L2SP(alpha=0.01, beta=0.0)
    """
    from kft.regularizers import ewc, l2sp, lwf

    classes = {"L2SP": l2sp.L2SP, "EWC": ewc.EWC, "LwF": lwf.LwF}
    with np.load(path, allow_pickle=False) as data:
        if _CONFIG_KEY not in data:
            fail_argument("path", "a file written by penalty.save(path)",
                          path)
        head = _saved_head(data[_CONFIG_KEY], path, classes)
        anchors = {k[len("anchor:"):]: data[k] for k in data.files
                   if k.startswith("anchor:")}
        fisher = {k[len("fisher:"):]: data[k] for k in data.files
                  if k.startswith("fisher:")}
    cls = classes[head["class"]]
    try:
        if "fisher" in head:
            from kft.regularizers.fisher import FisherInformation

            fisher = FisherInformation(fisher, **head["fisher"])
        penalty = cls.from_saved(head["config"], fisher)
    except (KeyError, TypeError) as error:  # a header of another shape
        raise ValueError(
            f"{path!r} is not a penalty file kft can read: its "
            f"{head['class']} settings do not fit ({type(error).__name__}: "
            f"{error})") from error
    penalty.saved_anchors = anchors
    return penalty


def _saved_head(value, path, classes):
    """The header of a penalty file, checked: a mapping naming one of
    `classes`, with its settings."""
    try:
        head = json.loads(str(value))
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{path!r} is not a penalty file kft can read: its "
                         f"header is not JSON ({error})") from error
    if (not isinstance(head, dict) or head.get("class") not in classes
            or not isinstance(head.get("config"), dict)
            or not isinstance(head.get("fisher", {}), dict)):
        raise ValueError(
            f"{path!r} is not a penalty file kft can read: its header must "
            f"name a penalty among {sorted(classes)} with its settings "
            f"(penalty.save(path) writes one)")
    return head
