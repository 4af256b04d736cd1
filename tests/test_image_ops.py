"""kft.image_ops and the augmentation layers built on them, against Keras."""

import jax
import keras
import numpy as np
import pytest

import kft
from kft.augmentation import Equalization
from kft.augmentation import RandAugment
from kft.augmentation import RandomErasing
from kft.augmentation import RandomGaussianBlur
from kft.augmentation import RandomRotation
from kft.augmentation import RandomZoom
from kft.data._host_augment import HostAugmenter
from kft.data._host_augment import _stateless_apply
from kft.ops import image_ops

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(0, 255, (3, 13, 17, 3)).astype("float32")


def _affine(scale_x, scale_y, angle, shear, shift_x, shift_y):
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([scale_x * cos, -sin + shear, shift_x, sin,
                     scale_y * cos, shift_y, 0 * cos, 0 * cos], 1)


GENERAL = _affine(np.array([0.7, 1.0, 1.4]), np.array([1.2, 0.9, 0.8]),
                  np.array([0.3, -0.5, 0.05]), np.array([0.1, 0.0, -0.2]),
                  np.array([2.0, -3.3, 0.4]), np.array([-1.7, 4.1, 0.0])
                  ).astype("float32")
ALIGNED = _affine(np.array([0.7, 1.0, 1.4]), np.array([1.2, 0.9, 0.55]),
                  np.zeros(3), np.zeros(3), np.array([2.0, -3.3, 0.4]),
                  np.array([-1.7, 4.1, 0.0])).astype("float32")


@pytest.mark.parametrize("fill_mode", image_ops.FILL_MODES)
@pytest.mark.parametrize("interpolation", image_ops.INTERPOLATIONS)
@pytest.mark.parametrize("transform, axis_aligned",
                         [(GENERAL, False), (ALIGNED, True)])
def test_affine_transform_matches_keras(fill_mode, interpolation, transform,
                                        axis_aligned):
    args = (interpolation, fill_mode, 7.0)
    expected = np.asarray(keras.ops.image.affine_transform(
        IMAGES, transform, *args))
    got = np.asarray(image_ops.affine_transform(
        IMAGES, transform, *args, axis_aligned=axis_aligned))
    if interpolation == "bilinear" or axis_aligned:
        np.testing.assert_allclose(got, expected, atol=1e-3)
    else:  # a coordinate at a rounding tie may land on the other pixel
        assert np.mean(np.abs(got - expected) > 1e-3) < 0.002


@pytest.mark.parametrize("fill_mode", image_ops.FILL_MODES)
def test_affine_transform_compiled_at_integer_coordinates(fill_mode):
    # Output pixel (y=5, x=4) reads row 1.1 * 5 - 0.2 * 4 - 0.7 = 4.0,
    # which float32 rounds to 3.9999998, or to 4.0000005 with an FMA: the
    # row's index and weight must come from the same one.
    general = np.array([[0.9, 0.1, 1.3, -0.2, 1.1, -0.7, 0, 0]], "float32")
    aligned = np.array([[0.9, 0, 1.3, 0, 1.1, -0.7, 0, 0]], "float32")
    for channels, transform, axis_aligned in ((1, general, False),
                                              (3, general, False),
                                              (3, aligned, True)):
        images = IMAGES[:1, :9, :7, :channels]

        def run(images, transform, axis_aligned=axis_aligned):
            return image_ops.affine_transform(
                images, transform, "bilinear", fill_mode,
                axis_aligned=axis_aligned)

        expected = np.asarray(keras.ops.image.affine_transform(
            images, transform, "bilinear", fill_mode))
        np.testing.assert_allclose(np.asarray(run(images, transform)),
                                   expected, atol=1e-3)
        # Compiled as users compile: kft's CPU flags and XLA's default
        # optimization level (the suite's level 0 makes no FMAs).
        compiled = jax.jit(run).lower(images, transform).compile(
            compiler_options={"xla_backend_optimization_level": 3})
        np.testing.assert_allclose(
            np.asarray(compiled(images, transform)), expected, atol=1e-3,
            err_msg=f"jit, {channels} channels")


