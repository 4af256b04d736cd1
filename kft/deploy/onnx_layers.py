"""Stand-ins for Keras layers whose ONNX conversion onnxruntime rejects.

jax2onnx writes XLA's 4-D NHWC max-pool window `(1, k, k, 1)` as an ONNX
`MaxPool` over four spatial axes, which onnxruntime refuses ("Unsupported
pooling size"). `SlicedMaxPooling2D` computes the same maximum as an
elementwise `Max` of shifted strided slices (exact: a maximum does not
round), which every runtime supports. Used only in the graph that
`kft.export` converts, never in a saved model.
"""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kft")
class SlicedMaxPooling2D(keras.layers.MaxPooling2D):
    """`keras.layers.MaxPooling2D` as a maximum of shifted slices.

    Same arguments, config and results as the Keras layer (channels last,
    static height and width).

    Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 7, 7, 3))
    >>> layer = SlicedMaxPooling2D(3, strides=2, padding="same")
    >>> stock = keras.layers.MaxPooling2D(3, strides=2, padding="same")
    >>> bool(np.array_equal(layer(x), stock(x)))
    True
    """

    def call(self, inputs):
        shape = inputs.shape
        if self.data_format != "channels_last" or None in shape[1:3]:
            return super().call(inputs)
        (pool_h, pool_w), (stride_h, stride_w) = self.pool_size, self.strides
        height, width = shape[1], shape[2]
        if self.padding == "same":
            out_h, out_w = math.ceil(height / stride_h), math.ceil(
                width / stride_w)
            pad_h = max((out_h - 1) * stride_h + pool_h - height, 0)
            pad_w = max((out_w - 1) * stride_w + pool_w - width, 0)
            inputs = ops.pad(
                inputs, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                         (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
                constant_values=-float("inf"))
        else:
            out_h = (height - pool_h) // stride_h + 1
            out_w = (width - pool_w) // stride_w + 1
        result = None
        for i in range(pool_h):
            for j in range(pool_w):
                patch = inputs[:, i:i + (out_h - 1) * stride_h + 1:stride_h,
                               j:j + (out_w - 1) * stride_w + 1:stride_w, :]
                result = patch if result is None else ops.maximum(result,
                                                                  patch)
        return result
