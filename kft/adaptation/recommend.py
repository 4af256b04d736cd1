"""Which fine-tuning strategy to use: the reference decision guide, adjusted
by the measured domain shift.

The guide (lecture 004, "Decision Guide" and "Strategy Comparison"):

- fewer than 500 training images: feature extraction (frozen backbone);
- 500 to 5,000: partial fine-tuning or gradual unfreezing (kft: gradual
  below 1,000, where the comparison table puts it, partial above);
- more than 5,000: full fine-tuning with layer-wise learning rates;
- domain mismatch between source and target: gradual unfreezing plus
  domain adaptation.

With a model and data, the mismatch is measured (`kft.domain_shift`)
instead of guessed: a large shift in the deep blocks (top half of the
backbone) moves training deeper and adds domain adaptation; a shift only
in shallow blocks is left to AdaBN (`kft.adapt_batchnorm`), which
re-estimates the BatchNorm statistics at no parameter cost.
"""

import dataclasses
import numbers

from kft._validation import check_int
from kft._validation import check_number
from kft._validation import fail_argument

SMALL = 500        # below: feature extraction
GRADUAL_MAX = 1000  # [500, 1000): gradual unfreezing
LARGE = 5000       # above: full fine-tuning with layer-wise rates

# Mean symmetric KL (nats per channel) of a block's BatchNorm statistics
# from which kft calls the block's shift "large". Set from one measurement
# (issue 19, tests/test_adaptation.py): simple_cnn with BatchNorm statistics
# of digits 0-4 (AdaBN on them), measured on held-out digits: 0.000-0.001
# per block; on digits-M: 0.018-0.045. Not calibrated on other backbones or
# data: pass `large_shift=` for yours.
LARGE_SHIFT = 0.01


@dataclasses.dataclass(frozen=True)
class StrategyRecommendation:
    """What `recommend_strategy` recommends, and why.

    Attributes:
        strategy: A `kft.fine_tune` strategy: `"feature_extraction"`,
            `"partial"`, `"gradual"` or `"full"`.
        n_blocks: Blocks below the head to train for `"partial"`, else
            `None`.
        layer_decay: Per-block rate factor for `kft.fine_tune` (`None`: one
            rate).
        bn: BatchNorm policy for `kft.fine_tune` / `kft.freeze`.
        adaptation: Domain-adaptation steps advised, in order, e.g.
            `("adapt_batchnorm", "dann")`; empty when none.
        reasons: One sentence per decision, in order.
        num_images: The training-set size the decision used.
        shift: The `kft.domain_shift` report, when measured.
    """

    strategy: str
    n_blocks: int | None
    layer_decay: float | None
    bn: str
    adaptation: tuple
    reasons: tuple
    num_images: int | None
    shift: object = None

    def fine_tune_kwargs(self) -> dict:
        """Keyword arguments for `kft.fine_tune` that carry this choice.

        >>> kft_rec = recommend_strategy(num_images=8000)
        >>> kft_rec.fine_tune_kwargs()
        {'strategy': 'full', 'bn': 'frozen', 'layer_decay': 0.7}
        """
        kwargs = {"strategy": self.strategy, "bn": self.bn}
        if self.n_blocks is not None:
            kwargs["n_blocks"] = self.n_blocks
        if self.layer_decay is not None:
            kwargs["layer_decay"] = self.layer_decay
        return kwargs

    def to_dict(self) -> dict:
        """Plain values (the shift report as its own `to_dict()`)."""
        out = dataclasses.asdict(dataclasses.replace(self, shift=None))
        out["adaptation"] = list(self.adaptation)
        out["reasons"] = list(self.reasons)
        out["shift"] = None if self.shift is None else self.shift.to_dict()
        return out

    def __str__(self):
        head = f"strategy: {self.strategy}"
        if self.n_blocks is not None:
            head += f" (n_blocks={self.n_blocks})"
        if self.layer_decay is not None:
            head += f", layer_decay={self.layer_decay}"
        head += f", bn={self.bn!r}"
        if self.adaptation:
            head += f"; adaptation: {', '.join(self.adaptation)}"
        return "\n".join([head] + [f"- {r}" for r in self.reasons])


