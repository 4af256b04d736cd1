"""The same fine-tuning step in kft (Keras/JAX) and in PyTorch, side by side.

For each backbone x strategy x input size, one training step on the same
batch shape with the same optimizer, timed on both sides. Each side,
size and backbone runs in a fresh subprocess (its strategies one after the
other; the peak RSS is reset before each, so each reports its own; kft's
persistent compilation cache is off, so first steps are real compiles):

- kft: `kft.build_classifier(backbone, 10, weights=None)` (preprocessing,
  backbone, average pooling, Dense head; on CPU the convolutions XLA runs
  slowly are in kft's shifted form, `kft.fast_cpu_convs`),
  `kft.freeze(model, strategy)`
  with the default `bn="frozen"`, compiled with
  `kft.BlockwiseOptimizer(SGD(momentum=0.9), {"head": 1e-2}, default=1e-3)`
  and sparse cross-entropy; the step is `model.train_on_batch`, i.e. the
  compiled train function `model.fit` runs. Side `kft` runs with kft's
  default XLA CPU flag (YNNPACK convolutions off), side `kft-fast` also
  with the opt-in one (`KFT_XLA_CPU_FLAGS=1`, see
  `kft.apply_cpu_xla_flags`).
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

Results: one JSON per run under `benchmarks/results/vs_torch/`, a markdown
table printed and written next to them, and a PNG chart when matplotlib is
installed.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BACKBONES = ("resnet50", "efficientnetb0", "convnext_tiny", "mobilenetv3large")
STRATEGIES = ("feature_extraction", "partial", "full")
SIDES = ("kft", "kft-fast", "torch", "torch-cl", "torch-compile")
NUM_CLASSES = 10


def _batch(size, batch, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    return x, rng.integers(0, NUM_CLASSES, batch).astype("int64")


def _reset_peak_rss():
    """Resets the process's peak RSS (Linux), so each run reports its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_kft(cfg):
    os.environ["KFT_XLA_CPU_FLAGS"] = "1" if cfg["side"] == "kft-fast" \
        else "default"
    if cfg.get("xla_flags") is not None:  # an explicit set (xla_cpu_flags.py)
        os.environ["KFT_XLA_CPU_FLAGS"] = "0"
        os.environ["XLA_FLAGS"] = cfg["xla_flags"]
    import kft
    import keras

    if cfg["gpu"]:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    size = cfg["size"]
    model = kft.build_classifier(
        cfg["backbone"], NUM_CLASSES, weights=None,
        input_shape=(size, size, 3),
        fast_cpu_convs=cfg.get("fast_cpu_convs", "auto"))
    kft.freeze(model, cfg["strategy"],
               n_blocks=1 if cfg["strategy"] == "partial" else None)
    optimizer = kft.BlockwiseOptimizer(
        keras.optimizers.SGD(1e-2, momentum=0.9), {"head": 1e-2},
        default=1e-3, model=model)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x, y = _batch(size, cfg["batch"])

    def step():
        return float(model.train_on_batch(x, y))

    result = _time(step, cfg)
    result["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    result["trainable_params"] = int(sum(
        v.numpy().size for v in model.trainable_variables))
    if cfg["gpu"]:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        result["device_peak_mib"] = stats.get("peak_bytes_in_use", 0) / 2**20
    return result


def _torch_model(name):
    from torch import nn
    from torchvision import models

    if name == "resnet50":
        model = models.resnet50(weights=None)
        model.fc = nn.Linear(2048, NUM_CLASSES)
        return model, model.fc, model.layer4
    if name == "efficientnetb0":
        model = models.efficientnet_b0(weights=None)
        model.classifier = nn.Linear(1280, NUM_CLASSES)
        return model, model.classifier, model.features[8]
    if name == "convnext_tiny":
        model = models.convnext_tiny(weights=None)
        model.classifier[2] = nn.Linear(768, NUM_CLASSES)
        # kft's top ConvNeXt block is the final LayerNorm ("head_norm").
        return model, model.classifier[2], model.classifier[0]
    if name == "mobilenetv3large":
        model = models.mobilenet_v3_large(weights=None)
        model.classifier = nn.Linear(960, NUM_CLASSES)
        return model, model.classifier, model.features[16]
    raise ValueError(f"Unknown backbone {name!r}; known: {BACKBONES}")


