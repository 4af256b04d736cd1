"""Per-block learning rates that survive unfreezing.

`BlockwiseOptimizer` wraps one Keras optimizer and gives each group of
variables (a block of `kft.get_blocks`, or a regex over variable paths) its
own learning rate, like PyTorch `param_groups`. `GroupOptimizer` gives each
group its own optimizer (e.g. SGD for the backbone, AdamW for the head).

Both route every trainable variable to an inner optimizer with a rate
multiplier, and implement `retarget(variables)`, which `kft.freeze` /
`kft.changing_trainable` call whenever the trainable set changes (also
mid-`fit`): variables that stay trainable keep their slots, new ones get
fresh slots and their group's rate.

Groups: a key that names a block of `kft.get_blocks(model, patterns)` is
that block; any other key is a regex searched in variable paths. A key that
names a block and, read as a regex, also matches variables outside it is
an error, not silently one of the two.

Bias correction: every variable has its own step count, the number of
updates it received since it (last) became trainable, stored as the start
step in the `start_steps` optimizer variable. Adam-family corrections of a
newly unfrozen variable thus start at step 1, as in a PyTorch param group
added later. With a plain Keras Adam's shared counter, the first update of
a variable added at step t is (1 - beta_1) * sqrt(1 - beta_2**t) /
((1 - beta_1**t) * sqrt(1 - beta_2)) times its rate, whatever the
gradient: 2.5x at t=1000 and up to 3.2x with the default betas.
"""

import contextlib
import numbers
import re

import keras
import numpy as np
from keras import ops

from kft._validation import check_number
from kft.blocks import get_blocks
from kft.training_state import rebuild_optimizer

