"""Learning-rate schedules Keras lacks: one-cycle and a linear warm-up.

Both are `keras.optimizers.schedules.LearningRateSchedule`s: an optimizer
calls them with its step count inside the compiled train step, so they use
`keras.ops` only. For cosine decay (with or without restarts) use Keras'
own `keras.optimizers.schedules.CosineDecay` / `CosineDecayRestarts`; wrap
any of them (or a constant) in `Warmup`.

With a `kft.BlockwiseOptimizer` the schedule sets the base rate and every
block trains at its ratio of it; the schedule follows the optimizer's
global step, so a block unfrozen at step `s` starts at the schedule's
value at `s` times its ratio.
"""

import math

import keras
from keras import ops

from kft._validation import check_bool
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import fail_argument

ANNEAL_STRATEGIES = ("cos", "linear")


def _positive(name, value):
    return check_number(name, value, low=0.0, low_open=True)


def _fraction(name, value):
    return check_number(name, value, low=0.0, high=1.0, low_open=True,
                        high_open=True)


def _anneal(strategy, start, end, pct, remaining):
    """PyTorch's cos / linear anneal from `start` to `end` at `pct`.

    `remaining` is `1 - pct`, computed without cancellation. Written as an
    offset from the nearer end (`cos(pi * pct) + 1` = `2 sin^2(pi *
    remaining / 2)`), float32 keeps the small rates near either end to a
    few 1e-7 relative.
    """
    def weight(fraction):
        if strategy == "cos":
            return ops.square(ops.sin(0.5 * math.pi * fraction))
        return fraction

    return ops.where(pct < 0.5, start + (end - start) * weight(pct),
                     end + (start - end) * weight(remaining))


def _phase_ends(total_steps, pct_start, three_phase):
    """Last step of each phase, as `torch.optim.lr_scheduler.OneCycleLR`
    places them (floats; the last phase ends at `total_steps - 1`)."""
    if three_phase:
        ends = [pct_start * total_steps - 1, 2 * pct_start * total_steps - 2,
                total_steps - 1.0]
    else:
        ends = [pct_start * total_steps - 1, total_steps - 1.0]
    starts = [0.0] + ends[:-1]
    if any(end <= start for start, end in zip(starts, ends)):
        fail_argument(
            "pct_start", f"such that every phase of the {total_steps}-step "
            f"cycle is at least one step long (pct_start * total_steps > 1"
            f"{' and 2 * pct_start < 1' if three_phase else ''})", pct_start)
    return ends


def _cycle(step, ends, values, strategy):
    """The value at `step` of a cycle going through `values` (one more than
    phases), annealed in each phase, in the first phase whose last step is
    >= `step` (or the last phase); after the last step it stays at the last
    value (PyTorch extrapolates the last phase at `total_steps` and
    raises after)."""
    step = ops.minimum(ops.cast(step, "float32"), ends[-1])
    result = None
    for i in reversed(range(len(ends))):
        start = 0.0 if i == 0 else ends[i - 1]
        length = ends[i] - start
        value = _anneal(strategy, values[i], values[i + 1],
                        (step - start) / length, (ends[i] - step) / length)
        result = value if result is None else ops.where(
            step <= ends[i], value, result)
    return result


class _OneCycleShape(keras.optimizers.schedules.LearningRateSchedule):
    """What the rate and momentum cycles share: steps and phases."""

    def __init__(self, total_steps, pct_start, anneal_strategy, three_phase,
                 name):
        super().__init__()
        self.total_steps = check_int("total_steps", total_steps, min_value=2)
        self.pct_start = _fraction("pct_start", pct_start)
        self.anneal_strategy = check_choice("anneal_strategy",
                                            anneal_strategy,
                                            ANNEAL_STRATEGIES)
        self.three_phase = check_bool("three_phase", three_phase)
        self.name = name
        self._ends = _phase_ends(self.total_steps, self.pct_start,
                                 self.three_phase)

    def values(self):
        raise NotImplementedError

    def __call__(self, step):
        with keras.name_scope(self.name):
            return _cycle(step, self._ends, self.values(),
                          self.anneal_strategy)

    def __repr__(self):  # not "<... object at 0x...>" in a notebook
        return _config_repr(self)

    def get_config(self):
        return {"total_steps": self.total_steps, "pct_start": self.pct_start,
                "anneal_strategy": self.anneal_strategy,
                "three_phase": self.three_phase, "name": self.name}


