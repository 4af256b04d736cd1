"""Tests of kft.data: folder layouts, bad files, arrays, TFDS, model.fit."""

import contextlib
import io
import os
import shutil
import warnings

import keras
import numpy as np
import pytest
from PIL import Image
from PIL import ImageOps

import kft
from kft.data import _images

SIZE = 16


def _save(path, array, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def _solid(value, shape=(24, 20)):
    return np.full(shape + (3,), value, dtype=np.uint8)


def _tree(root, splits=("train", "val"), per_class=3,
          classes=(("dark", 20), ("bright", 230))):
    """Class `dark` holds pixel value 20, `bright` 230: labels are checkable."""
    for split in splits:
        for name, value in classes:
            for i in range(per_class):
                _save(f"{root}/{split}/{name}/{i}.png", _solid(value))
    return str(root)


def _batches(dataset):
    return [(np.asarray(x), np.asarray(y)) for x, y in dataset]


def _truncated_jpeg(path):
    rng = np.random.default_rng(0)
    _save(path, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
          quality=95)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def test_train_val_layout_names_counts_and_labels(tmp_path):
    root = _tree(tmp_path, per_class=3)
    _save(f"{root}/train/dark/extra.jpg", _solid(20))
    train, val = kft.data.from_directory(root, SIZE, batch_size=2,
                                         augmentation="none")
    assert train.class_names == ["bright", "dark"]
    assert train.class_counts == {"bright": 3, "dark": 4}
    assert val.class_counts == {"bright": 3, "dark": 3}
    assert len(train) == 4 and train.num_examples == 7
    batches = _batches(train)
    assert sum(len(y) for _, y in batches) == 7
    for x, y in batches:
        assert x.shape[1:] == (SIZE, SIZE, 3) and x.dtype == np.float32
        assert y.dtype == np.int32
        for image, label in zip(x, y):
            expected = 230 if label == 0 else 20
            np.testing.assert_allclose(image.mean(), expected, atol=2)
    assert train.skipped == ()


def test_each_epoch_reshuffles_the_same_examples(tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=8)
    train, val = kft.data.from_directory(root, SIZE, batch_size=16,
                                         augmentation="none", seed=3)
    assert val is None
    first = np.concatenate([y for _, y in _batches(train)])
    second = np.concatenate([y for _, y in _batches(train)])
    assert sorted(first) == sorted(second) == [0] * 8 + [1] * 8
    assert not np.array_equal(first, second)


def test_a_pass_counts_from_its_first_batch():
    """Iterators made but never read (Keras' `fit` makes one at each
    epoch's end without a distribution) do not move the shuffle on."""
    x = np.arange(12.0).reshape(12, 1, 1, 1)

    def order(ds, unread):
        for _ in range(unread):
            iter(ds)
        return [v for images, _ in ds for v in images[:, 0, 0, 0]]

    def passes(unread):
        ds = kft.data.from_arrays(x, np.zeros(12, int), batch_size=4,
                                  shuffle=True, seed=7)
        return [order(ds, unread) for _ in range(3)]

    plain = passes(0)
    assert passes(2) == plain
    assert plain[0] != plain[1] and sorted(plain[1]) == list(range(12))


def test_fit_reads_the_same_passes_whatever_built_the_model():
    """Keras' first `fit` of a model reads one batch for its shapes (only
    while the compiled loss is unbuilt): that read took pass 0, so the
    epochs read passes 1, 2 on a fresh model but 0, 1 after an `evaluate`
    or `kft.lr_find` (weights 0.01 apart for the same seed)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (12, 4, 4, 3)).astype("float32")
    y = np.arange(12) % 3

    def run(first):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4, 4, 3)),
                                  keras.layers.Rescaling(1 / 255),
                                  keras.layers.Flatten(),
                                  keras.layers.Dense(3)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        data = kft.data.from_arrays(x, y, batch_size=4, seed=1)
        if first:
            model.evaluate(x[:4], y[:4], verbose=0)
        model.fit(data, epochs=2, verbose=0)
        return data.passes_begun, model.get_weights()

    (plain, weights), (after, weights_after) = run(False), run(True)
    assert plain == after == 2
    for a, b in zip(weights, weights_after):
        np.testing.assert_array_equal(a, b)


def test_neighbouring_seeds_read_other_orders():
    # Pass k was shuffled with seed + k: seed 1 read seed 0's orders one
    # pass later, so runs compared over seeds 0, 1, 2 shared their orders.
    x, y = np.zeros((32, 2, 2, 3), "float32"), np.arange(32)

    def orders(seed, passes=3):
        data = kft.data.from_arrays(x, y, batch_size=32, seed=seed)
        return [next(iter(data))[1].tolist() for _ in range(passes)]

    by_seed = {seed: orders(seed) for seed in range(3)}
    seen = [tuple(order) for runs in by_seed.values() for order in runs]
    assert len(set(seen)) == len(seen), "an order read twice"
    assert by_seed[0] == orders(0)  # still the same for the same seed


def test_peek_leaves_the_passes_as_they_were():
    x = np.random.default_rng(0).uniform(0, 255, (12, 8, 8, 3)).astype(
        "float32")
    data = kft.data.from_arrays(x, np.arange(12) % 3, batch_size=4, seed=2,
                                augmentation="light")
    looked = data.peek()
    assert data.passes_begun == 0
    first = next(iter(data))  # pass 0: the batch peek returned
    assert data.passes_begun == 1
    np.testing.assert_array_equal(looked[0], first[0])
    np.testing.assert_array_equal(looked[1], first[1])
    after = data.peek()  # pass 1's first batch: other order and draws
    assert not np.array_equal(after[0], first[0])
    np.testing.assert_array_equal(after[0], next(iter(data))[0])


def test_validation_split_is_stratified_and_disjoint(tmp_path):
    root = _tree(tmp_path, splits=("all",), per_class=10)
    train, val = kft.data.from_directory(f"{root}/all", SIZE,
                                         validation_split=0.2,
                                         augmentation="none")
    assert train.class_counts == {"bright": 8, "dark": 8}
    assert val.class_counts == {"bright": 2, "dark": 2}
    train_paths, val_paths = set(train.paths), set(val.paths)
    assert not train_paths & val_paths and len(train_paths | val_paths) == 20


def test_validation_split_is_seeded_rounded_and_keeps_a_train_image(
        tmp_path):
    # Every run of a seed builds the split again (a resumed `kft train`,
    # `kft compare`, `kft eval` of a run): it must hold out the same
    # images. Each class gives its rounded fraction, at least one and at
    # most all but one: a class of one image stays in train.
    for name, count in (("a", 8), ("b", 7), ("c", 1), ("d", 2)):
        for i in range(count):
            _save(f"{tmp_path}/all/{name}/{i}.png", _solid(10 * i))

    def split(seed):
        return kft.data.from_directory(f"{tmp_path}/all", SIZE,
                                       validation_split=0.25, seed=seed,
                                       augmentation="none")

    train, val = split(0)
    # 0.25 x 8 = 2; x 7 = 1.75 -> 2; x 1: none to spare; x 2 = 0.5 -> 1.
    assert val.class_counts == {"a": 2, "b": 2, "c": 0, "d": 1}
    assert train.class_counts == {"a": 6, "b": 5, "c": 1, "d": 1}
    again_train, again_val = split(0)
    assert again_val.paths == val.paths and again_train.paths == train.paths
    assert {tuple(split(seed)[1].paths) for seed in (1, 2, 3)} != {
        tuple(val.paths)}


def test_validation_images_come_in_one_order_that_matches_their_labels(
        tmp_path):
    # Only train reshuffles: `model.predict(val)` must line up with
    # `val.example_labels` on every pass (a confusion matrix of one's own).
    for name, offset in (("a", 0), ("b", 100)):
        for i in range(8):
            _save(f"{tmp_path}/all/{name}/{i}.png", _solid(offset + 10 * i))
    _, val = kft.data.from_directory(f"{tmp_path}/all", SIZE, batch_size=4,
                                     validation_split=0.5, shuffle=True,
                                     augmentation="none")
    first, second = _batches(val), _batches(val)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    labels = np.concatenate([y for _, y in first])
    np.testing.assert_array_equal(labels, val.example_labels)
    # Labels follow the pixels: class b's images are the bright ones.
    pixels = np.concatenate([x[:, 0, 0, 0] for x, _ in first])
    assert ((pixels >= 100) == (labels == 1)).all()


def _corrupt_png(path):
    rng = np.random.default_rng(0)
    _save(path, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    data = bytearray(open(path, "rb").read())
    start = data.index(b"IDAT") + 20
    data[start:start + 40] = bytes(40)
    open(path, "wb").write(bytes(data))


BAD_FILES = {
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "zero.jpg": (lambda p: open(p, "wb").close(), "zero-byte"),
    "notes.png": (lambda p: open(p, "w").write("not an image\n" * 20),
                  "not an image"),
    "garbage.jpg": (lambda p: open(p, "wb").write(
        b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4), "not an image"),
    "corrupt.png": (_corrupt_png, "corrupt image"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_skipped_counted_and_named(tmp_path, name):
    root = _tree(tmp_path, per_class=2)
    write, reason = BAD_FILES[name]
    bad = f"{root}/train/dark/{name}"
    write(bad)
    with pytest.warns(kft.data.SkippedFilesWarning,
                      match=r"Skipped 1 of 9 image files(.|\n)*" + name):
        train, val = kft.data.from_directory(root, SIZE, augmentation="none")
    assert len(train.skipped) == 1
    assert train.skipped[0].path == bad and reason in train.skipped[0].reason
    assert train.class_counts == {"bright": 2, "dark": 2}
    assert sum(len(y) for _, y in _batches(train)) == 4


def test_bad_files_raise_when_asked(tmp_path):
    root = _tree(tmp_path, per_class=2)
    open(f"{root}/val/dark/zero.jpg", "wb").close()
    with pytest.raises(ValueError, match=r"Found 1 bad image files(.|\n)*"
                                         r"zero\.jpg: zero-byte file"):
        kft.data.from_directory(root, SIZE, on_bad_file="raise")
    # A folder of many: the first 50 named, the rest counted (each one a
    # line of the message before).
    for i in range(59):
        open(f"{root}/train/dark/zero{i:02d}.jpg", "wb").close()
    with pytest.raises(ValueError) as info:
        kft.data.from_directory(root, SIZE, on_bad_file="raise")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("Found 60 bad image files")
    assert len(lines) == 52 and lines[-1] == "  ... and 10 more"


def test_file_failing_during_training_is_skipped_and_reported(tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=2)
    _truncated_jpeg(f"{root}/train/dark/late.jpg")
    train, _ = kft.data.from_directory(root, SIZE, check="header",
                                       augmentation="none")
    assert train.skipped == () and train.num_examples == 5
    with pytest.warns(kft.data.SkippedFilesWarning, match="late.jpg"):
        seen = sum(len(y) for _, y in _batches(train))
    assert seen == 4
    assert [s.path for s in train.skipped] == [f"{root}/train/dark/late.jpg"]


def _rgba():
    image = np.zeros((8, 8, 4), np.uint8)
    image[...] = (10, 20, 30, 0)
    return Image.fromarray(image, "RGBA"), (10, 20, 30)


def _palette():
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    return image, (200, 100, 50)


def _palette_transparent():
    image, rgb = _palette()
    image.info["transparency"] = 0
    return image, rgb


def _cmyk():
    return Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)


def _sixteen_bit():
    image = Image.fromarray(np.full((8, 8), 51400, np.uint16))
    return image, (200, 200, 200)


def _gray():
    return Image.new("L", (8, 8), 100), (100, 100, 100)


CONVERSIONS = {
    "gray.png": _gray, "rgba.png": _rgba, "palette.png": _palette,
    "palette_alpha.png": _palette_transparent, "cmyk.jpg": _cmyk,
    "sixteen.png": _sixteen_bit,
}


@pytest.mark.parametrize("name", sorted(CONVERSIONS))
def test_image_modes_are_converted_to_rgb(tmp_path, name):
    image, expected = CONVERSIONS[name]()
    path = str(tmp_path / name)
    image.save(path, **({"quality": 100} if name.endswith("jpg") else {}))
    if name == "sixteen.png":
        assert Image.open(path).mode.startswith("I")
    loaded = kft.data.load_image(path, (4, 4))
    assert loaded.shape == (4, 4, 3) and loaded.dtype == np.uint8
    np.testing.assert_allclose(loaded.reshape(-1, 3).mean(0), expected,
                               atol=2 if name.endswith("jpg") else 0)


@pytest.mark.parametrize("values,expected", [
    ([200, 200], 200),  # 8-bit values: were shifted as 16-bit, to black
    ([40000, 40000], 40000 >> 8),  # 16-bit values
    ([-100, 100], 127.5),  # no fixed range: stretched onto [0, 255]
])
def test_32_bit_integer_images_by_their_range(tmp_path, values, expected):
    pixels = np.repeat(np.asarray(values, np.int32), 8).reshape(4, 4)
    path = str(tmp_path / "int32.tif")
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode == "I"
    loaded = kft.data.load_image(path, (4, 4))
    assert loaded.dtype == np.uint8
    np.testing.assert_allclose(loaded.mean(), expected, atol=0.5)
    # Older Pillow opens 16-bit PNGs as "I": their values are 16-bit
    # whatever their range (a dark one is not read at 8-bit scale).
    opened = Image.fromarray(pixels)
    opened.format = "PNG"
    if min(values) >= 0:
        np.testing.assert_array_equal(
            np.asarray(_images.to_rgb(opened))[..., 0], pixels >> 8)


def test_folder_of_mixed_modes_loads_every_file(tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=1)
    for name, make in CONVERSIONS.items():
        make()[0].save(f"{root}/train/dark/{name}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", kft.data.SkippedFilesWarning)
        train, _ = kft.data.from_directory(root, SIZE, augmentation="none")
    assert train.class_counts == {"bright": 1, "dark": 7}
    assert sum(len(y) for _, y in _batches(train)) == 8


def test_empty_class_folder_raises(tmp_path):
    root = _tree(tmp_path, per_class=1)
    os.makedirs(f"{root}/train/empty")
    # A bad file and a text file elsewhere: the message counts what the
    # empty folder holds, not them (it blamed the folder for both).
    open(f"{root}/train/dark/bad.jpg", "wb").close()
    with open(f"{root}/train/bright/notes.txt", "w") as f:
        f.write("x")
    with pytest.warns(UserWarning, match="Left out 1 files"):
        with pytest.raises(ValueError, match=r"Class folders \['empty'\] .* "
                           r"have no readable images \(no files in them\)"):
            kft.data.from_directory(root, SIZE)


def test_class_of_only_bad_files_raises(tmp_path):
    root = _tree(tmp_path, per_class=1)
    os.makedirs(f"{root}/train/broken")
    open(f"{root}/train/broken/a.jpg", "wb").close()
    with pytest.raises(ValueError, match=r"\['broken'\].*1 files skipped"):
        kft.data.from_directory(root, SIZE)


def test_class_only_in_val_raises(tmp_path):
    root = _tree(tmp_path, per_class=1)
    _save(f"{root}/val/ghost/a.png", _solid(5))
    with pytest.raises(ValueError, match=r"Class folders \['ghost'\] are in "
                                         ".*val.* but not in"):
        kft.data.from_directory(root, SIZE)


def test_very_large_image_is_decoded_and_resized(tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=1)
    big = np.zeros((3000, 4000, 3), np.uint8)
    big[:, 2000:] = 255
    _save(f"{root}/train/dark/big.jpg", big, quality=90)
    train, _ = kft.data.from_directory(root, SIZE, augmentation="none",
                                       shuffle=False)
    images = np.concatenate([x for x, _ in _batches(train)])
    big_image = images[-1]
    assert big_image[:, :6].max() < 10 and big_image[:, -6:].min() > 245


def test_image_above_max_pixels_is_skipped(tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=1)
    _save(f"{root}/train/dark/huge.png", np.zeros((50, 50, 3), np.uint8))
    with pytest.warns(kft.data.SkippedFilesWarning, match="huge.png"):
        train, _ = kft.data.from_directory(root, SIZE, max_pixels=2000)
    assert "too large: 50x50" in train.skipped[0].reason


def test_decompression_bomb_is_described():
    reason = _images.describe_error(Image.DecompressionBombError("big"))
    assert reason == "too large: big"
    # Pillow's warning, raised under `-W error` (was "corrupt image").
    reason = _images.describe_error(Image.DecompressionBombWarning("big"))
    assert reason == "too large: big"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_skipped(tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=1)
    path = _save(f"{root}/train/dark/locked.png", _solid(20))
    os.chmod(path, 0)
    with pytest.warns(kft.data.SkippedFilesWarning, match="locked.png"):
        train, _ = kft.data.from_directory(root, SIZE)
    assert train.skipped[0].reason == "unreadable: permission denied"


def test_permission_error_is_skipped(tmp_path, monkeypatch):
    root = _tree(tmp_path, splits=("train",), per_class=1)
    locked = _save(f"{root}/train/dark/locked.png", _solid(20))
    os.chmod(locked, 0)
    real_open = Image.open

    def open_as_unprivileged(path, *args, **kwargs):
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_as_unprivileged)
    with pytest.warns(kft.data.SkippedFilesWarning, match="locked.png"):
        train, _ = kft.data.from_directory(root, SIZE)
    assert train.skipped == (
        kft.data.SkippedFile(locked, "unreadable: permission denied"),)


def test_eval_geometry_matches_keras_eval_transform(tmp_path):
    rows, cols = np.mgrid[0:60, 0:90].astype(np.float32)
    image = np.stack([rows * 4, cols * 2.5, rows + cols], -1)
    image = np.clip(image, 0, 255).astype(np.uint8)
    path = _save(f"{tmp_path}/g.png", image)
    ours = kft.data.load_image(path, (SIZE, SIZE), geometry="center_crop")
    keras_eval = kft.augmentation.eval_transform(SIZE)
    theirs = np.asarray(keras_eval(image[None].astype(np.float32)))[0]
    # A linear ramp resamples exactly up to rounding: only a different crop
    # box would move these means by more than a pixel level.
    np.testing.assert_allclose(ours.mean((0, 1)), theirs.mean((0, 1)),
                               atol=1.5)
    assert np.abs(ours - theirs).max() < 6


def test_train_images_are_cropped_to_the_aspect_ratio_not_stretched(
        tmp_path):
    # A 16:9 photo was squashed to the square for training (a circle 0.56
    # as wide as high) while evaluation and predict center-crop it.
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = (0, 0, 250)  # the centered square is blue
    wide[:, :10] = wide[:, 30:] = (250, 0, 0)
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        _save(str(tmp_path / name / "wide.png"), wide)
        _save(str(tmp_path / name / "square.png"),
              np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3))
    train = kft.data.from_directory(tmp_path, 8, batch_size=4,
                                    augmentation="none", shuffle=False,
                                    validation_split=None).train
    images = {os.path.basename(path): np.asarray(image, np.uint8)
              for path, image in zip(train.paths, np.concatenate(
                  [b[0] for b in train]))}
    # Red only where the bilinear filter reaches past the box's edge.
    assert images["wide.png"][..., 0].max() < 40
    assert images["wide.png"][:, 2:6, 0].max() == 0
    assert kft.data.load_image(tmp_path / "a" / "wide.png", 8)[
        ..., 0].max() > 200  # squashed
    np.testing.assert_array_equal(
        images["wide.png"],
        kft.data.load_image(tmp_path / "a" / "wide.png", 8,
                            geometry="aspect_crop"))
    # An image of the target's ratio is resized whole, as before.
    np.testing.assert_array_equal(
        images["square.png"],
        kft.data.load_image(tmp_path / "a" / "square.png", 8))
    # Also a JPEG whose reduced decode rounds the ratio off (405x243 at
    # 1/8: 51x31), where a sliver was cropped.
    path = str(tmp_path / "ratio.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (243, 405, 3), np.uint8)).save(path)
    np.testing.assert_array_equal(
        kft.data.load_image(path, (24, 40), geometry="aspect_crop"),
        kft.data.load_image(path, (24, 40)))
    # The same photo stored sideways (EXIF orientation 6): the ratio is
    # the upright one, 405x243, not the stored 243x405.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = str(tmp_path / "sideways_ratio.jpg")
    Image.fromarray(np.ascontiguousarray(np.rot90(
        rng.integers(0, 256, (243, 405, 3), np.uint8)))).save(path, exif=exif)
    np.testing.assert_array_equal(
        kft.data.load_image(path, (24, 40), geometry="aspect_crop"),
        kft.data.load_image(path, (24, 40)))


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_reduced_jpeg_decode_keeps_the_detail_a_tall_crop_needs(
        tmp_path, orientation):
    # An 800x200 photo (stored sideways for orientation 6) into a tall
    # (100, 25) box: decoded at 1/2 (400x100), the crop keeps its detail;
    # a decode chosen for the swapped size (1/8, 100x25) was blurred.
    rows, cols = np.mgrid[:200, :800]
    upright = np.repeat(((rows // 8 + cols // 8) % 2 * 200 + 20).astype(
        np.uint8)[..., None], 3, -1)
    exif = Image.Exif()
    exif[0x0112] = orientation
    jpeg, png = str(tmp_path / "photo.jpg"), str(tmp_path / "photo.png")
    Image.fromarray(np.ascontiguousarray(
        upright if orientation == 1 else np.rot90(upright))).save(
            jpeg, exif=exif, quality=95)
    Image.open(jpeg).save(png, exif=exif)  # its full decode, no draft
    for geometry in ("aspect_crop", "center_crop"):
        reduced = kft.data.load_image(jpeg, (100, 25), geometry=geometry)
        full = kft.data.load_image(png, (100, 25), geometry=geometry)
        # 8.6 and 4.1 here; the blurred decode gave 38 and 49.
        assert np.abs(reduced - full.astype(float)).mean() < 20, geometry


ARG_ERRORS = [
    ({"image_size": 0}, "Argument `image_size` must be a positive int"),
    ({"on_bad_file": "ignore"}, "Argument `on_bad_file` must be one of"),
    ({"check": "none"}, "Argument `check` must be one of"),
    ({"validation_split": 1.5}, "Argument `validation_split` must be"),
    ({"crop_fraction": 0},
     r"Argument `crop_fraction` must be a finite number in \(0, 1\]"),
    ({"label_mode": "binary"}, "Argument `label_mode` must be one of"),
    ({"augment_on": "gpu"}, "Argument `augment_on` must be one of"),
    ({"batch_size": 0}, "Argument `batch_size` must be an integer >= 1"),
    ({"augmentation": "heavy"}, "Argument `augmentation` must be one of"),
    ({"seed": 1.5}, "Argument `seed` must be an integer"),
    ({"num_workers": -1}, "Argument `num_workers` must be an integer >= 0"),
    ({"max_pixels": 0}, "Argument `max_pixels` must be an integer >= 1"),
]


@pytest.mark.parametrize("kwargs,message", ARG_ERRORS)
def test_from_directory_argument_errors(tmp_path, kwargs, message):
    root = _tree(tmp_path, per_class=1)
    kwargs = {"image_size": SIZE, **kwargs}
    with pytest.raises(ValueError, match=message):
        kft.data.from_directory(root, **kwargs)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="Argument `path` must be an existing"):
        kft.data.from_directory(tmp_path / "missing", SIZE)
    os.makedirs(tmp_path / "nothing")
    with pytest.raises(ValueError, match="No class folders in"):
        kft.data.from_directory(tmp_path / "nothing", SIZE)
    root = _tree(tmp_path / "both", per_class=1)
    with pytest.raises(ValueError, match="so `validation_split` must be None"):
        kft.data.from_directory(root, SIZE, validation_split=0.5)


def test_from_arrays_counts_labels_and_one_hot():
    x = np.arange(6 * 4 * 4 * 3, dtype=np.float32).reshape(6, 4, 4, 3)
    y = np.array([0, 2, 2, 1, 2, 0])
    ds = kft.data.from_arrays(x, y, batch_size=4, class_names=["a", "b", "c"],
                              label_mode="categorical", shuffle=False)
    assert ds.class_counts == {"a": 2, "b": 1, "c": 3} and len(ds) == 2
    (x0, y0), (x1, y1) = _batches(ds)
    np.testing.assert_array_equal(np.concatenate([x0, x1]), x)
    np.testing.assert_array_equal(np.concatenate([y0, y1]), np.eye(3)[y])


@pytest.mark.parametrize("x,y,message", [
    (np.zeros((4, 4, 4)), np.zeros(4, int), "Argument `x` must be images"),
    (np.zeros((4, 4, 4, 3)), np.zeros(3, int), "Argument `y` must be 4"),
    (np.zeros((4, 4, 4, 3)), np.full(4, 0.5), "Argument `y` must be 4"),
    (np.zeros((2, 4, 4, 3)), np.array([0, 5]),
     r"labels outside \[0, 2\) .*: 5\."),
])
def test_from_arrays_errors(x, y, message):
    with pytest.raises(ValueError, match=message):
        kft.data.from_arrays(x, y, class_names=["a", "b"])


def test_from_tfds_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=10):
        ds = kft.data.from_tfds("mnist", "train", SIZE, batch_size=4)
        assert ds.class_names == [str(i) for i in range(10)]
        assert sum(ds.class_counts.values()) == 10
        batches = _batches(ds)
        with pytest.raises(ValueError, match="must name a ClassLabel"):
            kft.data.from_tfds("mnist", "test", SIZE, label_key="image")
        # It failed at the first batch, inside the pipeline.
        with pytest.raises(ValueError, match=r"`image_key` must name an "
                           r"Image feature of mnist\. Received: "
                           r"image_key='label' \(ClassLabel\)"):
            kft.data.from_tfds("mnist", "test", SIZE, image_key="label")
        # AttributeErrors ('list' object has no attribute 'startswith').
        for split in (None, ["train", "test"], " "):
            with pytest.raises(TypeError, match=r"`split` must be one split "
                               r"as a string.*'train\+test'"):
                kft.data.from_tfds("mnist", split, SIZE)
        # A bare KeyError, or for the image only at the first batch.
        for key in ("label_key", "image_key"):
            with pytest.raises(ValueError, match=rf"`{key}` must be a "
                               r"feature of mnist \(one of \['image', "
                               r"'label'\]\). Received: .*'nope'"):
                kft.data.from_tfds("mnist", "train", SIZE, **{key: "nope"})
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, SIZE, SIZE, 3)
    labels = np.concatenate([y for _, y in batches])
    assert np.bincount(labels, minlength=10).tolist() == list(
        ds.class_counts.values())


@pytest.mark.slow
def test_model_fit_consumes_train_and_val(tmp_path):
    root = _tree(tmp_path, per_class=4)
    train, val = kft.data.from_directory(root, SIZE, batch_size=4,
                                         augmentation="none")
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(SIZE, SIZE, 3))
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        history = model.fit(train, validation_data=val, epochs=8, verbose=0)
    assert history.history["val_accuracy"][-1] == 1.0


# -- model.fit sees a known number of steps and no spurious warnings ----


def _tiny_model():
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)),
                              keras.layers.Rescaling(1 / 255),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


KERAS_DATA_WARNINGS = ("was passed, but will be ignored", "ran out of data")


def _keras_data_warnings(caught):
    return [str(w.message) for w in caught
            if any(text in str(w.message) for text in KERAS_DATA_WARNINGS)]


def test_fit_knows_the_steps_and_does_not_warn(tmp_path, capsys):
    root = _tree(tmp_path, per_class=5)
    train, val = kft.data.from_directory(root, SIZE, batch_size=4,
                                         augmentation="none")
    assert len(train) == 3 and train.num_batches == 3
    model = _tiny_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(train, validation_data=val, epochs=2, verbose=1)
        model.evaluate(val, verbose=1)
        predictions = model.predict(val, verbose=1)
    assert _keras_data_warnings(caught) == []
    assert len(history.history["loss"]) == 2
    assert predictions.shape == (10, 2)
    out = capsys.readouterr().out
    assert "Unknown" not in out
    assert "3/3" in out and "1/3" in out


def test_header_check_keeps_the_steps_and_updates_the_counts(tmp_path,
                                                             capsys):
    root = _tree(tmp_path, splits=("train",), per_class=4)
    late = f"{root}/train/dark/late.jpg"
    _truncated_jpeg(late)
    train, _ = kft.data.from_directory(root, SIZE, batch_size=3,
                                       check="header", augmentation="none")
    assert train.class_counts == {"bright": 4, "dark": 5}
    assert train.num_examples == 9 and len(train) == 3
    model = _tiny_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(train, epochs=3, verbose=1)
    assert _keras_data_warnings(caught) == []
    reported = [str(w.message) for w in caught
                if issubclass(w.category, kft.data.SkippedFilesWarning)]
    assert len(reported) == 1 and "late.jpg" in reported[0]
    assert [s.path for s in train.skipped] == [late]
    assert "truncated" in train.skipped[0].reason
    # Counted out once found; the number of batches per pass is unchanged.
    assert train.class_counts == {"bright": 4, "dark": 4}
    assert train.num_examples == 8 and len(train) == 3
    assert [len(y) for _, y in _batches(train)].count(3) == 2
    assert sum(len(y) for _, y in _batches(train)) == 8
    assert "Unknown" not in capsys.readouterr().out


def test_header_check_batch_of_only_bad_files(tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=2)
    late = f"{root}/train/dark/late.jpg"
    _truncated_jpeg(late)
    train, _ = kft.data.from_directory(root, SIZE, batch_size=1,
                                       check="header", augmentation="none")
    assert len(train) == 5
    # The training data of a kft model's fit: the next image that loads
    # takes the bad one's place, so the pass has the steps Keras was told
    # (it warned "ran out of data" and cut each epoch short; processes
    # would differ in steps).
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(SIZE, SIZE, 3))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True),
                  metrics=["accuracy"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(train, epochs=2, verbose=0)
    assert _keras_data_warnings(caught) == []
    assert len(history.history["loss"]) == 2
    assert [s.path for s in train.skipped] == [late]
    batches = _batches(train.for_fit())
    seen = sorted(float(x[0, 0, 0, 0]) for x, _ in batches)
    assert len(seen) == 5 and len(set(seen)) == 2  # 4 images, one twice
    # Read otherwise (evaluation, caching), the pass ends short: a repeat
    # counted examples twice (model.evaluate(train) scored 8 of 6).
    assert [len(y) for _, y in _batches(train)] == [1] * 4
    assert [len(y) for _, y in _batches(train.in_order())] == [1] * 4
    kft.freeze(model, "feature_extraction")
    assert len(kft.cache_features(model, train, verbose=0).labels) == 4
    predicted = np.argmax(model.predict(train.in_order(), verbose=0), -1)
    labels = np.concatenate([y for _, y in _batches(train.in_order())])
    score = model.evaluate(train, verbose=0, return_dict=True)
    assert score["accuracy"] == pytest.approx(np.mean(predicted == labels))


def test_header_check_pass_short_of_batches(tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=1)
    bad = [f"{root}/train/dark/{i}.jpg" for i in range(4)]
    for path in bad:
        _truncated_jpeg(path)
    train, _ = kft.data.from_directory(root, SIZE, batch_size=2, seed=1,
                                       check="header", augmentation="none",
                                       shuffle=False)
    with pytest.warns(kft.data.SkippedFilesWarning):
        batches = _batches(train.for_fit())
    # 2 of 6 files decode (bright/0.png, dark/0.png): each bad one's place
    # is taken by the next that decodes (in pass order, wrapping round),
    # every batch keeping its 2 examples.
    assert len(batches) == len(train.for_fit()) == 3
    assert [y.tolist() for _, y in batches] == [[0, 1], [1, 0], [0, 0]]
    for x, y in batches:
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)),
                                   np.where(y == 0, 230, 20), atol=2)
    # Evaluation reads count them out (the steps Keras runs); len() stays
    # the training steps, which fine_tune and a OneCycle's total plan on
    # (a cosine schedule was cut to 2 of 3 steps per epoch).
    assert len(_batches(train)) == train.num_batches == 1
    assert len(train) == len(train.for_fit()) == 3
    # Nothing decodes: said, not an empty pass.
    only_bad = tmp_path / "only_bad"
    for i, path in enumerate(bad):
        os.makedirs(only_bad / "train" / f"c{i % 2}", exist_ok=True)
        shutil.copy(path, only_bad / "train" / f"c{i % 2}" / f"{i}.jpg")
    train, _ = kft.data.from_directory(str(only_bad), SIZE, batch_size=2,
                                       check="header", augmentation="none")
    with pytest.warns(kft.data.SkippedFilesWarning):
        with pytest.raises(ValueError, match="No image of this pass"):
            _batches(train.for_fit())


def test_header_check_keeps_each_process_share_and_refuses_short_eval(
        tmp_path):
    # Two processes (shards) reading one dataset, a file failing in one of
    # them: its training batches were one example short at the end (2, 2,
    # 1 vs 2, 2, 2), so the processes' global batches differed and their
    # weights went apart without an error; an evaluation read cannot
    # replace it and says so (JAX's IndivisibleError under data parallel).
    root = _tree(tmp_path, splits=("train",), per_class=4)
    os.remove(f"{root}/train/dark/3.png")
    _truncated_jpeg(f"{root}/train/dark/late.jpg")  # the 8th, in shard 1
    train, _ = kft.data.from_directory(root, SIZE, batch_size=4,
                                       check="header", augmentation="none",
                                       shuffle=False)
    shards = [train.with_shard((i, 2)) for i in range(2)]
    with pytest.warns(kft.data.SkippedFilesWarning, match="late.jpg"):
        sizes = [[len(y) for _, y in _batches(shard.for_fit())]
                 for shard in shards]
    assert sizes == [[2, 2]] * 2
    # Keras' steps refuse it (`get_jax_iterator`); kft.evaluate pads.
    assert len(_batches(shards[1])) == 2
    with pytest.raises(ValueError, match=r"Files of this dataset failed to "
                       r"decode while read by several devices or processes"
                       r".* batch 2 of 2 holds 1 examples, not the 2 "
                       r"planned \(the last file skipped: .*late\.jpg; "
                       r"`dataset.skipped` lists all 1\)\. Build the "
                       r"dataset with check=\"full\""):
        _batches(shards[1].get_jax_iterator())


def test_header_check_evaluation_counts_the_batches_left(tmp_path):
    # Found while evaluating, a bad file left `val.num_batches` one batch
    # too many: Keras warned "ran out of data; interrupting training" at
    # every later validation and evaluate.
    root = _tree(tmp_path, splits=("train", "val"), per_class=3)
    _truncated_jpeg(f"{root}/val/dark/late.jpg")
    _, val = kft.data.from_directory(root, SIZE, batch_size=2,
                                     check="header", augmentation="none")
    assert len(val) == 4
    model = _tiny_model()
    with pytest.warns(kft.data.SkippedFilesWarning, match="late.jpg"):
        model.evaluate(val, verbose=0)
    assert (len(val), val.num_batches, val.num_examples) == (4, 3, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.evaluate(val, verbose=0)
    assert _keras_data_warnings(caught) == []
    # kft.evaluate's bar counts the batches left (it stopped at 3/4).
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        kft.evaluate(model, val, verbose=1)
    assert "3/3" in output.getvalue() and "/4" not in output.getvalue()


# -- files that are not images of the dataset --------------------------


def test_dangling_symlink_is_reported_as_broken_link(tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=2)
    link = f"{root}/train/dark/gone.png"
    os.symlink(f"{root}/elsewhere/missing.png", link)
    with pytest.warns(kft.data.SkippedFilesWarning,
                      match="gone.png: broken symbolic link to .*missing"):
        train, _ = kft.data.from_directory(root, SIZE, augmentation="none")
    assert train.skipped == (kft.data.SkippedFile(
        link, f"broken symbolic link to '{root}/elsewhere/missing.png'"),)
    with pytest.raises(FileNotFoundError):
        kft.data.load_image(link, SIZE)


def test_os_metadata_files_and_folders_are_ignored(tmp_path):
    root = _tree(tmp_path, splits=("train", "val"), per_class=2)
    # What macOS and Windows leave next to images: AppleDouble twins
    # ("._name", 4 KiB of resource fork), Finder and Explorer caches, and
    # the __MACOSX folder of zip archives.
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00" + bytes(4088)
    for split in ("train", "val"):
        for name in ("dark", "bright"):
            open(f"{root}/{split}/{name}/._0.png", "wb").write(apple_double)
            open(f"{root}/{split}/{name}/.DS_Store", "wb").write(bytes(64))
            open(f"{root}/{split}/{name}/Thumbs.db", "wb").write(bytes(64))
        os.makedirs(f"{root}/{split}/__MACOSX/dark")
        open(f"{root}/{split}/__MACOSX/dark/._0.png", "wb").write(
            apple_double)
    _save(f"{root}/train/dark/.hidden/0.png", _solid(20))
    with warnings.catch_warnings():
        warnings.simplefilter("error", kft.data.SkippedFilesWarning)
        train, val = kft.data.from_directory(root, SIZE, augmentation="none")
    assert train.class_names == ["bright", "dark"]
    assert train.class_counts == val.class_counts == {"bright": 2, "dark": 2}
    assert train.skipped == val.skipped == ()


def test_other_image_formats_load_and_unread_files_are_named(tmp_path):
    # .jfif/.ppm/.pgm photos Pillow reads were left out without a word;
    # files not named as images are now warned of, and counted when a
    # folder has no image at all.
    root = _tree(tmp_path, splits=("train",), per_class=1)
    _save(f"{root}/train/bright/x.jfif", _solid(230), format="JPEG")
    _save(f"{root}/train/bright/x.ppm", _solid(230))
    _save(f"{root}/train/bright/x.pgm", _solid(230)[..., 0])
    open(f"{root}/train/dark/notes.txt", "w").write("not an image")
    open(f"{root}/train/dark/Thumbs.db", "wb").write(bytes(64))
    with pytest.warns(UserWarning, match=r"Left out 1 files of the class "
                      r"folders not named as images \(\.txt: 1; e\.g\. "
                      r".*notes\.txt\)\. kft reads \.jpg .*\.pgm"):
        train, _ = kft.data.from_directory(root, SIZE, augmentation="none")
    assert train.class_counts == {"bright": 4, "dark": 1}
    assert train.skipped == ()
    images, labels = _batches(train)[0]
    np.testing.assert_allclose(images[labels == 0].mean(axis=(1, 2, 3)),
                               230, atol=2)
    os.remove(f"{root}/train/dark/0.png")
    with pytest.warns(UserWarning, match="Left out 1 files"):
        with pytest.raises(ValueError, match=r"\['dark'\] .* have no "
                           r"readable images \(0 files skipped; 1 files "
                           r"not named as images\)"):
            kft.data.from_directory(root, SIZE, augmentation="none")


def test_reading_images_keeps_warnings_shown_once(tmp_path):
    # Each image opened reset Python's once-per-location memory
    # (`warnings.catch_warnings`): a user's or Keras' warning came back
    # after every pass (EarlyStopping's missing monitor, at every epoch).
    root = _tree(tmp_path, splits=("train",), per_class=2)
    train, _ = kft.data.from_directory(root, SIZE, augmentation="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            _batches(train)
            warnings.warn("once per location")
    assert [str(w.message) for w in caught] == ["once per location"]


def test_symlink_to_a_parent_folder_is_walked_once(tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=2)
    os.symlink(f"{root}/train/dark", f"{root}/train/dark/again")
    train, _ = kft.data.from_directory(root, SIZE, augmentation="none")
    assert train.class_counts == {"bright": 2, "dark": 2}


# -- EXIF orientation ---------------------------------------------------


def _sideways_photo(path):
    """Stored 24 wide x 12 high, dark top, bright bottom; EXIF says rotate
    90 degrees clockwise to view, so upright it is bright left, dark right."""
    stored = np.full((12, 24, 3), 230, np.uint8)
    stored[:6] = 20
    exif = Image.Exif()
    exif[0x0112] = 6
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(stored).save(path, exif=exif,
                                 **({"quality": 95} if path.endswith("jpg")
                                    else {}))
    return path


@pytest.mark.parametrize("name", ["photo.jpg", "photo.png"])
def test_exif_orientation_is_applied(tmp_path, name):
    path = _sideways_photo(str(tmp_path / name))
    upright = kft.data.load_image(path, (8, 8)).mean(-1)
    assert upright[:, :3].min() > 200 and upright[:, -3:].max() < 50
    stored = kft.data.load_image(path, (8, 8), exif_transpose=False).mean(-1)
    assert stored[:3].max() < 50 and stored[-3:].min() > 200
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).resize(
        (8, 8), Image.BILINEAR))
    np.testing.assert_allclose(kft.data.load_image(path, (8, 8)), expected,
                               atol=2)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(tmp_path, orientation):
    # Orientations 5-8 swap width and height; each of the 8 turns or
    # mirrors the stored pixels as an image viewer shows them.
    stored = np.random.default_rng(orientation).integers(
        0, 256, (12, 20, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = str(tmp_path / "photo.png")
    Image.fromarray(stored).save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).resize(
        (6, 10), Image.BILINEAR))
    np.testing.assert_array_equal(kft.data.load_image(path, (10, 6)),
                                  expected)


def test_crop_geometries_of_a_size_that_is_not_square(tmp_path):
    # A 40x30 image for (height 16, width 24): "center_crop" takes the
    # centered box of the size's aspect, crop_fraction of the largest
    # one; "aspect_crop" the largest one itself (32x21.33 here).
    path = _save(str(tmp_path / "a.png"), np.random.default_rng(0).integers(
        0, 256, (30, 40, 3), np.uint8))
    image = Image.open(path)

    def box(fraction):
        scale = min(40 / 24, 30 / 16) * fraction
        w, h = 24 * scale, 16 * scale
        return ((40 - w) / 2, (30 - h) / 2, (40 + w) / 2, (30 + h) / 2)

    for geometry, fraction in (("center_crop", 0.875), ("center_crop", 0.5),
                               ("aspect_crop", 0.5)):
        expected = np.asarray(image.resize(
            (24, 16), Image.BILINEAR,
            box=box(1.0 if geometry == "aspect_crop" else fraction)))
        np.testing.assert_array_equal(kft.data.load_image(
            path, (16, 24), geometry, crop_fraction=fraction), expected)


def test_from_directory_applies_exif_orientation_unless_told_not_to(
        tmp_path):
    root = _tree(tmp_path, splits=("train",), per_class=1)
    _sideways_photo(f"{root}/train/dark/photo.jpg")
    kwargs = dict(augmentation="none", shuffle=False, batch_size=8)
    for exif_transpose, bright_side in ((True, np.s_[:, :4]),
                                        (False, np.s_[8:, :])):
        train, _ = kft.data.from_directory(
            root, SIZE, exif_transpose=exif_transpose, **kwargs)
        photo = train.paths.index(f"{root}/train/dark/photo.jpg")
        image = np.concatenate([x for x, _ in _batches(train)])[photo]
        assert image[bright_side].mean() > 200


def test_val_images_are_read_without_augmentation(tmp_path):
    # The train half draws augmentation, the val half never: validation
    # scores (and the epoch kept by them) must not change from pass to pass.
    root = _tree(tmp_path, per_class=2)
    _save(f"{root}/val/dark/noise.png", np.random.default_rng(0).integers(
        0, 256, (24, 20, 3), np.uint8))
    train, val = kft.data.from_directory(root, SIZE, batch_size=8,
                                         augmentation="standard",
                                         shuffle=False)
    assert train.augments and not val.augments
    first, second = _batches(val), _batches(val)
    np.testing.assert_array_equal(first[0][0], second[0][0])
    photo = val.paths.index(f"{root}/val/dark/noise.png")
    np.testing.assert_allclose(first[0][0][photo], kft.data.load_image(
        f"{root}/val/dark/noise.png", SIZE, "center_crop"), atol=1e-4)


def test_load_eval_folder_reads_exif_orientation_as_told(tmp_path):
    # Test images for a model trained on stored pixels
    # (`from_directory(..., exif_transpose=False)`) must be read as stored
    # too: `kft.runs.load_eval_folder` passes its flag on (center crop).
    root = _tree(tmp_path, splits=("test",), per_class=1)
    _sideways_photo(f"{root}/test/dark/photo.jpg")
    for exif_transpose, bright_side in ((True, np.s_[:, :4]),
                                        (False, np.s_[10:, :])):
        data = kft.runs.load_eval_folder(f"{root}/test", ["bright", "dark"],
                                         SIZE, exif_transpose=exif_transpose)
        photo = data.paths.index(f"{root}/test/dark/photo.jpg")
        image = np.concatenate([x for x, _ in _batches(data)])[photo]
        assert image[bright_side].mean() > 200, exif_transpose


# -- from_arrays: one-hot labels, RGB images, labels checked -------------


def test_from_arrays_accepts_one_hot_labels():
    x = np.zeros((5, 4, 4, 3), np.uint8)
    y = np.eye(3, dtype=np.float32)[[0, 2, 2, 1, 0]]
    ds = kft.data.from_arrays(x, y, batch_size=5, shuffle=False)
    assert ds.class_names == ["0", "1", "2"]
    assert ds.class_counts == {"0": 2, "1": 1, "2": 2}
    _, labels = next(iter(ds))
    np.testing.assert_array_equal(labels, y)
    as_int = kft.data.from_arrays(x, y, batch_size=5, shuffle=False,
                                  label_mode="int")
    np.testing.assert_array_equal(next(iter(as_int))[1], [0, 2, 2, 1, 0])
    with pytest.raises(ValueError, match=r"rows \[1\] of y are not one-hot"):
        kft.data.from_arrays(x[:2], np.array([[1.0, 0.0], [0.6, 0.4]]))
    with pytest.raises(ValueError, match="one-hot rows of width 2"):
        kft.data.from_arrays(x, y, class_names=["a", "b"])


def test_with_seed_moves_the_host_augmentation_draws():
    # `kft.compare_strategies` runs each seed through `with_seed`: runs of
    # different seeds must not share their augmentation (a spread over
    # seeds too small), while one seed repeats.
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3))
    data = kft.data.from_arrays(x.astype("float32"), np.arange(4) % 2,
                                batch_size=4, shuffle=False,
                                augmentation="light")

    def first(seed):
        return np.asarray(next(iter(data.with_seed(seed)))[0])

    one = first(1)
    assert not np.allclose(one, first(2))
    np.testing.assert_array_equal(one, first(1))


def test_shards_and_passes_draw_apart():
    # A process' shard (its stream) and a pass each move the seed by a step
    # of their own: shard 1's first pass must not repeat shard 0's second
    # (with one step for both, two processes' epochs drew the same
    # transforms).
    from kft.data._host_augment import HostAugmenter

    augmenter = HostAugmenter(kft.augmentation.augmentation(
        "light", image_size=(16, 16), seed=0))
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3))

    def draw(stream, number):
        return augmenter(x, stream, HostAugmenter.pass_states(number))

    np.testing.assert_array_equal(draw(1, 0), draw(1, 0))
    assert np.abs(draw(1, 0) - draw(0, 1)).mean() > 1.0
    assert np.abs(draw(0, 1) - draw(0, 0)).mean() > 1.0


def test_from_arrays_reads_a_column_of_labels_as_integer_labels():
    # y of shape (n, 1), as a column from a table: class indices, not a
    # one-hot of one class.
    x = np.zeros((5, 4, 4, 3), np.uint8)
    y = np.array([0, 2, 2, 1, 0])
    column = kft.data.from_arrays(x, y[:, None], batch_size=5, shuffle=False)
    assert column.class_counts == {"0": 2, "1": 1, "2": 2}
    np.testing.assert_array_equal(next(iter(column))[1], y)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_from_arrays_yields_rgb_like_the_other_loaders(channels):
    x = np.arange(2 * 4 * 4 * channels, dtype=np.uint8).reshape(
        2, 4, 4, channels)
    images, _ = next(iter(kft.data.from_arrays(x, [0, 1], shuffle=False)))
    assert images.shape == (2, 4, 4, 3)
    if channels == 1:
        np.testing.assert_array_equal(images, np.repeat(x, 3, -1))
    else:
        np.testing.assert_array_equal(images, x[..., :3])
    with pytest.raises(ValueError, match="with 1, 3 or 4 channels"):
        kft.data.from_arrays(np.zeros((2, 4, 4, 2)), [0, 1])


def test_from_arrays_reads_class_names_once_as_strings():
    # A generator was used up by the check: class_names [] and an
    # IndexError at the first categorical batch.
    x, y = np.zeros((3, 4, 4, 3)), [0, 1, 2]
    ds = kft.data.from_arrays(x, y, label_mode="categorical",
                              class_names=(n for n in ["cat", "dog", "ox"]))
    assert ds.class_names == ["cat", "dog", "ox"]
    assert next(iter(ds))[1].shape == (3, 3)
    names = kft.data.from_arrays(x, y, class_names=np.array(
        ["cat", "dog", "ox"])).class_names
    assert names == ["cat", "dog", "ox"]
    assert all(type(n) is str for n in names)


def test_from_arrays_refuses_no_images_or_nan_and_warns_off_range_pixels():
    # Empty, `fit` died with a bare StopIteration; pixels in [0, 1] or
    # normalised trained on near-black inputs without a word.
    with pytest.raises(ValueError, match=r"`x` must hold at least one "
                       r"image\. Received: x\.shape=\(0, 4, 4, 3\)"):
        kft.data.from_arrays(np.zeros((0, 4, 4, 3)), np.zeros(0, int))
    x = np.random.default_rng(0).uniform(0, 1, (4, 4, 4, 3))
    y = [0, 1, 0, 1]
    with pytest.warns(UserWarning, match=r"pixel values in \[0\.\d+, "
                      r"0\.\d+\] \(scaled to \[0, 1\]\? multiply by 255\)"):
        kft.data.from_arrays(x, y)
    # Integer images too (16-bit scans trained silently), and NaN pixels
    # are refused (nanmin/nanmax passed them on to the batches).
    for off in (x - 0.5, x * 1000, (x * 4000).astype("int32") - 99):
        with pytest.warns(UserWarning, match=r"take pixels in \[0, 255\]"):
            kft.data.from_arrays(off, y)
    with pytest.warns(UserWarning, match=r"\[\d+, [45]\d{4}\] \(16-bit "
                      r"images\? `x >> 8` maps them to 8 bits"):
        kft.data.from_arrays((x * 60000).astype("uint16"), y)
    # The same scans as an object array of Python ints (a list of rows
    # read one by one) get the same hint, not the generic warning.
    with pytest.warns(UserWarning, match=r"\(16-bit images\? `x >> 8`"):
        kft.data.from_arrays((x * 60000).astype("uint16").astype(object), y)
    # Not for whole-valued floats, which `x >> 8` cannot shift.
    with pytest.warns(UserWarning, match=r"\[\d+, 5\d{4}\]; kft's"):
        kft.data.from_arrays(np.round(x * 60000).astype(object), y)
    # Not for [0, 299] or 12-bit images: `x >> 8` made them black.
    with pytest.warns(UserWarning, match=r"\[\d+, 3\d{3}\] \(another bit "
                      r"depth\? scale them to \[0, 255\]"):
        kft.data.from_arrays((x * 4000).astype("uint16"), y)
    for value in (np.nan, np.inf):
        bad = x * 255
        bad[2, 1, 1, 0] = value
        with pytest.raises(ValueError, match=r"`x` holds 1 NaN or infinite "
                           r"pixel values \(first in image 2\)"):
            kft.data.from_arrays(bad, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fine in (x * 255, (x * 255).astype("uint8"), np.zeros_like(x)):
            kft.data.from_arrays(fine, y)


@pytest.mark.parametrize("kwargs,y,message", [
    ({"num_classes": 3}, [0, 3, 1, 4],
     r"outside \[0, 3\) for num_classes=3: 3, 4\."),
    # Named for where the classes came from (was "a model with 2 classes").
    ({"class_names": ["a", "b"]}, [0, 1, 2, 1],
     r"outside \[0, 2\) for the 2 class_names: 2\."),
    ({}, [0, -1, 1, 1],
     r"outside \[0, 2\) for the 2 classes its labels count: -1\."),
    ({"num_classes": 3, "class_names": ["a", "b"]}, [0, 1, 1, 0],
     "`num_classes` must match the 2 class_names"),
])
def test_from_arrays_checks_labels_against_the_classes(kwargs, y, message):
    with pytest.raises(ValueError, match=message):
        kft.data.from_arrays(np.zeros((4, 4, 4, 3)), np.array(y), **kwargs)


def test_from_arrays_num_classes_covers_classes_missing_from_y():
    ds = kft.data.from_arrays(np.zeros((2, 4, 4, 3)), np.array([0, 1]),
                              num_classes=np.int64(4),
                              label_mode="categorical")
    assert ds.class_counts == {"0": 1, "1": 1, "2": 0, "3": 0}
    assert next(iter(ds))[1].shape == (2, 4)


# -- arguments ------------------------------------------------------------


def test_single_class_folder_raises(tmp_path):
    root = _tree(tmp_path, classes=(("cats", 20),), per_class=2)
    with pytest.raises(ValueError, match=r"Found one class folder, 'cats', "
                                         r"in '.*train'; a classifier needs "
                                         r"at least 2 classes"):
        kft.data.from_directory(root, SIZE)


def test_load_image_takes_an_int_size(tmp_path):
    path = _save(f"{tmp_path}/a.png", _solid(50))
    for size in (SIZE, np.int64(SIZE), (SIZE, np.int32(SIZE))):
        assert kft.data.load_image(path, size).shape == (SIZE, SIZE, 3)
    for size in (0, 2.5, (4,), True):
        with pytest.raises(ValueError, match="Argument `size` must be a "
                                             "positive int"):
            kft.data.load_image(path, size)
    with pytest.raises(ValueError, match="Argument `geometry` must be one of"):
        kft.data.load_image(path, SIZE, geometry="crop")


def test_numpy_integers_are_accepted(tmp_path):
    root = _tree(tmp_path, per_class=2)
    train, val = kft.data.from_directory(
        root, np.int64(SIZE), batch_size=np.int64(3), seed=np.int64(1),
        num_workers=np.int32(1), augmentation="light")
    assert train.batch_size == 3 and type(train.batch_size) is int
    assert next(iter(train))[0].shape == (3, SIZE, SIZE, 3)
    ds = kft.data.from_arrays(np.zeros((4, 4, 4, 3)), np.arange(4) % 2,
                              batch_size=np.int64(2), seed=np.int64(0))
    assert len(ds) == 2


def test_from_arrays_checks_the_preset_before_building_anything():
    with pytest.raises(ValueError,
                       match="Argument `augmentation` must be one of"):
        kft.data.from_arrays(np.zeros((2, 4, 4, 3)), [0, 1],
                             augmentation="heavy")
    with pytest.raises(ValueError, match="Argument `batch_size` must be an "
                                         "integer >= 1. Received: "
                                         "batch_size=0"):
        kft.data.from_arrays(np.zeros((2, 4, 4, 3)), [0, 1], batch_size=0)


def test_load_image_checks_max_pixels(tmp_path):
    path = _save(f"{tmp_path}/a.png", _solid(10))
    with pytest.raises(ValueError, match="Argument `max_pixels` must be an "
                                         "integer >= 1"):
        kft.data.load_image(path, SIZE, max_pixels=0)
    assert kft.data.load_image(path, SIZE, max_pixels=None).shape == (
        SIZE, SIZE, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"crop_fraction": 1.5}, "Argument `crop_fraction` must be a finite "
                             r"number in \(0, 1\]"),
    ({"augmentation": "heavy"}, "Argument `augmentation` must be one of"),
    ({"num_workers": -1}, "Argument `num_workers` must be an integer >= 0"),
    ({"label_mode": "binary"}, "Argument `label_mode` must be one of"),
    ({"sampling": "even"}, "Argument `sampling` must be one of"),
    ({"augment_on": "gpu"}, "Argument `augment_on` must be one of"),
    ({"batch_size": 0}, "Argument `batch_size` must be an integer >= 1"),
])
def test_from_tfds_checks_arguments_before_reading(kwargs, message):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match=message):
        kft.data.from_tfds("no_such_dataset", "train", SIZE, **kwargs)


def test_in_order_reads_the_images_without_host_augmentation():
    # in_order kept the dataset's random host augmentation: kft.evaluate
    # scored augmented images, two passes differed, and domain_pairs froze
    # one random draw of each source image.
    x = np.random.default_rng(0).uniform(0, 255, (12, SIZE, SIZE, 3))
    x = x.astype("float32")
    ds = kft.data.from_arrays(x, np.arange(12) % 3, batch_size=5,
                              augmentation="standard", seed=1)
    assert ds.augments and not ds.in_order().augments
    first = np.concatenate([images for images, _ in ds.in_order()])
    np.testing.assert_array_equal(first, x)
    pairs = kft.adaptation.domain_pairs(ds, x, batch_size=4)
    np.testing.assert_array_equal(pairs.xs, x)
    assert not np.array_equal(np.concatenate([b for b, _ in ds]), x)


def test_with_seed_and_views_keep_the_draws_of_the_dataset():
    # Views shared the host augmenter's seed state: reading one (lr_find
    # reads a `with_shard` view) changed the dataset's next augmented
    # batches, and compare_strategies' runs got orders and draws that
    # depended on the runs before them.
    x = np.random.default_rng(0).uniform(0, 255, (8, SIZE, SIZE, 3))

    def dataset():
        return kft.data.from_arrays(x.astype("float32"), np.arange(8) % 2,
                                    batch_size=4, augmentation="light",
                                    seed=1)

    def first_batch(ds):
        images, labels = next(iter(ds))
        return np.asarray(images), np.asarray(labels)

    untouched = first_batch(dataset())
    ds = dataset()
    for _ in range(2):
        list(ds.with_shard(ds.shard))  # as lr_find reads it
    for got, want in zip(first_batch(ds), untouched):
        np.testing.assert_array_equal(got, want)
    seeded = first_batch(dataset().with_seed(5))
    ds = dataset()
    list(ds), list(ds.with_seed(5))  # passes before: no effect
    for got, want in zip(first_batch(ds.with_seed(5)), seeded):
        np.testing.assert_array_equal(got, want)
    other = first_batch(ds.with_seed(6))
    assert not np.array_equal(other[0], seeded[0])
    with pytest.raises(ValueError, match="seed"):
        ds.with_seed(-1)


def _pngs(folder, count, value=100):
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (value,) * 3).save(
            os.path.join(folder, f"{i}.png"))


def test_a_link_up_to_the_data_folder_is_not_walked(tmp_path):
    # class b holding a link to its parent read every other class's
    # images as b's: counts {'a': 2, 'b': 9, 'c': 3}.
    for name, count in (("a", 2), ("b", 4), ("c", 3)):
        _pngs(tmp_path / name, count)
    os.symlink("..", tmp_path / "b" / "up")
    train, _ = kft.data.from_directory(tmp_path, 8, validation_split=None)
    assert dict(train.class_counts) == {"a": 2, "b": 4, "c": 3}


def test_a_link_back_to_the_data_folder_from_a_linked_class(tmp_path):
    # The class folder is itself a link (photos/dog -> store/dog): a link
    # in it back to photos/ was walked, every cat read as a dog too.
    for name, count in (("cat", 2), ("dog", 3)):
        _pngs(tmp_path / "store" / name, count)
    photos = tmp_path / "photos"
    photos.mkdir()
    os.symlink(tmp_path / "store" / "cat", photos / "cat")
    os.symlink(os.path.join("..", "store", "dog"), photos / "dog")
    os.symlink(photos, tmp_path / "store" / "dog" / "loop")
    os.symlink(photos, tmp_path / "given")
    for root in (photos, tmp_path / "given"):
        train, _ = kft.data.from_directory(root, 8, validation_split=None)
        assert dict(train.class_counts) == {"cat": 2, "dog": 3}
    # Beside test/, kft train reads the classes through a folder of links
    # to them: the loop was walked again (held-out images trained as dog).
    for name in ("cat", "dog"):
        _pngs(photos / "test" / name, 4)
    config = kft.runs.resolve_config(kft.runs.TrainConfig(
        data_dir=str(photos), backbone="simple_cnn", image_size=8,
        val_split=None))
    train, _ = kft.runs.load_folder_data(config)
    assert dict(train.class_counts) == {"cat": 2, "dog": 3}


def test_nas_and_recycle_folders_are_not_classes_or_images(tmp_path):
    # A Synology NAS keeps thumbnails of each photo in @eaDir/<photo>/:
    # trained on as more images of the class, a class at the top level.
    for name in ("cat", "dog"):
        _pngs(tmp_path / name, 2)
        _pngs(tmp_path / name / "@eaDir" / "0.png", 2)
    _pngs(tmp_path / "@eaDir", 1)
    _pngs(tmp_path / "#recycle" / "old", 2)
    _pngs(tmp_path / "$RECYCLE.BIN", 1)
    train, _ = kft.data.from_directory(tmp_path, 8, validation_split=None)
    assert dict(train.class_counts) == {"cat": 2, "dog": 2}
    from kft.deploy._views import list_sources

    assert len(list_sources(str(tmp_path / "cat"))) == 2  # kft.predict
    # A class named "train" (CIFAR-100) whose only folder is @eaDir was
    # taken for a split folder: "No class folders in '.../train'".
    _pngs(tmp_path / "train", 2)
    _pngs(tmp_path / "train" / "@eaDir" / "0.png", 1)
    train, _ = kft.data.from_directory(tmp_path, 8, validation_split=None)
    assert dict(train.class_counts) == {"cat": 2, "dog": 2, "train": 2}


def test_class_folders_named_in_another_encoding_are_refused(tmp_path):
    # Latin-1 names (an old zip): the run trained, then could not write
    # its reports, on every resume too.
    root = os.fsencode(tmp_path)
    for name in (b"caf\xe9", b"tea"):
        _pngs(os.fsdecode(root + b"/" + name), 2)
    with pytest.raises(ValueError, match=r"Class folders \[b'caf\\xe9'\] "
                       r"in .* not UTF-8 text .*rename them"):
        kft.data.from_directory(tmp_path, 8, validation_split=None)


def test_split_folders_are_found_in_any_case(tmp_path):
    # Train/ + Val/ were read as two classes holding every image.
    for split, count in (("Train", 3), ("Val", 2)):
        for name in ("cat", "dog"):
            _pngs(tmp_path / split / name, count)
    train, val = kft.data.from_directory(tmp_path, 8)
    assert train.class_names == val.class_names == ["cat", "dog"]
    assert (train.num_examples, val.num_examples) == (6, 4)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_out_of_32_bits_is_refused_by_name(tmp_path, seed):
    # It failed inside Keras' SeedGenerator with an OverflowError.
    _pngs(tmp_path / "a", 2)
    _pngs(tmp_path / "b", 2)
    with pytest.raises(ValueError, match=r"`seed` must be an integer in "
                       r"\[0, 4294967295\]"):
        kft.data.from_directory(tmp_path, 8, seed=seed)
    with pytest.raises(ValueError, match="`seed`"):
        kft.data.from_arrays(np.zeros((2, 8, 8, 3)), [0, 1], seed=seed)


def test_the_largest_seeds_work_through_later_passes():
    # Seeds derived from the largest accepted ones (a preset's layers at
    # seed + i, pass k's shuffle at seed + k) overflowed: at build, or at
    # epoch 2-4 of a fit.
    x, y = np.zeros((8, 4, 4, 3)), np.arange(8) % 2
    for seed, preset in ((2**32 - 1, "light"), (2**32 - 3, "standard")):
        data = kft.data.from_arrays(x, y, seed=seed, augmentation=preset,
                                    batch_size=4)
        orders = [np.concatenate([b[1] for b in data]) for _ in range(4)]
        assert all(sorted(o) == sorted(y) for o in orders)
    # Seeds below 2**32 are as they were.
    from kft._validation import offset_seed

    assert offset_seed(7, 3) == 10 and offset_seed(2**32 - 1, 2) == 1
    model = kft.adaptation.DomainAdaptationModel(
        kft.build_classifier("simple_cnn", 2, weights=None,
                             input_shape=(8, 8, 3)), seed=2**32 - 1)
    assert model.seed == 2**32 - 1


_PARTIAL_READ_SCRIPT = """
import sys
import kft

passes = []  # alive at exit, as a script's `it = iter(train)` is
for preset in ("light", "standard", "light"):
    train, _ = kft.data.from_directory(sys.argv[1], image_size=16,
                                       batch_size=2, augmentation=preset,
                                       validation_split=0.25, num_workers=2)
    passes.append(iter(train))
    next(passes[-1])  # the pass is left unread, its thread running
print("read", flush=True)
"""


def test_a_script_that_stops_reading_exits_cleanly(tmp_path):
    # The prefetch thread of a pass left unread ran host augmentation (JAX)
    # while Python shut down: the process aborted ("terminate called
    # without an active exception", exit 134) in 6 of 7 runs.
    import subprocess
    import sys

    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        for i in range(8):
            Image.new("RGB", (20, 20), (30 * i, 90, 200)).save(
                tmp_path / name / f"{i}.png")
    script = tmp_path / "partial.py"
    script.write_text(_PARTIAL_READ_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "read" in done.stdout
    assert "Exception ignored" not in done.stderr, done.stderr[-2000:]


def test_switches_refuse_strings_and_label_mode_names_none(tmp_path):
    # shuffle="False" read as true: the stored order was reshuffled.
    x = np.zeros((6, SIZE, SIZE, 3), "float32")
    with pytest.raises(TypeError, match=r"`shuffle` must be True or False"
                       r".*Received: shuffle='False'"):
        kft.data.from_arrays(x, np.arange(6) % 2, shuffle="False")
    root = _tree(tmp_path, per_class=1)
    for name in ("shuffle", "exif_transpose"):
        with pytest.raises(TypeError, match=f"`{name}` must be True or "
                           f"False.*Received: {name}='no'"):
            kft.data.from_directory(root, image_size=SIZE, **{name: "no"})
    ds = kft.data.from_arrays(x, np.arange(6) % 2, shuffle=np.bool_(False))
    assert ds.shuffle is False
    # None (follow the form of y) is accepted, so the message names it.
    with pytest.raises(ValueError, match=r"one of \('int', 'categorical', "
                       r"None\).*Received: label_mode='onehot'"):
        kft.data.from_arrays(x, np.arange(6) % 2, label_mode="onehot")


def _tiny_tfds_builder():
    """A TFDS builder of 10 gray 6x5 images whose pixel is 20 x their id
    (3 classes), prepared without a download."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class KftTinyGray(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(6, 5, 1)),
                    "label": tfds.features.ClassLabel(names=list("abc"))}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(10):
                # A PIL image: TFDS encodes arrays with TensorFlow.
                image = Image.fromarray(np.full((6, 5), 20 * i, np.uint8))
                yield str(i), {"image": image, "label": i % 3}

    return KftTinyGray


