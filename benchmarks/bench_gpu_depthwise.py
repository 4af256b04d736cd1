"""Depthwise convolutions on one GPU: XLA's (cuDNN) vs kft's shifted form.

The second H200 run of `bench_gpu.py` (benchmarks/RESULTS.md) found one
depthwise convolution (cuDNN's `conv2d_grouped_direct_kernel`) taking
2.63 ms of EfficientNetB0's 6.76 ms feature-extraction step at 224 px,
batch 128, bf16, and a grouped kernel gradient 0.93 ms of its full step;
the first run found ConvNeXt-tiny's feature extraction at 0.46x
`torch.compile`'s speed, unprofiled (its 7x7 convolutions are grouped
`Conv2D`s with one group per channel: depthwise, timed here as such).
Depthwise convolutions are memory-bound; a shifted-slice sum (k*k
multiply-adds over slices of the input, which XLA fuses into one loop)
reads the input once. This times, for every distinct depthwise layer of
the chosen backbones (shape, kernel, strides), on random bf16 data
(standard normal, drawn on the device, the same for a layer every run):

- `xla`: `keras.ops.depthwise_conv`, what Keras' `DepthwiseConv2D` runs
  (a grouped convolution, given to cuDNN on a GPU; the same XLA
  convolution as ConvNeXt's grouped `Conv2D`);
- `shifted`: `kft.ops.shifted_conv.shifted_depthwise_conv`, gradients by
  autodiff;
- `kft_vjp`: `kft.ops.depthwise_grads.depthwise_conv` (the CPU path's
  hand-written backward pass), training only.

"forward" is the layer's output; "train" the input and kernel gradients
of `sum(output * g)` with the forward (what full fine-tuning needs; a
frozen layer needs the input gradient only, not timed apart). ms are the
median of `--windows` windows of `--calls` calls, each window ending with
`block_until_ready`; a layer's row also gives how many layers of the
backbone share it, and the totals weigh rows by it. The largest
difference of each variant's output and gradients from `xla`'s, relative
to the largest of `xla`'s, is in the JSON (`*_max_rel_diff`, computed
on the device in float32; bf16 rounding: ~1e-2). Nothing here changes
what kft's models run on a GPU.

`depthwise.json` is rewritten (whole: `_harness` writes a temporary
file and renames it) after every layer, so a run cut short keeps the
layers it measured; `table.md` is written at the end. `--budget SECONDS` starts no more
layers once that long has passed since the start (the layer in progress
runs to its end): each backbone left unfinished gets a row
`{"skipped": "budget", "distinct_layers_skipped": N}` (None: not
started) in the JSON, a line in the output and one under the table.

    bash benchmarks/gpu_check.sh --run bench_gpu_depthwise.py --out-dir $OUT/dw
    python benchmarks/bench_gpu_depthwise.py --dry-run --out-dir /tmp/dw  # CPU
"""

import argparse
import collections
import math
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import _harness  # noqa: E402

BACKBONES = ("efficientnetb0", "mobilenetv3large", "convnext_tiny")
VARIANTS = ("xla", "shifted", "kft_vjp")
GPU_DEFAULTS = {"size": 224, "batch": 128, "calls": 20, "windows": 3,
                "dtype": "bfloat16"}
DRY_DEFAULTS = {"size": 32, "batch": 2, "calls": 2, "windows": 1,
                "dtype": "float32"}


