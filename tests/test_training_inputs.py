"""What `fine_tune`, `lr_find`, `cache_features` and `from_arrays` accept,
and what they reject before anything trains."""

import fractions
import gc
import os

import keras
import numpy as np
import pytest

import kft
from kft.training import fine_tune_checks as recipes
from kft.training.fit_data import check_data_labels
from kft.training.fit_data import one_hot_labels

SHAPE = (16, 16, 3)


def _data(n=16, classes=3):
    x = np.random.default_rng(0).random((n, *SHAPE)).astype("float32")
    return x, np.arange(n) % classes


def _model():
    keras.utils.set_random_seed(0)
    return kft.build_classifier("simple_cnn", 3, weights=None,
                                input_shape=SHAPE)


def _peak(y_true, y_pred):
    """A metric function: Keras logs it under its name, no direction."""
    return keras.ops.max(y_pred, axis=-1)


def F1(y_true, y_pred):  # noqa: N802 (a name Keras logs as "f1")
    return keras.ops.max(y_pred, axis=-1)


def _weights(model):
    return [np.array(v.value) for v in model.weights]


def _unchanged(model, before):
    return all(np.array_equal(a, b) for a, b in zip(before, _weights(model)))


def test_caches_in_one_directory_keep_their_own_files(tmp_path):
    x, y = _data()
    model = _model()
    kft.freeze(model, "feature_extraction")
    reference = kft.cache_features(model, (x, y), verbose=0).features
    train = kft.cache_features(model, (x, y), memory_budget=1,
                               directory=str(tmp_path), verbose=0)
    val = kft.cache_features(model, [np.ones_like(x[:8]), y[:8]],
                             memory_budget=1, directory=str(tmp_path),
                             verbose=0)
    assert train.path != val.path
    assert {os.path.dirname(c.path) for c in (train, val)} == {str(tmp_path)}
    # The second cache did not write over the first one's file.
    np.testing.assert_array_equal(np.array(train.features), reference)
    assert not np.allclose(np.array(val.features), reference[:8])
    # A list pair is a pair (labels kept), as in fine_tune.
    np.testing.assert_array_equal(val.labels, y[:8])
    paths = [train.path, val.path]
    del train, val
    gc.collect()
    assert not any(os.path.exists(path) for path in paths)


def test_a_model_without_a_head_block_is_refused():
    x, y = _data()
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([
        keras.Input(SHAPE), keras.layers.Conv2D(4, 3, name="c1"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, name="out")])
    with pytest.raises(ValueError, match='without a "head" block.*'
                                         r"\['c1', 'out'\]"):
        kft.freeze(plain, "feature_extraction")
    before = _weights(plain)
    with pytest.raises(ValueError, match='Argument `model` must have a '
                                         '"head" block'):
        kft.fine_tune(plain, (x, y), strategy="feature_extraction",
                      verbose=0)
    assert _unchanged(plain, before)
    # A head named in `patterns` trains alone.
    names = kft.freeze(plain, "feature_extraction",
                       patterns={"body": "^c1$", "head": "^out$"})
    assert names == ["head"]
    assert {v.path.split("/")[-2] for v in plain.trainable_variables} == {
        "out"}


