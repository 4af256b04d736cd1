"""`kft lr-find`, `kft compare`, `kft demo`, `kft backbones`: the
commands that explore before (or instead of) a training run."""

import argparse
import contextlib
import json
import os
import sys

from kft._paths import not_a_folder
from kft._writing import release
from kft._writing import write_file
from kft.cli._checks import Usage
from kft.cli._checks import check_out_folder
from kft.cli._checks import check_out_outside
from kft.cli._checks import flag_names
from kft.cli._checks import kept_files
from kft.cli._checks import make_out_folder
from kft.cli._checks import start_library
from kft.cli._parser import build_parser


def lr_find_command(args, argv):
    reason = not_a_folder(args.data_dir)
    if reason:
        raise Usage(f"DATA_DIR {args.data_dir!r} {reason}")
    if args.end <= args.start:
        raise Usage(f"--end ({args.end:g}) must be above --start "
                     f"({args.start:g})")
    if args.plot:
        # Before the range test (it wrote nothing after minutes of work).
        from kft._plotting import plot_suffixes

        supported = plot_suffixes()
        if os.path.splitext(args.plot)[1].lower() not in supported:
            raise Usage(f"--plot must end in one of {supported}. Received: "
                        f"--plot {args.plot!r}")
        # In a class folder, the plot was trained on as one more image (at
        # DATA_DIR's top it is not read).
        folder = os.path.dirname(os.path.abspath(args.plot))
        if os.path.realpath(folder) != os.path.realpath(args.data_dir):
            check_out_outside(folder, "the folder of --plot",
                              [("DATA_DIR", args.data_dir)])
        make_out_folder(os.path.dirname(os.path.abspath(args.plot)),
                        "the folder of --plot")
    start_library()
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
        message = flag_names(str(error))
        if message.startswith("strategy 'full' does not read") and not any(
                word.split("=")[0] == "--strategy"
                for word in (argv or sys.argv[1:])):
            # The user gave no strategy: say whose it is.
            message += (" (full is kft lr-find's default --strategy; "
                        "--n-blocks goes with --strategy partial)")
        raise Usage(message) from error
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
    if quiet:  # otherwise kft.lr_find printed them, with what each means
        for name, s in result.suggestions.items():
            print(f"{name:8} {s.learning_rate:.3g}")
    if "valley" in suggestions:
        print("next: " + train_command_line(args, argv, suggestions["valley"]))
    if plot:
        print(f"wrote {plot}")
    return 0


# A value no flag parses to: what a flag not given keeps.
_NOT_GIVEN = object()


def train_command_line(args, argv, rate):
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
    build_parser()[1]["lr-find"].parse_args(
        argv[argv.index(args.command) + 1:], given)
    settings = {f.name for f in dataclasses.fields(TrainConfig)}
    words = ["kft", "train", args.data_dir]
    # The head alone was measured (`--phase head`, or feature extraction,
    # which trains nothing else): its rate is --head-lr, whatever the
    # strategy, which is named only when given (`kft train`'s default,
    # auto, picks one by data size; lr-find's is full). A rate measured
    # for a strategy's set goes with that strategy.
    head = args.phase == "head" or args.strategy == "feature_extraction"
    for name, value in vars(given).items():
        if name in settings and name != "data_dir" and (
                value is not _NOT_GIVEN or name == "strategy" and not head):
            words += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    words += ["--head-lr" if head else "--lr", f"{rate:.2g}"]
    return " ".join(map(shlex.quote, words))



def compare_command(args, argv):
    reason = not_a_folder(args.data_dir)
    if reason:
        raise Usage(f"DATA_DIR {args.data_dir!r} {reason}")
    test_dir = args.test_dir
    if test_dir is None:
        from kft.runs.recipe import held_out_folder

        try:
            test_dir = held_out_folder(args.data_dir)
        except ValueError as error:
            raise Usage(str(error)) from error
    reason = test_dir is not None and not_a_folder(test_dir)
    if reason:
        raise Usage(f"--test-dir {test_dir!r} {reason}")
    out = args.out or os.path.join("runs", "compare-" + os.path.basename(
        os.path.abspath(args.data_dir)))
    flag = "--out" if args.out else "the default --out"
    check_out_folder(out, flag)
    check_out_outside(out, flag, [("DATA_DIR", args.data_dir),
                                  ("--test-dir", test_dir)])
    # Before training, as `kft eval` and `kft export` keep their files.
    kept_files(out, ("comparison.json", "comparison.md", "comparison.png"),
               flag, "a comparison", args.overwrite)
    start_library()
    from kft.evaluation.compare import compare_strategies
    from kft.runs.config import TrainConfig
    from kft.runs.folder import load_eval_folder
    from kft.runs.recipe import build_run_model
    from kft.runs.recipe import load_folder_data
    from kft.runs.resolve import resolve_config

    check_strategies(args.strategies, args.epochs, args.head_epochs)
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
        raise Usage(flag_names(str(error))) from error
    # Before training: a folder that cannot be made fails now, not after
    # hours of runs.
    created = not os.path.exists(config.out)
    make_out_folder(config.out)
    say = None if (args.quiet or args.json) else print
    if say and test_dir is None:
        say("kft compare: no test folder: runs are scored on the "
            "validation split that also picks their best epoch (optimistic"
            "; pass --test-dir for a held-out score).")
    try:
        result = compare_strategies(
            lambda: build_run_model(config, num_classes), train, val, test,
            strategies=list(args.strategies), seeds=list(range(args.seeds)),
            epochs=args.epochs, head_epochs=args.head_epochs,
            batch_size=args.batch_size, bn=args.bn, print_fn=say)
    except (TypeError, ValueError) as error:
        # A run that raises is recorded in the comparison: what escapes is
        # a strategy's arguments, refused before any run trained.
        if created and not os.listdir(config.out):
            os.rmdir(config.out)
        raise Usage(f"argument --strategies: {error}") from error
    except KeyboardInterrupt as interrupt:
        # The finished runs are kept (Ctrl-C lost them all, and left an
        # empty --out); before the first run there are none.
        partial = getattr(interrupt, "comparison", None)
        if partial is not None and partial.runs:
            _write_comparison(partial, config.out, args.json)
            print(f"kft compare: interrupted {partial.settings['interrupted']}"
                  f"; the finished runs are in {config.out}.",
                  file=sys.stderr)
        elif created and not os.listdir(config.out):
            os.rmdir(config.out)
        raise
    _write_comparison(result, config.out, args.json)
    failures = result.failures()
    if failures:
        print(f"kft compare: {len(failures)} of {len(result.runs)} runs "
              "raised (listed in comparison.md).", file=sys.stderr)
    return 1 if result.best is None else 0


