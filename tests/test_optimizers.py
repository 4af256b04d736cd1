"""Tests for kft.optimizers: per-block learning rates."""

import json
import pathlib
import re
import warnings

import kft  # selects the JAX backend before keras
import jax
import keras
import numpy as np
import pytest

from kft.optimizers import BlockwiseOptimizer, GroupOptimizer, layerwise_lr

REFERENCE = pathlib.Path(__file__).parent / "data" / (
    "torch_reference_optimizers.npz")


def _vars(**values):
    return {name: keras.Variable(np.asarray(v, "float32"), name=name)
            for name, v in values.items()}


def _cnn(size=16):
    return kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                input_shape=(size, size, 3))


def _data(n=16, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    return x, np.arange(n) % 3


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _slot(optimizer, fragment):
    hits = [v for v in optimizer.variables if fragment in v.path]
    assert len(hits) == 1, [v.path for v in optimizer.variables]
    return np.array(hits[0].numpy())


# -- layerwise_lr ----------------------------------------------------------

def test_layerwise_lr_formula():
    rates = layerwise_lr(_cnn(), 1e-3, 0.5)
    assert list(rates) == ["stem", "block1", "block2", "block3", "head"]
    for level, name in enumerate(rates):
        assert rates[name] == pytest.approx(1e-3 * 0.5 ** (4 - level))


@pytest.mark.parametrize("kwargs, match", [
    ({"base_lr": -1.0, "decay": 0.5}, "base_lr"),
    ({"base_lr": 1e-3, "decay": 0.0}, "decay"),
    ({"base_lr": 1e-3, "decay": "0.5"}, "decay"),
    ({"base_lr": float("nan"), "decay": 0.5}, "base_lr=nan"),
    ({"base_lr": 1e-3, "decay": float("nan")}, "decay=nan"),
])
def test_layerwise_lr_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layerwise_lr(_cnn(), **kwargs)


def test_layerwise_lr_accepts_numpy_numbers():
    rates = layerwise_lr(_cnn(), np.float32(0.5), np.float64(0.5))
    assert rates["head"] == 0.5 and type(rates["head"]) is float


# -- errors -----------------------------------------------------------------

@pytest.mark.parametrize("rate, shown", [(-0.1, "-0.1"), (np.nan, "nan"),
                                         (np.inf, "inf")])
def test_bad_wrapped_rate_names_the_argument_the_user_passed(rate, shown):
    """The wrapped optimizer's rate is reported as its `learning_rate`, as
    passed (not the float32 -0.10000000149...), not as an argument the user
    never gave (`base_learning_rate`)."""
    with pytest.raises(ValueError) as info:
        BlockwiseOptimizer(keras.optimizers.SGD(rate), {})
    message = str(info.value)
    assert message.startswith("Argument `learning_rate` must be a finite "
                              "number > 0")
    assert f"Received: learning_rate={shown} (from the wrapped SGD)" in (
        message)
    assert "base_learning_rate" not in message
    with pytest.raises(ValueError, match=f"learning_rate={shown} "
                       r"\(from optimizers\['x'\] \(SGD\)\)"):
        GroupOptimizer({"x": keras.optimizers.SGD(rate)},
                       default=keras.optimizers.SGD(0.1))


def test_numpy_rates_are_accepted_and_stored_as_floats():
    opt = BlockwiseOptimizer(keras.optimizers.SGD(0.1),
                             {"^a$": np.float32(0.25)}, default=np.int64(0))
    config = opt.get_config()
    assert config["learning_rates"] == {"^a$": 0.25}
    assert type(config["learning_rates"]["^a$"]) is float
    json.dumps(config)
    vs = _vars(a=[0.0], b=[0.0])
    opt.apply([np.ones(1), np.ones(1)], list(vs.values()))
    np.testing.assert_allclose([vs["a"].numpy()[0], vs["b"].numpy()[0]],
                               [-0.25, 0.0], rtol=1e-6)


def test_pattern_matching_no_variable_raises():
    with pytest.raises(ValueError, match="'nothere' matches no variable"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1), {"nothere": 0.1},
                           model=_cnn())


def test_pattern_matching_no_variable_raises_at_build_without_model():
    opt = BlockwiseOptimizer(keras.optimizers.SGD(0.1), {"^zzz": 0.1})
    with pytest.raises(ValueError, match="'\\^zzz' matches no variable"):
        opt.build(list(_vars(a=[1.0]).values()))


def test_variable_in_two_groups_raises_with_both_patterns():
    with pytest.raises(ValueError, match="'head' and 'dense'"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1),
                           {"head": 0.1, "dense": 0.2}, model=_cnn())


def test_variable_in_two_regex_groups_raises_without_model():
    opt = BlockwiseOptimizer(keras.optimizers.SGD(0.1), {"^a": 0.1, "b$": 1})
    with pytest.raises(ValueError, match="'\\^a' and 'b\\$'"):
        opt.build(list(_vars(ab=[1.0]).values()))


