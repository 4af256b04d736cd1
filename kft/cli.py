"""Command line: `kft train`, `eval`, `predict`, `export`, `compare`,
`lr-find`, `backbones`, `demo`.

Only the standard library is imported here: each subcommand imports the
parts of kft it needs, so `kft --help` does not wait for Keras and JAX.
Every subcommand is a thin layer over a library function (`kft.train_run`,
`kft.evaluate`, `kft.compare_strategies`, ...).

Exit status: 0 done; 2 the command line or its inputs are wrong (bad
option, missing folder, unreadable image file, fewer than two classes,
unknown backbone, an image size the backbone cannot take, a file to write
that exists without `--overwrite`), found before any training; 1 a
failure while working.
"""

import argparse
import json
import os
import sys

_EPILOGS = {
    "train": "example:\n  kft train photos/ --backbone efficientnetb0 "
             "--epochs 10 --out runs/photos\n  kft train --resume --out "
             "runs/photos      # after a crash or kill -9",
    "eval": "example:\n  kft eval runs/photos photos_test/",
    "compare": "example:\n  kft compare photos/ --strategies "
               "feature_extraction partial --seeds 3 --backbone "
               "mobilenetv3small",
    "predict": "example:\n  kft predict runs/photos new_photos/ --top-k 3"
               "\n  kft predict runs/photos/model.onnx cat.jpg --json",
    "export": "example:\n  kft export runs/photos --format onnx     "
              "# writes runs/photos/model.onnx",
    "lr-find": "example:\n  kft lr-find photos/ --backbone efficientnetb0 "
               "--phase fine_tune --strategy full\n  kft train photos/ "
               "--backbone efficientnetb0 --strategy full --lr 3e-4",
    "backbones": "example:\n  kft backbones 'efficientnet*' --params",
    "demo": "example:\n  kft demo --target-per-class 10\n  kft demo "
            "--seeds 3 --out demo_out/   # strategies over 3 seeds",
}


class _Usage(Exception):
    """A problem with the command line or its inputs: exit status 2."""


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {minimum}. Received: {text!r}")
        return value

    return parse


def _float_at_least(minimum, *, above=False):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or value != value or value < minimum or (
                above and value == minimum):
            raise argparse.ArgumentTypeError(
                f"must be a number {'>' if above else '>='} {minimum}. "
                f"Received: {text!r}")
        return value

    return parse


def _rate_or_find(text):
    if text == "find":
        return text
    return _float_at_least(0.0, above=True)(text)


def _fraction(text):
    value = _float_at_least(0.0)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(
            f"must be in [0, 1) (0: no validation split). Received: {text!r}")
    return value


def _writable_directory(text):
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(
            f"must be an existing directory. Received: {text!r}")
    if not os.access(text, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"must be a directory you can write to. Received: {text!r}")
    return text


