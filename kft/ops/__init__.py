"""Array operations XLA runs slowly on CPU, computed another way.

- `shifted_conv`: depthwise and small-map convolutions as shifted slices
  (pure functions of `keras.ops`).
- `image_ops`: affine resampling by whole-pixel gathers, separable blur.
- `depthwise_grads`, `conv_grads`, `dense_grads`, `layer_norm`,
  `activations`: hand-written gradients of depthwise and dense
  convolutions, of dense layers on feature maps, of layer normalization,
  of ReLU (from its output), of SiLU and of a dense layer after a GELU
  (both recomputing the activation); GELU's `erf` form.
- `cpu_convs`: the Keras convolution layers computed by `shifted_conv`,
  and `fast_cpu_convs`, which puts them into a model.
"""
