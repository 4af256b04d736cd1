"""Time to build a classifier in a fresh process: Keras' own initial draws
vs kft's bucketed draws (`kft.models.init_draws`).

Each row builds `kft.build_classifier(backbone, 10, weights=None)` in a new
Python process with JAX's persistent cache off (`KFT_COMPILATION_CACHE=0`),
so every program compiles as on a first run: once with Keras' own draws
(one compile per weight shape; `init_draws` switched off) and once with
kft's. Reports build seconds, XLA compiles and their seconds, RSS after the
build, and a SHA-256 of all initial weights (the two sides must match).

    python benchmarks/bench_build.py --size 224
"""

import argparse
import hashlib
import time

import _harness

BACKBONES = ["resnet50", "efficientnetb0", "convnext_tiny",
             "mobilenetv3large"]


def build(arg):
    """Child: builds one classifier and measures it."""
    import kft  # noqa: I001
    import jax
    import keras
    import numpy as np

    from kft import _compat
    from kft.models import init_draws

    compiles = []

    def listen(event, duration, **kwargs):
        if event == _compat.backend_compile_event():
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    if not arg["bucketed"]:
        init_draws._active.append(True)  # Keras' own draws
    keras.utils.set_random_seed(0)
    rss_before = round(_harness.rss_mib())
    begin = time.perf_counter()
    model = kft.build_classifier(arg["backbone"], 10, weights=None,
                                 input_shape=(arg["size"], arg["size"], 3))
    seconds = time.perf_counter() - begin
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.asarray(weight).tobytes())
    return {"backbone": arg["backbone"], "size": arg["size"],
            "draws": "kft" if arg["bucketed"] else "keras",
            "build_s": round(seconds, 2), "compiles": len(compiles),
            "compile_s": round(sum(compiles), 2),
            "rss_before_mib": rss_before,
            "rss_after_mib": round(_harness.rss_mib()),
            "weights": len(model.weights),
            "weights_sha256": digest.hexdigest(),
            "loadavg": _harness.loadavg()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    begin = time.perf_counter()
    rows = []
    for backbone in args.backbones:
        for bucketed in (False, True):
            run = _harness.run_isolated(
                "bench_build:build", {"backbone": backbone, "size": args.size,
                                      "bucketed": bucketed},
                env={"KFT_COMPILATION_CACHE": "0"}, timeout=args.timeout)
            if run.error:
                rows.append({"backbone": backbone, "size": args.size,
                             "draws": "kft" if bucketed else "keras",
                             "error": run.error})
                print(f"{backbone}: {run.error}", flush=True)
                continue
            rows.extend(run.results)
            r = run.results[0]
            print(f"{backbone} {args.size}px {r['draws']} draws: build "
                  f"{r['build_s']:.1f} s, {r['compiles']} compiles "
                  f"({r['compile_s']:.1f} s), RSS {r['rss_before_mib']} -> "
                  f"{r['rss_after_mib']} MiB", flush=True)
    lines = [_harness.header(begin), "",
             "| backbone | Keras' draws: build s (compiles) | kft: build s "
             "(compiles) | speed-up | RSS after build MiB, Keras / kft | "
             "same weights |", "|---|---|---|---|---|---|"]
    by = {(r["backbone"], r["draws"]): r for r in rows if "error" not in r}
    for backbone in args.backbones:
        keras_row, kft_row = by.get((backbone, "keras")), by.get(
            (backbone, "kft"))
        if not (keras_row and kft_row):
            lines.append(f"| {backbone} | failed | | | | |")
            continue
        lines.append(
            f"| {backbone} | {keras_row['build_s']:.1f} "
            f"({keras_row['compiles']}) | {kft_row['build_s']:.1f} "
            f"({kft_row['compiles']}) | "
            f"{keras_row['build_s'] / kft_row['build_s']:.1f}x | "
            f"{keras_row['rss_after_mib']} / {kft_row['rss_after_mib']} | "
            f"{keras_row['weights_sha256'] == kft_row['weights_sha256']} |")
    print("\n".join(lines))
    out = args.out or _harness.results_path("build", f"build_{args.size}.json")
    _harness.write_json(out, rows)
    _harness.write_text(out[:-5] + ".md", "\n".join(lines) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
