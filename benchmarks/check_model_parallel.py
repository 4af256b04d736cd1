"""Model parallel vs data parallel vs one device: same training, same weights?

For each backbone, in a fresh process with 8 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), trains
`kft.build_classifier(backbone, 10, weights=None)` (frozen with
`kft.freeze(model, strategy)`, SGD with momentum 0.9, sparse
cross-entropy) for `--steps` steps on the same random batches three times,
from the same initial weights:

- `single`: no distribution (one device);
- `data`: `keras.distribution.DataParallel` over the 8 devices;
- `model`: `keras.distribution.ModelParallel` on a 2x4 ("batch" x "model")
  mesh with `kft.layout_map(backbone, mesh)`.

Prints and writes per backbone: the largest weight and loss difference
of `data` and `model` against `single` (and how far the weights moved, for
scale), how many kernels the layout map splits and the parameter bytes
each device holds under it.

    python benchmarks/check_model_parallel.py \
        --backbones convnext_base efficientnetb7 --size 32 --batch 8 --steps 2
    python benchmarks/check_model_parallel.py --backbones simple_cnn \
        --size 16 --steps 1 --out /tmp/mp.json     # smoke run
"""

import argparse
import time

import _harness

NUM_CLASSES = 10
DEVICES = 8
MESH = (2, 4)


def worker(arg):
    """Runs in the 8-device process; yields one result per mode."""
    import kft  # noqa: I001  (selects the JAX backend before Keras loads)
    import jax
    import keras
    import numpy as np

    backbone, size, batch, steps, strategy = (
        arg["backbone"], arg["size"], arg["batch"], arg["steps"],
        arg["strategy"])
    if jax.device_count() != DEVICES:
        raise RuntimeError(f"expected {DEVICES} devices, JAX has "
                           f"{jax.device_count()}")
    rng = np.random.default_rng(0)
    batches = [_harness.random_batch(batch, size, NUM_CLASSES, rng)
               for _ in range(steps)]

    def build():
        model = kft.build_classifier(backbone, NUM_CLASSES, weights=None,
                                     input_shape=(size, size, 3))
        kft.freeze(model, strategy)
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        return model

    def train(distribution, initial):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        begin = time.perf_counter()
        if distribution is None:
            model = build()
        else:
            with distribution.scope():
                model = build()
        if initial is not None:
            model.set_weights(initial)
        start = [np.asarray(w) for w in model.get_weights()]
        losses = []
        for x, y in batches:
            losses.append(float(model.train_on_batch(x, y)))
        weights = [np.asarray(w) for w in model.get_weights()]
        return model, start, weights, losses, time.perf_counter() - begin

    _, initial, reference, ref_losses, seconds = train(None, None)
    moved = max(float(np.max(np.abs(w - w0)))
                for w, w0 in zip(reference, initial))
    yield {"backbone": backbone, "mode": "single", "losses": ref_losses,
           "max_weight_change": moved, "seconds": round(seconds, 1),
           "parameters": int(sum(w.size for w in initial))}

    mesh = kft.device_mesh(MESH, ("batch", "model"))
    distributions = {
        "data": keras.distribution.DataParallel(
            devices=keras.distribution.list_devices()),
        "model": keras.distribution.ModelParallel(
            layout_map=kft.layout_map(backbone, mesh),
            batch_dim_name="batch"),
    }
    for mode, distribution in distributions.items():
        model, _, weights, losses, seconds = train(distribution, initial)
        record = {
            "backbone": backbone, "mode": mode, "losses": losses,
            "max_weight_diff": max(float(np.max(np.abs(a - b)))
                                   for a, b in zip(weights, reference)),
            "max_loss_diff": max(abs(a - b)
                                 for a, b in zip(losses, ref_losses)),
            "seconds": round(seconds, 1),
        }
        record.update(_placement(model))
        yield record
        del model


def _placement(model):
    """How the variables lie: split kernels, bytes per device."""
    import numpy as np

    split, total, per_device = 0, 0, 0
    for v in model.variables:
        value = v.value
        nbytes = value.size * value.dtype.itemsize
        shard = value.sharding.shard_shape(value.shape)
        total += nbytes
        per_device += int(np.prod(shard)) * value.dtype.itemsize
        split += shard != tuple(value.shape)
    return {"split_variables": int(split), "variable_mib": total / 2**20,
            "per_device_mib": per_device / 2**20}


