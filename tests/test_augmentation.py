"""Tests of kft.augmentation presets, eval transform and host augmentation."""

import json
import os

import keras
import numpy as np
import pytest

import kft
from kft.data._host_augment import HostAugmenter

SIZE = 16


def _images(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


EXPECTED_LAYERS = {
    "none": ["Identity"],
    "light": ["RandomResizedCrop", "RandomFlip"],
    "standard": ["RandomResizedCrop", "RandomFlip", "RandomRotation",
                 "RandomBrightnessScale", "RandomContrastScale",
                 "RandomSaturationScale", "RandomHue", "RandomGrayscale",
                 "GaussianBlur", "RandomErasing"],
    "strong": ["RandomResizedCrop", "RandomFlip", "RandAugment",
               "RandomErasing"],
}
# kft's layers with torchvision's draws, where Keras' layers differ.
TORCH_STYLE = ("RandomResizedCrop", "RandomBrightnessScale",
               "RandomContrastScale", "RandomSaturationScale", "GaussianBlur")


@pytest.mark.parametrize("preset", kft.augmentation.PRESETS)
def test_presets_are_keras_layers(preset):
    model = kft.augmentation.augmentation(preset, image_size=(SIZE, SIZE))
    assert model.name == f"augment_{preset}"
    assert [type(layer).__name__ for layer in model.layers] == \
        EXPECTED_LAYERS[preset]
    for layer in model.layers:  # Keras' layers, or kft's subclasses of them
        name = type(layer).__name__
        keras_class = (getattr(kft.augmentation, name) if name in TORCH_STYLE
                       else getattr(keras.layers, name))
        assert isinstance(layer, keras_class)


@pytest.mark.parametrize("preset", ["light", "standard"])
def test_presets_are_identity_at_inference(preset):
    x = _images()
    model = kft.augmentation.augmentation(preset, image_size=(SIZE, SIZE))
    np.testing.assert_allclose(model(x, training=False), x, atol=1e-4)


@pytest.mark.parametrize("preset", kft.augmentation.PRESETS)
def test_presets_round_trip_through_json(preset):
    model = kft.augmentation.augmentation(preset, seed=7)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    restored = keras.saving.deserialize_keras_object(config)
    def configs(m):
        return json.loads(json.dumps([la.get_config() for la in m.layers]))

    assert configs(restored) == configs(model)
    assert [type(la) for la in restored.layers] == \
        [type(la) for la in model.layers]
    if preset != "none":  # "none" is an Identity layer, nothing to seed
        assert model.layers[0].get_config()["seed"] == 7
        # Every layer's seed (Keras' grayscale layer left its out).
        x = _images()
        np.testing.assert_array_equal(np.asarray(model(x, training=True)),
                                      np.asarray(restored(x, training=True)))


def test_eval_transform_round_trips_through_json():
    model = kft.augmentation.eval_transform((SIZE, 2 * SIZE), 0.5)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    restored = keras.saving.deserialize_keras_object(config)
    x = _images()
    np.testing.assert_allclose(restored(x), model(x))


def test_eval_transform_resizes_then_center_crops():
    # Columns hold their own index: the crop's columns reveal the box.
    image = np.broadcast_to(np.arange(64, dtype=np.float32)[None, :, None],
                            (1, 32, 64, 3))
    out = np.asarray(kft.augmentation.eval_transform(8, crop_fraction=0.5)(
        image))
    assert out.shape == (1, 8, 8, 3)
    # Shorter side 32 -> 16, width 64 -> 32, center 8 columns of 32 are
    # source columns 24..40 (the center half of the center square).
    assert 23 < out[0, 0, 0, 0] < 27 and 37 < out[0, 0, -1, 0] < 41


def test_standard_preset_in_host_pipeline_is_seeded():
    x = np.repeat(_images(8), 1, axis=0)
    y = np.arange(8) % 2

    def first_batch(seed):
        ds = kft.data.from_arrays(x, y, batch_size=8, shuffle=False,
                                  augmentation="light", seed=seed)
        return next(iter(ds))[0]

    a, b, c = first_batch(1), first_batch(1), first_batch(2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - x).mean() > 1.0 and np.abs(a - c).mean() > 1.0


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["standard", "strong"])
def test_heavy_presets_change_images_within_range(preset):
    x = _images(8)
    model = kft.augmentation.augmentation(preset, image_size=(SIZE, SIZE),
                                          seed=3)
    out = np.asarray(model(x, training=True))
    assert out.shape == x.shape
    assert np.abs(out - x).mean() > 5.0
    assert out.min() >= 0.0 and out.max() <= 255.0


