import os
import re

import keras
import numpy as np
import pytest

import kft
from kft.training import fine_tune_phases as recipes

SIZE = 16


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")
    return x, rng.integers(0, 3, n)


def _model(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("head", "mlp")
    kwargs.setdefault("dropout", 0.3)
    if kwargs["head"] == "mlp":
        kwargs.setdefault("hidden_units", 16)
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(SIZE, SIZE, 3), **kwargs)
    kft.freeze(model, "feature_extraction")
    return model


def _compile(model):
    # SGD, not Adam: the bias of the Dense before BatchNorm has a zero
    # gradient up to float noise, which Adam would scale up to full steps.
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _head_weights(model):
    return {v.path: np.array(v.value) for v in model.trainable_variables}


def test_head_trained_on_cached_features_matches_training_the_full_model():
    # MLP head with BatchNorm and dropout, shuffled batches: the head model
    # uses the same layers, seed generators and shuffle order.
    x, y = _data()
    full = _compile(_model())
    keras.utils.set_random_seed(1)
    full_history = full.fit(x, y, batch_size=8, epochs=3, verbose=0)

    cached = _compile(_model())
    cache = kft.cache_features(cached, (x, y), batch_size=8, verbose=0)
    assert cache.path is None and cache.features.shape == (24, 64)
    keras.utils.set_random_seed(1)
    history = kft.fit_head(cached, cache, batch_size=8, epochs=3, verbose=0)

    expected, got = _head_weights(full), _head_weights(cached)
    assert set(expected) == set(got) and len(got) == 6
    expected.update({v.path: np.array(v.value)
                     for v in full.non_trainable_variables if "head" in v.path})
    got.update({v.path: np.array(v.value)
                for v in cached.non_trainable_variables if "head" in v.path})
    for path in expected:
        np.testing.assert_allclose(got[path], expected[path], rtol=1e-4,
                                   atol=1e-5, err_msg=path)
    np.testing.assert_allclose(history.history["loss"],
                               full_history.history["loss"], rtol=1e-4)
    # The full model holds the trained head: its predictions use it.
    np.testing.assert_allclose(cached.predict(x, verbose=0),
                               full.predict(x, verbose=0), rtol=1e-4,
                               atol=1e-4)


def test_features_over_the_memory_budget_go_to_a_memory_mapped_file(tmp_path):
    x, y = _data(n=20)
    model = _model()
    in_memory = kft.cache_features(model, (x, y), batch_size=8, verbose=0)
    on_disk = kft.cache_features(model, (x, y), batch_size=8,
                                 memory_budget=1000, directory=str(tmp_path),
                                 verbose=0)
    assert isinstance(on_disk.features, np.memmap)
    assert os.path.dirname(on_disk.path) == str(tmp_path)
    assert on_disk.path.endswith(".f32")
    assert os.path.getsize(on_disk.path) == 20 * 64 * 4
    np.testing.assert_array_equal(np.asarray(on_disk.features),
                                  in_memory.features)
    np.testing.assert_array_equal(on_disk.labels, y)
    _compile(model)
    history = kft.fit_head(model, on_disk, validation_data=in_memory,
                           batch_size=8, epochs=2, verbose=0)
    assert len(history.history["val_accuracy"]) == 2


def test_an_interrupted_cache_removes_its_file(tmp_path):
    # Ctrl-C (or a bad batch) after the features spilled: the file stayed
    # in the directory for good (gigabytes in the temporary directory).
    x, y = _data(n=24)

    def batches():
        for start in range(0, 16, 8):
            yield x[start:start + 8], y[start:start + 8]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        kft.cache_features(_model(), batches(), memory_budget=1000,
                           directory=str(tmp_path), verbose=0)
    assert os.listdir(tmp_path) == []


