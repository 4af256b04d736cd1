"""kft.lr_find: the range test leaves the model exactly as it was."""

import contextlib
import io
import re
from unittest import mock

import keras
import numpy as np
import pytest

import kft

RNG = np.random.default_rng(0)
X = RNG.normal(size=(256, 8)).astype("float32")
Y = (X @ RNG.normal(size=8)).astype("float32")


def _state(model):
    optimizer = model.optimizer
    return ([np.array(v.value) for v in model.variables],
            [np.array(v.value) for v in optimizer.variables],
            [v.path for v in model.trainable_variables])


def _classifier():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, name="body")(inputs)
    h = keras.layers.BatchNormalization(name="norm")(h)
    h = keras.layers.Dropout(0.2, seed=1, name="drop")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    return model


def test_restores_weights_optimizer_state_and_trainable_set_bitwise():
    model = _classifier()
    model.get_layer("norm").trainable = False
    optimizer = kft.BlockwiseOptimizer(
        keras.optimizers.AdamW(1e-3), {"body": 1e-4, "head": 1e-3},
        model=model, patterns={"body": "^(body|norm)$", "head": "^head$"},
        use_ema=True)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    labels = (Y > 0).astype("int32") + (Y > 1)
    model.fit(X, labels, batch_size=64, epochs=1, verbose=0)  # some state
    before = _state(model)
    result = kft.lr_find(model, (X, labels), start=1e-5, end=1.0, steps=12,
                         batch_size=32, verbose=0)
    after = _state(model)
    for group_before, group_after in zip(before[:2], after[:2]):
        assert len(group_before) == len(group_after)
        for a, b in zip(group_before, group_after):
            np.testing.assert_array_equal(a, b)
    assert before[2] == after[2]
    assert len(result.learning_rates) == 12 or result.stop_reason
    # The ramp ran on the blocks with their ratios: it is exponential.
    ratios = result.learning_rates[1:] / result.learning_rates[:-1]
    np.testing.assert_allclose(ratios, (1.0 / 1e-5) ** (1 / 11), rtol=1e-9)
    # The original rate is back.
    assert model.train_function is None
    assert float(np.asarray(model.optimizer.learning_rate)) == (
        pytest.approx(1e-3))


def test_suggestions_fall_in_the_known_good_range_of_a_quadratic():
    # Full-batch SGD on mean squared error of a linear model: the loss is
    # quadratic with Hessian H = 2 [x 1]^T [x 1] / n. A rate is good if
    # SGD is stable (< 2 / lambda_max) and every direction shrinks by at
    # least 2% per step (>= 0.02 / lambda_min).
    design = np.hstack([X, np.ones((len(X), 1), "float32")]).astype(float)
    eigenvalues = np.linalg.eigvalsh(2 * design.T @ design / len(X))
    low, high = 0.02 / eigenvalues[0], 2 / eigenvalues[-1]
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(), "mse")
    result = kft.lr_find(model, (X, Y), start=1e-4, end=10.0, steps=100,
                         batch_size=len(X), verbose=0)
    assert result.stop_reason is not None  # diverged above the range
    for name in ("valley", "steep", "minimum"):
        suggestion = result.suggestions[name]
        assert low <= suggestion.learning_rate <= high, (name, low, high)
        assert suggestion.rule == kft.training.lr_find.RULES[name]


def test_valley_of_a_rising_curve_is_not_its_highest_rate():
    # A curve that rises from the start but for one dip between the
    # window's first two points: fastai's start index (one before the
    # stretch) made the valley index -1, the highest rate tried.
    from kft.training.lr_find import suggest

    rates = np.logspace(-4, 1, 100)
    losses = np.linspace(1.0, 3.9, 100)
    losses[10], losses[11] = 1.05, 1.04
    valley = suggest(rates, losses, 100)["valley"]
    assert valley.learning_rate == pytest.approx(rates[10])
    # A decreasing curve: halfway down its longest decreasing stretch, as
    # the rule says.
    losses = np.linspace(3.0, 1.0, 60)
    rates = np.logspace(-5, 0, 60)
    index = int(np.argmin(abs(rates - suggest(rates, losses, 60)[
        "valley"].learning_rate)))
    assert 0.4 <= (index - 6) / (54 - 6) <= 0.6
    assert "halfway" in kft.training.lr_find.RULES["valley"]


def test_plot_marks_the_suggestions(tmp_path):
    pytest.importorskip("matplotlib")
    rates = np.logspace(-5, 0, 40)
    losses = np.concatenate([np.linspace(2, 0.5, 30), np.full(10, 9.0)])
    result = kft.LRFinderResult(
        rates, losses, losses,
        kft.training.lr_find.suggest(rates, losses, 40))
    fig = result.plot(tmp_path / "lr.png")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert [label.split(":")[0] for label in labels] == [
        "smoothed loss", "valley", "steep", "minimum"]
    assert (tmp_path / "lr.png").stat().st_size > 0