_INNER_ONLY_DEFAULTS = {
    "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
    "use_ema": False, "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


def layerwise_lr(model, base_lr, decay, patterns=None):
    """Layer-wise decayed learning rates: eta_l = base_lr * decay**(L - l).

    Blocks are those of `kft.get_blocks(model, patterns)`, stem first
    (l = 0) to head (l = L).

    Args:
        model: A built `keras.Model`, e.g. from `kft.build_classifier`.
        base_lr: The head's learning rate, a number > 0.
        decay: The factor alpha per block, in (0, 1].
        patterns: Block patterns for `kft.get_blocks`; pass the same ones
            to `BlockwiseOptimizer(..., patterns=)`. Defaults to `None`.

    Returns:
        `dict` of block name to learning rate, stem first.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> kft.layerwise_lr(model, 1e-3, 0.5)["block3"]
    0.0005
    """
    base_lr = _check_rate("base_lr", base_lr, positive=True)
    decay = check_number("decay", decay, low=0.0, high=1.0, low_open=True)
    names = list(get_blocks(model, patterns))
    last = len(names) - 1
    return {n: base_lr * decay ** (last - i) for i, n in enumerate(names)}


class _RoutedOptimizer(keras.optimizers.Optimizer):
    """Routes each variable to `(inner index, rate multiplier)` by group."""

    def __init__(self, inners, routes, default_route, *, model, patterns,
                 assignments, exclude_bias_and_norm, learning_rate,
                 **kwargs):
        for key, inner in inners:
            _check_inner(key, inner)
        if patterns is not None and model is None and assignments is None:
            raise ValueError(
                "Argument `patterns` needs `model=`, the model whose blocks "
                f"they define. Received: patterns={patterns!r}, model=None")
        if (learning_rate is not None and not isinstance(
                learning_rate,
                keras.optimizers.schedules.LearningRateSchedule)):
            learning_rate = _check_rate("learning_rate", learning_rate)
        for key in ("weight_decay", "use_ema", "gradient_accumulation_steps"):
            if kwargs.get(key):
                hint = ("; set it on the inner optimizer(s)"
                        if key == "weight_decay" else "")
                raise ValueError(
                    f"Argument `{key}` is not supported on "
                    f"{type(self).__name__}{hint}. "
                    f"Received: {key}={kwargs[key]!r}")
            kwargs.pop(key, None)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._inners = [inner for _, inner in inners]
        self._group_routes = dict(routes)
        self._default_route = default_route
        self.exclude_bias_and_norm = bool(exclude_bias_and_norm)
        self.patterns = _plain_patterns(patterns)
        # A block name need not be a valid regex; only keys read as
        # regexes must compile.
        self._patterns = [(k, _compile(k)) for k in self._group_routes]
        self._assignments = dict(assignments) if assignments else None
        if model is not None:
            self._assignments = self._resolve(model)
        elif self._assignments is None:
            for key, regex in self._patterns:
                if regex is None:
                    re.compile(key)  # Raises, naming the regex error.
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
                if v.path in owner:
                    raise ValueError(
                        f"Variable {v.path!r} is matched by two groups: "
                        f"{owner[v.path]!r} and {key!r}.")
                owner[v.path] = key
        return owner

    def _route(self, variable):
        if self._assignments is not None:
            key = self._assignments.get(variable.path)
            return self._group_routes[key] if key else self._default_route
        hits = [k for k, r in self._patterns if r.search(variable.path)]
        if len(hits) > 1:
            raise ValueError(f"Variable {variable.path!r} is matched by two "
                             f"groups: {hits[0]!r} and {hits[1]!r}.")
        return self._group_routes[hits[0]] if hits else self._default_route

    @property
    def variables(self):
        return self._variables[:] + [
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

    def _track(self, variables, old_starts):
        """Points own state at `variables`; starts of new ones are now."""
        if self._start_steps is not None:
            self._variables[:] = [v for v in self._variables
                                  if v is not self._start_steps]
        # Bypasses Keras' tracking, which would list the model's variables
        # among the optimizer's own.
        object.__setattr__(self, "_trainable_variables", list(variables))
        self._trainable_variables_indices = {
            self._var_key(v): i for i, v in enumerate(variables)}
        self._routes = [self._route(v) for v in variables]
        now = int(ops.convert_to_numpy(self._iterations.value))
        self._start_steps = self.add_variable(
            (len(variables),), initializer="zeros", dtype="int32",
            name="start_steps")
        self._start_steps.assign(
            [old_starts.get(id(v), now) for v in variables])

    def retarget(self, variables):
        """Points the built optimizer at `variables` (the new trainable
        set): slots and step counts of variables already tracked are kept,
        new variables get fresh ones and their group's rate."""
        variables = list(variables)
        if [id(v) for v in variables] == [
                id(v) for v in self._trainable_variables]:
            return
        starts = ops.convert_to_numpy(self._start_steps.value)
        old = {id(v): int(s)
               for v, s in zip(self._trainable_variables, starts)}
        self._track(variables, old)
        for i, inner in enumerate(self._inners):
            rebuild_optimizer(inner, [v for v, r in zip(variables,
                                                        self._routes)
                                      if r[0] == i])

    def _apply_weight_decay(self, variables):
        pass  # Done per group in `_backend_update_step`.

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        starts = ops.convert_to_tensor(self._start_steps)
        for grad, var in zip(grads, trainable_variables):
            i = self._get_variable_index(var)
            inner_index, multiplier = self._routes[i]
            inner = self._inners[inner_index]
            lr = ops.cast(self._group_rate(inner, learning_rate) * multiplier,
                          var.dtype)
            if inner.weight_decay and self._decays(inner, var):
                wd = ops.cast(inner.weight_decay, var.dtype)
                var.assign(var - var * wd * lr)
            with _local_steps(inner, self._iterations - starts[i]):
                inner.update_step(grad, var, lr)

    def _group_rate(self, inner, learning_rate):
        return learning_rate

    def _decays(self, inner, var):
        if self.exclude_bias_and_norm and len(var.shape) <= 1:
            return False
        return inner._use_weight_decay(var)

    def _routed_config(self):
        config = super().get_config()
        config.update(exclude_bias_and_norm=self.exclude_bias_and_norm,
                      patterns=self.patterns, assignments=self._assignments)
        return config


@keras.saving.register_keras_serializable(package="kft")
class BlockwiseOptimizer(_RoutedOptimizer):
    """Wraps a Keras optimizer with a learning rate per block or regex group.

    A variable in a group with rate `r` is updated by the wrapped optimizer's
    `update_step` at `r / base_learning_rate` times the current learning
    rate, so a `LearningRateSchedule`, `ReduceLROnPlateau` or
    `LearningRateScheduler` scales every group and keeps the ratios. Weight
    decay (from the wrapped optimizer, e.g. `AdamW(weight_decay=...)`) is
    decoupled with each group's rate, `var -= r_t * wd * var`, as PyTorch's
    AdamW. Each variable counts its own steps from when it became trainable
    (see the module docstring), so an unfrozen block's Adam bias correction
    starts afresh while other variables keep their moments.

    The update rule is the wrapped Keras optimizer's. Keras' Adam adds
    `epsilon` to `sqrt(v)` before the bias correction, PyTorch's to
    `sqrt(v_hat)` after it: Keras' `epsilon` acts as PyTorch's
    `eps = epsilon / sqrt(1 - beta_2**t)` (31.6x larger at step 1 with
    `beta_2=0.999`), so Adam updates match `torch.optim` only where
    `epsilon` is negligible next to `sqrt(v)`.

    Args:
        optimizer: A Keras optimizer instance (SGD, Adam, AdamW, RMSprop,
            Lion, ...), unbuilt, without clipping/EMA/accumulation options
            (set `clipnorm`/`global_clipnorm` on this wrapper instead).
        learning_rates: `dict` of group to rate, e.g. from
            `kft.layerwise_lr`. A group is a block name of
            `kft.get_blocks(model, patterns)` (needs `model`), else a regex
            searched in variable paths; a block name whose regex reading
            matches variables outside the block raises. Defaults to `None`
            (no groups).
        default: Rate of variables in no group. Defaults to `None`
            (`base_learning_rate`).
        model: The model, to resolve block names and check every group
            against all its variables, frozen ones included. Without it,
            groups are regexes checked against the variables the optimizer is
            built on. Defaults to `None`.
        patterns: Block patterns for `kft.get_blocks` (needs `model`): the
            ones given to `kft.layerwise_lr` / `kft.freeze`. Defaults to
            `None` (the model's own blocks).
        base_learning_rate: The rate the `learning_rates` are relative to.
            Defaults to `None`: the optimizer's learning rate (a float; with a
            schedule, this argument is required).
        exclude_bias_and_norm: Exclude variables with <= 1 dimension (biases,
            norm scales and offsets) from weight decay. Defaults to `False`.
        learning_rate: Overrides the wrapped optimizer's learning rate (float
            or schedule). Defaults to `None`.
        assignments: `dict` of variable path to group, as resolved from
            `model` (set by `from_config`). Defaults to `None`.
        **kwargs: `clipnorm`, `global_clipnorm`, `clipvalue`, `name`, ...

    Raises:
        ValueError: a negative or non-finite rate, a group matching no
            variable, a variable matched by two groups (both named), an
            ambiguous group, an unsupported inner option.
        TypeError: a non-numeric rate, or `optimizer` not a Keras optimizer.

    Example:
    >>> import keras, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> opt = kft.BlockwiseOptimizer(
    ...     keras.optimizers.Adam(1e-3),
    ...     kft.layerwise_lr(model, 1e-3, 0.5), model=model)
    >>> model.compile(opt, "sparse_categorical_crossentropy")

    With your own blocks, pass the same `patterns` to both:
    >>> patterns = {"lower": "^(stem|block1)_", "upper": "^block[23]_",
    ...             "head": "^head_"}
    >>> opt = kft.BlockwiseOptimizer(
    ...     keras.optimizers.Adam(1e-3),
    ...     kft.layerwise_lr(model, 1e-3, 0.5, patterns=patterns),
    ...     model=model, patterns=patterns)
    """

    def __init__(self, optimizer, learning_rates=None, *, default=None,
                 model=None, patterns=None, base_learning_rate=None,
                 exclude_bias_and_norm=False, learning_rate=None,
                 assignments=None, **kwargs):
        if isinstance(optimizer, dict):
            optimizer = keras.optimizers.deserialize(optimizer)
        _check_inner("optimizer", optimizer)
        inner_lr = optimizer._learning_rate
        schedule = keras.optimizers.schedules.LearningRateSchedule
        # The learning rate that becomes the base must be > 0.
        positive = base_learning_rate is None
        if learning_rate is None:
            if not isinstance(inner_lr, schedule):
                _check_rate("learning_rate", _as_passed(inner_lr),
                            positive=positive,
                            where=f"the wrapped {type(optimizer).__name__}")
                learning_rate = float(ops.convert_to_numpy(inner_lr.value))
            else:
                learning_rate = inner_lr
        elif not isinstance(learning_rate, schedule):
            learning_rate = _check_rate("learning_rate", learning_rate,
                                        positive=positive)
        if base_learning_rate is None:
            if isinstance(learning_rate, schedule):
                raise ValueError(
                    "Argument `base_learning_rate` must be given when the "
                    "learning rate is a schedule. Received: "
                    "base_learning_rate=None")
            base_learning_rate = learning_rate
        base_learning_rate = _check_rate("base_learning_rate",
                                         base_learning_rate, positive=True)
        learning_rates = {
            key: _check_rate(f"learning_rates[{key!r}]", rate)
            for key, rate in dict(learning_rates or {}).items()}
        if default is not None:
            default = _check_rate("default", default)
        routes = {k: (0, r / base_learning_rate)
                  for k, r in learning_rates.items()}
        default_route = (0, 1.0 if default is None
                         else default / base_learning_rate)
        super().__init__([("optimizer", optimizer)], routes, default_route,
                         model=model, patterns=patterns,
                         assignments=assignments,
                         exclude_bias_and_norm=exclude_bias_and_norm,
                         learning_rate=learning_rate, **kwargs)
        self.learning_rates = learning_rates
        self.default = default
        self.base_learning_rate = base_learning_rate

    def get_config(self):
        config = self._routed_config()
        config.update(optimizer=keras.optimizers.serialize(self._inners[0]),
                      learning_rates=self.learning_rates,
                      default=self.default,
                      base_learning_rate=self.base_learning_rate)
        return config


@keras.saving.register_keras_serializable(package="kft")
class GroupOptimizer(_RoutedOptimizer):
    """A different Keras optimizer per group (the MultiOptimizer form).

    Each variable is updated by its group's optimizer at that optimizer's
    own learning rate (a schedule is evaluated at the global step) times
    this wrapper's `learning_rate`, a scale that `ReduceLROnPlateau` and
    `LearningRateScheduler` act on. Unlike `keras.optimizers.MultiOptimizer`
    it survives unfreezing (`retarget`) and counts steps per variable (see
    the module docstring). Weight decay is decoupled: `var -= lr * wd * var`.

    Args:
        optimizers: `dict` of group to an unbuilt Keras optimizer. A group
            is a block name of `kft.get_blocks(model, patterns)` (needs
            `model`), else a regex over variable paths; a block name whose
            regex reading matches variables outside the block raises.
        default: Optimizer of the variables in no group.
        model: The model to resolve block names against. Defaults to `None`.
        patterns: Block patterns for `kft.get_blocks` (needs `model`).
            Defaults to `None` (the model's own blocks).
        exclude_bias_and_norm: Exclude variables with <= 1 dimension from
            weight decay. Defaults to `False`.
        learning_rate: Scale on every group's rate. Defaults to `1.0`.
        assignments: `dict` of variable path to group (set by
            `from_config`). Defaults to `None`.
        **kwargs: `clipnorm`, `global_clipnorm`, `clipvalue`, `name`, ...

    Example:
    >>> import keras, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> opt = kft.GroupOptimizer(
    ...     {"head": keras.optimizers.AdamW(1e-3)},
    ...     default=keras.optimizers.SGD(1e-2, momentum=0.9), model=model)
    >>> model.compile(opt, "sparse_categorical_crossentropy")
    """

    def __init__(self, optimizers, *, default, model=None, patterns=None,
                 exclude_bias_and_norm=False, learning_rate=1.0,
                 assignments=None, **kwargs):
        if not isinstance(optimizers, dict):
            raise TypeError("Argument `optimizers` must be a dict of group to "
                            f"optimizer. Received: optimizers={optimizers!r}")
        optimizers = {k: _deserialize(o) for k, o in optimizers.items()}
        default = _deserialize(default)
        inners = [(f"optimizers[{k!r}]", o) for k, o in optimizers.items()]
        inners.append(("default", default))
        schedule = keras.optimizers.schedules.LearningRateSchedule
        for where, inner in inners:
            if (isinstance(inner, keras.optimizers.Optimizer)
                    and not isinstance(inner._learning_rate, schedule)):
                _check_rate("learning_rate", _as_passed(inner._learning_rate),
                            where=f"{where} ({type(inner).__name__})")
        routes = {k: (i, 1.0) for i, k in enumerate(optimizers)}
        super().__init__(inners, routes, (len(optimizers), 1.0),
                         model=model, patterns=patterns,
                         assignments=assignments,
                         exclude_bias_and_norm=exclude_bias_and_norm,
                         learning_rate=learning_rate, **kwargs)

    def _group_rate(self, inner, learning_rate):
        rate = inner._learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = rate(self._iterations)
        return learning_rate * rate

    def get_config(self):
        config = self._routed_config()
        keys = list(self._group_routes)
        config.update(
            optimizers={k: keras.optimizers.serialize(self._inners[i])
                        for i, k in enumerate(keys)},
            default=keras.optimizers.serialize(self._inners[-1]))
        return config


def _deserialize(optimizer):
    if isinstance(optimizer, dict):
        return keras.optimizers.deserialize(optimizer)
    return optimizer


def _check_rate(name, value, *, positive=False, where=None):
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


def _as_passed(variable):
    """The value a user passed for a float32 optimizer variable: the
    shortest decimal that rounds to it (`-0.1`, not -0.10000000149...)."""
    value = np.asarray(ops.convert_to_numpy(variable.value))
    return float(str(value[()]))


def _compile(key):
    try:
        return re.compile(key)
    except (re.error, TypeError):
        return None


def _plain_patterns(patterns):
    """`patterns` in a JSON-stable form (a dict, or a list of lists)."""
    if patterns is None or isinstance(patterns, dict):
        return patterns
    if isinstance(patterns, (list, tuple)):
        return [p if isinstance(p, str) else list(p) for p in patterns]
    return patterns  # `get_blocks` rejects it, naming the argument.


def _check_inner(name, inner):
    if (not isinstance(inner, keras.optimizers.Optimizer)
            or isinstance(inner, (keras.optimizers.LossScaleOptimizer,
                                  _RoutedOptimizer))):
        raise TypeError(f"Argument `{name}` must be a Keras optimizer "
                        f"instance such as keras.optimizers.Adam(1e-3); "
                        f"Received: {name}={inner!r}")
    base = keras.optimizers.Optimizer._backend_update_step
    if type(inner)._backend_update_step is not base:
        raise TypeError(f"Argument `{name}` must update each variable on its "
                        f"own; {type(inner).__name__} keeps shared per-step "
                        f"state. Received: {name}={inner!r}")
    for key, default in _INNER_ONLY_DEFAULTS.items():
        if getattr(inner, key, default) != default:
            raise ValueError(
                f"Argument `{name}` must not set `{key}`; set it on the "
                f"wrapper instead. Received: {key}={getattr(inner, key)!r}")
    if inner.built:
        raise ValueError(f"Argument `{name}` must be an unbuilt optimizer; "
                         f"Received a built {type(inner).__name__}.")


@contextlib.contextmanager
def _local_steps(inner, steps):
    """Makes `inner.iterations` read a variable's own step count."""
    saved = inner._iterations
    object.__setattr__(inner, "_iterations", steps)
    try:
        yield
    finally:
        object.__setattr__(inner, "_iterations", saved)
