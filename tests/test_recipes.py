import warnings

import keras
import numpy as np
import pytest

import kft

SHAPE = (16, 16, 3)


@pytest.fixture(scope="module")
def data():
    return kft.datasets.digits(image_size=16, target_per_class=6,
                               val_per_class=4)


def _model():
    return kft.build_classifier("simple_cnn", num_classes=5, weights=None,
                                input_shape=SHAPE)


@pytest.mark.parametrize("strategy,expected_phase2_trainable", [
    ("partial", {"block3_conv", "head_dense"}),
    ("full", {"stem_conv", "block1_conv", "block2_conv", "block3_conv",
              "head_dense"}),
    ("gradual", {"block1_conv", "block2_conv", "block3_conv", "head_dense"}),
])
def test_two_phases_train_what_the_strategy_says(data, strategy,
                                                 expected_phase2_trainable):
    model = _model()
    stem_before = np.array(model.get_layer("simple_cnn")
                           .get_layer("stem_conv").kernel.value)
    result = kft.fine_tune(model, data.target_train, data.target_val,
                           strategy=strategy, head_epochs=1, epochs=3,
                           verbose=0)
    assert len(result.histories) == 2
    assert len(result.histories[0]["loss"]) == 1
    assert len(result.histories[1]["loss"]) == 3
    layers = {v.path.split("/")[0] for v in model.trainable_variables}
    assert layers == expected_phase2_trainable
    stem_after = np.array(model.get_layer("simple_cnn")
                          .get_layer("stem_conv").kernel.value)
    assert np.array_equal(stem_before, stem_after) == (strategy != "full") \
        or result.best_epoch == 0
    # Phase 2 runs at the lower, cosine-decayed rate.
    lrs = result.histories[1]["learning_rate"]
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] < lrs[0]
    if strategy == "gradual":
        assert result.histories[1]["unfrozen_blocks"] == [1, 2, 3]


def test_keeps_the_best_epoch_weights(data):
    model = _model()
    result = kft.fine_tune(model, data.target_train, data.target_val,
                           strategy="full", head_epochs=1, epochs=3,
                           learning_rate=0.5, verbose=0)
    all_losses = result.histories[0]["val_loss"] + result.histories[1]["val_loss"]
    assert result.monitor == "val_loss"
    assert result.best_value == pytest.approx(min(all_losses))
    assert result.best_epoch == int(np.argmin(all_losses))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    logs = model.evaluate(*data.target_val, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], result.best_value, rtol=1e-4)


def test_feature_extraction_is_one_phase(data):
    model = _model()
    result = kft.fine_tune(model, data.target_train, strategy="feature_extraction",
                           head_epochs=2, verbose=0)
    assert len(result.histories) == 1 and result.monitor == "loss"
    assert {v.path.split("/")[0] for v in model.trainable_variables} == {
        "head_dense"}


def test_phase_1_stopped_on_nan_weights_skips_phase_2(data):
    # What `TerminateOnNaN` leaves after a diverging step, made exactly:
    # the second epoch ends with NaN weights and a stop.
    class Diverge(keras.callbacks.Callback):
        fits = 0

        def on_train_begin(self, logs=None):
            Diverge.fits += 1

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.get_layer("head_dense").kernel
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))
                self.model.stop_training = True

    model = _model()
    with pytest.warns(UserWarning, match="phase 2 is skipped") as record:
        result = kft.fine_tune(model, data.target_train, data.target_val,
                               strategy="partial", head_epochs=3, epochs=2,
                               cache_features=False, callbacks=[Diverge()],
                               verbose=0)
    # Named at the caller's line: shown again for the next run it skips.
    assert [w.filename for w in record if "phase 2" in str(w.message)] == [
        __file__]
    assert Diverge.fits == 1 and len(result.histories) == 1
    assert result.learning_rate is None  # phase 2 did not run
    # KeepBest saw epoch 1 before the weights went NaN: kept as they were.
    assert result.best_epoch in (0, 1)
    assert all(np.isfinite(v.value).all() for v in model.weights)


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="strategy.*Received: strategy='all'"):
        kft.fine_tune(_model(), data.target_train, strategy="all")
    with pytest.raises(ValueError, match="Received: head_epochs=0"):
        kft.fine_tune(_model(), data.target_train, head_epochs=0)
    # Checked before any training, whatever phase uses them.
    for name, value in (("n_blocks", 0), ("batch_size", 0),
                        ("early_stopping_patience", -1),
                        ("weight_decay", -0.1), ("learning_rate", 0.0)):
        with pytest.raises(ValueError,
                           match=f"Argument `{name}` must be .*Received: "
                                 f"{name}={value}"):
            kft.fine_tune(_model(), data.target_train, **{name: value})
    with pytest.raises(ValueError, match=r"`monitor` must be a quantity each "
                       r"epoch logs.*Received: monitor='val_f1'"):
        kft.fine_tune(_model(), data.target_train, data.target_val,
                      monitor="val_f1", head_epochs=1, epochs=0, verbose=0)


