"""Array operations XLA runs slowly on CPU, computed another way.

- `image_ops`: affine resampling by whole-pixel gathers, separable blur.
- `cpu_convs`: depthwise and small-map convolutions as shifted slices, and
  the Keras layers (`fast_cpu_convs`) that use them.
"""