def test_fine_tune_checks_its_arguments_before_training():
    x, y = _data()
    model = _model()
    before = _weights(model)
    cases = [
        (dict(strategy="partial", n_blocks=5),
         r"`n_blocks` must be an integer from 1 to 4 .*n_blocks=5"),
        # 16 images in batches of 8, one epoch: 2 steps.
        (dict(schedule="one_cycle", batch_size=8, epochs=1),
         r"phase 2 of 2 steps \(epochs=1 x 2 batches per epoch\): "
         "'one_cycle' needs at least 4"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            # A penalty is bound only once every check passed: the
            # corrected call must not find one already there.
            kft.fine_tune(model, (x, y), verbose=0,
                          regularizer=kft.L2SP(alpha=0.01), **kwargs)
        assert not model.losses
    for train, val in [((x, y), (x, np.eye(3)[y])),
                       ((x, np.eye(3)[y]), (x, y))]:
        with pytest.raises(ValueError, match="labels in the same form"):
            kft.fine_tune(model, train, val, verbose=0)
    # A monitor never logged, metrics or a loss Keras cannot read: found
    # after the head phase had trained a batch (or at compile), the model
    # frozen; metrics="accuracy" failed as the metric "a".
    trainable = len(model.trainable_weights)
    for kwargs, message in [
            (dict(monitor="val_acc"), r"one of \['loss', 'accuracy', "
             r"'val_loss', 'val_accuracy'\].*monitor='val_acc'"),
            (dict(metrics=["acc"], monitor="val_accuracy"),
             r"\['loss', 'acc', 'val_loss', 'val_acc'\]"),
            (dict(monitor="val_loss", val=False), r"\['loss', 'accuracy'\]"),
            (dict(metrics=["accuracy", "nope"]), r"metrics.*'nope'"),
            (dict(loss="nope"), r"`loss` must be a Keras loss.*'nope'"),
            # Logged in phase 2 only (gradual unfreezing's stage).
            (dict(monitor="unfrozen_blocks", strategy="gradual"),
             r"monitor='unfrozen_blocks'"),
            # A metric function named as Keras names it: the check ran.
            (dict(metrics=["accuracy", _peak], monitor="val_acuracy"),
             r"'val_accuracy', 'val__peak'\].*monitor='val_acuracy'"),
            # No direction for "auto": found at the first epoch's end.
            (dict(metrics=[_peak], monitor="val__peak"),
             r"`mode` must be 'max' or 'min' for monitor='val__peak'"),
            (dict(monitor="learning_rate"), r"monitor='learning_rate'.*"
             r"Received: mode='auto'")]:
        val = (x, y) if kwargs.pop("val", True) else None
        with pytest.raises(ValueError, match=message):
            kft.fine_tune(model, (x, y), val, verbose=0, **kwargs)
    assert getattr(model, "optimizer", None) is None
    assert len(model.trainable_weights) == trainable
    # Images without labels: an AttributeError on None's shape.
    for train, val in [(x, None), ((x, y), x)]:
        with pytest.raises(ValueError, match=r"an array has no labels.*"
                           r"shape \(16, 16, 16, 3\)"):
            kft.fine_tune(model, train, val, verbose=0)
    # One metric name alone is read as a list of one.
    from kft.training.fine_tune import check_fine_tune_arguments

    check_fine_tune_arguments(model, (x, y), (x, y), metrics="accuracy",
                              monitor="val_accuracy")
    check_fine_tune_arguments(model, (x, y), (x, y), metrics=[_peak],
                              monitor="val__peak", mode="max")
    # Keras logs a function as its name in snake case: F1 as "f1".
    check_fine_tune_arguments(model, (x, y), (x, y), metrics=[F1],
                              monitor="val_f1", mode="max")
    with pytest.raises(ValueError, match="monitor='val_F1'"):
        check_fine_tune_arguments(model, (x, y), (x, y), metrics=[F1],
                                  monitor="val_F1", mode="max")
    check_fine_tune_arguments(model, (x, y), (x, y), monitor="learning_rate",
                              mode="min")
    # A Keras metric name other than accuracy: its class (AUC) declares
    # the direction, so mode="auto" needs no help.
    check_fine_tune_arguments(model, (x, y), (x, y), metrics=["auc"],
                              monitor="val_auc")
    for metrics, message in [
            ([3], r"`metrics` must be Keras metric names, objects or "
             r"functions\. Received: metrics=3"),
            ({"out": "accuracy"}, r"`metrics` must be a list of Keras "
             r"metrics, e\.g\. \['accuracy'\]\. Received: "
             r"metrics=\{'out': 'accuracy'\}")]:
        with pytest.raises(TypeError, match=message):
            check_fine_tune_arguments(model, (x, y), (x, y), metrics=metrics)
    assert _unchanged(model, before)
    # The cycle's shortest length is kft.OneCycle's own.
    kft.OneCycle(1.0, recipes.ONE_CYCLE_MIN_STEPS)
    with pytest.raises(ValueError, match="pct_start"):
        kft.OneCycle(1.0, recipes.ONE_CYCLE_MIN_STEPS - 1)


def test_early_stopping_follows_the_mode_given_for_a_metric_function(
        monkeypatch):
    # Keras cannot tell a metric function's direction: the early stopping
    # took mode="auto" and raised at the first epoch's end, after phase 1
    # had trained, although `mode` was given.
    from kft.training import phases

    modes = []

    class Recorded(phases.ResumedEarlyStopping):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            modes.append(self.mode)

    monkeypatch.setattr(phases, "ResumedEarlyStopping", Recorded)
    x, y = _data()
    result = kft.fine_tune(_model(), (x, y), (x, y), metrics=[_peak],
                           monitor="val__peak", mode="max",
                           early_stopping_patience=1, head_epochs=1,
                           epochs=2, batch_size=8, bn="train", verbose=0)
    assert result.mode == "max" and set(modes) == {"max"}, modes
    assert [len(h["val__peak"]) for h in result.histories] == [1, 2]


def test_find_is_refused_up_front_under_mixed_float16():
    x, y = _data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    before = _weights(model)
    with pytest.raises(ValueError, match="`learning_rate` must be a number "
                                         "under the 'mixed_float16'"):
        kft.fine_tune(model, (x, y), learning_rate="find", verbose=0)
    assert _unchanged(model, before)


def test_column_labels_are_integer_labels_and_phase_1_logs_its_rate():
    x, y = _data()
    assert not one_hot_labels((x, y[:, None]))
    check_data_labels((x, y[:, None]), 3, "train_data")
    with pytest.raises(ValueError, match=r"outside \[0, 3\).*: 3\."):
        check_data_labels((x, y[:, None] + 1), 3, "train_data")
    results = [kft.fine_tune(_model(), (x, labels), strategy=
                             "feature_extraction", head_epochs=2,
                             head_learning_rate=0.01, batch_size=8,
                             cache_features=cache, verbose=0)
               for labels, cache in ((y, False), (y[:, None], False),
                                     (y[:, None], True))]
    losses = [r.histories[0]["loss"] for r in results]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
    np.testing.assert_allclose(losses[2], losses[0], rtol=1e-4)
    # Phase 1, cached or not, logs the rate of each epoch as phase 2 does.
    for result in results:
        assert result.histories[0]["learning_rate"] == pytest.approx(
            [0.01, 0.01])


def test_from_arrays_takes_column_and_whole_float_labels():
    x = np.zeros((6, 4, 4, 3), "uint8")
    y = np.array([0, 1, 2, 0, 1, 2])
    reference = kft.data.from_arrays(x, y, shuffle=False)
    for labels in (y[:, None], y.astype("float32"),
                   y[:, None].astype("float64")):
        dataset = kft.data.from_arrays(x, labels, shuffle=False)
        assert dataset.label_mode == "int"
        assert dataset.class_counts == reference.class_counts
        np.testing.assert_array_equal(next(iter(dataset))[1], y)
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, 1\)"):
        kft.data.from_arrays(x, y + 0.5)


def _compiled_classifier():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_lr_find_rejects_what_it_cannot_test_on():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.arange(16) % 3
    model = _compiled_classifier()
    before = _weights(model)

    def one_shot():
        yield x[:8], y[:8]
        yield x[8:], y[8:]

    cases = [
        ((x[:0], y[:0]), "at least one image.*0 images, 0 labels"),
        (x, r"\(images, labels\) arrays.*shape \(16, 4\) without labels"),
        ((x, y + 5), r"`data\[1\]` holds labels outside \[0, 3\).*5, 6, 7"),
        (one_shot(), "yielded 2 batches, then none when iterated again.*"
                     "steps=10"),
        (iter([]), "yielded none"),
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            kft.lr_find(model, data, steps=10, verbose=0)
    assert _unchanged(model, before)
    # Column labels are integer labels there too.
    plain = kft.lr_find(model, (x, y), steps=10, batch_size=8, verbose=0)
    column = kft.lr_find(model, (x, y[:, None]), steps=10, batch_size=8,
                         verbose=0)
    np.testing.assert_allclose(column.raw_losses, plain.raw_losses,
                               rtol=1e-6)
    assert np.all(plain.raw_losses > 0.1)


def test_blockwise_learning_rates_must_be_a_dict():
    for value in ([0.1], {1: 0.1}):
        with pytest.raises(TypeError, match="Argument `learning_rates` must "
                                            "be a dict of group"):
            kft.BlockwiseOptimizer(keras.optimizers.SGD(0.1), value)


def test_one_hot_dataset_must_match_the_model_width():
    x = np.zeros((4, 8, 8, 3), "float32")
    two = kft.data.from_arrays(x, np.array([0, 1, 0, 1]), batch_size=2,
                               label_mode="categorical")
    with pytest.raises(ValueError, match=r"2 classes .*one-hot rows\) but "
                                         r"the model outputs 3"):
        check_data_labels(two, 3, "train_data")
    # Integer labels of fewer classes fit a wider model.
    check_data_labels(kft.data.from_arrays(x, np.array([0, 1, 0, 1]),
                                           batch_size=2), 3, "train_data")
    check_data_labels(two, 2, "train_data")


def test_training_refuses_data_naming_the_models_classes_otherwise():
    # Folders cat/ Dog/ fox/ sort as ['Dog', 'cat', 'fox']: a model named
    # ['cat', 'dog', 'fox'] trained on them without a word and predicted
    # 'cat' for dogs; `kft.evaluate` refused the pair after training. And
    # `model.fit` took 7 classes into 5 outputs (labels 5, 6: loss 0).
    x = np.zeros((6, 8, 8, 3), "float32")
    data = kft.data.from_arrays(x, np.arange(6) % 3, batch_size=3,
                                class_names=["Dog", "cat", "fox"])
    model = kft.build_classifier("simple_cnn", weights=None,
                                 input_shape=(8, 8, 3),
                                 class_names=["cat", "dog", "fox"])
    message = (r"Argument `train_data` names its classes otherwise than the "
               r"model: .*missing: \['dog'\]; not in the model: "
               r"\['Dog'\]\. Model classes")
    with pytest.raises(ValueError, match=message):
        kft.fine_tune(model, data, verbose=0)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True))
    with pytest.raises(ValueError, match=message.replace("train_data",
                                                         "data")):
        kft.lr_find(model, data, steps=10, verbose=0)
    with pytest.raises(ValueError, match=r"`x` names its classes otherwise"):
        model.fit(data, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`validation_data` names its "
                       r"classes otherwise .*the same classes in another "
                       r"order"):
        model.fit(x, np.arange(6) % 3, epochs=1, verbose=0,
                  validation_data=kft.data.from_arrays(
                      x, np.arange(6) % 3, batch_size=3,
                      class_names=["cat", "fox", "dog"]))
    seven = kft.data.from_arrays(np.zeros((7, 8, 8, 3), "float32"),
                                 np.arange(7), batch_size=7)
    with pytest.raises(ValueError, match=r"`x` has 7 classes .* but the "
                       r"model outputs 3"):
        model.fit(seven, epochs=1, verbose=0)
    # One class more than the outputs, the closest case: label 3 trained
    # silently on (JAX gathers a label past the last column as loss 0).
    four = kft.data.from_arrays(np.zeros((4, 8, 8, 3), "float32"),
                                np.arange(4), batch_size=4)
    with pytest.raises(ValueError, match=r"`x` has 4 classes .* but the "
                       r"model outputs 3"):
        model.fit(four, epochs=1, verbose=0)
    three = kft.data.from_arrays(x, np.arange(6) % 3, batch_size=3)
    for train, val, name in ((four, None, "train_data"),
                             (three, four, "val_data")):
        with pytest.raises(ValueError, match=rf"`{name}` has 4 classes "
                           r".* but the model outputs 3"):
            kft.fine_tune(model, train, val, cache_features=False,
                          verbose=0)
    # The model's first classes, in its order (a subset), and numbered
    # classes train as before.
    for names in (["cat", "dog"], None):
        model.fit(kft.data.from_arrays(x[:4], np.arange(4) % 2, batch_size=2,
                                       class_names=names), epochs=1,
                  verbose=0)