def test_from_tfds_prepares_in_its_data_dir(tmp_path):
    # With data_dir=, TFDS prepared TFRecord files (which need TensorFlow:
    # "No module named 'tensorflow'") and, not prepared, claimed it was
    # "already prepared ... in the TFRECORD format".
    _tiny_tfds_builder()
    with pytest.raises(FileNotFoundError, match=r"'kft_tiny_gray' is not "
                       r"prepared in .*download=True"):
        kft.data.from_tfds("kft_tiny_gray", "train", 4, data_dir=tmp_path)
    ds = kft.data.from_tfds("kft_tiny_gray", "train[:80%]", 4,
                            data_dir=tmp_path, download=True, shuffle=False)
    assert list(tmp_path.glob("kft_tiny_gray/1.0.0/*.array_record*"))
    held_out = kft.data.from_tfds("kft_tiny_gray", "train[80%:]", 4,
                                  data_dir=tmp_path, train=False)
    assert held_out.num_examples == 2 and not held_out.augments

    def ids(data):  # each image is one gray level: 20 x its id
        return np.concatenate([x[:, 1, 1, 0] for x, _ in data]) / 20

    assert len(ids(ds)) == 8
    assert sorted([*ids(ds), *ids(held_out)]) == list(range(10))
    # "__len__() should return >= 0" for an empty slice.
    for empty in ("train[5:3]", "train[100%:]"):
        with pytest.raises(ValueError, match=r"`split` must be a split of "
                           rf"kft_tiny_gray with examples.*{empty[6:-1]}"):
            kft.data.from_tfds("kft_tiny_gray", empty, 4, data_dir=tmp_path)


