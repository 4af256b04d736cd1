"""A 10-epoch feature-extraction run end to end: kft vs PyTorch as usually written.

The task a user meets first: a frozen backbone, a new linear head, 10
epochs, then the test accuracy. Both sides load the same digits images
(`kft.datasets.digits`, upscaled), train the head with AdamW (1e-3, weight
decay 1e-2: `kft.fine_tune`'s head phase), batch 32, validate every epoch,
keep the best epoch by validation loss and evaluate on the test split.

- kft: `kft.build_classifier(..., weights=None)`,
  `kft.fine_tune(strategy="feature_extraction")` (it caches the frozen
  backbone's features once and trains the head on them), `kft.evaluate`.
- PyTorch: torchvision's model with `weights=None`, backbone parameters
  `requires_grad=False` and in eval mode, a new `nn.Linear` head, a
  `DataLoader` over tensors, and the tutorial loop: every epoch runs the
  frozen backbone forward (under `torch.no_grad`) on every training and
  validation batch.

Random weights (no downloads) cost the same FLOPs as pretrained ones. Each
side runs in its own process; wall time runs from the imports and loading
the data to the test result. kft runs twice: `kft` with an empty
compilation cache (a first run: every XLA compile is paid) and `kft-warm`
with what that run cached (the same script run again). The PyTorch side
loads the same arrays without importing kft (`load_digits_numpy`).

    python benchmarks/bench_headline.py                 # resnet50, efficientnetb0, 1,749 of the 1,797 scans
    python benchmarks/bench_headline.py --images 300 --backbones resnet50
    python benchmarks/bench_headline.py --backbones simple_cnn --size 32 \\
        --images 60 --epochs 2 --out /tmp/headline.json   # smoke run
"""

import argparse
import copy
import importlib.util
import resource
import subprocess
import sys
import tempfile
import time

import _harness

NUM_CLASSES = 10
BATCH_SIZE = 32
LEARNING_RATE, WEIGHT_DECAY = 1e-3, 1e-2  # fine_tune's head phase
DIGITS_IMAGES, SMALLEST_CLASS = 1797, 174  # scikit-learn's digits
# torchvision's constructor and feature width of each kft backbone name.
TORCH_MODELS = {"resnet50": ("resnet50", "fc", 2048),
                "efficientnetb0": ("efficientnet_b0", "classifier", 1280),
                "mobilenetv3large": ("mobilenet_v3_large", "classifier", 960),
                "convnext_tiny": ("convnext_tiny", "classifier", 768)}


# Data: the same splits on both sides.

def split_sizes(images):
    """`kft.datasets.digits` arguments that draw about `images` scans,
    70 / 15 / 15 % train / val / test, equal counts per class."""
    fraction = min(images, DIGITS_IMAGES) / DIGITS_IMAGES
    test_fraction = 0.15 * fraction
    left = SMALLEST_CLASS - round(test_fraction * SMALLEST_CLASS)
    train_val = min(round(0.85 * images / NUM_CLASSES), left)
    train = max(1, round(train_val * 70 / 85))
    return {"target_per_class": train,
            "val_per_class": max(1, train_val - train),
            "test_fraction": test_fraction}


def load_digits(cfg):
    """Train, val and test `(x, y)` of all ten digits at `cfg["size"]`,
    as a kft user loads them."""
    import kft

    data = kft.datasets.digits(
        image_size=cfg["size"], source_classes=(),
        target_classes=range(NUM_CLASSES), **split_sizes(cfg["images"]))
    return data.target_train, data.target_val, data.target_test