def test_fine_tune_refuses_what_it_would_ignore_or_crash_on_later():
    x, y = _data()
    model = _model()
    before = _weights(model)
    cases = [
        # Dropped silently (only "partial" reads it).
        (dict(strategy="full", n_blocks=3), ValueError,
         r"`n_blocks` must be left at its default \(1\) with "
         r"strategy='full': only strategy='partial' reads it"),
        (dict(strategy="partial", unfreeze_every=3), ValueError,
         r"`unfreeze_every` must be .* only strategy='gradual' reads it"),
        (dict(strategy="feature_extraction", epochs=20), ValueError,
         r"`epochs` must be left at its default \(10\) with "
         r"strategy='feature_extraction': feature extraction has no phase "
         r"2 .*`head_epochs`.*Received: epochs=20"),
        (dict(strategy="feature_extraction", layer_decay=0.7), ValueError,
         "`layer_decay` must be left at its default"),
        (dict(strategy="feature_extraction", learning_rate="find"),
         ValueError, "`learning_rate` must be left at its default"),
        (dict(strategy="feature_extraction", warmup=0.1), ValueError,
         "`warmup` must be left at its default"),
        (dict(strategy="feature_extraction", schedule="one_cycle"),
         ValueError, "`schedule` must be left at its default"),
        # The rate found was reported, the schedule's own rates trained.
        (dict(learning_rate="find", schedule=keras.optimizers.schedules.
              ExponentialDecay(0.5, 10, 0.9)), ValueError,
         r"`learning_rate` must be a number with a LearningRateSchedule"),
        # Keras raised in phase 2: a schedule's rate cannot be set.
        (dict(callbacks=[keras.callbacks.ReduceLROnPlateau()]), ValueError,
         r"ReduceLROnPlateau would.*schedule='constant' and warmup=0"),
        (dict(schedule="constant", warmup=0.1, callbacks=[
            keras.callbacks.LearningRateScheduler(lambda e, r: r)]),
         ValueError, "LearningRateScheduler would"),
        (dict(callbacks=keras.callbacks.EarlyStopping()), TypeError,
         "`callbacks` must be a list of Keras callbacks"),
        (dict(regularizer="l2sp"), TypeError,
         r"`regularizer` must be kft.L2SP\(...\).*Received: "
         "regularizer='l2sp'"),
    ]
    for kwargs, error, message in cases:
        # No phase 2 for feature extraction: epochs=0 says so.
        kwargs = {"epochs": int(kwargs.get("strategy")
                                != "feature_extraction"), **kwargs}
        with pytest.raises(error, match=message):
            kft.fine_tune(model, (x, y), batch_size=8, verbose=0, **kwargs)
    assert _unchanged(model, before)
    # With a constant rate they may set it.
    kft.fine_tune(model, (x, y), head_epochs=1, epochs=1, batch_size=8,
                  schedule="constant", verbose=0,
                  callbacks=[keras.callbacks.ReduceLROnPlateau()])