def test_monitor_direction_comes_from_the_metric_object(data):
    # "top2" has neither "acc" nor "f1" in its name; it must still be
    # maximised, so the kept epoch is the one with the highest value.
    model = _model()
    result = kft.fine_tune(
        model, data.target_train, data.target_val, strategy="full",
        head_epochs=2, epochs=3, learning_rate=1e-3, verbose=0,
        metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2,
                                                             name="top2")],
        monitor="val_top2")
    values = result.histories[0]["val_top2"] + result.histories[1]["val_top2"]
    assert result.mode == "max"
    assert result.best_value == pytest.approx(max(values))
    assert result.best_epoch == int(np.argmax(values))


def test_explicit_mode_and_unknown_direction(data):
    model = _model()
    result = kft.fine_tune(model, data.target_train, data.target_val,
                           strategy="feature_extraction", head_epochs=2,
                           monitor="val_loss", mode="max", verbose=0)
    assert result.mode == "max"
    assert result.best_value == pytest.approx(
        max(result.histories[0]["val_loss"]))
    with pytest.raises(ValueError, match="maximised or minimised.*mode="):
        kft.fine_tune(_model(), data.target_train, data.target_val,
                      strategy="feature_extraction", head_epochs=1,
                      metrics=[keras.metrics.MeanMetricWrapper(
                          lambda y, logits: keras.ops.max(logits, axis=-1),
                          name="margin")],
                      monitor="val_margin", verbose=0)
    with pytest.raises(ValueError, match="Received: mode='best'"):
        kft.fine_tune(_model(), data.target_train, mode="best")


class _FirstUpdateOfNewBlocks(keras.callbacks.Callback):
    """Ratio |first update| / learning rate of each block unfrozen later."""

    def __init__(self):
        super().__init__()
        self.ratios, self._known, self._new = {}, None, []

    def on_epoch_begin(self, epoch, logs=None):
        trainable = {v.path: v for v in self.model.trainable_variables
                     if v.path.endswith("kernel")}
        if self._known is not None:
            self._new = [(p, np.array(v.value)) for p, v in trainable.items()
                         if p not in self._known]
        self._known = set(trainable)

    def on_train_batch_end(self, batch, logs=None):
        if batch != 0 or not self._new:
            return
        self.model.jax_state_sync()
        # The rate of the step just taken: phase 2's cosine changes it at
        # every step, so it is the schedule at the step count before it.
        optimizer = self.model.optimizer
        step = int(np.asarray(optimizer.iterations.value)) - 1
        rate = float(kft._compat.raw_learning_rate(optimizer)(step))
        current = {v.path: v for v in self.model.trainable_variables}
        for path, before in self._new:
            step = np.abs(np.array(current[path].value) - before)
            self.ratios[path] = float(np.median(step[step > 0]) / rate)
        self._new = []


def test_gradual_recipe_counts_adam_steps_per_block(data):
    # Blocks unfrozen in phase 2's second and third epochs take their first
    # AdamW step at the learning rate (bias correction of step 1), not at
    # the shared counter's (0.5x at step 5 here, 2.5x after 1000 steps).
    model = _model()
    probe = _FirstUpdateOfNewBlocks()
    result = kft.fine_tune(model, data.target_train, data.target_val,
                           strategy="gradual", head_epochs=1, epochs=3,
                           weight_decay=0.0, batch_size=8, verbose=0,
                           callbacks=[probe])
    assert isinstance(model.optimizer, kft.BlockwiseOptimizer)
    assert result.histories[1]["unfrozen_blocks"] == [1, 2, 3]
    assert set(probe.ratios) == {"block3_conv/kernel", "block2_conv/kernel",
                                 "block1_conv/kernel"}
    for path, ratio in probe.ratios.items():
        assert ratio == pytest.approx(1.0, rel=0.02), path


