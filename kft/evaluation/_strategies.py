"""What `kft.compare_strategies` accepts: strategies, seeds, data.

A strategy is a name (`"partial:2"`), a dict of `kft.fine_tune` arguments
or a training function; each is parsed into `(label, fine_tune overrides
or None, function or None)` before anything trains.
"""

from collections.abc import Sequence

from kft._validation import check_int
from kft._validation import fail_argument
from kft.training.fine_tune_checks import RECIPES

# Strategy names `compare_strategies` takes; "partial" and "discriminative"
# also take a count or a decay after a colon ("partial:2").
STRATEGY_NAMES = ("feature_extraction", "partial", "gradual", "full",
                  "discriminative")
DEFAULT_LAYER_DECAY = 0.7
# Set by `compare_strategies` itself, so not accepted in `fine_tune_kwargs`.
OWN_ARGUMENTS = ("strategy", "epochs", "head_epochs", "verbose")
# Test metrics recorded per run, from `kft.evaluate`'s report.
METRICS = ("accuracy", "balanced_accuracy", "top_k_accuracy",
           "macro_precision", "macro_recall", "macro_f1", "weighted_f1",
           "expected_calibration_error")


def _spec_error(index, spec, why=""):
    fail_argument(
        f"strategies[{index}]",
        f"one of {STRATEGY_NAMES}, 'partial:<blocks>', "
        "'discriminative:<decay>', a dict {'name': ..., 'strategy': ..., "
        "<fine_tune arguments>} or {'name': ..., 'train': f}, or a function "
        f"f(model, train, val, seed){why}", spec)


def _parse_name(index, spec):
    """`(label, fine_tune overrides)` of a strategy given by name."""
    name, _, value = spec.partition(":")
    if name not in STRATEGY_NAMES or (value and name not in (
            "partial", "discriminative")):
        _spec_error(index, spec)
    if name == "partial":
        if not value:
            return spec, {"strategy": "partial"}
        if not value.isdigit() or int(value) < 1:
            _spec_error(index, spec, " (blocks: an integer >= 1)")
        return spec, {"strategy": "partial", "n_blocks": int(value)}
    if name == "discriminative":
        try:
            decay = float(value) if value else DEFAULT_LAYER_DECAY
        except ValueError:
            decay = -1.0
        if not 0.0 < decay <= 1.0:
            _spec_error(index, spec, " (decay: a number in (0, 1])")
        return spec, {"strategy": "full", "layer_decay": decay}
    return spec, {"strategy": name}


def _parse_strategy(index, spec):
    """`(label, fine_tune overrides or None, training function or None)`."""
    if isinstance(spec, str):
        return (*_parse_name(index, spec), None)
    if callable(spec):
        label = getattr(spec, "__name__", "")
        if not label.isidentifier():
            _spec_error(index, spec, " with a name (use {'name': ..., "
                        "'train': f} for a lambda or partial)")
        return label, None, spec
    if not isinstance(spec, dict):
        _spec_error(index, spec)
    options = dict(spec)
    label = options.pop("name", None)
    if "train" in options:
        train = options.pop("train")
        if options or not callable(train) or not isinstance(label, str):
            _spec_error(index, spec, " (a 'train' dict holds just 'name' "
                        "and the function)")
        return label, None, train
    if options.get("strategy") not in RECIPES or set(options) & set(
            OWN_ARGUMENTS[1:]):
        _spec_error(index, spec, f" (a dict's 'strategy': one of {RECIPES};"
                    f" not {OWN_ARGUMENTS[1:]}: the budget is shared)")
    if label is None:
        label = ",".join(f"{k}={v}" if k != "strategy" else str(v)
                         for k, v in options.items())
    return str(label), options, None


def parse_strategies(strategies):
    if isinstance(strategies, (str, dict)) or callable(strategies) or not (
            isinstance(strategies, Sequence) and strategies):
        fail_argument("strategies", "a non-empty list of strategies",
                      strategies)
    parsed = [_parse_strategy(i, spec) for i, spec in enumerate(strategies)]
    labels = [label for label, _, _ in parsed]
    for label in labels:
        if labels.count(label) > 1:
            fail_argument("strategies", f"strategies of distinct names; "
                          f"{label!r} appears {labels.count(label)} times",
                          strategies)
    return parsed


def check_seeds(seeds):
    if isinstance(seeds, (str, bytes)) or not isinstance(
            seeds, Sequence) or not seeds:
        fail_argument("seeds", "a non-empty list of distinct integer seeds",
                      seeds)
    seeds = [check_int(f"seeds[{i}]", s, min_value=0)
             for i, s in enumerate(seeds)]
    for seed in seeds:
        if seeds.count(seed) > 1:
            fail_argument("seeds", f"distinct seeds (runs are paired by "
                          f"seed); {seed} appears {seeds.count(seed)} times",
                          seeds)
    return seeds


def check_data(name, data, required=True):
    if data is None and not required:
        return
    if data is None:
        fail_argument(name, "labelled data: an (x, y) pair or a dataset",
                      data)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        size = len(data[1]) if hasattr(data[1], "__len__") else None
        if size == 0 or len(data[0]) != size:
            raise ValueError(
                f"Argument `{name}` must hold at least one example, as many "
                f"labels as images. Received: {name} with {len(data[0])} "
                f"images and {size} labels")
    elif hasattr(data, "__len__") and len(data) == 0:
        raise ValueError(f"Argument `{name}` must hold at least one batch. "
                         f"Received: an empty {type(data).__name__}")
