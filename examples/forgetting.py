"""Fine-tuning without forgetting on digits: source vs target accuracy.

Pretrains `simple_cnn` on digits 0-4 (its head kept), fine-tunes the whole
model on a few labelled images of digits 5-9 with no penalty, plain weight
decay (AdamW), L2-SP, EWC and LwF at several strengths, and measures the
target test accuracy and the source (0-4) test accuracy through the kept
source head. Prints a markdown table (mean over seeds), writes JSON and a
trade-off plot (source vs target accuracy).

    nice -n 5 python examples/forgetting.py --seeds 0 1 2 \
        --out-dir examples/results/forgetting
"""

import argparse
import json
import os
import time

import kft  # noqa: I001  (selects the JAX backend before Keras loads)
import keras
import numpy as np

from kft import _plotting


def methods(args):
    """(method, strength) -> penalty factory (None: no penalty)."""
    grid = [("none", 0.0, None)]
    grid += [("weight_decay", s, None) for s in args.weight_decay]
    grid += [("l2sp", s, lambda s=s, f=None: kft.L2SP(s))
             for s in args.l2sp]
    grid += [("ewc", s, lambda s=s, f=None: kft.EWC(s, f)) for s in args.ewc]
    grid += [("lwf", s, lambda s=s, f=None: kft.LwF(2.0, s))
             for s in args.lwf]
    return grid


def pretrain(data, shape, args, seed):
    """The source classifier on 70% of the 0-4 images; the rest tests."""
    keras.utils.set_random_seed(seed)
    x, y = data.source
    n = int(0.7 * len(y))
    source = kft.build_classifier("simple_cnn", len(data.source_classes),
                                  weights=None, input_shape=shape)
    source.compile(keras.optimizers.Adam(3e-3),
                   keras.losses.SparseCategoricalCrossentropy(
                       from_logits=True), metrics=["accuracy"])
    source.fit(x[:n], y[:n], epochs=args.source_epochs,
               batch_size=args.batch_size, verbose=0)
    return source, (x[:n], y[:n]), (x[n:], y[n:])


def fine_tune_one(data, shape, source, fisher, method, strength, factory,
                  args, seed):
    keras.utils.set_random_seed(seed)
    target = kft.build_classifier("simple_cnn", len(data.target_classes),
                                  weights=None, input_shape=shape)
    target.get_layer("simple_cnn").set_weights(
        source.get_layer("simple_cnn").get_weights())
    model = kft.with_source_head(target, source)
    if factory is not None:
        kft.regularize(model, factory(f=fisher))
    decay = strength if method == "weight_decay" else 0.0
    model.compile(keras.optimizers.AdamW(args.lr, weight_decay=decay),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), metrics=["accuracy"])
    model.fit(*data.target_train, epochs=args.target_epochs,
              batch_size=args.batch_size, verbose=0)
    return model


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def table(rows, before):
    groups = {}
    for r in rows:
        groups.setdefault((r["method"], r["strength"]), []).append(r)
    lines = ["| method | strength | target acc | source acc (0-4) | seeds |",
             "|---|---|---|---|---|"]
    for (method, strength), rs in groups.items():
        t = [r["target_acc"] for r in rs]
        s = [r["source_acc"] for r in rs]
        lines.append(
            f"| {method} | {strength:g} | {np.mean(t):.3f} ± {np.std(t):.3f}"
            f" | {np.mean(s):.3f} ± {np.std(s):.3f} | {len(rs)} |")
    lines.append(f"| pretrained (before fine-tuning) | - | - | "
                 f"{np.mean(before):.3f} | {len(before)} |")
    return "\n".join(lines), groups


def plot(groups, before, path):
    fig, ax = _plotting.new_figure(figsize=(6, 4.5))
    markers = {"none": "o", "weight_decay": "s", "l2sp": "^", "ewc": "D",
               "lwf": "v"}
    for method, marker in markers.items():
        pts = [(np.mean([r["target_acc"] for r in rs]),
                np.mean([r["source_acc"] for r in rs]), s)
               for (m, s), rs in groups.items() if m == method]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker,
                label=method)
        for t, s, strength in pts:
            if method != "none":
                ax.annotate(f"{strength:g}", (t, s), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    ax.axhline(np.mean(before), color="grey", ls="--", lw=1,
               label="source acc before")
    ax.set_xlabel("target accuracy (digits 5-9, test)")
    ax.set_ylabel("source accuracy (digits 0-4, kept head)")
    ax.set_title("Fine-tuning without forgetting (mean over seeds)")
    ax.legend(fontsize=8)
    return _plotting.finish(fig, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--target-per-class", type=int, default=10)
    parser.add_argument("--source-epochs", type=int, default=15)
    parser.add_argument("--target-epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, nargs="*",
                        default=[0.1, 1.0])
    parser.add_argument("--l2sp", type=float, nargs="*",
                        default=[0.01, 0.1, 1.0])
    parser.add_argument("--ewc", type=float, nargs="*",
                        default=[0.02, 0.2, 2.0],
                        help="lam, the Fisher normalised to mean 1")
    parser.add_argument("--lwf", type=float, nargs="*",
                        default=[0.3, 1.0, 3.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out-dir", default="examples/results/forgetting")
    args = parser.parse_args()

    begin = time.perf_counter()
    shape = (args.image_size, args.image_size, 3)
    rows, before = [], []
    for seed in args.seeds:
        data = kft.datasets.digits(image_size=args.image_size,
                                   target_per_class=args.target_per_class,
                                   seed=seed)
        source, train, test = pretrain(data, shape, args, seed)
        before.append(accuracy(source, *test))
        fisher = kft.estimate_fisher(source, train, batch_size=32,
                                     normalize="mean")
        print(f"seed {seed}: source acc before {before[-1]:.3f}, "
              f"{len(data.target_train[1])} target train images "
              f"({time.perf_counter() - begin:.0f} s)", flush=True)
        for method, strength, factory in methods(args):
            model = fine_tune_one(data, shape, source, fisher, method,
                                  strength, factory, args, seed)
            row = {"seed": seed, "method": method, "strength": strength,
                   "target_acc": accuracy(model, *data.target_test),
                   "source_acc": accuracy(kft.source_classifier(model),
                                          *test)}
            rows.append(row)
            print(f"  {method:12s} {strength:<6g} target "
                  f"{row['target_acc']:.3f} source {row['source_acc']:.3f} "
                  f"({time.perf_counter() - begin:.0f} s)", flush=True)
    text, groups = table(rows, before)
    wall = time.perf_counter() - begin
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "forgetting.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "source_before": before,
                   "wall_s": wall}, f, indent=1)
    with open(os.path.join(args.out_dir, "forgetting.md"), "w") as f:
        f.write(text + "\n")
    plot(groups, before, os.path.join(args.out_dir, "forgetting.png"))
    print(text)
    print(f"wall time {wall:.0f} s; wrote {args.out_dir}/forgetting.png")


if __name__ == "__main__":
    main()