def test_layer_decay_scales_block_rates(data):
    model = _model()
    kft.fine_tune(model, data.target_train, strategy="full", head_epochs=1,
                  epochs=1, layer_decay=0.5, verbose=0)
    rates = model.optimizer.learning_rates
    assert rates["head"] == pytest.approx(1e-4)
    assert rates["block3"] == pytest.approx(5e-5)
    with pytest.raises(ValueError, match="Received: layer_decay=1.5"):
        kft.fine_tune(_model(), data.target_train, layer_decay=1.5)


def test_data_forms_and_labels_that_do_not_fit(data):
    x, y = data.target_train
    # A list pair, numpy integer epoch counts.
    result = kft.fine_tune(_model(), [x, y], list(data.target_val),
                           strategy="feature_extraction",
                           head_epochs=np.int64(1), verbose=0)
    assert len(result.histories[0]["loss"]) == 1
    # One-hot labels get the categorical loss by default.
    one_hot = np.eye(5, dtype="float32")[y]
    result = kft.fine_tune(_model(), (x, one_hot), strategy="partial",
                           head_epochs=1, epochs=1, verbose=0)
    assert np.isfinite(result.best_value)
    with pytest.raises(ValueError, match=r"outside \[0, 5\).*: 5, 6"):
        kft.fine_tune(_model(), (x, (y + 2) % 7), head_epochs=1, verbose=0)
    with pytest.raises(ValueError, match="one-hot labels of width 7"):
        kft.fine_tune(_model(), (x, np.eye(7)[y]), head_epochs=1, verbose=0)
    with pytest.raises(ValueError, match="pair.*length 3"):
        kft.fine_tune(_model(), [x, y, y], head_epochs=1, verbose=0)


def test_says_which_epoch_was_kept(data, capsys):
    result = kft.fine_tune(_model(), data.target_train, data.target_val,
                           strategy="partial", head_epochs=1, epochs=2,
                           verbose=1)
    out = capsys.readouterr().out
    assert "fine_tune: kept the weights of epoch 3 of 3, the best val_loss=" \
        in out
    # At these small default rates the loss still falls at the end: the
    # message says the run stopped short (it did not before).
    assert result.best_epoch == 2 and "training had not levelled off" in out
    result = kft.fine_tune(_model(), data.target_train, data.target_val,
                           strategy="partial", head_epochs=1, epochs=2,
                           learning_rate=10.0, verbose=1)
    out = capsys.readouterr().out
    assert result.best_epoch < 2 and "did not improve on it." in out
    assert "levelled off" not in out


def test_no_numpy_array_copy_warnings(data):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kft.fine_tune(_model(), data.target_train, data.target_val,
                      strategy="full", head_epochs=1, epochs=2, verbose=0)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "__array__" in m], messages


def test_gradual_stages_follow_unfreeze_every(data):
    model = _model()
    result = kft.fine_tune(model, data.target_train, strategy="gradual",
                           head_epochs=1, epochs=4, unfreeze_every=2,
                           verbose=0)
    assert result.histories[1]["unfrozen_blocks"] == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="Received: unfreeze_every=0"):
        kft.fine_tune(_model(), data.target_train, unfreeze_every=0)
    with pytest.raises(ValueError, match="Received: bn='eval'"):
        kft.fine_tune(_model(), data.target_train, bn="eval")


def test_data_form_helpers():
    from kft.training import fit_data

    x, y = np.zeros((4, 16, 16, 3), "float32"), np.arange(4) % 2
    plain = kft.data.from_arrays(x, y, batch_size=2)
    augmented = kft.data.from_arrays(x, y, batch_size=2,
                                     augmentation="light")
    assert not fit_data.dataset_augments(plain)
    assert fit_data.dataset_augments(augmented)
    assert fit_data.plain_data(None) and fit_data.plain_data((x, y))
    assert fit_data.plain_data(plain)
    assert not fit_data.plain_data(augmented)
    assert not fit_data.plain_data((x, [0, 1, 0, 1]))  # a list: unknown
    assert not fit_data.plain_data(iter([(x, y)]))
    assert fit_data.one_hot_labels((x, np.eye(2)[y]))
    assert not fit_data.one_hot_labels((x, y))
    assert fit_data.as_pair([x, list(y)], "d")[1].tolist() == [0, 1, 0, 1]
    assert fit_data.num_examples((x, y)) == 4
    assert fit_data.num_examples(plain) is None
    assert [len(b) for b, _ in fit_data.batches((x, y), 3)] == [3, 1]
    with pytest.raises(ValueError, match="dataset augments its images"):
        next(fit_data.batches(augmented, 2))


