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

    def __init__(self, model):
        self.model = model
        self.device = jax.devices("cpu")[0]
        self._lock = threading.Lock()
        self._states = None
        self._functions = None

    def _compile(self, shape):
        if not self.model.built:
            self.model.build((None,) + shape[1:])
        self._functions = [jax.jit(_stateless_apply(layer))
                           for layer in self.model.layers]
        # The seed states were created on the default device; committed to
        # the CPU device, they keep every compiled call there.
        self._states = jax.device_put(
            [[v.value for v in layer.non_trainable_variables]
             for layer in self.model.layers], self.device)

    def augment(self, images):
        """Augments a batch; returns a JAX array on `self.device`."""
        with self._lock, jax.default_device(self.device):
            if self._functions is None:
                self._compile(images.shape)
            outputs = jax.device_put(images, self.device)
            for i, function in enumerate(self._functions):
                outputs, self._states[i] = function(self._states[i], outputs)
        return outputs

    def __call__(self, images):
        """Augments a numpy batch; returns a numpy array."""
        return np.asarray(self.augment(images))