@pytest.mark.slow
def test_host_augmenter_jits_standard_and_advances_its_seed():
    augmenter = HostAugmenter(kft.augmentation.augmentation(
        "standard", image_size=(SIZE, SIZE), seed=0))
    x = _images()
    first, second = augmenter(x), augmenter(x)
    assert first.shape == x.shape and first.dtype == np.float32
    assert np.abs(first - second).mean() > 1.0


def test_each_pass_draws_the_same_whatever_earlier_passes_read():
    # One running seed state for all passes: a pass read in part (Keras'
    # fit reads one batch to build a model; the prefetch thread of
    # num_workers > 0 augments a timing-dependent few more) moved every
    # later pass's draws, so the same seed trained differently.
    x = np.random.default_rng(0).uniform(0, 255, (32, 8, 8, 3))

    def second_pass(read_first):
        data = kft.data.from_arrays(x, np.arange(32) % 2, batch_size=4,
                                    augmentation="light", seed=0,
                                    shuffle=False)
        passes = iter(data)
        for _ in range(read_first):
            next(passes)
        return np.concatenate([images for images, _ in data])

    whole = second_pass(8)
    np.testing.assert_array_equal(second_pass(1), whole)
    np.testing.assert_array_equal(second_pass(3), whole)
    # Passes still draw anew.
    data = kft.data.from_arrays(x, np.arange(32) % 2, batch_size=32,
                                augmentation="light", seed=0, shuffle=False)
    assert not np.array_equal(next(iter(data))[0], next(iter(data))[0])


@pytest.mark.slow
def test_attach_runs_augmentation_only_when_training():
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(SIZE, SIZE, 3))
    augmented = kft.augmentation.attach(model, "light")
    x = _images()
    np.testing.assert_allclose(augmented(x, training=False),
                               model(x, training=False), atol=1e-5)
    assert augmented.name == f"augmented_{model.name}"


def test_model_augment_on_leaves_batches_raw():
    x, y = _images(), np.arange(4) % 2
    ds = kft.data.from_arrays(x, y, batch_size=4, shuffle=False,
                              augmentation="light", augment_on="model")
    np.testing.assert_array_equal(next(iter(ds))[0], x)
    assert [type(l).__name__ for l in ds.augmentation.layers] == \
        EXPECTED_LAYERS["light"]


def test_augmentation_left_to_a_model_without_it_is_warned():
    # augment_on="model" yields raw batches: a model not wrapped by
    # `attach` trained on never-augmented images without a word.
    import warnings

    x, y = _images(), np.arange(4) % 2
    ds = kft.data.from_arrays(x, y, batch_size=4, augmentation="light",
                              augment_on="model")
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=x.shape[1:])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    message = (r"leaves its augmentation \('augment_light'\) to the model "
               r"\(augment_on=\"model\"\), but model 'kft_simple_cnn' has no "
               r"random augmentation layer.*kft\.augmentation\.attach\(model, "
               r"data\.augmentation\)")
    with pytest.warns(UserWarning, match=message):
        model.fit(ds, epochs=1, verbose=0)
    # A plain Keras model through fine_tune: its `fit` is Keras' own.
    built = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=x.shape[1:])
    other = keras.Model(built.inputs, built.outputs, name="plain")
    with pytest.warns(UserWarning, match=message.replace("kft_simple_cnn",
                                                         "plain")):
        kft.fine_tune(other, ds, strategy="full", head_epochs=1, epochs=2,
                      cache_features=False)
    attached = kft.augmentation.attach(model, ds.augmentation)
    attached.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attached.fit(ds, epochs=1, verbose=0)
        # Host augmentation, or none: nothing to say.
        model.fit(kft.data.from_arrays(x, y, batch_size=4,
                                       augmentation="light"), verbose=0)