def test_cached_head_phase_trains_on_the_datasets_batches():
    # The cached phase trained with fine_tune's batch_size (32, for arrays)
    # instead of the dataset's: 2 steps in 2 epochs instead of 10.
    x, y = _data(n=30)
    steps = {}
    for cache in (True, False):
        model = _model()
        counter = _StepCounter()
        kft.fine_tune(model, kft.data.from_arrays(x, y, batch_size=6),
                      strategy="feature_extraction", head_epochs=2,
                      cache_features=cache, verbose=0, callbacks=[counter])
        steps[cache] = counter.steps
    assert steps == {True: 10, False: 10}


def test_balanced_sampling_is_not_cached():
    # A cache froze one balanced draw (16 distinct of 30 images) for every
    # epoch of the head phase.
    x, y = _data(n=30)
    y = np.array([0] * 23 + [1] * 3 + [2] * 4)
    balanced = kft.data.from_arrays(x, y, batch_size=6, sampling="balanced")
    model = _model()
    kft.freeze(model, "feature_extraction")
    with pytest.raises(ValueError, match="sampling='balanced'.*freeze one "
                                         r"draw.*dataset.in_order\(\)"):
        kft.cache_features(model, balanced, verbose=0)
    counter = _StepCounter()
    kft.fine_tune(_model(), balanced, strategy="feature_extraction",
                  head_epochs=1, verbose=0, callbacks=[counter])
    assert counter.head_model_calls == 0  # "auto" trained with fit
    with pytest.raises(ValueError, match="sampling='balanced'"):
        kft.fine_tune(_model(), balanced, strategy="feature_extraction",
                      head_epochs=1, cache_features=True, verbose=0)