@keras.saving.register_keras_serializable(package="kft")
class OneCycle(_OneCycleShape):
    """The one-cycle learning rate of PyTorch's `OneCycleLR`.

    The rate rises from `max_learning_rate / div_factor` to
    `max_learning_rate` over the first `pct_start` of `total_steps`, then
    anneals to `max_learning_rate / div_factor / final_div_factor` at step
    `total_steps - 1` (with `three_phase`, back down to the initial rate
    first, then to the minimum). Step `k` (0-based, the optimizer's
    `iterations`) has PyTorch's rate after `k` calls of
    `scheduler.step()`; from `total_steps` on the rate stays at the
    minimum (PyTorch extrapolates the last phase at `total_steps`, below
    the minimum for "linear", and raises after).

    The inverse momentum cycle (`max_momentum` down to `base_momentum`
    while the rate rises, and back) is `momentum_schedule()`: pass it as
    `momentum_schedule=` to `kft.BlockwiseOptimizer`, which sets the
    wrapped optimizer's `beta_1` (Adam family, Lion) or `momentum` (SGD,
    RMSprop) from it at every step.

    Args:
        max_learning_rate: The peak rate, > 0.
        total_steps: Steps of the cycle (optimizer updates), >= 2.
        pct_start: Fraction of the steps spent rising, in (0, 1).
            Defaults to `0.3`.
        anneal_strategy: `"cos"` or `"linear"`. Defaults to `"cos"`.
        div_factor: Initial rate = `max_learning_rate / div_factor`.
            Defaults to `25.0`.
        final_div_factor: Minimum rate = initial rate / `final_div_factor`.
            Defaults to `1e4`.
        three_phase: PyTorch's three-phase variant. Defaults to `False`.
        name: Defaults to `"OneCycle"`.

    Raises:
        ValueError: a non-positive rate or factor, `total_steps < 2`,
            `pct_start` outside (0, 1) or leaving a phase shorter than a
            step, an unknown `anneal_strategy`.

    Example:
    >>> import kft
    >>> schedule = kft.OneCycle(1.0, total_steps=10, div_factor=10.0)
    >>> [round(float(schedule(step)), 3) for step in (0, 2, 9)]
    [0.1, 1.0, 0.0]

    References:
        Smith & Topin, "Super-Convergence", 2017
        (https://arxiv.org/abs/1708.07120).
    """

    def __init__(self, max_learning_rate, total_steps, *, pct_start=0.3,
                 anneal_strategy="cos", div_factor=25.0,
                 final_div_factor=1e4, three_phase=False, name="OneCycle"):
        self.max_learning_rate = _positive("max_learning_rate",
                                           max_learning_rate)
        self.div_factor = _positive("div_factor", div_factor)
        self.final_div_factor = _positive("final_div_factor",
                                          final_div_factor)
        super().__init__(total_steps, pct_start, anneal_strategy,
                         three_phase, name)

    def values(self):
        top = self.max_learning_rate
        initial = top / self.div_factor
        low = initial / self.final_div_factor
        if self.three_phase:
            return [initial, top, initial, low]
        return [initial, top, low]

    def momentum_schedule(self, base_momentum=0.85, max_momentum=0.95):
        """The inverse momentum cycle matching this rate cycle.

        Args:
            base_momentum: Momentum at the peak rate, in (0, 1).
                Defaults to `0.85`.
            max_momentum: Momentum at the start and end, in (0, 1).
                Defaults to `0.95`.

        Returns:
            A `OneCycleMomentum`.

        Example:
        >>> import kft
        >>> momentum = kft.OneCycle(1.0, 10).momentum_schedule()
        >>> [round(float(momentum(step)), 3) for step in (0, 2, 9)]
        [0.95, 0.85, 0.95]
        """
        return OneCycleMomentum(
            self.total_steps, base_momentum=base_momentum,
            max_momentum=max_momentum, pct_start=self.pct_start,
            anneal_strategy=self.anneal_strategy,
            three_phase=self.three_phase)

    def get_config(self):
        config = super().get_config()
        config.update(max_learning_rate=self.max_learning_rate,
                      div_factor=self.div_factor,
                      final_div_factor=self.final_div_factor)
        return config


