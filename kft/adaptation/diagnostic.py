"""How far data is from the domain a model's BatchNorm statistics describe.

Every BatchNorm layer stores the per-channel mean and variance of its
input on the data the model was trained on. `domain_shift` measures the
same statistics on new data and compares them per channel as Gaussians
(symmetric KL), summarised per block of `kft.get_blocks`. Each layer's
input is measured with the layers before it normalising by the new data's
own batch statistics (as AdaBN does), so a block's score is the shift
that arises in it, not one inherited from the blocks below.
"""

import dataclasses

import numpy as np

from kft import _compat
from kft._validation import check_int
from kft.adaptation._data import check_same_images
from kft.adaptation._data import dataset_arrays
from kft.adaptation._data import image_array
from kft.adaptation.batchnorm import batch_statistics
from kft.evaluation._predict import predict_numpy
from kft.models.blocks import get_blocks
from kft.training.freezing import batch_norm_layers


def symmetric_kl(mean_a, var_a, mean_b, var_b):
    """Per-channel `(KL(a||b) + KL(b||a)) / 2` of 1-D Gaussians.

    Example:
    >>> float(symmetric_kl(0.0, 1.0, 0.0, 1.0)), float(symmetric_kl(
    ...     0.0, 1.0, 2.0, 1.0))
    (0.0, 2.0)
    """
    mean_a, var_a = np.asarray(mean_a, "float64"), np.asarray(var_a, "float64")
    mean_b, var_b = np.asarray(mean_b, "float64"), np.asarray(var_b, "float64")
    d2 = (mean_a - mean_b) ** 2
    kl_ab = 0.5 * (var_a / var_b + d2 / var_b - 1.0 + np.log(var_b / var_a))
    kl_ba = 0.5 * (var_b / var_a + d2 / var_a - 1.0 + np.log(var_a / var_b))
    return 0.5 * (kl_ab + kl_ba)


@dataclasses.dataclass(frozen=True)
class DomainShiftReport:
    """What `domain_shift` measured.

    Attributes:
        blocks: Block name -> mean symmetric KL of its BatchNorm layers
            (blocks without BatchNorm are left out), stem to head.
        layers: BatchNorm layer name -> mean symmetric KL over channels.
        block_of_layer: BatchNorm layer name -> its block.
        num_images: Images measured (all of a dataset's, at most
            `max_images` of arrays).
        mmd: `kft.mmd` of source and target pooled features, when source
            data was given.
        probe_accuracy: Cross-validated accuracy of a logistic-regression
            domain classifier on the pooled features (0.5: the domains are
            indistinguishable), when source data was given.
    """

    blocks: dict
    layers: dict
    block_of_layer: dict
    num_images: int
    mmd: float | None = None
    probe_accuracy: float | None = None

    def block_scores(self) -> dict:
        """Block name -> score, stem to head."""
        return dict(self.blocks)

    def most_shifted_block(self) -> str:
        return max(self.blocks, key=self.blocks.get)

    def to_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v)
                for k, v in dataclasses.asdict(self).items()}

    def __repr__(self):  # the dicts of every BatchNorm layer, in full
        extra = "".join(
            f", {name}={value:.4f}" for name, value in (
                ("mmd", self.mmd), ("probe_accuracy", self.probe_accuracy))
            if value is not None)
        most = (f", most_shifted_block={self.most_shifted_block()!r}"
                if self.blocks else "")
        return (f"DomainShiftReport({len(self.blocks)} blocks, "
                f"{self.num_images} images{most}{extra})")

    def __str__(self):
        width = max(len(b) for b in self.blocks)
        lines = [f"Domain shift on {self.num_images} images (mean symmetric "
                 "KL of BatchNorm statistics, per block):"]
        finite = [s for s in self.blocks.values() if np.isfinite(s)]
        top = max(finite, default=0.0) or 1.0
        for block, score in self.blocks.items():
            # No bar for a score that is not finite (overflowing pixels).
            bar = "#" * int(round(20 * score / top)) if np.isfinite(
                score) else ""
            lines.append(f"  {block:<{width}}  {score:9.3f}  {bar}")
        if self.mmd is not None:
            lines.append(f"  MMD^2 (pooled features, source vs data): "
                         f"{self.mmd:.4f}")
        if self.probe_accuracy is not None:
            lines.append(f"  linear domain probe accuracy: "
                         f"{self.probe_accuracy:.3f} (0.5 = no shift)")
        return "\n".join(lines)

    def plot(self, path=None, *, ax=None):
        """Bar chart of the per-block scores; returns the Figure."""
        from kft._plotting import finish, new_figure, wrap_title

        own = ax is None
        if own:
            fig, ax = new_figure(figsize=(max(4, len(self.blocks)), 3))
        else:
            fig = ax.figure
        names = list(self.blocks)
        ax.bar(names, [self.blocks[n] for n in names], color="tab:orange")
        ax.set_ylabel("mean symmetric KL")
        wrap_title(ax, "Domain shift per block (BatchNorm statistics)", 12)
        # Your own axes' figure stays open for more drawing.
        return finish(fig, path, close=own)


