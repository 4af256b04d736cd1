"""Elastic weight consolidation with a diagonal Fisher."""

from keras import ops

from kft._validation import fail_argument
from kft.regularizers.attach import split_weights
from kft.regularizers.fisher import FisherInformation
from kft.regularizers.penalty import Penalty
from kft.regularizers.penalty import entries_for


class EWC(Penalty):
    """EWC penalty: `(lam / 2) * sum_i F_i * (w_i - w*_i)^2` over the
    backbone's weights, `w*` their values when bound (`kft.regularize`),
    `F` a diagonal Fisher from `kft.estimate_fisher` on the source task.

    The Fisher must hold every backbone weight of the model (by variable
    path, same shape); entries for other variables (a source head) are
    ignored. Only weights that train at a step add their terms.

    Args:
        lam: Strength, >= 0.
        fisher: A `kft.FisherInformation` (or a dict: variable path ->
            array).

    Example:
    >>> import kft, numpy as np
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> # In practice: fisher = kft.estimate_fisher(source_model, data)
    >>> fisher = {v.path: np.ones(v.shape) for v in model.trainable_weights}
    >>> kft.regularize(model, kft.EWC(100.0, fisher))
    EWC(lam=100.0)

    References:
        Kirkpatrick et al. Overcoming catastrophic forgetting in neural
        networks. PNAS 2017.
    """

    def __init__(self, lam: float, fisher: FisherInformation | dict):
        super().__init__(lam=lam)
        if isinstance(fisher, dict):
            fisher = FisherInformation(fisher)
        if not isinstance(fisher, FisherInformation):
            fail_argument("fisher", "a kft.FisherInformation from "
                          "kft.estimate_fisher (or a dict: variable path -> "
                          "array)", type(fisher).__name__, TypeError)
        self.fisher = fisher

    @classmethod
    def from_saved(cls, config, fisher):
        return cls(config["lam"], fisher)

    def bind(self, model, binding):
        body, _ = split_weights(model)
        values = entries_for("Fisher values", self.fisher.values, body,
                             model)
        anchors = self.anchors_for(body, model)
        half_lam = binding.strength("half_lam", 0.5 * self._strengths["lam"])
        for v in body:
            anchor = binding.copy("anchor", v, anchors[v.path])
            fisher = binding.copy("fisher", v, values[v.path])
            if self._strengths["lam"]:
                binding.add_term(v, self.anchored_term, half_lam,
                                 anchor=anchor, fisher=fisher)

    def anchored_term(self, value, anchor, fisher):
        """`sum F (w - w*)^2` (times `lam / 2` by the caller)."""
        return ops.sum(fisher * ops.square(value - anchor))
