"""Tests for re-targeting plain Keras optimizers when the trainable set
changes: the shared-step-counter warning, shared optimizer state, and
`changing_trainable` when its body raises."""

import math
import warnings

import kft  # noqa: F401  (selects the JAX backend before keras)
import keras
import numpy as np
import pytest

from kft.optimizers import BlockwiseOptimizer


def _vars(*names):
    return [keras.Variable(np.zeros(3, "float32"), name=n) for n in names]


def _shared_step_warnings(record):
    return [w for w in record if issubclass(w.category, UserWarning)
            and "one step counter" in str(w.message)]


def _stepped(optimizer, variables, steps):
    optimizer.build(variables)
    for _ in range(steps):
        optimizer.apply([np.ones(3, "float32")] * len(variables), variables)
    return optimizer


def _adam_factor(t, b1=0.9, b2=0.999):
    return (1 - b1) * math.sqrt(1 - b2**t) / ((1 - b1**t) * math.sqrt(1 - b2))


@pytest.mark.parametrize("make", [
    lambda: keras.optimizers.Adam(1e-3, epsilon=1e-12),
    lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.0, epsilon=1e-12),
    lambda: keras.optimizers.Adamax(1e-3, epsilon=1e-12),
    lambda: keras.optimizers.Nadam(1e-3, epsilon=1e-12),
    # Its Adam path (the 1-D variables here) reads the step counter too.
    lambda: keras.optimizers.Muon(1e-3, epsilon=1e-12),
], ids=["adam", "adamw", "adamax", "nadam", "muon"])
def test_plain_adam_family_warns_once_with_the_true_first_update(make):
    """Variables added after 1000 steps: one warning per optimizer, whose
    factor is the measured size of their first update over the rate."""
    a, b, c = _vars("a", "b", "c")
    opt = _stepped(make(), [a], 3)
    opt.iterations.assign(1000)  # Only the added variables' step matters.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kft.retarget_optimizer(opt, [a, b])
        kft.retarget_optimizer(opt, [a, b, c])
    [warning] = _shared_step_warnings(record)
    assert warning.filename == __file__  # was kft/training/state.py
    message = str(warning.message)
    assert "kft.BlockwiseOptimizer(keras.optimizers." in message
    assert "'b'" in message and "after 1000 steps" in message
    factor = float(message.split("first update will be ")[1].split("x")[0])
    opt.apply([np.ones(3, "float32"), np.array([1, -2, 3], "float32"),
               np.ones(3, "float32")], [a, b, c])
    np.testing.assert_allclose(np.abs(b.numpy()) / 1e-3, factor, rtol=5e-3)
    if isinstance(opt, (keras.optimizers.Adam, keras.optimizers.Muon)):
        assert factor == pytest.approx(_adam_factor(1001), abs=5e-3)
        assert factor == pytest.approx(2.52, abs=5e-3)


def test_adam_inside_loss_scale_optimizer_warns():
    a, b = _vars("a", "b")
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3))
    opt.build([a])
    opt.inner_optimizer.iterations.assign(2)  # As after two finite steps.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kft.retarget_optimizer(opt, [a, b])
    assert len(_shared_step_warnings(record)) == 1


def test_schedule_free_adamw_warns_without_a_factor():
    a, b = _vars("a", "b")
    opt = _stepped(keras.optimizers.ScheduleFreeAdamW(1e-3), [a], 3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kft.retarget_optimizer(opt, [a, b])
    [warning] = _shared_step_warnings(record)
    assert "first updates will be mis-scaled" in str(warning.message)


@pytest.mark.parametrize("case", ["sgd", "blockwise", "step_zero",
                                  "removed_only", "muon_kernel"])
def test_no_shared_step_warning(case):
    a, b = _vars("a", "b")
    if case == "sgd":
        opt, old, new = keras.optimizers.SGD(0.1, momentum=0.9), [a], [a, b]
    elif case == "muon_kernel":  # its Newton-Schulz path counts no steps
        kernel = keras.Variable(np.zeros((3, 2), "float32"), name="k")
        opt, old, new = keras.optimizers.Muon(1e-3), [a], [a, kernel]
    elif case == "blockwise":
        opt = BlockwiseOptimizer(keras.optimizers.Adam(1e-3), {"^a$": 1e-4})
        old, new = [a], [a, b]
    elif case == "step_zero":
        opt, old, new = keras.optimizers.Adam(1e-3), [a], [a, b]
    else:
        opt, old, new = keras.optimizers.Adam(1e-3), [a, b], [a]
    _stepped(opt, old, 0 if case == "step_zero" else 2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kft.retarget_optimizer(opt, new)
    assert not _shared_step_warnings(record)


def test_retarget_keeps_nadam_shared_state_tracked():
    """Nadam's `_u_product` (shared momentum-schedule product) keeps its
    value and stays among the optimizer's variables (saved, and carried as
    state through the compiled step)."""
    a, b = _vars("a", "b")
    opt = _stepped(keras.optimizers.Nadam(1e-3), [a], 3)
    product = float(opt._u_product.numpy())
    assert product < 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kft.retarget_optimizer(opt, [a, b])
    assert float(opt._u_product.numpy()) == pytest.approx(product)
    assert any(v is opt._u_product for v in opt.variables)


def test_changing_trainable_refreshes_when_body_raises():
    """A flag flipped before the body raised still re-targets the optimizer
    and the compiled step: the next step trains exactly the new set."""
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3))
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    y = np.arange(8) % 3
    model.train_on_batch(x, y)
    conv = model.get_layer("simple_cnn").get_layer("block3_conv")
    with pytest.raises(RuntimeError, match="body failed"):
        with kft.changing_trainable(model):
            conv.trainable = False
            raise RuntimeError("body failed")
    tracked = model.optimizer._trainable_variables
    assert [id(v) for v in tracked] == [
        id(v) for v in model.trainable_variables]
    assert id(conv.kernel) not in {id(v) for v in tracked}
    frozen = np.array(conv.kernel.numpy())
    before = [np.array(v.numpy()) for v in model.trainable_variables]
    model.train_on_batch(x, y)
    np.testing.assert_array_equal(conv.kernel.numpy(), frozen)
    moved = [not np.array_equal(v.numpy(), b)
             for v, b in zip(model.trainable_variables, before)]
    assert all(moved), [v.path for v, m in zip(model.trainable_variables,
                                                moved) if not m]


