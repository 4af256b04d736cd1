"""Which XLA CPU flags make kft's training step faster, without changing it.

For each backbone and input size, runs the same kft training step
(`bench_vs_torch.py`'s kft step, `_vs_torch.run_kft`: same model, weights,
batch, optimizer) under each flag set in its own process, and reports the
median step time and the largest relative difference of the 13 losses of
the run (the same batch trained 13 times from the same weights: any
difference in the forward pass or the gradients shows there) against the
first set (plain XLA by default), with the first step's time (the
compile) and the process's peak RSS.

    python benchmarks/xla_cpu_flags.py --sizes 64 224 --strategy full
    python benchmarks/xla_cpu_flags.py --sets "ynn off + barriers" \
        "ynn off + barriers + legacy emitters"
"""

import argparse
import os
import re
import time

import _harness
import _vs_torch

FLAG_SETS = _vs_torch.XLA_FLAG_SETS


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--backbones", nargs="+",
                        default=list(_vs_torch.BACKBONES))
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--sets", nargs="+", default=list(FLAG_SETS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out-dir",
                        default=_harness.results_path("xla_flags"),
                        help="where the JSON and table go (default: "
                             "benchmarks/results/xla_flags)")
    args = parser.parse_args()
    rows = ["| size | backbone | " + " | ".join(
        f"{name}: ms/step (first s, peak MiB, max rel loss diff)"
        for name in args.sets) + " |",
        "|---|---|" + "---|" * len(args.sets)]
    begin = time.perf_counter()
    for size in args.sizes:
        batch = 16 if size <= 64 else 4
        for backbone in args.backbones:
            base, cells = None, []
            for name in args.sets:
                cfg = {"side": "kft", "backbone": backbone,
                       "strategy": args.strategy, "size": size,
                       "batch": batch, "steps": args.steps, "warmup": 2,
                       "gpu": False, "xla_flags": FLAG_SETS[name]}
                r = _vs_torch.run_fresh([cfg], 900)[0]
                r["flag_set"] = name
                slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
                name_json = f"{size}_{backbone}_{args.strategy}_{slug}.json"
                _harness.write_json(os.path.join(args.out_dir, name_json), r)
                if "error" in r:
                    cells.append("error")
                    print(f"{size} {backbone} {name}: {r['error'][-300:]}")
                    continue
                if base is None and name == args.sets[0]:
                    base = r["losses"]
                diff = (max(abs(a - b) / max(abs(b), 1e-12)
                            for a, b in zip(r["losses"], base))
                        if base else float("nan"))
                cells.append(f"{1000 * r['median_step_s']:.0f} "
                             f"({r['first_step_s']:.1f}, "
                             f"{r['peak_rss_mib']:.0f}, {diff:.1e})")
                print(f"[{time.perf_counter() - begin:5.0f} s] {size} "
                      f"{backbone} {name}: {1000 * r['median_step_s']:.0f} "
                      f"ms, first step {r['first_step_s']:.1f} s, peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB, max rel loss diff "
                      f"{diff:.1e}", flush=True)
            rows.append(f"| {size} | {backbone} | " + " | ".join(cells) + " |")
    header = _harness.header(begin) + f", strategy {args.strategy}"
    table = "\n".join(rows)
    print(header + "\n" + table)
    sizes = "_".join(str(size) for size in args.sizes)
    _harness.write_text(
        os.path.join(args.out_dir, f"table_{sizes}_{args.strategy}.md"),
        header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
