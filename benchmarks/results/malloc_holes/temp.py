import os, sys, time
sys.path.insert(0, "/work/main/benchmarks")
os.environ["KFT_COMPILATION_CACHE"] = "0"
extra = os.environ.get("EXTRA_FLAGS", "")
import kft  # sets kft's XLA flags
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " " + extra
import _vs_torch, _harness, profile_step, jax, numpy as np
backbone, size, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = dict(side="kft", backbone=backbone, size=size, strategy=strategy,
           batch=16 if size <= 64 else 4, gpu=False, steps=10, warmup=1)
model, x, y = _vs_torch.build_kft(cfg)
step, state, data = profile_step.make_step(model, x, y)
t = time.time(); c = step.lower(state, data).compile(); ct = time.time() - t
m = c.memory_analysis()
M = 2**20
rss0 = _harness.rss_mib()
times = []
for i in range(8):
    t = time.perf_counter(); logs, state = c(state, data); jax.block_until_ready(logs); times.append(time.perf_counter() - t)
print(f"{backbone} {size} {strategy} [{extra}] temp {m.temp_size_in_bytes/M:.0f} arg {m.argument_size_in_bytes/M:.0f} out {m.output_size_in_bytes/M:.0f} alias {m.alias_size_in_bytes/M:.0f} compile {ct:.1f}s step {1000*np.median(times[2:]):.0f} ms rss {rss0:.0f}->{_harness.rss_mib():.0f} hwm {_harness.peak_rss_mib():.0f}", flush=True)
import ctypes
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
m = libc.mallinfo2()
print(f"arena {m.arena/M:.0f} used {m.uordblks/M:.0f} free {m.fordblks/M:.0f} top {m.keepcost/M:.0f} mmap {m.hblkhd/M:.0f}({m.hblks}) chunks {m.ordblks}")