def _check_out_folder(path, flag="--out"):
    """A folder to write results into: existing, or a path to create."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise _Usage(f"{flag} {path!r} is a file, not a folder; pass a "
                     "folder (it is created if missing)")


def _make_out_folder(path, flag="--out"):
    _check_out_folder(path, flag)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise _Usage(f"{flag} {path!r}: cannot create the folder "
                     f"({error.strerror or error})") from error


def _output_flags(parser):
    parser.add_argument("--quiet", action="store_true",
                        help="no progress output, only the final lines")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (and no progress)")


def _add(sub, name, help_text):
    return sub.add_parser(name, help=help_text, description=help_text,
                          epilog=_EPILOGS.get(name),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _train_parser(sub):
    train = _add(sub, "train", "fine-tune a backbone on an image folder "
                 "(DATA_DIR/<class>/*.jpg) and write a run folder")
    s = argparse.SUPPRESS  # only flags given on the command line override
    train.add_argument("data_dir", nargs="?", default=s, metavar="DATA_DIR",
                       help="<class>/<images> (a test/ folder there is "
                       "not a class), or train/ and val/ folders")
    data = train.add_argument_group("data")
    data.add_argument("--val-dir", default=s, help="separate validation "
                      "folder (<class>/<images>)")
    data.add_argument("--val-split", type=_fraction, default=s,
                      help="fraction of each class held out for validation "
                      "(default 0.2; 0: none)")
    data.add_argument("--image-size", type=_int_at_least(1), default=s,
                      help="side in pixels (default: the backbone's)")
    data.add_argument("--batch-size", type=_int_at_least(1), default=s)
    data.add_argument("--augment", default=s,
                      choices=("none", "light", "standard", "strong"),
                      help="augmentation preset (default standard)")
    model = train.add_argument_group("model")
    model.add_argument("--backbone", default=s,
                       help="see `kft backbones` (default resnet50)")
    model.add_argument("--weights", default=s, help="imagenet (default), "
                       "none, or a weights file of the backbone")
    model.add_argument("--dropout", type=_float_at_least(0.0), default=s)
    recipe = train.add_argument_group("recipe (kft.fine_tune)")
    recipe.add_argument("--strategy", default=s, choices=(
        "feature_extraction", "partial", "gradual", "full", "auto"),
        help="auto (default) chooses by the number of images and says why")
    recipe.add_argument("--n-blocks", type=_int_at_least(1), default=s,
                        help="blocks below the head trained by partial")
    recipe.add_argument("--epochs", type=_int_at_least(0), default=s,
                        help="fine-tuning epochs after the head phase "
                        "(default 10)")
    recipe.add_argument("--head-epochs", type=_int_at_least(1), default=s,
                        help="head-only epochs first (default 3)")
    recipe.add_argument("--head-lr", type=_float_at_least(0.0, above=True),
                        default=s)
    recipe.add_argument("--lr", type=_rate_or_find, default=s,
                        help="fine-tuning rate, or 'find' (default 1e-4)")
    recipe.add_argument("--schedule", default=s, choices=(
        "cosine", "one_cycle", "constant"),
        help="fine-tuning phase schedule (default cosine)")
    recipe.add_argument("--layer-decay", type=_float_at_least(0.0,
                                                             above=True),
                        default=s, help="per-block rate factor in (0, 1]")
    recipe.add_argument("--weight-decay", type=_float_at_least(0.0),
                        default=s)
    recipe.add_argument("--unfreeze-every", type=_int_at_least(1),
                        default=s)
    recipe.add_argument("--bn", choices=("frozen", "train"), default=s)
    recipe.add_argument("--mixup", type=_float_at_least(0.0), default=s,
                        metavar="ALPHA", help="Mixup alpha (default 0: off)")
    recipe.add_argument("--cutmix", type=_float_at_least(0.0), default=s,
                        metavar="ALPHA", help="CutMix alpha (default 0: off)")
    recipe.add_argument("--label-smoothing", type=_float_at_least(0.0),
                        default=s)
    recipe.add_argument("--monitor", default=s,
                        help="picks the kept epoch: val_loss (default), "
                        "val_accuracy, loss or accuracy")
    recipe.add_argument("--early-stopping", type=_int_at_least(0),
                        default=s, metavar="PATIENCE")
    recipe.add_argument("--seed", type=_int_at_least(0), default=s)
    run = train.add_argument_group("run folder")
    run.add_argument("--out", default=s, help="run folder (default "
                     "runs/<data folder>-<backbone>)")
    run.add_argument("--config", default=None, metavar="FILE.toml",
                     help="settings file (a run's config.toml); flags "
                     "override it")
    run.add_argument("--no-plots", dest="plots", action="store_false",
                     default=s, help="skip the report's plots (faster)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out after an interruption")
    _output_flags(train)
    return train


def _parser():
    parser = argparse.ArgumentParser(
        prog="kft", description="Fine-tuning pretrained vision backbones "
        "with Keras 3 on JAX.", epilog="`kft COMMAND --help` shows an "
        "example of each command.")
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {"train": _train_parser(sub)}
    evaluate = _add(sub, "eval", "evaluate a run (or a .keras model) on a "
                    "labelled image folder: report and plots")
    evaluate.add_argument("run", metavar="RUN_OR_MODEL")
    evaluate.add_argument("data_dir", metavar="DATA_DIR",
                          help="<class>/<images> with the run's classes")
    evaluate.add_argument("--batch-size", type=_int_at_least(1), default=32)
    evaluate.add_argument("--top-k", type=_int_at_least(1), default=5)
    evaluate.add_argument("--no-plots", dest="plots", action="store_false",
                          help="skip the plots (faster)")
    evaluate.add_argument("--out", default=None, help="folder for the report "
                          "(default: RUN/eval-<DATA_DIR name>)")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace a report already in the folder")
    _output_flags(evaluate)
    parsers["eval"] = evaluate
    predict = _add(sub, "predict", "top-k classes of images with a run, a "
                   ".keras or an .onnx model (kft.predict)")
    predict.add_argument("run", metavar="RUN_OR_MODEL",
                         help="run folder, .keras or .onnx file")
    predict.add_argument("images", nargs="+", metavar="IMAGES_OR_DIR",
                         help="image files or folders (searched "
                         "recursively)")
    predict.add_argument("--top-k", type=_int_at_least(1), default=1)
    predict.add_argument("--tta", choices=("flip", "multi_crop"),
                         default=None, help="test-time augmentation")
    predict.add_argument("--batch-size", type=_int_at_least(1), default=32)
    _output_flags(predict)
    parsers["predict"] = predict
    export = _add(sub, "export", "write a run's model as ONNX or a plain "
                  "Keras file (kft.export)")
    export.add_argument("run", metavar="RUN_OR_MODEL",
                        help="run folder or .keras file")
    export.add_argument("--format", choices=("onnx", "keras"),
                        default="onnx")
    export.add_argument("--output", choices=("logits", "probabilities"),
                        default=None, help="what the graph returns "
                        "(default: what the model returns: probabilities "
                        "if it ends in a softmax, else logits)")
    export.add_argument("--batch", choices=("dynamic", "1"),
                        default="dynamic", help="ONNX batch dimension")
    export.add_argument("--out", default=None, help="file to write "
                        "(default: RUN/model.onnx, RUN/model_inference"
                        ".keras)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace the --out file if it exists")
    _output_flags(export)
    parsers["export"] = export
    finder = _add(sub, "lr-find", "learning-rate range test on an image "
                  "folder (kft.lr_find): suggestions and plot")
    finder.add_argument("data_dir", metavar="DATA_DIR")
    finder.add_argument("--phase", choices=("head", "fine_tune"),
                        default="head", help="head: the head alone (the "
                        "--head-lr of kft train); fine_tune: the head "
                        "trained first, then the strategy's set (--lr)")
    finder.add_argument("--strategy", default="full", choices=(
        "feature_extraction", "partial", "gradual", "full"))
    finder.add_argument("--n-blocks", type=_int_at_least(1), default=1)
    finder.add_argument("--backbone", default="resnet50")
    finder.add_argument("--weights", default="imagenet")
    finder.add_argument("--image-size", type=_int_at_least(1), default=None)
    finder.add_argument("--batch-size", type=_int_at_least(1), default=32)
    finder.add_argument("--augment", default="standard",
                        choices=("none", "light", "standard", "strong"))
    finder.add_argument("--head-epochs", type=_int_at_least(1), default=3)
    finder.add_argument("--weight-decay", type=_float_at_least(0.0),
                        default=1e-2)
    finder.add_argument("--steps", type=_int_at_least(10), default=100)
    finder.add_argument("--start", type=_float_at_least(0.0, above=True),
                        default=1e-7)
    finder.add_argument("--end", type=_float_at_least(0.0, above=True),
                        default=10.0)
    finder.add_argument("--seed", type=_int_at_least(0), default=0)
    finder.add_argument("--plot", default=None, metavar="FILE.png",
                        help="save the loss curve with the suggestions")
    _output_flags(finder)
    parsers["lr-find"] = finder
    compare = _add(sub, "compare", "compare fine-tuning strategies over "
                   "seeds on an image folder (kft.compare_strategies)")
    compare.add_argument("data_dir", metavar="DATA_DIR", help="<class>/"
                         "<images> or train/ + val/, as kft train reads "
                         "them, with an optional test/")
    compare.add_argument("--strategies", nargs="+", default=[
        "feature_extraction", "partial", "gradual", "full"],
        help="strategy names as kft.compare_strategies takes them "
        "(partial:2, discriminative:0.7, ...)")
    compare.add_argument("--seeds", type=_int_at_least(2), default=3,
                         help="seeds per strategy (default 3)")
    compare.add_argument("--test-dir", default=None, help="held-out folder "
                         "(default: DATA_DIR/test if present, else the "
                         "validation split)")
    compare.add_argument("--val-split", type=_fraction, default=0.2)
    compare.add_argument("--backbone", default="resnet50")
    compare.add_argument("--weights", default="imagenet")
    compare.add_argument("--image-size", type=_int_at_least(1), default=None)
    compare.add_argument("--batch-size", type=_int_at_least(1), default=32)
    compare.add_argument("--epochs", type=_int_at_least(2), default=10,
                         help="epochs per run, head phase included")
    compare.add_argument("--head-epochs", type=_int_at_least(1), default=3)
    compare.add_argument("--augment", default="standard",
                         choices=("none", "light", "standard", "strong"))
    compare.add_argument("--out", default=None, help="folder for "
                         "comparison.json/.md/.png (default: runs/compare-"
                         "<DATA_DIR name>)")
    compare.add_argument("--overwrite", action="store_true",
                         help="replace a comparison already in the folder")
    _output_flags(compare)
    parsers["compare"] = compare
    demo = _add(sub, "demo", "transfer on real handwritten digits: "
                "pretrain, then compare scratch / feature extraction / "
                "partial / full")
    demo.add_argument("--image-size", type=_int_at_least(8), default=32)
    demo.add_argument("--target-per-class", type=_int_at_least(1),
                      default=10)
    demo.add_argument("--source-epochs", type=_int_at_least(1), default=15)
    demo.add_argument("--target-epochs", type=_int_at_least(2), default=30,
                      help="epochs per strategy (head phase included)")
    demo.add_argument("--seed", type=_int_at_least(0), default=0)
    demo.add_argument("--seeds", type=_int_at_least(2), default=None,
                      help="also compare every strategy over N seeds "
                      "(kft.compare_strategies)")
    demo.add_argument("--workdir", type=_writable_directory, default=None,
                      help="existing directory for the pretrained weights "
                      "file (default: a temporary one, removed at the end)")
    demo.add_argument("--out", default=None, help="folder for the plots "
                      "and comparison.json (default: --workdir if given, "
                      "else a new kft_demo_output_* folder in the system's "
                      "temporary folder, kept; its path is printed)")
    demo.add_argument("--no-plots", action="store_true")
    parsers["demo"] = demo
    listing = _add(sub, "backbones", "list registered backbones (default "
                   "size, blocks; --params: parameter counts)")
    listing.add_argument("pattern", nargs="?", default="*",
                         help="shell-style pattern, e.g. 'resnet*' (case "
                         "ignored), or a name")
    listing.add_argument("--params", action="store_true",
                         help="build each backbone (random weights, "
                         "default size) to count its parameters (slow "
                         "for many)")
    parsers["backbones"] = listing
    return parser, parsers


def _fail(parser, message):
    """Exits with status 2 and a usage line, as argparse does."""
    parser.error(message)


def main(argv: list[str] | None = None) -> int:
    """Runs the `kft` command on `argv` (defaults to `sys.argv[1:]`).

    Returns the exit status (0 done, 1 a failure while working); a bad
    command line or bad inputs exit with status 2 (`SystemExit`), before
    anything is trained.

    Example:
    >>> main(["backbones", "simple_cnn"])  # doctest: +NORMALIZE_WHITESPACE
    simple_cnn 32px stem > block1 > block2 > block3
    0
    """
    parser, parsers = _parser()
    args = parser.parse_args(argv)
    command = args.command
    if command == "backbones":
        return _backbones(args.pattern, args.params)
    handler = {"train": _train, "eval": _eval, "predict": _predict,
               "export": _export, "lr-find": _lr_find, "compare": _compare,
               "demo": _demo}[command]
    try:
        return handler(args, argv)
    except _Usage as error:
        _fail(parsers[command], str(error))
    except KeyboardInterrupt:
        print(f"kft {command}: interrupted.", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - the command's failure
        print(f"kft {command}: error: {type(error).__name__}: {error}",
              file=sys.stderr)
        return 1
    return 0


def _start_library(models=False):
    from kft._config import enable_compilation_cache

    enable_compilation_cache()
    if models:
        # The `kft` command loads kft's modules on first use; a saved kft
        # model needs every kft Keras class registered before it loads.
        import kft

        for name in kft.__all__:
            getattr(kft, name)


# -- train ----------------------------------------------------------------------


def _train(args, argv):
    given = {k: v for k, v in vars(args).items()
             if k not in ("command", "config", "resume", "quiet", "json")}
    if "val_split" in given and given["val_split"] == 0:
        given["val_split"] = None
    from kft.runs.config import TrainConfig
    from kft.runs.config import load_config

    if args.resume:
        extra = sorted(set(given) - {"out"})
        if "out" not in given:
            raise _Usage("--resume needs --out, the run folder to continue")
        if extra or args.config:
            raise _Usage(
                "--resume continues the run as its config.toml says; drop "
                + ", ".join("--" + ("no-plots" if k == "plots" else
                                    k.replace("_", "-")) for k in extra
                            + (["config"] if args.config else []))
                + " (or start a new run with another --out)")
    try:
        config = load_config(args.config) if args.config else TrainConfig()
        config = config.replace(**given)
        if not args.resume:
            config.check()
    except ValueError as error:
        raise _Usage(_flag_names(str(error))) from error
    if not args.resume and config.data_dir is None:
        raise _Usage("the following arguments are required: DATA_DIR (or "
                     "data_dir in --config)")
    if not args.resume:
        # Before Keras loads: a typo should not wait for it. (The same
        # check as `kft.runs.resolve_config`.)
        for folder, what in ((config.data_dir, "Data"),
                             (config.val_dir, "Val")):
            if folder is not None and not os.path.isdir(folder):
                raise _Usage(f"{what} folder {folder!r} does not exist.")
        if config.out is not None:
            _check_out_folder(config.out)
    _start_library()
    from kft.runs.train import RunSetupError
    from kft.runs.train import train_run

    quiet = args.quiet or args.json
    say = None if args.json else print
    try:
        result = train_run(config, resume=args.resume,
                           verbose=0 if quiet else 1,
                           print_fn=None if quiet else say,
                           command=["kft"] + list(
                               argv if argv is not None else sys.argv[1:]))
    except RunSetupError as error:
        raise _Usage(_flag_names(str(error))) from error
    if args.json:
        print(json.dumps(_train_summary(result), default=str))
    else:
        print(_train_text(result))
    return 0


def _flag_names(message):
    """Library argument names (`TrainConfig` settings, the arguments of
    `kft.data.from_directory` and `kft.fine_tune` they become) as the
    flags that set them: "`dropout`" reads "--dropout"."""
    import dataclasses

    from kft.runs.config import TrainConfig

    flags = {f.name: "--" + f.name.replace("_", "-")
             for f in dataclasses.fields(TrainConfig)}
    flags.update(data_dir="DATA_DIR", plots="--no-plots",
                 augmentation="--augment", validation_split="--val-split",
                 learning_rate="--lr", head_learning_rate="--head-lr",
                 early_stopping_patience="--early-stopping")
    for name, flag in flags.items():
        message = message.replace(f"`{name}`", flag)
    return message


def _train_summary(result):
    return {"out": result.out, "best_epoch": None if result.best_epoch is None
            else result.best_epoch + 1, "monitor": result.config.monitor,
            "best_value": result.best_value,
            "strategy": result.config.strategy, "reasons": result.reasons,
            "val": {k: result.metrics.get(k) for k in (
                "accuracy", "balanced_accuracy", "top_k_accuracy")}
            if result.metrics else {},
            "train_time_s": round(result.train_time, 2),
            "resumed": result.resumed,
            "files": {k: v for k, v in sorted(result.files.items())}}


def _train_text(result):
    lines = [f"Done: {result.out}"]
    if result.best_epoch is not None:
        lines.append(f"  best epoch {result.best_epoch + 1} of "
                     f"{len(result.history)}: {result.config.monitor} "
                     f"{result.best_value:.4g}")
    m = result.metrics
    if m:
        lines.append(f"  validation ({m['num_examples']} images): accuracy "
                     f"{m['accuracy']:.4f}, balanced accuracy "
                     f"{m['balanced_accuracy']:.4f}, macro F1 "
                     f"{m['macro']['f1']:.4f}")
    lines.append(f"  training time {result.train_time:.1f} s")
    lines.append(f"  wrote: {', '.join(sorted(result.files))}")
    lines.append(f"  next: kft eval {result.out} DATA_DIR")
    return "\n".join(lines)


# -- eval -----------------------------------------------------------------------


def _eval(args, argv):
    for path, what in ((args.run, "RUN_OR_MODEL"),
                       (args.data_dir, "DATA_DIR")):
        if not os.path.exists(path):
            raise _Usage(f"{what} {path!r} does not exist")
    base = args.run if os.path.isdir(args.run) else os.path.dirname(
        os.path.abspath(args.run))
    out = args.out or os.path.join(
        base, "eval-" + os.path.basename(os.path.abspath(args.data_dir)))
    flag = "--out" if args.out else "the default --out"
    _check_out_folder(out, flag)
    # A run folder holds its own validation report under the same names.
    kept = [name for name in ("evaluation.json", "evaluation.md")
            if os.path.isfile(os.path.join(out, name))]
    if kept and not args.overwrite:
        raise _Usage(f"{flag} {out!r} already holds a report "
                     f"({', '.join(kept)}); pass --overwrite to replace it, "
                     "or another --out")
    _start_library(models=True)
    from kft.runs.folder import load_eval_folder
    from kft.runs.folder import load_run
    from kft.runs.train import write_evaluation

    try:
        run = load_run(args.run)
        data = load_eval_folder(args.data_dir, run.class_names,
                                run.image_size, batch_size=args.batch_size)
    except ValueError as error:
        raise _Usage(str(error)) from error
    _make_out_folder(out, flag)
    report, files = write_evaluation(run.model, data, run.class_names, out,
                                     top_k=args.top_k, plots=args.plots)
    if args.json:
        print(json.dumps({"out": out, "files": files,
                          "report": report.to_dict()}))
    else:
        if not args.quiet:
            print(report.to_markdown())
        print(f"wrote: {', '.join(sorted(files))} in {out}")
    return 0


# -- predict / export -----------------------------------------------------------


def _model_file(path, what="RUN_OR_MODEL"):
    """The model file of a run folder, or `path`, a .keras / .onnx file
    (`kft.runs.load_run` finds a run's class names beside its file)."""
    if not os.path.exists(path):
        raise _Usage(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        model_path = os.path.join(path, "model.keras")
        if not os.path.isfile(model_path):
            raise _Usage(f"{path!r} holds no model.keras: not a finished "
                         "kft run folder (resume it with `kft train "
                         "--resume --out ...`)")
        return model_path
    if not path.endswith((".keras", ".onnx")):
        raise _Usage(f"{what} {path!r} is neither a run folder nor a "
                     ".keras / .onnx file")
    return path


def _predict(args, argv):
    model_path = _model_file(args.run)
    for path in args.images:
        if not os.path.exists(path):
            raise _Usage(f"IMAGES_OR_DIR {path!r} does not exist")
    _start_library(models=True)
    from kft.deploy.prediction import predict

    try:
        # One call: the model is loaded once for all the arguments.
        results = predict(model_path, list(args.images), top_k=args.top_k,
                          tta=args.tta, batch_size=args.batch_size)
    except (ValueError, OSError) as error:  # bad model or image files
        raise _Usage(str(error)) from error
    if args.json:
        print(json.dumps([{
            "source": r.source, "labels": list(r.labels),
            "indices": [int(i) for i in r.indices],
            "probabilities": [float(p) for p in r.probabilities]}
            for r in results]))
        return 0
    for r in results:
        guesses = ", ".join(f"{label} {p:.3f}" for label, p in zip(
            r.labels, r.probabilities))
        print(f"{r.source}\t{guesses}")
    return 0


def _export_target(args, model_path):
    """The file `kft export` writes, checked before the model loads."""
    if args.format == "keras" and args.batch != "dynamic":
        raise _Usage(f"--batch {args.batch} applies to --format onnx only "
                     "(a .keras file takes any batch size); drop --batch")
    folder = args.run if os.path.isdir(args.run) else os.path.dirname(
        os.path.abspath(args.run))
    out = args.out or os.path.join(folder, "model.onnx" if args.format ==
                                   "onnx" else "model_inference.keras")
    if os.path.isdir(out):
        raise _Usage(f"--out {out!r} is a folder; pass the file to write, "
                     f"e.g. {os.path.join(out, 'model.' + args.format)!r}")
    if args.format == "keras" and not out.endswith(".keras"):
        raise _Usage(f"--out {out!r}: --format keras writes a file whose "
                     "name ends in .keras")
    if os.path.exists(out) and os.path.samefile(out, model_path):
        raise _Usage(f"--out {out!r} is the model file being exported; "
                     "pass another --out (the trained model would be "
                     "replaced by its inference graph)")
    if os.path.exists(out) and not args.overwrite:
        raise _Usage(f"--out {out!r} already exists; pass --overwrite to "
                     "replace it, or another --out")
    return out


def _export(args, argv):
    model_path = _model_file(args.run)
    if model_path.endswith(".onnx"):
        raise _Usage(f"RUN_OR_MODEL {args.run!r} is already an ONNX file")
    out = _export_target(args, model_path)
    # Its folder is created if missing, as eval and compare create theirs.
    _make_out_folder(os.path.dirname(os.path.abspath(out)),
                     "the folder of --out")
    _start_library(models=True)
    from kft.deploy.exporting import export
    from kft.runs.folder import load_run

    try:
        # With the class names of the run.json beside a run's model.keras.
        run = load_run(model_path)
        path = export(run.model, out, format=args.format,
                      batch="dynamic" if args.batch == "dynamic" else 1,
                      output=args.output, class_names=run.class_names)
    except ValueError as error:
        raise _Usage(str(error)) from error
    if args.json:
        print(json.dumps({"out": path, "format": args.format,
                          "bytes": os.path.getsize(path)}))
    else:
        print(f"wrote {path} ({os.path.getsize(path):,} bytes); check it: "
              f"kft predict {path} IMAGES")
    return 0


# -- lr-find --------------------------------------------------------------------


def _lr_find(args, argv):
    if not os.path.isdir(args.data_dir):
        raise _Usage(f"DATA_DIR {args.data_dir!r} does not exist")
    if args.end <= args.start:
        raise _Usage(f"--end ({args.end:g}) must be above --start "
                     f"({args.start:g})")
    _start_library()
    from kft.runs.config import TrainConfig
    from kft.runs.lr import find_rate

    quiet = args.quiet or args.json
    config = TrainConfig(
        data_dir=args.data_dir, backbone=args.backbone, weights=args.weights,
        image_size=args.image_size, batch_size=args.batch_size,
        augment=args.augment, strategy=args.strategy,
        n_blocks=args.n_blocks, head_epochs=args.head_epochs,
        weight_decay=args.weight_decay, seed=args.seed)
    try:
        config, result = find_rate(
            config, phase=args.phase, steps=args.steps, start=args.start,
            end=args.end, verbose=0 if quiet else 1,
            print_fn=None if quiet else print)
    except ValueError as error:
        raise _Usage(_flag_names(str(error))) from error
    plot = None
    if args.plot:
        result.plot(path=args.plot)
        plot = args.plot
    suggestions = {name: s.learning_rate
                   for name, s in result.suggestions.items()}
    if args.json:
        print(json.dumps({"suggestions": suggestions,
                          "steps": len(result.learning_rates),
                          "stop_reason": result.stop_reason, "plot": plot}))
        return 0
    for name, s in result.suggestions.items():
        print(f"{name:8} {s.learning_rate:.3g}")
    if "valley" in suggestions:
        print("next: " + _train_command(args, argv, suggestions["valley"]))
    if plot:
        print(f"wrote {plot}")
    return 0


# A value no flag parses to: what a flag not given keeps.
_NOT_GIVEN = object()


def _train_command(args, argv, rate):
    """The `kft train` command of what `kft lr-find` measured: every flag
    given that `kft train` takes, the strategy, and `rate` for the phase
    measured."""
    import dataclasses
    import shlex

    from kft.runs.config import TrainConfig

    # Parsed again over placeholders: a flag the placeholder survives was
    # not given (its value is lr-find's default).
    given = argparse.Namespace(**dict.fromkeys(vars(args), _NOT_GIVEN))
    argv = list(sys.argv[1:] if argv is None else argv)
    _parser()[1]["lr-find"].parse_args(
        argv[argv.index(args.command) + 1:], given)
    settings = {f.name for f in dataclasses.fields(TrainConfig)}
    words = ["kft", "train", args.data_dir]
    for name, value in vars(given).items():
        if name in settings and name != "data_dir" and (
                value is not _NOT_GIVEN or name == "strategy"):
            words += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    # The head alone was measured (`--phase head`, or feature extraction,
    # which trains nothing else): its rate is --head-lr.
    head = args.phase == "head" or args.strategy == "feature_extraction"
    words += ["--head-lr" if head else "--lr", f"{rate:.2g}"]
    return " ".join(map(shlex.quote, words))


# -- compare --------------------------------------------------------------------


def _compare(args, argv):
    if not os.path.isdir(args.data_dir):
        raise _Usage(f"DATA_DIR {args.data_dir!r} does not exist")
    test_dir = args.test_dir
    if test_dir is None and os.path.isdir(os.path.join(args.data_dir,
                                                       "test")):
        test_dir = os.path.join(args.data_dir, "test")
    if test_dir is not None and not os.path.isdir(test_dir):
        raise _Usage(f"--test-dir {test_dir!r} does not exist")
    out = args.out or os.path.join("runs", "compare-" + os.path.basename(
        os.path.abspath(args.data_dir)))
    flag = "--out" if args.out else "the default --out"
    _check_out_folder(out, flag)
    # Before training, as `kft eval` and `kft export` keep their files.
    kept = [name for name in ("comparison.json", "comparison.md",
                              "comparison.png")
            if os.path.isfile(os.path.join(out, name))]
    if kept and not args.overwrite:
        raise _Usage(f"{flag} {out!r} already holds a comparison "
                     f"({', '.join(kept)}); pass --overwrite to replace it, "
                     "or another --out")
    _start_library()
    from kft.evaluation.compare import compare_strategies
    from kft.runs.config import TrainConfig
    from kft.runs.folder import load_eval_folder
    from kft.runs.train import build_run_model
    from kft.runs.train import load_folder_data
    from kft.runs.train import resolve_config

    _check_strategies(args.strategies, args.epochs, args.head_epochs)
    try:
        config = resolve_config(TrainConfig(
            data_dir=args.data_dir, val_split=args.val_split or None,
            backbone=args.backbone, weights=args.weights,
            image_size=args.image_size, batch_size=args.batch_size,
            augment=args.augment, strategy="full", out=out))
        train, val = load_folder_data(config)
        if val is None and test_dir is None:
            raise ValueError("compare needs held-out data: a validation "
                             "split (--val-split > 0), val/ or test/")
        test = val
        if test_dir is not None:
            test = load_eval_folder(test_dir, train.class_names,
                                    config.image_size,
                                    batch_size=config.batch_size)
        num_classes = len(train.class_names)
        build_run_model(config, num_classes)  # checks the image size
    except ValueError as error:
        raise _Usage(_flag_names(str(error))) from error
    # Before training: the results are written after every run.
    _make_out_folder(config.out)
    say = None if (args.quiet or args.json) else print
    if say and test_dir is None:
        say("kft compare: no test folder: runs are scored on the "
            "validation split that also picks their best epoch (optimistic"
            "; pass --test-dir for a held-out score).")
    result = compare_strategies(
        lambda: build_run_model(config, num_classes), train, val, test,
        strategies=list(args.strategies), seeds=list(range(args.seeds)),
        epochs=args.epochs, head_epochs=args.head_epochs,
        batch_size=args.batch_size, print_fn=say)
    files = {"comparison.json": os.path.join(config.out, "comparison.json")}
    result.to_json(files["comparison.json"])
    files["comparison.md"] = os.path.join(config.out, "comparison.md")
    with open(files["comparison.md"], "w") as f:
        f.write(result.to_markdown() + "\n")
    try:
        import matplotlib  # noqa: F401

        files["comparison.png"] = os.path.join(config.out, "comparison.png")
        result.plot(path=files["comparison.png"])
    except ImportError:
        pass
    if args.json:
        print(json.dumps({"out": config.out, "files": files,
                          "table": result.table()}, default=str))
    else:
        print(result.to_markdown())
        print(f"wrote: {', '.join(sorted(files))} in {config.out}")
    return 0


def _check_strategies(strategies, epochs, head_epochs):
    """`--strategies` and the budget, as `kft.compare_strategies` checks
    them, in the flags' names."""
    from kft.evaluation._strategies import STRATEGY_NAMES
    from kft.evaluation._strategies import parse_strategies

    for spec in strategies:
        try:
            parse_strategies([spec])
        except ValueError as error:
            raise _Usage(
                f"argument --strategies: invalid strategy {spec!r}; "
                f"choose from {', '.join(STRATEGY_NAMES)}, partial:<blocks> "
                "(an integer >= 1) or discriminative:<decay> (a number in "
                "(0, 1])") from error
        if strategies.count(spec) > 1:
            raise _Usage(f"argument --strategies: {spec!r} is given "
                         f"{strategies.count(spec)} times")
    two_phase = [s for s in strategies if s != "feature_extraction"]
    if two_phase and head_epochs >= epochs:
        raise _Usage(
            f"--head-epochs ({head_epochs}) must be less than --epochs "
            f"({epochs}, head phase included) for the two-phase "
            f"strategies ({', '.join(two_phase)})")


# -- demo -----------------------------------------------------------------------


def _demo(args, argv):
    from kft.data.digits import digits

    try:
        # The demo's own split, checked before any training starts.
        digits(image_size=8, target_per_class=args.target_per_class,
               seed=args.seed)
    except ValueError as error:
        raise _Usage(f"argument --target-per-class: {error}") from error
    if args.out is not None:
        _check_out_folder(args.out)
    _start_library()
    from kft.demo import run_demo

    run_demo(image_size=args.image_size,
             target_per_class=args.target_per_class,
             source_epochs=args.source_epochs,
             target_epochs=args.target_epochs, seed=args.seed,
             workdir=args.workdir, output_dir=args.out,
             plots=not args.no_plots, seeds=args.seeds)
    return 0


# -- backbones ------------------------------------------------------------------


def _backbones(pattern, params=False):
    from kft.models import registry

    names = registry.list_backbones(pattern)
    resolved = registry.resolve_backbone_name(pattern)
    if not names and resolved is not None:
        names = [resolved]  # a name spelt differently: "EfficientNet_B0"
    if not names:
        close = _close_to_pattern(pattern)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        print(f"kft backbones: no backbone matches {pattern!r}.{hint} "
              "`kft backbones` lists them all.", file=sys.stderr)
        return 1
    for name in names:
        spec = registry.get_backbone(name)
        count = ""
        if params:
            count = f"{_count_params(spec):>12,}  "
        print(f"{name:18} {spec.default_size:4d}px  {count}"
              f"{' > '.join(spec.block_names)}")
    return 0


def _count_params(spec):
    """Parameters of the backbone (no head) at its default size."""
    from kft.models.backbones import create_backbone

    _start_library()
    backbone = create_backbone(spec.name, weights=None)
    return int(backbone.count_params())


def _close_to_pattern(pattern):
    """Names matching `pattern` with `_` and `-` ignored ("efficientnet_b*"),
    else names close to it."""
    import fnmatch

    from kft.models import registry

    canonical = registry.canonical_name(pattern)
    close = ([n for n in registry.list_backbones()
              if fnmatch.fnmatchcase(registry.canonical_name(n), canonical)]
             if "[" not in pattern else [])
    return close or registry.close_backbone_names(pattern)


if __name__ == "__main__":
    sys.exit(main())