def depthwise_layers(backbone, size):
    """The distinct depthwise layers of `backbone` at `size` px:
    `{(input_hw, channels, kernel_hw, strides, padding, multiplier,
    dilation): [layer names]}`, in model order."""
    import keras

    import kft

    model = kft.build_classifier(backbone, 10, weights=None,
                                 input_shape=(size, size, 3))
    found = collections.OrderedDict()
    todo = list(model.layers)
    while todo:
        layer = todo.pop(0)
        if isinstance(layer, keras.Model):
            todo[:0] = layer.layers
        elif isinstance(layer, keras.layers.DepthwiseConv2D) or (
                # ConvNeXt's: a Conv2D with one group per channel.
                isinstance(layer, keras.layers.Conv2D)
                and layer.groups == layer.filters
                == layer.input.shape[-1] > 1):
            _, h, w, c = layer.input.shape
            key = ((h, w), c, tuple(layer.kernel_size), tuple(layer.strides),
                   layer.padding, getattr(layer, "depth_multiplier", 1),
                   tuple(layer.dilation_rate))
            found.setdefault(key, []).append(layer.name)
    if not found:
        raise ValueError(f"{backbone!r} has no DepthwiseConv2D layer")
    return found


def _functions(key):
    """`{variant: (forward, train)}` jitted functions of `(x, k[, g])`."""
    import jax
    import keras

    from kft.ops.depthwise_grads import depthwise_conv
    from kft.ops.shifted_conv import shifted_depthwise_conv

    _, _, _, strides, padding, _, dilation = key

    def xla(x, k):
        return keras.ops.depthwise_conv(x, k, strides, padding,
                                        "channels_last", dilation)

    def shifted(x, k):
        return shifted_depthwise_conv(x, k, strides, padding, dilation)

    def kft_vjp(x, k):
        return depthwise_conv(x, k, strides, padding, dilation)

    def train(forward):
        def grads(x, k, g):
            return jax.grad(lambda x, k: (forward(x, k) * g).astype(
                "float32").sum(), argnums=(0, 1))(x, k)
        return jax.jit(grads)

    return {"xla": (jax.jit(xla), train(xla)),
            "shifted": (jax.jit(shifted), train(shifted)),
            "kft_vjp": (None, train(kft_vjp))}


