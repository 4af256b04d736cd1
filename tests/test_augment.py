import json

import jax
import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kft
from kft.layers import CutMix, MixUp, MixUpOrCutMix

SETTINGS = settings(max_examples=25, deadline=None)
MODES = ["batch", "sample"]


def _constant_batch(batch, height, width, channels=1):
    """Sample i is the constant image i + 1; its label is class i."""
    values = np.arange(1, batch + 1, dtype="float32")[:, None, None, None]
    images = values * np.ones((batch, height, width, channels), "float32")
    return images, np.arange(batch)


def _make(kind, batch, mode, seed, **kwargs):
    if kind == "mixup":
        return MixUp(1.0, num_classes=batch, mode=mode, seed=seed, **kwargs)
    if kind == "cutmix":
        return CutMix(1.0, num_classes=batch, mode=mode, seed=seed, **kwargs)
    return MixUpOrCutMix(num_classes=batch, mode=mode, seed=seed,
                         label_smoothing=0.0, **kwargs)


shapes = st.tuples(st.integers(2, 6), st.integers(1, 9), st.integers(1, 9))


@SETTINGS
@given(shape=shapes, kind=st.sampled_from(["mixup", "cutmix", "both"]),
       mode=st.sampled_from(MODES), seed=st.integers(0, 2**16))
def test_images_are_the_label_weighted_mix_of_their_partners(shape, kind,
                                                             mode, seed):
    batch, height, width = shape
    images, labels = _constant_batch(batch, height, width)
    mixed, targets = _make(kind, batch, mode, seed)((images, labels))
    mixed, targets = np.asarray(mixed)[..., 0], np.asarray(targets)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert targets.min() >= 0.0 and targets.max() <= 1.0
    # Each target row holds lam on its own class and 1 - lam on its
    # partner's: at most two non-zeros, and the pixels agree with them.
    values = np.arange(1, batch + 1)
    for i in range(batch):
        assert np.count_nonzero(targets[i]) <= 2
        if kind == "mixup":
            np.testing.assert_allclose(mixed[i], targets[i] @ values,
                                       rtol=1e-5)
        else:
            pixel_mean = mixed[i].mean()
            np.testing.assert_allclose(pixel_mean, targets[i] @ values,
                                       rtol=1e-5)


@SETTINGS
@given(shape=shapes, mode=st.sampled_from(MODES), seed=st.integers(0, 2**16))
def test_cutmix_pastes_one_box_of_area_one_minus_lambda(shape, mode, seed):
    batch, height, width = shape
    images, labels = _constant_batch(batch, height, width)
    mixed, targets = CutMix(1.0, num_classes=batch, mode=mode,
                            seed=seed)((images, labels))
    mixed, targets = np.asarray(mixed)[..., 0], np.asarray(targets)
    for i in range(batch):
        lam = targets[i, i]
        assert 0.0 <= lam <= 1.0
        pasted = mixed[i] != i + 1
        # Within one pixel row of (1 - lam) of the image.
        assert abs(pasted.sum() - (1 - lam) * height * width) <= width
        if pasted.any():
            rows, cols = np.nonzero(pasted)
            box = ((rows.max() - rows.min() + 1)
                   * (cols.max() - cols.min() + 1))
            assert box == pasted.sum()  # one rectangle
            assert len(np.unique(mixed[i][pasted])) == 1  # one partner


@SETTINGS
@given(shape=shapes, kind=st.sampled_from(["mixup", "cutmix", "both"]),
       smoothing=st.sampled_from([0.0, 0.1, 0.3]), seed=st.integers(0, 99))
def test_prob_zero_is_the_identity_up_to_label_smoothing(shape, kind,
                                                         smoothing, seed):
    batch, height, width = shape
    images = np.random.default_rng(seed).uniform(
        0, 255, (batch, height, width, 3)).astype("float32")
    labels = np.arange(batch) % 2
    layers = {
        "mixup": MixUp(prob=0.0, label_smoothing=smoothing, num_classes=2),
        "cutmix": CutMix(prob=0.0, label_smoothing=smoothing, num_classes=2),
        "both": MixUpOrCutMix(prob=0.0, label_smoothing=smoothing,
                              num_classes=2),
    }
    out = layers[kind]({"images": images, "labels": labels})
    np.testing.assert_array_equal(np.asarray(out["images"]), images)
    expected = np.eye(2)[labels] * (1 - smoothing) + smoothing / 2
    np.testing.assert_allclose(np.asarray(out["labels"]), expected,
                               rtol=1e-6)


