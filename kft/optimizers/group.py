"""`GroupOptimizer`: a different Keras optimizer per group of variables."""

import keras

from kft import _compat
from kft.optimizers.routed import RoutedOptimizer
from kft.optimizers.routed import check_rate
from kft.optimizers.routed import deserialize_optimizer
from kft.optimizers.routed import rate_as_passed


@keras.saving.register_keras_serializable(package="kft")
class GroupOptimizer(RoutedOptimizer):
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
    >>> model.compile(opt, keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))  # kft's classifiers output logits
    """

    def __init__(self, optimizers, *, default, model=None, patterns=None,
                 exclude_bias_and_norm=False, learning_rate=1.0,
                 assignments=None, **kwargs):
        if not isinstance(optimizers, dict):
            raise TypeError("Argument `optimizers` must be a dict of group to "
                            f"optimizer. Received: optimizers={optimizers!r}")
        optimizers = {k: deserialize_optimizer(o) for k, o in optimizers.items()}
        default = deserialize_optimizer(default)
        inners = [(f"optimizers[{k!r}]", o) for k, o in optimizers.items()]
        inners.append(("default", default))
        # One object per group: built twice, the second build dropped the
        # first group's slots (a KeyError at the first step).
        first = {}
        for where, inner in inners:
            if not isinstance(inner, keras.optimizers.Optimizer):
                continue  # refused by type below, naming the argument
            if id(inner) in first:
                raise ValueError(
                    f"Argument {where} is the same optimizer object as "
                    f"{first[id(inner)]}: give each group its own optimizer "
                    "(e.g. keras.optimizers.SGD(...) for each), or use "
                    "kft.BlockwiseOptimizer for one optimizer at "
                    "per-group rates.")
            first[id(inner)] = where
        schedule = keras.optimizers.schedules.LearningRateSchedule
        for where, inner in inners:
            if (isinstance(inner, keras.optimizers.Optimizer)
                    and not isinstance(_compat.raw_learning_rate(inner),
                                       schedule)):
                where = f"{where} ({type(inner).__name__})"
                check_rate("learning_rate", rate_as_passed(
                    _compat.raw_learning_rate(inner), where), where=where)
        routes = {k: (i, 1.0) for i, k in enumerate(optimizers)}
        super().__init__(inners, routes, (len(optimizers), 1.0),
                         model=model, patterns=patterns,
                         assignments=assignments,
                         exclude_bias_and_norm=exclude_bias_and_norm,
                         learning_rate=learning_rate, **kwargs)

    def _group_rate(self, inner, learning_rate):
        rate = _compat.raw_learning_rate(inner)
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = rate(self.iterations)
        return learning_rate * rate

    def get_config(self):
        config = self._routed_config()
        keys = list(self._group_routes)
        config.update(
            optimizers={k: keras.optimizers.serialize(self._inners[i])
                        for i, k in enumerate(keys)},
            default=keras.optimizers.serialize(self._inners[-1]))
        return config
