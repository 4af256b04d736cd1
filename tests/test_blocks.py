import warnings

import keras
import numpy as np
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
    # A list item that is no (name, regex) pair of strings: named whole,
    # not unpacked into a wrong block or a bare re.error.
    for patterns in ([("enc", "^enc_", "x")], [("enc", 3)]):
        with pytest.raises(TypeError, match=r"\(block name, regex\) pairs "
                           r"of strings\. Received: patterns="):
            kft.get_blocks(model, patterns)
    # Was a bare re.error ("missing ), unterminated subpattern").
    with pytest.raises(ValueError, match=r"regex that does not compile, "
                       r"'\^\(enc' \(block 'enc'\): missing \)"):
        kft.get_blocks(model, {"enc": "^(enc", "out": "out"})


def test_head_layers_is_the_head_block():
    from kft.models.blocks import head_and_body, head_layers

    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3), head="mlp",
                                 dropout=0.1)
    head = head_layers(model)
    assert [l.name for l in head] == ["head_fc", "head_bn", "head_dense"]
    blocks = kft.get_blocks(model)
    assert head_and_body(blocks)[0] == "head"
    assert [id(l) for l in head] == [id(l) for l in blocks["head"]]
    # In model order, weightless head layers (pooling, ReLU, dropout) sit
    # around them.
    position = [model.layers.index(l) for l in head]
    assert position == sorted(position)
    assert model.layers[position[0] - 1].name == "head_pool"
    # No kft backbone: no head, even with layers named `head_*`.
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(2, name="head_dense")(
        keras.layers.Dense(4, name="body")(inputs))
    plain = keras.Model(inputs, outputs)
    assert head_layers(plain) == []
    assert head_and_body(kft.get_blocks(plain)) == (None, ["body",
                                                           "head_dense"])


def test_backbone_is_found_by_its_marker_not_its_name():
    from kft.models.backbones import as_backbone
    from kft.models.simple_cnn import SimpleCNN

    raw = SimpleCNN(input_shape=(16, 16, 3))  # named "simple_cnn", unmarked
    assert raw.name == "simple_cnn"
    # One block per weighted layer, BatchNorm with the layer before it.
    blocks = kft.get_blocks(raw)
    assert list(blocks) == ["stem_conv", "block1_conv", "block2_conv",
                            "block3_conv"]
    assert [layer.name for layer in blocks["block1_conv"]] == [
        "block1_conv", "block1_bn"]
    inputs = keras.Input((16, 16, 3))
    wrapped = keras.Model(inputs, keras.layers.Dense(2, name="out")(
        keras.layers.GlobalAveragePooling2D()(raw(inputs))))
    assert list(kft.get_blocks(wrapped)) == ["simple_cnn", "out"]
    marked = as_backbone(raw, "SimpleCNN")
    assert marked.kft_backbone == "simple_cnn"
    assert list(kft.get_blocks(marked)) == ["stem", "block1", "block2",
                                            "block3"]
    # A kft backbone keeps its blocks under any layer name.
    renamed = kft.create_backbone("simple_cnn", weights=None,
                                  input_shape=(16, 16, 3))
    renamed.name = "features"
    assert list(kft.get_blocks(renamed)) == ["stem", "block1", "block2",
                                             "block3"]
    # A Backbone marked again under another spelling keeps the registered
    # name (the spelling given is not a registry key; exports record it).
    assert as_backbone(renamed, "Simple-CNN").kft_backbone == "simple_cnn"
    with pytest.raises(TypeError, match=r"Argument `model` must be a "
                       r"functional keras.Model\. Received: model='x'"):
        as_backbone("x", "simple_cnn")


def test_a_second_backbone_after_the_first_belongs_to_the_head():
    # "Then the head for the layers after the backbone": a second kft
    # backbone (a two-tower model) joins the head whole; split into its
    # own blocks it took the first one's names ("stem", ...), and the
    # first backbone's layers were in no block.
    first, second = (kft.create_backbone("simple_cnn", weights=None,
                                         input_shape=(16, 16, 3),
                                         pooling="avg") for _ in range(2))
    second.name = "second"
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Concatenate()([first(inputs), second(inputs)])
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(features))
    blocks = kft.get_blocks(model)
    assert list(blocks) == ["stem", "block1", "block2", "block3", "head"]
    assert [l.name for l in blocks["head"]] == ["second", "head"]
    assert blocks["stem"][0] is first.get_layer("stem_conv")


