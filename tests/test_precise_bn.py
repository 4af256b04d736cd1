"""Exact BatchNorm statistics for runs that train BatchNorm briefly."""

import keras
import numpy as np
import pytest

import kft
from kft.adaptation.batchnorm import batch_statistics
from kft.training.freezing import batch_norm_layers

SHAPE = (16, 16, 3)


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (n,) + SHAPE).astype("float32"),
            rng.integers(0, 3, n).astype("int32"))


def _model(strategy="full", momentum=None):
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=SHAPE)
    if momentum is not None:
        for layer in batch_norm_layers(model):
            layer.momentum = momentum
    kft.freeze(model, strategy, bn="train")
    model.compile(keras.optimizers.SGD(0.05), keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True))
    return model


def _moving(layers):
    return [(keras.ops.convert_to_numpy(layer.moving_mean),
             keras.ops.convert_to_numpy(layer.moving_variance))
            for layer in layers]


def _assert_statistics_of(model, data, layers, batch_size=64):
    # Measured in the same batches: upstream layers that train normalise
    # with each batch's own statistics.
    _, means, variances, _ = batch_statistics(model, data, layers=layers,
                                              batch_size=batch_size)
    for (mean, var), want_mean, want_var in zip(_moving(layers), means,
                                                variances):
        np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(var, want_var, rtol=1e-4, atol=1e-4)


def test_validation_sees_the_exact_statistics_of_the_trained_weights():
    x, y = _data(16, 0)
    val = _data(8, 1)
    model = _model("partial")
    layers = batch_norm_layers(model)
    trained = [layer for layer in layers if layer.trainable]
    frozen = [layer for layer in layers if not layer.trainable]
    assert trained and frozen
    before = _moving(frozen)
    precise = kft.callbacks.PreciseBatchNorm((x, y), batch_size=8)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                        validation_data=val, callbacks=[precise])
    assert precise.recalibrated_epochs == [0]
    # Those of the final weights, with the frozen layers upstream on their
    # own statistics (as in training); the frozen layers are untouched.
    _assert_statistics_of(model, x, trained, batch_size=8)
    for (mean, var), (old_mean, old_var) in zip(_moving(frozen), before):
        np.testing.assert_array_equal(mean, old_mean)
        np.testing.assert_array_equal(var, old_var)
    # Set before the validation, not after it: what it logged is what the
    # model now computes.
    logged = history.history["val_loss"][0]
    assert model.evaluate(*val, verbose=0) == pytest.approx(logged,
                                                               rel=1e-5)
    # Without the callback the moving averages lag far behind (the test
    # would not see a missing recalibration otherwise).
    plain = _model("partial")
    plain.fit(x, y, batch_size=8, epochs=1, verbose=0)
    lagging = [layer for layer in batch_norm_layers(plain) if layer.trainable]
    _, means, _, _ = batch_statistics(plain, x, layers=lagging)
    assert max(np.abs(keras.ops.convert_to_numpy(layer.moving_mean) - mean).max()
               for layer, mean in zip(lagging, means)) > 1e-2


def test_epochs_are_recalibrated_while_the_averages_are_young():
    # Momentum 0.5 settles in 5 steps; 2 steps an epoch: epochs 0 and 1
    # (2 and 4 steps trained) are young, epoch 2 (6 steps) is not.
    x, y = _data(8, 2)
    assert kft.training.precise_bn.settling_steps(0.5) == 5
    model = _model(momentum=0.5)
    precise = kft.callbacks.PreciseBatchNorm((x, y))
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[precise])
    assert precise.recalibrated_epochs == [0, 1]
    # Counted from `first_epoch`, not from where this `fit` starts: a run
    # resumed at epoch 2 recalibrates where the uninterrupted one did
    # (nowhere), and a phase that began at epoch 1 is young for 2 epochs.
    resumed = kft.callbacks.PreciseBatchNorm(x, first_epoch=0)
    model.fit(x, y, batch_size=4, initial_epoch=2, epochs=3, verbose=0,
              callbacks=[resumed])
    assert resumed.recalibrated_epochs == []
    later = kft.callbacks.PreciseBatchNorm(x, first_epoch=np.array([1]))
    model.fit(x, y, batch_size=4, initial_epoch=1, epochs=3, verbose=0,
              callbacks=[later])
    assert later.recalibrated_epochs == [1, 2]
    # A model whose BatchNorm layers are all frozen is left alone.
    frozen = _model("feature_extraction")
    idle = kft.callbacks.PreciseBatchNorm((x, y))
    frozen.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[idle])
    assert idle.recalibrated_epochs == []


