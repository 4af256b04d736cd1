import keras
import pytest

import kft


def _plain_model():
    inputs = keras.Input((8,))
    x = keras.layers.Dense(4, name="enc_a")(inputs)
    x = keras.layers.Dense(4, name="enc_b")(x)
    x = keras.layers.ReLU(name="act")(x)
    outputs = keras.layers.Dense(2, name="out")(x)
    return keras.Model(inputs, outputs)


def test_classifier_blocks_end_with_head():
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3), head="mlp",
                                 dropout=0.1)
    blocks = kft.get_blocks(model)
    assert list(blocks) == ["stem", "block1", "block2", "block3", "head"]
    assert [l.name for l in blocks["head"]] == ["head_fc", "head_bn",
                                                "head_dense"]


def test_any_model_splits_by_top_level_layers():
    blocks = kft.get_blocks(_plain_model())
    assert list(blocks) == ["enc_a", "enc_b", "out"]


def test_user_patterns():
    model = _plain_model()
    blocks = kft.get_blocks(model, {"encoder": r"^enc_", "top": r"^out$"})
    assert [l.name for l in blocks["encoder"]] == ["enc_a", "enc_b"]
    blocks = kft.get_blocks(model, [r"^enc_", r"^out$"])
    assert list(blocks) == [r"^enc_", r"^out$"]


def test_patterns_open_nested_models():
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3))
    blocks = kft.get_blocks(model, {"low": r"^(stem|block1)_",
                                    "high": r"^block[23]_", "head": "^head_"})
    assert [l.name for l in blocks["low"]] == ["stem_conv", "stem_bn",
                                               "block1_conv", "block1_bn"]


def test_pattern_errors_name_the_culprits():
    model = _plain_model()
    with pytest.raises(ValueError, match="'out'.*matches no block pattern"):
        kft.get_blocks(model, [r"^enc_"])
    with pytest.raises(ValueError, match="two block patterns.*enc.*a"):
        kft.get_blocks(model, {"enc": r"^enc_", "a": r"_a$", "o": "out"})
    with pytest.raises(ValueError, match=r"\['ghost'\] match no layer"):
        kft.get_blocks(model, {"enc": r"^enc_", "out": "out",
                               "ghost": "^zzz"})
    with pytest.raises(TypeError, match="patterns"):
        kft.get_blocks(model, "enc")
