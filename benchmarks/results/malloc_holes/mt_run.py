# Model fit under the tracer: LD_PRELOAD=/tmp/mt/libmt.so [SAC=1] python mt_run.py efficientnetb0 224 full 10
# (one fit of 1 step to compile, then traced fits of 1, 10, 20, 10, 20 steps; writes /tmp/mt/trace.bin, maps.txt)
import os, sys, time, ctypes
sys.path.insert(0, "/work/main/benchmarks")
os.environ["KFT_COMPILATION_CACHE"] = "0"
import kft, jax
if os.environ.get("SAC")=="1":
    sys.path.insert(0, "/work/main/benchmarks/results/malloc_holes"); import sac
import _vs_torch, _harness, numpy as np, keras
backbone, size, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n = int(sys.argv[4])
cfg = dict(side="kft", backbone=backbone, size=size, strategy=strategy,
           batch=16 if size <= 64 else 4, gpu=False, steps=10, warmup=1)
model, x, y = _vs_torch.build_kft(cfg)
mt = ctypes.CDLL("/tmp/mt/libmt.so")
class P(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"]); mt.mt_mark(batch)
        print(f"  b{batch} rss {_harness.rss_mib():.0f} hwm {_harness.peak_rss_mib():.0f}", flush=True)
def batches():
    while True: yield x, y
model.fit(batches(), steps_per_epoch=1, epochs=1, verbose=0, callbacks=[P()])
print("compiled", _harness.rss_mib(), flush=True)
mt.mt_start()
import shutil
for k in (1, 10, 20, 10, 20):
    model.fit(batches(), steps_per_epoch=k, epochs=1, verbose=0, callbacks=[P()]); print("fit", k, _harness.rss_mib(), flush=True)
mt.mt_stop(b"/tmp/mt/trace.bin"); shutil.copy("/proc/self/maps", "/tmp/mt/maps.txt")
print("done", _harness.rss_mib(), _harness.peak_rss_mib(), flush=True)
