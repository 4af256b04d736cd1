# RSS inside model.fit after fits of 1, 1, 10, 20, 10, 20 steps (benchmarks/RESULTS.md,
# "Where the reused step memory goes"). SYNC=1: synchronous CPU dispatch; SAC=1: the
# free-chunk idea of sac.py; NOMAP=1 disabled the reverted first-run mapping prototype
# (kft._config._map_first_run, no longer in kft: now a no-op).
import os, sys, time, ctypes
sys.path.insert(0, "/work/main/benchmarks")
os.environ["KFT_COMPILATION_CACHE"] = "0"
import kft, jax
if os.environ.get("SYNC") == "1": jax.config.update("jax_cpu_enable_async_dispatch", False)
from kft import _config
if os.environ.get("SAC") == "1":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); import sac
if os.environ.get("NOMAP") == "1": _config._map_first_run = lambda: None
import _vs_torch, _harness, numpy as np, keras
backbone, size, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = dict(side="kft", backbone=backbone, size=size, strategy=strategy,
           batch=16 if size <= 64 else 4, gpu=False, steps=10, warmup=1)
model, x, y = _vs_torch.build_kft(cfg)
class P(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch % 4 == 0: print(f"  b{batch} rss {_harness.rss_mib():.0f} hwm {_harness.peak_rss_mib():.0f}", flush=True)
def batches():
    while True: yield x, y
for n in (1, 1, 10, 20, 10, 20):
    t = time.time()
    model.fit(batches(), steps_per_epoch=n, epochs=1, verbose=0, callbacks=[P()])
    print(f"fit {n} {time.time()-t:.1f}s rss {_harness.rss_mib():.0f} hwm {_harness.peak_rss_mib():.0f} trims {_config._trim_state['trims']}", flush=True)
