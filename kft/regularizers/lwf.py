"""Learning without forgetting: distil the source head's outputs."""

import functools

import keras
from keras import ops

from kft._validation import check_number
from kft.models.backbones import backbone_name
from kft.regularizers.penalty import Penalty
from kft.regularizers.source_head import kept_source_head


class LwF(Penalty):
    """Learning-without-forgetting penalty for a model that keeps its
    source head (`kft.with_source_head`).

    In every training step the model's original backbone (its weights
    when bound, held as state) and the kept source head give teacher
    logits on the step's images (after the model's own mixing); the loss
    adds `weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))`,
    the student being the source head on the current features, averaged
    over the batch. The teacher costs one extra forward pass of the
    backbone per step. The kept source head stays frozen.

    Args:
        temperature: Softmax temperature T, > 0. Defaults to `2.0`.
        weight: Strength of the distillation term, >= 0. Defaults to
            `1.0`.

    Example:
    >>> import kft
    >>> base = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                             input_shape=(16, 16, 3))
    >>> model = kft.with_source_head(base, base.get_layer("head_dense"))
    >>> kft.regularize(model, kft.LwF(temperature=2.0, weight=1.0))
    LwF(temperature=2.0, weight=1.0)

    References:
        Li, Hoiem. Learning without forgetting. ECCV 2016 / TPAMI 2017.
    """

    def __init__(self, temperature: float = 2.0, weight: float = 1.0):
        check_number("temperature", temperature, low=0.0, low_open=True)
        super().__init__(temperature=temperature, weight=weight)

    @classmethod
    def from_saved(cls, config, fisher):
        return cls(**config)

    def bind(self, model, binding):
        kept = kept_source_head(model)
        layers = list(model.layers)
        b = next(i for i, layer in enumerate(layers)
                 if backbone_name(layer) is not None)
        backbone, pooling = layers[b], layers[b + 1]
        variables = [v for v in backbone.variables
                     if "float" in str(v.dtype)]
        values = self.anchors_for(variables, model)
        anchors = [binding.copy("anchor", v, values[v.path])
                   for v in variables]
        weight = binding.strength("weight", self._strengths["weight"])
        kept.distillation = functools.partial(
            self.distillation_loss, kept, backbone, pooling, variables,
            anchors, weight)
        binding.cleanups.append(lambda: setattr(kept, "distillation", None))

    def distillation_loss(self, kept, backbone, pooling, variables, anchors,
                          weight, images, features):
        t = self._strengths["temperature"]
        # Read in the step's scope: the anchors' traced values.
        values = [ops.convert_to_tensor(a) for a in anchors]
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            teacher_features = pooling(backbone(images, training=False))
        teacher = ops.stop_gradient(kept.logits(teacher_features)) / t
        student = kept.logits(features) / t
        log_p = ops.log_softmax(teacher, axis=-1)
        kl = ops.sum(ops.exp(log_p) * (log_p - ops.log_softmax(student, -1)),
                     axis=-1)
        return ops.convert_to_tensor(weight) * (t * t) * ops.mean(kl)

