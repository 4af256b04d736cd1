"""kft.OneCycle, kft.Warmup and schedules with per-block rates and EMA."""

import json
import pathlib

import keras
import numpy as np
import pytest

import kft
from kft.optimizers.schedules import OneCycleMomentum

REFERENCE = pathlib.Path(__file__).parent / "data" / "onecycle_reference.json"


def _one_cycle(case):
    return kft.OneCycle(
        case["max_lr"], case["total_steps"], pct_start=case["pct_start"],
        anneal_strategy=case["anneal_strategy"],
        div_factor=case["div_factor"],
        final_div_factor=case["final_div_factor"],
        three_phase=case["three_phase"])


def _assert_matches(schedule, momentum, recorded):
    steps = np.arange(len(recorded["rates"]))
    rates = np.asarray(schedule(steps), dtype="float64")
    np.testing.assert_allclose(rates, recorded["rates"], rtol=1e-6, atol=0)
    np.testing.assert_allclose(np.asarray(momentum(steps)),
                               recorded["momenta"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["cos", "linear", "cos_three_phase",
                                  "linear_three_phase"])
def test_one_cycle_matches_recorded_torch_per_step(name):
    recorded = json.loads(REFERENCE.read_text())["cases"][name]
    schedule = _one_cycle(recorded["case"])
    _assert_matches(schedule, schedule.momentum_schedule(), recorded)


def test_one_cycle_matches_live_torch():
    torch = pytest.importorskip("torch")
    for anneal in ("cos", "linear"):
        case = {"max_lr": 0.3, "total_steps": 97, "pct_start": 0.2,
                "anneal_strategy": anneal, "div_factor": 7.0,
                "final_div_factor": 50.0, "three_phase": False}
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.3, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, **case)
        recorded = {"rates": [], "momenta": []}
        for _ in range(case["total_steps"]):
            recorded["rates"].append(opt.param_groups[0]["lr"])
            recorded["momenta"].append(opt.param_groups[0]["momentum"])
            opt.step()
            scheduler.step()
        schedule = _one_cycle(case)
        _assert_matches(schedule, schedule.momentum_schedule(), recorded)


def test_values_at_first_last_and_boundary_steps():
    schedule = kft.OneCycle(1.0, 100, div_factor=10.0, final_div_factor=100.)
    values = np.asarray(schedule(np.array([0, 29, 99, 100, 500])))
    # Initial max/div, the peak at pct_start * T - 1, the minimum at T - 1,
    # and it stays there afterwards.
    np.testing.assert_allclose(values, [0.1, 1.0, 1e-3, 1e-3, 1e-3],
                               rtol=1e-6)
    warm = kft.Warmup(keras.optimizers.schedules.CosineDecay(2.0, 10), 5,
                      initial_value=0.5)
    values = np.asarray(warm(np.array([0, 1, 4, 5, 10, 15, 30])))
    np.testing.assert_allclose(
        values, [0.5, 0.8, 1.7, 2.0, 1.0, 0.0, 0.0], rtol=1e-6, atol=1e-7)
    constant = kft.Warmup(0.1, 4)
    np.testing.assert_allclose(np.asarray(constant(np.arange(6))),
                               [0, 0.025, 0.05, 0.075, 0.1, 0.1], rtol=1e-6)


@pytest.mark.parametrize("schedule", [
    kft.OneCycle(0.1, 50, anneal_strategy="linear", three_phase=True,
                 pct_start=0.2),
    OneCycleMomentum(50, base_momentum=0.8, max_momentum=0.9),
    kft.Warmup(kft.OneCycle(0.1, 50), 7, initial_value=0.01),
    kft.Warmup(keras.optimizers.schedules.CosineDecayRestarts(0.1, 10), 3),
    kft.Warmup(0.2, 3),
])
def test_serialization_round_trip_through_json(schedule):
    config = json.loads(json.dumps(
        keras.optimizers.schedules.serialize(schedule)))
    restored = keras.optimizers.schedules.deserialize(config)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    steps = np.arange(60)
    np.testing.assert_array_equal(np.asarray(restored(steps)),
                                  np.asarray(schedule(steps)))


