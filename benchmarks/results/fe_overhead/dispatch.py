# Compiled step alone vs its dispatch (returns before the step ends): python dispatch.py efficientnetb0 224 feature_extraction
import os, sys, time
sys.path.insert(0, "/work/main/benchmarks")
os.environ["KFT_COMPILATION_CACHE"] = "0"
import kft, jax, numpy as np
import _vs_torch, profile_step
cfg = dict(side="kft", backbone=sys.argv[1], size=int(sys.argv[2]), strategy=sys.argv[3], batch=4, gpu=False, steps=10, warmup=1)
model, x, y = _vs_torch.build_kft(cfg)
step, state, data = profile_step.make_step(model, x, y)
c = step.lower(state, data).compile()
leaves = jax.tree_util.tree_leaves((state, data)); print("args", len(leaves))
for i in range(5): logs, state = c(state, data)
jax.block_until_ready(state)
def med(f, n=40):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return 1000 * np.median(ts)
def full():
    global state
    logs, state = c(state, data); jax.block_until_ready(logs)
print("step ms", med(full))
def disp():
    global state
    t = time.perf_counter(); logs, state = c(state, data); d = time.perf_counter() - t; jax.block_until_ready(logs); return d
ds = [disp() for _ in range(30)]; print("dispatch-only ms", 1000 * np.median(ds))