def test_clones_sharing_a_backbones_layers_keep_its_marker():
    from kft.models.backbones import as_backbone

    backbone = kft.create_backbone("simple_cnn", weights=None,
                                   input_shape=(8, 8, 3))
    # At 8x8 the last stage's kernel covers its map: that conv is replaced,
    # the other layers are shared.
    fast = kft.fast_cpu_convs(backbone)
    assert fast is not backbone
    assert fast.kft_backbone == "simple_cnn"
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(8, 8, 3), fast_cpu_convs=False)
    fast_model = kft.fast_cpu_convs(model)
    assert list(kft.get_blocks(fast_model)) == list(kft.get_blocks(model))
    # Fresh copies of every layer share nothing: unmarked until marked.
    copy = keras.models.clone_model(backbone)
    assert copy.kft_backbone is None
    assert list(kft.get_blocks(copy))[0] == "stem_conv"
    assert list(kft.get_blocks(as_backbone(copy, "simple_cnn")))[0] == "stem"


def test_an_attached_model_has_its_classifiers_blocks():
    # attach wraps the classifier in a model of one weighted layer: its
    # blocks were that one layer, so freezing "the last block" trained
    # the whole classifier.
    import kft

    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3))
    attached = kft.augmentation.attach(model, "light")
    assert list(kft.get_blocks(attached)) == list(kft.get_blocks(model))
    kft.freeze(attached, "partial", n_blocks=1)
    trainable = {layer.name for layer in model.get_layer("simple_cnn").layers
                 if layer.trainable_weights}
    assert trainable and trainable <= {
        layer.name for layer in kft.get_blocks(model)["block3"]}


def test_plain_models_keep_batchnorm_with_its_layer_and_a_named_head():
    # Each BatchNormalization was a block of its own: under bn="frozen",
    # partial (n_blocks=1) trained what feature extraction trains, and
    # gradual spent every other stage on nothing. Layers after a layer
    # named "head" were body blocks: feature extraction froze the final
    # classifier.
    model = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.Conv2D(4, 3, name="c2"),
        keras.layers.BatchNormalization(name="bn2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(8, name="head"), keras.layers.Dense(3, name="out")])
    blocks = kft.get_blocks(model)
    assert {name: [layer.name for layer in layers]
            for name, layers in blocks.items()} == {
        "c1": ["c1", "bn1"], "c2": ["c2", "bn2"], "head": ["head", "out"]}

    def trainable():
        return sum(int(np.prod(v.shape)) for v in model.trainable_variables)

    kft.freeze(model, "feature_extraction")
    head_only = trainable()
    assert model.get_layer("out").trainable and head_only == 8 * 4 + 8 + 27
    kft.freeze(model, "partial", n_blocks=1)
    assert trainable() > head_only


@pytest.mark.parametrize("inner_name,warns", [
    ("mobilenetv3small", True), ("MobileNetV3Small", True),
    ("encoder", False)])
def test_a_backbone_kft_did_not_make_is_named_in_a_warning(inner_name,
                                                           warns):
    # A model saved by kft before backbones were marked loads with a plain
    # Functional backbone: one block, so "partial" trained no layer of it
    # without a word.
    inner = keras.Sequential([keras.Input((8, 8, 3)),
                              keras.layers.Conv2D(4, 3, name="conv")],
                             name=inner_name)
    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head_dense")(
        pooled))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blocks = kft.get_blocks(model)
    assert list(blocks) == [inner_name, "head_dense"]
    mine = [w for w in caught if issubclass(w.category, UserWarning)]
    messages = [str(w.message) for w in mine]
    if warns:
        assert len(messages) == 1, messages
        assert messages[0].startswith(
            f"Layer {inner_name!r} is named like kft's backbone "
            "'mobilenetv3small' but was not made by kft.create_backbone")
        assert "kft.build_classifier('mobilenetv3small', ...)" in messages[0]
        assert mine[0].filename == __file__
    else:
        assert messages == []