@pytest.mark.parametrize("kwargs,match", [
    ({"max_learning_rate": 0.0}, "max_learning_rate.*Received: "
                                 "max_learning_rate=0.0"),
    ({"max_learning_rate": -1.0}, "Received: max_learning_rate=-1.0"),
    ({"div_factor": 0}, "Received: div_factor=0"),
    ({"pct_start": 0.0}, r"pct_start.*\(0.0, 1.0\).*Received: pct_start=0.0"),
    ({"pct_start": 1.0}, "Received: pct_start=1.0"),
    ({"pct_start": 0.005}, "at least one step long.*pct_start=0.005"),
    ({"anneal_strategy": "exp"}, "Received: anneal_strategy='exp'"),
    ({"total_steps": 1}, "Received: total_steps=1"),
])
def test_one_cycle_bad_arguments_name_the_value(kwargs, match):
    arguments = {"max_learning_rate": 0.1, "total_steps": 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        kft.OneCycle(**arguments)


def test_warmup_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="Received: schedule=0.0"):
        kft.Warmup(0.0, 3)
    with pytest.raises(ValueError, match="Received: warmup_steps=0"):
        kft.Warmup(0.1, 0)
    with pytest.raises(ValueError, match="Received: initial_value=-0.1"):
        kft.Warmup(0.1, 2, initial_value=-0.1)
    with pytest.raises(TypeError, match="Received: schedule='cos'"):
        kft.Warmup("cos", 3)
    with pytest.raises(ValueError, match="Received: base_momentum=1.5"):
        kft.OneCycle(0.1, 10).momentum_schedule(base_momentum=1.5)


# -- under model.fit: per-block ratios, unfreezing, momentum, EMA -----------
#
# Two bias-free Dense(1) blocks side by side, summed, with the loss
# mean(prediction): every kernel's gradient is mean(x) whatever the
# weights, so an SGD step's update is exactly -rate * mean(x) and each
# block's rate at each step can be read off the update.

X = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
GRADIENT = X.mean(axis=0)[:, None].astype("float64")
PATTERNS = {"body": "^body$", "head": "^head$"}


def _model():
    inputs = keras.Input((4,))
    # Zero kernels: float32 differences of small updates stay exact.
    body = keras.layers.Dense(1, use_bias=False, name="body",
                              kernel_initializer="zeros")(inputs)
    head = keras.layers.Dense(1, use_bias=False, name="head",
                              kernel_initializer="zeros")(inputs)
    model = keras.Model(inputs, keras.layers.Add()([body, head]))
    model.get_layer("body").trainable = False
    return model


def _mean_prediction(y_true, y_pred):
    return keras.ops.mean(y_pred)


class _Kernels(keras.callbacks.Callback):
    """The kernels after every step (float64), with the step index."""

    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.model.jax_state_sync()
        step = int(np.asarray(self.model.optimizer.iterations.value)) - 1
        self.values.append((step, {
            layer: np.array(self.model.get_layer(layer).kernel.value,
                            dtype="float64") for layer in ("body", "head")}))


def _train(optimizer, epochs=(5, 4)):
    """Body frozen for the first fit, unfrozen for the second; returns the
    model and the kernels before and after every step."""
    model = _model()
    start = {layer: np.array(model.get_layer(layer).kernel.value,
                             dtype="float64") for layer in ("body", "head")}
    model.compile(optimizer, _mean_prediction)
    probe = _Kernels()
    y = np.zeros(len(X))
    model.fit(X, y, batch_size=len(X), epochs=epochs[0], verbose=0,
              callbacks=[probe])
    with kft.changing_trainable(model):
        model.get_layer("body").trainable = True
    model.fit(X, y, batch_size=len(X), epochs=epochs[1], verbose=0,
              callbacks=[probe])
    return model, [(-1, start)] + probe.values


