"""digits-M: the MNIST-M recipe on scikit-learn's digits."""

import numpy as np
import pytest

import kft
from kft.data.digits_m import blend_with_photos


@pytest.fixture(scope="module")
def pair():
    kwargs = dict(image_size=8, target_per_class=3, val_per_class=2)
    return (kft.datasets.digits(**kwargs),
            kft.datasets.digits_m(**kwargs, photos="sklearn"),
            kft.datasets.digits_m(**kwargs, photos="sklearn"))


def test_deterministic_by_seed(pair):
    _, first, second = pair
    for a, b in zip((first.source, first.target_test),
                    (second.source, second.target_test)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other = kft.datasets.digits_m(image_size=8, target_per_class=3,
                                  val_per_class=2, seed=1, photos="sklearn")
    assert not np.array_equal(other.target_test[0], first.target_test[0])


def test_same_splits_as_digits_blended(pair):
    plain, blended, _ = pair
    for name in ("source", "target_train", "target_val", "target_test"):
        x, y = getattr(plain, name)
        xm, ym = getattr(blended, name)
        np.testing.assert_array_equal(y, ym)
        assert xm.shape == x.shape and xm.dtype == np.float32
        assert 0.0 <= xm.min() and xm.max() <= 255.0
        # Coloured now: the channels differ, the gray scans' do not.
        assert np.ptp(x, axis=-1).max() == 0.0
        assert np.ptp(xm, axis=-1).mean() > 5.0
    assert plain.target_classes == blended.target_classes


def test_blend_is_abs_difference_with_a_patch():
    digit = np.zeros((3, 8, 8, 3), "float32")
    digit[:, 2:6, 3] = 255.0
    out = blend_with_photos(digit, seed=3, photos="sklearn")
    background = blend_with_photos(np.zeros_like(digit), seed=3,
                                   photos="sklearn")
    # Background pixels show the patch, stroke pixels its inverse.
    np.testing.assert_allclose(out[:, 0, 0], background[:, 0, 0])
    np.testing.assert_allclose(out[:, 2:6, 3], 255.0 - background[:, 2:6, 3])


def test_bad_arguments():
    with pytest.raises(ValueError, match="photos"):
        kft.datasets.digits_m(image_size=8, photos="imagenet")
    with pytest.raises(ValueError, match="images"):
        blend_with_photos(np.zeros((2, 8)))


def test_images_larger_than_a_photo_get_an_enlarged_patch():
    # scikit-learn's photos are 427 x 640: taller images were a broadcast
    # error (scikit-image's chelsea, 300 high, failed from 301 pixels).
    digit = np.zeros((2, 430, 16, 3), "float32")
    digit[:, :, 8:] = 255.0
    out = blend_with_photos(digit, seed=1, photos="sklearn")
    background = blend_with_photos(np.zeros_like(digit), seed=1,
                                   photos="sklearn")
    assert out.shape == (2, 430, 16, 3)
    assert 0 <= background.min() < background.max() <= 255
    np.testing.assert_allclose(out[:, :, :8], background[:, :, :8])
    np.testing.assert_allclose(out[:, :, 8:], 255.0 - background[:, :, 8:])


def test_photo_patches_follow_the_seed():
    # "seed: Seed of the split and of the patches."
    from kft.data.digits_m import blend_with_photos

    digits = np.zeros((4, 8, 8, 3))
    first, other, again = (blend_with_photos(digits, seed=seed,
                                             photos="sklearn")
                           for seed in (0, 1, 0))
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(first, again)



def test_grey_images_without_a_channel_axis_blend_as_one_channel():
    # blend_with_photos documents (n, height, width[, 1 or 3]): images
    # without a channel axis blend as the (n, height, width, 1) ones do.
    digit = np.zeros((2, 8, 8), "float32")
    digit[:, 2:6, 3] = 255.0
    out = blend_with_photos(digit, seed=2, photos="sklearn")
    assert out.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(
        out, blend_with_photos(digit[..., None], seed=2, photos="sklearn"))


def test_without_scikit_image_skimage_photos_say_what_to_install(
        monkeypatch):
    # scikit-image is an optional extra: "skimage" says how to get it (or
    # what to use instead), "auto" blends with scikit-learn's photos alone.
    import sys

    from kft.data import digits_m

    images = np.full((4, 8, 8, 3), 128.0, "float32")
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    digits_m._skimage_photos.cache_clear()
    try:
        with pytest.raises(ImportError, match=r'photos="skimage"\) needs '
                           r'scikit-image: pip install scikit-image \(or use '
                           r'photos="sklearn"\)'):
            blend_with_photos(images, photos="skimage")
        np.testing.assert_array_equal(
            blend_with_photos(images, photos="auto"),
            blend_with_photos(images, photos="sklearn"))
    finally:
        # The photos found without it must not stay cached for the others.
        digits_m._skimage_photos.cache_clear()


def test_every_photo_is_drawn_and_auto_adds_scikit_image_s(monkeypatch):
    # Plain photos stand in for the real ones: a patch of photo k is all k.
    # Each photo of the set is drawn (the last one too), and "auto" adds
    # scikit-image's photos to scikit-learn's when it is installed.
    from kft.data import digits_m

    def plain(*values):
        return tuple(np.full((20, 20, 3), v, "float32") for v in values)

    monkeypatch.setattr(digits_m, "_sklearn_photos", lambda: plain(10, 200))
    monkeypatch.setattr(digits_m, "_skimage_photos",
                        lambda required: plain(77))
    images = np.zeros((40, 8, 8, 3), "float32")
    for photos, drawn in (("sklearn", {10, 200}), ("auto", {10, 77, 200}),
                          ("skimage", {10, 77, 200})):
        out = blend_with_photos(images, seed=0, photos=photos)
        assert set(np.unique(out).tolist()) == drawn, photos


def test_a_photo_is_enlarged_with_its_aspect_kept():
    # 430-pixel images and a 427 x 640 photo: enlarged to 430 x 644, not
    # stretched to 645 x 430 (PIL takes width, height).
    from kft.data.digits_m import _covering

    photo = np.random.default_rng(0).uniform(
        0, 255, (427, 640, 3)).astype("float32")
    enlarged = _covering(photo, 430, 16)
    assert enlarged.shape == (430, round(640 * 430 / 427), 3)
    assert _covering(photo, 100, 100) is photo
