"""The fine-tuning step of `bench_vs_torch.py`, in kft and in PyTorch.

Shared by `bench_vs_torch.py`, `bench_cpu_convs.py`, `xla_cpu_flags.py`
(the step) and `plot_results.py` (the table and chart). A run is a config
dict: side, backbone, strategy, size, batch, steps, warmup, gpu, and
optionally `fast_cpu_convs` or `xla_flags` (kft sides).

kft, Keras and torch are imported inside the functions: the kft side sets
its XLA flags first, and a torch run never loads JAX.
"""

import gc
import os
import time

import _harness

BACKBONES = ("resnet50", "efficientnetb0", "convnext_tiny", "mobilenetv3large")
STRATEGIES = ("feature_extraction", "partial", "full")
SIDES = ("kft", "kft-fast", "kft-thp", "torch", "torch-cl", "torch-compile")
NUM_CLASSES = 10
# XLA CPU flag sets that `xla_cpu_flags.py` and `xla_algsimp_crash.py` try.
XLA_FLAG_SETS = {
    "none": "",
    "algsimp off": "--xla_disable_hlo_passes=algsimp",
    "ynn conv off": "--xla_cpu_experimental_ynn_fusion_type="
                    "-individual_convolution",
    "both (KFT_XLA_CPU_FLAGS=1)": "--xla_disable_hlo_passes=algsimp "
                          "--xla_cpu_experimental_ynn_fusion_type="
                          "-individual_convolution",
    # KFT_XLA_CPU_FLAGS=mlir_emitters (kft's default until 2026-12-03),
    # then kft's default (the same with XLA's older fusion emitters);
    # spelled out, not read from kft._config: importing kft here would set
    # its flags in the parent.
    "ynn off + barriers": "--xla_cpu_experimental_ynn_fusion_type="
                          "-individual_convolution "
                          "--xla_disable_hlo_passes=cse_barrier_expander",
    "ynn off + barriers + legacy emitters":
        "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution "
        "--xla_disable_hlo_passes=cse_barrier_expander "
        "--xla_cpu_use_fusion_emitters=false",
}


def build_kft(cfg):
    """The compiled kft model of `cfg` and its batch: `(model, x, y)`.

    Sets the XLA flags of `cfg`'s side first (they are read when JAX
    starts, so only the first call in a process can choose them).
    `profile_step.py` builds its step here too, so it profiles this step.
    """
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
    x, y = _harness.random_batch(cfg["batch"], size, NUM_CLASSES)
    return model, x, y


def _time_fit(model, x, y, cfg):
    """`_time` for the step inside `model.fit`, the loop users train in.

    `train_on_batch` adds per call what `fit` pays once per epoch: Keras
    assigns every variable back to the model (275 for MobileNetV3Large)
    and re-reads the training state (10-20 ms per step at 224 px feature
    extraction, benchmarks/RESULTS.md); and a process that ran both would
    compile the step twice (`fit` hands the step another input structure),
    which adds that compile's memory to the peak. So only `fit` runs here:
    a generator hands it the same host batch every step (copied to the
    device each step, as from a data pipeline; no extra copies held), and
    each step's loss is read before the next starts (`EachStep`). The
    first fit (1 step) is the compile; then `cfg["warmup"]` steps; the step
    time is `(T(2n) - T(n)) / n` for fits of n and 2n steps
    (`n = cfg["steps"]`; each fit ends with its loss on the host), which
    leaves out the once-per-fit costs; the median of two such rounds
    (`step_times_s` holds both). `losses`: each fit's mean loss.
    """
    import numpy as np

    losses = []
    rss = {"rss_before_first_step_mib": _harness.rss_mib()}

    def batches():
        while True:
            yield x, y

    import keras

    class EachStep(keras.callbacks.Callback):
        """Keras reads each step's logs before calling a per-batch
        callback, as it does for `fit`'s default progress bar (verbose=1):
        one step at a time, as PyTorch's `loss.item()`. With no per-batch
        callback (verbose=0) it reads them on a thread and the loop runs
        ahead of the device, several steps' buffers alive at once
        (ConvNeXt-tiny 224 px full: 3.6 GiB peak vs 3.0,
        benchmarks/RESULTS.md)."""

        def on_train_batch_end(self, batch, logs=None):
            pass

    def timed(n):
        begin = time.perf_counter()
        history = model.fit(batches(), steps_per_epoch=n, epochs=1,
                            shuffle=False, verbose=0,
                            callbacks=[EachStep()])
        seconds = time.perf_counter() - begin
        losses.append(float(history.history["loss"][-1]))
        return seconds

    first = timed(1)
    rss["rss_after_first_step_mib"] = _harness.rss_mib()
    rss["peak_rss_first_step_mib"] = _harness.peak_rss_mib()
    if cfg["warmup"]:
        timed(cfg["warmup"])
    n = cfg["steps"]
    fits = [(timed(n), timed(2 * n)) for _ in range(2)]
    per_step = [(long - short) / n for short, long in fits]
    median = float(np.median(per_step))
    return {
        "first_step_s": first,
        "median_step_s": median,
        "images_per_s": cfg["batch"] / median,
        "step_times_s": per_step,
        "fit_times_s": fits,
        "losses": losses,
        "peak_rss_mib": _harness.peak_rss_mib(),
        "rss_end_mib": _harness.rss_mib(),
        **rss,
    }


