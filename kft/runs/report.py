"""What a run folder holds besides the model: the environment, the
history, the evaluation report and plots, `summary.md`. Only process 0
writes (several processes: `kft.distributed`)."""

import csv
import io
import json
import os
import platform
import sys

from kft._writing import release
from kft._writing import write_file
from kft.distributed.processes import is_primary
from kft.evaluation._format import every_class
from kft.evaluation._history import phase_histories


def environment() -> dict:
    """Versions of Python, kft, Keras, JAX, NumPy; platform; JAX devices.

    Example:
    >>> sorted(environment())[:3]
    ['devices', 'jax', 'jaxlib']
    """
    import jax
    import keras
    import numpy

    import kft

    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):
        jaxlib_version = None
    return {
        "kft": kft.__version__, "keras": keras.__version__,
        "keras_backend": keras.backend.backend(), "jax": jax.__version__,
        "jaxlib": jaxlib_version, "numpy": numpy.__version__,
        "python": sys.version.split()[0], "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
    }


def write_json(path, value):
    if not is_primary():  # several processes: process 0 writes
        return
    write_file(path, json.dumps(value, indent=2, default=str) + "\n",
               replace_links=True)


def read_json(path, remedy=None):
    """The value of the JSON file `path`. One that is not JSON raises a
    `ValueError` naming it and `remedy` (what to do): kft writes whole
    files, so a cut-off one came from elsewhere (a copy or sync that
    stopped, a hand edit), and json's own message named no file.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "run.json")
    >>> _ = open(path, "w").write('{"status": "comp')
    >>> read_json(path, "restore it")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: '...run.json' is not a whole JSON file (Unterminated string starting at: line 1 column 12 (char 11)); restore it.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as error:  # UnicodeDecodeError too
        raise ValueError(
            f"{path!r} is not a whole JSON file ({error})"
            + (f"; {remedy}." if remedy else ".")) from None


def write_history(out, rows):
    files = {}
    path = os.path.join(out, "history.json")
    write_json(path, rows)
    files["history.json"] = path
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    path = os.path.join(out, "history.csv")
    files["history.csv"] = path
    if not is_primary():
        return files
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_file(path, text.getvalue(), replace_links=True)
    files["history.csv"] = path
    return files


def report_files(prefix="evaluation", history=False):
    """The names `write_evaluation` writes into its folder (with
    `history`: the learning curves too).

    >>> report_files()[:3]
    ['evaluation.json', 'evaluation.md', 'confusion_matrix.png']
    """
    from kft.evaluation.plots import REPORT_PLOTS

    plots = (*REPORT_PLOTS, "learning_curves") if history else REPORT_PLOTS
    return [f"{prefix}.json", f"{prefix}.md",
            *(f"{plot}.png" for plot in plots)]


def write_evaluation(model, data, class_names, out, *, history=None,
                     prefix="evaluation", top_k=None, plots=True, verbose=0):
    """Evaluates `model` on `data` (`kft.evaluate`) and writes the report
    (`<prefix>.json`, `<prefix>.md`) and, with matplotlib, its plots
    (`kft.evaluation.plots.save_report_plots`: confusion matrix, per-class
    F1, reliability, worst mistakes, learning curves from `history` rows)
    into `out` unless `plots=False`; `verbose=1` shows `kft.evaluate`'s
    progress bar. Returns `(report, {name: path})`."""
    from kft.evaluation import evaluate

    report = evaluate(model, data, class_names=class_names, top_k=top_k,
                      verbose=verbose)
    files = {}
    if not is_primary():  # all processes evaluate, process 0 writes
        return report, files
    # The report's files are the run folder's own: a link among them
    # (in a folder from elsewhere) is replaced, not written through.
    for name in report_files(prefix, history=True):
        release(os.path.join(out, name))
    path = os.path.join(out, f"{prefix}.json")
    report.to_json(path)
    files[f"{prefix}.json"] = path
    path = os.path.join(out, f"{prefix}.md")
    write_file(path, report.to_markdown(), replace_links=True)
    files[f"{prefix}.md"] = path
    if not plots:
        return report, files
    from kft._plotting import available

    if not available():
        return report, files
    written = report.save_plots(
        out, data=data,
        history=phase_histories(history) if history else None)
    files.update({os.path.basename(p): p for p in written})
    return report, files


def skipped_files(*datasets):
    """`[{"path", "reason"}]` of the image files the loaders left out."""
    return [{"path": s.path, "reason": s.reason} for data in datasets
            if data is not None for s in getattr(data, "skipped", ())]


def run_summary(result, env, requested, skipped=()):
    config = result.config
    lines = [f"# kft run: {os.path.basename(os.path.abspath(result.out))}",
             "",
             f"Fine-tuned `{config.backbone}` ("
             + ("random-init" if config.weights == "none"
                else f"{config.weights}") + " weights) on "
             f"`{config.data_dir}` ({len(result.class_names)} classes) at "
             f"{config.image_size}x{config.image_size}, strategy "
             f"`{config.strategy}`"
             + (" (chosen by `auto`)" if requested.get("strategy") == "auto"
                else "") + ".", ""]
    if result.reasons:
        lines += ["Why this strategy:", ""]
        lines += [f"- {r}" for r in result.reasons] + [""]
    if result.best_epoch is not None:
        lines.append(f"Kept epoch {result.best_epoch + 1} of "
                     f"{len(result.history)} ({config.monitor} = "
                     f"{result.best_value:.4g}).")
    metrics = result.metrics
    if metrics:
        lines.append(
            f"Validation ({metrics['num_examples']} images): accuracy "
            f"{metrics['accuracy']:.4f}, balanced accuracy "
            f"{metrics['balanced_accuracy']:.4f}, macro F1 "
            f"{metrics['macro']['f1']:.4f}, top-{metrics['top_k']} "
            f"{metrics['top_k_accuracy']:.4f}"
            + every_class(metrics["top_k"], len(metrics["class_names"]))
            + " (`evaluation.md`).")
    if skipped:
        lines += ["", f"Skipped {len(skipped)} image file(s) the loader "
                  "could not use (all listed in `run.json`, "
                  "`skipped_files`):", ""]
        lines += [f"- `{s['path']}`: {s['reason']}" for s in skipped[:10]]
        if len(skipped) > 10:
            lines.append(f"- ... and {len(skipped) - 10} more")
    lines += ["", "Files:", ""]
    lines += [f"- `{name}`" for name in sorted(result.files)]
    lines += ["", f"kft {env['kft']}, Keras {env['keras']}, JAX {env['jax']}"
              f", devices {', '.join(env['devices'])}.", "",
              "Repeat: `kft train --config config.toml --out runs/NEW`; "
              "evaluate: `kft eval <this folder> DATA_DIR`; predict: "
              "`kft predict <this folder> IMAGES`.", ""]
    return "\n".join(lines)