def test_affine_transform_takes_one_transform_for_the_batch():
    got = image_ops.affine_transform(IMAGES, GENERAL[1])
    expected = keras.ops.image.affine_transform(
        IMAGES, np.tile(GENERAL[1:2], (3, 1)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected),
                               atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"interpolation": "cubic"}, "Argument `interpolation` must be one of "
                                 r".*Received: interpolation='cubic'"),
    ({"fill_mode": "edge"}, "Argument `fill_mode` must be one of "
                            r".*Received: fill_mode='edge'"),
])
def test_affine_transform_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        image_ops.affine_transform(IMAGES, GENERAL, **kwargs)
    with pytest.raises(ValueError, match=r"Argument `images` must be a batch"
                                         r".*images.shape=\(13, 17, 3\)"):
        image_ops.affine_transform(IMAGES[0], GENERAL)
    # Integer pixels: the weights cast to uint8 were 0 or 1 (mean 0.18 for
    # Keras' 108.7); refused by dtype.
    for op in (lambda x: image_ops.affine_transform(x, GENERAL),
               image_ops.gaussian_blur):
        with pytest.raises(ValueError, match=r"`images` must hold floats; "
                           r"cast integer images first.*Received: images of "
                           r"dtype uint8"):
            op(IMAGES.astype("uint8"))
    # Shapes and values that gave JAX's broadcasting / reshape errors, or
    # NaN images (sigma 0) without a word.
    with pytest.raises(ValueError, match=r"`transform` must be shaped \(8,\)"
                       r" or \(batch, 8\).*shape \(6,\)"):
        image_ops.affine_transform(IMAGES, np.zeros(6))
    for kwargs, match in (({"kernel_size": 3}, r"`kernel_size` must be a "
                           r"\(width, height\) pair"),
                          ({"kernel_size": (0, 3)}, r"`kernel_size`"),
                          ({"sigma": 1.0}, r"`sigma` must be a \(width, "
                           r"height\) pair"),
                          ({"sigma": (0.0, 0.0)}, r"`sigma` must be")):
        with pytest.raises((TypeError, ValueError), match=match):
            image_ops.gaussian_blur(IMAGES, **kwargs)
    import jax.numpy as jnp

    np.testing.assert_array_equal(
        image_ops.gaussian_blur(IMAGES, jnp.array([3, 3])),
        image_ops.gaussian_blur(IMAGES, (3, 3)))


@pytest.mark.parametrize("kernel_size", [(3, 3), (4, 5), (1, 3)])
@pytest.mark.parametrize("sigma", [(0.5, 1.7), (2.0, 0.1)])
def test_gaussian_blur_matches_keras(kernel_size, sigma):
    expected = keras.ops.image.gaussian_blur(
        IMAGES, kernel_size, np.array(sigma, "float32"),
        data_format="channels_last")
    got = image_ops.gaussian_blur(IMAGES, kernel_size,
                                  np.array(sigma, "float32"))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected),
                               atol=1e-3)


LAYERS = [
    (RandomZoom, keras.layers.RandomZoom,
     {"height_factor": (-0.3, 0.3), "width_factor": (-0.2, 0.4),
      "fill_mode": "reflect"}),
    (RandomZoom, keras.layers.RandomZoom,
     {"height_factor": (-0.1, 0.0), "fill_mode": "constant",
      "fill_value": 9.0}),
    (RandomRotation, keras.layers.RandomRotation,
     {"factor": 0.2, "fill_mode": "constant"}),
    (RandomRotation, keras.layers.RandomRotation,
     {"factor": 0.4, "fill_mode": "wrap"}),
    (RandomGaussianBlur, keras.layers.RandomGaussianBlur,
     {"factor": 1.0, "kernel_size": 5, "sigma": (0.1, 2.0)}),
    (RandomErasing, keras.layers.RandomErasing,
     {"factor": (1.0, 1.0), "fill_value": 40.0}),
]


@pytest.mark.parametrize("ours, theirs, kwargs", LAYERS)
def test_layers_draw_and_compute_what_keras_does(ours, theirs, kwargs):
    # Same seed, same draws: the outputs differ only by float rounding.
    mine, reference = ours(seed=3, **kwargs), theirs(seed=3, **kwargs)
    for _ in range(2):  # the second call checks the seed state advances
        got = np.asarray(mine(IMAGES, training=True))
        expected = np.asarray(reference(IMAGES, training=True))
        np.testing.assert_allclose(got, expected, atol=1e-3)
    assert not np.allclose(got, IMAGES)
    np.testing.assert_array_equal(np.asarray(mine(IMAGES, training=False)),
                                  IMAGES)


@pytest.mark.parametrize("ours, theirs, kwargs", LAYERS[:3])
def test_layers_fall_back_to_keras_for_single_images(ours, theirs, kwargs):
    got = ours(seed=1, **kwargs)(IMAGES[0], training=True)
    expected = theirs(seed=1, **kwargs)(IMAGES[0], training=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected),
                               atol=1e-3)


@pytest.mark.parametrize("ours, theirs, kwargs", LAYERS)
def test_layers_round_trip_as_kft_classes(ours, theirs, kwargs):
    layer = ours(seed=3, **kwargs)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer))
    assert type(restored) is ours
    assert restored.get_config() == layer.get_config()


def test_erasing_takes_a_colour():
    layer = RandomErasing(factor=(1.0, 1.0), scale=(0.2, 0.3),
                          fill_value=kft.augmentation.IMAGENET_MEAN, seed=0)
    out = np.asarray(layer(IMAGES, training=True))
    erased = np.any(out != IMAGES, axis=-1)
    assert erased.any(axis=(1, 2)).all()  # factor 1: every image
    np.testing.assert_allclose(out[erased],
                               np.broadcast_to(kft.augmentation.IMAGENET_MEAN,
                                               out[erased].shape), rtol=1e-6)
    np.testing.assert_array_equal(out[~erased], IMAGES[~erased])