def _time(run, calls, windows):
    """First call's seconds, then the median window's ms per call."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(run())
    first_s = time.perf_counter() - start
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(calls):
            out = run()
        jax.block_until_ready(out)
        times.append(1000 * (time.perf_counter() - start) / calls)
    return first_s, statistics.median(times), times


def _inputs(seed, x_shape, k_shape, g_shape, dtype):
    """x, k (divided by the kernel's area) and g, standard normal, made in
    one program on the device: one float32 draw (on CPU a third of the
    compile time of three), cut up and rounded to `dtype` (bf16 drawn
    directly takes 128 distinct values, none past 2.9)."""
    import jax

    shapes = (x_shape, k_shape, g_shape)
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.random.normal(jax.random.key(seed), (sum(sizes),), "float32")
    out, start = [], 0
    for shape, size, scale in zip(shapes, sizes, (
            1.0, 1.0 / (k_shape[0] * k_shape[1]), 1.0)):
        out.append((flat[start:start + size].reshape(shape)
                    * scale).astype(dtype))
        start += size
    return tuple(out)


def _rel_diff(outs, references):
    """The largest over the pairs of max |a - b| / max |b| (1 where b is
    all 0), in float32: a 0-d array, on the device of the arrays."""
    import jax.numpy as jnp

    diffs = []
    for a, b in zip(outs, references):
        a, b = a.astype("float32"), b.astype("float32")
        scale = jnp.abs(b).max()
        diffs.append(jnp.abs(a - b).max() / jnp.where(scale > 0, scale, 1.0))
    return jnp.stack(diffs).max()


def _budget_spent(args, begin):
    """Whether `--budget` seconds have passed since `begin` (a
    `time.perf_counter()`)."""
    return (args.budget is not None and begin is not None
            and time.perf_counter() - begin >= args.budget)


def measure(backbone, args, log=print, on_row=None, begin=None):
    """One row per distinct depthwise layer of `backbone`, each passed to
    `on_row` as soon as it is measured. With `--budget` (counted from
    `begin`) spent, no more layers start: the last row is then one saying
    how many were not started (`"skipped": "budget"`)."""
    import jax

    inputs = jax.jit(_inputs, static_argnums=(1, 2, 3, 4))
    rel_diff = jax.jit(_rel_diff)

    def stop(not_started):
        elapsed = time.perf_counter() - begin
        row = {"backbone": backbone, "skipped": "budget",
               "budget_s": args.budget, "elapsed_s": elapsed,
               "distinct_layers_skipped": not_started, "dtype": args.dtype}
        log(f"   {backbone}: --budget {args.budget:g} s spent ({elapsed:.1f}"
            f" s): " + ("not started" if not_started is None else
                        f"{not_started} distinct layer(s) not started"),
            flush=True)
        if on_row is not None:
            on_row(row)
        return row

    if _budget_spent(args, begin):
        return [stop(None)]  # its model not even built
    rows = []
    layers = list(depthwise_layers(backbone, args.size).items())[:args.limit]
    for i, (key, names) in enumerate(layers):
        if _budget_spent(args, begin):
            return rows + [stop(len(layers) - i)]
        (h, w), c, kernel_hw, strides, padding, multiplier, _ = key
        x_shape = (args.batch, h, w, c)
        k_shape = (*kernel_hw, c, multiplier)
        functions = _functions(key)
        g_shape = jax.eval_shape(functions["xla"][0], *(
            jax.ShapeDtypeStruct(s, args.dtype)
            for s in (x_shape, k_shape))).shape
        x, k, g = inputs(i, x_shape, k_shape, g_shape, args.dtype)
        reference = functions["xla"][0](x, k)
        reference_grads = functions["xla"][1](x, k, g)
        row = {"backbone": backbone, "layers": names, "count": len(names),
               "input": [args.batch, h, w, c], "kernel": list(kernel_hw),
               "strides": list(strides), "padding": padding,
               "multiplier": multiplier, "dtype": args.dtype}
        for variant in args.variants:
            forward, train = functions[variant]
            if forward is not None:
                row[f"{variant}_max_rel_diff"] = float(
                    rel_diff((forward(x, k),), (reference,)))
                first, ms, times = _time(lambda: forward(x, k), args.calls,
                                         args.windows)
                row[f"{variant}_forward_ms"] = ms
                row[f"{variant}_forward_first_s"] = first
                row[f"{variant}_forward_windows_ms"] = times
            row[f"{variant}_train_max_rel_diff"] = float(
                rel_diff(train(x, k, g), reference_grads))
            first, ms, times = _time(lambda: train(x, k, g), args.calls,
                                     args.windows)
            row[f"{variant}_train_ms"] = ms
            row[f"{variant}_train_first_s"] = first
            row[f"{variant}_train_windows_ms"] = times
        rows.append(row)
        log(f"   {backbone} {_row_label(row)}: " + ", ".join(
            f"{name} {row[name]:.3f}" for name in _ms_columns(args.variants)
            if name in row), flush=True)
        if on_row is not None:
            on_row(row)
        jax.clear_caches()  # the executables of earlier layers need not stay
    return rows


def _ms_columns(variants):
    return [f"{v}_{mode}_ms" for mode in ("forward", "train")
            for v in variants if not (v == "kft_vjp" and mode == "forward")]


def _row_label(row):
    b, h, w, c = row["input"]
    return (f"{h}x{w}x{c} k{row['kernel'][0]}x{row['kernel'][1]} "
            f"s{row['strides'][0]}")


def table(rows, variants):
    """The markdown table of the measured rows, then a line naming what
    `--budget` left out, if anything."""
    skipped = [r for r in rows if "skipped" in r]
    rows = [r for r in rows if "skipped" not in r]
    columns = _ms_columns(variants)
    lines = ["| backbone | input (h x w x c) | kernel, stride | layers | "
             + " | ".join(c.replace("_ms", " ms").replace("_", " ")
                          for c in columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            f"| {row['backbone']} | {_row_label(row).split(' ')[0]} | "
            f"{row['kernel'][0]}x{row['kernel'][1]}, {row['strides'][0]} | "
            f"{row['count']} | " + " | ".join(
                f"{row[c]:.3f}" if c in row else "-" for c in columns) + " |")
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        mine = [r for r in rows if r["backbone"] == backbone]
        lines.append(
            f"| {backbone} | all, weighted by layers | | "
            f"{sum(r['count'] for r in mine)} | " + " | ".join(
                f"{sum(r[c] * r['count'] for r in mine):.3f}"
                if all(c in r for r in mine) else "-" for c in columns)
            + " |")
    if skipped:
        lines += ["", f"Not measured, --budget {skipped[0]['budget_s']:g} s "
                      f"spent ({skipped[0]['elapsed_s']:.0f} s): " + "; ".join(
                          f"{r['backbone']} (" + (
                              "not started" if r["distinct_layers_skipped"]
                              is None else f"{r['distinct_layers_skipped']}"
                              " distinct layer(s) not started") + ")"
                          for r in skipped) + "."]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, float32, tiny sizes (32 px, batch 2, "
                             "2 calls, 1 window)")
    parser.add_argument("--out-dir",
                        default=_harness.results_path("gpu_depthwise"))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES),
                        choices=BACKBONES)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        choices=VARIANTS)
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first LIMIT distinct layers of each "
                             "backbone (default: all)")
    parser.add_argument("--budget", type=float, default=None,
                        metavar="SECONDS",
                        help="start no more layers once SECONDS have passed "
                             "since the start (a layer started runs to its "
                             "end); what was not started is named in the "
                             "output and the JSON (default: no limit)")
    for name, kind, text in (
            ("size", int, "image size (224; dry run 32)"),
            ("batch", int, "batch size (128; dry run 2)"),
            ("calls", int, "calls per timed window (20; dry run 2)"),
            ("windows", int, "timed windows, median reported (3; dry run "
                             "1)"),
            ("dtype", str, "bfloat16 (dry run float32)")):
        parser.add_argument(f"--{name}", type=kind, default=None, help=text)
    args = parser.parse_args(argv)
    defaults = DRY_DEFAULTS if args.dry_run else GPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("size", "batch", "calls", "windows", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be 1 or more, not "
                         f"{getattr(args, name)}")
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be more than 0, not {args.budget:g}")
    if args.dtype not in ("bfloat16", "float16", "float32"):
        parser.error(f"--dtype must be bfloat16, float16 or float32, not "
                     f"{args.dtype!r}")
    if "xla" not in args.variants:
        args.variants.insert(0, "xla")  # the reference of the differences
    return args


def main(argv=None):
    args = parse_args(argv)
    begin = time.perf_counter()
    import jax

    platform = jax.default_backend()
    if platform != "gpu" and not args.dry_run:
        print(f"bench_gpu_depthwise: JAX sees no GPU (platform "
              f"{platform!r}); use --dry-run to try it on CPU",
              file=sys.stderr)
        return 3
    print(f"bench_gpu_depthwise: {jax.devices()[0].device_kind}, "
          f"{args.dtype}, batch {args.batch}, {args.size} px", flush=True)
    rows = []

    def keep(row):  # the JSON after every layer: a kill keeps what was done
        rows.append(row)
        _harness.write_json(os.path.join(args.out_dir, "depthwise.json"),
                            rows)

    for backbone in args.backbones:
        measure(backbone, args, on_row=keep, begin=begin)
    text = (_harness.header(begin) + "\n\n"
            + f"{jax.devices()[0].device_kind}, {args.dtype}, batch "
              f"{args.batch}, {args.size} px, ms per call (median of "
              f"{args.windows} windows of {args.calls} calls)\n\n"
            + table(rows, args.variants) + "\n")
    print(text)
    _harness.write_text(os.path.join(args.out_dir, "table.md"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
