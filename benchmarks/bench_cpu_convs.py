"""Convolutions on CPU: XLA's op vs kft's shifted form vs PyTorch.

Part 1 times one convolution (forward, and forward + gradients) at shapes
found in EfficientNet, MobileNet and ConvNeXt (depthwise) and in ResNet50
at 64x64 (3x3 on 2x2 maps): `jax.lax.conv_general_dilated` (what Keras
runs), kft's `conv_grads.depthwise_conv` / `conv_grads.conv` (shifted
forward, hand-written gradients) and
`torch.nn.functional.conv2d`; median of 20 calls. Part 2 runs the training
step of `bench_vs_torch.py` (same model, batch, optimizer; one fresh
process per backbone and setting) with
`build_classifier(fast_cpu_convs=False)` and `True`, and compares the
losses of the two runs (same weights and batch, so they must agree up to
float rounding).

Part 3 (`--backbone-shapes`) times forward + both gradients of every
distinct convolution (dense, depthwise, separable) of the four benchmark
backbones, or of `--backbones` (batch 16 at 64 px,
4 at 224 px): Keras' layer as is (XLA's gradients) vs the layer
`fast_cpu_convs` puts in its place (kft's gradients) vs PyTorch; "swapped"
says whether `fast_cpu_convs` replaces it.

    python benchmarks/bench_cpu_convs.py --size 64
    python benchmarks/bench_cpu_convs.py --backbone-shapes --size 64 \
        --skip-ops --backbones resnet50
"""

import argparse
import os
import time

import _harness
import _vs_torch

SHAPES = [  # kind, batch, side, channels, kernel
    ("depthwise", 16, 32, 96, 3), ("depthwise", 16, 16, 144, 5),
    ("depthwise", 16, 8, 480, 3), ("depthwise", 16, 4, 672, 5),
    ("depthwise", 16, 2, 1152, 3), ("depthwise", 4, 56, 96, 7),
    ("depthwise", 4, 7, 768, 7), ("dense", 16, 2, 512, 3),
    ("dense", 4, 1, 512, 3),
]


def _median_ms(fn, repeats=20):
    return 1000 * _harness.time_steps(fn, repeats, warmup=1)["median_s"]