@pytest.mark.parametrize("call,message", [
    (lambda: kft.augmentation.augmentation("heavy"),
     "Argument `preset` must be one of"),
    (lambda: kft.augmentation.augmentation("light", seed=1.5),
     "Argument `seed` must be an integer"),
    (lambda: kft.augmentation.eval_transform(SIZE, crop_fraction=1.5),
     r"Argument `crop_fraction` must be a finite number in \(0, 1\]"),
    (lambda: kft.augmentation.eval_transform((SIZE, 0)),
     r"Argument `image_size` must be a positive integer or a \(height, "
     r"width\) pair of them. Received: image_size=\(16, 0\)"),
    (lambda: kft.augmentation.eval_transform("16"),
     "Argument `image_size` must be a positive integer"),
    (lambda: kft.augmentation.augmentation("light", image_size=(SIZE,)),
     "Argument `image_size` must be a positive integer"),
    # The torch-style layers' own ranges, as a user builds them by hand.
    (lambda: kft.augmentation.RandomResizedCrop(0.5),
     r"Argument `scale` must be a \(min, max\) pair\. Received: scale=0\.5"),
    (lambda: kft.augmentation.RandomResizedCrop((0.9, 0.5)),
     r"`scale` must be a \(min, max\) pair with min <= max\. Received: "
     r"scale=\(0\.9, 0\.5\)"),
    (lambda: kft.augmentation.RandomResizedCrop((0.0, 0.0)),
     r"`scale` must allow an area above 0\. Received: scale=\(0\.0, 0\.0\)"),
    (lambda: kft.augmentation.GaussianBlur(4),
     r"`kernel_size` must be odd\. Received: kernel_size=4"),
])
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -- every preset through every documented path -------------------------


# Eager RandAugment and the "standard" chain take 5-25 s on 2 CPU cores.
PRESET_PARAMS = [
    pytest.param(p, marks=pytest.mark.slow) if p in ("standard", "strong")
    else p for p in kft.augmentation.PRESETS
]


def _plain_model():
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)),
                             keras.layers.Rescaling(1 / 255),
                             keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(2)], name="plain")


@pytest.mark.parametrize("preset", PRESET_PARAMS)
def test_every_preset_can_be_called_in_training_and_inference(preset):
    x = _images()
    model = kft.augmentation.augmentation(preset, seed=np.int64(1))
    trained = np.asarray(model(x, training=True))
    assert trained.shape == x.shape
    np.testing.assert_allclose(model(x, training=False), x, atol=1e-4)
    if preset == "none":
        np.testing.assert_array_equal(trained, x)


@pytest.mark.parametrize("preset", ["standard", "strong"])
def test_inference_calls_draw_nothing_even_under_jit(preset):
    # Keras' RandomHue and RandomGrayscale drew at inference: evaluation
    # moved the next training draws, and a jitted inference call left a
    # leaked tracer as their seed state (every later call failed).
    import jax

    x = _images()
    seen = kft.augmentation.augmentation(preset, seed=3)
    fresh = kft.augmentation.augmentation(preset, seed=3)
    np.testing.assert_allclose(seen(x, training=False), x, atol=1e-4)
    np.testing.assert_allclose(
        jax.jit(lambda a: seen(a, training=False))(x), x, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(seen(x, training=True)),
                                  np.asarray(fresh(x, training=True)))
    model = kft.augmentation.attach(_plain_model(), preset)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    seeds = [np.asarray(v.value).copy() for v in model.non_trainable_variables
             if "seed" in v.path]
    assert seeds
    jax.jit(lambda a: model(a, training=False))(x)
    model.predict(x, verbose=0)
    model.evaluate(x, np.zeros(4), verbose=0)
    np.testing.assert_array_equal(
        [np.asarray(v.value) for v in model.non_trainable_variables
         if "seed" in v.path], seeds)
    model.fit(x, np.zeros(4), epochs=1, verbose=0)  # draws as before


