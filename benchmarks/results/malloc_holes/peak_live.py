"""What XLA's temp buffer holds at its peak, from a dump of a compiled step.

    EXTRA_FLAGS="--xla_dump_to=/tmp/dump --xla_dump_hlo_module_re=.*train_step.*" \
        python temp.py convnext_tiny 224 full
    python peak_live.py /tmp/dump

Reads the buffer assignment (each value's size in the preallocated temp)
and the live ranges (first and last instruction using it), finds the
instruction where the live bytes peak, and prints the live bytes by shape
and the largest values live there (name, live range, shape): a value live
from the forward pass (low numbers) to the backward pass (high numbers) is
what the step keeps for its gradients.
"""
import collections
import glob
import re
import sys

folder = sys.argv[1]
live_ranges = open(glob.glob(folder + "/*train_step*live-range.txt")[0]).read()
assignment = open(
    glob.glob(folder + "/*train_step*buffer-assignment.txt")[0]).read()
sequence = {}
listing = re.search(r"InstructionSequence:\n(.*?)\n  BufferLiveRange",
                    live_ranges, re.S).group(1)
for line in listing.splitlines():
    index, name = line.strip().split(":", 1)
    sequence[int(index)] = name
ranges = {name: (int(a), int(b)) for name, a, b in re.findall(
    r"^\s+(\S+?)\{[^}]*\}:(\d+)-(\d+)",
    live_ranges[live_ranges.index("BufferLiveRange"):], re.M)}
temp = assignment[assignment.index("preallocated-temp"):]
if "\nallocation" in temp:
    temp = temp[:temp.index("\nallocation")]
values = [(name, int(size), *ranges[name], shape) for name, size, shape in
          re.findall(r"value: <\d+ (\S+) @\S*> \(size=(\d+),offset=\d+\): "
                     r"(\S+)", temp) if name in ranges]
live = collections.Counter()
for _, size, first, last, _ in values:
    for t in range(first, last + 1):
        live[t] += size
peak = max(live, key=live.get)
print(f"peak {live[peak] / 2**20:.1f} MiB live at instruction {peak} "
      f"({sequence.get(peak)}) of {max(sequence)}")
at_peak = sorted((v for v in values if v[2] <= peak <= v[3]),
                 key=lambda v: -v[1])
by_shape = collections.Counter()
for _, size, _, _, shape in at_peak:
    by_shape[shape] += size
for shape, size in by_shape.most_common(15):
    print(f"{size / 2**20:8.1f} MiB  {shape}")
for name, size, first, last, shape in at_peak[:30]:
    print(f"{size / 2**20:7.1f} MiB  {name}  {first}-{last}  {shape}")
