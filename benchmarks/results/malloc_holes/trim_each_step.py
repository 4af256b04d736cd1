# RSS, page faults and step time inside model.fit with a per-batch callback that
# does nothing ("none"), calls glibc's malloc_trim after every step ("trim"), or
# sleeps 3 ms ("sleep"); "sync" turns JAX's asynchronous CPU dispatch off
# (benchmarks/RESULTS.md, "SiLU keeping only its input", the holes paragraph).
#   python benchmarks/results/malloc_holes/trim_each_step.py trim resnet50 224
import ctypes, os, resource, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
os.environ.setdefault("KERAS_BACKEND", "jax")
mode, backbone, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "sync":
    import jax
    jax.config.update("jax_cpu_enable_async_dispatch", False)
import kft, keras, numpy as np  # noqa: E401,F401  (kft: its malloc settings)
import _vs_torch, _harness  # noqa: E401

libc = ctypes.CDLL("libc.so.6")
cfg = dict(side="kft", gpu=False, size=size, backbone=backbone, strategy="full",
           batch=4 if size == 224 else 16, warmup=1, steps=10)
model, x, y = _vs_torch.build_kft(cfg)
rss, trims, faults = [], [], []


class PerBatch(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if mode == "trim":
            begin = time.perf_counter()
            libc.malloc_trim(ctypes.c_size_t(1 << 30))
            trims.append(time.perf_counter() - begin)
        if mode == "sleep":
            time.sleep(0.003)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        rss.append(round(_harness.rss_mib()))


def batches():
    while True:
        yield x, y


times = []
for n in [1, 1, 10, 20, 10, 20]:
    begin = time.perf_counter()
    model.fit(batches(), steps_per_epoch=n, epochs=1, verbose=0, callbacks=[PerBatch()])
    times.append(time.perf_counter() - begin)
    rss.append("|")
step = ((times[3] - times[2]) / 10 + (times[5] - times[4]) / 10) / 2
print(mode, backbone, size, "peak", round(_harness.peak_rss_mib()), "MiB, step",
      round(step * 1e3), "ms")
print("rss after each step (changes):", [r for i, r in enumerate(rss) if i == 0 or r != rss[i - 1]])
print("trim ms median:", round(float(np.median(trims)) * 1e3, 2) if trims else None,
      "faults per step, last 10:", np.diff(faults[-11:]).tolist())