@keras.saving.register_keras_serializable(package="kft")
class OneCycleMomentum(_OneCycleShape):
    """The momentum (or Adam `beta_1`) cycle of PyTorch's `OneCycleLR`:
    `max_momentum` down to `base_momentum` while the rate rises, back up
    while it anneals (three-phase: back up, then flat). Usually made by
    `OneCycle.momentum_schedule()`; arguments as there and in `OneCycle`.

    Example:
    >>> import kft
    >>> momentum = kft.optimizers.schedules.OneCycleMomentum(10)
    >>> round(float(momentum(2)), 3)
    0.85
    """

    def __init__(self, total_steps, *, base_momentum=0.85, max_momentum=0.95,
                 pct_start=0.3, anneal_strategy="cos", three_phase=False,
                 name="OneCycleMomentum"):
        self.base_momentum = _fraction("base_momentum", base_momentum)
        self.max_momentum = _fraction("max_momentum", max_momentum)
        super().__init__(total_steps, pct_start, anneal_strategy,
                         three_phase, name)

    def values(self):
        low, high = self.base_momentum, self.max_momentum
        return [high, low, high, high] if self.three_phase else [high, low,
                                                                  high]

    def get_config(self):
        config = super().get_config()
        config.update(base_momentum=self.base_momentum,
                      max_momentum=self.max_momentum)
        return config


@keras.saving.register_keras_serializable(package="kft")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up before any schedule (or a constant rate).

    For `step < warmup_steps` the rate rises linearly from `initial_value`
    (at step 0) towards the wrapped schedule's first value (reached at step
    `warmup_steps`); from then on it is `schedule(step - warmup_steps)`, so
    the wrapped schedule runs in full after the warm-up (as Keras'
    `CosineDecay(warmup_steps=...)` does).

    Args:
        schedule: A `LearningRateSchedule` or a rate > 0.
        warmup_steps: Steps of the warm-up, >= 1.
        initial_value: The rate at step 0, >= 0. Defaults to `0.0`.
        name: Defaults to `"Warmup"`.

    Raises:
        ValueError: a non-positive rate, `warmup_steps < 1`, a negative
            `initial_value`.
        TypeError: `schedule` neither a schedule nor a number.

    Example:
    >>> import keras, kft
    >>> cosine = keras.optimizers.schedules.CosineDecay(1.0, decay_steps=8)
    >>> schedule = kft.Warmup(cosine, warmup_steps=4)
    >>> [round(float(schedule(step)), 3) for step in (0, 2, 4, 8, 12)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(self, schedule, warmup_steps, *, initial_value=0.0,
                 name="Warmup"):
        super().__init__()
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        if not isinstance(schedule,
                          keras.optimizers.schedules.LearningRateSchedule):
            if isinstance(schedule, (str, bytes)) or not hasattr(
                    schedule, "__float__"):
                fail_argument("schedule", "a LearningRateSchedule or a "
                              "number > 0", schedule, TypeError)
            schedule = _positive("schedule", schedule)
        self.schedule = schedule
        self.warmup_steps = check_int("warmup_steps", warmup_steps,
                                      min_value=1)
        self.initial_value = check_number("initial_value", initial_value,
                                          low=0.0)
        self.name = name

    def _after(self, step):
        if isinstance(self.schedule, float):
            return ops.convert_to_tensor(self.schedule, "float32")
        return ops.cast(self.schedule(step), "float32")

    def __call__(self, step):
        with keras.name_scope(self.name):
            step = ops.cast(step, "float32")
            warm = float(self.warmup_steps)
            target = self._after(ops.convert_to_tensor(0, "int32"))
            ramp = self.initial_value + (target - self.initial_value) * (
                step / warm)
            after = self._after(ops.cast(ops.maximum(step - warm, 0.0),
                                         "int32"))
            return ops.where(step < warm, ramp, after)

    def __repr__(self):
        return (f"Warmup({self.schedule!r}, warmup_steps="
                f"{self.warmup_steps}, initial_value={self.initial_value})")

    def get_config(self):
        schedule = self.schedule
        if not isinstance(schedule, float):
            schedule = keras.optimizers.schedules.serialize(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps,
                "initial_value": self.initial_value, "name": self.name}


def _config_repr(schedule):
    """`Name(key=value, ...)` of `schedule`'s config, its name left out."""
    config = {k: v for k, v in schedule.get_config().items() if k != "name"}
    return (f"{type(schedule).__name__}("
            + ", ".join(f"{k}={v!r}" for k, v in config.items()) + ")")