def test_colour_layers_name_the_images_shape():
    gray = np.zeros((2, 8, 8, 1), "float32")
    for layer in (kft.augmentation.RandomContrastScale(0.2),
                  kft.augmentation.RandomSaturationScale(0.2)):
        with pytest.raises(ValueError, match=r"RGB images.*"
                           r"images.shape=\(2, 8, 8, 1\)"):
            layer(gray, training=True)


@pytest.mark.parametrize("preset", kft.augmentation.PRESETS)
def test_every_preset_attaches_to_a_model(preset):
    model = _plain_model()
    augmented = kft.augmentation.attach(model, preset)
    x = _images()
    assert np.asarray(augmented(x, training=True)).shape == (4, 2)
    np.testing.assert_allclose(augmented(x, training=False),
                               model(x, training=False), atol=1e-5)


def _folder(root):
    from PIL import Image

    for name, value in (("dark", 30), ("bright", 220)):
        os.makedirs(root / name)
        for i in range(2):
            Image.new("RGB", (SIZE, SIZE), (value,) * 3).save(
                root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("augment_on", ["host", "model"])
@pytest.mark.parametrize("preset", PRESET_PARAMS)
def test_every_preset_from_directory(tmp_path, preset, augment_on):
    train, _ = kft.data.from_directory(_folder(tmp_path), SIZE, batch_size=4,
                                       augmentation=preset,
                                       augment_on=augment_on)
    assert train.augmentation.name == f"augment_{preset}"
    # "none" runs nothing on the host: kft.fine_tune and cache_features
    # treat the dataset as unaugmented.
    assert train.augments == (preset != "none" and augment_on == "host")
    assert train.augments == (train._augmenter is not None)
    images, labels = next(iter(train))
    assert images.shape == (4, SIZE, SIZE, 3) and labels.shape == (4,)
    if augment_on == "model":
        augmented = kft.augmentation.attach(_plain_model(),
                                            train.augmentation)
        assert np.asarray(augmented(images, training=True)).shape == (4, 2)


# -- host augmentation runs on a CPU device -----------------------------


def _on_cpu(arrays):
    import jax

    devices = {d for a in jax.tree_util.tree_leaves(arrays)
               for d in a.devices()}
    return bool(devices) and all(d.platform == "cpu" for d in devices)


def test_host_augmenter_outputs_and_seed_state_are_on_a_cpu_device():
    import jax

    augmenter = HostAugmenter(kft.augmentation.augmentation(
        "light", image_size=(SIZE, SIZE), seed=0))
    x = _images()
    out = augmenter.augment(x)
    assert out.devices() == {augmenter.device} == {jax.devices("cpu")[0]}
    assert _on_cpu(augmenter._states)
    first, second = augmenter(x), augmenter(x)
    assert isinstance(first, np.ndarray) and first.shape == x.shape
    assert np.abs(first - second).mean() > 1.0  # the seed state advances


def test_dataset_augments_property():
    x, y = _images(), np.arange(4) % 2
    host = kft.data.from_arrays(x, y, augmentation="light")
    model = kft.data.from_arrays(x, y, augmentation="light",
                                 augment_on="model")
    none = kft.data.from_arrays(x, y, augmentation="none")
    assert host.augments is True
    assert model.augments is False and none.augments is False
    states = HostAugmenter.pass_states(0)  # what a pass holds
    host._augmenter(x, 0, states)
    assert _on_cpu(dict(states))


_PINNED_SCRIPT = """
import jax
import numpy as np
import kft

cpu0, cpu1 = jax.devices("cpu")
jax.config.update("jax_default_device", cpu1)
x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
ds = kft.data.from_arrays(x, np.arange(4) % 2, batch_size=2,
                          augmentation="light")
images, _ = next(iter(ds))
assert images.shape == (2, 8, 8, 3), images.shape
assert ds._augmenter.augment(x).devices() == {cpu0}
states = jax.tree_util.tree_leaves(ds._augmenter._states)
assert {d for s in states for d in s.devices()} == {cpu0}
print("pinned")
"""


@pytest.mark.slow
def test_host_augmenter_ignores_the_default_device(tmp_path):
    # Two CPU devices stand in for a host and an accelerator: with the
    # second one as JAX's default, host augmentation still runs on the
    # first CPU device.
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", KERAS_BACKEND="jax",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                          " --xla_force_host_platform_device_count=2"))
    result = subprocess.run([sys.executable, "-c", _PINNED_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pinned" in result.stdout


def test_attach_keeps_the_models_mixing_and_class_names():
    # attach() returned a plain Model: Mixup/CutMix and label smoothing no
    # longer ran (the loss was on hard labels) and the class names were
    # gone (kft.predict said "0" for "cat").
    mixing = kft.layers.MixUp(1.0, label_smoothing=0.3, num_classes=2,
                              seed=0)
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(16, 16, 3),
                                 batch_augment=mixing,
                                 class_names=["cat", "dog"])
    attached = kft.augmentation.attach(model, "none")
    assert isinstance(attached, kft.BatchAugmentModel)
    assert attached.batch_augment is mixing
    assert attached.kft_metadata["class_names"] == ["cat", "dog"]
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3))
    y = np.arange(8) % 2
    attached.compile(keras.optimizers.SGD(0.0),
                     keras.losses.CategoricalCrossentropy(from_logits=True))
    loss = attached.fit(x.astype("float32"), y, batch_size=8, epochs=1,
                        shuffle=False, verbose=0).history["loss"][0]
    hard = float(keras.losses.CategoricalCrossentropy(from_logits=True)(
        np.eye(2)[y], attached.predict(x, verbose=0)))
    assert abs(loss - hard) > 1e-3  # mixed and smoothed: not the hard loss


