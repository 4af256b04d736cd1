# Where the step block moved and what sat right above its end: python mt_pins.py /tmp/mt/trace.bin /tmp/mt/maps.txt
import numpy as np, sys
tr, mp = sys.argv[1], sys.argv[2]
r = np.fromfile(tr, dtype=np.uint64).reshape(-1, 4)
maps = []
for line in open(mp):
    p = line.split(); a, b = (int(v, 16) for v in p[0].split("-"))
    maps.append((a, b, p[5] if len(p) > 5 else "", int(p[2], 16)))
def where(addr):
    for a, b, name, off in maps:
        if a <= addr < b: return f"{name.split('/')[-1]}+{addr - a + off:#x}"
    return hex(addr)
big = 100 << 20
blocks = []  # (ptr, size, alloc_i, free_i)
openb = {}
frees = {}
for i, (op, ptr, size, caller) in enumerate(r):
    if op == 3 and size >= big: openb[int(ptr)] = (int(size), i)
    elif op == 2 and int(ptr) in openb:
        s, a = openb.pop(int(ptr)); blocks.append((int(ptr), s, a, i))
prev = None
for b in blocks:
    if prev and b[0] != prev[0]:
        p, s, a, f = prev
        end = p + s
        print(f"block moved {prev[0]:#x} -> {b[0]:#x} (delta {(b[0]-p)/2**20:.1f} MiB) at rec {b[2]}; prev block recs {a}-{f}")
        # chunks allocated just above the prev block end during its life
        for i in range(a, f):
            op, ptr, sz, c = r[i]
            if op in (1, 3) and end - 64 <= int(ptr) < end + (64 << 20):
                fr = next((j for j in range(i + 1, len(r)) if r[j][0] == 2 and r[j][1] == ptr), None)
                if fr is None or fr > f:
                    print(f"   rec {i} +{int(ptr)-end} size {sz} freed {fr} by {where(c)}")
                elif sz <= 1032:
                    print(f"   (small, freed during: may sit in tcache) rec {i} +{int(ptr)-end} size {sz} freed {fr} by {where(c)}")
    prev = b
