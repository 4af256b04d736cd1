"""Diagonal Fisher information from per-example gradients (`jax.vmap`)."""

import dataclasses
from collections.abc import Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import keras
import numpy as np

from kft import _compat
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_labels
from kft._validation import check_seed
from kft._validation import check_verbose
from kft._validation import fail_argument
from kft._writing import npz_bytes
from kft._writing import write_file
from kft.regularizers.penalty import check_unique_paths

KINDS = ("empirical", "true")
NORMALIZATIONS = ("mean", "max")


@dataclasses.dataclass(eq=False)  # `==` on its arrays raised
class FisherInformation:
    """A diagonal Fisher: variable path -> float32 array of its shape.

    Attributes:
        values: dict, variable path -> array.
        kind: `"empirical"` or `"true"`. Defaults to `"empirical"`.
        num_samples: Examples averaged. Defaults to `0` (unknown).
        normalize: The normalisation applied. Defaults to `None`.
    """

    values: dict
    kind: str = "empirical"
    num_samples: int = 0
    normalize: str | None = None

    def __post_init__(self):
        if not isinstance(self.values, Mapping):
            fail_argument("values", "a dict: variable path -> array (from "
                          "kft.estimate_fisher)", type(self.values).__name__,
                          TypeError)
        check_choice("kind", self.kind, KINDS)
        self.num_samples = check_int("num_samples", self.num_samples,
                                     min_value=0)
        if self.normalize is not None:
            check_choice("normalize", self.normalize, NORMALIZATIONS)
        # A NaN turns every weight NaN; a negative value rewards moving
        # away from the anchor.
        for path, value in self.values.items():
            value = np.asarray(value)
            if not np.all(np.isfinite(value)) or np.any(value < 0):
                raise ValueError(
                    f"Fisher values must be finite and >= 0; those of "
                    f"{path!r} hold {int(np.sum(~np.isfinite(value)))} "
                    f"non-finite and {int(np.sum(value < 0))} negative "
                    "entries. Estimate them again (kft.estimate_fisher) "
                    "on a model whose loss is finite.")

    def __repr__(self):
        # Every variable's values printed: half a megabyte for ResNet50.
        size = sum(int(np.size(v)) for v in self.values.values())
        return (f"FisherInformation({len(self.values)} variables, {size:,} "
                f"values, kind={self.kind!r}, num_samples="
                f"{self.num_samples}, normalize={self.normalize!r})")

    def save(self, path):
        """Writes an npz keyed by variable path (its folder made if
        missing); `FisherInformation.load` reads it."""
        meta = np.array(f"{self.kind}|{self.num_samples}|{self.normalize}")
        write_file(path, npz_bytes(__meta__=meta, **self.values))
        return path

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as data:
            values = {k: data[k] for k in data.files if k != "__meta__"}
            kind, n, norm = (str(data["__meta__"]).split("|")
                             if "__meta__" in data.files
                             else ("empirical", "0", "None"))
        return cls(values, kind, int(n), None if norm == "None" else norm)


def estimate_fisher(model: keras.Model, source_data, *,
                    kind: Literal["empirical", "true"] = "empirical",
                    batch_size: int = 16, num_samples: int | None = None,
                    normalize: Literal["mean", "max"] | None = None,
                    seed: int = 0, verbose: int = 0) -> FisherInformation:
    """Diagonal Fisher of `model`'s weights on source data.

    `F_i = mean over examples of (d log p(y | x) / d w_i)^2`, the
    per-example gradients computed with `jax.vmap` over each batch, the
    model in inference mode (BatchNorm statistics fixed). `"empirical"`
    uses the true labels; `"true"` samples each label from the model's
    softmax (seeded). All weights are covered, frozen ones included. A
    batch holds `batch_size` gradients of the whole model in memory.

    Args:
        model: A built classifier returning logits (or probabilities,
            ending in a softmax).
        source_data: `(images, labels)` arrays, or `images` alone for
            `kind="true"`. Labels are class indices in `[0, num_classes)`
            or one-hot rows of the model's width.
        kind: `"empirical"` or `"true"`. Defaults to `"empirical"`.
        batch_size: Examples per vmapped batch. Defaults to `16`.
        num_samples: Use the first `num_samples` examples. Defaults to
            `None` (all).
        normalize: `None`, `"mean"` (divide by the mean entry over all
            weights) or `"max"` (by the largest). Defaults to `None`.
        seed: Seed of the sampled labels. Defaults to `0`.
        verbose: `1` shows a progress bar over the examples, `2` one line
            when done. Defaults to `0`.

    Returns:
        A `kft.FisherInformation`.

    Raises:
        ValueError: empty source data, labels missing for `"empirical"`,
            images and labels of different lengths, labels that do not fit
            the model's classes (out of range, fractional, soft or one-hot
            rows of another width), bad options.

    Example:
    >>> import kft, keras, numpy as np
    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))
    >>> x = np.ones((3, 4), "float32"); y = np.array([0, 1, 2])
    >>> f = kft.estimate_fisher(model, (x, y), batch_size=3)
    >>> f.num_samples, sorted(f.values), f.values["fc/bias"].shape
    (3, ['fc/bias', 'fc/kernel'], (3,))
    """
    if not isinstance(model, keras.Model):
        fail_argument("model", "a keras.Model", model, TypeError)
    check_choice("kind", kind, KINDS)
    if normalize is not None and normalize not in NORMALIZATIONS:
        fail_argument("normalize", f"one of {NORMALIZATIONS} or None",
                      normalize)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seed = check_seed(seed)
    verbose = check_verbose(verbose)
    check_unique_paths(model, "estimate_fisher")
    images, labels = _arrays(model, source_data, kind, num_samples)
    weights = _compat.weight_variables(model)
    ids = {id(v) for v in weights}
    others = [v for v in model.variables if id(v) not in ids]
    step = _batch_step(model, weights, others, kind)
    w_vals = [v.value for v in weights]
    o_vals = [v.value for v in others]
    sums = [jnp.zeros(v.shape, "float32") for v in weights]
    key = jax.random.PRNGKey(seed)
    n = len(images)
    # A bar, as every other `verbose=1` of kft (one line per batch ran to
    # thousands of lines).
    progress = keras.utils.Progbar(n, unit_name="example", verbose=verbose)
    for begin in range(0, n, batch_size):
        x, y, mask = _padded(images, labels, begin, batch_size)
        key, sub = jax.random.split(key)
        sums = step(sums, w_vals, o_vals, x, y, mask, sub)
        progress.update(min(begin + batch_size, n))
    values = {v.path: np.asarray(s) / n for v, s in zip(weights, sums)}
    if normalize is not None:
        scale = (np.mean(np.concatenate([a.ravel() for a in values.values()]))
                 if normalize == "mean"
                 else max(float(a.max()) for a in values.values()))
        if scale > 0:
            values = {k: a / scale for k, a in values.items()}
    return FisherInformation(values, kind, n, normalize)


