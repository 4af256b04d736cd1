"""`kft eval`, `kft predict`, `kft export`: what a trained run's model
does after training."""

import contextlib
import json
import os
import shlex
import sys

from kft.cli._checks import Usage
from kft.cli._checks import check_out_folder
from kft.cli._checks import check_out_outside
from kft.cli._checks import kept_files
from kft.cli._checks import linked
from kft.cli._checks import make_out_folder
from kft.cli._checks import start_library


def eval_command(args, argv):
    for path, what in ((args.run, "RUN_OR_MODEL"),
                       (args.data_dir, "DATA_DIR")):
        if not os.path.exists(path):
            raise Usage(f"{what} {path!r} does not exist")
    base = args.run if os.path.isdir(args.run) else os.path.dirname(
        os.path.abspath(args.run))
    out = args.out or os.path.join(
        base, "eval-" + os.path.basename(os.path.abspath(args.data_dir)))
    flag = "--out" if args.out else "the default --out"
    if not args.out and os.path.islink(out):
        # Inside a run folder from elsewhere: the report would go where
        # the link leads.
        raise Usage(f"{flag} {linked(out)} is a link; pass --out to "
                     "write the report there, or another --out")
    check_out_folder(out, flag)
    check_out_outside(out, flag, [("DATA_DIR", args.data_dir)])
    start_library(models=True)
    from kft.runs.report import report_files

    # A run folder holds its own validation report under the same names
    # (its learning curves are the run's); a link among them would be
    # written through (checked before work).
    kept = kept_files(out, report_files(), flag, "a report", args.overwrite)
    from kft.runs.folder import image_size_for
    from kft.runs.folder import load_eval_folder
    from kft.runs.folder import load_run
    from kft.runs.report import write_evaluation

    try:
        run = load_run(args.run)
        data = load_eval_folder(args.data_dir, run.class_names,
                                image_size_for(run.model, run.model_path),
                                batch_size=args.batch_size)
    except ValueError as error:
        raise Usage(str(error)) from error
    make_out_folder(out, flag)
    # --overwrite: the old report goes, its plots too (a link itself, not
    # what it points to).
    for name in kept:
        os.remove(os.path.join(out, name))
    with progress_on_stderr():
        report, files = write_evaluation(
            run.model, data, run.class_names, out, top_k=args.top_k,
            plots=args.plots, verbose=0 if args.quiet or args.json else 1)
    if args.json:
        print(json.dumps({"out": out, "files": files,
                          "report": report.to_dict()}))
    else:
        if not args.quiet:
            # 1,000 classes printed 1,039 lines; every class is in the
            # evaluation.md written.
            print(report.to_markdown(max_classes=CONSOLE_CLASSES))
        print(f"wrote: {', '.join(sorted(files))} in {out}")
    return 0



# Rows of the per-class table `kft eval` prints (those of lowest F1).
CONSOLE_CLASSES = 30