def test_plain_optimizer_with_ema_averages_added_variables_from_their_value():
    """A plain Keras optimizer with `use_ema` re-targeted after steps:
    an added variable's average starts at its value (Keras' `build`
    starts it at zero and then only blends into it, so `fit`'s final
    write of the averages shrank a block unfrozen mid-fit by
    1 - momentum**steps); the kept averages stay as they were."""
    a = keras.Variable(np.full(3, 2.0, "float32"), name="a")
    b = keras.Variable(np.array([1.0, -2.0, 3.0], "float32"), name="b")
    opt = keras.optimizers.SGD(0.25, use_ema=True, ema_momentum=0.9)
    _stepped(opt, [a], 4)
    kept = opt._model_variables_moving_average[0].numpy().copy()
    # `a` moved (2 -> 1, its average 1.61): a kept average restarted at
    # its variable's value (1.0) lost the steps' average.
    assert not np.allclose(kept, a.numpy())
    kft.retarget_optimizer(opt, [a, b])
    averages = opt._model_variables_moving_average
    np.testing.assert_array_equal(averages[0].numpy(), kept)
    np.testing.assert_array_equal(averages[1].numpy(), b.numpy())
    for _ in range(4):
        opt.apply([np.zeros(3, "float32")] * 2, [a, b])
    opt.finalize_variable_values([a, b])
    np.testing.assert_allclose(b.numpy(), [1.0, -2.0, 3.0], rtol=1e-6)


