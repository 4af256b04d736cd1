"""Every registered backbone exported to ONNX and checked in onnxruntime.

For each backbone (`kft.list_backbones()`, or `--backbones`): a classifier
with random weights at `--size` px, exported with `kft.export` (dynamic
batch), compared with `model.predict` on random pixels and on real digits
images (`kft.onnx_parity`: max |onnxruntime - Keras| <= 1e-4 * max(1, max
|logits|)), and timed at batch 1 and 32 in onnxruntime (CPU provider) and
with the Keras model's `predict_on_batch` (compiled by XLA). Writes JSON
and a markdown table. A model whose own logits move by more than the
tolerance when the pixels move by 1e-6 relative (EfficientNetV2L at
random init) gets gamma 0.1 in the last BatchNormalization of each
residual branch first ("ok (tamed)"); the table gives that
self-difference (before -> after taming) and the largest difference over
the largest logit, which is what to read where the logits are far below 1
(the tolerance's scale is then 1).

    nice -n 5 python benchmarks/export_parity.py          # whole registry
    python benchmarks/export_parity.py --backbones simple_cnn --out /tmp/p.json
"""

import argparse
import json
import os
import tempfile
import time

import kft  # noqa: I001  (selects the JAX backend before Keras loads)
import keras
import numpy as np

import _harness
from kft.deploy._onnx_io import ort_session
from kft.deploy.parity import RELATIVE as TOLERANCE
from kft.deploy.parity import onnx_parity


def _self_diff(model, x):
    """How far Keras' own logits move when the pixels move by 1e-6
    relative, over max(1, max |logits|): a model where this passes the
    parity tolerance cannot be compared with any other runtime."""
    a = model.predict(x, verbose=0)
    b = model.predict(x * np.float32(1 + 1e-6), verbose=0)
    return float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))


def _tame(model):
    """Scales the last BatchNormalization of every residual branch (before
    its `Add`, through dropout) to gamma 0.1, as zero-init-last-BN
    initialisations do; returns how many. EfficientNetV2L at random init
    is chaotic (a 1e-6 change of the input moved its logits by 813 of
    1,470), so no two runtimes agree on it."""
    layers = kft.models.backbones.find_backbone(model).layers
    position = {id(layer): i for i, layer in enumerate(layers)}
    norms = []
    for layer in layers:
        if not isinstance(layer, keras.layers.Add):
            continue
        # The branch is the input listed last: Keras lists layers by depth,
        # a tie in traversal order, which is the Add's input order
        # (Add([shortcut, x]) in Keras' ResNets). A NASNet cell's Adds join
        # two branches; it is not tamed (its self-difference is ~2e-6).
        ops = [tensor._keras_history.operation for tensor in layer.input]
        op = max(ops, key=lambda op: position.get(id(op), -1))
        while isinstance(op, keras.layers.Dropout):
            op = op.input._keras_history.operation
        if isinstance(op, keras.layers.BatchNormalization):
            norms.append(op)
    for norm in norms:
        norm.gamma.assign(np.full(norm.gamma.shape, 0.1, "float32"))
    return len(norms)


def _row(name, args, digits):
    keras.utils.set_random_seed(0)
    model = kft.build_classifier(name, num_classes=10, weights=None,
                                 input_shape=(args.size, args.size, 3))
    x_random, _ = _harness.random_batch(8, args.size, 10, rng=1)
    self_diff, tamed, untamed = _self_diff(model, x_random), 0, None
    if self_diff > TOLERANCE:
        untamed, tamed = self_diff, _tame(model)
        self_diff = _self_diff(model, x_random)
    path = os.path.join(tempfile.mkdtemp(), f"{name}.onnx")
    start = time.perf_counter()
    kft.export(model, path)
    export_s = time.perf_counter() - start
    random_parity = onnx_parity(model, path, x_random)
    digits_parity = onnx_parity(model, path, digits)
    session = ort_session(path)
    row = {"backbone": name, "size": args.size, "export_s": export_s,
           "file_mib": os.path.getsize(path) / 2**20,
           "max_diff_random": random_parity.max_abs_diff,
           "max_logit_random": random_parity.max_abs_output,
           "max_diff_digits": digits_parity.max_abs_diff,
           "max_logit_digits": digits_parity.max_abs_output,
           "ok": random_parity.ok and digits_parity.ok,
           "keras_self_diff": self_diff, "tamed_norms": tamed,
           "keras_self_diff_untamed": untamed}
    for batch in (1, 32):
        x = np.resize(x_random, (batch, args.size, args.size, 3))
        times = _harness.time_interleaved({
            "ort": lambda: session.run(None, {"image": x})[0],
            "jax": lambda: model.predict_on_batch(x)}, args.repeats)
        row[f"ort_ms_b{batch}"] = times["ort"]["median_s"] * 1e3
        row[f"jax_ms_b{batch}"] = times["jax"]["median_s"] * 1e3
    os.remove(path)
    return row


def _e(value):
    return "-" if value is None else f"{value:.1e}"


def _relative(r):
    """The largest difference over the largest logit, both batches."""
    return max(r[f"max_diff_{k}"] / r[f"max_logit_{k}"]
               if r[f"max_logit_{k}"] else 0.0 for k in ("random", "digits"))


def _self(r):
    before = r.get("keras_self_diff_untamed")
    after = _e(r.get("keras_self_diff"))
    return after if before is None else f"{before:.1e} -> {after}"


def _table(rows):
    lines = ["| backbone | export (s) | file (MiB) | max diff random "
             "(max logit) | max diff digits (max logit) | diff / logit "
             "| parity | Keras self-diff | ORT b1 (ms) | JAX b1 (ms) "
             "| ORT b32 (ms) | JAX b32 (ms) |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backbone']} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['backbone']} | {r['export_s']:.1f} | {r['file_mib']:.1f} "
            f"| {r['max_diff_random']:.1e} ({r['max_logit_random']:.1e}) "
            f"| {r['max_diff_digits']:.1e} ({r['max_logit_digits']:.1e}) "
            f"| {_relative(r):.1e} | {'ok' if r['ok'] else 'FAIL'}"
            f"{' (tamed)' if r.get('tamed_norms') else ''} "
            f"| {_self(r)} | {r['ort_ms_b1']:.2f} "
            f"| {r['jax_ms_b1']:.2f} | {r['ort_ms_b32']:.1f} "
            f"| {r['jax_ms_b32']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="*", default=None)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/"
                        "export_parity.json")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in --out, run the rest")
    args = parser.parse_args()
    names = args.backbones or kft.list_backbones()
    rows = []
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            rows = [r for r in json.load(f) if "error" not in r]
        done = {r["backbone"] for r in rows}
        names = [n for n in names if n not in done]
    data = kft.datasets.digits(image_size=args.size, target_per_class=5)
    digits = data.target_train[0][:8].astype("float32")
    for name in names:
        try:
            rows.append(_row(name, args, digits))
        except Exception as error:  # noqa: BLE001: reported in the table.
            rows.append({"backbone": name,
                         "error": f"{type(error).__name__}: {error}"[:200]})
        print(_table(rows[-1:]).splitlines()[-1], flush=True)
        _harness.write_json(args.out, rows)
    table = _table(rows)
    _harness.write_text(os.path.splitext(args.out)[0] + ".md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
