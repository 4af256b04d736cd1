"""Convolutions on CPU: XLA's op vs kft's shifted form vs PyTorch.

Part 1 times one convolution (forward, and forward + gradients) at shapes
found in EfficientNet, MobileNet and ConvNeXt (depthwise) and in ResNet50
at 64x64 (3x3 on 2x2 maps): `jax.lax.conv_general_dilated` (what Keras
runs), kft's `shifted_depthwise_conv` / `shifted_conv` and
`torch.nn.functional.conv2d`; median of 20 calls. Part 2 runs the training
step of `bench_vs_torch.py` (same model, batch, optimizer; one fresh
process per backbone and setting) with
`build_classifier(fast_cpu_convs=False)` and `True`, and compares the
losses of the two runs (same weights and batch, so they must agree up to
float rounding).

    python benchmarks/bench_cpu_convs.py --size 64
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

    from kft.ops.cpu_convs import shifted_conv
    from kft.ops.cpu_convs import shifted_depthwise_conv

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

        def shifted(x, w):
            op = shifted_depthwise_conv if depthwise else shifted_conv
            return op(x, w, padding="same")

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
    parser.add_argument("--out-dir", default=_harness.RESULTS_DIR,
                        help="where cpu_convs_<size>.{json,md} go "
                             "(default: benchmarks/results)")
    args = parser.parse_args()
    begin = time.perf_counter()
    ops = "" if args.skip_ops else ops_table()
    models, results = models_table(args.size, args.backbones,
                                   args.strategies, args.steps)
    text = (_harness.header(begin) + "\n\n" + (ops + "\n\n" if ops else "")
            + models + "\n")
    print(text)
    name = os.path.join(args.out_dir, f"cpu_convs_{args.size}")
    _harness.write_json(name + ".json", results)
    _harness.write_text(name + ".md", text)


if __name__ == "__main__":
    main()