def test_per_block_ratios_kept_under_fit_and_unfrozen_block_starts_at_scaled_value():
    schedule = kft.Warmup(kft.OneCycle(0.05, 12, pct_start=0.4), 2)
    optimizer = kft.BlockwiseOptimizer(
        keras.optimizers.SGD(0.05), {"body": 0.01, "head": 0.05},
        model=_model(), patterns=PATTERNS, learning_rate=schedule,
        base_learning_rate=0.05)
    _, kernels = _train(optimizer)
    assert [step for step, _ in kernels] == list(range(-1, 9))
    for (_, before), (step, after) in zip(kernels, kernels[1:]):
        rate = float(schedule(step))
        head_rate = -(after["head"] - before["head"]) / GRADIENT
        np.testing.assert_allclose(head_rate, rate, rtol=1e-4)
        body_rate = -(after["body"] - before["body"]) / GRADIENT
        if step < 5:
            assert not body_rate.any(), step  # frozen
        else:
            # From its first step on (step 5, not 0): the schedule's value
            # at the global step times the block's ratio 0.2.
            np.testing.assert_allclose(body_rate, 0.2 * rate, rtol=1e-4)


def test_momentum_cycle_reaches_sgd_inside_the_compiled_step(tmp_path):
    cycle = kft.OneCycle(0.05, 9, pct_start=0.4)
    momentum = cycle.momentum_schedule(base_momentum=0.6, max_momentum=0.9)
    inner = keras.optimizers.SGD(0.05, momentum=0.5)
    optimizer = kft.BlockwiseOptimizer(
        inner, learning_rate=cycle, base_learning_rate=0.05,
        momentum_schedule=momentum)
    model, kernels = _train(optimizer)
    head = [k["head"] for _, k in kernels]
    updates = np.diff(np.stack(head), axis=0)
    # Keras SGD: u_t = momentum_t * u_{t-1} - rate_t * g.
    for step in range(1, len(updates)):
        expected = (float(momentum(step)) * updates[step - 1]
                    - float(cycle(step)) * GRADIENT)
        np.testing.assert_allclose(updates[step], expected, rtol=1e-4)
    assert len({round(float(momentum(s)), 4) for s in range(9)}) > 3
    # The scheduled value is set on the inner optimizer for the traced step
    # only: left there after fit, the optimizer's config could not be
    # written and model.save failed ("Cannot serialize object _Scheduled").
    assert type(inner.momentum) is float and inner.momentum == 0.5
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects={
        "_mean_prediction": _mean_prediction})
    assert loaded.optimizer.get_config()["optimizer"]["config"][
        "momentum"] == 0.5


@pytest.mark.parametrize("make", [
    lambda: keras.optimizers.RMSprop(0.01, momentum=0.9),
    lambda: keras.optimizers.Adam(0.01, beta_1=0.9)],
    ids=["rmsprop", "adam"])
def test_constant_momentum_schedule_steps_like_the_plain_optimizer(make):
    # A schedule that is 0.9 at every step on an optimizer built with
    # momentum (beta_1) 0.9 changes nothing. Keras' RMSprop tests
    # `momentum > 0` in Python; answered "no", momentum was silently off
    # (RMSprop's head kernels 0.58 apart after these 12 steps; here 0).
    constant = keras.optimizers.schedules.PiecewiseConstantDecay(
        [10 ** 6], [0.9, 0.9])
    kernels = []
    for optimizer in (kft.BlockwiseOptimizer(make(), base_learning_rate=0.01,
                                             momentum_schedule=constant),
                      make()):
        model = _model()
        model.compile(optimizer, _mean_prediction)
        model.fit(X, np.zeros(len(X)), batch_size=2, epochs=3, verbose=0,
                  shuffle=False)
        kernels.append(np.array(model.get_layer("head").kernel.value))
    assert kernels[1].any()  # trained: the kernels start at zero
    np.testing.assert_allclose(kernels[0], kernels[1], rtol=1e-6, atol=1e-7)