def test_standard_preset_draws_as_the_seeds_torchvision_recipe():
    # It zoomed about the centre (no crop position), added brightness,
    # scaled saturation by 0.67-1.5, shifted hue by +-0.05, and blurred a
    # whole batch with one anisotropic sigma pair.
    layers = {type(layer).__name__: layer for layer in
              kft.augmentation.augmentation("standard", seed=0).layers}
    n = 1000
    image = np.zeros((n, 2, 2, 3), "float32")
    image[...] = (200.0, 80.0, 40.0)
    hsv_in = np.asarray(keras.ops.image.rgb_to_hsv(image[:1] / 255.0))[
        0, 0, 0]

    def hsv(layer):
        out = np.asarray(layers[layer](image, training=True)) / 255.0
        return np.asarray(keras.ops.image.rgb_to_hsv(out))[:, 0, 0]

    shift = (hsv("RandomHue")[:, 0] - hsv_in[0] + 0.5) % 1 - 0.5
    assert -0.1 <= shift.min() < -0.09 and 0.09 < shift.max() <= 0.1
    # Saturation: torchvision's blend with the grayscale image, f in
    # [0.8, 1.2] (Keras scaled the HSV saturation and clipped it, not the
    # pixels: (255, 40, 0) at 1.2 became (255, -3, -51)).
    luma = np.array([0.2989, 0.587, 0.114], "float32")
    gray = (image[:1] * luma).sum(-1, keepdims=True)
    out = np.asarray(layers["RandomSaturationScale"](image, training=True))
    factor = (out[:, 0, 0, 0] - gray[0, 0, 0, 0]) / (200.0 - gray[0, 0, 0, 0])
    assert 0.8 <= factor.min() < 0.82 and 1.18 < factor.max() <= 1.2
    np.testing.assert_allclose(
        out, factor[:, None, None, None] * image
        + (1 - factor[:, None, None, None]) * gray, rtol=1e-4, atol=1e-3)
    orange = np.array([[[[255.0, 40.0, 0.0]]]], "float32").repeat(n, 0)
    out = np.asarray(layers["RandomSaturationScale"](orange, training=True))
    assert out.min() >= 0 and out.max() <= 255
    gray = (orange * luma).sum(-1, keepdims=True)
    factor = (out[:, 0, 0, 1] - gray[:, 0, 0, 0]) / (40.0 - gray[:, 0, 0, 0])
    np.testing.assert_allclose(out, np.clip(
        factor[:, None, None, None] * orange
        + (1 - factor[:, None, None, None]) * gray, 0, 255), atol=1e-3)
    # Contrast by a factor in [0.8, 1.2] about the grayscale mean (Keras
    # blended each channel with its own mean).
    pair = np.zeros((n, 1, 2, 3), "float32")
    pair[:, 0, 0], pair[:, 0, 1] = (100.0, 20.0, 60.0), (140.0, 30.0, 70.0)
    out = np.asarray(layers["RandomContrastScale"](pair, training=True))
    contrast = (out[:, 0, 1, 0] - out[:, 0, 0, 0]) / 40.0
    assert 0.8 <= contrast.min() < 0.82 and 1.18 < contrast.max() <= 1.2
    mean = (pair[:1] * luma).sum(-1).mean()
    f = contrast[:, None, None, None]
    np.testing.assert_allclose(out, f * pair + (1 - f) * mean, rtol=1e-4,
                               atol=1e-3)
    bright = np.asarray(layers["RandomBrightnessScale"](
        np.full((n, 1, 1, 3), 100.0, "float32"), training=True))
    assert 80 <= bright.min() < 82 and 118 < bright.max() <= 120
    # RandomResizedCrop(scale=(0.8, 1)): the crop moves (torchvision's
    # centre column on a 64 px ramp: std 1.8, range 25-38).
    ramp = np.tile(np.arange(64, dtype="float32")[None, :, None],
                   (64, 1, 3))[None].repeat(300, 0)
    centre = np.asarray(layers["RandomResizedCrop"](ramp, training=True))[
        :, 32, :, 0].mean(axis=1)
    assert 1.2 < centre.std() < 2.4 and centre.min() < 28 < 35 < centre.max()
    # GaussianBlur: every image its own isotropic sigma in (0.1, 2).
    delta = np.zeros((64, 9, 9, 1), "float32")
    delta[:, 4, 4] = 1.0
    out = np.asarray(layers["GaussianBlur"](delta, training=True))
    np.testing.assert_allclose(out[:, 4, 3], out[:, 3, 4], rtol=1e-5)
    centre_weight = out[:, 4, 4, 0]
    # One draw per image (sigmas near 0.1 all leave the centre at 1.0).
    assert len(np.unique(np.round(centre_weight, 6))) > 56
    # Centre tap of a 3x3 Gaussian: (1 / (1 + 2 e^(-1 / 2s^2)))^2.
    low, high = [(1 / (1 + 2 * np.exp(-1 / (2 * s * s)))) ** 2
                 for s in (2.0, 0.1)]
    assert low - 1e-6 <= centre_weight.min() < centre_weight.max() <= (
        high + 1e-6)


