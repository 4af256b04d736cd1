"""What README.md's prose says kft does, where no other test pinned it.

Each test quotes the README words it pins; tests/test_readme.py checks the
names, signatures and command lines, not what they do.
"""
import keras
import numpy as np
import pytest

import kft

SHAPE = (16, 16, 3)


def _model(num_classes=3, **kwargs):
    return kft.build_classifier("simple_cnn", num_classes, weights=None,
                                input_shape=SHAPE, **kwargs)


def _arrays(n, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, *SHAPE)).astype("float32")
    return x, np.arange(n) % num_classes


@pytest.mark.parametrize("num_images,strategy", [
    (1, "feature_extraction"), (499, "feature_extraction"),
    (500, "gradual"), (999, "gradual"),
    (1000, "partial"), (5000, "partial"),
    (5001, "full")])
def test_recommend_strategy_follows_the_size_guide_at_its_edges(
        num_images, strategy):
    """README: "`kft.recommend_strategy` follows the lecture's guide
    (< 500 images: feature extraction; 500-999: gradual; 1,000-5,000:
    partial; > 5,000: full with layer-wise rates)", and `--strategy auto`
    (the default of `kft train`) follows it."""
    # The tests elsewhere use counts far from the edges (100, 700, 1200,
    # 6000): an off-by-one moved every run of exactly 500, 1,000 or 5,000
    # images to another strategy without a word.
    rec = kft.recommend_strategy(num_images=num_images)
    assert rec.strategy == strategy
    if strategy == "full":
        assert rec.layer_decay == 0.7  # "with layer-wise rates"
    if strategy == "partial":
        assert rec.n_blocks == 1


def test_fine_tune_replaces_your_compile_and_leaves_the_last_phases():
    """README: "Each phase compiles the model (a compile of yours is
    replaced, with Keras' default `run_eagerly`, `jit_compile` and
    `steps_per_execution`: pass `loss`/`metrics`), and the model is left
    compiled as the last phase was: a `model.fit` after it goes on where
    that phase's schedule ended (rate 0 after `"cosine"`): compile again
    to train on."."""
    x, y = _arrays(16)
    model = _model()
    # A user's compile, as a notebook would leave it: eager, 2 steps per
    # execution, another optimizer. A step left eager trains 10-100x
    # slower; one left at the user's optimizer ignores the recipe.
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), run_eagerly=True, steps_per_execution=2)
    kft.fine_tune(model, (x, y), _arrays(8, seed=1), strategy="full",
                  head_epochs=1, epochs=2, batch_size=8, verbose=0,
                  bn="train", cache_features=False)
    assert model.run_eagerly is False
    assert model.steps_per_execution == 1
    assert model.jit_compile is True
    assert isinstance(model.optimizer, kft.BlockwiseOptimizer)
    # Phase 2's cosine schedule, 2 epochs of 2 steps, has ended at 0.
    assert int(model.optimizer.iterations.value) == 4
    assert float(keras.ops.convert_to_numpy(
        model.optimizer.learning_rate)) == 0.0
    before = [np.array(v.value) for v in model.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for old, variable in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(old, np.array(variable.value))


def test_attach_keeps_the_mixing_of_a_batch_augment_model():
    """README: "`kft.augmentation.attach` keeps the mixing" and "Label
    smoothing alone: `MixUpOrCutMix(prob=0.0, label_smoothing=0.1,
    ...)`"."""
    # attach builds a new model around the classifier: a plain wrapper
    # would train on the unmixed, unsmoothed labels without a word.
    mixing = kft.layers.MixUpOrCutMix(prob=0.0, label_smoothing=0.3,
                                      num_classes=3, seed=0)
    model = _model(batch_augment=mixing)
    attached = kft.augmentation.attach(model, "none")  # an Identity layer
    attached.compile(keras.optimizers.SGD(0.0),
                     keras.losses.CategoricalCrossentropy(from_logits=True))
    x, y = _arrays(6)
    logits = np.asarray(attached(x, training=True))
    smoothed = np.eye(3)[y] * 0.7 + 0.3 / 3
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = float(-(smoothed * log_p).sum(-1).mean())
    hard = float(-(np.eye(3)[y] * log_p).sum(-1).mean())
    assert abs(expected - hard) > 1e-3  # the case tells them apart
    # One-hot labels are smoothed inside the step; integer labels are
    # one-hot encoded first ("integer labels are one-hot encoded for you").
    for labels in (np.eye(3)[y], y):
        loss = float(attached.train_on_batch(x, labels))
        assert loss == pytest.approx(expected, rel=1e-4), labels.ndim
