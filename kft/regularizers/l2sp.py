"""L2-SP: weights pulled toward their pretrained values."""

import warnings

from keras import ops

from kft._validation import fail_argument
from kft.models.blocks import HEAD_HOW
from kft.models.blocks import get_blocks
from kft.regularizers.attach import split_weights
from kft.regularizers.penalty import Penalty


class L2SP(Penalty):
    """L2-SP penalty: `alpha * ||w - w_0||^2` on the backbone's weights,
    `w_0` their values when bound (`kft.regularize`), plus
    `beta * ||w||^2` on the new head's weights.

    Follows Li et al. without the paper's 1/2: the gradient of the
    backbone term is `2 * alpha * (w - w_0)`. Only weights that train at a
    step add their terms (see `kft.regularize`).

    Args:
        alpha: Strength toward the starting point, >= 0.
        beta: Plain L2 strength on the head (kft's `"head"` block),
            >= 0. Defaults to `0.0`.

    Raises:
        ValueError: a negative strength; at binding, `beta > 0` on a model
            without a `"head"` block (`kft.get_blocks`). With `beta == 0`
            such a model gets a `UserWarning`: alpha then anchors every
            weight, the new classifier's included.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> kft.regularize(model, kft.L2SP(alpha=0.01, beta=1e-4))
    L2SP(alpha=0.01, beta=0.0001)

    References:
        Li, Grandvalet, Davoine. Explicit inductive bias for transfer
        learning with convolutional networks. ICML 2018.
    """

    def __init__(self, alpha: float, beta: float = 0.0):
        super().__init__(alpha=alpha, beta=beta)

    @classmethod
    def from_saved(cls, config, fisher):
        return cls(**config)

    def bind(self, model, binding):
        body, head = split_weights(model)
        if not head:
            # Else beta would apply to nothing and alpha would anchor the
            # new classifier, both silently.
            blocks = list(get_blocks(model))
            if self._strengths["beta"]:
                fail_argument(
                    "beta", f'0 for a model without a "head" block: '
                    f"kft.get_blocks(model) finds {blocks}. {HEAD_HOW}",
                    self._strengths["beta"])
            if self._strengths["alpha"]:
                warnings.warn(
                    f'{self!r} on a model without a "head" block '
                    f"(kft.get_blocks(model) finds {blocks}): alpha anchors "
                    f"every weight, the new classifier's included. "
                    f"{HEAD_HOW}.", UserWarning, stacklevel=3)
        anchors = self.anchors_for(body, model)
        alpha = binding.strength("alpha", self._strengths["alpha"])
        for v in body:
            anchor = binding.copy("anchor", v, anchors[v.path])
            if self._strengths["alpha"]:
                binding.add_term(v, self.anchored_term, alpha, anchor=anchor)
        if self._strengths["beta"]:
            beta = binding.strength("beta", self._strengths["beta"])
            for v in head:
                binding.add_term(v, self.head_term, beta)

    def anchored_term(self, value, anchor, fisher):
        """`||w - w_0||^2` (times `alpha` by the caller)."""
        return ops.sum(ops.square(value - anchor))

    def head_term(self, value, anchor, fisher):
        """`||w||^2` (times `beta` by the caller)."""
        return ops.sum(ops.square(value))
