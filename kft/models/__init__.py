"""Models: backbones split into named blocks, and classifiers built on them.

- `backbones`: the registry of `keras.applications` backbones
  (`BackboneSpec`: constructor, preprocessing, default size, blocks).
- `simple_cnn`: kft's small CNN for CPU work and tests.
- `blocks`: `get_blocks`, the ordered named blocks of any model.
- `classifier`: `build_classifier`, a backbone with a new head.
- `batch_augment`: `BatchAugmentModel`, whose train step mixes batches.
"""