@pytest.mark.parametrize("kwargs,match", [
    ({"start": 0.0}, "Argument `start` must be .*Received: start=0.0"),
    ({"end": -1.0}, "Received: end=-1.0"),
    ({"start": 1.0, "end": 0.5}, "`end` must be greater than start=1.0.*"
                                 "Received: end=0.5"),
    ({"start": 1.0, "end": 1.0}, "Received: end=1.0"),
    ({"steps": 9}, "integer >= 10. Received: steps=9"),
    ({"smoothing": 1.0}, "Received: smoothing=1.0"),
    # NumPy's "expected non-negative integer" / SeedSequence errors.
    ({"seed": -1}, r"`seed` must be an integer in \[0, 4294967295\]"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=match):
        kft.lr_find(model, (X, Y), verbose=0, **kwargs)


def test_seed_none_draws_a_fresh_order():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    result = kft.lr_find(model, (X, Y), seed=None, steps=10, verbose=0)
    assert len(result.learning_rates) == 10


def test_needs_a_compiled_model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="needs a compiled model"):
        kft.lr_find(model, (X, Y), verbose=0)


def test_models_and_data_it_cannot_ramp_are_named():
    with pytest.raises(TypeError, match=r"`model` must be a compiled "
                       r"keras\.Model\. Received: model='model\.keras'"):
        kft.lr_find("model.keras", (X, Y), verbose=0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    # Its skipped steps would shift the ramp; Keras wraps it in for
    # 'mixed_float16'.
    model.compile(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD()), "mse")
    with pytest.raises(TypeError, match=r"does not support a "
                       r"LossScaleOptimizer.*'mixed_bfloat16' or 'float32'"):
        kft.lr_find(model, (X, Y), verbose=0)
    model.compile(keras.optimizers.SGD(), "mse")
    with pytest.raises(ValueError, match=r"`data` must yield \(images, "
                       r"labels\) batches\. Received: a batch of type "
                       r"ndarray"):
        kft.lr_find(model, iter([X[:8], X[8:16]]), steps=10, verbose=0)
    # From a callback holding the model itself (not `self.model`, which
    # syncs): the step's state is not written back yet.
    errors = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            try:
                kft.lr_find(model, (X, Y), steps=10, verbose=0)
            except RuntimeError as error:
                errors.append(str(error))

    model.fit(X[:32], Y[:32], batch_size=16, epochs=1, verbose=0,
              callbacks=[Probe()])
    assert errors == ["lr_find cannot run inside a running `fit`."] * 2


def test_fine_tune_gradual_finds_the_rate_of_its_first_stage():
    # `strategy="gradual"` starts phase 2 with the head and the top block:
    # the range test ramps that set, not the whole network nor the head.
    import kft.training.fine_tune_phases as phases_module

    x = RNG.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    y = np.arange(16) % 2
    model = kft.build_classifier("simple_cnn", num_classes=2, weights=None,
                                 input_shape=(16, 16, 3))
    ramped = []
    real = phases_module.lr_find

    def spy(model, *args, **kwargs):
        ramped.append(sorted(v.path for v in model.trainable_variables))
        return real(model, *args, **kwargs)

    with mock.patch.object(phases_module, "lr_find", spy):
        kft.fine_tune(model, (x, y), strategy="gradual", head_epochs=1,
                      epochs=1, batch_size=8, learning_rate="find",
                      bn="train", verbose=0)
    kft.freeze(model, "partial", n_blocks=1, bn="train")
    assert ramped == [sorted(v.path for v in model.trainable_variables)]
    kft.freeze(model, "feature_extraction", bn="train")
    assert len(ramped[0]) > len(model.trainable_variables)


def test_fine_tune_trains_phase_2_at_the_found_rate():
    # The path `kft train --lr find` takes: the range test runs after the
    # head phase and phase 2 starts at its "valley" rate (a constant
    # schedule keeps that rate for the whole phase).
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    y = np.arange(16) % 2
    model = kft.build_classifier("simple_cnn", num_classes=2, weights=None,
                                 input_shape=(16, 16, 3))
    result = kft.fine_tune(model, (x, y), strategy="partial", head_epochs=1,
                           epochs=1, batch_size=8, learning_rate="find",
                           schedule="constant", verbose=0)
    valley = result.lr_find.suggestions["valley"].learning_rate
    assert result.learning_rate == valley
    assert 1e-7 < valley < 10
    np.testing.assert_allclose(result.histories[1]["learning_rate"][0],
                               valley, rtol=1e-5)


def test_losses_are_weighted_as_training_weighs_them():
    # The batches' sample weights (and `class_weight`) were dropped: the
    # curve measured the unweighted loss.
    labels = (np.arange(32) % 3).astype("int32")
    x = X[:32]

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
        m.compile(keras.optimizers.SGD(),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
        return m

    class Weighted:
        def __iter__(self):
            return iter([(x[i:i + 8], labels[i:i + 8],
                          np.zeros(8, "float32")) for i in range(0, 32, 8)])

    kwargs = dict(steps=10, start=1e-6, end=1e-5, verbose=0)
    zero = kft.lr_find(model(), Weighted(), **kwargs)
    np.testing.assert_array_equal(zero.raw_losses, 0.0)
    ds = kft.data.from_arrays(x[:, :, None, None].repeat(3, -1), labels,
                              batch_size=8, shuffle=False)
    m = keras.Sequential([keras.Input((8, 1, 3)), keras.layers.Flatten(),
                          keras.layers.Dense(3)])
    m.compile(keras.optimizers.SGD(),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain = kft.lr_find(m, ds, **kwargs)
    weighted = kft.lr_find(m, ds.with_class_weight({0: 2.0, 1: 2.0, 2: 2.0}),
                           **kwargs)
    by_argument = kft.lr_find(m, ds, class_weight={0: 2.0, 1: 2.0, 2: 2.0},
                              **kwargs)
    # Twice the loss (the doubled steps move the weights 1e-5 apart).
    np.testing.assert_allclose(weighted.raw_losses, 2 * plain.raw_losses,
                               rtol=1e-3)
    np.testing.assert_allclose(by_argument.raw_losses, weighted.raw_losses,
                               rtol=1e-6)


def _bar_lines(run):
    """What `run()` printed, without colours: (all of it, the bar's last
    drawn line). A non-final Progbar update is drawn only when 0.05 s have
    passed since the last one drawn; its first and final ones always are.
    (Lines drawn over with "\r": a POSIX system's Progbar.)"""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        run()
    shown = re.sub(r"\x1b\[[0-9;]*m", "", output.getvalue())
    return shown, shown.split("\nlr_find: ")[0].rsplit("\r", 1)[-1]


def test_stop_on_a_nan_loss_and_an_unbuilt_model_say_so():
    # "the smoothed loss nan exceeded 4 x its minimum inf"; an unbuilt
    # model was said to have "no trainable weights".
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(), "mse")
    # NaN targets (NaN pixels are refused before any step).
    nan = np.full(np.shape(Y), np.nan, "float32")
    result = kft.lr_find(model, (X, nan), steps=10, verbose=0)
    assert result.stop_reason.startswith("the loss was nan at rate")
    # verbose=1 shows its steps as they run (nothing until the summary
    # after up to 100 steps), the bar's line ended at the step reached,
    # also when it stops (a stop at step 1 had claimed "10/10"). Only the
    # first and last lines are certain: a loaded machine draws "10/10"
    # twice.
    shown, last = _bar_lines(
        lambda: kft.lr_find(model, (X, Y), steps=10, verbose=1))
    assert shown.startswith("\r 1/10") and last.startswith("10/10"), shown
    assert " lr: " in shown and shown.count("\nlr_find: ") == 1
    shown, last = _bar_lines(
        lambda: kft.lr_find(model, (X, nan), steps=10, verbose=1))
    assert last.startswith(" 1/10") and "10/10" not in shown, shown
    assert shown.count("\nlr_find: ") == 1
    unbuilt = keras.Sequential([keras.layers.Dense(1)])
    unbuilt.compile(keras.optimizers.SGD(), "mse")
    with pytest.raises(ValueError, match="is not built.*keras.Input"):
        kft.lr_find(unbuilt, (X, Y), steps=10, verbose=0)


def test_ramp_starts_at_start_after_the_optimizer_has_stepped():
    # lr_find is run after training (the head phase, then the range test):
    # the ramp counts its steps from the optimizer's step count. Plain SGD
    # keeps no state but that count, so the curve from the same weights
    # must not depend on it; counted from 0, a used optimizer ran rates far
    # above the recorded ones (and diverged at once).
    def run(iterations):
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(), "mse")
        model.set_weights([np.full((8, 1), 0.1, "float32"),
                           np.zeros(1, "float32")])
        model.optimizer.build(model.trainable_variables)
        model.optimizer.iterations.assign(iterations)
        result = kft.lr_find(model, (X, Y), start=1e-4, end=0.1, steps=20,
                             batch_size=64, verbose=0)
        assert int(model.optimizer.iterations) == iterations  # restored
        return result

    fresh, used = run(0), run(200)
    assert fresh.stop_reason is None and used.stop_reason is None
    assert len(used.raw_losses) == len(fresh.raw_losses) == 20
    np.testing.assert_array_equal(used.learning_rates, fresh.learning_rates)
    np.testing.assert_allclose(used.raw_losses, fresh.raw_losses, rtol=1e-6)


def test_a_run_that_stopped_early_still_gets_its_suggestions():
    # A 100-step range test that stopped (diverged) at step 16: the
    # window that skips the first tenth and the last SKIP_END points is
    # too short (1 point), so the whole recorded curve is used, and
    # `kft train --lr find` still has a rate to train at.
    from kft.training.lr_find import suggest

    rates = np.logspace(-6, -3, 16)
    losses = np.linspace(2.0, 1.0, 16)
    found = suggest(rates, losses, 100)
    assert sorted(found) == ["minimum", "steep", "valley"]
    # The lowest loss is the last point: minimum / 10.
    assert found["minimum"].learning_rate == pytest.approx(rates[-1] / 10)
    assert found["steep"].learning_rate in rates
    # One decreasing stretch over the 16 points: fastai's valley index
    # -1 + int(16 / 3) + int(16 / 6) = 6.
    assert found["valley"].learning_rate == pytest.approx(rates[6])