def ops_table():
    import kft  # noqa: F401  (JAX backend)
    import jax
    import numpy as np
    import torch

    from kft.ops.conv_grads import conv
    from kft.ops.conv_grads import depthwise_conv

    def grad_of(f):
        return jax.jit(jax.grad(lambda x, w: (f(x, w) ** 2).sum(), (0, 1)))

    rows = ["| kind | batch x side x side x channels, kernel | XLA fwd ms | "
            "kft fwd ms | torch fwd ms | XLA fwd+grad ms | kft fwd+grad ms "
            "| torch fwd+grad ms | max abs diff |", "|---|---|" + "---:|" * 7]
    for kind, batch, side, channels, k in SHAPES:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch, side, side, channels)).astype("float32")
        depthwise = kind == "depthwise"
        # kft's kernel: (k, k, channels, 1) depthwise, (k, k, in, out) dense.
        w = rng.normal(size=(k, k, channels, 1 if depthwise else channels))
        w = (w / np.sqrt(k * k * (1 if depthwise else channels))).astype(
            "float32")
        # XLA wants the depthwise kernel as (k, k, 1, channels).
        w_xla = w.reshape(k, k, 1, channels) if depthwise else w
        groups = channels if depthwise else 1

        def stock(x, w):
            return jax.lax.conv_general_dilated(
                x, w, (1, 1), "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups)

        def shifted(x, w):  # shifted forward, kft's gradients
            if depthwise:
                return depthwise_conv(x, w, padding="same")
            return conv(x, w, padding="same", shifted=True)

        f_stock, f_fast = jax.jit(stock), jax.jit(shifted)
        g_stock, g_fast = grad_of(stock), grad_of(shifted)
        diff = float(np.abs(np.asarray(f_stock(x, w_xla))
                            - np.asarray(f_fast(x, w))).max())
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        tw = torch.from_numpy(w_xla).permute(3, 2, 0, 1).contiguous()
        txg, twg = tx.clone().requires_grad_(), tw.clone().requires_grad_()

        def torch_fwd():
            with torch.no_grad():
                torch.nn.functional.conv2d(tx, tw, padding=k // 2,
                                           groups=groups)

        def torch_grad():
            out = torch.nn.functional.conv2d(txg, twg, padding=k // 2,
                                             groups=groups)
            (out ** 2).sum().backward()

        cells = [
            _median_ms(lambda: f_stock(x, w_xla)),
            _median_ms(lambda: f_fast(x, w)),
            _median_ms(torch_fwd),
            _median_ms(lambda: g_stock(x, w_xla)),
            _median_ms(lambda: g_fast(x, w)),
            _median_ms(torch_grad),
        ]
        rows.append(f"| {kind} | {batch}x{side}x{side}x{channels}, {k}x{k} | "
                    + " | ".join(f"{c:.2f}" for c in cells)
                    + f" | {diff:.1e} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def _conv_layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _conv_layers(layer)
        elif type(layer) in (keras.layers.Conv2D,
                             keras.layers.DepthwiseConv2D,
                             keras.layers.SeparableConv2D):
            yield layer


def shapes_table(size, backbones, repeats=5):
    """Forward + both gradients of each distinct conv of `backbones`."""
    import kft
    import jax
    import keras
    import numpy as np
    import torch

    from kft.ops import cpu_convs

    batch = 16 if size <= 64 else 4
    rows = ["| backbone | input | layer | swapped | Keras/XLA fwd+grad ms "
            "| kft fwd+grad ms | torch fwd+grad ms |",
            "|---|---|---|---|---:|---:|---:|"]
    seen = set()
    for name in backbones:
        base = kft.create_backbone(name, weights=None,
                                   input_shape=(size, size, 3))
        for layer in _conv_layers(base):
            config = layer.get_config()
            shape = (batch, *layer.input.shape[1:])
            key = (type(layer).__name__, shape, config["kernel_size"],
                   config["strides"], config["padding"],
                   config.get("filters"), config.get("groups"),
                   config.get("depth_multiplier"))
            if key in seen:
                continue
            seen.add(key)
            cls = cpu_convs._replacement(layer)
            x = np.random.default_rng(0).normal(size=shape).astype("float32")
            times = []
            for variant in (type(layer), cls):
                if variant is None:
                    times.append(float("nan"))
                    continue
                copy = variant.from_config(config)
                copy.build(shape)

                def loss(values, x, copy=copy):
                    out, _ = copy.stateless_call(values, [], x)
                    return (out ** 2).sum()

                grad = jax.jit(jax.grad(loss, (0, 1)))
                values = [v.value for v in copy.trainable_variables]
                times.append(_median_ms(lambda: grad(values, x), repeats))
            times.append(_torch_ms(layer, shape, repeats))
            rows.append(
                f"| {name} | {'x'.join(map(str, shape))} | "
                f"{type(layer).__name__} {config['kernel_size']}"
                f"/{config['strides'][0]} {config['padding']} "
                f"-> {layer.output.shape[-1]} | {'yes' if cls else 'no'} | "
                + " | ".join(f"{t:.2f}" for t in times) + " |")
            print(rows[-1], flush=True)
        keras.backend.clear_session()
    del torch
    return "\n".join(rows)


def _torch_ms(layer, shape, repeats):
    import keras
    import torch

    separable = type(layer) is keras.layers.SeparableConv2D
    groups = (shape[-1] if separable
              or type(layer) is keras.layers.DepthwiseConv2D
              else layer.groups)
    (kh, kw), out = layer.kernel_size, layer.output.shape[-1]
    # A separable layer: the depthwise half, then a 1x1 convolution.
    middle = shape[-1] * layer.depth_multiplier if separable else out
    conv = torch.nn.Conv2d(shape[-1], middle, (kh, kw), layer.strides,
                           padding=0 if layer.padding == "valid" else
                           (kh // 2, kw // 2) if layer.strides == (1, 1)
                           else 0, dilation=layer.dilation_rate,
                           groups=groups, bias=layer.use_bias
                           and not separable)
    if separable:
        conv = torch.nn.Sequential(conv, torch.nn.Conv2d(
            middle, out, 1, bias=layer.use_bias))
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(shape[0], shape[3], shape[1], shape[2]).to(
        memory_format=torch.channels_last).requires_grad_()

    def step():
        conv.zero_grad()
        (conv(x) ** 2).sum().backward()

    return _median_ms(step, repeats)


def models_table(size, backbones, strategies, steps):
    rows = ["| backbone | strategy | Keras convolutions ms/step (first s) "
            "| kft convolutions ms/step (first s) | speed-up | max rel loss "
            "diff |",
            "|---|---|---:|---:|---:|---:|"]
    results = []
    for backbone in backbones:
        runs = {}
        for fast in (False, True):
            cfgs = [{"side": "kft", "backbone": backbone, "strategy": s,
                     "size": size, "batch": 16 if size <= 64 else 4,
                     "steps": steps, "warmup": 1, "gpu": False,
                     "fast_cpu_convs": fast} for s in strategies]
            for r in _vs_torch.run_fresh(cfgs, 900):
                runs[(r["strategy"], fast)] = r
                results.append(r)
        for strategy in strategies:
            a, b = runs[(strategy, False)], runs[(strategy, True)]
            if "error" in a or "error" in b:
                rows.append(f"| {backbone} | {strategy} | error | error | "
                            "- | - |")
                print(a.get("error", "")[-300:], b.get("error", "")[-300:])
                continue
            diff = max(abs(x - y) / max(abs(x), 1e-12)
                       for x, y in zip(a["losses"], b["losses"]))
            rows.append(
                f"| {backbone} | {strategy} | "
                f"{1000 * a['median_step_s']:.0f} ({a['first_step_s']:.1f}) "
                f"| {1000 * b['median_step_s']:.0f} "
                f"({b['first_step_s']:.1f}) | "
                f"{a['median_step_s'] / b['median_step_s']:.1f}x | "
                f"{diff:.1e} |")
            print(rows[-1], flush=True)
    return "\n".join(rows), results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--backbones", nargs="+", default=[
        "efficientnetb0", "mobilenetv3large", "convnext_tiny", "resnet50"])
    parser.add_argument("--strategies", nargs="+",
                        default=list(_vs_torch.STRATEGIES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip-ops", action="store_true")
    parser.add_argument("--backbone-shapes", action="store_true",
                        help="time every distinct conv of --backbones "
                             "(part 3) instead of whole steps (part 2)")
    parser.add_argument("--out-dir", default=_harness.RESULTS_DIR,
                        help="where cpu_convs_<size>.{json,md} go "
                             "(default: benchmarks/results)")
    args = parser.parse_args()
    begin = time.perf_counter()
    ops = "" if args.skip_ops else ops_table()
    if args.backbone_shapes:
        models, results = shapes_table(args.size, args.backbones), []
    else:
        models, results = models_table(args.size, args.backbones,
                                       args.strategies, args.steps)
    text = (_harness.header(begin) + "\n\n" + (ops + "\n\n" if ops else "")
            + models + "\n")
    print(text)
    name = os.path.join(args.out_dir, ("cpu_conv_shapes_" if
                                       args.backbone_shapes else
                                       "cpu_convs_") + str(args.size))
    _harness.write_json(name + ".json", results)
    _harness.write_text(name + ".md", text)


if __name__ == "__main__":
    main()