def test_presets_use_the_fast_layers():
    types = {type(layer) for layer in
             kft.augmentation.augmentation("standard").layers}
    assert {RandomRotation, RandomErasing,
            kft.augmentation.RandomResizedCrop,
            kft.augmentation.GaussianBlur} <= types
    strong = kft.augmentation.augmentation("strong").layers
    assert RandAugment in {type(layer) for layer in strong}


@pytest.mark.parametrize("value_range", [(0, 255), (0, 1)])
def test_equalization_matches_keras_and_counts_in_one_op(value_range):
    images = IMAGES * (value_range[1] / 255)
    images[1, ..., 2] = value_range[1] / 3  # one bin: left as it is
    got = Equalization(value_range=value_range)(images)
    expected = keras.layers.Equalization(value_range=value_range)(images)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected),
                               atol=1e-4 * value_range[1])
    # Compiled too; Keras' JAX histogram is one reduction per bin: 768 for
    # RGB, and 22-28 s to compile one layer on CPU.
    jitted = jax.jit(Equalization(value_range=value_range))
    np.testing.assert_allclose(np.asarray(jitted(images)),
                               np.asarray(expected),
                               atol=1e-4 * value_range[1])
    hlo = jitted.lower(images).compile().as_text()
    assert hlo.count(" reduce(") < 20


def test_rand_augment_draws_what_keras_draws_and_runs_only_those():
    images = IMAGES[:, :8, :8]
    reference = keras.layers.RandAugment(num_ops=2, factor=0.5, seed=5)
    # Keras' equalization, checked against kft's above, takes seconds a
    # call eagerly (a reduction per bin).
    reference.equalization = Equalization(value_range=(0, 255))
    eager = RandAugment(num_ops=2, factor=0.5, seed=5)
    # Compiled, as in a training step or the host pipeline.
    host = HostAugmenter(keras.Sequential(
        [RandAugment(num_ops=2, factor=0.5, seed=5)]))
    for _ in range(12):  # 24 draws of 11 operations
        expected = np.asarray(reference(images, training=True))
        np.testing.assert_allclose(np.asarray(eager(images, training=True)),
                                   expected, atol=1e-3)
        np.testing.assert_allclose(host(images), expected, atol=1e-3)
    assert not np.allclose(expected, images)
    np.testing.assert_array_equal(
        np.asarray(eager(images, training=False)), images)
    # One branch runs, not all 11 under a `where`.
    layer = host.model.layers[0]
    program = jax.jit(_stateless_apply(layer)).lower(
        [v.value for v in layer.non_trainable_variables], images).as_text()
    assert program.count("stablehlo.case") == 2  # one per operation drawn


def test_rand_augment_round_trips_with_its_fast_equalization():
    layer = RandAugment(num_ops=3, factor=0.3, seed=2)
    assert type(layer.equalization) is Equalization
    assert layer.equalization.value_range == [0, 255]
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer))
    assert type(restored) is RandAugment
    assert type(restored.equalization) is Equalization
    assert restored.get_config() == layer.get_config()


@pytest.mark.parametrize("ours, theirs, kwargs", LAYERS[:5])
def test_layers_compute_with_image_ops_on_batches(ours, theirs, kwargs,
                                                  monkeypatch):
    # Matching Keras alone would also hold if the layers fell back to it.
    calls = []
    for name in ("affine_transform", "gaussian_blur"):
        real = getattr(image_ops, name)
        monkeypatch.setattr(
            image_ops, name,
            lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    ours(seed=0, **kwargs)(IMAGES, training=True)
    assert calls == [1]


def test_color_factors_above_one_draw_no_negative_scale():
    # torchvision's ColorJitter draws in [max(0, 1 - f), 1 + f]: a
    # negative factor would invert the colours.
    layer = kft.augmentation.RandomSaturationScale(3.0, seed=0)
    x = np.zeros((256, 1, 1, 3), "float32")
    x[..., 0], x[..., 1] = 200.0, 100.0
    out = np.asarray(layer(x, training=True))[:, 0, 0]
    # Red and green move apart from their gray by the drawn factor: red
    # stays above green for every factor >= 0 (clipping keeps the order).
    assert (out[:, 0] >= out[:, 1]).all() and (out[:, 0] > out[:, 1]).any()


def test_gaussian_blur_reflects_at_the_border():
    # torchvision pads with "reflect" (1 0 | 0 1 ...), not "symmetric":
    # [10, 1, 0, 0, 0] with a 3-tap kernel of sigma 1 sees 1 left of 10.
    image = np.zeros((1, 1, 5, 1), "float32")
    image[0, 0, :2, 0] = [10.0, 1.0]
    out = np.asarray(kft.augmentation.GaussianBlur(3, sigma=(1.0, 1.0),
                                                   seed=0)(image,
                                                           training=True))
    taps = np.exp(-0.5 * np.array([-1.0, 0.0, 1.0]) ** 2)
    taps /= taps.sum()
    expected = taps @ np.array([1.0, 10.0, 1.0])
    assert out[0, 0, 0, 0] == pytest.approx(expected, rel=1e-5)

