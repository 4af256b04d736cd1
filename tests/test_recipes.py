import keras
import numpy as np
import pytest

import kft

SHAPE = (16, 16, 3)


@pytest.fixture(scope="module")
def data():
    return kft.datasets.digits(image_size=16, target_per_class=6,
                               val_per_class=4)


def _model():
    return kft.build_classifier("simple_cnn", num_classes=5, weights=None,
                                input_shape=SHAPE)


@pytest.mark.parametrize("strategy,expected_phase2_trainable", [
    ("partial", {"block3_conv", "head_dense"}),
    ("full", {"stem_conv", "block1_conv", "block2_conv", "block3_conv",
              "head_dense"}),
    ("gradual", {"block1_conv", "block2_conv", "block3_conv", "head_dense"}),
])
def test_two_phases_train_what_the_strategy_says(data, strategy,
                                                 expected_phase2_trainable):
    model = _model()
    stem_before = np.array(model.get_layer("simple_cnn")
                           .get_layer("stem_conv").kernel.value)
    result = kft.fine_tune(model, data.target_train, data.target_val,
                           strategy=strategy, head_epochs=1, epochs=3,
                           verbose=0)
    assert len(result.histories) == 2
    assert len(result.histories[0]["loss"]) == 1
    assert len(result.histories[1]["loss"]) == 3
    layers = {v.path.split("/")[0] for v in model.trainable_variables}
    assert layers == expected_phase2_trainable
    stem_after = np.array(model.get_layer("simple_cnn")
                          .get_layer("stem_conv").kernel.value)
    assert np.array_equal(stem_before, stem_after) == (strategy != "full") \
        or result.best_epoch == 0
    # Phase 2 runs at the lower, cosine-decayed rate.
    lrs = result.histories[1]["learning_rate"]
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] < lrs[0]
    if strategy == "gradual":
        assert result.histories[1]["unfrozen_blocks"] == [1, 2, 3]


def test_keeps_the_best_epoch_weights(data):
    model = _model()
    result = kft.fine_tune(model, data.target_train, data.target_val,
                           strategy="full", head_epochs=1, epochs=3,
                           learning_rate=0.5, verbose=0)
    all_losses = result.histories[0]["val_loss"] + result.histories[1]["val_loss"]
    assert result.monitor == "val_loss"
    assert result.best_value == pytest.approx(min(all_losses))
    assert result.best_epoch == int(np.argmin(all_losses))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    logs = model.evaluate(*data.target_val, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], result.best_value, rtol=1e-4)


def test_feature_extraction_is_one_phase(data):
    model = _model()
    result = kft.fine_tune(model, data.target_train, strategy="feature_extraction",
                           head_epochs=2, verbose=0)
    assert len(result.histories) == 1 and result.monitor == "loss"
    assert {v.path.split("/")[0] for v in model.trainable_variables} == {
        "head_dense"}


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="strategy.*Received: strategy='all'"):
        kft.fine_tune(_model(), data.target_train, strategy="all")
    with pytest.raises(ValueError, match="Received: head_epochs=0"):
        kft.fine_tune(_model(), data.target_train, head_epochs=0)
    with pytest.raises(ValueError, match="'val_f1'.*not in the epoch logs"):
        kft.fine_tune(_model(), data.target_train, data.target_val,
                      monitor="val_f1", head_epochs=1, epochs=0, verbose=0)
