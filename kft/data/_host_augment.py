"""`HostAugmenter`: a Keras augmentation model run in the input pipeline.

The pipeline augments numpy batches on the host, on a CPU device, so the
accelerator (if any) is left to the training step.
"""

import threading

import jax
import keras
import numpy as np


def has_effect(augmentation):
    """Whether an augmentation model has a layer other than `Identity`."""
    return augmentation is not None and any(
        not isinstance(layer, keras.layers.Identity)
        for layer in augmentation.layers)


def _stateless_apply(layer):
    """`(state, images) -> (images, state)` for one augmentation layer."""

    def apply(state, images):
        # uint8 batches are cast here, after the copy: 4x less to copy.
        images = images.astype("float32")
        return layer.stateless_call([], state, images, training=True)

    return apply


class HostAugmenter:
    """Runs a Keras augmentation model on numpy batches, jit-compiled.

    Each layer is compiled on its own and runs through `stateless_call`,
    its seed state carried explicitly; a lock serializes pipeline threads.
    Compiling the whole model as one program runs several times slower on
    CPU: XLA fuses a resampling layer's gathers into the next layer's
    loops.

    Everything runs on the first CPU device, whatever JAX's default device
    is, so on a GPU machine host augmentation stays off the GPU.

    Args:
        model: A Keras model of augmentation layers (a preset).
    """

    def __init__(self, model, seed=None):
        self.model = model
        # This process's: `jax.devices` lists every process's devices.
        self.device = jax.local_devices(backend="cpu")[0]
        self._lock = threading.Lock()
        self._states = {}
        self._functions = None
        self._seed = seed

    def fork(self, seed=None):
        """Another augmenter of the same model (its compiled layers
        shared) that draws on without moving this one's seed states: from
        where this one is, or, given `seed`, from the model's initial
        states moved by `seed` (the same draws whatever ran before)."""
        with self._lock:
            other = HostAugmenter(self.model, seed)
            other._functions = self._functions
            if seed is None:
                other._seed = self._seed
                other._states = {stream: list(states) for stream, states
                                 in self._states.items()}
        return other

    def _compile(self, shape):
        if not self.model.built:
            self.model.build((None,) + shape[1:])
        self._functions = [jax.jit(_stateless_apply(layer))
                           for layer in self.model.layers]

    def _initial_states(self, stream, pass_number=0):
        # The seed states were created on the default device; committed to
        # the CPU device, they keep every compiled call there.
        states = jax.device_put(
            [[_local(v.value) for v in layer.non_trainable_variables]
             for layer in self.model.layers], self.device)
        # Another seed per stream (processes reading their slices of each
        # global batch must not repeat each other's draws), per `with_seed`
        # seed, and per pass.
        for amount, step in ((stream, _STREAM_STEP),
                             (self._seed or 0, _SEED_STEP),
                             (pass_number, _PASS_STEP)):
            if amount:
                states = [[_offset_seed(state, amount, step)
                           for state in layer] for layer in states]
        return states

    def augment(self, images, stream=0, pass_states=None):
        """Augments a batch; returns a JAX array on `self.device`.

        `stream` (a process' shard index) draws from a seed of its own.
        `pass_states` (from `pass_states`) holds the seed states of one pass
        over a dataset; without it the draws go on from the last call's.
        """
        with self._lock, jax.default_device(self.device):
            if self._functions is None:
                self._compile(images.shape)
            running = self._states if pass_states is None else pass_states
            if stream not in running:
                running[stream] = self._initial_states(
                    stream, getattr(pass_states, "number", 0))
            states = running[stream]
            outputs = jax.device_put(images, self.device)
            for i, function in enumerate(self._functions):
                outputs, states[i] = function(states[i], outputs)
        return outputs

    def __call__(self, images, stream=0, pass_states=None):
        """Augments a numpy batch; returns a numpy array."""
        return np.asarray(self.augment(images, stream, pass_states))

    @staticmethod
    def pass_states(number):
        """Seed states of pass `number` over a dataset, made at its first
        batch: a pass draws the same transforms whatever earlier passes
        read. Keras' `fit` reads a batch of a pass to build the model and
        drops it; the pipeline's prefetch thread augments a few more by
        then, how many depending on timing. With one running state those
        draws moved every later pass's."""
        return _PassStates(number)


def _local(value):
    """This process's copy of a seed state. Built under several processes'
    distribution, the layers' states are replicated over every process's
    devices, which `device_put` to one device refused ("must be a fully
    addressable array"): each process holds the whole value."""
    if getattr(value, "is_fully_addressable", True):
        return value
    return value.addressable_data(0)


class _PassStates(dict):
    """`{stream: seed states}` of one pass, and the pass' number."""

    def __init__(self, number):
        super().__init__()
        self.number = number


# Large odd steps: streams of nearby seeds do not meet, and a stream's
# offset is not another seed's.
_STREAM_STEP = 0x9E3779B1
_SEED_STEP = 0x85EBCA6B
_PASS_STEP = 0xC2B2AE35


def _offset_seed(state, stream, step=_STREAM_STEP):
    """A Keras `SeedGenerator` state (`[seed, counter]`, uint32) with its
    seed moved by `stream` steps; other state as it is."""
    if state.dtype != np.uint32 or state.shape != (2,):
        return state
    return state.at[0].add(np.uint32((stream * step) & 0xFFFFFFFF))