def domain_shift(model, data, source_data=None, *, batch_size: int = 64,
                 max_images: int = 2000) -> DomainShiftReport:
    """Measures how far `data` is from the domain of `model`'s BatchNorm
    statistics, per block.

    Args:
        model: A built model with BatchNormalization layers whose moving
            statistics come from training (a pretrained backbone, or a
            model you trained). `kft.get_blocks` names the blocks.
        data: Images: an array `(n, h, w, c)`, an `(x, y)` pair (labels
            unused) or a dataset of batches.
        source_data: Optional source images (array, pair or `kft.data`
            dataset) for the MMD and linear-probe scores on pooled features
            (needs a model `kft.feature_cache.split_head` can split; `data`
            then an array, pair or `kft.data` dataset too).
        batch_size: Batch size. Defaults to `64`.
        max_images: At most this many images of arrays are measured (the
            first ones). Defaults to `2000`.

    Returns:
        A `DomainShiftReport` (`str()` prints the per-block table,
        `.plot(path)` draws it).

    Raises:
        ValueError: no BatchNorm layers, no images, image shapes that
            differ from the model's input or between the domains, or
            another kind of dataset with `source_data`.

    Example:
    >>> import kft, numpy as np
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> x = np.random.default_rng(0).uniform(0, 255, (32, 16, 16, 3))
    >>> report = kft.domain_shift(model, x)
    >>> list(report.blocks)
    ['stem', 'block1', 'block2', 'block3']
    """
    batch_size = check_int("batch_size", batch_size, min_value=2)
    max_images = check_int("max_images", max_images, min_value=2)
    arrays = None
    if source_data is not None:
        # Read (and checked) before the BatchNorm pass.
        arrays = (_feature_images(source_data, "source_data", max_images),
                  _feature_images(data, "data", max_images))
        check_same_images(arrays[0].shape[1:], arrays[1].shape[1:],
                          "source_data", "data")
        for name, images in zip(("source_data", "data"), arrays):
            if len(images) < 2:
                # Else after the BatchNorm pass, naming MMD's `source`.
                raise ValueError(
                    f"Argument `{name}` must hold at least 2 images for "
                    "the MMD and probe scores (they compare the domains' "
                    f"feature distributions). Received: {len(images)}")
    array = image_array(data, "data", allow_labels=True)
    if array is not None:
        data = array[:max_images]
    layers, means, variances, num_images = batch_statistics(
        model, data, batch_size=batch_size, name="data")
    block_of = {}
    for block, members in get_blocks(model).items():
        for member in members:
            for layer in batch_norm_layers(member):
                block_of[id(layer)] = block
    per_layer, per_block_lists = {}, {}
    for layer, mean, var in zip(layers, means, variances):
        eps = float(layer.epsilon)
        stored_mean = np.asarray(layer.moving_mean.numpy(), "float64")
        stored_var = np.asarray(layer.moving_variance.numpy(), "float64")
        score = float(np.mean(symmetric_kl(stored_mean, stored_var + eps,
                                           mean, var + eps)))
        per_layer[layer.name] = score
        block = block_of.get(id(layer), layer.name)
        per_block_lists.setdefault(block, []).append(score)
    order = [b for b in get_blocks(model) if b in per_block_lists]
    order += [b for b in per_block_lists if b not in order]
    blocks = {b: float(np.mean(per_block_lists[b])) for b in order}
    mmd_value = probe = None
    if arrays is not None:
        # Its features model is built from the model's own layers: its
        # nodes on them go with it.
        with _compat.graph_nodes_kept(model):
            mmd_value, probe = _feature_scores(model, *arrays, batch_size,
                                               max_images)
    return DomainShiftReport(
        blocks=blocks, layers=per_layer,
        block_of_layer={layer.name: block_of.get(id(layer), layer.name)
                        for layer in layers},
        num_images=num_images, mmd=mmd_value, probe_accuracy=probe)


def _feature_images(data, name, max_images):
    """The first `max_images` images of arrays, a pair or a `kft.data`
    dataset (stored order) for the feature scores."""
    images = image_array(data, name, allow_labels=True)
    if images is not None:
        return images[:max_images]  # a view: nothing copied
    read = dataset_arrays(data, limit=max_images)
    if read is None:
        raise ValueError(
            f"Argument `{name}` must be images (an array or an (x, y) "
            "pair) or a kft.data dataset for domain_shift's MMD and probe "
            "scores with `source_data`. Received: a "
            f"{type(data).__name__}")
    return read[0]


def _feature_scores(model, source, target, batch_size, max_images):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from kft.adaptation.losses import mmd
    from kft.training.head import split_head

    features, _ = split_head(model)
    n = min(len(source), len(target), max_images)
    fs = predict_numpy(features, source[:n], batch_size)
    ft = predict_numpy(features, target[:n], batch_size)
    fs, ft = fs.reshape(n, -1), ft.reshape(n, -1)
    value = float(mmd(fs[:500], ft[:500]))
    x = np.concatenate([fs, ft])
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    y = np.r_[np.zeros(n), np.ones(n)]
    folds = min(5, n)
    probe = float(np.mean(cross_val_score(
        LogisticRegression(max_iter=1000), x, y, cv=folds)))
    return value, probe