@contextlib.contextmanager
def progress_on_stderr():
    """Keras' progress bars write to stdout, which `kft predict` and `kft
    eval` keep for their results (piped to a file, or read as --json)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def model_file(path, what="RUN_OR_MODEL"):
    """The model file of a run folder, or `path`, a .keras / .onnx file
    (`kft.runs.load_run` finds a run's class names beside its file)."""
    if not os.path.exists(path):
        raise Usage(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        model_path = os.path.join(path, "model.keras")
        if not os.path.isfile(model_path):
            raise Usage(f"{path!r} holds no model.keras: not a finished "
                         "kft run folder (resume it with `kft train "
                         "--resume --out ...`)")
        return model_path
    if not path.endswith((".keras", ".onnx")):
        raise Usage(f"{what} {path!r} is neither a run folder nor a "
                     ".keras / .onnx file")
    return path


def predict_command(args, argv):
    model_path = model_file(args.run)
    for path in args.images:
        if not os.path.exists(path):
            raise Usage(f"IMAGES_OR_DIR {path!r} does not exist")
    start_library(models=True)
    from kft.deploy.prediction import predict
    from kft.evaluation._format import text_cell

    try:
        # One call: the model is loaded once for all the arguments.
        with progress_on_stderr():
            results = predict(model_path, list(args.images),
                              top_k=args.top_k, tta=args.tta,
                              batch_size=args.batch_size,
                              verbose=0 if args.quiet or args.json else 1)
    except (ValueError, OSError) as error:  # bad model or image files
        raise Usage(str(error)) from error
    if args.json:
        print(json.dumps([{
            "source": r.source, "labels": list(r.labels),
            "indices": [int(i) for i in r.indices],
            "probabilities": [float(p) for p in r.probabilities]}
            for r in results]))
        return 0
    for r in results:
        # A model's class names (and file names) reach the terminal with
        # their control characters escaped: a name holding escape
        # sequences would otherwise rewrite the screen.
        guesses = ", ".join(f"{text_cell(label)} {p:.3f}" for label, p in zip(
            r.labels, r.probabilities))
        print(f"{text_cell(r.source)}\t{guesses}")
    return 0


def export_target(args, model_path):
    """The file `kft export` writes, checked before the model loads."""
    if args.format == "keras" and args.batch != "dynamic":
        raise Usage(f"--batch {args.batch} applies to --format onnx only "
                     "(a .keras file takes any batch size); drop --batch")
    folder = args.run if os.path.isdir(args.run) else os.path.dirname(
        os.path.abspath(args.run))
    out = args.out or os.path.join(folder, "model.onnx" if args.format ==
                                   "onnx" else "model_inference.keras")
    if os.path.isdir(out):
        raise Usage(f"--out {out!r} is a folder; pass the file to write, "
                     f"e.g. {os.path.join(out, 'model.' + args.format)!r}")
    suffix = "." + args.format
    if not out.endswith(suffix):
        # Checked by `kft.export` too, after loading, in its own words
        # (`path`, format="onnx").
        other = " (for a .keras file pass --format keras)" if (
            args.format == "onnx") else ""
        raise Usage(f"--out {out!r}: --format {args.format} writes a file "
                     f"whose name ends in {suffix}{other}")
    if os.path.exists(out) and os.path.samefile(out, model_path):
        raise Usage(f"--out {out!r} is the model file being exported; "
                     "pass another --out (the trained model would be "
                     "replaced by its inference graph)")
    if os.path.lexists(out) and not args.overwrite:
        raise Usage(f"--out {linked(out)} already exists; pass --overwrite "
                     "to replace it, or another --out")
    return out


def export_command(args, argv):
    model_path = model_file(args.run)
    if model_path.endswith(".onnx"):
        raise Usage(f"RUN_OR_MODEL {args.run!r} is already an ONNX file")
    out = export_target(args, model_path)
    # Its folder is created if missing, as eval and compare create theirs.
    make_out_folder(os.path.dirname(os.path.abspath(out)),
                     "the folder of --out")
    start_library(models=True)
    from kft.deploy.exporting import export
    from kft.deploy.inference import output_kind
    from kft.runs.folder import load_run

    try:
        # With the class names of the run.json beside a run's model.keras.
        run = load_run(model_path)
        if args.output == "logits" and output_kind(run.model) == \
                "probabilities":
            raise Usage(f"--output logits: {model_path!r} ends in a "
                        "softmax, so its logits cannot be recovered; pass "
                        "--output probabilities (or leave --output out)")
        path = export(run.model, out, format=args.format,
                      batch="dynamic" if args.batch == "dynamic" else 1,
                      output=args.output, class_names=run.class_names)
    except ValueError as error:
        raise Usage(str(error)) from error
    if args.json:
        print(json.dumps({"out": path, "format": args.format,
                          "bytes": os.path.getsize(path)}))
    else:
        print(f"wrote {path} ({os.path.getsize(path):,} bytes); check it: "
              f"kft predict {shlex.quote(path)} IMAGES")
    return 0