def test_resized_crop_falls_back_to_torchvisions_centre_crop():
    # No draw of scale=(1, 1) fits a 32x48 image at ratios 3/4-4/3:
    # torchvision then crops the centre at the nearest allowed ratio (4/3,
    # 42.7 x 32 px); kft took the whole 1.5:1 image.
    ramp = np.tile(np.arange(48, dtype="float32")[None, :, None],
                   (32, 1, 3))[None].repeat(4, 0)
    layer = kft.augmentation.RandomResizedCrop((1.0, 1.0), seed=0)
    out = np.asarray(layer(ramp, training=True))
    w = 32 * 4 / 3 / 48
    expected = w * np.arange(48) + (1 - w) / 2 * 48 + w / 2 - 0.5
    np.testing.assert_allclose(out[:, 16, :, 0], np.broadcast_to(
        expected, (4, 48)), atol=1e-3)
    # Tall images keep their width; an image of an allowed ratio is whole.
    tall = np.transpose(ramp, (0, 2, 1, 3))
    out = np.asarray(layer(tall, training=True))
    np.testing.assert_allclose(out[:, :, 16, 0], np.broadcast_to(
        expected, (4, 48)), atol=1e-3)
    square = ramp[:, :, :32]
    np.testing.assert_allclose(np.asarray(layer(square, training=True)),
                               square, atol=1e-4)


