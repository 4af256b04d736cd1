"""The routing base of kft's optimizers: each variable to an inner optimizer
with a rate multiplier, per-variable step counts, re-targeting."""

import numbers
import re
import warnings
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from kft import _compat
from kft._validation import check_bool
from kft._validation import user_stacklevel
from kft._validation import check_number
from kft.models.blocks import get_blocks
from kft.optimizers.momentum import momentum_attribute
from kft.optimizers.momentum import scheduled_momentum




class Route(NamedTuple):
    """Where a variable's gradient goes: the inner optimizer's index and the
    factor on the learning rate."""

    inner: int
    multiplier: float

INNER_ONLY_DEFAULTS = {
    "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
    "use_ema": False, "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}
NO_ACCUMULATION = ("per-group optimizers do not accumulate gradients, "
                   "neither the wrapper nor its inner optimizers: use a "
                   "larger batch, or one plain Keras optimizer with "
                   "gradient_accumulation_steps")



class RoutedOptimizer(_compat.per_variable_optimizer_base()):
    """Routes each variable to `(inner index, rate multiplier)` by group."""

    def __init__(self, inners, routes, default_route, *, model, patterns,
                 assignments, exclude_bias_and_norm, learning_rate,
                 momentum_schedule=None, ema_overwrite_at_end=True,
                 assignments_complete=False,
                 **kwargs):
        for key, inner in inners:
            check_inner(key, inner)
        if isinstance(momentum_schedule, dict):
            momentum_schedule = keras.optimizers.schedules.deserialize(
                momentum_schedule)
        if momentum_schedule is not None and not isinstance(
                momentum_schedule,
                keras.optimizers.schedules.LearningRateSchedule):
            raise TypeError(
                "Argument `momentum_schedule` must be a keras.optimizers."
                "schedules.LearningRateSchedule (e.g. kft.OneCycle(...)."
                "momentum_schedule()) or None. Received: "
                f"momentum_schedule={momentum_schedule!r}")
        if patterns is not None and model is None and assignments is None:
            raise ValueError(
                "Argument `patterns` needs `model=`, the model whose blocks "
                f"they define. Received: patterns={patterns!r}, model=None")
        if (learning_rate is not None and not isinstance(
                learning_rate,
                keras.optimizers.schedules.LearningRateSchedule)):
            learning_rate = check_rate("learning_rate", learning_rate)
        for key in ("weight_decay", "gradient_accumulation_steps"):
            if kwargs.get(key):
                hint = ("; set it on the inner optimizer(s)"
                        if key == "weight_decay" else "; " + NO_ACCUMULATION)
                raise ValueError(
                    f"Argument `{key}` is not supported on "
                    f"{type(self).__name__}{hint}. "
                    f"Received: {key}={kwargs[key]!r}")
            kwargs.pop(key, None)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._inners = [inner for _, inner in inners]
        self.momentum_schedule = momentum_schedule
        self._momentum_attributes = [
            None if momentum_schedule is None
            else momentum_attribute(key, inner) for key, inner in inners]
        self.ema_overwrite_at_end = check_bool("ema_overwrite_at_end",
                                               ema_overwrite_at_end)
        self._group_routes = {k: Route(*r) for k, r in routes.items()}
        self._default_route = Route(*default_route)
        self.exclude_bias_and_norm = check_bool("exclude_bias_and_norm",
                                                exclude_bias_and_norm)
        self.patterns = plain_patterns(patterns)
        # A block name need not be a valid regex; only keys read as
        # regexes must compile.
        self._patterns = [(k, compile_pattern(k)) for k in self._group_routes]
        self._assignments = dict(assignments) if assignments else None
        # Whether `assignments` lists every path, the default group's too
        # (saved by this version; an older one listed grouped paths only).
        self._complete = check_bool("assignments_complete",
                                    assignments_complete)
        # The groups of `model`'s variables by identity: two
        # `keras.applications` backbones in one model hold variables of
        # the same paths (`_assignments`, by path, is what a config keeps).
        self._owners, self._ambiguous = {}, []
        if model is not None:
            groups = self._resolve(model)
            # Every variable of the model: None for the default group.
            self._owners = {id(v): groups.get(id(v)) for v in model.weights}
            keys = {}
            for v in model.weights:
                keys.setdefault(v.path, set()).add(self._owners[id(v)])
            self._ambiguous = sorted(p for p, k in keys.items()
                                     if len(k) > 1)
            # Every path in model order, the default group's too (`None`):
            # a loaded model may name them otherwise (`_renamed`). The
            # first variable of a repeated path decides it.
            self._assignments = {}
            for v in model.weights:
                self._assignments.setdefault(v.path, groups.get(id(v)))
            self._complete = True
        elif self._assignments is None:
            for key, regex in self._patterns:
                if regex is None:
                    try:
                        re.compile(key)
                    except (re.error, TypeError) as error:
                        raise ValueError(
                            f"Group key {key!r} is not a regular expression "
                            f"over variable paths ({error}); without "
                            "`model=` the keys are read as such. Fix the "
                            "pattern, or pass model= to name blocks."
                        ) from None
        self._routes = []
        self._start_steps = None

    def _resolve(self, model):
        blocks = get_blocks(model, self.patterns)
        candidates = list(model.weights)
        owner = {}
        for key, regex in self._patterns:
            if key in blocks:
                ids = {id(v) for layer in blocks[key] for v in layer.weights}
                hits = [v for v in candidates if id(v) in ids]
                others = [v for v in candidates if id(v) not in ids
                          and regex is not None and regex.search(v.path)]
                if others:
                    raise ValueError(
                        f"Group {key!r} is ambiguous: it names a block of "
                        f"model {model.name!r} and, read as a regex, also "
                        f"matches variables outside that block (e.g. "
                        f"{others[0].path!r}). For the block, rename it in "
                        f"`patterns`; for the regex, write one that is not "
                        f"a block name (e.g. {'(?:' + key + ')'!r}).")
            elif regex is None:
                raise ValueError(
                    f"Group {key!r} is neither a block name {list(blocks)} "
                    f"of model {model.name!r} nor a valid regex.")
            else:
                hits = [v for v in candidates if regex.search(v.path)]
            if not hits:
                raise ValueError(
                    f"Group {key!r} matches no variable of model "
                    f"{model.name!r}: it is neither a block name "
                    f"{list(blocks)}"
                    f" nor a regex matching a variable path (e.g. "
                    f"{candidates[0].path!r}). Blocks of "
                    f"`kft.get_blocks(model, patterns)` need the same "
                    f"`patterns=` here.")
            for v in hits:
                if id(v) in owner:
                    raise ValueError(
                        f"Variable {v.path!r} is matched by two groups: "
                        f"{owner[id(v)]!r} and {key!r}.")
                owner[id(v)] = key
        return owner

    def _route(self, variable, renamed):
        if self._assignments is not None:
            # By identity where known; by path for other variables (a
            # model's layers swapped after, `kft.fast_cpu_convs`, or a
            # loaded model).
            if id(variable) in self._owners:
                key = self._owners[id(variable)]
            elif id(variable) in renamed:
                key = renamed[id(variable)]
            else:
                key = self._assignments.get(variable.path)
            return self._group_routes[key] if key else self._default_route
        hits = [k for k, r in self._patterns if r.search(variable.path)]
        if len(hits) > 1:
            raise ValueError(f"Variable {variable.path!r} is matched by two "
                             f"groups: {hits[0]!r} and {hits[1]!r}.")
        return self._group_routes[hits[0]] if hits else self._default_route

    def _renamed(self, variables):
        """`{id: group}` of `variables` whose saved paths Keras renamed.

        Keras names a nested Sequential's variables after the model when
        it is built (`sequential/d1/kernel`), not when loaded (`d1/kernel`,
        maybe twice: nested models reusing a layer name), and another
        instance's `sequential_1/...`: a loaded model's variables fell
        into the default group, or another layer's. A path several
        variables share takes, in model order, the saved paths ending in
        it when as many were saved; a path not saved takes the group of
        the saved paths (of no variable here) sharing the most trailing
        names with it (the layer's and the variable's at least), or, tied
        between groups, takes them in model order when as many are built
        (else the default group, with a warning). Only for configs that
        list every path (`assignments_complete`): an older one lists
        grouped paths only, so an unlisted path is the default group's.
        """
        if not self._assignments or not self._complete:
            return {}
        by_path = {}
        for v in variables:
            if id(v) not in self._owners:
                by_path.setdefault(v.path, []).append(v)
        built = {v.path for v in variables}
        unbuilt = [p for p in self._assignments if p not in built]
        renamed, unsure = {}, []
        for path, group in by_path.items():
            if path in self._assignments:
                if len(group) > 1:  # as many saved paths end in it: theirs
                    ends = [p for p in self._assignments
                            if p == path or p.endswith("/" + path)]
                    if len(ends) == len(group):
                        renamed.update((id(v), self._assignments[p])
                                       for v, p in zip(group, ends))
                continue
            candidates = _closest(path, unbuilt)
            keys = {self._assignments[c] for c in candidates}
            if len(keys) == 1:
                renamed.update((id(v), keys.pop()) for v in group)
            elif len(candidates) == len(group):
                renamed.update((id(v), self._assignments[c])
                               for v, c in zip(group, candidates))
            elif candidates:
                unsure.append(path)
        if unsure:
            warnings.warn(
                f"{type(self).__name__}: {len(unsure)} variable path(s) not "
                f"among the saved ones (e.g. {unsure[0]!r}) end like saved "
                "paths of different groups; they train in the default "
                "group. Give the layers distinct names, or build the "
                "optimizer again with model=.", UserWarning,
                stacklevel=user_stacklevel())
        return renamed

    @property
    def variables(self):
        return _compat.own_variables(self)[:] + [
            v for inner in self._inners for v in inner.variables]

    def build(self, variables):
        variables = list(variables)
        if self._assignments is None:
            for key, regex in self._patterns:
                if not any(regex.search(v.path) for v in variables):
                    raise ValueError(
                        f"Group {key!r} matches no variable path; pass "
                        f"`model=` to use block names. First path: "
                        f"{variables[0].path if variables else None!r}")
        super().build(variables)
        self._track(variables, {})
        for i, inner in enumerate(self._inners):
            inner.build([v for v, r in zip(variables, self._routes)
                         if r[0] == i])

    def _track(self, variables, old_starts, old_averages=None):
        """Points own state at `variables`; starts of new ones are now,
        and (with `use_ema`) their averages start at their values."""
        own = _compat.own_variables(self)
        dropped = [self._start_steps] + (
            list(_compat.moving_averages(self) or []) if self.use_ema else [])
        own[:] = [v for v in own if not any(v is d for d in dropped)]
        _compat.set_tracked(self, variables)
        renamed = self._renamed(variables)
        self._routes = [self._route(v, renamed) for v in variables]
        now = int(ops.convert_to_numpy(self.iterations.value))
        self._start_steps = self.add_variable(
            (len(variables),), initializer="zeros", dtype="int32",
            name="start_steps")
        self._start_steps.assign(
            [old_starts.get(id(v), now) for v in variables])
        if self.use_ema:
            # Keras' own averages would start at zero and rely on a first
            # step at iteration 0; a variable unfrozen later starts at its
            # value instead.
            old_averages = old_averages or {}
            averages = []
            for v in variables:
                average = self.add_variable_from_reference(v, "average")
                # A copy: a shared buffer would be donated twice by `fit`.
                average.assign(ops.copy(old_averages.get(id(v), v.value)))
                averages.append(average)
            _compat.set_moving_averages(self, averages)

    def retarget(self, variables):
        """Points the built optimizer at `variables` (the new trainable
        set): slots and step counts of variables already tracked are kept,
        new variables get fresh ones and their group's rate."""
        variables = list(variables)
        if [id(v) for v in variables] == [
                id(v) for v in _compat.tracked_variables(self)]:
            return
        starts = ops.convert_to_numpy(self._start_steps.value)
        tracked = _compat.tracked_variables(self)
        old = {id(v): int(s) for v, s in zip(tracked, starts)}
        averages = {}
        if self.use_ema:
            averages = {id(v): a.value for v, a in zip(
                tracked, _compat.moving_averages(self))}
        self._track(variables, old, averages)
        for i, inner in enumerate(self._inners):
            _compat.rebuild_optimizer(inner, [v for v, r in zip(variables,
                                                        self._routes)
                                      if r[0] == i])

    def update_variables(self, grads, variables, learning_rate):
        # Weight decay per group, then the inner optimizer's step with the
        # variable's own step count.
        starts = ops.convert_to_tensor(self._start_steps)
        momentum = (None if self.momentum_schedule is None
                    else self.momentum_schedule(self.iterations))
        for grad, var in zip(grads, variables):
            i = _compat.variable_index(self, var)
            inner_index, multiplier = self._routes[i]  # a `Route`
            inner = self._inners[inner_index]
            lr = ops.cast(self._group_rate(inner, learning_rate) * multiplier,
                          var.dtype)
            decay = _compat.weight_decay_for(inner, var)
            if decay and self._decays(inner, var):
                wd = ops.cast(decay, var.dtype)
                var.assign(var - var * wd * lr)
            with _compat.local_iterations(inner, self.iterations - starts[i]
                                          ), scheduled_momentum(
                    inner, self._momentum_attributes[inner_index], momentum):
                inner.update_step(grad, var, lr)

    def finalize_variable_values(self, var_list):
        """At the end of `fit`: with `use_ema`, the model's trainable
        weights become their averages (Keras' behaviour), unless
        `ema_overwrite_at_end=False`."""
        if not (self.use_ema and self.ema_overwrite_at_end):
            return
        averages = _compat.moving_averages(self)
        if len(var_list) != len(averages):
            raise ValueError(
                f"finalize_variable_values got {len(var_list)} variables; "
                f"the optimizer averages {len(averages)}.")
        for variable, average in zip(var_list, averages):
            # A copy: Keras' plain assignment shares the buffer, which the
            # next `fit` step then donates twice.
            variable.assign(ops.copy(average.value))

    def _group_rate(self, inner, learning_rate):
        return learning_rate

    def _decays(self, inner, var):
        if self.exclude_bias_and_norm and len(var.shape) <= 1:
            return False
        # `exclude_from_weight_decay` called on the wrapper (the optimizer
        # given to `compile`) counts as on each inner optimizer.
        return (_compat.uses_weight_decay(inner, var)
                and _compat.uses_weight_decay(self, var))

    def _routed_config(self):
        if self._ambiguous:
            warnings.warn(
                f"{type(self).__name__}: variables of one path are in "
                f"different groups ({len(self._ambiguous)} paths, e.g. "
                f"{self._ambiguous[0]!r}: backbones built with the same layer "
                "names); the config keeps groups by path, so a copy loaded "
                "from it routes each such path to one group. Build each "
                "backbone inside its own `keras.name_scope` for distinct "
                "paths.", UserWarning, stacklevel=2)
        config = super().get_config()
        config.update(exclude_bias_and_norm=self.exclude_bias_and_norm,
                      patterns=self.patterns, assignments=self._assignments,
                      assignments_complete=self._complete,
                      ema_overwrite_at_end=self.ema_overwrite_at_end,
                      momentum_schedule=None if self.momentum_schedule is None
                      else keras.optimizers.schedules.serialize(
                          self.momentum_schedule))
        return config



def _closest(path, saved):
    """The paths of `saved` sharing the most trailing names with `path`
    (at least two: the layer's and the variable's), in `saved` order."""
    names = path.split("/")[::-1]
    best, closest = 2, []
    for other in saved:
        shared = 0
        for mine, theirs in zip(names, other.split("/")[::-1]):
            if mine != theirs:
                break
            shared += 1
        if shared > best:
            best, closest = shared, [other]
        elif shared == best:
            closest.append(other)
    return closest


def deserialize_optimizer(optimizer):
    """A wrapped optimizer from its saved config (other values as they
    are)."""
    if isinstance(optimizer, dict):
        found = keras.optimizers.deserialize(optimizer)
        if isinstance(found, str):
            # An optimizer Keras' own list lacks (Lamb) came back as its
            # class name: loading a wrapper of one failed.
            found = keras.saving.deserialize_keras_object(optimizer)
        return found
    return optimizer


def check_rate(name, value, *, positive=False, where=None):
    """Returns `value` as a finite float >= 0 (> 0 if `positive`).

    `where` names what the argument belongs to when the user did not pass
    it to kft directly (the wrapped optimizer)."""
    try:
        if (not isinstance(value, numbers.Real)
                or isinstance(value, (bool, np.bool_))):
            raise TypeError(f"Argument `{name}` must be a number. "
                            f"Received: {name}={value!r}")
        return check_number(name, value, low=0.0, low_open=positive)
    except (TypeError, ValueError) as error:
        if where is None:
            raise
        raise type(error)(f"{error} (from {where})") from None


def rate_as_passed(variable, where):
    """The value a user passed for a float32 optimizer variable: the
    shortest decimal that rounds to it (`-0.1`, not -0.10000000149...).
    Refuses a callable rate (Keras takes one; the per-block rates are
    scaled from a number or a schedule)."""
    if not isinstance(variable, keras.Variable):
        raise TypeError(
            f"Argument `learning_rate` of {where} must be a number or a "
            "keras.optimizers.schedules.LearningRateSchedule: kft scales "
            "it per block. Received: learning_rate="
            f"{getattr(variable, '__qualname__', None) or repr(variable)}")
    value = np.asarray(ops.convert_to_numpy(variable.value))
    return float(str(value[()]))


def compile_pattern(key):
    try:
        return re.compile(key)
    except (re.error, TypeError):
        return None


def plain_patterns(patterns):
    """`patterns` in a JSON-stable form (a dict, or a list of lists)."""
    if patterns is None or isinstance(patterns, dict):
        return patterns
    if isinstance(patterns, (list, tuple)):
        return [p if isinstance(p, str) else list(p) for p in patterns]
    return patterns  # `get_blocks` rejects it, naming the argument.


def check_inner(name, inner):
    if not isinstance(inner, keras.optimizers.Optimizer):
        raise TypeError(f"Argument `{name}` must be a Keras optimizer "
                        f"instance such as keras.optimizers.Adam(1e-3); "
                        f"Received: {name}={inner!r}")
    # Each is an optimizer, but not one to wrap (the message said "must
    # be a Keras optimizer instance").
    why = {keras.optimizers.LossScaleOptimizer: (
               "pass the optimizer it wraps: under the mixed_float16 "
               "policy Keras wraps the kft optimizer itself at compile"),
           RoutedOptimizer: "kft's per-group optimizers do not nest: give "
                            "one the groups and rates of both",
           keras.optimizers.MultiOptimizer: (
               "give kft.GroupOptimizer one optimizer per group")}
    for kind, advice in why.items():
        if isinstance(inner, kind):
            raise TypeError(
                f"Argument `{name}` must be a single Keras optimizer, not a "
                f"{type(inner).__name__}: {advice}. Received: "
                f"{name}={inner!r}")
    if not _compat.updates_variables_independently(inner):
        raise TypeError(f"Argument `{name}` must update each variable on its "
                        f"own; {type(inner).__name__} keeps shared per-step "
                        f"state. Received: {name}={inner!r}")
    for key, default in INNER_ONLY_DEFAULTS.items():
        if getattr(inner, key, default) != default:
            where = (NO_ACCUMULATION if key == "gradient_accumulation_steps"
                     else "set it on the wrapper instead")
            raise ValueError(
                f"Argument `{name}` must not set `{key}`; {where}. "
                f"Received: {key}={getattr(inner, key)!r}")
    if inner.built:
        raise ValueError(f"Argument `{name}` must be an unbuilt optimizer; "
                         f"Received a built {type(inner).__name__}.")
