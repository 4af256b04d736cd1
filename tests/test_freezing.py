import warnings

import keras
import numpy as np
import pytest

import kft

SHAPE = (16, 16, 3)


def _model(head="linear"):
    return kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                input_shape=SHAPE, head=head)


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (n,) + SHAPE).astype("float32"),
            rng.integers(0, 3, n).astype("int32"))


def _compile(model, optimizer=None):
    model.compile(optimizer or keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _snapshot(model):
    return {v.path: np.array(v.value) for v in model.weights}


def _changed(before, model):
    return {v.path for v in model.weights
            if not np.array_equal(before[v.path], np.array(v.value))}


def _expected_trainable(model, names, bn):
    blocks = kft.get_blocks(model)
    expected = set()
    for name in names:
        for layer in blocks[name]:
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            if is_bn and bn == "frozen" and name != "head":
                continue
            expected |= {v.path for v in layer.weights if v.trainable}
    return expected


@pytest.mark.parametrize("strategy,n_blocks,names", [
    ("feature_extraction", None, ["head"]),
    ("partial", 1, ["block3", "head"]),
    ("partial", 3, ["block1", "block2", "block3", "head"]),
    ("full", None, ["stem", "block1", "block2", "block3", "head"]),
])
@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_strategy_trains_exactly_the_intended_weights(strategy, n_blocks,
                                                      names, bn):
    model = _model(head="mlp")
    assert kft.freeze(model, strategy, n_blocks=n_blocks, bn=bn) == names
    expected = _expected_trainable(model, names, bn)
    assert {v.path for v in model.trainable_variables} == expected
    _compile(model)
    before = _snapshot(model)
    model.fit(*_data(), epochs=1, batch_size=8, verbose=0)  # 2 steps
    changed = _changed(before, model)
    moving = {v.path for v in model.non_trainable_variables
              if "moving" in v.path}
    assert changed - moving == expected
    # Moving statistics move exactly in BN layers that are in training mode.
    trained_bn = {m for m in moving
                  if any(m.rsplit("/", 1)[0] == p.rsplit("/", 1)[0]
                         for p in expected if p.endswith("/gamma"))}
    assert bool(trained_bn) == (bn == "train" or "head" in names)
    assert changed & moving == trained_bn


def test_bn_frozen_keeps_moving_statistics_and_train_moves_them():
    x, y = _data()
    for bn, should_move in (("frozen", False), ("train", True)):
        model = _model()
        kft.freeze(model, "full", bn=bn)
        _compile(model)
        bn_layer = model.get_layer("simple_cnn").get_layer("block2_bn")
        before = np.array(bn_layer.moving_mean.value)
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
        moved = not np.allclose(before, np.array(bn_layer.moving_mean.value))
        assert moved == should_move, bn


def test_random_init_batch_norm_kept_frozen_is_warned_once():
    model = _model()  # weights=None
    with pytest.warns(UserWarning, match=r"built with weights=None.*Pass "
                      r"bn=\"train\" \(`--bn train` of `kft train`"):
        kft.freeze(model, "full")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kft.freeze(model, "full")  # once per model
        kft.freeze(_model(), "full", bn="train")
        kft.freeze(_model(), "feature_extraction")  # no BN trains


def test_freeze_after_compile_takes_effect():
    model = _model()
    kft.freeze(model, "feature_extraction")
    _compile(model)
    model.fit(*_data(), epochs=1, batch_size=8, verbose=0)
    kft.freeze(model, "partial", n_blocks=1)
    before = _snapshot(model)
    model.fit(*_data(seed=1), epochs=1, batch_size=8, verbose=0)
    changed = _changed(before, model)
    assert any(p.startswith("block3_conv/") for p in changed)
    assert not any(p.startswith("block2_") for p in changed)


def test_identical_shapes_swap_trains_the_right_weights():
    """Two blocks with the same variable shapes: Keras' cached step would
    silently keep updating the old one. After kft's switch only the new
    block (and head) may change, and the head keeps its momentum."""
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="a")(inputs)
    x = keras.layers.Dense(4, name="b")(x)
    outputs = keras.layers.Dense(2, name="head_out")(x)
    model = keras.Model(inputs, outputs)
    patterns = {"a": "^a$", "b": "^b$", "head": "^head_"}
    kft.set_trainable_blocks(model, ["a", "head"], patterns=patterns)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    _compile(model, optimizer)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)), rng.integers(0, 2, 8)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    head_kernel = model.get_layer("head_out").kernel
    momentum = [v for v in optimizer.variables
                if v.path.endswith("head_out_kernel_momentum")][0]
    momentum_before = np.array(momentum.value)
    assert np.abs(momentum_before).sum() > 0
    kft.set_trainable_blocks(model, ["b", "head"], patterns=patterns)
    before = _snapshot(model)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    changed = _changed(before, model)
    assert changed == {"b/kernel", "b/bias", "head_out/kernel",
                       "head_out/bias"}
    # The head's momentum carried over: one more SGD step from it.
    new_momentum = [v for v in optimizer.variables
                    if v.path.endswith("head_out_kernel_momentum")][0]
    grad_part = np.array(new_momentum.value) - 0.9 * momentum_before
    step = np.array(head_kernel.value) - before["head_out/kernel"]
    np.testing.assert_allclose(step, np.array(new_momentum.value), rtol=1e-5,
                               atol=1e-7)
    assert not np.allclose(grad_part, np.array(new_momentum.value))


