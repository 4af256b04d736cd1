"""The mixing layers under JAX transforms: a direct call cannot carry the
seed state, so it must raise before touching it; `stateless_call` carries
it and draws anew on every call."""

import jax
import numpy as np
import pytest

from kft.layers import CutMix, MixUp, MixUpOrCutMix

LAYERS = {
    "mixup": lambda: MixUp(1.0, num_classes=4, seed=5),
    "cutmix": lambda: CutMix(1.0, num_classes=4, seed=5),
    "both": lambda: MixUpOrCutMix(num_classes=4, seed=5),
}


def _batch():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    return images, np.array([0, 1, 2, 3])


def _seed_state(layer):
    value = layer.seed_generator.state.value
    assert not isinstance(value, jax.core.Tracer)
    return np.asarray(value)


def _assert_differ(a, b):
    assert not all(np.array_equal(np.asarray(x), np.asarray(y))
                   for x, y in zip(a, b))


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_direct_call_under_jit_raises_and_leaves_the_layer_usable(kind):
    layer = LAYERS[kind]()
    images, labels = _batch()
    mix = jax.jit(lambda x, y: layer((x, y)))
    with pytest.raises(RuntimeError, match=r"(?s)jax\.jit.*stateless_call"
                                           r".*batch_augment=layer"):
        mix(images, labels)
    # Raised before any draw: the seed state is untouched, not a tracer.
    np.testing.assert_array_equal(_seed_state(layer), [5, 0])
    first = layer((images, labels))
    second = layer((images, labels))
    _assert_differ(first, second)
    assert _seed_state(layer)[1] > 0


def test_direct_call_under_other_transforms_raises():
    layer = MixUp(1.0, num_classes=4, seed=5)
    images, labels = _batch()
    with pytest.raises(RuntimeError, match="stateless_call"):
        jax.grad(lambda x: layer((x, labels))[0].sum())(images)
    with pytest.raises(RuntimeError, match="stateless_call"):
        jax.vmap(lambda x: layer((x, labels)))(images[None])
    np.testing.assert_array_equal(_seed_state(layer), [5, 0])


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_stateless_call_under_jit_draws_anew_when_the_state_is_threaded(
        kind):
    layer = LAYERS[kind]()
    images, labels = _batch()

    @jax.jit
    def mix(state, images, labels):
        return layer.stateless_call([], state, (images, labels))

    state = [v.value for v in layer.non_trainable_variables]
    first, state = mix(state, images, labels)
    second, state = mix(state, images, labels)
    _assert_differ(first, second)
    np.testing.assert_array_equal(_seed_state(layer), [5, 0])
    # Written back, the state continues eagerly where jit left it: the next
    # eager call is the third draw of a fresh layer with the same seed.
    for variable, value in zip(layer.non_trainable_variables, state):
        variable.assign(value)
    third = layer((images, labels))
    fresh = LAYERS[kind]()
    for _ in range(2):
        fresh((images, labels))
    for a, b in zip(third, fresh((images, labels))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                                   atol=1e-4)