def run_torch(cfg):
    import torch
    from torch import nn

    torch.manual_seed(0)
    device = "cuda" if cfg["gpu"] else "cpu"
    model, head, top = _torch_model(cfg["backbone"])
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = {"feature_extraction": [head], "partial": [head, top],
                 "full": [model]}[cfg["strategy"]]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
    model.to(device)
    head_params = [p for p in head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head_params}
    rest = [p for p in model.parameters()
            if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head_params, "lr": 1e-2}]
    if rest:
        groups.append({"params": rest, "lr": 1e-3})
    optimizer = torch.optim.SGD(groups, lr=1e-3, momentum=0.9)
    x, y = _batch(cfg["size"], cfg["batch"])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.from_numpy(y).to(device)
    if cfg["side"] in ("torch-cl", "torch-compile"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if cfg["side"] == "torch-compile" \
        else model
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16,
                            enabled=cfg["gpu"]):
            loss = loss_fn(forward(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    result = _time(step, cfg)
    result["trainable_params"] = sum(p.numel() for p in model.parameters()
                                     if p.requires_grad)
    result["threads"] = torch.get_num_threads()
    if cfg["gpu"]:
        result["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _time(step, cfg):
    start = time.perf_counter()
    losses = [step()]
    first = time.perf_counter() - start
    for _ in range(cfg["warmup"]):
        losses.append(step())
    times = []
    for _ in range(cfg["steps"]):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "first_step_s": first,
        "median_step_s": median,
        "images_per_s": cfg["batch"] / median,
        "step_times_s": times,
        "losses": losses,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _worker(cfgs):
    import gc

    for cfg in json.loads(cfgs):
        gc.collect()
        _reset_peak_rss()
        result = (run_kft if cfg["side"].startswith("kft") else run_torch)(
            cfg)
        result.update(cfg)
        result["loadavg"] = (open("/proc/loadavg").read().split()[:3]
                             if os.path.exists("/proc/loadavg") else None)
        print("RESULT " + json.dumps(result), flush=True)


def _run(cfgs, timeout):
    """Runs `cfgs` (one side, size and backbone) in one fresh process."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # each side gets its own defaults
    env["KFT_COMPILATION_CACHE"] = "0"  # first steps are real compiles
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(cfgs)],
            capture_output=True, text=True, timeout=timeout * len(cfgs),
            env=env)
        stdout, error = out.stdout, (out.stderr or out.stdout)[-2000:]
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) \
            else e.stdout or ""
        error = f"timed out after {timeout * len(cfgs)} s"
    done = [json.loads(line[len("RESULT "):])
            for line in stdout.splitlines() if line.startswith("RESULT ")]
    return done + [{**cfg, "error": error} for cfg in cfgs[len(done):]]


def _table(results, sides):
    ratios = [("kft", "torch"), ("kft-fast", "torch")]
    rows = ["| size | backbone | strategy | " + " | ".join(
        f"{s} ms (first s)" for s in sides) + " | " + " | ".join(
        f"{a} / {b}" for a, b in ratios) + " | best kft / best torch |",
        "|" + "---|" * (4 + len(sides) + len(ratios))]
    keyed = {(r["size"], r["backbone"], r["strategy"], r["side"]): r
             for r in results}
    for size, backbone, strategy in sorted({k[:3] for k in keyed}):
        cells, medians = [], {}
        for side in sides:
            r = keyed.get((size, backbone, strategy, side))
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append("error")
            else:
                medians[side] = r["median_step_s"]
                cells.append(f"{1000 * r['median_step_s']:.0f} "
                             f"({r['first_step_s']:.1f})")
        for a, b in ratios:
            cells.append(f"{medians[a] / medians[b]:.2f}"
                         if a in medians and b in medians else "-")
        kft_best = [v for s, v in medians.items() if s.startswith("kft")]
        torch_best = [v for s, v in medians.items() if s.startswith("torch")]
        cells.append(f"{min(kft_best) / min(torch_best):.2f}"
                     if kft_best and torch_best else "-")
        rows.append(f"| {size} | {backbone} | {strategy} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def _chart(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart "
              "(pip install 'kft[bench]')")
        return
    ok = [r for r in results if "error" not in r]
    configs = sorted({(r["size"], r["backbone"], r["strategy"]) for r in ok})
    sides = [s for s in SIDES if any(r["side"] == s for r in ok)]
    fig, ax = plt.subplots(figsize=(max(8, len(configs) * 0.7), 5))
    width = 0.8 / max(len(sides), 1)
    for i, side in enumerate(sides):
        values = []
        for config in configs:
            match = [r for r in ok if (r["size"], r["backbone"],
                                       r["strategy"]) == config
                     and r["side"] == side]
            values.append(match[0]["images_per_s"] if match else 0)
        ax.bar([j + i * width for j in range(len(configs))], values, width,
               label=side)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(configs))])
    ax.set_xticklabels([f"{b}\n{s[:7]} {n}px" for n, b, s in configs],
                       rotation=90, fontsize=7)
    ax.set_ylabel("training images / s (higher is better)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--backbones-large", nargs="+",
                        default=["resnet50"],
                        help="on CPU, the backbones also run at sizes above "
                             "64 px (default: resnet50, which keeps the "
                             "default CPU matrix under 20 minutes on 2 "
                             "cores); 'all' for every backbone")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--sides", nargs="+", default=None,
                        help=f"from {SIDES}; default: all but torch-compile "
                             "on CPU (add it explicitly), all on GPU")
    parser.add_argument("--batch", type=int, default=None,
                        help="default: 16 at 64 px, 4 at 224 px on CPU; 64 "
                             "on GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--gpu", action="store_true",
                        help="GPU matrix: bf16 mixed precision both sides")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    if args.gpu and args.sizes == [64, 224]:
        args.sizes = [224]
    sides = args.sides or [s for s in SIDES
                           if args.gpu or s != "torch-compile"]
    tag = args.tag or ("gpu" if args.gpu else "cpu")
    out_dir = os.path.join(HERE, "results", "vs_torch")
    os.makedirs(out_dir, exist_ok=True)
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
                         "gpu": args.gpu} for strategy in args.strategies]
                for result in _run(cfgs, args.timeout):
                    results.append(result)
                    name = (f"{tag}_{size}_{backbone}_{result['strategy']}"
                            f"_{side}.json")
                    with open(os.path.join(out_dir, name), "w") as f:
                        json.dump(result, f, indent=1)
                    status = (result.get("error", "")[-300:]
                              if "error" in result else
                              f"{1000 * result['median_step_s']:.0f} ms/step,"
                              f" first {result['first_step_s']:.1f} s, "
                              f"{result['peak_rss_mib']:.0f} MiB")
                    print(f"[{time.perf_counter() - begin:6.0f} s] {size} "
                          f"{backbone} {result['strategy']} {side}: "
                          f"{status}", flush=True)
    table = _table(results, sides)
    header = (f"{platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"`{' '.join(sys.argv)}`, {time.perf_counter() - begin:.0f} s")
    print(header)
    print(table)
    with open(os.path.join(out_dir, f"{tag}_table.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    _chart(results, os.path.join(out_dir, f"{tag}_chart.png"))


if __name__ == "__main__":
    main()
