import os, sys, time, ctypes
sys.path.insert(0, "/work/main/benchmarks")
os.environ["KFT_COMPILATION_CACHE"] = "0"
import kft, jax
if os.environ.get("SYNC") == "1": jax.config.update("jax_cpu_enable_async_dispatch", False)
import _vs_torch, _harness, profile_step, jax, numpy as np
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
M = 2**20
def mi():
    m = libc.mallinfo2()
    return f"rss {_harness.rss_mib():.0f} hwm {_harness.peak_rss_mib():.0f} arena {m.arena/M:.0f} used {m.uordblks/M:.0f} free {m.fordblks/M:.0f} top {m.keepcost/M:.0f}"
backbone, size, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
trim_after = int(os.environ.get("TRIM_AFTER", "-1"))
cfg = dict(side="kft", backbone=backbone, size=size, strategy=strategy,
           batch=16 if size <= 64 else 4, gpu=False, steps=10, warmup=1)
model, x, y = _vs_torch.build_kft(cfg)
step, state, data = profile_step.make_step(model, x, y)
c = step.lower(state, data).compile()
print("compiled", mi(), flush=True)
if os.environ.get("MMAP_FIRST") == "1":
    libc.mallopt(-3, 32 * 2**20); libc.mallopt(-4, 65536)
for i in range(8):
    logs, state = c(state, data); float(logs["loss"])
    if i == 0 and os.environ.get("MMAP_FIRST") == "1":
        libc.mallopt(-4, 0); print("mmap off")
    if i == trim_after: libc.malloc_trim(0); print("trim")
    print(i, mi(), flush=True)
