"""`BlockwiseOptimizer` and `layerwise_lr`: a learning rate per block."""

from collections.abc import Mapping

import keras
from keras import ops

from kft import _compat
from kft._validation import check_number
from kft._validation import fail_argument
from kft.models.blocks import get_blocks
from kft.optimizers.routed import RoutedOptimizer
from kft.optimizers.routed import check_inner
from kft.optimizers.routed import check_rate
from kft.optimizers.routed import deserialize_optimizer
from kft.optimizers.routed import rate_as_passed


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
    base_lr = check_rate("base_lr", base_lr, positive=True)
    decay = check_number("decay", decay, low=0.0, high=1.0, low_open=True)
    names = list(get_blocks(model, patterns))
    last = len(names) - 1
    return {n: base_lr * decay ** (last - i) for i, n in enumerate(names)}



@keras.saving.register_keras_serializable(package="kft")
class BlockwiseOptimizer(RoutedOptimizer):
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
        TypeError: a non-numeric rate, `learning_rates` not a dict of
            strings to rates, or `optimizer` not a Keras optimizer.

    Example:
    >>> import keras, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> opt = kft.BlockwiseOptimizer(
    ...     keras.optimizers.Adam(1e-3),
    ...     kft.layerwise_lr(model, 1e-3, 0.5), model=model)
    >>> model.compile(opt, keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))  # kft's classifiers output logits

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
        optimizer = deserialize_optimizer(optimizer)
        check_inner("optimizer", optimizer)
        inner_lr = _compat.raw_learning_rate(optimizer)
        schedule = keras.optimizers.schedules.LearningRateSchedule
        # The learning rate that becomes the base must be > 0.
        positive = base_learning_rate is None
        if learning_rate is None:
            if not isinstance(inner_lr, schedule):
                where = f"the wrapped {type(optimizer).__name__}"
                check_rate("learning_rate", rate_as_passed(inner_lr, where),
                           positive=positive, where=where)
                learning_rate = float(ops.convert_to_numpy(inner_lr.value))
            else:
                learning_rate = inner_lr
        elif not isinstance(learning_rate, schedule):
            learning_rate = check_rate("learning_rate", learning_rate,
                                        positive=positive)
        if base_learning_rate is None:
            if isinstance(learning_rate, schedule):
                raise ValueError(
                    "Argument `base_learning_rate` must be given when the "
                    "learning rate is a schedule. Received: "
                    "base_learning_rate=None")
            base_learning_rate = learning_rate
        base_learning_rate = check_rate("base_learning_rate",
                                         base_learning_rate, positive=True)
        if learning_rates is not None and (
                not isinstance(learning_rates, Mapping)
                or not all(isinstance(key, str) for key in learning_rates)):
            fail_argument(
                "learning_rates", "a dict of group (a block name or a regex "
                "of variable paths) to rate, e.g. kft.layerwise_lr(model, "
                "1e-3, 0.7), or None", learning_rates, TypeError)
        learning_rates = {
            key: check_rate(f"learning_rates[{key!r}]", rate)
            for key, rate in dict(learning_rates or {}).items()}
        if default is not None:
            default = check_rate("default", default)
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
