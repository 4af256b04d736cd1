"""Array operations XLA runs slowly on CPU, computed another way.

- `shifted_conv`: depthwise and small-map convolutions as shifted slices
  (pure functions of `keras.ops`).
- `image_ops`: affine resampling by whole-pixel gathers, separable blur.
- `conv_grads`, `layer_norm`: hand-written gradients of convolutions and
  of layer normalization.
- `cpu_convs`: the Keras convolution layers computed by `shifted_conv`,
  and `fast_cpu_convs`, which puts them into a model.
"""