def test_plain_ema_optimizer_keeps_a_block_unfrozen_inside_fit():
    """The user's path: `GradualUnfreezing` in `fit` with a plain
    optimizer with `use_ema`, a rate too small to move weights."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, 4)
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3))
    kernel = model.get_layer("simple_cnn").get_layer("block3_conv").kernel
    before = kernel.numpy().copy()
    model.compile(keras.optimizers.SGD(1e-12, use_ema=True, ema_momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, shuffle=False,
              callbacks=[kft.callbacks.GradualUnfreezing(every=1, verbose=0)])
    assert kernel.trainable
    np.testing.assert_allclose(kernel.numpy(), before, rtol=1e-5, atol=1e-7)


def _two_streams():
    """Two sub-models built with the same layer names, as two
    `keras.applications` backbones are: their variables share paths."""
    def stream(name):
        image = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="conv")(image)
        x = keras.layers.BatchNormalization(name="bn")(x)
        return keras.Model(image, keras.layers.GlobalAveragePooling2D()(x),
                           name=name)

    image = keras.Input((8, 8, 3))
    features = keras.layers.Concatenate()([stream("rgb")(image),
                                           stream("depth")(image)])
    return keras.Model(image, keras.layers.Dense(2, name="head")(features))


def _kernels(model):
    return [model.get_layer(n).get_layer("conv").kernel
            for n in ("rgb", "depth")] + [model.get_layer("head").kernel]


def test_two_streams_of_one_path_train_at_their_own_rates_and_slots():
    # kft matched slots and groups by variable path: a trainable-set
    # change gave the rgb stream the depth stream's Adam moments, and
    # BlockwiseOptimizer(model=) refused the model ("matched by two
    # groups").
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 8, 8, 3)), np.array([0, 1, 0, 1])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    plain, routed = _two_streams(), _two_streams()
    routed.set_weights(plain.get_weights())
    assert [v.path for v in _kernels(plain)][:2] == ["conv/kernel"] * 2
    # depth takes the default: it fell back to its path, rgb's group.
    rates = {"rgb": 0.1, "head": 1.0}
    for model, optimizer in (
            (plain, keras.optimizers.SGD(1.0)),
            (routed, BlockwiseOptimizer(keras.optimizers.SGD(1.0), rates,
                                        default=0.01, model=routed))):
        kft.freeze(model, "full")
        model.compile(optimizer, loss)
    before = [np.array(v) for v in _kernels(plain)]
    plain.train_on_batch(x, y)
    routed.train_on_batch(x, y)
    for rate, start, a, b in zip((0.1, 0.01, 1.0), before, _kernels(plain),
                                 _kernels(routed)):
        np.testing.assert_allclose(np.array(b) - start,
                                   rate * (np.array(a) - start),
                                   rtol=1e-4, atol=1e-7)
    # A config keeps groups by path: a loaded copy cannot tell them apart.
    with pytest.warns(UserWarning, match=r"variables of one path are in "
                      r"different groups \(6 paths, e\.g\. 'bn/beta'"):
        routed.optimizer.get_config()
    # Adam's moments follow their variables when the trainable set grows.
    model = _two_streams()
    kft.freeze(model, "full", bn="frozen")
    model.compile(keras.optimizers.Adam(1e-2), loss)
    model.fit(x, y, epochs=1, verbose=0)
    adam = model.optimizer
    moments = {id(v): np.array(adam._momentums[
        adam._get_variable_index(v)]) for v in _kernels(model)}
    assert not np.array_equal(*list(moments.values())[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Adam's shared step counter
        kft.freeze(model, "full", bn="train")
    for v in _kernels(model):
        np.testing.assert_array_equal(
            adam._momentums[adam._get_variable_index(v)], moments[id(v)])


@pytest.mark.parametrize("make,add", [
    # Its own 2 variables and 2 tracked, reordered.
    (lambda: keras.optimizers.SGD(0.01), False),
    (lambda: keras.optimizers.SGD(0.01, momentum=0.9), True),
    (lambda: keras.optimizers.Muon(0.01), True),  # None in adam_velocities
    (lambda: keras.optimizers.Adam(0.01, gradient_accumulation_steps=2),
     True)])
def test_retarget_keeps_slots_and_the_optimizers_own_state(make, add):
    # A list of the optimizer's own variables as long as the tracked ones
    # was taken for slots (SGD's rate became its step count, 5.0); Muon's
    # list with None entries was dropped (its Adam velocities reset); an
    # Adam accumulating gradients crashed reading its step count. Kept
    # variables step on as if nothing had been added.
    from kft.training.state import retarget_optimizer

    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=s).astype("float32") for s in ((3,), (3, 3))]
             for _ in range(10)]

    def run(retarget):
        bias = keras.Variable(np.ones(3, "float32"), name="bias")
        kernel = keras.Variable(np.ones((3, 3), "float32"), name="kernel")
        optimizer = make()
        tracked = [bias, kernel]
        optimizer.build(tracked)
        for step, grad in enumerate(grads):
            if retarget and step == 4:
                added = keras.Variable(np.ones(3, "float32"), name="bias")
                tracked = [kernel, added, bias] if add else [kernel, bias]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Adam's step counter
                    retarget_optimizer(optimizer, tracked)
            values = {id(bias): grad[0], id(kernel): grad[1]}
            optimizer.apply([values.get(id(v), np.zeros(v.shape, "float32"))
                             for v in tracked], tracked)
        return optimizer, np.array(bias), np.array(kernel)

    (optimizer, *kept), (_, *reference) = run(True), run(False)
    for got, want in zip(kept, reference):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)


def test_freeze_after_fit_with_gradient_accumulation():
    # AttributeError: 'ArrayImpl' object has no attribute 'value' (the
    # step count is an array under gradient accumulation).
    model = _two_streams()
    kft.freeze(model, "partial", n_blocks=1)
    model.compile(keras.optimizers.Adam(1e-2, gradient_accumulation_steps=2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.zeros((8, 8, 8, 3)), np.arange(8) % 2, batch_size=2,
              verbose=0)
    with pytest.warns(UserWarning, match="one step counter") as caught:
        assert kft.freeze(model, "full") == ["rgb", "depth", "head"]
    # At the user's freeze (it named kft/training/state.py).
    assert [w.filename for w in _shared_step_warnings(caught)] == [__file__]


def test_penalties_refuse_repeated_paths_and_say_how_to_fix():
    # One stream was anchored to the other's weights: L2-SP was 7,507
    # right after binding on two MobileNetV3Small streams.
    model = _two_streams()
    advice = (r"has 4 paths held by several variables \(e\.g\. \['bn/"
              r"gamma'.*keras\.name_scope\(\"rgb\"\)")
    with pytest.raises(ValueError, match=r"kft\.regularize\(L2SP.*" + advice):
        kft.regularize(model, kft.L2SP(1.0))
    with pytest.raises(ValueError, match="estimate_fisher keeps .*" + advice):
        kft.estimate_fisher(model, (np.zeros((2, 8, 8, 3)), [0, 1]))
    with keras.name_scope("rgb"):  # the fix the message gives
        image = keras.Input((8, 8, 3))
        rgb = keras.Model(image, keras.layers.Conv2D(4, 3, name="conv")(
            image), name="rgb")
    assert rgb.weights[0].path == "rgb/conv/kernel"