def test_from_tfds_prepares_in_process_0_while_the_others_wait(monkeypatch):
    from kft.data import _arrays
    from kft.distributed import processes

    calls = []
    fake = type("tfds", (), {"data_source": staticmethod(
        lambda *args, **kwargs: calls.append("prepare"))})
    monkeypatch.setattr(processes, "process_count", lambda: 2)
    monkeypatch.setattr(processes, "barrier", calls.append)
    for primary in (True, False):
        monkeypatch.setattr(processes, "is_primary", lambda: primary)
        _arrays._prepare_once(fake, "x", None, {})
    assert calls == ["prepare", "kft-from-tfds-x", "kft-from-tfds-x"]


def test_load_image_refuses_a_string_for_exif_transpose(tmp_path):
    # "False" read as true.
    path = str(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(TypeError, match=r"`exif_transpose` must be"):
        kft.data.load_image(path, 4, exif_transpose="False")
    assert kft.data.load_image(path, 4, exif_transpose=np.bool_(False)).shape \
        == (4, 4, 3)


def test_a_dataset_built_by_hand_without_labels_cannot_sample_balanced():
    # ImageDataset is public: sampling="balanced" draws a class first, so
    # it needs each example's label; without them it is refused up front.
    source = kft.data.from_arrays(np.zeros((4, 8, 8, 3)), [0, 1, 0, 1],
                                  batch_size=2)._source
    settings = dict(class_names=["a", "b"], class_counts={"a": 2, "b": 2},
                    batch_size=2, shuffle=False, seed=0, num_workers=0)
    with pytest.raises(ValueError, match=r"`labels` \(each example's class\) "
                       r"is required for sampling='balanced'"):
        kft.data.ImageDataset(source, sampling="balanced", **settings)
    assert kft.data.ImageDataset(source, labels=[0, 1, 0, 1],
                                 sampling="balanced",
                                 **settings).sampling == "balanced"


def test_drop_remainder_drops_the_partial_global_batch_in_every_shard():
    # 11 examples, global batches of 4: two full batches; dropping the
    # remainder leaves out the last 3 in one process and in each of two
    # (no partial batch of 1 + 1 that the shards would otherwise share).
    source = kft.data.from_arrays(np.arange(11.0).reshape(11, 1, 1, 1),
                                  np.zeros(11, int), batch_size=4,
                                  shuffle=False)._source
    dataset = kft.data.ImageDataset(
        source, class_names=["a"], class_counts={"a": 11}, batch_size=4,
        shuffle=False, seed=0, num_workers=0, drop_remainder=True)

    def read(ds):
        return [images[..., 0].ravel().tolist() for images, _ in ds]

    assert read(dataset) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for index, first in ((0, 0), (1, 2)):
        shard = dataset.with_shard((index, 2))
        assert len(shard) == 2 and not shard.has_partial_batch
        assert shard.partial_batch_size is None
        assert read(shard) == [[first, first + 1], [first + 4, first + 5]]