def _arrays(model, source_data, kind, num_samples):
    if isinstance(source_data, (tuple, list)) and len(source_data) == 2:
        images, labels = source_data
    else:
        images, labels = source_data, None
    images = np.asarray(images)
    if images.ndim < 2 or len(images) == 0:
        fail_argument("source_data", "non-empty (images, labels) arrays",
                      f"images of shape {images.shape}")
    if labels is None:
        if kind == "empirical":
            fail_argument("source_data", '(images, labels) for kind='
                          '"empirical" (images alone only for kind="true")',
                          f"images of shape {images.shape}")
        labels = np.zeros(len(images), "int32")
    else:
        labels = _class_indices(labels, _num_classes(model, images))
    if len(labels) != len(images):
        fail_argument("source_data", "images and labels of one length",
                      f"{len(images)} images, {len(labels)} labels")
    if num_samples is not None:
        num_samples = check_int("num_samples", num_samples, min_value=1)
        images, labels = images[:num_samples], labels[:num_samples]
    return images, labels


def _num_classes(model, images):
    try:
        outputs = model.outputs
    except AttributeError:  # a subclassed model
        outputs = [model.compute_output_spec(
            keras.KerasTensor((None, *images.shape[1:])))]
    return int(outputs[0].shape[-1])


def _class_indices(labels, num_classes):
    """Integer labels in `[0, num_classes)` from integer or one-hot labels.

    A label outside the model's classes would index past its logits (JAX
    does not bounds-check) and give a wrong Fisher without an error.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 2:
        one_hot = labels.shape[1] == num_classes and np.all(
            (labels == 0) | (labels == 1)) and np.all(labels.sum(1) == 1)
        if not one_hot:
            raise ValueError(
                "Argument `source_data[1]` must hold class indices or "
                f"one-hot rows of width {num_classes} (the model's classes). "
                f"Received: labels of shape {labels.shape} that are not "
                "one-hot rows of that width (soft labels have no single "
                "class whose log-likelihood the Fisher could use).")
        labels = labels.argmax(1)
    elif labels.ndim != 1:
        fail_argument("source_data[1]", "class indices (n,) or one-hot rows "
                      f"(n, {num_classes})", f"labels of shape {labels.shape}")
    return check_labels(labels, num_classes,
                        name="source_data[1]").astype("int32")


def _padded(images, labels, begin, batch_size):
    """One batch padded to `batch_size` (one compiled shape), with a mask."""
    x, y = images[begin:begin + batch_size], labels[begin:begin + batch_size]
    mask = np.ones(batch_size, "float32")
    if len(x) < batch_size:
        pad = batch_size - len(x)
        mask[len(x):] = 0.0
        x = np.concatenate([x, np.repeat(x[:1], pad, 0)])
        y = np.concatenate([y, np.repeat(y[:1], pad, 0)])
    return x, y, mask


def _batch_step(model, weights, others, kind):
    from kft.deploy.inference import output_kind

    # A model ending in a softmax: log p are its logits (log_softmax of
    # them is log p again); a softmax of p would flatten them (the Fisher
    # came out 85x too small).
    probabilities = output_kind(model) == "probabilities"

    def logits_of(w_vals, o_vals, x):
        mapping = list(zip(weights, w_vals)) + list(zip(others, o_vals))
        with keras.StatelessScope(state_mapping=mapping):
            out = model(x, training=False)
        out = jnp.asarray(out, "float32")
        return jnp.log(jnp.maximum(out, 1e-30)) if probabilities else out

    def nll(w_vals, o_vals, x, y):
        logits = logits_of(w_vals, o_vals, x[None])[0]
        return -jax.nn.log_softmax(logits)[y]



    per_example = jax.vmap(jax.grad(nll), in_axes=(None, None, 0, 0))

    @jax.jit
    def step(sums, w_vals, o_vals, x, y, mask, key):
        if kind == "true":
            logits = logits_of(w_vals, o_vals, x)
            y = jax.random.categorical(key, jax.lax.stop_gradient(logits))
        grads = per_example(w_vals, o_vals, x, y)
        return [s + jnp.tensordot(mask, jnp.square(g.astype("float32")), 1)
                for s, g in zip(sums, grads)]

    return step