def test_phase_2_schedules_have_their_documented_shapes():
    # `warmup`: a linear ramp from 0 over that fraction of phase 2's
    # steps, then the cosine to 0 over the steps left; `one_cycle`:
    # fastai's, Adam's beta_1 cycling 0.95 -> 0.85 -> 0.95.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16,) + SHAPE).astype("float32")
    y = np.arange(16) % 2

    def phase_2(**kwargs):
        model = kft.build_classifier("simple_cnn", num_classes=2,
                                     weights=None, input_shape=SHAPE)
        result = kft.fine_tune(model, (x, y), (x, y), strategy="full",
                               bn="train", head_epochs=1, epochs=4,
                               batch_size=8, learning_rate=1e-3, verbose=0,
                               **kwargs)
        return model, result.histories[1]["learning_rate"]

    # 2 steps an epoch, 8 in phase 2, 4 of warm-up: each epoch's first
    # step's rate is logged (steps 0, 2, 4, 6).
    _, rates = phase_2(warmup=0.5)
    np.testing.assert_allclose(rates, [0.0, 5e-4, 1e-3, 5e-4], atol=1e-9)
    model, _ = phase_2(schedule="one_cycle")
    beta_1 = model.optimizer.momentum_schedule
    assert beta_1 is not None
    cycle = [float(beta_1(step)) for step in np.linspace(0, 7, 71)]
    assert (round(cycle[0], 4), round(min(cycle), 4),
            round(cycle[-1], 2)) == (0.95, 0.85, 0.95)


def test_schedule_arguments_checked_before_training(data):
    for kwargs, match in (
            ({"schedule": "step"}, "Received: schedule='step'"),
            ({"learning_rate": "auto"}, "Received: learning_rate='auto'"),
            ({"learning_rate": -1e-3}, "Received: learning_rate=-0.001"),
            ({"warmup": 1.0}, r"warmup.*\[0.0, 1.0\).*Received: warmup=1.0"),
            ({"warmup": -0.1}, "Received: warmup=-0.1"),
            ({"schedule": "one_cycle", "warmup": 0.2},
             "one-cycle warms up itself.*Received: warmup=0.2")):
        with pytest.raises(ValueError, match=match):
            kft.fine_tune(_model(), data.target_train, verbose=0, **kwargs)
    unsized = iter([data.target_train])
    with pytest.raises(ValueError, match="number of batches is unknown"):
        kft.fine_tune(_model(), unsized, schedule="cosine", verbose=0)


