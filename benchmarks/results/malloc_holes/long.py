import os, sys, time
sys.path.insert(0, "/work/main/benchmarks")
os.environ["KFT_COMPILATION_CACHE"] = "0"
import kft, keras, numpy as np
import _vs_torch, _harness
backbone, size, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = dict(side="kft", backbone=backbone, size=size, strategy="full",
           batch=16 if size <= 64 else 4, gpu=False, steps=10, warmup=1)
model, x, y = _vs_torch.build_kft(cfg)
out = []
class P(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.t = time.perf_counter()
    def on_train_batch_end(self, batch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None):
        out.append((round(_harness.rss_mib()), round(_harness.peak_rss_mib()), round(1000 * (time.perf_counter() - self.t) / 40)))
def batches():
    while True: yield x, y
model.fit(batches(), steps_per_epoch=40, epochs=epochs, verbose=0, callbacks=[P()])
print(backbone, size, "reuse", os.environ.get("KFT_MALLOC_REUSE", "1"), "per epoch (rss, hwm, ms/step):", out[1:] if len(out) > 1 else out, flush=True)