class _StepCounter(keras.callbacks.Callback):
    """Training batches seen, and how many of them on a head model (a
    cached phase: callbacks see the head model there)."""

    def __init__(self):
        super().__init__()
        self.steps = self.head_model_calls = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.head_model_calls += self.model.name.endswith("_head")


def test_lr_find_needs_trainable_weights():
    model = _compiled_classifier()
    model.trainable = False
    model.compile(keras.optimizers.SGD(), "mse")
    x = np.zeros((16, 4), "float32")
    with pytest.raises(ValueError, match="no trainable weights"):
        kft.lr_find(model, (x, np.zeros(16)), steps=10, verbose=0)


def test_lr_find_leaves_a_datasets_shuffle_orders_alone():
    # The range test took passes of the dataset: the fit after it saw
    # other orders than without it (fine_tune(learning_rate="find") vs the
    # rate it found, 0.028 apart).
    x, y = _data(n=24)
    model = _model()
    model.compile(keras.optimizers.SGD(),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def dataset():
        return kft.data.from_arrays(x, y, batch_size=8, seed=5)

    used = dataset()
    kft.lr_find(model, used, steps=10, verbose=0)
    assert [b[1].tolist() for b in used] == [b[1].tolist()
                                             for b in dataset()]


def test_a_failed_fine_tune_unbinds_its_regularizer():
    # cache_features=True on a model it cannot cache (an LwF model: the
    # source head) raised after binding the penalty; every retry then
    # failed with "already has a penalty".
    x, y = _data()
    model = _model()
    model = kft.with_source_head(model, model.get_layer("head_dense"))
    penalty = kft.LwF(2.0, 1.0)
    with pytest.raises(ValueError, match="cache"):
        kft.fine_tune(model, (x, y), strategy="full", head_epochs=1,
                      epochs=1, batch_size=8, verbose=0, regularizer=penalty,
                      cache_features=True)
    assert penalty.bound is None and not model.losses
    kft.fine_tune(model, (x, y), strategy="full", head_epochs=1, epochs=1,
                  batch_size=8, verbose=0, regularizer=penalty)
    assert penalty.bound is not None


def test_fine_tune_default_loss_on_a_softmax_model_reads_probabilities():
    # It compiled from_logits=True on probabilities: losses wrong in value
    # (0.97 for 0.77), and so the best epoch picked by val_loss.
    x, y = _data()
    base = _model()
    probs = keras.layers.Softmax(name="probabilities")(base.output)
    model = keras.Model(base.input, probs)
    result = kft.fine_tune(model, (x, y), (x, y), strategy="full",
                           head_epochs=1, epochs=1, batch_size=8, verbose=0)
    want = float(keras.losses.SparseCategoricalCrossentropy()(
        y, model.predict(x, verbose=0)))
    assert result.histories[1]["val_loss"][-1] == pytest.approx(want,
                                                                rel=1e-4)


def _frozen(model):
    kft.freeze(model, "feature_extraction")
    return model


@pytest.mark.parametrize("call,message", [
    (lambda m, x, y: m.fit(x, y, epochs=1, verbose=0), "`x`"),
    (lambda m, x, y: m.fit(x[:4] * 0, y[:4], epochs=1, verbose=0,
                           validation_data=(x, y)), r"`validation_data\[0\]`"),
    (lambda m, x, y: kft.fine_tune(m, (x, y), head_epochs=1, epochs=0,
                                   verbose=0), "`train_data`"),
    (lambda m, x, y: kft.lr_find(m, (x, y), verbose=0), "`data`"),
    (lambda m, x, y: kft.cache_features(_frozen(m), (x, None), verbose=0),
     "`data`"),
    (lambda m, x, y: kft.evaluate(m, (x, y)), r"`data\[0\]`"),
    (lambda m, x, y: kft.evaluate(m, [(x[:4], y[:4]), (x[4:], y[4:])]),
     "`data` must hold .*1 in a batch of 4"),
])
def test_images_with_nan_pixels_are_refused(call, message):
    # Training on one NaN pixel made every weight NaN behind a finite
    # loss (fit, lr_find); fine_tune blamed the learning rates and evaluate
    # an argument named `probabilities`.
    x, y = _data(n=8, classes=2)
    x = x.astype("float32")
    x[5, 1, 2, 0] = np.nan
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=SHAPE)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    before = _weights(model)
    with pytest.raises(ValueError, match=message) as raised:
        call(model, x, y)
    assert "must hold finite pixels" in str(raised.value)
    assert str(raised.value).endswith("(the first: image 5).")
    assert _unchanged(model, before)


