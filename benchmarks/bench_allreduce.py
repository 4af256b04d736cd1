"""Bytes a data-parallel training step all-reduces, per backbone and strategy.

On this 2-core machine the speed of 8 simulated devices means nothing; what
a step sends between devices does not depend on the machine. For each
backbone, in a fresh process with 8 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`) under
`keras.distribution.DataParallel`, the script builds
`kft.build_classifier(backbone, 10, weights=None)`, compiles it (SGD with
momentum 0.9, sparse cross-entropy) and, for each strategy in turn on the
same model (as gradual unfreezing goes) after one first training step,
sets the trainable blocks with `kft.freeze` (which re-targets the
optimizer to them) and reads the compiled step with `kft.distributed.train_step_hlo` and
`collective_bytes`: bytes of all-reduce (and other collective) operations,
against the bytes of the trainable variables. Frozen blocks have no
gradient, so they send nothing.

Strategies: `feature_extraction`, `partial1` / `partial2` (top 1 / 2
blocks and the head: gradual unfreezing's first stages), `full`
(`bn="frozen"`: BatchNorm runs in inference mode), `full_bn_train`
(`bn="train"`: BatchNorm trains and its batch statistics are reduced
over devices too).

    python benchmarks/bench_allreduce.py        # 4 backbones at 64 px
    python benchmarks/bench_allreduce.py --backbones simple_cnn --size 16 \
        --out-dir /tmp/allreduce                # smoke run
"""

import argparse
import time

import _harness

NUM_CLASSES = 10
DEVICES = 8
STRATEGIES = {
    "feature_extraction": {"strategy": "feature_extraction"},
    "partial1": {"strategy": "partial", "n_blocks": 1},
    "partial2": {"strategy": "partial", "n_blocks": 2},
    "full": {"strategy": "full"},
    "full_bn_train": {"strategy": "full", "bn": "train"},
}


def worker(arg):
    """Runs in the 8-device process; yields one result per strategy."""
    import kft  # noqa: I001  (selects the JAX backend before Keras loads)
    import jax
    import keras
    from kft.distributed import collective_bytes
    from kft.distributed import train_step_hlo

    if jax.device_count() != DEVICES:
        raise RuntimeError(f"expected {DEVICES} devices, JAX has "
                           f"{jax.device_count()}")
    backbone, size, batch = arg["backbone"], arg["size"], arg["batch"]
    keras.utils.set_random_seed(0)
    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()))
    model = kft.build_classifier(backbone, NUM_CLASSES, weights=None,
                                 input_shape=(size, size, 3))
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    x, y = _harness.random_batch(batch, size, NUM_CLASSES)
    # One step builds the optimizer and metrics; `kft.freeze` then keeps
    # the optimizer matched to each new trainable set, as between stages
    # of gradual unfreezing.
    model.train_on_batch(x, y)
    for name in arg["strategies"]:
        begin = time.perf_counter()
        blocks = kft.freeze(model, **STRATEGIES[name])
        counts = collective_bytes(train_step_hlo(model, x, y))
        trainable = _nbytes(model.trainable_variables)
        yield {
            "backbone": backbone, "strategy": name, "size": size,
            "batch": batch, "blocks": blocks,
            "trainable_bytes": trainable,
            "weight_bytes": _nbytes(model.weights),
            "all_reduce_bytes": counts["all-reduce"]["bytes"],
            "all_reduce_ops": counts["all-reduce"]["ops"],
            "other_collective_bytes": counts["total_bytes"]
            - counts["all-reduce"]["bytes"],
            "extra_bytes": counts["all-reduce"]["bytes"] - trainable,
            "seconds": round(time.perf_counter() - begin, 1),
            "loadavg": _harness.loadavg(),
        }


def _nbytes(variables):
    return int(sum(v.value.size * v.value.dtype.itemsize for v in variables))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+",
                        default=["resnet50", "efficientnetb0",
                                 "convnext_tiny", "mobilenetv3large"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                        choices=list(STRATEGIES))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--out-dir", default=None,
                        help="default benchmarks/results/allreduce/")
    args = parser.parse_args()
    begin = time.perf_counter()
    records = []
    for backbone in args.backbones:
        print(f"{backbone} ({args.size} px, {DEVICES} devices):", flush=True)
        run = _harness.run_isolated(
            "bench_allreduce:worker",
            {"backbone": backbone, "size": args.size, "batch": args.batch,
             "strategies": args.strategies},
            env={"XLA_FLAGS": "--xla_force_host_platform_device_count="
                              f"{DEVICES}"},
            timeout=args.timeout)
        for record in run.results:
            print(f"  {record['strategy']}: all-reduce "
                  f"{record['all_reduce_bytes']} B, trainable "
                  f"{record['trainable_bytes']} B", flush=True)
        records += run.results
        if run.error:
            print(f"  {backbone} failed: {run.error}", flush=True)
            records.append({"backbone": backbone, "error": run.error})
    out_dir = args.out_dir or _harness.results_path("allreduce")
    stem = f"allreduce_{args.size}"
    _harness.write_json(f"{out_dir}/{stem}.json", records)
    table = _table(records, begin)
    _harness.write_text(f"{out_dir}/{stem}.md", table + "\n")
    print(table)
    print(f"wrote {out_dir}/{stem}.json and .md")


def _table(records, begin):
    lines = [_harness.header(begin), "",
             "| backbone | strategy | trainable MiB | all-reduced MiB / step "
             "| all-reduced - trainable (bytes) | ops | other collectives "
             "(bytes) |", "|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['backbone']} | failed | | | | | |")
            continue
        lines.append(
            f"| {r['backbone']} | {r['strategy']} | "
            f"{r['trainable_bytes'] / 2**20:.2f} | "
            f"{r['all_reduce_bytes'] / 2**20:.2f} | {r['extra_bytes']} | "
            f"{r['all_reduce_ops']} | {r['other_collective_bytes']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