def recommend_strategy(model=None, data=None, *, num_images: int | None = None,
                       source_data=None, shift=None,
                       large_shift: float = LARGE_SHIFT,
                       batch_size: int = 64) -> StrategyRecommendation:
    """Recommends a fine-tuning strategy by dataset size and domain shift.

    Size (the reference decision guide): fewer than 500 labelled training
    images -> `"feature_extraction"`; 500-999 -> `"gradual"`; 1,000-5,000
    -> `"partial"` (top block); more than 5,000 -> `"full"` with
    `layer_decay=0.7` (layer-wise rates).

    Shift (when `model` and `data`, or a `shift` report, are given): every
    block whose mean symmetric KL (`kft.domain_shift`) is at least
    `large_shift` counts as shifted. Any shifted block adds
    `"adapt_batchnorm"` (AdaBN) to the advice. A shifted block in the top
    half of the backbone (deep features no longer fit) moves training
    deeper: feature extraction and partial become `"gradual"`, BatchNorm
    trains
    (`bn="train"`), and `"dann"` (with unlabelled target images, or
    `"mmd"` / `"coral"`) is advised, as the guide says for a domain
    mismatch.

    Args:
        model: A classifier `kft.get_blocks` splits (BatchNorm layers with
            stored statistics), or `None` for a size-only decision.
        data: Target training data: `(x, y)` arrays, an `x` array, or a
            dataset of batches. Gives `num_images` when that is not
            passed (arrays only), and the shift with `model`.
        num_images: Labelled training images. Defaults to `len(x)` of
            array `data`.
        source_data: Source images for `kft.domain_shift`'s MMD and
            linear-probe scores (optional).
        shift: A `kft.domain_shift` report already computed (instead of
            measuring it here).
        large_shift: Block score from which a shift counts as large.
            Defaults to `0.01` (set from one measurement, see
            `LARGE_SHIFT`).
        batch_size: Batch size of the shift measurement. Defaults to `64`.

    Returns:
        A `StrategyRecommendation` (`strategy`, `reasons`, ...; `str()`
        prints both).

    Raises:
        ValueError: no way to know the dataset size (no `num_images` and
            no array data), a size below 1, or `model` without `data`
            to measure the shift on (`data` without `model` only counts
            the images).
        TypeError: `shift` that is not a `kft.domain_shift` report.

    Example:
    >>> import kft
    >>> rec = kft.recommend_strategy(num_images=1200)
    >>> rec.strategy, rec.n_blocks
    ('partial', 1)
    >>> print(rec.reasons[0])
    1200 training images (1,000-5,000): partial fine-tuning of the top block; the decision guide says partial fine-tuning or gradual unfreezing, the comparison table puts partial at 1K-10K.
    """
    large_shift = check_number("large_shift", large_shift, low=0.0,
                               low_open=True)
    if isinstance(model, numbers.Number):
        # recommend_strategy(500): the count in the `model` slot.
        fail_argument("model", f"a model (for the count, pass "
                      f"num_images={model!r})", model, TypeError)
    counted = num_images is None
    if counted:
        num_images = _count(data)
    if counted and num_images == 0:
        fail_argument("data", "training data with at least one image",
                      "empty arrays")
    if num_images is None:
        raise ValueError(
            "recommend_strategy needs the number of labelled training "
            "images: pass `num_images=` (or `data` as (x, y) arrays). "
            f"Received: num_images=None, data of type {type(data).__name__}")
    if isinstance(num_images, bool) or not isinstance(num_images,
                                                       numbers.Integral):
        fail_argument("num_images", "a positive integer", num_images)
    # No training images: no strategy trains anything.
    num_images = check_int("num_images", num_images, min_value=1)
    if shift is not None and not callable(getattr(shift, "block_scores",
                                                  None)):
        fail_argument("shift", "a kft.domain_shift report (or None)", shift,
                      TypeError)
    if shift is None and data is not None and model is not None:
        from kft.adaptation.diagnostic import domain_shift

        shift = domain_shift(model, data, source_data=source_data,
                             batch_size=batch_size)
    elif shift is None and model is not None and data is None:
        fail_argument("data", "target images to measure the shift of "
                      "`model` on (or pass only num_images=)", data)

    strategy, n_blocks, layer_decay, reasons = _by_size(num_images)
    bn, adaptation = "frozen", ()
    if shift is not None:
        strategy, n_blocks, bn, adaptation, more = _by_shift(
            shift, strategy, n_blocks, num_images, large_shift)
        reasons += more
    return StrategyRecommendation(
        strategy=strategy, n_blocks=n_blocks, layer_decay=layer_decay, bn=bn,
        adaptation=tuple(adaptation), reasons=tuple(reasons),
        num_images=num_images, shift=shift)


