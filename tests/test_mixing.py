import json

import jax
import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kft
from kft.layers import CutMix, MixUp, MixUpOrCutMix

SETTINGS = settings(max_examples=20, deadline=None)
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


def _mix(kind, mode, seed, images, labels):
    layer = _make(kind, images.shape[0], mode, seed)
    mixed, targets = layer((images, labels))
    return np.asarray(mixed)[..., 0], np.asarray(targets)


# Shapes come from small pools: each new shape costs XLA compiles on CPU.
# In "sample" mode each batch size compiles a Beta sampler (seconds).
shapes = st.tuples(st.sampled_from([2, 5]), st.sampled_from([1, 3, 8]),
                   st.sampled_from([1, 4, 7]))


@SETTINGS
@given(shape=shapes, kind=st.sampled_from(["mixup", "cutmix", "both"]),
       mode=st.sampled_from(MODES), seed=st.integers(0, 2**16))
def test_images_are_the_label_weighted_mix_of_their_partners(shape, kind,
                                                             mode, seed):
    batch, height, width = shape
    images, labels = _constant_batch(batch, height, width)
    mixed, targets = _mix(kind, mode, seed, images, labels)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert targets.min() >= 0.0 and targets.max() <= 1.0
    # Each target row holds lam on its own class and 1 - lam on its
    # partner's (sample batch - 1 - i), and the pixels agree with them.
    values = np.arange(1, batch + 1)
    for i in range(batch):
        assert set(np.flatnonzero(targets[i])) <= {i, batch - 1 - i}
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
    mixed, targets = _mix("cutmix", mode, seed, images, labels)
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


def test_the_documented_defaults():
    # MixUpOrCutMix's are timm's Mixup defaults (smoothing 0.1 included,
    # a default that could drop to 0 unseen); MixUp and CutMix smooth
    # nothing unless asked.
    documented = {
        MixUpOrCutMix: {"mixup_alpha": 0.8, "cutmix_alpha": 1.0,
                        "switch_prob": 0.5, "label_smoothing": 0.1},
        MixUp: {"alpha": 0.2, "label_smoothing": 0.0},
        CutMix: {"alpha": 1.0, "label_smoothing": 0.0},
    }
    for cls, settings_ in documented.items():
        config = cls().get_config()
        assert {k: config[k] for k in settings_} == settings_, cls
        assert config["prob"] == 1.0 and config["mode"] == "batch", cls
        unmixed = cls(prob=0.0, num_classes=3)
        _, labels = unmixed((np.zeros((2, 4, 4, 3), "float32"),
                             np.array([0, 2])))
        smoothing = settings_["label_smoothing"]
        np.testing.assert_allclose(
            np.asarray(labels),
            np.eye(3)[[0, 2]] * (1 - smoothing) + smoothing / 3, rtol=1e-6)


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


def test_symbolic_calls_give_the_soft_label_shapes():
    # Called on Keras' symbolic tensors (a functional model, or Keras
    # inferring shapes): images keep their shape and dtype, labels become
    # (batch, classes) float32, from num_classes or a one-hot width; the
    # labels a concrete call refuses are refused there too (a one-hot
    # width other than num_classes gave a spec of that width).
    images = keras.KerasTensor((4, 8, 8, 3), "float32")
    for layer, labels, classes in (
            (MixUp(num_classes=5), keras.KerasTensor((4,), "int32"), 5),
            (MixUp(num_classes=5), keras.KerasTensor((4, 1), "int32"), 5),
            (MixUp(num_classes=7), keras.KerasTensor((4, 7), "float32"), 7),
            (MixUp(), keras.KerasTensor((4, 7), "float32"), 7),
            # One-hot rows of a width not known yet: num_classes's.
            (MixUp(num_classes=5), keras.KerasTensor((4, None), "float32"),
             5)):
        mixed, targets = layer((images, labels))
        assert (mixed.shape, mixed.dtype) == ((4, 8, 8, 3), "float32")
        assert (targets.shape, targets.dtype) == ((4, classes), "float32")
    out = CutMix(num_classes=3)({"images": images,
                                 "labels": keras.KerasTensor((4,), "int32")})
    assert sorted(out) == ["images", "labels"]
    assert out["labels"].shape == (4, 3)
    for layer, labels, message in (
            (MixUp(num_classes=5), keras.KerasTensor((3,), "int32"),
             "The batch has 4 images but 3 labels"),
            (MixUp(num_classes=5), keras.KerasTensor((4, 7), "float32"),
             r"One-hot labels must have num_classes=5 columns\. Received: "
             r"labels.shape=\(4, 7\)"),
            (MixUp(), keras.KerasTensor((4,), "int32"),
             "Integer class labels need `num_classes`")):
        with pytest.raises(ValueError, match=message):
            layer((images, labels))


