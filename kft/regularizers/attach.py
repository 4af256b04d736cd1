"""Binding a penalty to a model: `kft.regularize`."""

import keras

from kft import _compat
from kft._evaluation_step import without_penalty_in_evaluation
from kft._validation import fail_argument
from kft.models.blocks import head_layers
from kft.regularizers.penalty import STATE_ATTRIBUTE
from kft.regularizers.penalty import Penalty
from kft.regularizers.penalty import PenaltyState
from kft.regularizers.penalty import VariableTerm
from kft.regularizers.penalty import check_unique_paths

# Attribute of the model holding its bound penalty.
PENALTY_ATTRIBUTE = "kft_penalty"


class Binding:
    """A penalty's state on one model: anchors and Fisher values (path ->
    state variable) and the regularizers it set (variable -> term)."""

    def __init__(self, model, state):
        self.model, self.state = model, state
        self.anchors, self.fisher, self.terms = {}, {}, {}
        self.cleanups, self.strengths = [], {}

    def copy(self, kind, variable, values):
        store = self.anchors if kind == "anchor" else self.fisher
        index = len(self.state.weights)
        store[variable.path] = self.state.add_copy(kind, index, values)
        return store[variable.path]

    def strength(self, name, value):
        """A scalar state variable holding a strength (read in the step)."""
        if name not in self.strengths:
            self.strengths[name] = self.state.add_copy(
                name, len(self.state.weights), value)
        return self.strengths[name]

    def add_term(self, variable, term, scale, anchor=None, fisher=None):
        wrapped = VariableTerm(term, scale, anchor, fisher,
                               variable.regularizer)
        variable.regularizer = wrapped
        self.terms[id(variable)] = (variable, wrapped)

    def unbind(self):
        for variable, wrapped in self.terms.values():
            variable.regularizer = wrapped.previous
        for cleanup in self.cleanups:
            cleanup()
        # The stored copies go too: kept, every later binding added its
        # own (a copy of the weights each time) and a weights file saved
        # then no longer loaded into a model with one penalty.
        _compat.untrack_variables(self.state, [
            *self.anchors.values(), *self.fisher.values(),
            *self.strengths.values()])
        self.anchors, self.fisher, self.strengths = {}, {}, {}
        self.terms, self.cleanups = {}, []


def split_weights(model):
    """(backbone weights, head weights) of `model`: the head is kft's
    `"head"` block (`kft.get_blocks`), the backbone every other weight of
    its graph (a `kft.DomainAdaptationModel`'s discriminator, which is
    not, is no part of the classifier kept close to theta_0); frozen
    weights included."""
    head = {id(v) for layer in head_layers(model)
            for v in _compat.weight_variables(layer)}
    layers = model.layers if _compat.is_graph_model(model) else [model]
    graph = {id(v) for layer in layers
             for v in _compat.weight_variables(layer)}
    weights = [v for v in _compat.weight_variables(model) if id(v) in graph]
    return ([v for v in weights if id(v) not in head],
            [v for v in weights if id(v) in head])


def regularize(model: keras.Model, penalty: Penalty | None) -> Penalty | None:
    """Adds a forgetting penalty to `model`'s training loss.

    The anchors (theta_0) are the model's weights now: call it on the
    pretrained model, before fine-tuning, before or after `compile` (a
    compiled model's step is re-traced). The penalty then runs inside
    every compiled train step (`fit`, `train_on_batch`), for the weights
    that train at that step: a frozen weight adds nothing, a weight
    unfrozen later (`kft.changing_trainable`, `kft.GradualUnfreezing`) is
    pulled back to its theta_0, which is its value at unfreezing since it
    did not move while frozen. Evaluation (`evaluate`, `fit`'s
    `val_loss`) leaves it out: `val_loss` is the task's loss (plus the
    weights' own regularizers), comparable between epochs before and after
    weights unfreeze, as `fine_tune`'s kept epoch and early stopping need.
    It composes with any optimizer (`kft.BlockwiseOptimizer`), mixed
    precision, `kft.BatchAugmentModel`, and keeps a weight's own
    `kernel_regularizer`.

    Saving: `model.save` keeps the weights, not the penalty. Write the
    penalty's anchors and Fisher values with `penalty.save(path)` and
    bind them again after loading with
    `kft.regularize(model, kft.load_penalty(path))`. `model.load_weights`
    of a file written without a penalty keeps the anchors (and warns):
    load weights meant as theta_0 before binding.

    Args:
        model: A built `keras.Model` (a `kft.build_classifier` model: its
            `"head"` block is the new head).
        penalty: `kft.L2SP`, `kft.EWC` or `kft.LwF`, or `None` to remove
            the bound penalty (its terms and the anchors it stored).

    Returns:
        `penalty`, bound (its `save` works from now on).

    Raises:
        TypeError: not a model, or not a penalty.
        ValueError: an unbuilt model, a model that already has a penalty,
            a penalty bound to another model, anchors / Fisher values
            that do not fit the model (their variables named), or
            `kft.L2SP` with `beta > 0` on a model without a `"head"`
            block.

    Example:
    >>> import kft, keras
    >>> inputs = keras.Input((4,))
    >>> features = keras.layers.Dense(8, name="fc")(inputs)
    >>> outputs = keras.layers.Dense(3, name="head")(features)
    >>> model = keras.Model(inputs, outputs)
    >>> penalty = kft.regularize(model, kft.L2SP(alpha=0.01))
    >>> float(keras.ops.sum(model.losses))   # theta == theta_0
    0.0
    >>> model.compile("adam", "mse")         # then model.fit(...)
    """
    if not isinstance(model, keras.Model):
        fail_argument("model", "a keras.Model", model, TypeError)
    if not model.built:
        fail_argument("model", "a built model (call it or build it first)",
                      model)
    current = getattr(model, PENALTY_ATTRIBUTE, None)
    if penalty is None:
        if current is not None:
            current.bound.unbind()
            current.bound = None
            setattr(model, PENALTY_ATTRIBUTE, None)
            _refresh(model)
        return None
    if not isinstance(penalty, Penalty):
        fail_argument("penalty", "kft.L2SP(...), kft.EWC(...), kft.LwF(...) "
                      "or None", penalty, TypeError)
    if current is not None:
        raise ValueError(
            f"The model already has a penalty ({current!r}). Remove it "
            "first: kft.regularize(model, None).")
    if penalty.bound is not None:
        raise ValueError(
            f"{penalty!r} is bound to a model already; create another "
            "penalty object for this one.")
    check_unique_paths(model, f"kft.regularize({penalty!r})")
    _compat.sync_fit_state(model)
    state = getattr(model, STATE_ATTRIBUTE, None)
    if state is None:
        state = PenaltyState(name=STATE_ATTRIBUTE)
        # A built subclassed model refuses new state unless let in.
        _compat.set_tracked_attribute(model, STATE_ATTRIBUTE, state)
    binding = Binding(model, state)
    try:
        penalty.bind(model, binding)
    except Exception:
        binding.unbind()
        raise
    binding.cleanups.append(without_penalty_in_evaluation(model))
    penalty.bound = binding
    setattr(model, PENALTY_ATTRIBUTE, penalty)
    _refresh(model)
    return penalty


def _refresh(model):
    # The step's state lists now include the anchors: trace it anew.
    if getattr(model, "compiled", False):
        from kft.training.state import refresh_training_state

        refresh_training_state(model)