def test_label_smoothing_then_mixing_follows_timm():
    # timm: mixup_target = lam * smooth(y) + (1 - lam) * smooth(y[partner]).
    images, labels = _constant_batch(4, 4, 4)
    mixed, targets = MixUp(1.0, num_classes=5, label_smoothing=0.2,
                           seed=3)((images, labels))
    mixed, targets = np.asarray(mixed)[:, 0, 0, 0], np.asarray(targets)
    for i in range(4):
        # The pixel value gives lam and the partner; rebuild the target.
        row = targets[i]
        assert row[4] == pytest.approx(0.2 / 5)
        np.testing.assert_allclose(row.sum(), 1.0, rtol=1e-6)
        lam = (row[i] - 0.2 / 5) / 0.8
        partner = int(np.argmax(np.where(np.arange(5) == i, -1, row)))
        if row[partner] > 0.2 / 5 + 1e-6:
            assert mixed[i] == pytest.approx(
                lam * (i + 1) + (1 - lam) * (partner + 1), rel=1e-5)


def test_one_hot_labels_match_integer_labels():
    images, labels = _constant_batch(4, 5, 5)
    a = MixUpOrCutMix(num_classes=4, seed=7)((images, labels))
    b = MixUpOrCutMix(seed=7)((images, np.eye(4, dtype="float32")[labels]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("mode", MODES)
def test_batch_mode_shares_one_lambda_and_sample_mode_does_not(mode):
    images, labels = _constant_batch(16, 4, 4)
    _, targets = MixUp(1.0, num_classes=16, mode=mode,
                       seed=0)((images, labels))
    targets = np.asarray(targets)
    mixed = [i for i in range(16) if targets[i, i] < 1.0]
    lams = np.unique(np.round(targets[mixed, mixed], 6))
    assert len(mixed) >= 8
    if mode == "batch":
        assert len(lams) == 1
    else:
        assert len(lams) == len(mixed)


def test_same_seed_same_batch_and_state_advances():
    images, labels = _constant_batch(6, 8, 8)
    first = [MixUpOrCutMix(num_classes=6, seed=11)((images, labels))
             for _ in range(2)]
    layer = MixUpOrCutMix(num_classes=6, seed=11)
    again, later = layer((images, labels)), layer((images, labels))
    for x, y in zip(first[0], first[1]):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(first[0], again):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(again[1]), np.asarray(later[1]))


def test_stateless_call_under_jit_carries_the_seed_state():
    layer = MixUp(1.0, num_classes=6, seed=5)
    images, labels = _constant_batch(6, 4, 4)

    @jax.jit
    def step(state, images, labels):
        (_, targets), state = layer.stateless_call([], state,
                                                   (images, labels))
        return targets, state

    state = [v.value for v in layer.non_trainable_variables]
    first, state = step(state, images, labels)
    second, state = step(state, images, labels)
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    # No tracer leaked into the layer's own state.
    np.testing.assert_array_equal(
        np.asarray(layer.seed_generator.state.value), [5, 0])


@pytest.mark.parametrize("layer", [
    MixUp(0.4, prob=0.5, label_smoothing=0.1, mode="sample", num_classes=3,
          seed=1),
    CutMix(0.7, prob=0.9, num_classes=4, seed=2, name="cut"),
    MixUpOrCutMix(0.5, 1.5, switch_prob=0.3, prob=0.8, label_smoothing=0.05,
                  mode="sample", num_classes=5, seed=3),
])
def test_layers_round_trip_through_json(layer):
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    images, labels = _constant_batch(4, 6, 6)
    labels = labels % 3
    for x, y in zip(layer((images, labels)), clone((images, labels))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("make, message", [
    (lambda: MixUp(0), "Argument `alpha` must be a float > 0"),
    (lambda: CutMix(-1.0), "Argument `alpha` must be a float > 0"),
    (lambda: MixUpOrCutMix(-0.1), "Argument `mixup_alpha` must be a float"),
    (lambda: MixUpOrCutMix(1.0, "x"), "Argument `cutmix_alpha` must be"),
    (lambda: MixUpOrCutMix(0.0, 0.0), "must not both be 0"),
    (lambda: MixUpOrCutMix(switch_prob=1.5), "Argument `switch_prob` must"),
    (lambda: MixUp(prob=-0.1), "Argument `prob` must be a float in"),
    (lambda: CutMix(label_smoothing=2), "Argument `label_smoothing` must"),
    (lambda: MixUp(mode="elem"), "Argument `mode` must be one of"),
    (lambda: MixUp(num_classes=1), "Argument `num_classes` must be None"),
])
def test_bad_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_batches_raise():
    images = np.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match="need `num_classes`"):
        MixUp()((images, np.array([0, 1])))
    with pytest.raises(ValueError, match="must have num_classes=3 columns"):
        MixUp(num_classes=3)((images, np.eye(2)))
    with pytest.raises(ValueError, match=r"shape \(batch, height, width"):
        MixUp(num_classes=2)((np.zeros((2, 4, 4)), np.array([0, 1])))
    with pytest.raises(ValueError, match="exactly the keys"):
        MixUp(num_classes=2)({"image": images, "label": np.array([0, 1])})
    with pytest.raises(TypeError, match="Received: tuple of length 3"):
        MixUp(num_classes=2)((images, np.array([0, 1]), None))