def test_bad_arguments_are_explained():
    model = _model()
    with pytest.raises(ValueError, match=r"from 1 to 4 .*Received: n_blocks=5"):
        kft.freeze(model, "partial", n_blocks=5)
    with pytest.raises(ValueError, match=r"from 1 to 4 .*Received: n_blocks=0"):
        kft.unfreeze_top(model, 0)
    with pytest.raises(ValueError, match="strategy.*Received: strategy='some'"):
        kft.freeze(model, "some")
    with pytest.raises(ValueError, match="only used with strategy=\"partial\""):
        kft.freeze(model, "full", n_blocks=2)
    with pytest.raises(ValueError, match="bn.*Received: bn='eval'"):
        kft.freeze(model, "full", bn="eval")
    with pytest.raises(ValueError, match=r"Unknown block\(s\) \['conv9'\]"):
        kft.set_trainable_blocks(model, ["conv9"])
    # None reached `model.layers` (AttributeError).
    for call in (kft.trainable_summary, kft.get_blocks,
                 lambda m: kft.freeze(m, "full")):
        with pytest.raises(TypeError, match=r"`model` must be a "
                           r"keras.Model. Received: model=None"):
            call(None)
    # A generator of names was read up by the check: nothing trained.
    kft.set_trainable_blocks(model, (n for n in kft.get_blocks(model)
                                     if n != "stem"))
    as_list = [v.path for v in model.trainable_weights]
    kft.set_trainable_blocks(model, [n for n in kft.get_blocks(model)
                                     if n != "stem"])
    assert as_list and as_list == [v.path for v in model.trainable_weights]


def test_trainable_summary():
    model = kft.build_classifier("simple_cnn", num_classes=10, weights=None,
                                 input_shape=SHAPE, head="mlp")
    kft.freeze(model, "partial", n_blocks=1)
    lines = kft.trainable_summary(model, print_fn=None).splitlines()
    # Printed, the text returned is not shown again by a notebook as the
    # cell's value (IPython calls `_ipython_display_` instead of its repr);
    # not printed, it is a plain string.
    printed = []
    shown = kft.trainable_summary(model, print_fn=printed.append)
    assert printed == [shown] and shown.splitlines() == lines
    assert shown._ipython_display_() is None
    assert type(kft.trainable_summary(model, print_fn=None)) is str
    rows = {line.split()[0]: line.split() for line in lines[2:-1]}
    assert rows["stem"][3:] == ["frozen", "frozen"]
    assert rows["block3"][3:] == ["trainable", "frozen"]
    assert rows["head"][3:] == ["trainable", "train"]
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    assert lines[-1] == (f"Trainable: {trainable:,} / {total:,} "
                         f"({100 * trainable / total:.1f}%)")
    # block3: conv kernel 3*3*32*64 trainable; BN gamma/beta/stats frozen.
    assert rows["block3"][1:3] == [f"{3 * 3 * 32 * 64 + 4 * 64:,}",
                                   f"{3 * 3 * 32 * 64:,}"]


def test_partial_defaults_to_the_top_block():
    model = _model()
    assert kft.freeze(model, "partial") == ["block3", "head"]
    assert kft.freeze(model, "partial", n_blocks=np.int64(2)) == [
        "block2", "block3", "head"]
    # Up to every block below the head, as the error's "from 1 to 4" says.
    assert kft.freeze(model, "partial", n_blocks=4) == [
        "stem", "block1", "block2", "block3", "head"]


def _bn_warnings(record):
    return [w for w in record if issubclass(w.category, UserWarning)
            and "weights=None" in str(w.message)]


