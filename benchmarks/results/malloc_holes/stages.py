# RSS / anonymous / heap at each stage of a compiled full step: [GLIBC_TUNABLES=glibc.malloc.hugetlb=1] python stages.py B SIZE full
import os, sys, time, gc, ctypes
sys.path.insert(0, "/work/main/benchmarks")
os.environ["KFT_COMPILATION_CACHE"] = "0"
def smaps():
    d = {}
    for line in open("/proc/self/smaps_rollup"):
        p = line.split()
        if len(p) >= 3 and p[2] == "kB": d[p[0][:-1]] = int(p[1]) / 1024
    return d
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = MallInfo2
def rep(tag):
    s = smaps(); m = libc.mallinfo2(); M = 2**20
    print(f"{tag:28s} rss {s['Rss']:6.0f} anon {s['Anonymous']:6.0f} file {s['Rss']-s['Anonymous']:5.0f} heap used {m.uordblks/M:6.0f} free {m.fordblks/M:5.0f} mmapped {m.hblkhd/M:5.0f}", flush=True)
rep("start")
import kft, jax
rep("import kft")
import _vs_torch, _harness, profile_step, numpy as np
backbone, size, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = dict(side="kft", backbone=backbone, size=size, strategy=strategy, batch=16 if size <= 64 else 4, gpu=False, steps=10, warmup=1)
model, x, y = _vs_torch.build_kft(cfg)
rep("model built+compiled")
step, state, data = profile_step.make_step(model, x, y)
rep("state made")
low = step.lower(state, data); rep("lowered")
c = low.compile(); rep("compiled")
del low; gc.collect(); libc.malloc_trim(0); rep("del lowered, trim")
m = c.memory_analysis(); print(f"temp {m.temp_size_in_bytes/2**20:.0f} args {m.argument_size_in_bytes/2**20:.0f} out {m.output_size_in_bytes/2**20:.0f} alias {m.alias_size_in_bytes/2**20:.0f} code {getattr(m,'generated_code_size_in_bytes',0)/2**20:.1f}")
logs, state = c(state, data); jax.block_until_ready(logs); rep("after run 1")
logs, state = c(state, data); jax.block_until_ready(logs); rep("after run 2")
gc.collect(); libc.malloc_trim(0); rep("trim")
