"""`refresh_training_state` and `changing_trainable` on every documented path."""

import warnings

import keras
import numpy as np
import pytest

import kft

SHAPE = (16, 16, 3)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=16):
    rng = np.random.default_rng(0)
    return (rng.uniform(0, 255, (n,) + SHAPE).astype("float32"),
            rng.integers(0, 3, n).astype("int32"))


def _model():
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=SHAPE)
    kft.freeze(model, "feature_extraction", bn="train")
    return model


def _kernel(model, name):
    return np.array(model.get_layer("simple_cnn").get_layer(name).kernel.value)


def _moved(model, before, name):
    return not np.array_equal(_kernel(model, name), before)


def test_by_hand_before_compile():
    model = _model()
    model.get_layer("simple_cnn").get_layer("block3_conv").trainable = True
    kft.refresh_training_state(model)
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    before = _kernel(model, "block3_conv")
    model.fit(*_data(), epochs=1, batch_size=8, verbose=0)
    assert _moved(model, before, "block3_conv")


def test_by_hand_between_fits_trains_the_new_set_without_keras_warning():
    x, y = _data()
    model = _model()
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.get_layer("simple_cnn").get_layer("block3_conv").trainable = True
    kft.refresh_training_state(model)
    assert len(model.optimizer.variables) >= 1
    before3, before2 = (_kernel(model, "block3_conv"),
                        _kernel(model, "block2_conv"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert _moved(model, before3, "block3_conv")
    assert not _moved(model, before2, "block2_conv")
    assert not [w for w in caught if "Please recompile" in str(w.message)]


class _ByHand(keras.callbacks.Callback):
    """Changes a flag by hand on `target`, a direct reference to the model
    (`Callback.model` would write the step's state back on access)."""

    def __init__(self, where, target):
        super().__init__()
        self.where, self.target, self.error = where, target, None

    def _change(self):
        try:
            self.target.get_layer("simple_cnn").get_layer(
                "block3_conv").trainable = True
            kft.refresh_training_state(self.target)
        except RuntimeError as error:
            self.error = error
            raise

    def on_epoch_begin(self, epoch, logs=None):
        if self.where == "epoch" and epoch == 1:
            self._change()

    def on_train_batch_end(self, batch, logs=None):
        if self.where == "batch" and batch == 0:
            self._change()


def test_by_hand_in_a_callback_at_an_epoch_boundary():
    model = _model()
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    before = _kernel(model, "block3_conv")
    model.fit(*_data(), epochs=2, batch_size=8, verbose=0,
              callbacks=[_ByHand("epoch", model)])
    assert _moved(model, before, "block3_conv")


def test_by_hand_between_batches_writes_the_step_back_first():
    # The callback holds the model itself, so the step's state is pending
    # when the flag changes; the refresh must not pair it with the new set.
    x, y = _data()
    model = _model()
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    reference = _model()
    reference.compile(keras.optimizers.SGD(0.1), LOSS)
    reference.set_weights(model.get_weights())
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0,
              callbacks=[_ByHand("batch", model)])
    # The same two steps: one on the head, one with block3 as well.
    reference.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=0)
    with kft.changing_trainable(reference):
        reference.get_layer("simple_cnn").get_layer(
            "block3_conv").trainable = True
    reference.fit(x[8:], y[8:], epochs=1, batch_size=8, verbose=0)
    for a, b in zip(model.weights, reference.weights):
        np.testing.assert_allclose(np.array(a.value), np.array(b.value),
                                   atol=1e-5, err_msg=a.path)


def test_context_between_batches_trains_the_new_set():
    model = _model()
    model.compile(keras.optimizers.SGD(0.1), LOSS)

    class Unfreeze(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                with kft.changing_trainable(self.model):
                    self.model.get_layer("simple_cnn").get_layer(
                        "block3_conv").trainable = True

    before = _kernel(model, "block3_conv")
    model.fit(*_data(), epochs=1, batch_size=8, verbose=0,
              callbacks=[Unfreeze()])
    assert _moved(model, before, "block3_conv")


def test_context_after_an_exception_leaves_a_consistent_state():
    model = _model()
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    model.fit(*_data(), epochs=1, batch_size=8, verbose=0)
    with pytest.raises(KeyError):
        with kft.changing_trainable(model):
            model.get_layer("simple_cnn").get_layer(
                "block3_conv").trainable = True
            raise KeyError("boom")
    before = _kernel(model, "block3_conv")
    model.fit(*_data(), epochs=1, batch_size=8, verbose=0)
    assert _moved(model, before, "block3_conv")


def test_predict_after_a_swap_that_keeps_the_state_structure():
    # Swapping which of two same-shaped layers trains keeps the step's
    # state structure: a predict function kept from before the swap fed
    # the layers' values to the wrong places (predictions 4.4 off).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="d2")(
        keras.layers.Dense(4, name="d1")(inputs)))
    model.compile("sgd", "mse")
    model.get_layer("d2").trainable = False
    kft.refresh_training_state(model)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    before = model.predict(x, verbose=0)
    with kft.changing_trainable(model):
        model.get_layer("d1").trainable = False
        model.get_layer("d2").trainable = True
    np.testing.assert_allclose(model.predict(x, verbose=0), before,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model(x)), before, rtol=1e-6,
                               atol=1e-6)


def test_by_hand_after_a_context_change_in_the_same_fit():
    # Within one fit: a change with `changing_trainable`, later one by hand
    # and `refresh_training_state`. The refresh must record the new set as
    # the context does (the step raised "'NoneType' object is not
    # callable").
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="d2")(
        keras.layers.Dense(4, name="d1")(inputs)))
    model.get_layer("d1").trainable = False
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    seen = {}

    class Stages(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.count = getattr(self, "count", 0) + 1
            if self.count == 6:
                with kft.changing_trainable(model):
                    model.get_layer("d1").trainable = True
            elif self.count == 11:
                model.get_layer("d2").trainable = False
                kft.refresh_training_state(model)
                seen["d2"] = np.array(model.get_layer("d2").kernel.value)

    history = model.fit(x, np.ones((16, 4), "float32"), epochs=4,
                        batch_size=4, verbose=0, callbacks=[Stages()])
    assert len(history.history["loss"]) == 4
    np.testing.assert_array_equal(model.get_layer("d2").kernel.value,
                                  seen["d2"])  # frozen from then on