def _verbose_calls():
    """Every public call with a `verbose`, on a tiny model and data."""
    x, y = _data(8)

    def compiled():
        model = _model()
        model.compile("sgd", "sparse_categorical_crossentropy")
        return model

    def frozen():
        model = _model()
        kft.freeze(model, "feature_extraction")
        return model

    return {
        "fine_tune": lambda v: kft.fine_tune(
            _model(), (x, y), strategy="feature_extraction", head_epochs=1,
            batch_size=4, verbose=v),
        "cache_features": lambda v: kft.cache_features(frozen(), (x, y),
                                                       verbose=v),
        "lr_find": lambda v: kft.lr_find(compiled(), (x, y), steps=10,
                                         batch_size=4, verbose=v),
        "estimate_fisher": lambda v: kft.estimate_fisher(_model(), (x, y),
                                                         verbose=v),
        "evaluate": lambda v: kft.evaluate(_model(), (x, y), verbose=v),
        "predict": lambda v: kft.predict(_model(), x[:2], top_k=1,
                                         verbose=v),
        "GradualUnfreezing": lambda v: kft.callbacks.GradualUnfreezing(
            every=1, verbose=v),
    }


@pytest.mark.parametrize("name", sorted(_verbose_calls()))
@pytest.mark.parametrize("verbose", [5, -1, "yes", 1.0, None])
def test_verbose_takes_keras_values_only(name, verbose):
    # Keras' fit took 5 as 2 and "yes" or -1 as a bar, and the callback
    # refused "auto": every call now takes what `fit` documents.
    with pytest.raises(ValueError, match=r"`verbose` must be 0, 1, 2 or "
                       rf"'auto' \(Keras' values\)\. Received: "
                       rf"verbose={verbose!r}"):
        _verbose_calls()[name](verbose)