def test_argument_checks_refuse_and_accept_at_their_boundaries():
    # Each check applies where its reason does: a warm-up is a schedule a
    # ReduceLROnPlateau cannot set (phase 1 trained, then phase 2 failed);
    # feature extraction has no phase 2 to schedule or to penalise;
    # one-cycle takes "at least 4" steps.
    from kft.training.fine_tune import check_fine_tune_arguments

    x, y = np.zeros((32,) + SHAPE, "float32"), np.arange(32) % 2
    model = kft.build_classifier("simple_cnn", num_classes=2, weights=None,
                                 input_shape=SHAPE)
    plateau = [keras.callbacks.ReduceLROnPlateau()]
    with pytest.raises(ValueError, match="Argument `callbacks` must be "
                       "callbacks that do not set the learning rate"):
        check_fine_tune_arguments(model, (x, y), schedule="constant",
                                  warmup=0.2, callbacks=plateau)
    check_fine_tune_arguments(model, (x, y), schedule="constant",
                              callbacks=plateau)
    check_fine_tune_arguments(model, (x, y), strategy="feature_extraction",
                              callbacks=plateau)
    check_fine_tune_arguments(model, (x, y), schedule="one_cycle", epochs=1,
                              batch_size=8)  # 4 steps
    with pytest.raises(ValueError, match="phase 2 of 3 steps"):
        check_fine_tune_arguments(model, (x[:24], y[:24]),
                                  schedule="one_cycle", epochs=1,
                                  batch_size=8)
    for strategy, warned in (("feature_extraction", False),
                             ("partial", True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_fine_tune_arguments(model, (x, y), strategy=strategy,
                                      regularizer=kft.L2SP(alpha=0.01))
        assert warned == any("includes the L2SP penalty" in str(w.message)
                             for w in caught), strategy


def test_callbacks_the_user_brings_see_one_run(data):
    """A user's `History` made both phases' histories one growing dict
    (compare_strategies recorded every earlier run's epochs too)."""
    history = keras.callbacks.History()
    result = kft.fine_tune(_model(), data.target_train, data.target_val,
                           strategy="partial", head_epochs=2, epochs=3,
                           verbose=0, callbacks=[history])
    assert [len(h["loss"]) for h in result.histories] == [2, 3]
    assert result.histories[0] is not result.histories[1]
    # The History saw every epoch, as Keras' own fit calls would show it.
    assert len(history.history["loss"]) == 5


def test_checkpoints_that_would_save_the_wrong_model(data, tmp_path):
    """In a cached phase 1 a ModelCheckpoint saved the head model alone;
    a BackupAndRestore restored phase 2's state into phase 1 on a rerun."""
    path = tmp_path / "m.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(str(path))
    model = _model()
    with pytest.raises(ValueError, match=r"ModelCheckpoint there would "
                       r"save the head model alone.*cache_features='auto' "
                       r"or False"):
        kft.fine_tune(model, data.target_train, data.target_val,
                      strategy="feature_extraction", head_epochs=1,
                      verbose=0, callbacks=[checkpoint], cache_features=True)
    assert not path.exists()
    # Refused before anything changed the model (it was left frozen).
    assert all(layer.trainable for layer in model.layers)
    assert not model.compiled
    # "auto" trains phase 1 on the whole model then: the classifier saved.
    model = _model()
    kft.fine_tune(model, data.target_train, data.target_val,
                  strategy="feature_extraction", head_epochs=1, verbose=0,
                  callbacks=[checkpoint])
    assert keras.models.load_model(str(path)).input_shape == (
        model.input_shape)
    for resumer in (keras.callbacks.BackupAndRestore(str(tmp_path / "b")),
                    kft.callbacks.BackupAndRestore(str(tmp_path / "k"))):
        with pytest.raises(ValueError, match=r"BackupAndRestore \(it "
                           r"resumes one fit.*kft.runs.RunBackup"):
            kft.fine_tune(_model(), data.target_train, data.target_val,
                          head_epochs=1, epochs=1, verbose=0,
                          callbacks=[resumer])


@pytest.mark.parametrize("strategy", ["partial", "gradual"])
def test_a_second_unfreezer_among_the_callbacks_is_refused(data, strategy):
    # It overrode `n_blocks` ("partial") or unfroze beside fine_tune's own
    # ("gradual"), while the history logged the recipe's stages.
    model = _model()
    unfreezer = kft.callbacks.GradualUnfreezing(milestones=[1], verbose=0)
    with pytest.raises(ValueError, match=r"without a GradualUnfreezing "
                       r"\(fine_tune sets .*model.fit.*GradualUnfreezing"):
        kft.fine_tune(model, data.target_train, data.target_val,
                      strategy=strategy, head_epochs=1, epochs=2, verbose=0,
                      callbacks=[unfreezer])
    assert not model.compiled  # refused before anything trained


def test_compare_strategies_refuses_a_second_unfreezer_before_training(
        data):
    builds = []

    def build(seed):
        builds.append(seed)
        return _model()

    with pytest.raises(ValueError, match="Strategy 'partial'.*without a "
                       "GradualUnfreezing"):
        kft.compare_strategies(
            build, data.target_train, data.target_val, data.target_test,
            strategies=["partial"], seeds=[0], epochs=2, head_epochs=1,
            callbacks=[kft.callbacks.GradualUnfreezing(every=1)])
    assert len(builds) == 2  # the two checking builds, no run


def test_an_epoch_with_weights_that_are_not_finite_is_never_kept():
    # Diverged weights predict one class: its share of an imbalanced
    # validation set can be the best accuracy, and fine_tune returned
    # the model on inf/NaN weights.
    from kft.training.phases import KeepBest

    class Score(keras.callbacks.Callback):  # runs before KeepBest
        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = float(epoch)  # better every epoch
            if epoch == 2:
                kernel = self.model.layers[-1].kernel
                kernel.assign(np.full(kernel.shape, np.inf, "float32"))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    keep = KeepBest("score", "max", model)
    model.fit(np.ones((4, 2)), np.ones(4), epochs=3, verbose=0,
              callbacks=[Score(), keep])
    assert keep.best_epoch == 1 and keep.last_epoch == 2
    assert all(np.isfinite(w).all() for w in keep.weights)
