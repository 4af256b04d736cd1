"""kft's step inside `model.fit` vs the same compiled step called directly.

    KERAS_BACKEND=jax python benchmarks/results/fit_overhead/fit_vs_step.py \
        mobilenetv3large feature_extraction

Builds the model `bench_vs_torch.py` builds (224 px, batch 4), then in
three interleaved rounds: the step time inside `fit` as the benchmark
measures it ((T(40) - T(20)) / 20 steps, a per-batch callback reading each
step's loss), and the jitted `train_step` called directly on a copy of the
state with the batch already on the device and as a host numpy array, the
loss read after each step. The difference is Keras' per-step work in `fit`.
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", ".."))
import _vs_torch  # noqa: E402

backbone, strategy = sys.argv[1], sys.argv[2]
model, x, y = _vs_torch.build_kft(dict(
    side="kft", backbone=backbone, size=224, batch=4, strategy=strategy,
    gpu=False, steps=20, warmup=2))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402


def batches():
    while True:
        yield x, y


class EachStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        pass


def fit(n):
    begin = time.perf_counter()
    model.fit(batches(), steps_per_epoch=n, epochs=1, verbose=0,
              callbacks=[EachStep()])
    return time.perf_counter() - begin


fit(1)
fit(5)
# A copy: the jitted step donates its state, which `fit` still needs.
state = jax.tree.map(jnp.copy, (
    [v.value for v in model.trainable_variables],
    [v.value for v in model.non_trainable_variables],
    [v.value for v in model.optimizer.variables],
    [v.value for v in model.metrics_variables]))
step = jax.jit(model.train_step, donate_argnums=0)
on_device = jax.device_put(x), jax.device_put(y)


def direct(n, batch):
    global state
    begin = time.perf_counter()
    for _ in range(n):
        logs, state = step(state, batch)
        float(logs["loss"])
    return time.perf_counter() - begin


direct(3, on_device)
for round_ in range(3):
    short, long = fit(20), fit(40)
    in_fit = (long - short) / 20 * 1000
    device = direct(20, on_device) / 20 * 1000
    host = direct(20, (x, y)) / 20 * 1000
    print(f"round {round_}: fit {in_fit:.1f} ms, direct device batch "
          f"{device:.1f}, direct host batch {host:.1f}", flush=True)