def test_frozen_batch_norm_of_a_random_backbone_warns_once():
    model = _model()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kft.freeze(model, "feature_extraction")  # no BN trains: silent
        kft.freeze(model, "partial", bn="train")
        assert not _bn_warnings(record)
        kft.freeze(model, "partial")
        kft.freeze(model, "full")  # once per model
    [warning] = _bn_warnings(record)
    message = str(warning.message)
    assert "'kft_simple_cnn'" in message and 'bn="train"' in message
    assert warning.filename == __file__
    # Through fine_tune too (it named kft/training/fine_tune_phases.py).
    model = _model()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kft.fine_tune(model, _data(4), strategy="partial", head_epochs=1,
                      epochs=1, batch_size=4, verbose=0)
    assert [w.filename for w in _bn_warnings(record)] == [__file__]


def test_statistics_learnt_in_a_bn_train_run_are_not_called_random():
    def warnings_freezing(trained, frozen):
        # The BatchNorm warnings of freezing `frozen` (bn="frozen") after a
        # bn="train" fit of `trained`.
        model = _model()
        kft.freeze(model, trained, bn="train")
        _compile(model)
        model.fit(*_data(8), batch_size=4, epochs=1, verbose=0)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            kft.freeze(model, frozen)
        return _bn_warnings(record)

    # A notebook's next cell after a `bn="train"` phase: freezing the
    # statistics it learnt is a choice, not the init's mean 0, variance 1.
    assert not warnings_freezing("full", "partial")
    # A partial bn="train" run taught the top block only: freezing the
    # others' init statistics still warns.
    assert len(warnings_freezing("partial", "full")) == 1


def test_a_model_of_unknown_weights_does_not_warn():
    # A user's own model (kft cannot tell whether its weights are trained)
    # with BatchNorm in a training block: no "built with weights=None".
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="b1_conv")(inputs)
    x = keras.layers.BatchNormalization(name="b1_bn")(x)
    x = keras.layers.Conv2D(4, 3, name="b2_conv")(x)
    x = keras.layers.BatchNormalization(name="b2_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head_dense")(x))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert kft.freeze(model, "full", patterns={
            "b1": "b1_", "b2": "b2_", "head": "head_"}) == ["b1", "b2",
                                                            "head"]
    assert not _bn_warnings(record)


def test_pretrained_backbone_does_not_warn(tmp_path):
    path = str(tmp_path / "backbone.weights.h5")
    kft.create_backbone("simple_cnn", weights=None,
                        input_shape=SHAPE).save_weights(path)
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=path,
                                 input_shape=SHAPE)
    bare = kft.create_backbone("simple_cnn", weights=None, input_shape=SHAPE)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kft.freeze(model, "full")
        assert not _bn_warnings(record)
        kft.freeze(bare, "full")  # a bare random backbone warns too
    assert len(_bn_warnings(record)) == 1


def test_summary_calls_a_trainable_batchnorm_block_trainable():
    # A model split by its top-level layers whose first weighted layer is
    # a BatchNormalization has a block of it alone: fully trainable, it
    # read "partial".
    model = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.BatchNormalization(name="bn1"),
        keras.layers.Conv2D(4, 3, name="c1"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, name="head")])
    kft.freeze(model, "full", bn="train")
    rows = {line.split()[0]: line.split()[3] for line in
            kft.trainable_summary(model, print_fn=None).splitlines()[2:-1]}
    assert rows["bn1"] == "trainable", rows
    kft.freeze(model, "full")
    rows = {line.split()[0]: line.split()[3] for line in
            kft.trainable_summary(model, print_fn=None).splitlines()[2:-1]}
    assert rows["bn1"] == "frozen", rows


def test_feature_extraction_without_a_head_gives_a_hint_that_works():
    # The hint was patterns={"body": "^conv", "head": "^dense"}, which
    # fails on a nested backbone ("matches no block pattern").
    def model(head_name):
        image = keras.Input((16, 16, 3))
        inner = keras.Model(image, keras.layers.GlobalAveragePooling2D()(
            keras.layers.Conv2D(4, 3, name="conv")(image)), name="backbone")
        outer = keras.Input((16, 16, 3))
        return keras.Model(outer, keras.layers.Dense(2, name=head_name)(
            inner(outer)))

    with pytest.raises(ValueError, match=r"finds the blocks \['backbone', "
                       r"'dense'\] and no head\. .*a top-level layer with "
                       r"weights named \"head\" \(e\.g\. keras\.layers\.Dense"
                       r"\(3, name=\"head\"\)\)"):
        kft.freeze(model("dense"), "feature_extraction")
    assert kft.freeze(model("head"), "feature_extraction") == ["head"]