def run_kft(cfg):
    """The kft side: the step inside `model.fit` (`_time_fit`) with
    `cfg["kft_loop"] == "fit"`, else one `train_on_batch` call (`_time`)."""
    model, x, y = build_kft(cfg)
    import kft

    loop = cfg.get("kft_loop", "train_on_batch")
    if loop == "fit":
        result = _time_fit(model, x, y, cfg)
    else:
        result = _time(lambda: float(model.train_on_batch(x, y)), cfg)
    result["kft_loop"] = loop
    result["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    result["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
    result["malloc_reuse"] = kft.reuse_freed_memory()
    result["trainable_params"] = int(sum(
        v.numpy().size for v in model.trainable_variables))
    if cfg["gpu"]:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        result["device_peak_mib"] = stats.get("peak_bytes_in_use", 0) / 2**20
    return result


def torch_model(name):
    """torchvision's `name` with a Linear head: (model, head, top block)."""
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
        # Keras' ConvNeXtTiny (kft's) has no stochastic depth
        # (drop_path_rate 0.0); torchvision's default 0.1 adds its draws.
        model = models.convnext_tiny(weights=None, stochastic_depth_prob=0.0)
        model.classifier[2] = nn.Linear(768, NUM_CLASSES)
        # kft's top ConvNeXt block is the final LayerNorm ("head_norm").
        return model, model.classifier[2], model.classifier[0]
    if name == "mobilenetv3large":
        model = models.mobilenet_v3_large(weights=None)
        model.classifier = nn.Linear(960, NUM_CLASSES)
        return model, model.classifier, model.features[16]
    raise ValueError(f"Unknown backbone {name!r}; known: {BACKBONES}")


def freeze_torch(model, head, top, strategy):
    """`requires_grad` as kft's `freeze(strategy)` with `bn="frozen"`:
    the head (`feature_extraction`), head + `top` (`partial`) or all
    (`full`) trains; BatchNorm layers in eval mode, their weights frozen."""
    from torch import nn

    for p in model.parameters():
        p.requires_grad_(False)
    trainable = {"feature_extraction": [head], "partial": [head, top],
                 "full": [model]}[strategy]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)


def run_torch(cfg):
    import torch
    from torch import nn

    torch.manual_seed(0)
    device = "cuda" if cfg["gpu"] else "cpu"
    model, head, top = torch_model(cfg["backbone"])
    freeze_torch(model, head, top, cfg["strategy"])
    model.to(device)
    head_params = [p for p in head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head_params}
    rest = [p for p in model.parameters()
            if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head_params, "lr": 1e-2}]
    if rest:
        groups.append({"params": rest, "lr": 1e-3})
    optimizer = torch.optim.SGD(groups, lr=1e-3, momentum=0.9)
    x, y = _harness.random_batch(cfg["batch"], cfg["size"], NUM_CLASSES)
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
    """The first step (compile / warm-up) apart, then `cfg["warmup"]`
    untimed steps, then `cfg["steps"]` timed ones; every loss is kept.
    The RSS before and right after the first step tells the compile's
    share of the peak from the steps' own."""
    losses = []
    rss = {"rss_before_first_step_mib": _harness.rss_mib()}

    def recorded():
        losses.append(step())
        if len(losses) == 1:
            rss["rss_after_first_step_mib"] = _harness.rss_mib()
            rss["peak_rss_first_step_mib"] = _harness.peak_rss_mib()
        return losses[-1]

    timing = _harness.time_steps(recorded, cfg["steps"],
                                 warmup=1 + cfg["warmup"])
    return {
        "first_step_s": timing["warmup_s"][0],
        "median_step_s": timing["median_s"],
        "images_per_s": cfg["batch"] / timing["median_s"],
        "step_times_s": timing["times_s"],
        "losses": losses,
        "peak_rss_mib": _harness.peak_rss_mib(),
        "rss_end_mib": _harness.rss_mib(),
        **rss,
    }


def run_configs(cfgs):
    """Runs `cfgs` one after the other in this process, yielding results.

    The child side of `run_fresh`; the peak RSS is reset before each run,
    so each reports its own.
    """
    for cfg in cfgs:
        gc.collect()
        _harness.reset_peak_rss()
        result = (run_kft if cfg["side"].startswith("kft") else run_torch)(
            cfg)
        result.update(cfg)
        result["loadavg"] = _harness.loadavg()
        yield result


def run_fresh(cfgs, timeout):
    """Runs `cfgs` (one side, size and backbone) in one fresh process.

    Returns a result per config; those the process did not reach carry
    an "error". kft's persistent compilation cache is off there, so first
    steps are real compiles, and `XLA_FLAGS` is unset, so each side gets
    its own defaults; `GLIBC_TUNABLES` is unset, except
    `glibc.malloc.hugetlb=1` for side kft-thp.
    """
    run = _harness.run_isolated(
        "_vs_torch:run_configs", cfgs, timeout=timeout * len(cfgs),
        env={"XLA_FLAGS": None, "KFT_COMPILATION_CACHE": "0",
             # Side kft-thp: glibc maps large blocks with huge pages (read
             # at process start), and kft leaves its reuse off then.
             "GLIBC_TUNABLES": ("glibc.malloc.hugetlb=1"
                                if cfgs[0]["side"] == "kft-thp" else None)})
    error = run.error or "no result"
    return run.results + [{**cfg, "error": error}
                          for cfg in cfgs[len(run.results):]]


def table(results, sides):
    """Markdown table: ms per step (first step s) per side, and ratios
    (kft's step as its results' `kft_loop` says: inside `model.fit` or one
    `train_on_batch` call)."""
    ratios = [("kft", "torch"), ("kft-fast", "torch"), ("kft-thp", "torch")]
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


def chart(results, path):
    """Bar chart of training images per second, if matplotlib is there."""
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