@pytest.mark.parametrize("mode", MODES)
def test_batch_mode_shares_one_lambda_and_sample_mode_does_not(mode):
    images, labels = _constant_batch(5, 4, 4)
    _, targets = MixUp(1.0, num_classes=5, mode=mode,
                       seed=0)((images, labels))
    targets = np.asarray(targets)
    mixed = [i for i in range(5) if targets[i, i] < 1.0]
    lams = np.unique(np.round(targets[mixed, mixed], 6))
    assert len(mixed) >= 2
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
    images, labels = _constant_batch(5, 3, 4)
    labels = labels % 3
    for x, y in zip(layer((images, labels)), clone((images, labels))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("make, message", [
    (lambda: MixUp(0), r"Argument `alpha` must be a finite number > 0"),
    (lambda: CutMix(-1.0), r"Argument `alpha` must be a finite number > 0"),
    (lambda: MixUpOrCutMix(-0.1),
     r"Argument `mixup_alpha` must be a finite number >= 0"),
    (lambda: MixUpOrCutMix(1.0, "x"), "Argument `cutmix_alpha` must be"),
    (lambda: MixUpOrCutMix(0.0, 0.0), "must not both be 0"),
    (lambda: MixUpOrCutMix(switch_prob=1.5), "Argument `switch_prob` must"),
    (lambda: MixUp(prob=-0.1),
     r"Argument `prob` must be a finite number in \[0.0, 1.0\]"),
    (lambda: CutMix(label_smoothing=2), "Argument `label_smoothing` must"),
    (lambda: MixUp(mode="elem"), "Argument `mode` must be one of"),
    (lambda: MixUp(num_classes=1),
     "Argument `num_classes` must be an integer >= 2"),
    (lambda: MixUp(num_classes=3.0), "Argument `num_classes` must be an int"),
    (lambda: MixUp(num_classes=True), "Argument `num_classes` must be an int"),
])
def test_bad_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


NUMBER_ARGUMENTS = [
    (MixUp, "alpha"), (MixUp, "prob"), (MixUp, "label_smoothing"),
    (CutMix, "alpha"), (CutMix, "prob"), (CutMix, "label_smoothing"),
    (MixUpOrCutMix, "mixup_alpha"), (MixUpOrCutMix, "cutmix_alpha"),
    (MixUpOrCutMix, "switch_prob"), (MixUpOrCutMix, "prob"),
    (MixUpOrCutMix, "label_smoothing"),
]


@pytest.mark.parametrize("value", [float("inf"), -float("inf"),
                                   float("nan")])
@pytest.mark.parametrize("cls, name", NUMBER_ARGUMENTS)
def test_non_finite_numbers_raise(cls, name, value):
    # An inf alpha would give NaN images, a nan alpha a layer never mixing.
    with pytest.raises(ValueError, match=f"Argument `{name}` must be a "
                                         "finite number"):
        cls(**{name: value}, num_classes=3)


@pytest.mark.parametrize("cls", [MixUp, CutMix, MixUpOrCutMix])
def test_numpy_integers_are_accepted_for_num_classes_and_seed(cls):
    layer = cls(num_classes=np.int64(5), seed=np.int64(3))
    assert type(layer.num_classes) is int and type(layer.seed) is int
    json.dumps(layer.get_config())
    images, labels = _constant_batch(4, 3, 3)
    _, targets = layer((images, labels))
    assert np.asarray(targets).shape == (4, 5)
    same = cls(num_classes=5, seed=3)((images, labels))[1]
    np.testing.assert_array_equal(np.asarray(targets), np.asarray(same))


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
    with pytest.raises(ValueError, match=r"labels must be integer class"):
        MixUp(num_classes=2)((images, np.zeros((2, 2, 1))))


@pytest.mark.parametrize("labels", [
    np.array([2]), np.arange(5) % 4, np.arange(7) % 4,
    np.eye(4, dtype="float32")[np.arange(7) % 4],
])
def test_label_count_must_match_the_image_count(labels):
    # One label would broadcast into NaN rows, 5 or 7 into a Keras error.
    images = np.zeros((6, 4, 4, 1), "float32")
    layer = MixUp(0.4, num_classes=4, seed=0)
    message = f"The batch has 6 images but {len(labels)} labels"
    with pytest.raises(ValueError, match=message):
        layer((images, labels))
    # Shapes are static when traced too.
    state = [v.value for v in layer.non_trainable_variables]
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda s, x, y: layer.stateless_call([], s, (x, y)))(
            state, images, labels)
    with pytest.raises(ValueError, match=message):
        layer.compute_output_spec((keras.KerasTensor(images.shape),
                                   keras.KerasTensor(labels.shape)))