def test_bad_group_keys_and_a_shared_group_optimizer_are_named():
    # A bad regex raised re.error without the key; one optimizer object
    # for two groups was accepted, then a bare KeyError at the first step.
    with pytest.raises(ValueError, match=r"Group key 'head\[' is not a "
                                         "regular expression"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1), {"head[": 1e-3})
    sgd = keras.optimizers.SGD(0.1)
    with pytest.raises(ValueError, match=r"default is the same optimizer "
                                         r"object as optimizers\['head'\]"):
        kft.GroupOptimizer({"head": sgd}, default=sgd)
    with pytest.raises(ValueError, match=r"optimizers\['mid'\] is the same"):
        kft.GroupOptimizer({"low": sgd, "mid": sgd},
                           default=keras.optimizers.Adam())
    # One string for two groups is a wrong type, not a shared object.
    with pytest.raises(TypeError, match="Keras optimizer"):
        kft.GroupOptimizer({"head": "sgd"}, default="sgd")
    with pytest.raises(ValueError, match="num_examples.*-3"):
        kft.distributed.check_batch_size(8, -3)
    with pytest.raises((TypeError, ValueError), match="num_examples.*10.5"):
        kft.distributed.check_batch_size(8, 10.5)


@pytest.mark.parametrize("rates, error, match", [
    ({"head": -0.1}, ValueError, "must be a finite number >= 0"),
    ({"head": float("nan")}, ValueError, "must be a finite number >= 0"),
    ({"head": np.inf}, ValueError, "must be a finite number >= 0"),
    ({"head": "fast"}, TypeError, "must be a number"),
    ({"head": None}, TypeError, "must be a number"),
    ({"head": True}, TypeError, "must be a number"),
])
def test_bad_rates_raise(rates, error, match):
    with pytest.raises(error, match=match):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1), rates)


def test_bad_default_and_base_raise():
    with pytest.raises(ValueError,
                       match="`default` must be a finite number >= 0"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1), {}, default=-1.0)
    with pytest.raises(
            ValueError,
            match="`base_learning_rate` must be a finite number > 0"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1), {},
                           base_learning_rate=0.0)
    with pytest.raises(ValueError, match="base_learning_rate=inf"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1), {},
                           base_learning_rate=float("inf"))
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    with pytest.raises(ValueError, match="base_learning_rate=None"):
        BlockwiseOptimizer(keras.optimizers.SGD(schedule), {})


@pytest.mark.parametrize("inner, error, match", [
    ("adam", TypeError, "must be a Keras optimizer"),
    (keras.optimizers.Nadam(), TypeError, "shared per-step state"),
    (keras.optimizers.SGD(0.1, clipnorm=1.0), ValueError, "`clipnorm`"),
    (keras.optimizers.Adam(gradient_accumulation_steps=2), ValueError,
     "`gradient_accumulation_steps`"),
])
def test_bad_inner_optimizer_raises(inner, error, match):
    with pytest.raises(error, match=match):
        BlockwiseOptimizer(inner, {})


def test_built_inner_and_wrapper_weight_decay_raise():
    inner = keras.optimizers.SGD(0.1)
    inner.build(list(_vars(a=[1.0]).values()))
    with pytest.raises(ValueError, match="unbuilt"):
        BlockwiseOptimizer(inner, {})
    with pytest.raises(ValueError, match="`weight_decay` is not supported"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1), {}, weight_decay=0.1)
    # EMA is the wrapper's (tests/test_schedules.py), not the inner's.
    with pytest.raises(ValueError, match="must not set `use_ema`; set it on "
                                         "the wrapper"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1, use_ema=True), {})
    # Each said to set it on the other ("set it on the wrapper instead").
    for make in (lambda: GroupOptimizer({}, default=keras.optimizers.SGD(
                     0.1), gradient_accumulation_steps=2),
                 lambda: BlockwiseOptimizer(keras.optimizers.SGD(
                     0.1, gradient_accumulation_steps=2), {})):
        with pytest.raises(ValueError, match="`gradient_accumulation_steps`"
                           "[^;]*; per-group optimizers do not accumulate "
                           "gradients, neither the wrapper nor"):
            make()
    with pytest.raises(TypeError, match="`optimizers` must be a dict"):
        GroupOptimizer([keras.optimizers.SGD()],
                       default=keras.optimizers.SGD())


# -- update rules -----------------------------------------------------------

OPTIMIZERS = {
    "sgd_momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "sgd_nesterov": lambda lr: keras.optimizers.SGD(lr, momentum=0.9,
                                                    nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr, weight_decay=0.1),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr, momentum=0.5),
    "lion": lambda lr: keras.optimizers.Lion(lr),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_group_steps_like_its_own_plain_optimizer(name):
    """Wrapped with rates 0.01 (`a`), 0.05 (`b`) and default 0.02 (`c`),
    each variable follows a plain optimizer built at its group's rate."""
    make = OPTIMIZERS[name]
    rates = {"a": 0.01, "b": 0.05, "c": 0.02}
    init = {k: np.linspace(-1, 1, 6).reshape(2, 3) + i
            for i, k in enumerate(rates)}
    wrapped = _vars(**init)
    opt = BlockwiseOptimizer(make(0.02), {"^a$": 0.01, "^b$": 0.05})
    plain = {k: (_vars(**{k: v})[k], make(rates[k])) for k, v in init.items()}
    rng = np.random.default_rng(1)
    for _ in range(3):
        grads = {k: rng.standard_normal((2, 3)).astype("float32")
                 for k in rates}
        opt.apply([grads[k] for k in rates], list(wrapped.values()))
        for k, (var, p) in plain.items():
            p.apply([grads[k]], [var])
    for k, (var, _) in plain.items():
        np.testing.assert_allclose(wrapped[k].numpy(), var.numpy(),
                                   rtol=1e-6, atol=1e-7)
        assert not np.allclose(wrapped[k].numpy(), init[k])


