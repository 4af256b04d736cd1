"""Model parallel layout maps, meshes, and what a data-parallel step sends.

The multi-device checks run once, in one subprocess with 8 simulated CPU
devices (this file run as a script): a process reads `XLA_FLAGS` once, and
the test process must keep its single device.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kft
from kft.distributed import collective_bytes

SIZE, BATCH, CLASSES, DEVICES = 16, 8, 3, 8


def _fake_mesh(shape=(2, 4)):
    # A mesh over placeholder devices: layout maps only read its shape.
    devices = [f"device{i}" for i in range(int(np.prod(shape)))]
    return kft.device_mesh(shape, devices=devices)


@pytest.fixture(scope="module")
def small_model():
    inputs = keras.Input((8, 8, 8))
    x = keras.layers.Conv2D(64, 3, name="wide_conv")(inputs)
    x = keras.layers.Conv2D(6, 3, name="odd_conv")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw", depth_multiplier=4)(x)
    x = keras.layers.Conv2D(2, 1, name="tiny_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(12, name="head_fc")(x)
    outputs = keras.layers.Dense(3, name="head_dense")(x)
    return keras.Model(inputs, outputs)


def test_layout_map_splits_kernels_by_kind(small_model):
    layouts = kft.layout_map(small_model, _fake_mesh(), min_size=200)
    axes = {path: layouts[path].axes for path in layouts}
    assert axes == {
        # Output channels of a convolution.
        "wide_conv/kernel": (None, None, None, "model"),
        # 6 output channels do not split 4 ways: the 8 input channels do.
        "odd_conv/kernel": (None, None, "model", None),
        # Depthwise: the channels (6) do not split, the multiplier (4) does.
        "dw/kernel": (None, None, None, "model"),
        # Heads, whatever their size: along their input features (12)...
        "head_dense/kernel": ("model", None),
        # ... unless those (2) do not split: then the 12 outputs.
        "head_fc/kernel": (None, "model"),
    }
    # Biases and the small kernel are replicated.
    assert layouts["wide_conv/bias"] is None
    assert layouts["tiny_conv/kernel"] is None
    assert layouts.device_mesh.shape == (2, 4)


def test_layout_map_depthwise_channels_and_threshold():
    inputs = keras.Input((8, 8, 16))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(8, 1, name="pw")(x))
    layouts = kft.layout_map(model, _fake_mesh(), min_size=100)
    assert layouts["dw/kernel"].axes == (None, None, "model", None)
    assert layouts["pw/kernel"].axes == (None, None, None, "model")
    assert len(kft.layout_map(model, _fake_mesh(), min_size=145)) == 0
    # "At least `min_size`": a kernel of exactly that size (dw: 144) splits.
    assert list(kft.layout_map(model, _fake_mesh(), min_size=144)) == [
        "dw/kernel"]
    # Both the channels (8) and the multiplier (4) split: the channels do.
    inputs = keras.Input((8, 8, 8))
    both = keras.Model(inputs, keras.layers.DepthwiseConv2D(
        3, depth_multiplier=4, name="dw4")(inputs))
    assert kft.layout_map(both, _fake_mesh(), min_size=1)[
        "dw4/kernel"].axes == (None, None, "model", None)
    # A mesh given as a shape gets the axis named by `model_axis`.
    tensor = kft.layout_map(model, (1, 1), model_axis="tensor", min_size=100)
    assert tensor.device_mesh.axis_names == ["batch", "tensor"]
    assert tensor["dw/kernel"].axes == (None, None, "tensor", None)


def test_layout_map_from_name_matches_classifier():
    model = kft.build_classifier("simple_cnn", num_classes=CLASSES,
                                 weights=None, input_shape=(SIZE, SIZE, 3))
    by_name = kft.layout_map("simple_cnn", _fake_mesh(), min_size=4000)
    by_model = kft.layout_map(model, _fake_mesh(), min_size=4000)
    assert sorted(by_model) == ["block2_conv/kernel", "block3_conv/kernel",
                                "head_dense/kernel"]
    # By name, the MLP head's first layer is covered too.
    assert sorted(by_name) == sorted([*by_model, "head_fc/kernel"])
    assert all(by_name[p].axes == by_model[p].axes for p in by_model)
    # An MLP head of 50 hidden units: head_dense's input does not split 4
    # ways (the map by name split it, and the build in the scope raised
    # JAX's IndivisibleError); by model it is replicated too.
    mlp = dict(head="mlp", hidden_units=50)
    by_model = kft.layout_map(kft.build_classifier(
        "simple_cnn", num_classes=CLASSES, weights=None,
        input_shape=(SIZE, SIZE, 3), **mlp), _fake_mesh(), min_size=4000)
    by_name = kft.layout_map("simple_cnn", _fake_mesh(), min_size=4000,
                             hidden_units=50)
    assert "head_dense/kernel" not in sorted(by_name)
    assert sorted(by_name) == sorted(by_model)
    assert all(by_name[p].axes == by_model[p].axes for p in by_model)
    # A model axis of 3: the backbone's 64 features do not split 3 ways,
    # so head_fc stays replicated (split, the build raised as above).
    three = kft.layout_map("simple_cnn", _fake_mesh((1, 3)), min_size=4000)
    assert "head_fc/kernel" not in sorted(three)  # (`in` a LayoutMap: True)
    with pytest.raises(ValueError, match="hidden_units"):
        kft.layout_map("simple_cnn", _fake_mesh(), hidden_units=0)


def test_device_mesh_errors(small_model):
    with pytest.raises(ValueError, match=r"as many devices as there are "
                       r"\(1: .*shape=\(2, 4\) \(8 devices\).*"
                       r"device_count=8"):
        kft.device_mesh((2, 4))
    with pytest.raises(ValueError, match=r"\(4: .*shape=\(2, 4\) "
                       r"\(8 devices\)"):
        kft.device_mesh((2, 4), devices=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="axis_names"):
        kft.device_mesh((1, 1), axis_names=("batch",))
    with pytest.raises(TypeError, match="shape"):
        kft.device_mesh(4)
    with pytest.raises(ValueError, match=r"`shape` must be a non-empty"):
        kft.device_mesh([])
    # A device count: "'int' object is not iterable"; a NumPy shape was
    # refused as not a sequence.
    with pytest.raises(TypeError, match=r"`devices` must be a list of "
                       r"devices .*Received: devices=2"):
        kft.device_mesh((1, 1), devices=2)
    assert kft.device_mesh(np.array([1, 1])).shape == (1, 1)
    with pytest.raises(ValueError, match=r"model_axis.*\('batch', 'model'\)"
                       r".*model_axis='tensor'"):
        kft.layout_map(small_model, _fake_mesh(), model_axis="tensor")
    with pytest.raises(ValueError, match="min_size"):
        kft.layout_map(small_model, _fake_mesh(), min_size=0)
    with pytest.raises(TypeError, match="model"):
        kft.layout_map(3, _fake_mesh())
    # An unbuilt model gave an empty map without a word.
    unbuilt = keras.Sequential([keras.layers.Dense(4)])
    with pytest.raises(ValueError, match=r"`model` must be a built model"):
        kft.layout_map(unbuilt, _fake_mesh())


def test_collective_bytes_parses_hlo():
    text = "\n".join([
        "%a = (f32[2,3]{1,0}, /*index=5*/bf16[4]{0}) all-reduce(%x, %y)",
        "%b = f32[8]{0} all-gather-start(%z), dimensions={0}",
        "%c = f32[8]{0} all-gather-done(%b)",
        "%d = s32[] all-reduce(%w), to_apply=%sum",
        "%e = f32[2]{0} reduce-scatter(%v), dimensions={0}",
        "%f = f32[64]{0} add(%p, %q)",
        # Two operations of one shape are two (not one pair), and every
        # kind, predicates included, counts in the total.
        "%g = s32[] all-reduce(%u), to_apply=%sum",
        "%h = f32[2]{0} all-to-all(%t), dimensions={0}",
        "%i = pred[3]{0} collective-permute(%s), source_target_pairs={{0,1}}",
    ])
    counts = collective_bytes(text)
    assert counts["all-reduce"] == {"bytes": 24 + 8 + 4 + 4, "ops": 3}
    assert counts["all-gather"] == {"bytes": 32, "ops": 1}
    assert counts["reduce-scatter"] == {"bytes": 8, "ops": 1}
    assert counts["all-to-all"] == {"bytes": 8, "ops": 1}
    assert counts["collective-permute"] == {"bytes": 3, "ops": 1}
    assert counts["total_bytes"] == 40 + 32 + 8 + 8 + 3


@pytest.fixture(scope="module")
def eight_devices():
    env = dict(os.environ,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
    run = subprocess.run([sys.executable, __file__], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_model_and_data_parallel_match_one_device(eight_devices):
    single = eight_devices["single"]
    assert single["moved"] > 1e-3  # the weights did change
    for mode in ("data", "model"):
        result = eight_devices[mode]
        # Same sums in another order: float32 rounding only.
        assert result["max_weight_diff"] < 1e-6 * max(1, single["scale"])
        np.testing.assert_allclose(result["losses"], single["losses"],
                                   rtol=1e-5)
    # The layout map did split the kernels it names (but the MLP head's,
    # absent from this linear-head model), 4 ways, over the model axis.
    assert eight_devices["model"]["split"] == 3
    assert eight_devices["model"]["parts"] == [4]
    # `train_step_hlo` keeps the state's shardings, as `fit`'s step does:
    # each split kernel stays split and is gathered for the forward pass
    # (without them XLA chose replicated outputs: 1 all-gather instead of
    # 13 here, not the program `fit` runs).
    assert eight_devices["model"]["all_gathers"] >= 3
    assert eight_devices["data"]["split"] == 0


def test_frozen_blocks_send_no_gradients(eight_devices):
    full, partial = eight_devices["full"], eight_devices["partial"]
    # Every trainable byte is all-reduced once, plus the same few scalars
    # (the loss); frozen blocks add nothing.
    assert full["all_reduce"] - full["trainable"] == (
        partial["all_reduce"] - partial["trainable"])
    assert 0 <= full["all_reduce"] - full["trainable"] <= 16
    assert full["all_reduce"] - partial["all_reduce"] == (
        full["trainable"] - partial["trainable"]) > 0
    assert full["other"] == partial["other"] == 0


# -- the 8-device process -----------------------------------------------------

def _build(backbone_kwargs):
    model = kft.build_classifier("simple_cnn", num_classes=CLASSES,
                                 weights=None, input_shape=(SIZE, SIZE, 3))
    kft.freeze(model, **backbone_kwargs)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _train(distribution, initial, batches):
    keras.backend.clear_session()
    if distribution is None:
        model = _build({"strategy": "full", "bn": "train"})
    else:
        with distribution.scope():
            model = _build({"strategy": "full", "bn": "train"})
    if initial is not None:
        model.set_weights(initial)
    start = [np.asarray(w) for w in model.get_weights()]
    losses = [float(model.train_on_batch(x, y)) for x, y in batches]
    return model, start, losses


def _split(model):
    """How many variables are split, and into how many parts each."""
    parts = [int(np.prod(v.shape)) // int(np.prod(
        v.value.sharding.shard_shape(v.shape))) for v in model.variables]
    return sum(p > 1 for p in parts), sorted({p for p in parts if p > 1})


def _nbytes(variables):
    return int(sum(v.value.size * v.value.dtype.itemsize for v in variables))


def _main():
    from kft.distributed import train_step_hlo

    assert len(keras.distribution.list_devices()) == DEVICES
    rng = np.random.default_rng(0)
    batches = [(rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)).astype("float32"),
                rng.integers(0, CLASSES, BATCH)) for _ in range(2)]
    model, initial, losses = _train(None, None, batches)
    reference = model.get_weights()
    out = {"single": {
        "losses": losses,
        "moved": max(float(np.abs(a - b).max())
                     for a, b in zip(reference, initial)),
        "scale": max(float(np.abs(w).max()) for w in reference)}}
    layouts = kft.layout_map("simple_cnn", kft.device_mesh((2, 4)),
                             min_size=4000)
    distributions = {
        "data": keras.distribution.DataParallel(
            devices=keras.distribution.list_devices()),
        "model": keras.distribution.ModelParallel(
            layout_map=layouts, batch_dim_name="batch"),
    }
    for mode, distribution in distributions.items():
        model, _, losses = _train(distribution, initial, batches)
        out[mode] = {
            "losses": losses, "split": int(_split(model)[0]),
            "parts": _split(model)[1],
            "max_weight_diff": max(
                float(np.abs(a - b).max())
                for a, b in zip(model.get_weights(), reference))}
        if mode == "model":
            with distribution.scope():
                counts = collective_bytes(train_step_hlo(model, *batches[0]))
            out[mode]["all_gathers"] = counts["all-gather"]["ops"]
        if mode == "data":
            data_model = model
    # What the data-parallel step all-reduces: all trainable, then partial
    # (BatchNorm frozen in both, so only gradients are reduced).
    x, y = batches[0]
    with distributions["data"].scope():
        for strategy in ("full", "partial"):
            kft.freeze(data_model, strategy)  # re-targets the optimizer
            counts = collective_bytes(train_step_hlo(data_model, x, y))
            out[strategy] = {
                "all_reduce": counts["all-reduce"]["bytes"],
                "other": counts["total_bytes"] - counts["all-reduce"]["bytes"],
                "trainable": _nbytes(data_model.trainable_variables)}
    print(json.dumps(out))


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")  # random-init BatchNorm warnings
    keras.utils.set_random_seed(0)
    _main()


def test_layout_map_never_splits_a_convolution_window():
    # With a model axis of 3 no channel count of a 3x3 kernel divides:
    # its height was split, and compiled steps on a (2, 3) mesh gave wrong
    # numbers (2x logits).
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(9, 3, name="ok")(x))
    layouts = kft.layout_map(model, _fake_mesh((2, 3)), min_size=1)
    assert layouts["conv/kernel"] is None
    assert layouts["ok/kernel"].axes == (None, None, None, "model")
    resnet = kft.layout_map("resnet50", _fake_mesh((2, 3)))
    for path in resnet:
        axes = resnet[path].axes
        assert axes[:-2] == (None,) * (len(axes) - 2), (path, axes)