def _write_comparison(result, out, as_json):
    files = {"comparison.json": os.path.join(out, "comparison.json")}
    # An earlier comparison's chart (--overwrite) is not this one's, drawn
    # or not (no matplotlib, no run finished).
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, "comparison.png"))
    release(files["comparison.json"])  # a link: replaced, not written through
    result.to_json(files["comparison.json"])
    files["comparison.md"] = os.path.join(out, "comparison.md")
    write_file(files["comparison.md"], result.to_markdown() + "\n",
               replace_links=True)
    from kft._plotting import available

    if result.best is not None and available():  # some run finished
        files["comparison.png"] = os.path.join(out, "comparison.png")
        result.plot(path=files["comparison.png"])
    if as_json:
        from kft.evaluation.comparison import finite_or_none

        print(json.dumps(finite_or_none(
            {"out": out, "files": files, "table": result.table(),
             "failures": result.failures(),
             "interrupted": (result.settings or {}).get("interrupted")}),
            default=str, allow_nan=False))
    else:
        print(result.to_markdown())
        print(f"wrote: {', '.join(sorted(files))} in {out}")


def check_strategies(strategies, epochs, head_epochs):
    """`--strategies` and the budget, as `kft.compare_strategies` checks
    them, in the flags' names."""
    from kft.evaluation._strategies import STRATEGY_NAMES
    from kft.evaluation._strategies import parse_strategies

    for spec in strategies:
        try:
            parse_strategies([spec])
        except ValueError as error:
            raise Usage(
                f"argument --strategies: invalid strategy {spec!r}; "
                f"choose from {', '.join(STRATEGY_NAMES)}, partial:<blocks> "
                "(an integer >= 1) or discriminative:<decay> (a number in "
                "(0, 1])") from error
        if strategies.count(spec) > 1:
            raise Usage(f"argument --strategies: {spec!r} is given "
                         f"{strategies.count(spec)} times")
    two_phase = [s for s in strategies if s != "feature_extraction"]
    if two_phase and head_epochs >= epochs:
        raise Usage(
            f"--head-epochs ({head_epochs}) must be less than --epochs "
            f"({epochs}, head phase included) for the two-phase "
            f"strategies ({', '.join(two_phase)})")



def demo_command(args, argv):
    from kft.data.digits import digits

    try:
        # The demo's own split, checked before any training starts.
        digits(image_size=8, target_per_class=args.target_per_class,
               seed=args.seed)
    except ValueError as error:
        raise Usage(f"argument --target-per-class: {error}") from error
    if args.out is not None:
        make_out_folder(args.out)
    start_library()
    from kft.demo import run_demo

    run_demo(image_size=args.image_size,
             target_per_class=args.target_per_class,
             source_epochs=args.source_epochs,
             target_epochs=args.target_epochs, seed=args.seed,
             workdir=args.workdir, output_dir=args.out,
             plots=not args.no_plots, seeds=args.seeds)
    return 0


def backbones_command(pattern, params=False):
    from kft.models import registry

    names = registry.list_backbones(pattern)
    resolved = registry.resolve_backbone_name(pattern)
    if not names and resolved is not None:
        names = [resolved]  # a name spelt differently: "EfficientNet_B0"
    if not names:
        close = _close_to_pattern(pattern)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        why = registry.not_registered_reason(pattern)
        hint = f" {why}{hint}" if why else hint
        print(f"kft backbones: no backbone matches {pattern!r}.{hint} "
              "`kft backbones` lists them all.", file=sys.stderr)
        return 2  # bad input
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

    start_library()
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
