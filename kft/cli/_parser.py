"""The `kft` command line: its parser and every subcommand's flags."""

import argparse

from kft.cli._checks import float_at_least
from kft.cli._checks import fraction
from kft.cli._checks import int_at_least
from kft.cli._checks import rate_or_find
from kft.cli._checks import writable_directory

EPILOGS = {
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


def _output_flags(parser):
    parser.add_argument("--quiet", action="store_true",
                        help="no progress output, only the final lines")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (and no progress)")


def _add(sub, name, help_text):
    return sub.add_parser(name, help=help_text, description=help_text,
                          epilog=EPILOGS.get(name),
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
    data.add_argument("--val-split", type=fraction, default=s,
                      help="fraction of each class held out for validation "
                      "(default 0.2; 0: none)")
    data.add_argument("--image-size", type=int_at_least(1), default=s,
                      help="side in pixels (default: the backbone's)")
    data.add_argument("--batch-size", type=int_at_least(1), default=s)
    data.add_argument("--augment", default=s,
                      choices=("none", "light", "standard", "strong"),
                      help="augmentation preset (default standard)")
    model = train.add_argument_group("model")
    model.add_argument("--backbone", default=s,
                       help="see `kft backbones` (default resnet50)")
    model.add_argument("--weights", default=s, help="imagenet (default), "
                       "none, or a weights file of the backbone")
    model.add_argument("--dropout", type=float_at_least(0.0), default=s)
    recipe = train.add_argument_group("recipe (kft.fine_tune)")
    recipe.add_argument("--strategy", default=s, choices=(
        "feature_extraction", "partial", "gradual", "full", "auto"),
        help="auto (default) chooses by the number of images and says why")
    recipe.add_argument("--n-blocks", type=int_at_least(1), default=s,
                        help="blocks below the head trained by partial")
    recipe.add_argument("--epochs", type=int_at_least(0), default=s,
                        help="fine-tuning epochs after the head phase "
                        "(default 10)")
    recipe.add_argument("--head-epochs", type=int_at_least(1), default=s,
                        help="head-only epochs first (default 3)")
    recipe.add_argument("--head-lr", type=float_at_least(0.0, above=True),
                        default=s, help="head phase rate (default 1e-3)")
    recipe.add_argument("--lr", type=rate_or_find, default=s,
                        help="fine-tuning rate, or 'find' (default 1e-4)")
    recipe.add_argument("--schedule", default=s, choices=(
        "cosine", "one_cycle", "constant"),
        help="fine-tuning phase schedule (default cosine)")
    recipe.add_argument("--layer-decay", type=float_at_least(0.0,
                                                             above=True),
                        default=s, help="per-block rate factor in (0, 1]")
    recipe.add_argument("--weight-decay", type=float_at_least(0.0),
                        default=s)
    recipe.add_argument("--unfreeze-every", type=int_at_least(1),
                        default=s)
    recipe.add_argument("--bn", choices=("frozen", "train"), default=s)
    recipe.add_argument("--mixup", type=float_at_least(0.0), default=s,
                        metavar="ALPHA", help="Mixup alpha (default 0: off)")
    recipe.add_argument("--cutmix", type=float_at_least(0.0), default=s,
                        metavar="ALPHA", help="CutMix alpha (default 0: off)")
    recipe.add_argument("--label-smoothing", type=float_at_least(0.0),
                        default=s)
    recipe.add_argument("--monitor", default=s,
                        help="picks the kept epoch: val_loss (default), "
                        "val_accuracy, loss or accuracy")
    recipe.add_argument("--early-stopping", type=int_at_least(0),
                        default=s, metavar="PATIENCE")
    recipe.add_argument("--seed", type=int_at_least(0), default=s)
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


def build_parser():
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
    evaluate.add_argument("--batch-size", type=int_at_least(1), default=32)
    evaluate.add_argument("--top-k", type=int_at_least(1), default=None,
                          help="K of the top-k accuracy (default: 5, or "
                          "the number of classes when fewer)")
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
    predict.add_argument("--top-k", type=int_at_least(1), default=1)
    predict.add_argument("--tta", choices=("flip", "multi_crop"),
                         default=None, help="test-time augmentation")
    predict.add_argument("--batch-size", type=int_at_least(1), default=32)
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
    finder.add_argument("--n-blocks", type=int_at_least(1), default=1)
    finder.add_argument("--backbone", default="resnet50")
    finder.add_argument("--weights", default="imagenet")
    finder.add_argument("--image-size", type=int_at_least(1), default=None)
    finder.add_argument("--batch-size", type=int_at_least(1), default=32)
    finder.add_argument("--augment", default="standard",
                        choices=("none", "light", "standard", "strong"))
    finder.add_argument("--head-epochs", type=int_at_least(1), default=3)
    finder.add_argument("--weight-decay", type=float_at_least(0.0),
                        default=1e-2)
    finder.add_argument("--steps", type=int_at_least(10), default=100)
    finder.add_argument("--start", type=float_at_least(0.0, above=True),
                        default=1e-7)
    finder.add_argument("--end", type=float_at_least(0.0, above=True),
                        default=10.0)
    finder.add_argument("--seed", type=int_at_least(0), default=0)
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
    compare.add_argument("--seeds", type=int_at_least(2), default=3,
                         help="seeds per strategy, at least 2 (default 3)")
    compare.add_argument("--test-dir", default=None, help="held-out folder "
                         "(default: DATA_DIR/test if present, else the "
                         "validation split)")
    compare.add_argument("--val-split", type=fraction, default=0.2)
    compare.add_argument("--backbone", default="resnet50")
    compare.add_argument("--weights", default="imagenet")
    compare.add_argument("--image-size", type=int_at_least(1), default=None)
    compare.add_argument("--batch-size", type=int_at_least(1), default=32)
    compare.add_argument("--epochs", type=int_at_least(2), default=10,
                         help="epochs per run, head phase included")
    compare.add_argument("--head-epochs", type=int_at_least(1), default=3)
    compare.add_argument("--bn", choices=("frozen", "train"),
                         default="frozen", help="BatchNorm in the blocks "
                         "that train (default frozen; train with --weights "
                         "none)")
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
    demo.add_argument("--image-size", type=int_at_least(8), default=32)
    demo.add_argument("--target-per-class", type=int_at_least(1),
                      default=10)
    demo.add_argument("--source-epochs", type=int_at_least(1), default=15)
    demo.add_argument("--target-epochs", type=int_at_least(2), default=30,
                      help="epochs per strategy (head phase included)")
    demo.add_argument("--seed", type=int_at_least(0), default=0)
    demo.add_argument("--seeds", type=int_at_least(2), default=None,
                      help="also compare every strategy over N seeds "
                      "(kft.compare_strategies)")
    demo.add_argument("--workdir", type=writable_directory, default=None,
                      help="existing directory for the pretrained weights "
                      "file (default: a temporary one, removed at the end)")
    demo.add_argument("--out", default=None, help="folder for the plots "
                      "(and comparison.json with --seeds; default: "
                      "--workdir if given, "
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