def test_momentum_schedule_needs_an_optimizer_with_momentum():
    cycle = kft.OneCycle(0.1, 10)
    # The messages named the optimizer's momentum (or class) as the
    # schedule received: "...; optimizer is a. Received:
    # momentum_schedule='Adagrad'".
    with pytest.raises(ValueError, match=r"needs momentum slots to "
                       r"schedule; got optimizer: SGD\(momentum=0\.0\)\. "
                       r"Create it with momentum > 0"):
        kft.BlockwiseOptimizer(keras.optimizers.SGD(0.1),
                               momentum_schedule=cycle.momentum_schedule())
    with pytest.raises(TypeError, match=r"needs optimizers with a `beta_1` "
                       r"or `momentum` .*; got optimizer: Adagrad\.$"):
        kft.BlockwiseOptimizer(keras.optimizers.Adagrad(0.1),
                               momentum_schedule=cycle.momentum_schedule())
    # Muon has a `momentum`: "needs ... a `momentum`" did not say why not.
    with pytest.raises(TypeError, match=r"cannot schedule Muon's momentum "
                       r"\(its Adam path has `adam_beta_1`"):
        kft.BlockwiseOptimizer(keras.optimizers.Muon(0.1),
                               momentum_schedule=cycle.momentum_schedule())
    with pytest.raises(TypeError, match="Received: momentum_schedule=0.9"):
        kft.BlockwiseOptimizer(keras.optimizers.Adam(0.1),
                               momentum_schedule=0.9)
    adam = kft.BlockwiseOptimizer(keras.optimizers.AdamW(0.1),
                                  momentum_schedule=cycle.momentum_schedule())
    restored = keras.optimizers.deserialize(json.loads(json.dumps(
        keras.optimizers.serialize(adam))))
    assert restored.momentum_schedule.get_config() == (
        adam.momentum_schedule.get_config())


def test_ema_follows_unfreezing_and_evaluates_with_averages():
    optimizer = kft.BlockwiseOptimizer(
        keras.optimizers.SGD(0.1), {"body": 0.05}, model=_model(),
        patterns=PATTERNS, use_ema=True, ema_momentum=0.5,
        ema_overwrite_at_end=False)
    model, kernels = _train(optimizer)
    # Expected averages: the head's from step 0 (Keras: the first step's
    # average is the value), the body's from its value when unfrozen.
    average = {"head": kernels[1][1]["head"], "body": None}
    for step, values in kernels[2:]:
        average["head"] = 0.5 * average["head"] + 0.5 * values["head"]
        if step == 5:
            average["body"] = kernels[5][1]["body"]
        if step >= 5:
            average["body"] = 0.5 * average["body"] + 0.5 * values["body"]
    raw = {layer: np.array(model.get_layer(layer).kernel.value)
           for layer in ("body", "head")}
    np.testing.assert_allclose(raw["head"], kernels[-1][1]["head"],
                               rtol=1e-6)  # not overwritten at fit end
    loss = keras.losses.MeanSquaredError()
    model.compile(model.optimizer, loss)  # keeps the optimizer's state
    with kft.optimizers.averaged_weights(model):
        for layer in ("body", "head"):
            np.testing.assert_allclose(
                np.array(model.get_layer(layer).kernel.value),
                average[layer], rtol=1e-5)
        averaged = model.evaluate(X, np.zeros(len(X)), verbose=0)
    for layer in ("body", "head"):
        np.testing.assert_array_equal(
            np.array(model.get_layer(layer).kernel.value), raw[layer])
    prediction = X @ (average["body"] + average["head"])
    assert averaged == pytest.approx(float(np.mean(prediction ** 2)),
                                     rel=1e-4)


