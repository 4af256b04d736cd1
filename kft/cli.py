"""Command line: `kft demo`, `kft backbones`.

Only the standard library is imported here: each subcommand imports the
parts of kft it needs, so `kft --help` does not wait for Keras and JAX.
"""

import argparse
import os
import sys


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


def _writable_directory(text):
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(
            f"must be an existing directory. Received: {text!r}")
    if not os.access(text, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"must be a directory you can write to. Received: {text!r}")
    return text


def _parser():
    parser = argparse.ArgumentParser(
        prog="kft", description="Fine-tuning pretrained vision backbones "
        "with Keras 3 on JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="transfer on real handwritten digits: pretrain, then "
        "compare scratch / feature extraction / partial / full")
    demo.add_argument("--image-size", type=_int_at_least(8), default=32)
    demo.add_argument("--target-per-class", type=_int_at_least(1),
                      default=10)
    demo.add_argument("--source-epochs", type=_int_at_least(1), default=15)
    demo.add_argument("--target-epochs", type=_int_at_least(2), default=30,
                      help="epochs per strategy (head phase included)")
    demo.add_argument("--seed", type=_int_at_least(0), default=0)
    demo.add_argument("--workdir", type=_writable_directory, default=None,
                      help="existing directory for the pretrained weights "
                      "file (default: a temporary one, removed at the end)")
    listing = sub.add_parser("backbones", help="list registered backbones")
    listing.add_argument("pattern", nargs="?", default="*",
                         help="shell-style pattern, e.g. 'resnet*' (case "
                         "ignored), or a name")
    return parser, demo


def main(argv: list[str] | None = None) -> int:
    """Runs the `kft` command on `argv` (defaults to `sys.argv[1:]`).

    Returns the exit status; bad arguments exit with status 2 through
    `argparse`, before anything is trained.
    """
    parser, demo_parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "backbones":
        return _backbones(args.pattern)
    from kft.data.digits import digits

    try:
        # The demo's own split, checked before any training starts.
        digits(image_size=8, target_per_class=args.target_per_class,
               seed=args.seed)
    except ValueError as error:
        demo_parser.error(f"argument --target-per-class: {error}")
    from kft._config import enable_compilation_cache
    from kft.demo import run_demo

    enable_compilation_cache()
    run_demo(image_size=args.image_size,
             target_per_class=args.target_per_class,
             source_epochs=args.source_epochs,
             target_epochs=args.target_epochs, seed=args.seed,
             workdir=args.workdir)
    return 0


def _backbones(pattern):
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
        print(f"{name:18} {spec.default_size:4d}px  "
              f"{' > '.join(spec.block_names)}")
    return 0


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
