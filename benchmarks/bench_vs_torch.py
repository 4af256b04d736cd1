"""The same fine-tuning step in kft (Keras/JAX) and in PyTorch, side by side.

For each backbone x strategy x input size, one training step on the same
batch shape with the same optimizer, timed on both sides. Each row (side,
size, backbone, strategy) runs in a fresh subprocess, so its peak RSS is
its own and not what earlier rows left allocated (`--share-process` runs
a side's strategies one after the other in one process, as before); kft's
persistent compilation cache is off, so first steps are real compiles:

- kft: `kft.build_classifier(backbone, 10, weights=None)` (preprocessing,
  backbone, average pooling, Dense head; on CPU the convolutions XLA runs
  slowly are in kft's shifted form, `kft.fast_cpu_convs`),
  `kft.freeze(model, strategy)`
  with the default `bn="frozen"`, compiled with
  `kft.BlockwiseOptimizer(SGD(momentum=0.9), {"head": 1e-2}, default=1e-3)`
  and sparse cross-entropy. The step is timed inside `model.fit`, the
  loop users train in (a generator handing it the same host batch, each
  step's loss read before the next, as with fit's default progress bar;
  `(T(2n) - T(n)) / n` over fits of n and 2n steps; first step = the
  first fit of one step, compile included); `--kft-loop train_on_batch`
  times one `model.train_on_batch` call per step instead (as before
  2026-12-03: the same compiled step plus Keras' per-call assignment of
  every variable back to the model). Side `kft` runs with kft's
  default XLA CPU flags, side `kft-fast` also
  with the opt-in one (`KFT_XLA_CPU_FLAGS=1`, see
  `kft.apply_cpu_xla_flags`), side `kft-thp` in a process started with
  `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc maps large blocks with
  transparent huge pages; kft then leaves `reuse_freed_memory` off).
- PyTorch: the torchvision model with its classifier replaced by one
  Linear layer on the pooled features (same head as kft), `requires_grad`
  freezing of the same blocks, every BatchNorm in eval mode with frozen
  affine parameters (kft's `bn="frozen"`), `torch.optim.SGD` with two
  param groups (head 1e-2, rest 1e-3, momentum 0.9), cross-entropy. Sides:
  `torch` (eager), `torch-cl` (channels_last), `torch-compile`
  (`torch.compile`).

Weights are random on both sides (no downloads), FLOPs are the same. The
first step (compile / warm-up) is reported apart; then `--warmup` untimed
steps; then the median of `--steps` timed steps, each ending in a host
sync (`train_on_batch` returns floats; `loss.item()`).

    python benchmarks/bench_vs_torch.py                 # the CPU matrix
        # 64 px: all four backbones; 224 px: resnet50 (--backbones-large)
    python benchmarks/bench_vs_torch.py --sizes 64 --backbones resnet50
    python benchmarks/bench_vs_torch.py --gpu           # GPU, bf16, 224

Results: one JSON per run under `benchmarks/results/vs_torch/` (or
`--out-dir`), a markdown table printed and written next to them, and a PNG
chart when matplotlib is installed. The step itself is in `_vs_torch.py`.
"""

import argparse
import os
import time

import _harness
import _vs_torch
from _vs_torch import SIDES


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--backbones", nargs="+",
                        default=list(_vs_torch.BACKBONES))
    parser.add_argument("--backbones-large", nargs="+",
                        default=["resnet50"],
                        help="on CPU, the backbones also run at sizes above "
                             "64 px (default: resnet50, which keeps the "
                             "default CPU matrix under 20 minutes on 2 "
                             "cores); 'all' for every backbone")
    parser.add_argument("--strategies", nargs="+",
                        default=list(_vs_torch.STRATEGIES))
    parser.add_argument("--sides", nargs="+", default=None,
                        help=f"from {SIDES}; default: all but torch-compile "
                             "on CPU (add it explicitly), all on GPU")
    parser.add_argument("--batch", type=int, default=None,
                        help="default: 16 at 64 px, 4 at 224 px on CPU; 64 "
                             "on GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--kft-loop", choices=("fit", "train_on_batch"),
                        default="fit",
                        help="the kft step: inside model.fit (default) or "
                             "one train_on_batch call")
    parser.add_argument("--share-process", action="store_true",
                        help="run a side's strategies in one process (the "
                             "peak RSS of later rows then includes what "
                             "earlier rows left allocated)")
    parser.add_argument("--gpu", action="store_true",
                        help="GPU matrix: bf16 mixed precision both sides")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out-dir", default=_harness.results_path("vs_torch"),
                        help="where the JSON, table and chart go "
                             "(default: benchmarks/results/vs_torch)")
    args = parser.parse_args()
    if args.gpu and args.sizes == [64, 224]:
        args.sizes = [224]
    sides = args.sides or [s for s in SIDES
                           if args.gpu or s != "torch-compile"]
    tag = args.tag or ("gpu" if args.gpu else "cpu")
    results = []
    begin = time.perf_counter()
    for size in args.sizes:
        batch = args.batch or (64 if args.gpu else 16 if size <= 64 else 4)
        backbones = args.backbones
        if size > 64 and not args.gpu and args.backbones_large != ["all"]:
            backbones = [b for b in backbones if b in args.backbones_large]
        for backbone in backbones:
            for side in sides:
                cfgs = [{"side": side, "backbone": backbone,
                         "strategy": strategy, "size": size, "batch": batch,
                         "steps": args.steps, "warmup": args.warmup,
                         "gpu": args.gpu, "kft_loop": args.kft_loop}
                        for strategy in args.strategies]
                groups = [cfgs] if args.share_process else [
                    [cfg] for cfg in cfgs]
                for result in (r for group in groups for r in
                               _vs_torch.run_fresh(group, args.timeout)):
                    results.append(result)
                    name = (f"{tag}_{size}_{backbone}_{result['strategy']}"
                            f"_{side}.json")
                    _harness.write_json(os.path.join(args.out_dir, name),
                                        result)
                    status = (result.get("error", "")[-300:]
                              if "error" in result else
                              f"{1000 * result['median_step_s']:.0f} ms/step,"
                              f" first {result['first_step_s']:.1f} s, "
                              f"{result['peak_rss_mib']:.0f} MiB")
                    print(f"[{time.perf_counter() - begin:6.0f} s] {size} "
                          f"{backbone} {result['strategy']} {side}: "
                          f"{status}", flush=True)
    table = _vs_torch.table(results, sides)
    header = _harness.header(begin)
    print(header)
    print(table)
    _harness.write_text(os.path.join(args.out_dir, f"{tag}_table.md"),
                        header + "\n\n" + table + "\n")
    _vs_torch.chart(results, os.path.join(args.out_dir, f"{tag}_chart.png"))


if __name__ == "__main__":
    main()