def test_verbose_auto_and_bools_as_fit_reads_them():
    unfreezing = kft.callbacks.GradualUnfreezing(every=1, verbose="auto")
    assert unfreezing.verbose == 1
    assert kft.callbacks.GradualUnfreezing(every=1,
                                           verbose=False).verbose == 0
    x, y = _data(8)
    # A bar, as `fit` shows for "auto", and none for False.
    assert kft.evaluate(_model(), (x, y), verbose="auto").num_examples == 8
    assert kft.evaluate(_model(), (x, y), verbose=False).num_examples == 8


@pytest.mark.parametrize("rates", [
    dict(learning_rate=1, head_learning_rate=np.float32(1e-3)),
    dict(learning_rate=np.float32(1e-3), head_learning_rate=1,
         weight_decay=np.float32(0.01)),
    dict(learning_rate=np.longdouble(1e-3),
         head_learning_rate=fractions.Fraction(1, 1000))])
def test_fine_tune_takes_int_and_numpy_rates(rates):
    # They passed the checks, then Keras' AdamW refused them ("should be
    # float"), `learning_rate` only after phase 1 had trained.
    x, y = _data(8)
    result = kft.fine_tune(_model(), (x, y), strategy="partial",
                           head_epochs=1, epochs=1, batch_size=4,
                           verbose=0, cache_features=np.bool_(False),
                           **rates)
    assert len(result.histories) == 2


