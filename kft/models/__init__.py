"""Models: backbones split into named blocks, and classifiers built on them.

- `backbone_specs`: `BackboneSpec` (constructor, preprocessing, default
  size, blocks) and the specs of the built-in `keras.applications`
  backbones.
- `registry`: registering, listing and finding specs by name.
- `backbones`: `create_backbone` and the `Backbone` model, marked with its
  registered name (`kft_backbone`) so kft finds it inside any model; the
  registry's names re-exported.
- `init_draws`: random initial weights compiled once per length bucket
  instead of once per weight shape (bit-identical to Keras').
- `simple_cnn`: kft's small CNN for CPU work and tests.
- `blocks`: `get_blocks`, the ordered named blocks of any model, and
  `head_layers`, the one definition of a classifier's head.
- `classifier`: `build_classifier`, a backbone with a new head.
- `classifier_model`: `Classifier`, the model it returns, whose config
  keeps class names and the pretrained flag through `model.save`.
- `batch_augment`: `BatchAugmentModel`, whose train step mixes batches.
"""