def _count(data):
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return len(data[0])
    if hasattr(data, "shape") and hasattr(data, "__len__"):
        return len(data)
    examples = getattr(data, "num_examples", None)
    if isinstance(examples, numbers.Integral):
        return int(examples)
    return None


def _by_size(n):
    if n < SMALL:
        return "feature_extraction", None, None, [
            f"{n} training images (< {SMALL:,}): feature extraction, frozen "
            "backbone and a trained head (decision guide); more trainable "
            "weights would overfit."]
    if n < GRADUAL_MAX:
        return "gradual", None, None, [
            f"{n} training images ({SMALL:,}-{GRADUAL_MAX - 1:,}): gradual "
            "unfreezing, head first then one block more per stage; the "
            "comparison table puts gradual unfreezing at 500-5K and "
            "partial at 1K-10K."]
    if n <= LARGE:
        return "partial", 1, None, [
            f"{n} training images ({GRADUAL_MAX:,}-{LARGE:,}): partial "
            "fine-tuning of the top block; the decision guide says partial "
            "fine-tuning or gradual unfreezing, the comparison table puts "
            "partial at 1K-10K."]
    return "full", None, 0.7, [
        f"{n} training images (> {LARGE:,}): full fine-tuning with layer-wise "
        "learning rates (layer_decay=0.7: each block below trains at 0.7x "
        "the rate of the one above)."]


def _by_shift(report, strategy, n_blocks, n, large):
    scores = report.block_scores()
    names = list(scores)
    shifted = [b for b in names if scores[b] >= large]
    worst = max(names, key=scores.get) if names else None
    if not shifted:
        return strategy, n_blocks, "frozen", (), [
            f"Measured shift is small: no block reaches {large:g} "
            f"(largest {worst} {scores[worst]:.2f}); the size rule stands."
            if worst else "No BatchNorm statistics to measure the shift."]
    deep = [b for b in names[len(names) // 2:] if b in shifted]
    listing = ", ".join(f"{b} {scores[b]:.2f}" for b in shifted)
    reasons = [f"Measured shift is large (mean symmetric KL >= {large:g}) "
               f"in: {listing}. AdaBN (kft.adapt_batchnorm) re-estimates "
               "the BatchNorm statistics on target images first, at no "
               "parameter cost."]
    adaptation = ["adapt_batchnorm"]
    bn = "frozen"
    if not deep:
        reasons.append(
            "Only shallow blocks are shifted (low-level statistics such as "
            "colour and contrast): AdaBN addresses that, the strategy "
            "stays.")
        return strategy, n_blocks, bn, adaptation, reasons
    bn = "train"
    adaptation += ["dann"]
    if strategy in ("feature_extraction", "partial") and n <= LARGE:
        reasons.append(
            f"Deep blocks are shifted ({', '.join(deep)}): their features "
            f"do not fit the target, so {strategy.replace('_', ' ')} is "
            "replaced by gradual unfreezing (domain mismatch in the "
            "decision guide), with BatchNorm training.")
        strategy, n_blocks = "gradual", None
    else:
        reasons.append(
            f"Deep blocks are shifted ({', '.join(deep)}): BatchNorm "
            f"trains with the {strategy} strategy.")
    reasons.append(
        "With unlabelled target images, add adversarial adaptation "
        "(kft.DomainAdaptationModel, method='dann') or a feature-alignment "
        "loss (method='mmd' or 'coral') to align source and target "
        "features.")
    return strategy, n_blocks, bn, adaptation, reasons