@pytest.mark.parametrize("labels, shown", [
    (np.array([0, 1, 4, 3, 2, 1]), ": 4"),
    (np.array([[0], [1], [2], [3], [-1], [0]]), ": -1"),
    (np.array([0.0, 1.0, 2.0, 3.0, 9.0, 0.0]), ": 9"),
])
def test_integer_labels_out_of_range_raise_when_concrete(labels, shown):
    images = np.zeros((6, 4, 4, 1), "float32")
    layer = MixUp(0.4, num_classes=4, seed=0)
    with pytest.raises(ValueError, match=r"`labels` holds labels outside "
                                         r"\[0, 4\).* classes" + shown):
        layer((images, labels))
    # Values of traced labels are unknown: no check, and no error.
    state = [v.value for v in layer.non_trainable_variables]
    (_, targets), _ = jax.jit(
        lambda s, x, y: layer.stateless_call([], s, (x, y)))(
            state, images, labels)
    assert targets.shape == (6, 4)


def test_one_hot_width_must_match_num_classes_under_jit_too():
    images = np.zeros((6, 4, 4, 1), "float32")
    layer = MixUp(0.4, num_classes=4, seed=0)
    state = [v.value for v in layer.non_trainable_variables]
    with pytest.raises(ValueError, match="must have num_classes=4 columns"):
        jax.jit(lambda s, x, y: layer.stateless_call([], s, (x, y)))(
            state, images, np.eye(5, dtype="float32")[np.arange(6) % 5])


