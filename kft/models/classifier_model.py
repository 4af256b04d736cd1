"""`Classifier`: the functional model `kft.build_classifier` returns, whose
config keeps what kft reads from it (class names, backbone, whether it was
pretrained), so `model.save` / `keras.models.load_model` keep it too."""

import functools

import keras

from kft._compat import KeepsStateOnError
from kft._evaluation_step import EvaluatesWithoutPenalty
from kft.distributed.data_parallel import ChecksEvalBatches
from kft.distributed.data_parallel import check_fit_data
from kft.distributed.data_parallel import check_placement
from kft.models.backbones import NEEDS_KFT
from kft.models.renamed_weights import load_renamed
from kft.models.renamed_weights import looks_renamed


def _plain(value):
    """`value` with Keras' tracked containers as plain lists and dicts."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@keras.saving.register_keras_serializable(package="kft")
class Classifier(EvaluatesWithoutPenalty, KeepsStateOnError,
                 ChecksEvalBatches, keras.Model):
    """A functional classifier that carries kft's metadata.

    A `keras.Model` built from inputs and outputs (`kft.Classifier`), plus two attributes
    kft reads: `kft_metadata` (backbone, input shape, preprocessing,
    number of classes and `class_names`, which `kft.predict`,
    `kft.evaluate` and `kft.export` use) and whether the backbone started
    from pretrained weights (`kft.freeze` warns about frozen BatchNorm
    statistics of a random initialisation). Both are in its config: a
    model saved with `model.save` loads with them. `keras.models.clone_model`
    builds the clone from inputs and outputs alone, without them; clone
    with `kft.Classifier.from_config(model.get_config())` (new weights, as
    `clone_model`'s) to keep them.

    Args:
        *args: `inputs` and `outputs`, as for `keras.Model`.
        kft_metadata: The metadata dict, or `None`.
        kft_pretrained: Whether the backbone was pretrained, or `None`.
        **kwargs: `name`, `trainable`, as for `keras.Model`.

    Example:
    >>> import os, tempfile, keras, kft
    >>> model = kft.build_classifier("simple_cnn", 2, weights=None,
    ...                              input_shape=(16, 16, 3),
    ...                              class_names=["cat", "dog"])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> model.save(path)
    >>> keras.models.load_model(path).kft_metadata["class_names"]
    ['cat', 'dog']
    """

    def __init__(self, *args, kft_metadata: dict | None = None,
                 kft_pretrained: bool | None = None, **kwargs):
        kwargs.pop(NEEDS_KFT[0], None)
        super().__init__(*args, **kwargs)
        if kft_metadata is not None:
            self.kft_metadata = dict(kft_metadata)
        if kft_pretrained is not None:
            self._kft_pretrained = bool(kft_pretrained)

    def fit(self, *args, **kwargs):
        from kft.training.fit_data import fit_arguments
        from kft.training.fit_data import warn_if_augmentation_unapplied

        check_fit_data(args, kwargs)
        check_placement(self)
        arguments = fit_arguments(args, kwargs, self.outputs[0].shape[-1],
                                  model=self)
        warn_if_augmentation_unapplied(self, arguments.get("x"))
        return super().fit(**arguments)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        # A file of an older kft files the backbone under another class
        # name (kft.models.renamed_weights), which Keras refuses.
        load = functools.partial(super().load_weights,
                                 skip_mismatch=skip_mismatch, **kwargs)
        if looks_renamed(self, filepath) and load_renamed(
                self, filepath, load, skip_mismatch):
            return
        load(filepath)

    def get_config(self):
        return {NEEDS_KFT[0]: NEEDS_KFT[1], **super().get_config(),
                "kft_metadata": _plain(getattr(self, "kft_metadata", None)),
                "kft_pretrained": getattr(self, "_kft_pretrained", None)}
