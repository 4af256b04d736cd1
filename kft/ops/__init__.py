"""Array operations XLA runs slowly on CPU, computed another way.

- `shifted_conv`: depthwise and small-map convolutions as shifted slices
  (pure functions of `keras.ops`).
- `image_ops`: affine resampling by whole-pixel gathers, separable blur.
- `depthwise_grads`, `conv_grads`, `layer_norm`, `activations`:
  hand-written gradients of depthwise and dense convolutions, of layer
  normalization and of ReLU (from its output); GELU's `erf` form.
- `cpu_convs`: the Keras convolution layers computed by `shifted_conv`,
  and `fast_cpu_convs`, which puts them into a model.
"""
