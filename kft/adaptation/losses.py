"""Feature-alignment losses: multi-kernel MMD and CORAL.

Both take two batches of features, `(n_s, d)` and `(n_t, d)` (higher-rank
features are flattened), and return a scalar; they use `keras.ops`, so they
work on numpy arrays and inside a compiled JAX step.
"""

from keras import ops

from kft._validation import check_int
from kft._validation import check_number


def _flat(x, name):
    x = ops.convert_to_tensor(x)
    if len(x.shape) < 2:
        raise ValueError(
            f"Argument `{name}` must be a batch of features of rank >= 2. "
            f"Received: {name}.shape={tuple(x.shape)}")
    if len(x.shape) > 2:
        x = ops.reshape(x, (x.shape[0], -1))
    return ops.cast(x, "float32")


def _check_pair(source, target, minimum):
    source, target = _flat(source, "source"), _flat(target, "target")
    if source.shape[1] != target.shape[1]:
        raise ValueError(
            "Arguments `source` and `target` must have the same feature "
            f"width. Received: {source.shape[1]} and {target.shape[1]}")
    for name, x in (("source", source), ("target", target)):
        if x.shape[0] is not None and x.shape[0] < minimum:
            raise ValueError(
                f"Argument `{name}` must hold at least {minimum} samples. "
                f"Received: {x.shape[0]}")
    return source, target


def _squared_distances(a, b):
    aa = ops.sum(a * a, axis=1)[:, None]
    bb = ops.sum(b * b, axis=1)[None, :]
    return ops.maximum(aa + bb - 2.0 * ops.matmul(a, ops.transpose(b)), 0.0)


def mmd(source, target, *, kernel_num: int = 5, kernel_mul: float = 2.0,
        bandwidth=None):
    """Squared maximum mean discrepancy, unbiased, multi-kernel Gaussian.

    `MMD^2_u = mean_{i!=j} k(s_i, s_j) + mean_{i!=j} k(t_i, t_j)
    - 2 mean_{i,j} k(s_i, t_j)`, with `k` the sum of `kernel_num` Gaussian
    kernels `exp(-||a - b||^2 / sigma_q)`, `sigma_q = bandwidth *
    kernel_mul**(q - kernel_num // 2)` (DAN, Long et al., 2015). Without a
    `bandwidth`, it is the mean squared distance over all pairs of the
    pooled samples, with no gradient through it. Unbiased: its expectation
    is 0 when both samples come from one distribution (single draws can be
    slightly negative).

    Args:
        source: `(n_s, d)` features, `n_s >= 2`.
        target: `(n_t, d)` features, `n_t >= 2`.
        kernel_num: Number of kernels. Defaults to `5`.
        kernel_mul: Ratio of neighbouring bandwidths. Defaults to `2.0`.
        bandwidth: Middle bandwidth (a positive number). Defaults to
            `None` (the mean squared pair distance).

    Returns:
        A scalar tensor.

    Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(64, 4)), rng.normal(size=(64, 4))
    >>> abs(float(mmd(a, b))) < 0.05, float(mmd(a, b + 2.0)) > 0.5
    (True, True)
    """
    kernel_num = check_int("kernel_num", kernel_num, min_value=1)
    kernel_mul = check_number("kernel_mul", kernel_mul, low=1.0)
    source, target = _check_pair(source, target, 2)
    d_ss = _squared_distances(source, source)
    d_tt = _squared_distances(target, target)
    d_st = _squared_distances(source, target)
    n_s, n_t = source.shape[0], target.shape[0]
    if bandwidth is None:
        n = n_s + n_t
        total = ops.sum(d_ss) + ops.sum(d_tt) + 2.0 * ops.sum(d_st)
        bandwidth = ops.stop_gradient(total / (n * n - n))
        bandwidth = ops.maximum(bandwidth, 1e-12)
    else:
        bandwidth = check_number("bandwidth", bandwidth, low=0.0,
                                 low_open=True)
    scales = [kernel_mul ** (q - kernel_num // 2) for q in range(kernel_num)]

    def kernel(d):
        return sum(ops.exp(-d / (bandwidth * s)) for s in scales)

    k_ss, k_tt, k_st = kernel(d_ss), kernel(d_tt), kernel(d_st)
    # Unbiased: leave out the diagonal (k(x, x) = kernel_num).
    same_s = (ops.sum(k_ss) - ops.trace(k_ss)) / (n_s * (n_s - 1))
    same_t = (ops.sum(k_tt) - ops.trace(k_tt)) / (n_t * (n_t - 1))
    return same_s + same_t - 2.0 * ops.mean(k_st)


def coral(source, target):
    """CORAL loss (Deep CORAL, Sun and Saenko, 2016).

    `||C_s - C_t||_F^2 / (4 d^2)`, with `C` the unbiased (n - 1) feature
    covariance of each batch.

    Args:
        source: `(n_s, d)` features, `n_s >= 2`.
        target: `(n_t, d)` features, `n_t >= 2`.

    Returns:
        A scalar tensor.

    Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(200, 3))
    >>> float(coral(a, a)), float(coral(a, 3.0 * a)) > 0.1
    (0.0, True)
    """
    source, target = _check_pair(source, target, 2)
    d = source.shape[1]

    def covariance(x):
        centred = x - ops.mean(x, axis=0, keepdims=True)
        return ops.matmul(ops.transpose(centred), centred) / (x.shape[0] - 1)

    diff = covariance(source) - covariance(target)
    return ops.sum(diff * diff) / (4.0 * d * d)
