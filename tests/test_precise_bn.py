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


def test_the_slowest_layer_decides_when_the_averages_have_settled():
    # One step an epoch. Momentum 0.5 settles in 5 steps, 0.6 in 6: with
    # one layer at 0.6 epochs 0-4 (1-5 steps) are young, epoch 5 (6 steps,
    # exactly the settling count) is not. The fastest layer's count left
    # the slow one's young average (epoch 4) unrecalibrated.
    x, y = _data(4, 7)
    settling = kft.training.precise_bn.settling_steps
    assert (settling(0.5), settling(0.6)) == (5, 6)
    model = _model(momentum=0.5)
    batch_norm_layers(model)[-1].momentum = 0.6
    precise = kft.callbacks.PreciseBatchNorm((x, y))
    model.fit(x, y, batch_size=4, epochs=7, verbose=0, callbacks=[precise])
    assert precise.recalibrated_epochs == [0, 1, 2, 3, 4]
    # A momentum of 1 never forgets the init's statistics: always young
    # (documented), not a division by log(1) = 0.
    assert settling(1.0) == np.inf
    never = _model(momentum=1.0)
    always = kft.callbacks.PreciseBatchNorm((x, y))
    never.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[always])
    assert always.recalibrated_epochs == [0, 1, 2]


def test_steps_keras_does_not_know_are_counted_as_they_run():
    # A generator gives `fit` no step count: the batches run are counted.
    # 5 steps at momentum 0.5 (settled after 5): settled at the epoch's
    # end, as the same 5 steps of arrays are; 4 steps are still young.
    x, y = _data(20, 8)

    def batches(n):
        for i in range(n):
            yield x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]

    for steps, want in [(5, []), (4, [0])]:
        model = _model(momentum=0.5)
        precise = kft.callbacks.PreciseBatchNorm((x, y))
        model.fit(batches(steps), epochs=1, shuffle=False, verbose=0,
                  callbacks=[precise])
        assert precise.recalibrated_epochs == want, steps
    arrays = kft.callbacks.PreciseBatchNorm((x, y))
    _model(momentum=0.5).fit(x, y, batch_size=4, epochs=1, verbose=0,
                             callbacks=[arrays])
    assert arrays.recalibrated_epochs == []


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


def test_one_statistics_pass_follows_flags_changed_between_its_calls():
    # PreciseBatchNorm keeps its pass while the set of BatchNorm layers that
    # train is unchanged; other layers' flags can change meanwhile (a layer
    # without BatchNorm frozen, here the stem's convolution, ahead of every
    # statistic). The pass must then split the weights by the new flags,
    # measuring what a new pass measures.
    from kft.adaptation.batchnorm import StatisticsPass

    x, _ = _data(8, 9)
    model = _model()
    layers = batch_norm_layers(model)
    measure = StatisticsPass(model, layers)
    measure(x, batch_size=8)
    model.get_layer("simple_cnn").get_layer("stem_conv").trainable = False
    means, variances, n = measure(x, batch_size=8)
    want_means, want_variances, _ = StatisticsPass(model, layers)(
        x, batch_size=8)
    assert n == 8
    for got, want in zip(means + variances, want_means + want_variances):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


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
        precise_bn_made):
    # Momentum 0.5 (settled after 5 steps), 2 steps an epoch, a block
    # every 2 epochs from epoch 1: every phase-2 epoch is within 4 steps
    # of an unfreezing (counted from phase 2's start alone: epochs 1-2).
    made = precise_bn_made
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