def test_datasets_are_cached_batch_by_batch():
    x, y = _data(n=20)
    model = _model()
    dataset = kft.data.from_arrays(x, y, batch_size=8, shuffle=False)
    from_dataset = kft.cache_features(model, dataset, verbose=0)
    from_arrays = kft.cache_features(model, (x, y), verbose=0)
    # Batches of 8 vs one of 20: XLA may sum in another order.
    np.testing.assert_allclose(from_dataset.features, from_arrays.features,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(from_dataset.labels, y)


def test_fine_tune_feature_extraction_uses_the_cache(monkeypatch):
    x, y = _data()
    calls = []
    real = recipes.cache_features

    def spy(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(recipes, "cache_features", spy)
    results = {}
    for mode in (False, "auto"):
        model = _model(head="linear", dropout=0.0)  # AdamW: see _compile
        keras.utils.set_random_seed(2)
        results[mode] = (model, kft.fine_tune(
            model, (x, y), (x[:9], y[:9]), strategy="feature_extraction",
            head_epochs=2, batch_size=8, cache_features=mode, verbose=0))
    assert len(calls) == 2  # train and validation data, only with "auto"
    (plain, plain_result), (cached, cached_result) = results[False], results["auto"]
    assert cached_result.best_epoch == plain_result.best_epoch
    np.testing.assert_allclose(cached_result.histories[0]["val_loss"],
                               plain_result.histories[0]["val_loss"],
                               rtol=1e-4)
    for a, b in zip(plain.get_weights(), cached.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fine_tune_says_what_its_caching_bars_count(capsys):
    # Two bare bars ("40/40 - 0s - 2ms/image", then "20/20 ...").
    x, y = _data(8)
    kft.fine_tune(_model(head="linear", dropout=0.0), (x, y), (x[:4], y[:4]),
                  strategy="feature_extraction", head_epochs=1,
                  batch_size=8, verbose=2)
    out = capsys.readouterr().out
    said = "fine_tune: caching the frozen backbone's features of {}"
    assert out.index(said.format("train_data")) < out.index(
        said.format("val_data"))


def test_caching_bars_know_a_kft_datasets_size_and_end_their_line(capsys):
    # "20/Unknown ... 887us/image" ran on into the next line printed.
    # A bar of unknown length ends at the count it reached (its "20/Unknown"
    # update is printed only when 0.05 s have passed since the last one).
    x, y = _data(n=20)
    model = _model()
    kft.cache_features(model, kft.data.from_arrays(x, y, batch_size=8),
                       verbose=1)
    out = capsys.readouterr().out
    assert "20/20" in out and "Unknown" not in out, repr(out)
    assert out.endswith("\n"), repr(out)
    kft.cache_features(model, ((a, b) for a, b in ((x[:8], y[:8]),
                                                    (x[8:], y[8:]))),
                       verbose=1)
    out = capsys.readouterr().out
    assert "8/Unknown" in out and out.endswith("\n"), repr(out)
    last_line = re.sub(r"\x1b\[[0-9;]*m", "", out).rsplit("\r", 1)[-1]
    assert last_line.startswith("20/20"), repr(out)


def test_auto_does_not_cache_augmented_datasets(monkeypatch):
    x, y = _data(n=12)
    calls = []
    monkeypatch.setattr(recipes, "cache_features",
                        lambda *args, **kwargs: calls.append(args))
    augmented = kft.data.from_arrays(x, y, batch_size=6,
                                     augmentation="light")
    result = kft.fine_tune(_model(head="linear", dropout=0.0), augmented,
                           strategy="feature_extraction", head_epochs=1,
                           verbose=0)
    assert calls == [] and len(result.histories[0]["loss"]) == 1
    # Plain training data but augmented validation data: no cache either.
    kft.fine_tune(_model(head="linear", dropout=0.0), (x, y), augmented,
                  strategy="feature_extraction", head_epochs=1, verbose=0)
    assert calls == []


def test_auto_falls_back_and_true_insists_when_caching_is_impossible():
    x, y = _data(n=12)
    mixing = _model(batch_augment=kft.layers.MixUp(0.2, seed=0))
    result = kft.fine_tune(mixing, (x, y), strategy="feature_extraction",
                           head_epochs=1, batch_size=6, verbose=0)
    assert len(result.histories[0]["loss"]) == 1
    with pytest.raises(ValueError, match="mixes its training batches"):
        kft.fine_tune(mixing, (x, y), strategy="feature_extraction",
                      head_epochs=1, cache_features=True, verbose=0)
    with pytest.raises(ValueError, match="`cache_features` must be 'auto', "
                                         "True or False.*Received: "
                                         "cache_features='yes'"):
        kft.fine_tune(_model(), (x, y), cache_features="yes", verbose=0)


def test_caching_refuses_what_would_give_wrong_features():
    x, y = _data(n=8)
    model = _model()
    kft.freeze(model, "partial", n_blocks=1)
    with pytest.raises(ValueError, match="frozen backbone, but layer "
                                         "'block3_conv' has trainable"):
        kft.cache_features(model, (x, y), verbose=0)
    augmented = kft.data.from_arrays(x, y, batch_size=4,
                                     augmentation="light")
    with pytest.raises(ValueError, match=r"dataset augments its images "
                       r"\(augmentation=.light.\)"):
        kft.cache_features(_model(), augmented, verbose=0)
    # A frozen kft backbone and a head, with random flips in front.
    inputs = keras.Input((SIZE, SIZE, 3))
    flipped = keras.layers.RandomFlip(name="flip")(inputs)
    backbone = kft.create_backbone("simple_cnn", weights=None,
                                   input_shape=(SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="head_pool")(
        backbone(flipped))
    flipping = keras.Model(inputs, keras.layers.Dense(3, name="head_dense")(
        pooled))
    kft.freeze(flipping, "feature_extraction")
    assert not kft.feature_cache.can_cache_features(flipping)[0]
    with pytest.raises(ValueError, match="Layer 'flip' augments images at "
                                         "random"):
        kft.cache_features(flipping, (x, y), verbose=0)
    with pytest.raises(ValueError, match="Argument `batch_size` must be an "
                                         "integer >= 1.*batch_size=0"):
        kft.cache_features(_model(), (x, y), batch_size=0)
    with pytest.raises(ValueError, match="Argument `memory_budget` must be "
                                         "an integer >= 1.*memory_budget=0"):
        kft.cache_features(_model(), (x, y), memory_budget=0)
    with pytest.raises(ValueError, match="at least one image"):
        kft.cache_features(_model(), (x[:0], y[:0]), verbose=0)


def test_fit_head_needs_a_compiled_model_and_labels():
    x, y = _data(n=8)
    model = _model()
    cache = kft.cache_features(model, (x, y), verbose=0)
    with pytest.raises(ValueError, match="Compile the model"):
        kft.fit_head(model, cache)
    _compile(model)
    unlabelled = kft.cache_features(model, x, verbose=0)
    with pytest.raises(ValueError, match="Argument `cache` must be a "
                                         "FeatureCache with labels"):
        kft.fit_head(model, unlabelled)
    # Labels past the last class trained at loss 0 without a word (JAX
    # gathers them silently); fine_tune and lr_find refused them.
    bad = kft.cache_features(model, (x, y + 5), verbose=0)
    for kwargs, name in (({"cache": bad}, "cache"),
                         ({"cache": cache, "validation_data": bad},
                          "validation_data")):
        with pytest.raises(ValueError, match=rf"`{name}.labels` holds "
                           r"labels outside \[0, 3\) for a model with 3 "
                           r"classes"):
            kft.fit_head(model, **kwargs)
    one_hot = kft.cache_features(model, (x, np.eye(4)[y]), verbose=0)
    with pytest.raises(ValueError, match=r"one-hot labels of width 4"):
        kft.fit_head(model, one_hot)
    with pytest.raises(TypeError, match=r"`model` must be a keras.Model"):
        kft.cache_features(None, (x, y))
    # Keras' verbose values, as fine_tune passes them on (True, "auto").
    for verbose in (True, "auto"):
        kft.cache_features(model, (x, y), verbose=verbose)


def test_the_head_is_compiled_as_the_model_was():
    # `fit_head` dropped `run_eagerly` (a user's debugging print saw
    # tracers), `jit_compile` and `steps_per_execution`, and turned
    # `auto_scale_loss=False` into loss scaling.
    x, y = _data(n=8)
    seen = []

    class Flags(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append((self.model.run_eagerly, self.model.jit_compile,
                         self.model.steps_per_execution,
                         self.model.optimizer))

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # Global, as users set it: the head model is built under it too.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _model()
        model.compile(keras.optimizers.SGD(0.1), loss, run_eagerly=True,
                      steps_per_execution=2, auto_scale_loss=False)
        cache = kft.cache_features(model, (x, y), verbose=0)
        kft.fit_head(model, cache, batch_size=4, verbose=0,
                     callbacks=[Flags()])
        assert seen == [(True, False, 2, model.optimizer)]
        assert type(model.optimizer) is keras.optimizers.SGD
        model.compile(keras.optimizers.SGD(0.1), loss, jit_compile=False)
        kft.fit_head(model, cache, batch_size=4, verbose=0,
                     callbacks=[Flags()])
        assert seen[1][:3] == (False, False, 1)
        assert isinstance(seen[1][3], keras.optimizers.LossScaleOptimizer)
        # Set after compile, as Keras' debugging advice goes.
        model.compile(keras.optimizers.SGD(0.1), loss)
        model.run_eagerly = True
        kft.fit_head(model, cache, batch_size=4, verbose=0,
                     callbacks=[Flags()])
        assert seen[2][:2] == (True, False)
    finally:
        keras.config.set_dtype_policy("float32")


def test_a_model_without_a_trainable_head_layer_is_refused():
    inputs = keras.Input((4,))
    outputs = keras.layers.Activation("relu", name="head_act")(
        keras.layers.Dense(3, name="body")(inputs))
    model = keras.Model(inputs, outputs)
    # Named like head layers, but not after a kft backbone: no head.
    with pytest.raises(ValueError, match="no head layer with weights.*"
                                         r"layers: \[.*'body', 'head_act'\]"):
        kft.feature_cache.split_head(model)
    reason = kft.feature_cache.can_cache_features(model)[1]
    assert "no head layer with weights" in reason
    # An attached classifier has its classifier's head; its augmentation
    # rules caching out.
    attached = kft.augmentation.attach(_model(), "light")
    kft.freeze(attached, "feature_extraction")
    with pytest.raises(ValueError, match="augments images at random"):
        kft.cache_features(attached, _data(n=4), verbose=0)
    # So does each of kft's torchvision-style layers alone (not Keras'
    # preprocessing layers: they were cached, one draw frozen, and
    # fine_tune's head phase trained without augmentation).
    for name in ("RandomResizedCrop", "RandomBrightnessScale",
                 "RandomContrastScale", "RandomSaturationScale",
                 "GaussianBlur"):
        alone = kft.augmentation.attach(
            _model(), getattr(kft.augmentation, name)(seed=0))
        kft.freeze(alone, "feature_extraction")
        assert "augments images at random" in (
            kft.feature_cache.can_cache_features(alone)[1] or "")


def test_a_head_that_is_not_a_chain_is_not_cached_and_still_trains():
    # A residual head (pooled features + Dense(pooled)): split as a chain,
    # Add was called on one tensor and fine_tune's "auto" caching crashed
    # instead of training the whole model.
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.GlobalAveragePooling2D()(kft.create_backbone(
        "simple_cnn", weights=None, input_shape=(SIZE, SIZE, 3))(inputs))
    residual = keras.layers.Add(name="add")(
        [features, keras.layers.Dense(features.shape[-1],
                                      name="head_res")(features)])
    model = keras.Model(inputs, keras.layers.Dense(3, name="head_fc")(
        residual))
    with pytest.raises(ValueError, match="chain of layers.*layer 'add' does "
                                         "not take the output of 'head_res'"):
        kft.feature_cache.split_head(model)
    assert not kft.feature_cache.can_cache_features(model)[0]
    result = kft.fine_tune(model, _data(n=8), strategy="feature_extraction",
                           head_epochs=1, batch_size=8, monitor="loss",
                           verbose=0)
    assert len(result.histories[0]["loss"]) == 1


def test_a_linear_heads_dropout_stays_on_when_training_on_the_cache():
    # The linear head's `head_dropout` lies before its first layer with
    # weights; it used to go into the features model and so be off (the
    # cache is computed in inference mode) while the head trained.
    x, y = _data(n=8)
    full = _compile(_model(head="linear", dropout=0.5))
    keras.utils.set_random_seed(1)
    full.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)

    cached = _compile(_model(head="linear", dropout=0.5))
    cache = kft.cache_features(cached, (x, y), batch_size=8, verbose=0)
    keras.utils.set_random_seed(1)
    kft.fit_head(cached, cache, batch_size=8, epochs=1, verbose=0,
                 shuffle=False)
    expected, got = _head_weights(full), _head_weights(cached)
    assert set(got) == set(expected) and len(got) == 2
    for path in expected:
        np.testing.assert_allclose(got[path], expected[path], atol=1e-5,
                                   err_msg=path)


def test_reading_a_shuffled_dataset_whole_leaves_its_next_pass_alone():
    """`cache_features` and AdaBN read a `kft.data` dataset whole through
    a view with its own passes: the training after them draws the same
    shuffle orders as without them. (The read used up pass 0 in one
    process but not in several, whose view counted its own passes: a
    `fine_tune` in 2 processes trained on other orders than in one.)"""
    _, y = _data(n=16)
    model = _model()

    def dataset():
        return kft.data.from_arrays(np.arange(16.0).reshape(16, 1, 1, 1)
                                    * np.ones((1, 16, 16, 3)), y,
                                    batch_size=4, seed=3)

    def first_order(ds):
        return [int(v) for batch, _ in ds for v in batch[:, 0, 0, 0]]

    fresh = first_order(dataset())
    for read in (lambda ds: kft.cache_features(model, ds, verbose=0),
                 lambda ds: kft.adapt_batchnorm(model, ds)):
        ds = dataset()
        read(ds)
        assert first_order(ds) == fresh


def test_a_dataset_carrying_class_weights_is_not_cached_without_them():
    # fine_tune's cached head phase (cache_features="auto") trained
    # without the weights of a with_class_weight dataset: the same model
    # as with no weights at all.
    x, y = _data(n=24)
    y = np.r_[np.zeros(20, int), np.ones(4, int)]
    weights = {0: 0.1, 1: 10.0}

    def trained(data, **kwargs):
        model = _model(head="linear", dropout=0.0)
        kft.fine_tune(model, data, None, strategy="feature_extraction",
                      head_epochs=2, verbose=0, **kwargs)
        return model.predict(x, verbose=0)

    def dataset():
        return kft.data.from_arrays(x, y, batch_size=8, shuffle=False)

    own = trained(dataset().with_class_weight(weights))
    given = trained(dataset(), class_weight=weights, cache_features=False)
    unweighted = trained(dataset(), cache_features=False)
    np.testing.assert_allclose(own, given, atol=1e-5)
    assert np.abs(own - unweighted).max() > 1e-3
    with pytest.raises(ValueError, match="carries class weights"):
        kft.cache_features(_model(), dataset().with_class_weight(weights))


def test_fit_head_takes_class_weight_as_the_models_fit_does():
    # "balanced" failed inside Keras' head model (AttributeError), and a
    # negative weight or a class the model lacks trained silently.
    x, y = _data()
    y[:18] = 0  # imbalanced: 18 of class 0
    model = _compile(_model(head="linear", dropout=0.0))
    cache = kft.cache_features(model, (x, y), batch_size=8, verbose=0)
    for bad, message in (({0: -1.0}, r"class_weight\[0\]"),
                         ({7: 2.0}, "keyed by class indices in")):
        with pytest.raises(ValueError, match=message):
            kft.fit_head(model, cache, epochs=1, class_weight=bad, verbose=0)
    trained = []
    for weights in ("balanced", kft.balanced_class_weight(y, 3)):
        model = _compile(_model(head="linear", dropout=0.0))
        kft.fit_head(model, cache, epochs=1, batch_size=8, shuffle=False,
                     class_weight=weights, verbose=0)
        trained.append(_head_weights(model))
    for path, value in trained[0].items():
        np.testing.assert_array_equal(value, trained[1][path])
    # Not the unweighted run.
    model = _compile(_model(head="linear", dropout=0.0))
    kft.fit_head(model, cache, epochs=1, batch_size=8, shuffle=False,
                 verbose=0)
    assert not all(np.allclose(value, trained[0][path])
                   for path, value in _head_weights(model).items())


def test_fit_head_keeps_the_models_weighted_metrics():
    # The head model is compiled as the model was: with class weights the
    # model's `weighted_metrics` must be logged on the cache too (they
    # were silently dropped, so `fine_tune`'s cached head phase lacked
    # them while the later phases had them).
    x, y = _data(n=8)
    model = _model(head="linear", dropout=0.0)
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], weighted_metrics=["accuracy"])
    cache = kft.cache_features(model, (x, y), batch_size=8, verbose=0)
    history = kft.fit_head(model, cache, epochs=1, batch_size=8, verbose=0,
                           class_weight={0: 1.0, 1: 3.0, 2: 1.0})
    assert sorted(history.history) == ["accuracy", "loss",
                                       "weighted_accuracy"]


def test_batches_of_a_generator_with_and_without_labels():
    # A generator's batches are cached one by one: bare image batches give
    # an unlabelled cache, and labels on only some batches would pair
    # labels with the wrong images, so they are refused by count.
    x, y = _data(n=8)
    model = _model()

    def batches(labelled):
        yield (x[:4], y[:4]) if labelled[0] else x[:4]
        yield (x[4:], y[4:]) if labelled[1] else x[4:]

    bare = kft.cache_features(model, batches((False, False)), verbose=0)
    assert bare.labels is None and len(bare.features) == 8
    with pytest.raises(ValueError, match="Got 4 labels for 8 images; every "
                                         "batch must have labels, or none"):
        kft.cache_features(model, batches((True, False)), verbose=0)


def test_a_head_of_a_model_with_two_outputs_is_not_cached():
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.GlobalAveragePooling2D()(kft.create_backbone(
        "simple_cnn", weights=None, input_shape=(SIZE, SIZE, 3))(inputs))
    logits = keras.layers.Dense(3, name="head_fc")(features)
    model = keras.Model(inputs, [logits, features])
    with pytest.raises(ValueError, match="only a single-output head on "
                                         "cached features; the model has 2 "
                                         "outputs"):
        kft.feature_cache.split_head(model)
    assert "single-output" in kft.feature_cache.can_cache_features(model)[1]
