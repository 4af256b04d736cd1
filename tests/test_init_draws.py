"""`kft.models.init_draws`: Keras' initial weights, compiled per length
bucket instead of per shape."""

import jax
import keras
import numpy as np
import pytest

import kft
from kft import _compat
from kft.models import init_draws


def _initializers():
    """Every random initializer kind, seeded and not (then from Python's
    random, which `set_random_seed` fixes)."""
    i = keras.initializers
    # Each distribution Keras draws (uniform, normal, truncated normal) with
    # and without its parameters, seeded and not, and a QR on top of a draw.
    return [i.GlorotUniform(seed=3), i.HeNormal(seed=5), i.LecunNormal(),
            i.RandomNormal(mean=0.5, stddev=2.0, seed=6),
            i.RandomUniform(-3.0, 1.0, seed=7),
            i.TruncatedNormal(mean=1.0, stddev=0.1),
            i.VarianceScaling(distribution="untruncated_normal"),
            i.Orthogonal(seed=8)]


# Below and above the shortest bucket (1,024), odd sizes, a 1x1 kernel, a
# list of numpy ints.
SHAPES = [(7,), (1, 1, 96, 24), (1280, 10), (5, 5, 1, 33),
          [np.int64(3), 3, np.int32(8), 16]]


def _draws(bucketed):
    keras.utils.set_random_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        if not bucketed:  # `bucketed_draws` then leaves Keras' own draws
            patch.setattr(init_draws, "_active", [True])
        with init_draws.bucketed_draws():
            return [np.asarray(init(shape)) for init in _initializers()
                    for shape in SHAPES
                    # Orthogonal needs a matrix.
                    if len(shape) > 1 or not isinstance(
                        init, keras.initializers.Orthogonal)]


def test_draws_are_bit_identical_to_keras_own():
    ours, theirs = _draws(True), _draws(False)
    assert len(ours) == 8 * len(SHAPES) - 1
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    # Not the same draw everywhere (the seeds matter).
    assert len({a.tobytes() for a in ours}) == len(ours)


def test_models_get_keras_own_weights():
    def weights(bucketed):
        keras.backend.clear_session()
        keras.utils.set_random_seed(1)
        with pytest.MonkeyPatch.context() as patch:
            if not bucketed:
                patch.setattr(init_draws, "_active", [True])
            model = kft.build_classifier(
                "mobilenetv3small", 5, weights=None, input_shape=(32, 32, 3),
                head="mlp")
        return [np.asarray(w) for w in model.weights]

    ours, theirs = weights(True), weights(False)
    assert len(ours) == len(theirs) > 100
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_one_compile_per_length_bucket():
    compiles = []

    def listen(event, duration, **kwargs):
        if event == _compat.backend_compile_event():
            compiles.append(duration)

    init = keras.initializers.GlorotUniform(seed=2)
    # 12 kernel shapes of 2,049-4,096 values: one bucket of 4,096.
    shapes = [(3, 3, c, 32) for c in range(8, 15)] + [
        (1, 1, c, 64) for c in range(33, 38)]
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        with init_draws.bucketed_draws():
            kernels = [init(shape) for shape in shapes]
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert len(compiles) <= 1
    assert [k.shape for k in kernels] == shapes


def test_traced_and_unusual_draws_take_keras_path():
    init = keras.initializers.HeNormal(seed=9)
    # Compiled outside as inside: a traced draw and an eager one may round
    # differently (their last bit, at XLA's optimisation level 0).
    expected = np.asarray(jax.jit(lambda: init((3, 3, 4, 8)))())
    mean = jax.numpy.asarray(1.0)
    with init_draws.bucketed_draws():
        # Traced (a compiled step, a sharded variable's jitted initializer).
        traced = jax.jit(lambda: init((3, 3, 4, 8)))()
        # A tensor parameter and a float16 draw.
        shifted = keras.random.normal((4,), mean=mean, seed=1)
        half = keras.random.uniform((4,), dtype="float16", seed=1)
        # float16 normal draws too (a "float16" dtype policy): they came
        # back float32, of other values.
        halves = [draw((5, 7), dtype="float16", seed=3) for draw in (
            keras.random.normal, keras.random.truncated_normal)]
    np.testing.assert_array_equal(np.asarray(traced), expected)
    for got, draw in zip(halves, (keras.random.normal,
                                  keras.random.truncated_normal)):
        assert got.dtype == "float16"
        np.testing.assert_array_equal(
            np.asarray(got), np.asarray(draw((5, 7), dtype="float16",
                                             seed=3)))
    np.testing.assert_array_equal(
        np.asarray(shifted), np.asarray(keras.random.normal((4,), mean=mean,
                                                            seed=1)))
    assert half.dtype == "float16"
    np.testing.assert_array_equal(
        np.asarray(half),
        np.asarray(keras.random.uniform((4,), dtype="float16", seed=1)))


def test_keras_functions_are_swapped_only_inside_and_only_when_exact():
    module = _compat.keras_jax_random()
    original = module.normal
    with init_draws.bucketed_draws():
        assert module.normal is not original
        with init_draws.bucketed_draws():  # nested: no second swap
            assert module.normal is not original
        assert module.normal is not original
    assert module.normal is original
    # Without partitionable threefry a prefix of a longer draw is another
    # draw: Keras' path.
    jax.config.update("jax_threefry_partitionable", False)
    try:
        with init_draws.bucketed_draws():
            assert module.normal is original
    finally:
        jax.config.update("jax_threefry_partitionable", True)
    with pytest.raises(RuntimeError), init_draws.bucketed_draws():
        raise RuntimeError("restored on errors too")
    assert module.normal is original


@pytest.mark.parametrize("initializer", [
    keras.initializers.RandomUniform(seed=3),
    keras.initializers.RandomNormal(seed=3),
    keras.initializers.TruncatedNormal(seed=3)])
def test_a_drawn_weight_does_not_keep_its_bucket_alive(initializer):
    """16,400 values come from a bucket of 32,768: only the weight may stay
    in memory (a view kept ConvNeXt-tiny's 190 MiB of buckets alive)."""
    import gc

    def live_bytes():
        gc.collect()
        return sum(a.nbytes for a in jax.live_arrays())

    before = live_bytes()
    with init_draws.bucketed_draws():
        weight = initializer((1025, 16))
    grown = live_bytes() - before
    assert weight.nbytes <= grown <= 1.5 * weight.nbytes