def test_gaussian_blur_of_one_tap_leaves_images_as_they_are():
    # kernel_size=1 (torchvision's no-op blur) has no taps to spread over.
    images = _images(2)
    out = kft.augmentation.GaussianBlur(1, seed=0)(images, training=True)
    np.testing.assert_array_equal(np.asarray(out), images)


def test_processes_augment_their_slices_with_draws_of_their_own():
    # Every process drew the same transforms for its k-th example: a
    # global batch of 2 processes held each random transform twice.
    ramp = np.tile(np.linspace(0, 255, 16, dtype="float32")[None, :, None],
                   (16, 1, 3))
    x, y = np.stack([ramp] * 16), np.arange(16) % 2

    def first_batch(shard):
        data = kft.data.from_arrays(x, y, batch_size=8, augmentation="light",
                                    seed=0, shuffle=False, shard=shard)
        return np.asarray(next(iter(data))[0])

    one = first_batch(None)
    both = np.concatenate([first_batch((0, 2)), first_batch((1, 2))])
    assert len({image.tobytes() for image in one}) == 8
    assert len({image.tobytes() for image in both}) == 8


@pytest.mark.parametrize("name", TORCH_STYLE)
def test_torch_style_layers_direct_jit_numpy_seed_and_config(name):
    # A NumPy integer seed failed in Keras' SeedGenerator; the layers are
    # called directly, on one image, and under jax.jit, and round-trip
    # their config.
    import jax

    cls = getattr(kft.augmentation, name)
    layer = cls(seed=np.int64(3))
    assert layer.seed == 3 and isinstance(layer.seed, int)
    x = _images()
    eager = np.asarray(layer(x, training=True))
    assert eager.shape == x.shape and not np.array_equal(eager, x)
    # One image (RandomBrightnessScale returned 12 scaled copies of a
    # 12-row image; the others raised).
    one = np.asarray(layer(x[0, :, :5], training=True))
    assert one.shape == x[0, :, :5].shape
    with pytest.raises(ValueError, match=r"images.shape=\(4, 3\)"):
        layer(np.zeros((4, 3)), training=True)
    # Called directly under jit it drew the same transform every call and
    # left a tracer as its seed state (the next eager call raised).
    with pytest.raises(RuntimeError, match="stateless_call"):
        jax.jit(lambda a: layer(a, training=True))(x)
    fresh = cls(seed=3)  # stateless_call before any eager call

    @jax.jit
    def augment(state, images):
        return fresh.stateless_call([], state, images, training=True)

    state = [v.value for v in fresh.non_trainable_variables]
    first, state = augment(state, x)
    second, _ = augment(state, x)
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    np.testing.assert_array_equal(np.asarray(layer(x, training=True)).shape,
                                  x.shape)  # still usable eagerly
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    again = cls.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="seed"):
        cls(seed=-1)


@pytest.mark.parametrize("name,kwargs", [
    ("RandomZoom", {"height_factor": 0.3}),
    ("RandomRotation", {"factor": 0.2}),
    ("RandomGaussianBlur", {"factor": 1.0}),
    ("RandomErasing", {"factor": 1.0}),
    ("RandAugment", {"num_ops": 1})])