@pytest.mark.parametrize("name", ["batch_size", "epochs", "head_epochs",
                                  "n_blocks", "unfreeze_every"])
def test_fine_tune_refuses_none_counts(name):
    x, y = _data(8)
    arguments = {"head_epochs": 1, "epochs": 1, name: None}
    with pytest.raises(ValueError, match=rf"Argument `{name}` must be an "
                       rf"integer >= \d\. Received: {name}=None"):
        kft.fine_tune(_model(), (x, y), verbose=0, **arguments)


@pytest.mark.parametrize("monitor", ["", 3])
def test_fine_tune_refuses_a_monitor_that_is_no_name(monitor):
    # "" meant "val_loss" without a word.
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"`monitor` must be the name of a "
                       rf"logged quantity.*Received: monitor={monitor!r}"):
        kft.fine_tune(_model(), (x, y), head_epochs=1, epochs=1,
                      verbose=0, monitor=monitor)


def test_fit_head_checks_epochs_and_verbose():
    # epochs=0 or -1 trained nothing without a word; verbose=5 was taken.
    x, y = _data(8)
    model = _model()
    kft.freeze(model, "feature_extraction")
    model.compile("sgd", "sparse_categorical_crossentropy")
    cache = kft.cache_features(model, (x, y), verbose=0)
    for epochs in (0, -1, 2.0, None, True):
        with pytest.raises(ValueError, match=r"`epochs` must be an integer "
                           r">= 1"):
            kft.fit_head(model, cache, epochs=epochs, verbose=0)
    with pytest.raises(ValueError, match=r"`verbose` must be 0, 1, 2 or "
                       r"'auto'"):
        kft.fit_head(model, cache, epochs=1, verbose=5)
    history = kft.fit_head(model, cache, epochs=2, verbose="auto")
    assert len(history.history["loss"]) == 2


def test_writers_refuse_a_path_starting_with_tilde(tmp_path, monkeypatch):
    # Python's file functions do not expand "~": kft made a folder named
    # "~" in the working directory and wrote the file there.
    monkeypatch.chdir(tmp_path)
    x, y = _data(8)
    model = _model()
    report = kft.evaluate(model, (x, y))
    frozen = _model()
    kft.freeze(frozen, "feature_extraction")
    writers = {
        "path": lambda: report.to_json("~/kft/report.json"),
        "path ": lambda: kft.export(model, "~/kft/m.keras", format="keras"),
        "directory": lambda: kft.runs.RunBackup("~/kft/run", model),
        "backup_dir": lambda: kft.callbacks.GradualUnfreezing(
            every=1, backup_dir="~/kft/gradual"),
        "backup_dir ": lambda: kft.callbacks.BackupAndRestore("~/kft/b"),
        "directory ": lambda: kft.cache_features(
            frozen, (x, y), directory="~/kft/cache", verbose=0),
        "out": lambda: kft.runs.TrainConfig(data_dir=str(tmp_path),
                                            out="~/kft/run").check(),
    }
    for name, write in writers.items():
        with pytest.raises(ValueError, match=rf"Argument `{name.strip()}` "
                           r"must be a path without '~'.*os\.path\."
                           r"expanduser"):
            write()
    assert not os.path.exists(tmp_path / "~")


def test_fine_tune_whose_every_epoch_diverged_keeps_no_weights():
    # A rate so large that the first epoch's weights overflow: no epoch is
    # worth keeping, and the error says so (not a NaN model returned, nor
    # a crash restoring weights that were never kept).
    x, y = _data(n=8, classes=2)
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=SHAPE, head="linear")
    with pytest.raises(ValueError, match="no epoch ended with a 'val_loss' "
                       "that is not NaN and weights that are finite; no "
                       "weights were kept. Lower the learning rates."):
        kft.fine_tune(model, (x, y), (x, y), strategy="feature_extraction",
                      head_epochs=1, head_learning_rate=3e38, batch_size=4,
                      cache_features=False, verbose=0)