def load_digits_numpy(cfg):
    """`load_digits` without importing kft (and so Keras and JAX), for the
    PyTorch side: the same resize and the same draws, in the same order
    (tests/test_bench_headline.py checks the arrays are equal)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits as sklearn_digits

    raw = sklearn_digits()
    size = cfg["size"]
    images = np.empty((len(raw.images), size, size, 3), "float32")
    for i, image in enumerate(raw.images):
        pil = Image.fromarray((image * (255.0 / 16.0)).astype("float32"), "F")
        images[i] = np.asarray(pil.resize((size, size), Image.BILINEAR))[
            ..., None]
    images = np.clip(images, 0.0, 255.0)
    sizes = split_sizes(cfg["images"])
    per_class, val_per_class = sizes["target_per_class"], sizes[
        "val_per_class"]
    rng = np.random.default_rng(0)
    train, val, test = [], [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(raw.target == c))
        n_test = int(round(sizes["test_fraction"] * len(idx)))
        rest = idx[n_test:]
        test.append(idx[:n_test])
        train.append(rest[:per_class])
        val.append(rest[per_class:per_class + val_per_class])
    rng.permutation(np.array([], "int64"))  # the (empty) source task's draw
    train = rng.permutation(np.concatenate(train))

    def task(idx):
        return images[idx], raw.target[idx].astype("int32")

    return task(train), task(np.concatenate(val)), task(np.concatenate(test))


# kft side.

class _CompileClock:
    """Seconds XLA spent compiling (`jax.monitoring` duration events)."""

    def __init__(self):
        import jax

        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event, duration, **kwargs):
        # XLA's compile (not tracing: trace events nest and would count
        # twice); compiled programs found in the cache count nothing.
        if event.endswith("backend_compile_duration"):
            self.seconds += duration


def _phase_callback():
    """A callback noting when the head's `fit` starts and ends (no batch
    hooks: those would turn off Keras' asynchronous steps)."""
    import keras

    class PhaseTimes(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    return PhaseTimes()


def run_kft(cfg):
    """The kft side: build, fine_tune (cache + head), evaluate."""
    _harness.reset_peak_rss()
    start = time.perf_counter()
    import kft
    import keras

    clock = _CompileClock()
    train, val, test = load_digits(cfg)
    loaded = time.perf_counter()
    keras.utils.set_random_seed(0)
    size = cfg["size"]
    model = kft.build_classifier(cfg["backbone"], NUM_CLASSES, weights=None,
                                 input_shape=(size, size, 3))
    built = time.perf_counter()
    phase = _phase_callback()
    result = kft.fine_tune(model, train, val, strategy="feature_extraction",
                           head_epochs=cfg["epochs"],
                           head_learning_rate=LEARNING_RATE,
                           weight_decay=WEIGHT_DECAY, batch_size=BATCH_SIZE,
                           callbacks=[phase], verbose=0)
    trained = time.perf_counter()
    report = kft.evaluate(model, test, batch_size=BATCH_SIZE)
    end = time.perf_counter()
    return _row(cfg, train, val, test, {
        "wall_s": end - start,
        "import_load_s": loaded - start,
        "build_s": built - loaded,
        "forward_s": phase.begin - built,  # freeze, compile, cache features
        "head_s": phase.end - phase.begin,
        "finish_s": trained - phase.end,   # restore the best epoch
        "eval_s": end - trained,
        "compile_s": clock.seconds,
        "test_accuracy": float(report.accuracy),
        "best_epoch": int(result.best_epoch),
        "val_loss": [float(v) for v in result.histories[0]["val_loss"]],
    })


# PyTorch side, as the tutorials write it.

def _torch_loader(x, y, shuffle):
    """A DataLoader over NCHW tensors normalised as torchvision expects."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data import TensorDataset

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    images = torch.from_numpy(x).permute(0, 3, 1, 2) / 255.0
    images = ((images - mean) / std).contiguous()
    labels = torch.from_numpy(y).long()
    return DataLoader(TensorDataset(images, labels), batch_size=BATCH_SIZE,
                      shuffle=shuffle)


def torch_backbone(name):
    """torchvision's `name` (random weights) without its classifier, and
    the width of its features. `simple_cnn` is a small stand-in for smoke
    runs."""
    from torch import nn
    from torchvision import models

    if name == "simple_cnn":
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten()), 64
    if name not in TORCH_MODELS:
        raise ValueError(f"No torchvision model for backbone {name!r}; "
                         f"known: {sorted(TORCH_MODELS)} and simple_cnn")
    constructor, head_attr, width = TORCH_MODELS[name]
    model = getattr(models, constructor)(weights=None)
    setattr(model, head_attr, nn.Identity())
    return model, width


def _torch_pass(backbone, head, loader, optimizer=None):
    """One pass over `loader`: backbone forward under no_grad, head forward
    (and a step with `optimizer`). Returns mean loss, accuracy, seconds in
    the backbone and in the head."""
    import torch
    from torch import nn

    criterion = nn.CrossEntropyLoss()
    total_loss = correct = count = 0
    forward_s = head_s = 0.0
    head.train(optimizer is not None)
    for images, labels in loader:
        t0 = time.perf_counter()
        with torch.no_grad():
            features = backbone(images)
        t1 = time.perf_counter()
        with torch.set_grad_enabled(optimizer is not None):
            outputs = head(features)
            loss = criterion(outputs, labels)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        total_loss += loss.item() * len(labels)
        correct += (outputs.argmax(1) == labels).sum().item()
        count += len(labels)
        forward_s += t1 - t0
        head_s += time.perf_counter() - t1
    return total_loss / count, correct / count, forward_s, head_s


def run_torch(cfg):
    """The PyTorch side: the usual frozen-backbone loop, 10 epochs."""
    _harness.reset_peak_rss()
    start = time.perf_counter()
    import torch
    from torch import nn

    train, val, test = load_digits_numpy(cfg)
    train_loader = _torch_loader(*train, shuffle=True)
    val_loader = _torch_loader(*val, shuffle=False)
    test_loader = _torch_loader(*test, shuffle=False)
    loaded = time.perf_counter()
    torch.manual_seed(0)
    backbone, width = torch_backbone(cfg["backbone"])
    for p in backbone.parameters():
        p.requires_grad = False
    backbone.eval()
    head = nn.Linear(width, NUM_CLASSES)
    optimizer = torch.optim.AdamW(head.parameters(), lr=LEARNING_RATE,
                                  weight_decay=WEIGHT_DECAY)
    built = time.perf_counter()
    forward_s = head_s = 0.0
    best_loss, best_state, best_epoch, val_losses = float("inf"), None, 0, []
    for epoch in range(cfg["epochs"]):
        _, _, f, h = _torch_pass(backbone, head, train_loader, optimizer)
        val_loss, _, vf, vh = _torch_pass(backbone, head, val_loader)
        forward_s, head_s = forward_s + f + vf, head_s + h + vh
        val_losses.append(val_loss)
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    trained = time.perf_counter()
    _, accuracy, _, _ = _torch_pass(backbone, head, test_loader)
    end = time.perf_counter()
    return _row(cfg, train, val, test, {
        "wall_s": end - start, "import_load_s": loaded - start,
        "build_s": built - loaded, "forward_s": forward_s,
        "head_s": head_s, "finish_s": 0.0, "eval_s": end - trained,
        "compile_s": 0.0, "test_accuracy": accuracy,
        "best_epoch": best_epoch, "val_loss": val_losses,
        "torch_threads": torch.get_num_threads(),
    })


def _cpu_seconds():
    """User + system CPU seconds of this process so far: what the run cost
    the CPU, less sensitive than wall time to other processes' load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _row(cfg, train, val, test, measured):
    return {**cfg, "cpu_s": _cpu_seconds(), "images_used": len(train[0]) + len(val[0]) + len(test[0]),
            "split": [len(train[0]), len(val[0]), len(test[0])],
            **measured, "peak_rss_mib": _harness.peak_rss_mib(),
            "loadavg_after": _harness.loadavg()}


# Driver.

def run_side(cfg, timeout, cache_dir, in_process=False):
    """One side in a fresh process; its row, or a row saying why not.

    `kft` runs first with the empty `cache_dir` as its compilation cache
    (a first run: everything compiles), `kft-warm` again with what that
    run left there (a user's second run of the same script).
    `in_process` runs it in this process instead (smoke tests: no import
    or cache isolation, so the times mean nothing).
    """
    worker = "run_torch" if cfg["side"] == "torch" else "run_kft"
    if in_process:
        return globals()[worker](cfg)
    env = {"KFT_COMPILATION_CACHE": cache_dir}
    out = _harness.run_isolated(f"bench_headline:{worker}", cfg, env=env,
                                timeout=timeout)
    if out.results:
        return out.results[-1]
    return {**cfg, "error": out.error}


def table(rows):
    """Markdown tables of the rows and of the torch / kft ratios."""
    lines = ["| backbone | side | images (train/val/test) | wall s | CPU s "
             "| imports + load s | backbone forward / cache s "
             "| head training s | evaluation s | XLA compile s "
             "| test accuracy | peak RSS MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backbone']} | {r['side']} | "
                         f"failed: {r['error'][-200:]!r} |")
            continue
        split = "/".join(map(str, r["split"]))
        cpu = f"{r['cpu_s']:.0f}" if "cpu_s" in r else "-"
        lines.append(
            f"| {r['backbone']} | {r['side']} | {r['images_used']} ({split}) "
            f"| {r['wall_s']:.1f} | {cpu} | {r['import_load_s']:.1f} "
            f"| {r['forward_s']:.1f} | {r['head_s']:.1f} | {r['eval_s']:.1f} "
            f"| {r['compile_s']:.1f} | {r['test_accuracy']:.3f} "
            f"| {r['peak_rss_mib']:.0f} |")
    lines += ["", "| backbone | kft side | torch / kft wall time "
              "| torch / kft CPU time |", "|---|---|---:|---:|"]
    for (backbone, side), (wall, cpu) in ratios(rows).items():
        cpu = "-" if cpu is None else f"{cpu:.2f}x"
        lines.append(f"| {backbone} | {side} | {wall:.2f}x | {cpu} |")
    return "\n".join(lines)


def ratios(rows):
    """(wall, CPU) time ratios torch / kft per (backbone, kft side) where
    both sides ran; CPU is None where a row lacks it."""
    done = {(r["backbone"], r["side"]): r for r in rows if "error" not in r}
    out = {}
    for (backbone, side), row in done.items():
        torch = done.get((backbone, "torch"))
        if side.startswith("kft") and torch is not None:
            cpu = (torch["cpu_s"] / row["cpu_s"]
                   if "cpu_s" in torch and "cpu_s" in row else None)
            out[(backbone, side)] = (torch["wall_s"] / row["wall_s"], cpu)
    return out


def torch_missing():
    """Why the torch side cannot run (not installed, or a torchvision
    built for another torch that fails to import), or `None`."""
    if any(importlib.util.find_spec(name) is None
           for name in ("torch", "torchvision")):
        return "torch / torchvision are not installed"
    # In a fresh process: torch stays out of this one (each side runs in
    # its own).
    probe = subprocess.run([sys.executable, "-c", "import torchvision"],
                           capture_output=True, text=True)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        return f"torchvision fails to import ({last})"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+",
                        default=["resnet50", "efficientnetb0"])
    parser.add_argument("--images", type=int, default=DIGITS_IMAGES,
                        help="scans to draw, about (default: 1,797, which draws "
                             "1,749: equal counts per class)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--sides", nargs="+",
                        default=["kft", "kft-warm", "torch"],
                        choices=["kft", "kft-warm", "torch"],
                        help="kft: empty compilation cache; kft-warm: "
                             "again, with what kft's run cached")
    parser.add_argument("--timeout", type=int, default=3600,
                        help="seconds per side and backbone")
    parser.add_argument("--out", default=None)
    parser.add_argument("--cache-dir", default=None,
                        help="compilation cache of the kft sides (default: "
                             "a new empty folder per backbone)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every side in this process (smoke tests "
                             "only: the times are not comparable)")
    args = parser.parse_args(argv)
    if args.images < 2 * NUM_CLASSES * 3:
        parser.error(f"--images must be at least {2 * NUM_CLASSES * 3} "
                     f"(a few per class and split); got {args.images}")
    begin = time.perf_counter()
    sides = list(args.sides)
    missing = torch_missing() if "torch" in sides else None
    if missing:
        print(f"torch side skipped: {missing} (pip install -e '.[bench]')",
              flush=True)
        sides.remove("torch")
    print(f"{args.images} digits images requested"
          f"{' (all)' if args.images >= DIGITS_IMAGES else ''}, "
          f"{args.size} px, {args.epochs} epochs, batch {BATCH_SIZE}; "
          f"load average {_harness.loadavg()}", flush=True)
    rows = []
    for backbone in args.backbones:
        # A cache of our own is removed after the backbone's runs; one the
        # caller named is kept.
        scratch = (None if args.cache_dir else
                   tempfile.TemporaryDirectory(prefix="kft-headline-cache-"))
        cache_dir = args.cache_dir or scratch.name
        for side in sides:
            cfg = {"side": side, "backbone": backbone, "size": args.size,
                   "images": args.images, "epochs": args.epochs,
                   "batch_size": BATCH_SIZE}
            print(f"{backbone} / {side} ...", flush=True)
            row = run_side(cfg, args.timeout, cache_dir, args.in_process)
            rows.append(row)
            print(row.get("error") or
                  f"  {row['wall_s']:.1f} s, test accuracy "
                  f"{row['test_accuracy']:.3f}, {row['images_used']} images "
                  f"used, load {row['loadavg_after']}", flush=True)
        if scratch is not None:
            scratch.cleanup()
    print(_harness.header(begin))
    print(table(rows))
    tag = f"{args.size}_{args.images}_{args.epochs}ep"
    out = args.out or _harness.results_path("headline",
                                            f"headline_{tag}.json")
    print("wrote", _harness.write_json(out, rows))


if __name__ == "__main__":
    main()