def test_keras_based_random_layers_refuse_a_direct_jit_call(name, kwargs):
    # Like Keras' own, they drew the same transform on every call of a
    # jitted function and kept a leaked tracer as their seed state (the
    # next eager call raised UnexpectedTracerError); kft's other random
    # layers refused with the stateless_call recipe.
    import jax

    layer = getattr(kft.augmentation, name)(**kwargs, seed=0)
    x = _images()
    with pytest.raises(RuntimeError, match=rf"(?s){name} layer.*"
                       "stateless_call"):
        jax.jit(lambda a: layer(a, training=True))(x)
    assert np.asarray(layer(x, training=True)).shape == x.shape
    # The recipe the message gives: a new draw per call.

    @jax.jit
    def augment(state, images):
        return layer.stateless_call([], state, images, training=True)

    state = [v.value for v in layer.non_trainable_variables]
    draws = []
    for _ in range(3):
        images, state = augment(state, x)
        draws.append(np.asarray(images))
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])
    # Inference under jit is the identity, as eagerly.
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda a: layer(a, training=False))(x)),
        np.asarray(layer(x, training=False)))
    # The recipe works on a layer never called (it raised "must be
    # built"), drawing what an eager call of its twin draws.
    fresh, twin = (getattr(kft.augmentation, name)(**kwargs, seed=1)
                   for _ in range(2))
    state = [v.value for v in fresh.non_trainable_variables]
    drawn, _ = jax.jit(lambda s, a: fresh.stateless_call(
        [], s, a, training=True))(state, x)
    np.testing.assert_allclose(np.asarray(drawn),
                               np.asarray(twin(x, training=True)), atol=1e-3)


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_nearby_seeds_share_no_layer_seed(preset):
    # Layer i was seeded seed + i: seed 1's crop drew seed 0's flip draws,
    # and so on through the preset, for runs compared over seeds 0, 1, 2.
    seeds = [layer.seed for seed in range(4) for layer in
             kft.augmentation.augmentation(preset, seed=seed).layers
             if getattr(layer, "seed", None) is not None]
    assert len(seeds) == len(set(seeds)) > 4


def _preset_config(preset, layer_name):
    """The config of the preset's one layer of class `layer_name`."""
    found = [layer.get_config() for layer in
             kft.augmentation.augmentation(preset).layers
             if type(layer).__name__ == layer_name]
    assert len(found) == 1, (preset, layer_name)
    return found[0]


# The documented preset settings: `kft.augmentation.augmentation`'s
# docstring ("standard": "15 degree rotation ... grayscale p=0.1 ...
# random erasing p=0.2"; "strong": "RandAugment(num_ops=2), random erasing
# p=0.25") and README.md's augmentation paragraph ("rotation 15 degrees,
# ... grayscale p=0.1, ... random erasing p=0.2").  Behaviour tests above
# pass with other strengths, so the settings are pinned here.
def test_standard_preset_rotates_at_most_15_degrees():
    # Keras' RandomRotation factor is a fraction of a full turn.
    low, high = _preset_config("standard", "RandomRotation")["factor"]
    assert low * 360 == pytest.approx(-15) and high * 360 == pytest.approx(15)


def test_standard_preset_grays_one_image_in_ten():
    assert _preset_config("standard", "RandomGrayscale")["factor"] == \
        pytest.approx(0.1)


def test_strong_preset_runs_two_randaugment_operations():
    assert _preset_config("strong", "RandAugment")["num_ops"] == 2


def test_presets_erase_with_their_documented_probability():
    # Keras' RandomErasing draws its probability from `factor`; the
    # docstring also names strong's area scale 0.02-0.33.
    strong = _preset_config("strong", "RandomErasing")
    assert tuple(strong["factor"]) == pytest.approx((0.25, 0.25))
    assert tuple(strong["scale"]) == pytest.approx((0.02, 0.33))
    standard = _preset_config("standard", "RandomErasing")
    assert tuple(standard["factor"]) == pytest.approx((0.2, 0.2))


def test_erasing_colour_is_clipped_to_the_value_range():
    # A colour outside `value_range` (the ImageNet mean on [0, 1] images, or
    # a typo) is clipped as Keras clips a single fill value: unclipped it
    # wrote pixels no image holds.
    layer = kft.augmentation.RandomErasing(
        factor=1.0, scale=(0.2, 0.3), fill_value=(300, -5, 100),
        value_range=(0, 255), seed=0)
    images = np.full((2, 8, 8, 3), 50.0, "float32")
    out = np.asarray(layer(images, training=True))
    erased = np.any(out != images, axis=-1)
    assert erased.any()
    np.testing.assert_array_equal(out[erased], np.broadcast_to(
        [255.0, 0.0, 100.0], out[erased].shape))