def test_ema_overwrites_at_fit_end_by_default_and_needs_use_ema():
    optimizer = kft.BlockwiseOptimizer(keras.optimizers.SGD(0.1),
                                       use_ema=True, ema_momentum=0.5)
    model, kernels = _train(optimizer, epochs=(3, 0))
    head = np.array(model.get_layer("head").kernel.value)
    expected = kernels[1][1]["head"]
    for _, values in kernels[2:]:
        expected = 0.5 * expected + 0.5 * values["head"]
    np.testing.assert_allclose(head, expected, rtol=1e-5)
    plain = _model()
    plain.compile(keras.optimizers.SGD(0.1), "mse")
    with pytest.raises(ValueError, match="use_ema=True"):
        with kft.optimizers.averaged_weights(plain):
            pass


def test_averaged_weights_in_a_callback_reads_the_running_fit():
    # Inside `fit` the trained values live in the trainer's state, not in
    # the variables (emptied: reading them raised): averaged_weights called
    # in a callback must see the averages and keep the raw values of the
    # steps taken so far, as a fit stopped at that step gives them.
    y = np.zeros(len(X))
    seen = {}

    def compiled():
        model = _model()
        model.get_layer("body").trainable = True
        model.compile(kft.BlockwiseOptimizer(
            keras.optimizers.SGD(0.1), use_ema=True, ema_momentum=0.5,
            ema_overwrite_at_end=False), _mean_prediction)
        return model

    def kernels(model):
        return np.array(model.get_layer("head").kernel.value)

    def look(batch, logs):
        if batch == 2:
            with kft.optimizers.averaged_weights(model):
                seen["averaged"] = kernels(model)
            seen["raw"] = kernels(model)

    # The model from the closure (Keras' `Callback.model` would write the
    # state back itself).
    model = compiled()
    model.fit(X, y, batch_size=2, epochs=1, shuffle=False, verbose=0,
              callbacks=[keras.callbacks.LambdaCallback(
                  on_train_batch_end=look)])
    stopped = compiled()
    stopped.fit(X[:6], y[:6], batch_size=2, epochs=1, shuffle=False,
                verbose=0)
    with kft.optimizers.averaged_weights(stopped):
        averaged = kernels(stopped)
    np.testing.assert_allclose(seen["raw"], kernels(stopped), rtol=1e-6)
    np.testing.assert_allclose(seen["averaged"], averaged, rtol=1e-6)
    assert not np.allclose(averaged, kernels(stopped))


def test_switches_refuse_strings():
    # three_phase="False" gave the three-phase cycle (step 5 of 10 at
    # 0.036 instead of 0.611), exclude_bias_and_norm="False" excluded.
    with pytest.raises(TypeError, match=r"`three_phase` must be True or "
                       r"False.*Received: three_phase='False'"):
        kft.OneCycle(1.0, 10, three_phase="False")
    assert kft.OneCycle(1.0, 10, three_phase=np.bool_(True)).three_phase
    inner = keras.optimizers.SGD(0.1)
    for name in ("exclude_bias_and_norm", "ema_overwrite_at_end"):
        with pytest.raises(TypeError, match=f"`{name}` must be True or "
                           f"False.*Received: {name}='False'"):
            kft.BlockwiseOptimizer(inner, {"^b": 0.01}, **{name: "False"})


def test_fine_tune_follows_a_schedule_object_from_phase_2s_first_step():
    # A documented `schedule` value no test ran: a Keras schedule object,
    # whose step 0 is phase 2's first step (not the head phase's 2 steps).
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    y = np.arange(16) % 2
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(16, 16, 3))
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [1, 3], [1e-3, 5e-4, 1e-4])
    result = kft.fine_tune(model, (x, y), strategy="full", head_epochs=1,
                           epochs=3, batch_size=8, schedule=schedule,
                           bn="train", verbose=0)
    # 2 steps per epoch: each epoch logs the rate of its first step.
    np.testing.assert_allclose(result.histories[1]["learning_rate"],
                               [float(schedule(step)) for step in (0, 2, 4)],
                               rtol=1e-6)