def test_each_unfreezing_starts_a_young_window_again():
    # Gradual unfreezing at epochs 1 and 4, momentum 0.5 (settled after 5
    # steps), 2 steps an epoch: young at epochs 1-2 and again at 4-5, where
    # a block's statistics start from their init (a count from the first
    # unfreezing left late blocks with them).
    x, y = _data(8, 4)
    model = _model("feature_extraction", momentum=0.5)
    unfreeze = kft.callbacks.GradualUnfreezing(
        schedule=kft.callbacks.Milestones([1, 4]), bn="train", verbose=0)
    precise = kft.callbacks.PreciseBatchNorm((x, y), first_epoch=[1, 4])
    model.fit(x, y, batch_size=4, epochs=7, verbose=0,
              callbacks=[unfreeze, precise])
    assert precise.recalibrated_epochs == [1, 2, 4, 5]


def test_bad_arguments_are_named():
    x, y = _data(4, 3)
    with pytest.raises(ValueError, match="one-shot iterator.*Received: "
                       "generator"):
        kft.callbacks.PreciseBatchNorm(b for b in [(x, y)])
    with pytest.raises(ValueError, match="first_epoch"):
        kft.callbacks.PreciseBatchNorm((x, y), first_epoch=-1)
    with pytest.raises(ValueError, match="first_epoch"):
        kft.callbacks.PreciseBatchNorm((x, y), first_epoch=[2, -1])
    with pytest.raises(ValueError, match="non-empty sequence"):
        kft.callbacks.PreciseBatchNorm((x, y), first_epoch=[])


@pytest.mark.parametrize("strategy", ["full", "gradual"])
def test_fine_tune_with_bn_train_keeps_a_model_whose_statistics_fit_it(
        strategy):
    # The case a user meets first: a backbone without pretrained weights,
    # which kft tells to train with `bn="train"`, for a few epochs. The
    # kept epoch's weights come with their exact statistics.
    data = kft.datasets.digits(image_size=16, target_per_class=4)
    x, y = data.target_train
    train = kft.data.from_arrays(x, y, batch_size=8, seed=0)
    model = kft.build_classifier("simple_cnn", 5, weights=None,
                                 input_shape=SHAPE)
    result = kft.fine_tune(model, train, data.target_val, strategy=strategy,
                           bn="train", head_epochs=1, epochs=2,
                           learning_rate=3e-3, verbose=0)
    assert result.best_epoch >= 1  # a phase-2 epoch, kept
    trained = [layer for layer in batch_norm_layers(model)
               if layer.trainable]
    assert trained
    _assert_statistics_of(model, train, trained)


def test_fine_tune_gradual_recalibrates_each_block_it_unfreezes(
        monkeypatch):
    # Momentum 0.5 (settled after 5 steps), 2 steps an epoch, a block
    # every 2 epochs from epoch 1: every phase-2 epoch is within 4 steps
    # of an unfreezing (counted from phase 2's start alone: epochs 1-2).
    from kft.training import fine_tune_phases

    made = []

    class Recorded(kft.callbacks.PreciseBatchNorm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(fine_tune_phases, "PreciseBatchNorm", Recorded)
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=SHAPE)
    for layer in batch_norm_layers(model):
        layer.momentum = 0.5
    kft.fine_tune(model, _data(8, 5), _data(4, 6), strategy="gradual",
                  bn="train", head_epochs=1, epochs=6, unfreeze_every=2,
                  batch_size=4, verbose=0)
    [precise] = made
    assert precise.recalibrated_epochs == [1, 2, 3, 4, 5, 6]


def test_fine_tune_without_bn_train_leaves_the_statistics():
    data = kft.datasets.digits(image_size=16, target_per_class=4)
    model = kft.build_classifier("simple_cnn", 5, weights=None,
                                 input_shape=SHAPE)
    layers = batch_norm_layers(model)
    with pytest.warns(UserWarning, match="random-init statistics"):
        kft.fine_tune(model, data.target_train, data.target_val,
                      strategy="full", head_epochs=1, epochs=1, verbose=0)
    for mean, var in _moving(layers):
        assert not mean.any() and (var == 1).all()