def test_global_clipnorm_clips_jointly_then_scales_per_group():
    vs = _vars(a=[0.0, 0.0], b=[0.0, 0.0])
    opt = BlockwiseOptimizer(keras.optimizers.SGD(1.0), {"^a$": 1.0,
                                                         "^b$": 0.1},
                             global_clipnorm=1.0)
    opt.apply([np.array([3.0, 0.0]), np.array([0.0, 4.0])], list(vs.values()))
    np.testing.assert_allclose(vs["a"].numpy(), [-0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(vs["b"].numpy(), [0.0, -0.08], rtol=1e-6)


def test_clipnorm_clips_each_gradient():
    vs = _vars(a=[0.0, 0.0], b=[0.0, 0.0])
    opt = BlockwiseOptimizer(keras.optimizers.SGD(1.0), {"^b$": 0.5},
                             clipnorm=1.0)
    opt.apply([np.array([3.0, 4.0]), np.array([0.0, 0.5])], list(vs.values()))
    np.testing.assert_allclose(vs["a"].numpy(), [-0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(vs["b"].numpy(), [0.0, -0.25], rtol=1e-6)


def test_schedule_and_learning_rate_setter_keep_ratios():
    schedule = keras.optimizers.schedules.ExponentialDecay(1.0, 1, 0.5)
    vs = _vars(a=[0.0], b=[0.0])
    opt = BlockwiseOptimizer(keras.optimizers.SGD(schedule), {"^b$": 0.1},
                             base_learning_rate=1.0)
    deltas = []
    for _ in range(3):
        before = [v.numpy().copy() for v in vs.values()]
        opt.apply([np.ones(1), np.ones(1)], list(vs.values()))
        deltas.append([float((b - v.numpy())[0])
                       for b, v in zip(before, vs.values())])
    np.testing.assert_allclose(deltas, [[1.0, 0.1], [0.5, 0.05],
                                        [0.25, 0.025]], rtol=1e-6)
    # A float rate set later (what ReduceLROnPlateau does) scales all groups.
    opt2 = BlockwiseOptimizer(keras.optimizers.SGD(0.2), {"^b$": 0.02})
    vs2 = _vars(a=[0.0], b=[0.0])
    opt2.build(list(vs2.values()))
    opt2.learning_rate = 0.1
    opt2.apply([np.ones(1), np.ones(1)], list(vs2.values()))
    np.testing.assert_allclose([vs2["a"].numpy()[0], vs2["b"].numpy()[0]],
                               [-0.1, -0.01], rtol=1e-6)


def test_weight_decay_per_group_and_bias_exclusion():
    vs = _vars(a_kernel=[[1.0, 2.0]], a_bias=[1.0], b_kernel=[[1.0, 2.0]])
    inner = keras.optimizers.SGD(0.1, weight_decay=0.5)
    opt = BlockwiseOptimizer(inner, {"^b": 0.01}, exclude_bias_and_norm=True)
    opt.apply([np.zeros((1, 2)), np.zeros(1), np.zeros((1, 2))],
              list(vs.values()))
    np.testing.assert_allclose(vs["a_kernel"].numpy(), [[0.95, 1.9]])
    np.testing.assert_allclose(vs["a_bias"].numpy(), [1.0])
    np.testing.assert_allclose(vs["b_kernel"].numpy(), [[0.995, 1.99]])
    # Excluded on the wrapper, the optimizer given to compile (ignored).
    for by_name in (False, True):
        vs = _vars(a_kernel=[[1.0, 2.0]], b_kernel=[[1.0, 2.0]])
        exclude = ({"var_names": ["b_k"]} if by_name
                   else {"var_list": [vs["b_kernel"]]})
        opt = GroupOptimizer({"^b": keras.optimizers.SGD(
            0.1, weight_decay=0.5)}, default=keras.optimizers.SGD(
                0.1, weight_decay=0.5))
        opt.exclude_from_weight_decay(**exclude)
        opt.apply([np.zeros((1, 2))] * 2, list(vs.values()))
        np.testing.assert_allclose(vs["a_kernel"].numpy(), [[0.95, 1.9]])
        np.testing.assert_allclose(vs["b_kernel"].numpy(), [[1.0, 2.0]])


def test_groups_survive_keras_renaming_a_loaded_sequential(tmp_path):
    # Built, a Sequential's variables are `sequential/d1/kernel`; loaded
    # (or another instance, `sequential_1/...`) `d1/kernel`: the groups,
    # saved by path, no longer matched and every variable silently took
    # the default rate (and GroupOptimizer dropped its saved state).
    def sequential():
        return keras.Sequential([keras.Input((4,)),
                                 keras.layers.Dense(3, name="d1"),
                                 keras.layers.Dense(1, name="d2")])

    x, y = np.ones((4, 4), "float32"), np.ones((4, 1), "float32")
    model = sequential()
    model.compile(BlockwiseOptimizer(keras.optimizers.SGD(0.1), {"d1": 0.01},
                                     model=model), "mse")
    model.train_on_batch(x, y)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.trainable_variables[0].path == "d1/kernel"
    for other in (loaded, sequential()):
        if other is not loaded:
            other.compile(keras.optimizers.deserialize(
                keras.optimizers.serialize(model.optimizer)), "mse")
            other.set_weights(model.get_weights())
        other.train_on_batch(x, y)
        assert [r.multiplier for r in other.optimizer._routes] == \
            pytest.approx([0.1, 0.1, 1.0, 1.0])
    model.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Nested models reusing a layer name load as two `fc/kernel`: taken in
    # model order (the backbone's `fc` trained at the default rate).
    nested = keras.Sequential([
        keras.Input((4,)),
        keras.Sequential([keras.layers.Dense(3, name="fc"),
                          keras.layers.Dense(3, name="fc2")],
                         name="backbone"),
        keras.Sequential([keras.layers.Dense(1, name="fc")], name="head")])
    nested.compile(BlockwiseOptimizer(keras.optimizers.SGD(0.1),
                                      {"backbone": 0.01}, model=nested),
                   "mse")
    nested.train_on_batch(x, y)
    nested.save(tmp_path / "nested.keras")
    loaded = keras.models.load_model(tmp_path / "nested.keras")
    loaded.train_on_batch(x, y)
    assert [v.path for v in loaded.trainable_variables][::2] == [
        "fc/kernel", "fc2/kernel", "fc/kernel"]
    assert [r.multiplier for r in loaded.optimizer._routes] == \
        pytest.approx([0.1] * 4 + [1.0] * 2)
    # Groups covering every variable (layerwise_lr) were read as an older
    # config (all at the base rate); a nested model's `d1` loads with the
    # path of a top-level `d1`, which took the top-level's group.
    image = keras.Input((4,))
    block = keras.Sequential([keras.layers.Dense(3, name="d1")],
                             name="block")
    hidden = keras.layers.Dense(3, name="d1")(block(image))
    functional = keras.Model(image, keras.layers.Dense(1, name="out")(hidden))
    for model, rates in ((sequential(), {"d1": 0.05, "d2": 0.1}),
                         (functional, {"block/": 0.01})):
        model.compile(BlockwiseOptimizer(keras.optimizers.SGD(0.1), rates,
                                         model=model), "mse")
        model.train_on_batch(x, y)
        before = [r.multiplier for r in model.optimizer._routes]
        model.save(tmp_path / "again.keras")
        loaded = keras.models.load_model(tmp_path / "again.keras")
        loaded.train_on_batch(x, y)
        assert [r.multiplier for r in loaded.optimizer._routes] == \
            pytest.approx(before)
        assert len(set(before)) == 2


# -- retarget and bias correction --------------------------------------------

def test_retarget_keeps_slots_and_counts_steps_per_variable():
    vs = _vars(a=[0.0, 0.0], b=[0.0, 0.0])
    opt = BlockwiseOptimizer(keras.optimizers.Adam(0.01), {"^a$": 0.01},
                             default=0.001)
    opt.build([vs["a"]])
    for _ in range(5):
        opt.apply([np.array([1.0, -1.0])], [vs["a"]])
    m_a = _slot(opt, "a_momentum")
    kft.retarget_optimizer(opt, [vs["a"], vs["b"]])
    np.testing.assert_array_equal(_slot(opt, "a_momentum"), m_a)
    np.testing.assert_array_equal(_slot(opt, "b_momentum"), [0.0, 0.0])
    np.testing.assert_array_equal(opt._start_steps.numpy(), [0, 5])
    # Constant gradient, first Adam step of `b`: |update| == its rate (a
    # shared step counter would give ~0.5x here and up to ~3x later).
    opt.apply([np.array([1.0, -1.0]), np.array([2.0, -3.0])],
              [vs["a"], vs["b"]])
    np.testing.assert_allclose(vs["b"].numpy(), [-0.001, 0.001], rtol=1e-4)
    kft.retarget_optimizer(opt, [vs["b"]])
    assert not [v for v in opt.variables if "a_momentum" in v.path]
    np.testing.assert_array_equal(opt._start_steps.numpy(), [5])


class _UnfreezeAt(keras.callbacks.Callback):
    """Unfreezes `block3` after batch `at`, recording what the test needs."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, {}

    def on_train_batch_end(self, batch, logs=None):
        model, opt = self.model, self.model.optimizer
        kernel = model.get_layer("simple_cnn").get_layer("block3_conv")
        if batch == self.at:
            model.jax_state_sync()
            self.seen["head_m"] = _slot(opt, "head_dense_kernel_momentum")
            self.seen["head_v"] = _slot(opt, "head_dense_kernel_velocity")
            kft.freeze(model, "partial", n_blocks=1)
            self.seen["head_m_after"] = _slot(opt,
                                              "head_dense_kernel_momentum")
            self.seen["head_v_after"] = _slot(opt,
                                              "head_dense_kernel_velocity")
            self.seen["kernel"] = np.array(kernel.kernel.numpy())
        elif batch == self.at + 1:
            model.jax_state_sync()
            self.seen["kernel_next"] = np.array(kernel.kernel.numpy())


@pytest.mark.slow
def test_block_unfrozen_mid_fit_updates_at_its_rate_head_moments_carry():
    model = _cnn()
    kft.freeze(model, "feature_extraction")
    rates = layerwise_lr(model, 1e-2, 0.5)
    opt = BlockwiseOptimizer(keras.optimizers.Adam(1e-2, epsilon=1e-12),
                             rates, model=model)
    model.compile(opt, _loss())
    x, y = _data(32)
    callback = _UnfreezeAt(at=2)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False,
              callbacks=[callback])
    seen = callback.seen
    np.testing.assert_array_equal(seen["head_m"], seen["head_m_after"])
    np.testing.assert_array_equal(seen["head_v"], seen["head_v_after"])
    assert np.abs(seen["head_m"]).max() > 0
    # First Adam step of the unfrozen kernel, bias-corrected from its own
    # step 1: every entry moves by its block's rate (block3 = 5e-3).
    step = np.abs(seen["kernel_next"] - seen["kernel"])
    np.testing.assert_allclose(np.median(step), rates["block3"], rtol=1e-3)
    assert step.max() <= rates["block3"] * (1 + 1e-3)
    assert list(opt._start_steps.numpy()) == [3, 0, 0]
    assert int(opt.iterations.numpy()) == 8


# -- PyTorch parity -----------------------------------------------------------

def _parity_model():
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(8, activation="relu", name="fc1")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc2")(h))


_KERAS_KWARGS = {"eps": "epsilon"}


@pytest.mark.parametrize("case_name", ["sgd", "sgd_nesterov", "adam", "adamw",
                                       "adamw_no_bias_decay"])
def test_parity_with_torch_param_groups(case_name):
    ref = np.load(REFERENCE)
    case = json.loads(str(ref["cases"]))[case_name]
    groups = json.loads(str(ref["groups"]))
    model = _parity_model()
    for v in model.weights:
        v.assign(ref[f"init/{v.path}"])
    kwargs = {_KERAS_KWARGS.get(k, k): v for k, v in case["kwargs"].items()}
    inner = getattr(keras.optimizers, case["optimizer"])(1e-3, **kwargs)
    rates = {groups[g]: r for g, r in case["rates"].items()}
    opt = BlockwiseOptimizer(inner, rates, model=model,
                             exclude_bias_and_norm=case.get(
                                 "exclude_bias_and_norm", False))
    model.compile(opt, _loss())
    model.fit(ref["x"], ref["y"], batch_size=8, epochs=1, shuffle=False,
              verbose=0)
    assert int(opt.iterations.numpy()) == 20
    for v in model.weights:
        expected, got = ref[f"{case_name}/{v.path}"], v.numpy()
        moved = np.linalg.norm(expected - ref[f"init/{v.path}"])
        assert moved > 1e-3, v.path
        error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert error <= 1e-5, (v.path, error)


# -- GroupOptimizer ---------------------------------------------------------

def test_group_optimizer_routes_and_survives_retarget():
    vs = _vars(body=[0.0, 0.0], head=[0.0, 0.0], late=[0.0, 0.0])
    opt = GroupOptimizer({"^head$": keras.optimizers.Adam(0.01)},
                         default=keras.optimizers.SGD(0.1, momentum=0.9),
                         learning_rate=0.5)
    opt.build([vs["body"], vs["head"]])
    opt.apply([np.array([1.0, 2.0]), np.array([3.0, -1.0])],
              [vs["body"], vs["head"]])
    np.testing.assert_allclose(vs["body"].numpy(), [-0.05, -0.1], rtol=1e-6)
    np.testing.assert_allclose(vs["head"].numpy(), [-0.005, 0.005],
                               rtol=1e-4)
    m_head = _slot(opt, "head_momentum")
    kft.retarget_optimizer(opt, [vs["body"], vs["head"], vs["late"]])
    np.testing.assert_array_equal(_slot(opt, "head_momentum"), m_head)
    opt.apply([np.zeros(2), np.zeros(2), np.array([1.0, 1.0])],
              [vs["body"], vs["head"], vs["late"]])
    # `late` goes to the default SGD at 0.5 * 0.1, with fresh momentum.
    np.testing.assert_allclose(vs["late"].numpy(), [-0.05, -0.05], rtol=1e-6)


def test_group_optimizer_reads_a_group_schedule_at_the_current_step():
    # A group's own schedule gives step t the rate it gives a plain Keras
    # optimizer at step t: read one step late, the steps moved 0.5, 0.25,
    # 0.125 instead of 1, 0.5, 0.25.
    def schedule():
        return keras.optimizers.schedules.ExponentialDecay(1.0, 1, 0.5)

    vs = _vars(a=[0.0], b=[0.0])
    opt = GroupOptimizer({"^b$": keras.optimizers.SGD(schedule())},
                         default=keras.optimizers.SGD(0.1))
    plain, plain_sgd = _vars(b=[0.0])["b"], keras.optimizers.SGD(schedule())
    deltas, plain_deltas = [], []
    for _ in range(3):
        before, plain_before = vs["b"].numpy().copy(), plain.numpy().copy()
        opt.apply([np.ones(1), np.ones(1)], list(vs.values()))
        plain_sgd.apply([np.ones(1)], [plain])
        deltas.append(float((before - vs["b"].numpy())[0]))
        plain_deltas.append(float((plain_before - plain.numpy())[0]))
    np.testing.assert_allclose(deltas, [1.0, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(deltas, plain_deltas, rtol=1e-6)
    # The default group's float rate is untouched by the other's schedule.
    np.testing.assert_allclose(vs["a"].numpy(), [-0.3], rtol=1e-6)


# -- fit integration: mixed precision, callbacks ------------------------------

@pytest.mark.slow
def test_mixed_precision_and_unfreezing_in_fit(dtype_policy):
    with dtype_policy("mixed_float16"):
        model = _cnn()
    kft.freeze(model, "feature_extraction")
    opt = GroupOptimizer({"head": keras.optimizers.AdamW(1e-3)},
                         default=keras.optimizers.SGD(1e-2, momentum=0.9),
                         model=model, global_clipnorm=1.0)
    model.compile(opt, _loss())
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = _data(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    block3 = model.get_layer("simple_cnn").get_layer("block3_conv")
    before = np.array(block3.kernel.numpy())
    kft.freeze(model, "partial", n_blocks=1)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(block3.kernel.numpy(), before)
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)
    assert list(opt._start_steps.numpy()) == [2, 0, 0]


@pytest.mark.slow
def test_learning_rate_callbacks_scale_every_group():
    x, y = _data(8)

    def run(factor, callbacks):
        keras.utils.set_random_seed(0)
        model = _cnn()
        kft.freeze(model, "partial", n_blocks=1)
        opt = BlockwiseOptimizer(keras.optimizers.SGD(0.01),
                                 {"block3": 0.001 * factor,
                                  "head": 0.01 * factor},
                                 model=model, base_learning_rate=0.01)
        model.compile(opt, _loss())
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
                  callbacks=callbacks)
        return model, opt

    scheduled, _ = run(1.0, [keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: 0.003)])
    scaled, _ = run(0.3, [])
    for a, b in zip(scheduled.trainable_variables, scaled.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-7)
    _, opt = run(1.0, [keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=0, min_delta=1e9)])
    # min_delta=1e9: epoch 1 improves on inf, epoch 2 cannot: one halving.
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.005)


# -- serialization ------------------------------------------------------------

def test_get_config_json_round_trip():
    model = _cnn()
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, 100)
    opts = [
        BlockwiseOptimizer(keras.optimizers.AdamW(schedule, weight_decay=0.05),
                           layerwise_lr(model, 1e-3, 0.7), model=model,
                           base_learning_rate=1e-3, default=1e-5,
                           exclude_bias_and_norm=True, global_clipnorm=1.0),
        GroupOptimizer({"head": keras.optimizers.Adam(1e-3)},
                       default=keras.optimizers.SGD(0.1, momentum=0.9),
                       model=model, clipnorm=2.0),
        # Keras' own `deserialize` gave Lamb back as the string "Lamb": a
        # saved model with a wrapper of one did not load.
        BlockwiseOptimizer(keras.optimizers.Lamb(1e-3),
                           layerwise_lr(model, 1e-3, 0.7), model=model),
        GroupOptimizer({"head": keras.optimizers.Lamb(1e-3)},
                       default=keras.optimizers.Lamb(1e-4), model=model),
    ]
    for opt in opts:
        config = json.loads(json.dumps(keras.optimizers.serialize(opt)))
        clone = keras.optimizers.deserialize(config)
        assert type(clone) is type(opt)
        assert clone.get_config() == opt.get_config()
        assert clone._assignments["head_dense/kernel"] == "head"


def _blockwise(model):
    return BlockwiseOptimizer(keras.optimizers.Adam(1e-3),
                              layerwise_lr(model, 1e-3, 0.5), model=model)


def _grouped(model):
    return GroupOptimizer({"head": keras.optimizers.AdamW(1e-3)},
                          default=keras.optimizers.SGD(1e-2, momentum=0.9),
                          model=model)


@pytest.mark.slow
@pytest.mark.parametrize("make", [_blockwise, _grouped])
def test_model_save_load_round_trip_with_optimizer_state(tmp_path, make):
    model = _cnn()
    kft.freeze(model, "feature_extraction")
    opt = make(model)
    model.compile(opt, _loss())
    x, y = _data(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    kft.freeze(model, "partial", n_blocks=1)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    lopt = loaded.optimizer
    assert type(lopt) is type(opt)
    assert [v.path for v in lopt.variables] == [v.path for v in opt.variables]
    for a, b in zip(lopt.variables, opt.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert list(lopt._start_steps.numpy()) == [2, 0, 0]
    for m in (model, loaded):
        m.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-7)


# -- custom block patterns --------------------------------------------------

PATTERNS = {"lower": "^(stem|block1)_", "upper": "^block[23]_",
            "head": "^head_"}


def _block_of(path):
    return next(n for n, r in PATTERNS.items() if re.search(r, path))


def _grads(model, x, y):
    """d loss / d trainable variables, computed outside the optimizer."""
    frozen = [v.value for v in model.non_trainable_variables]

    def loss(trainable):
        logits, _ = model.stateless_call(trainable, frozen, x, training=True)
        return _loss()(y, logits)

    return [np.asarray(g) for g in jax.grad(loss)(
        [v.value for v in model.trainable_variables])]


@pytest.mark.slow
def test_layerwise_lr_with_patterns_trains_each_block_at_its_rate():
    """`layerwise_lr(..., patterns=P)` and `BlockwiseOptimizer(patterns=P)`:
    one SGD step of `fit` moves every variable by -rate(block) * grad, also
    for blocks unfrozen (retargeted) after the optimizer was built."""
    model = _cnn()
    kft.freeze(model, "feature_extraction", patterns=PATTERNS)
    rates = layerwise_lr(model, 0.1, 0.5, patterns=PATTERNS)
    assert rates == {"lower": 0.025, "upper": 0.05, "head": 0.1}
    opt = BlockwiseOptimizer(keras.optimizers.SGD(0.1), rates, model=model,
                             patterns=PATTERNS)
    model.compile(opt, _loss())
    x, y = _data(8)
    model.train_on_batch(x, y)
    kft.freeze(model, "full", patterns=PATTERNS)
    for step in range(2):
        grads = _grads(model, x, y)
        before = [np.array(v.numpy()) for v in model.trainable_variables]
        model.train_on_batch(x, y)
        seen = set()
        for v, b, g in zip(model.trainable_variables, before, grads):
            block = _block_of(v.path)
            seen.add(block)
            assert np.abs(g).max() > 0, v.path
            np.testing.assert_allclose(v.numpy() - b, -rates[block] * g,
                                       rtol=1e-4, atol=1e-7,
                                       err_msg=v.path)
        assert seen == set(PATTERNS)
    # The head trains from step 0, the blocks unfrozen after step 1.
    starts = [0 if _block_of(v.path) == "head" else 1
              for v in model.trainable_variables]
    assert list(opt._start_steps.numpy()) == starts


def test_group_optimizer_with_patterns_routes_blocks():
    model = _cnn()
    opt = GroupOptimizer({"lower": keras.optimizers.SGD(0.01),
                          "upper": keras.optimizers.SGD(0.02)},
                         default=keras.optimizers.SGD(0.1), model=model,
                         patterns=PATTERNS)
    variables = model.trainable_variables
    before = [np.array(v.numpy()) for v in variables]
    opt.apply([np.ones(v.shape, "float32") for v in variables], variables)
    rates = {"lower": 0.01, "upper": 0.02, "head": 0.1}
    for v, b in zip(variables, before):
        np.testing.assert_allclose(b - v.numpy(), rates[_block_of(v.path)],
                                   rtol=1e-5, err_msg=v.path)


def test_block_names_need_the_patterns_that_made_them():
    model = _cnn()
    rates = layerwise_lr(model, 0.1, 0.5, patterns=PATTERNS)
    with pytest.raises(ValueError, match="need the same `patterns=`"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1), rates, model=model)
    with pytest.raises(ValueError, match="`patterns` needs `model=`"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1), rates,
                           patterns=PATTERNS)


def test_block_name_that_is_also_a_wider_regex_raises():
    """`conv` names a block (stem + block1) of these patterns and, as a
    regex, also matches block2/block3 kernels: neither reading is taken
    silently. A regex that is not a block name stays a regex."""
    model = _cnn()
    patterns = {"conv": "^(stem|block1)_", "rest": "^(block[23]|head)_"}
    with pytest.raises(ValueError, match="'conv' is ambiguous.*"
                       "'block2_conv/kernel'"):
        BlockwiseOptimizer(keras.optimizers.SGD(0.1), {"conv": 0.01},
                           model=model, patterns=patterns)
    with pytest.raises(ValueError, match="'conv' is ambiguous"):
        GroupOptimizer({"conv": keras.optimizers.SGD(0.01)},
                       default=keras.optimizers.SGD(0.1), model=model,
                       patterns=patterns)
    regex = BlockwiseOptimizer(keras.optimizers.SGD(0.1), {"(?:conv)": 0.01},
                               model=model, patterns=patterns)
    assert sorted(p for p, g in regex._assignments.items() if g) == [
        f"{b}_conv/kernel" for b in ("block1", "block2", "block3", "stem")]
    block = BlockwiseOptimizer(keras.optimizers.SGD(0.1), {"rest": 0.01},
                               model=model, patterns=patterns)
    assert {p.split("_")[0] for p, g in block._assignments.items()
            if g} == {"block2", "block3", "head"}


def test_patterns_survive_config_round_trip():
    model = _cnn()
    pairs = [("lower", "^(stem|block1)_"), ("upper", "^block[23]_"),
             ("head", "^head_")]
    opt = BlockwiseOptimizer(keras.optimizers.SGD(0.1),
                             layerwise_lr(model, 0.1, 0.5, patterns=pairs),
                             model=model, patterns=pairs)
    config = json.loads(json.dumps(keras.optimizers.serialize(opt)))
    clone = keras.optimizers.deserialize(config)
    assert clone.get_config() == opt.get_config()
    assert clone.patterns == [list(p) for p in pairs]
    assert clone._assignments["block1_conv/kernel"] == "lower"


@pytest.mark.parametrize("make", [
    lambda opt: kft.BlockwiseOptimizer(opt),
    lambda opt: kft.GroupOptimizer({}, default=opt),
], ids=["blockwise", "group"])
def test_wrapped_optimizer_with_a_callable_rate_is_refused_clearly(make):
    # Keras takes a callable rate; reading its value raised AttributeError.
    with pytest.raises(TypeError, match=r"`learning_rate` of .*SGD.* must "
                       r"be a number or a keras.optimizers.schedules.*"
                       r"Received: learning_rate=.*<lambda>"):
        make(keras.optimizers.SGD(learning_rate=lambda: 0.1))


def test_averaged_weights_under_mixed_float16(dtype_policy):
    # Keras wraps the optimizer in a LossScaleOptimizer, whose own
    # use_ema is False: averaged_weights refused every such model.
    with dtype_policy("mixed_float16"):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(BlockwiseOptimizer(keras.optimizers.SGD(0.1), use_ema=True,
                                     ema_overwrite_at_end=False), "mse")
    model.fit(np.ones((4, 2)), np.ones(4), epochs=3, verbose=0)
    raw = model.get_weights()[0].copy()
    with kft.optimizers.averaged_weights(model):
        averaged = model.get_weights()[0].copy()
    assert not np.allclose(averaged, raw)
    np.testing.assert_array_equal(model.get_weights()[0], raw)


@pytest.mark.parametrize("make", [
    lambda: keras.optimizers.Nadam(0.05),
    lambda: keras.optimizers.Adafactor(0.05),
    lambda: GroupOptimizer({}, default=keras.optimizers.Adafactor(0.05))])
def test_a_loss_scaled_optimizer_keeps_its_state_through_a_save_after_a_change(
        dtype_policy, tmp_path, make):
    # Rebuilt with tracking on, the variables Nadam and Adafactor make bare
    # were listed: the saved optimizer had more than a fresh one, and Keras
    # skipped loading its state (step 6 loaded as 0).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5)).astype("float32")
    y = rng.standard_normal((8, 3)).astype("float32")
    with dtype_policy("mixed_float16"):
        inputs = keras.Input((5,))
        hidden = keras.layers.Dense(4, name="body")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(
            3, name="head", dtype="float32")(hidden))
    model.get_layer("body").trainable = False
    model.compile(make(), "mse")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    with kft.changing_trainable(model):
        model.get_layer("body").trainable = True
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    # Loaded under its policy, as the README says it must be.
    with dtype_policy("mixed_float16"), warnings.catch_warnings():
        warnings.simplefilter("error")  # "Skipping variable loading"
        loaded = keras.models.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.iterations.numpy()) == 4
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for got, want in zip(loaded.optimizer.variables,
                         model.optimizer.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("decays", [(0.5, 0.0), (None, 0.5), (0.2, 0.5)])
def test_a_wrapped_muon_decays_each_variable_as_muon_does(decays):
    # Muon decays what its Adam path trains (biases, conv kernels) by
    # `adam_weight_decay`: the wrappers used `weight_decay` for every one.
    weight_decay, adam_weight_decay = decays
    zeros = [np.zeros(3, "float32"), np.zeros((3, 2), "float32")]
    results = []
    for wrap in (lambda o: o, BlockwiseOptimizer,
                 lambda o: GroupOptimizer({}, default=o)):
        variables = [keras.Variable(np.ones(3, "float32"), name="bias"),
                     keras.Variable(np.ones((3, 2), "float32"),
                                    name="kernel")]
        optimizer = wrap(keras.optimizers.Muon(
            0.1, weight_decay=weight_decay,
            adam_weight_decay=adam_weight_decay))
        optimizer.apply(zeros, variables)
        results.append([v.numpy() for v in variables])
    assert results[0][0][0] == 1 - 0.1 * (adam_weight_decay or 0)
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("inner,advice", [
    (lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()),
     "LossScaleOptimizer: pass the optimizer it wraps"),
    (lambda: BlockwiseOptimizer(keras.optimizers.Adam(), {"^a$": 0.1}),
     "BlockwiseOptimizer: kft's per-group optimizers do not nest"),
    (lambda: keras.optimizers.MultiOptimizer(
        keras.src.optimizers.multi_optimizer.OptimizerMap(
            keras.optimizers.SGD(0.1), {})),
     "MultiOptimizer: give kft.GroupOptimizer one optimizer per group")])
def test_optimizers_that_cannot_be_wrapped_are_refused_with_advice(inner,
                                                                   advice):
    # "must be a Keras optimizer instance" (it was one), or a MultiOptimizer
    # accepted and failing at its first step with an empty error.
    for wrap in (lambda o: BlockwiseOptimizer(o, {"^a$": 0.1}),
                 lambda o: GroupOptimizer({}, default=o)):
        with pytest.raises(TypeError, match="must be a single Keras "
                           f"optimizer, not a {advice}"):
            wrap(inner())
