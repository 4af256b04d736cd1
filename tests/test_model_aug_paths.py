"""User paths through `build_classifier` and augmentation that no other test
took: a saved `BatchAugmentModel` trained on after loading, non-RGB images
through colour augmentation and ImageNet preprocessing, and option values
that cannot work."""

import keras
import numpy as np
import pytest

import kft

SHAPE = (16, 16, 3)


def _images(n, channels=3):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, 16, 16, channels)).astype("float32")


def test_batch_augment_model_loads_compiled(tmp_path):
    # Keras skipped `compile` on load for a model overriding it: the loaded
    # model had no optimizer and `fit` raised an AttributeError.
    x, y = _images(8), np.arange(8) % 3
    model = kft.build_classifier(
        "simple_cnn", 3, weights=None, input_shape=SHAPE,
        batch_augment=kft.layers.MixUp(num_classes=3, seed=0))
    model.compile("adam",
                  keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, kft.BatchAugmentModel)
    assert int(loaded.optimizer.iterations.numpy()) == 2
    for saved, restored in zip(model.optimizer.variables,
                               loaded.optimizer.variables):
        np.testing.assert_array_equal(saved, restored)
    history = loaded.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(loaded.optimizer.iterations.numpy()) == 4


def test_colour_augmentation_refuses_non_rgb_images():
    gray = _images(2, channels=1)
    erasing = kft.augmentation.RandomErasing(1.0, fill_value=(1, 2, 3),
                                             seed=0)
    # Broadcasting the colour turned 1-channel images into 3-channel ones.
    with pytest.raises(ValueError, match=r"fill_value.*1 channel"):
        erasing(gray, training=True)
    with pytest.raises(ValueError, match="channel"):
        kft.augmentation.augmentation("strong")(gray, training=True)
    assert erasing(gray, training=False).shape == gray.shape
    single = kft.augmentation.RandomErasing(1.0, fill_value=7.0, seed=0)
    assert single(gray, training=True).shape == gray.shape

    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 1))
    for preset in ("standard", "strong"):
        with pytest.raises(ValueError, match=rf"augmentation_layer.*{preset}"):
            kft.augmentation.attach(model, preset)
    augmented = kft.augmentation.attach(model, "light")
    np.testing.assert_allclose(augmented.predict(gray, verbose=0),
                               model.predict(gray, verbose=0), atol=1e-6)
    with pytest.raises(TypeError, match="augmentation_layer=3"):
        kft.augmentation.attach(model, 3)
    with pytest.raises(ValueError, match="preset='medium'"):
        kft.augmentation.attach(model, "medium")


def test_build_classifier_rejects_options_that_cannot_work():
    # Flatten needs the feature length: Keras failed on a None-sized
    # Dense kernel without naming `pooling`.
    with pytest.raises(ValueError, match="pooling='flatten'"):
        kft.build_classifier("simple_cnn", 3, weights=None,
                             input_shape=(None, None, 3), pooling="flatten")
    with pytest.raises(ValueError, match=r"class_names.*repeated: \['a'\]"):
        kft.build_classifier("simple_cnn", weights=None, input_shape=SHAPE,
                             class_names=["a", "b", "a"])
    # ImageNet statistics on 1 channel: a broadcasting error, or (caffe
    # with unknown sizes) images silently turned into RGB ones.
    for mode, shape in (("torch", (16, 16, 1)), ("caffe", (16, 16, 1)),
                        ("caffe", (None, None, 1))):
        with pytest.raises(ValueError, match=rf"input_shape.*{mode}"):
            kft.layers.preprocessing(mode, shape)
    tf_gray = kft.layers.preprocessing("tf", (16, 16, 1))
    np.testing.assert_allclose(tf_gray(np.full((1, 16, 16, 1), 255.0)), 1.0)


def test_batch_augment_fit_checks_integer_labels():
    """Inside the compiled step an out-of-range label would one-hot to a
    row of zeros (a finite loss on nothing): `fit` checks host labels."""
    model = kft.build_classifier(
        "simple_cnn", num_classes=3, weights=None, input_shape=(16, 16, 3),
        batch_augment=kft.layers.MixUp(0.2, seed=0))
    model.compile("adam", keras.losses.CategoricalCrossentropy(
        from_logits=True))
    x = np.zeros((4, 16, 16, 3), "float32")
    with pytest.raises(ValueError, match=r"`y` holds labels outside \[0, 3\)"
                                         r".*: 3, 5"):
        model.fit(x, np.array([0, 3, 5, 1]), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`validation_data\[1\]`.*: 7"):
        model.fit(x, np.array([[0], [1], [2], [1]]), epochs=1, verbose=0,
                  validation_data=(x, np.array([0, 7, 1, 2])))
    assert model.optimizer.iterations.numpy() == 0  # nothing trained


def test_batch_augment_checks_labels_of_single_batches_and_named_inputs():
    # test_on_batch is an entry point of its own: an out-of-range label
    # one-hot encodes to zeros there too. A batch given as {input name:
    # images} is mixed and trained on as the images alone are.
    def mixing_model():
        keras.utils.set_random_seed(0)
        model = kft.build_classifier(
            "simple_cnn", num_classes=3, weights=None, input_shape=SHAPE,
            batch_augment=kft.layers.MixUp(0.2, seed=0))
        model.compile("sgd", keras.losses.CategoricalCrossentropy(
            from_logits=True))
        return model

    x, y = _images(4), np.array([0, 1, 2, 1])
    model = mixing_model()
    with pytest.raises(ValueError, match=r"`y` holds labels outside \[0, 3\)"
                                         r".*: 4"):
        model.test_on_batch(x, np.array([0, 4, 1, 2]))
    plain = model.train_on_batch(x, y)
    named = mixing_model()
    by_name = named.train_on_batch({named.inputs[0].name: x}, y)
    assert np.isfinite(plain) and by_name == pytest.approx(plain, rel=1e-5)
    for a, b in zip(model.trainable_weights, named.trainable_weights):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5,
                                   atol=1e-6)