@pytest.mark.parametrize("batch", [2, 5])
@pytest.mark.parametrize("mode", MODES)
def test_partner_is_the_mirrored_sample_as_in_timm(batch, mode):
    # timm mixes with x.flip(0): sample i with sample batch - 1 - i. With a
    # random permutation half of all batches of 2 went unmixed.
    images, labels = _constant_batch(batch, 3, 3)
    layer = MixUp(1.0, num_classes=batch, mode=mode, seed=0)
    for _ in range(12):
        mixed, targets = layer((images, labels))
        mixed, targets = np.asarray(mixed)[:, 0, 0, 0], np.asarray(targets)
        for i in range(batch):
            j = batch - 1 - i
            lam = targets[i, i]
            if i == j:
                # The middle of an odd batch is its own partner.
                assert lam == 1.0
                assert mixed[i] == pytest.approx(i + 1, rel=1e-6)
                continue
            assert 0.0 < lam < 1.0
            expected = np.zeros(batch)
            expected[[i, j]] = [lam, 1.0 - lam]
            np.testing.assert_allclose(targets[i], expected, atol=1e-6)
            assert mixed[i] == pytest.approx(lam * (i + 1)
                                             + (1 - lam) * (j + 1), rel=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_cutmix_pastes_the_mirrored_sample(mode):
    images, labels = _constant_batch(2, 8, 8)
    layer = _make("cutmix", 2, mode, 0)
    pasted = 0
    for _ in range(8):
        mixed, targets = layer((images, labels))
        mixed, targets = np.asarray(mixed)[..., 0], np.asarray(targets)
        for i, j in ((0, 1), (1, 0)):
            assert set(np.unique(mixed[i])) <= {i + 1, j + 1}
            share = (mixed[i] == j + 1).mean()
            assert targets[i, j] == pytest.approx(share, abs=1e-6)
            pasted += share > 0
    # Only a box of under 2 pixels a side (lam > 0.94) leaves a sample
    # as is; a random permutation left both as is in half of the calls.
    assert pasted >= 12


# -- the model: mixing inside the compiled train step --------------------

SIZE = 16


def _data(n=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")
    return images, rng.integers(0, classes, n)


def _model(batch_augment, seed=0):
    keras.utils.set_random_seed(seed)
    return kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                input_shape=(SIZE, SIZE, 3),
                                batch_augment=batch_augment)


def _compile(model):
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _seed_state(model):
    return np.asarray(model.batch_augment.seed_generator.state.value)


@pytest.mark.slow
def test_fit_mixes_inside_the_step_reproducibly():
    x, y = _data()
    fit = dict(batch_size=8, epochs=1, shuffle=False, verbose=0)
    plain = _compile(_model(None))
    plain.fit(x, np.eye(3, dtype="float32")[y], **fit)
    # prob=0 and no smoothing: exactly the plain model's training.
    unmixed = _compile(_model(MixUp(prob=0.0, seed=1)))
    assert isinstance(unmixed, kft.BatchAugmentModel)
    unmixed.fit(x, y, **fit)
    for a, b in zip(_weights(plain), _weights(unmixed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    runs = []
    for _ in range(2):
        model = _compile(_model(MixUpOrCutMix(label_smoothing=0.0, seed=1)))
        before = _seed_state(model)
        model.fit(x, y, **fit)
        # The seed state is model state: the fit wrote it back, advanced.
        assert _seed_state(model)[1] > before[1]
        runs.append(_weights(model))
    moved = [not np.allclose(a, b) for a, b in zip(_weights(plain), runs[0])]
    assert any(moved)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_evaluate_and_predict_never_mix_and_metrics_take_soft_labels():
    x, y = _data(seed=1)
    model = _compile(_model(MixUpOrCutMix(seed=3)))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    state = _seed_state(model)
    logits = model.predict(x, verbose=0)
    result = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    again = model.evaluate(x, np.eye(3)[y], batch_size=8, verbose=0,
                           return_dict=True)
    np.testing.assert_array_equal(_seed_state(model), state)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected_loss = -log_probs[np.arange(len(y)), y].mean()
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert result["accuracy"] == pytest.approx(
        (logits.argmax(axis=1) == y).mean())
    assert again == pytest.approx(result, rel=1e-6)
    # Integer labels as a column, the (n, 1) form `fine_tune` takes too.
    column = model.evaluate(x, y[:, None], batch_size=8, verbose=0,
                            return_dict=True)
    assert column == pytest.approx(result, rel=1e-6)


@pytest.mark.slow
def test_freezing_and_changing_trainable_mid_fit_on_an_augmented_model():
    x, y = _data(seed=2)
    model = _model(MixUpOrCutMix(seed=4))
    assert list(kft.get_blocks(model)) == ["stem", "block1", "block2",
                                           "block3", "head"]
    kft.freeze(model, "feature_extraction")
    _compile(model)
    stem = model.get_layer("simple_cnn").get_layer("stem_conv")
    block3 = model.get_layer("simple_cnn").get_layer("block3_conv")
    start = {"stem": np.array(stem.kernel), "block3": np.array(block3.kernel)}
    seen = {}

    class Unfreeze(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                kft.freeze(self.model, "partial", n_blocks=1)
                seen["block3"] = np.array(block3.kernel)
                seen["seed"] = _seed_state(self.model)

    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[Unfreeze()])
    np.testing.assert_array_equal(seen["block3"], start["block3"])
    np.testing.assert_array_equal(np.array(stem.kernel), start["stem"])
    assert not np.allclose(np.array(block3.kernel), start["block3"])
    assert _seed_state(model)[1] > seen["seed"][1] > 0


def test_model_config_round_trips_through_json(tmp_path):
    layer = MixUpOrCutMix(0.4, 1.0, switch_prob=0.25, num_classes=3, seed=9)
    model = _model(layer)
    config = json.loads(json.dumps(model.get_config()))
    clone = kft.BatchAugmentModel.from_config(config)
    assert isinstance(clone, kft.BatchAugmentModel)
    assert clone.batch_augment.get_config() == layer.get_config()
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kft.BatchAugmentModel)
    assert loaded.batch_augment.get_config() == layer.get_config()
    for a, b in zip(_weights(model), _weights(loaded)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, name", [
    (dict(loss="sparse_categorical_crossentropy"), "loss"),
    (dict(loss=keras.losses.SparseCategoricalCrossentropy()), "loss"),
    (dict(loss="categorical_crossentropy",
          metrics=["sparse_categorical_accuracy"]), "metrics"),
])
def test_compile_rejects_sparse_losses_and_metrics(kwargs, name):
    model = _model(MixUp(seed=0))
    with pytest.raises(ValueError, match=f"Argument `{name}` must take soft "
                                         "labels.*CategoricalCrossentropy"):
        model.compile("sgd", **kwargs)


def test_bad_batch_augment_arguments_raise():
    with pytest.raises(TypeError, match="Argument `batch_augment` must be a "
                                        "Keras layer"):
        _model("mixup")
    with pytest.raises(ValueError, match="has num_classes=5 but the model "
                                         "outputs 3 classes"):
        _model(MixUp(num_classes=5))
    inputs = keras.Input((4, 4, 3))
    outputs = [keras.layers.Dense(2)(inputs), keras.layers.Dense(2)(inputs)]
    with pytest.raises(ValueError, match="one image input and one logits"):
        kft.BatchAugmentModel(inputs, outputs, batch_augment=MixUp())


def test_clone_model_says_how_to_clone():
    # keras.models.clone_model passes no `batch_augment`: the error blamed
    # an argument the user never gave.
    model = _model(MixUp(seed=0))
    with pytest.raises(TypeError, match=r"keras.models.clone_model cannot "
                       r"pass it.*BatchAugmentModel.from_config"):
        keras.models.clone_model(model)
    clone = kft.BatchAugmentModel.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    images = _data(n=2)[0]
    np.testing.assert_array_equal(clone.predict(images, verbose=0),
                                  model.predict(images, verbose=0))


def test_one_hot_labels_of_the_wrong_width_raise_in_the_model():
    # The layer has no num_classes here; the model's output width decides.
    model = _compile(_model(MixUp(seed=0)))
    images = _data(n=4)[0]
    with pytest.raises(ValueError, match=r"one column per class of the "
                                         r"model \(3\).*\(4, 4\)"):
        model.fit(images, np.eye(4, dtype="float32"), batch_size=4,
                  epochs=1, verbose=0)


def test_out_of_range_integer_labels_are_refused_at_every_entry_point():
    # Only `fit` checked: evaluate, train_on_batch and test_on_batch one-hot
    # encoded label 7 to a row of zeros (a loss of 0 for that sample, no
    # error), as did `fit` with the labels in a list.
    model = _compile(_model(MixUp(seed=0)))
    images = _data(n=3)[0]
    bad = np.array([0, 1, 7])
    before = [np.array(w) for w in model.get_weights()]
    for call in (lambda: model.evaluate(images, bad, verbose=0),
                 lambda: model.train_on_batch(images, bad),
                 lambda: model.test_on_batch(images, bad),
                 lambda: model.fit(images, bad.tolist(), verbose=0),
                 lambda: model.evaluate(images, jax.numpy.asarray(bad),
                                        verbose=0),
                 lambda: model.fit(images, bad[:, None], verbose=0)):
        with pytest.raises(ValueError, match=r"`y` holds labels outside "
                                             r"\[0, 3\).*: 7"):
            call()
    with pytest.raises(ValueError, match=r"`validation_data\[1\]` holds"):
        model.fit(images, bad[:2].tolist() + [2], verbose=0,
                  validation_data=[images, [0, 1, -1]])
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    assert np.isfinite(model.evaluate(images, np.array([0, 1, 2]),
                                      verbose=0)[0])


def test_fit_without_labels_raises():
    model = _compile(_model(MixUp(seed=0)))
    with pytest.raises(ValueError, match="Received a batch without labels"):
        model.fit(_data(n=4)[0], batch_size=4, epochs=1, verbose=0)


@pytest.mark.slow
def test_fine_tune_picks_a_soft_label_loss_for_an_augmented_model():
    x, y = _data(n=12, seed=2)
    model = _model(MixUpOrCutMix(seed=4))
    result = kft.fine_tune(model, (x, y), (x, y), strategy="partial",
                           head_epochs=1, epochs=1, batch_size=6, verbose=0)
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
    assert len(result.histories) == 2
    # Evaluation takes integer labels, one-hot encoded by the model: its
    # accuracy is the argmax match on them.
    logs = model.evaluate(x, y, batch_size=6, verbose=0, return_dict=True)
    predicted = np.argmax(model.predict(x, verbose=0), axis=-1)
    assert logs["accuracy"] == pytest.approx(np.mean(predicted == y))


def test_kft_layers_is_the_public_namespace_of_the_layers():
    from kft.augmentation import mixing

    for name in ("MixUp", "CutMix", "MixUpOrCutMix"):
        assert getattr(kft.layers, name) is getattr(mixing, name)
        assert name in kft.layers.__all__
    assert "Preprocess" in kft.layers.__all__
    assert kft.layers.PREPROCESS_MODES == ("caffe", "tf", "torch", "none")
    with pytest.raises(ValueError, match="Argument `mode` must be one of "
                                         r"\('caffe', 'tf', 'torch', "
                                         r"'none'\). Received: mode='bgr'"):
        kft.layers.Preprocess("bgr")


@pytest.mark.parametrize("layer", [MixUp, CutMix, MixUpOrCutMix])
@pytest.mark.parametrize("seed", [-1, 2**32])
def test_mixing_layers_refuse_seeds_out_of_range(layer, seed):
    # JAX's "OverflowError: Python integer -1 out of bounds for uint32"
    # when the layer was built.
    with pytest.raises(ValueError, match=r"`seed` must be an integer in "
                       rf"\[0, 4294967295\]\. Received: seed={seed}"):
        layer(seed=seed)
    assert layer(seed=np.uint32(2**32 - 1)).seed == 2**32 - 1


def test_switch_prob_is_the_share_of_cutmix_draws():
    # timm's switch_prob: the chance of CutMix instead of Mixup. Image i
    # holds the value i: Mixup blends it into one value, CutMix pastes a
    # box of its partner's (two values).
    n = 1000
    images = np.broadcast_to(np.arange(n, dtype="float32")[:, None, None,
                                                           None],
                             (n, 8, 8, 3)).copy()
    layer = MixUpOrCutMix(1.0, 1.0, switch_prob=0.2, num_classes=4,
                          mode="sample", seed=0)
    mixed, _ = layer((images, np.arange(n) % 4))
    values = [len(np.unique(image)) for image in np.asarray(mixed)]
    assert set(values) <= {1, 2}
    assert np.mean(np.equal(values, 2)) == pytest.approx(0.2, abs=0.05)