def plan(backbones, mesh_shape=MESH):
    """What the layout map splits, without devices or compiling: per
    backbone (without a head), kernels split and parameter MiB per device
    of the model axis."""
    import kft  # noqa: I001
    import numpy as np

    fake = kft.device_mesh(mesh_shape, devices=[
        f"device{i}" for i in range(int(np.prod(mesh_shape)))])
    parts = mesh_shape[1]
    records = []
    for backbone in backbones:
        model = kft.create_backbone(backbone, weights=None,
                                    input_shape=(32, 32, 3))
        layouts = kft.layout_map(model, fake)
        total = split = 0
        for v in model.variables:
            nbytes = int(np.prod(v.shape)) * 4
            total += nbytes
            split += nbytes if layouts[v.path] is not None else 0
        records.append({
            "backbone": backbone, "mode": "plan", "mesh": list(mesh_shape),
            "split_kernels": len(layouts),
            "variables": len(model.variables),
            "variable_mib": total / 2**20,
            "per_device_mib": (total - split + split / parts) / 2**20})
        print(f"  {backbone}: {len(layouts)} of {len(model.variables)} "
              f"variables split, {records[-1]['per_device_mib']:.1f} of "
              f"{total / 2**20:.1f} MiB per device", flush=True)
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+",
                        default=["convnext_base", "efficientnetb7"])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--strategy", default="full",
                        choices=["feature_extraction", "partial", "full"])
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--plan-only", action="store_true",
                        help="only what the layout map splits (no training)")
    parser.add_argument("--out", default=None,
                        help="JSON file; default benchmarks/results/"
                             "allreduce/model_parallel.json")
    args = parser.parse_args()
    begin = time.perf_counter()
    if args.plan_only:
        path = args.out or _harness.results_path("allreduce",
                                                 "layout_plan.json")
        _harness.write_json(path, plan(args.backbones))
        print(f"wrote {path}")
        return
    records = []
    for backbone in args.backbones:
        print(f"{backbone}: single, data (8), model (2x4) ...", flush=True)
        run = _harness.run_isolated(
            "check_model_parallel:worker",
            {"backbone": backbone, "size": args.size, "batch": args.batch,
             "steps": args.steps, "strategy": args.strategy},
            env={"XLA_FLAGS": "--xla_force_host_platform_device_count="
                              f"{DEVICES}"},
            timeout=args.timeout)
        for record in run.results:
            record.update(size=args.size, batch=args.batch,
                          steps=args.steps, strategy=args.strategy,
                          loadavg=_harness.loadavg())
            print("  ", record, flush=True)
        records += run.results
        if run.error:
            print(f"  {backbone} failed: {run.error}", flush=True)
            records.append({"backbone": backbone, "error": run.error})
    path = args.out or _harness.results_path("allreduce",
                                             "model_parallel.json")
    _harness.write_json(path, records)
    print(_table(records, begin))
    print(f"wrote {path}")


def _table(records, begin):
    lines = [_harness.header(begin), "",
             "| backbone | mode | params | max weight diff vs 1 device | "
             "max loss diff | weights moved | split kernels | MiB / device "
             "| s |", "|---|---|---|---|---|---|---|---|---|"]
    moved = {r["backbone"]: r for r in records if r.get("mode") == "single"}
    for r in records:
        if "error" in r or r["mode"] == "single":
            continue
        single = moved.get(r["backbone"], {})
        lines.append(
            f"| {r['backbone']} | {r['mode']} | "
            f"{single.get('parameters', 0) / 1e6:.1f} M | "
            f"{r['max_weight_diff']:.2e} | {r['max_loss_diff']:.2e} | "
            f"{single.get('max_weight_change', float('nan')):.2e} | "
            f"{r['split_variables']} | {r['per_device_mib']:.1f} of "
            f"{r['variable_mib']:.1f} | {r['seconds']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
