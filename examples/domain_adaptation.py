"""Unsupervised domain adaptation, digits -> digits-M (lecture 004, exercise 3).

Source domain: scikit-learn's digits 0-4 (labelled). Target domain:
digits-M, the same kind of scans blended with photo patches (MNIST-M
recipe), unlabelled for training, a labelled held-out half for testing.
The digit pool is split per seed into disjoint halves: one half is the
source, the other (blended) the target, so no scan is in both domains.

Methods (all from the same source-only checkpoint, same extra epochs):
source-only, AdaBN (`kft.adapt_batchnorm`), DANN (gradient reversal),
DANN with the confusion objective (`adversary="confusion"`), MMD, CORAL
(`kft.DomainAdaptationModel`). Prints the table (mean, std over seeds),
writes a bar plot, a 2-D PCA embedding plot of features (seed 0), and the
domain-shift diagnostic of the source-only model on digits and digits-M.

    nice -n 5 .venv/bin/python examples/domain_adaptation.py --seeds 0 1 2
"""

import argparse
import json
import os
import time

import numpy as np

import kft
import keras


def split(seed, image_size):
    plain = kft.datasets.digits(image_size=image_size)
    blended = kft.datasets.digits_m(image_size=image_size, photos="sklearn")
    x, y = plain.source
    xm = blended.source[0]
    order = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    src, tgt = order[:half], order[half:]
    t_train, t_test = tgt[:len(tgt) // 2], tgt[len(tgt) // 2:]
    return {"source": (x[src], y[src]), "target_x": xm[t_train],
            "target_test": (xm[t_test], y[t_test]),
            "source_test": (x[t_test], y[t_test]), "num_classes": 5}


def new_classifier(image_size, seed):
    keras.utils.set_random_seed(seed)
    return kft.build_classifier("simple_cnn", num_classes=5, weights=None,
                                input_shape=(image_size, image_size, 3))


def compile_(model, lr):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def accuracy(model, data):
    x, y = data
    pred = np.argmax(model.predict(x, batch_size=128, verbose=0), -1)
    return float(np.mean(pred == y))


def run_seed(seed, args, log):
    data = split(seed, args.image_size)
    clf = new_classifier(args.image_size, seed)
    kft.freeze(clf, "full", bn="train")
    compile_(clf, args.lr)
    clf.fit(*data["source"], batch_size=args.batch_size,
            epochs=args.pretrain_epochs, verbose=0)
    checkpoint = clf.get_weights()
    results, extra = {}, {}

    # Source-only: the same extra epochs without the target.
    t = time.time()
    clf.fit(*data["source"], batch_size=args.batch_size,
            epochs=args.adapt_epochs, verbose=0)
    results["source_only"] = accuracy(clf, data["target_test"])
    extra["source_only_source_acc"] = accuracy(clf, data["source_test"])
    log(f"seed {seed} source_only {results['source_only']:.3f} "
        f"({time.time() - t:.1f}s)")
    # AdaBN on the source-only model.
    t = time.time()
    kft.adapt_batchnorm(clf, data["target_x"])
    results["adabn"] = accuracy(clf, data["target_test"])
    log(f"seed {seed} adabn {results['adabn']:.3f} ({time.time() - t:.1f}s)")
    clf.set_weights(checkpoint)
    # Continue-from-checkpoint source-only model, before adaptation, for the
    # embedding plot and the diagnostic.
    features_before = None
    if seed == args.seeds[0]:
        features_before = _features(clf, data)
        if not args.no_diagnostic:
            extra["diagnostic"] = _diagnostic(clf, data, args)
    for name in ("dann_reversal", "dann_confusion", "mmd", "coral"):
        t = time.time()
        clf.set_weights(checkpoint)
        method, _, adversary = name.partition("_")
        model = kft.DomainAdaptationModel(
            clf, method=method, weight=args.weight, seed=seed,
            hidden_units=tuple(args.hidden),
            adversary=adversary or "confusion")
        compile_(model, args.lr)
        history = model.fit(
            kft.adaptation.domain_pairs(data["source"], data["target_x"],
                                        batch_size=args.batch_size,
                                        seed=seed),
            epochs=args.adapt_epochs, verbose=0)
        results[name] = accuracy(clf, data["target_test"])
        last = {k: round(float(v[-1]), 3) for k, v in history.history.items()}
        extra[f"{name}_last_epoch"] = last
        if method == "dann":
            extra[f"{name}_domain_accuracy"] = [
                round(float(v), 3) for v in history.history["domain_accuracy"]]
        log(f"seed {seed} {name} {results[name]:.3f} "
            f"({time.time() - t:.1f}s) {last}")
        if name == "dann_confusion" and features_before is not None:
            extra["embedding"] = (features_before, _features(clf, data))
    return results, extra


def _features(clf, data):
    features, _ = kft.feature_cache.split_head(clf)
    fs = features.predict(data["source_test"][0], verbose=0)
    ft = features.predict(data["target_test"][0], verbose=0)
    return fs, ft, data["source_test"][1], data["target_test"][1]


def _diagnostic(clf, data, args):
    out = {}
    for name, x in (("digits", data["source_test"][0]),
                    ("digits_m", data["target_test"][0])):
        report = kft.domain_shift(clf, x, source_data=data["source"][0])
        print(f"-- domain shift of the source-only model on {name}\n{report}")
        out[name] = report.to_dict()
        if args.out:
            report.plot(path=os.path.join(args.out, f"shift_{name}.png"))
    return out


def plot_bars(table, path):
    from kft._plotting import finish, new_figure

    fig, ax = new_figure(figsize=(6, 3.5))
    names = list(table)
    means = [np.mean(table[n]) for n in names]
    stds = [np.std(table[n]) for n in names]
    ax.bar(names, means, yerr=stds, capsize=4, color="tab:blue")
    for i, values in enumerate(table.values()):
        ax.scatter([i] * len(values), values, color="k", s=10, zorder=3)
    ax.set_ylabel("digits-M test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("digits -> digits-M (simple_cnn, mean ± std over seeds)")
    return finish(fig, path)


def plot_embedding(before, after, path):
    from kft._plotting import finish, new_figure

    fig, axes = new_figure(1, 2, figsize=(9, 4))
    for ax, (fs, ft, _, _), title in zip(axes, (before, after),
                                         ("source-only",
                                          "DANN (confusion)")):
        both = np.concatenate([fs, ft])
        centred = both - both.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        ax.scatter(*xy[:len(fs)].T, s=5, label="digits (source)")
        ax.scatter(*xy[len(fs):].T, s=5, label="digits-M (target)")
        ax.set_title(f"{title}: PCA of pooled features")
        ax.legend(markerscale=3)
    return finish(fig, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--adapt-epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024],
                        help="discriminator widths (DANN)")
    parser.add_argument("--out", default="examples/results/domain_adaptation")
    parser.add_argument("--no-diagnostic", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    start = time.time()

    def log(message):
        print(f"[{time.time() - start:6.1f}s] {message}", flush=True)

    table, extras = {}, {}
    for seed in args.seeds:
        results, extra = run_seed(seed, args, log)
        for k, v in results.items():
            table.setdefault(k, []).append(v)
        extras[seed] = extra
    print("\n| method | mean | std | " + " | ".join(
        f"seed {s}" for s in args.seeds) + " |")
    print("|---|---:|---:|" + "---:|" * len(args.seeds))
    for k, v in table.items():
        print(f"| {k} | {np.mean(v):.3f} | {np.std(v):.3f} | "
              + " | ".join(f"{x:.3f}" for x in v) + " |")
    plot_bars(table, os.path.join(args.out, "accuracy.png"))
    embedding = extras[args.seeds[0]].pop("embedding", None)
    if embedding:
        plot_embedding(*embedding, os.path.join(args.out, "embedding.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "table": table,
                   "extras": {str(k): v for k, v in extras.items()},
                   "wall_s": time.time() - start}, f, indent=1, default=str)
    log(f"done; wrote {args.out}/accuracy.png, embedding.png, results.json")


if __name__ == "__main__":
    main()
