"""Time of kft's compiled training step alone, without Keras' per-call work.

Builds the kft side of `bench_vs_torch.py` (`_vs_torch.build_kft`: same
model, freezing, optimizer and batch), jits Keras' train step as
`train_on_batch` does (`profile_step.make_step`) and calls it on the
training state with a batch already on the device, `--steps` times after
two untimed calls (the first compiles), waiting for each step's outputs:
the XLA program's own time, for before/after checks of changes to it
(`train_on_batch` adds 10-20 ms of Keras' bookkeeping per call at 224 px,
which hides a few ms of difference in the program).

    python benchmarks/bench_train_function.py --backbone efficientnetb0 \
        --size 224 --strategy feature_extraction --steps 30
"""

import argparse
import time

import _harness
import _vs_torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnetb0",
                        choices=_vs_torch.BACKBONES)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=None,
                        help="default: 16 at 64 px and below, else 4")
    parser.add_argument("--strategy", default="feature_extraction",
                        choices=_vs_torch.STRATEGIES)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=None, help="JSON file")
    args = parser.parse_args()
    batch = args.batch or (16 if args.size <= 64 else 4)
    cfg = {"side": "kft", "backbone": args.backbone, "size": args.size,
           "strategy": args.strategy, "batch": batch, "gpu": False}
    model, x, y = _vs_torch.build_kft(cfg)
    import jax
    import numpy as np

    from profile_step import make_step

    step, state, data = make_step(model, x, y)
    times = []
    for _ in range(2 + args.steps):
        begin = time.perf_counter()
        logs, state = step(state, data)
        jax.block_until_ready(logs)
        times.append(time.perf_counter() - begin)
    first_s, times = times[0], times[2:]
    result = {**cfg, "first_step_s": first_s,
              "median_s": float(np.median(times)),
              "p25_s": float(np.percentile(times, 25)), "times_s": times,
              "peak_rss_mib": _harness.peak_rss_mib(),
              "loadavg": _harness.loadavg()}
    print(f"{args.backbone} {args.size} px {args.strategy}: "
          f"{1000 * result['median_s']:.1f} ms median, "
          f"{1000 * result['p25_s']:.1f} ms p25, first step {first_s:.1f} s")
    if args.out:
        _harness.write_json(args.out, result)


if __name__ == "__main__":
    main()
