"""Command line: `kft demo`, `kft backbones`."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="kft", description="Fine-tuning pretrained vision backbones "
        "with Keras 3 on JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="transfer on real handwritten digits: pretrain, then "
        "compare scratch / feature extraction / partial / full")
    demo.add_argument("--image-size", type=int, default=32)
    demo.add_argument("--target-per-class", type=int, default=10)
    demo.add_argument("--source-epochs", type=int, default=15)
    demo.add_argument("--target-epochs", type=int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workdir", default=None,
                      help="where the pretrained weights file is written")
    listing = sub.add_parser("backbones", help="list registered backbones")
    listing.add_argument("pattern", nargs="?", default="*")
    args = parser.parse_args(argv)

    import kft

    if args.command == "backbones":
        for name in kft.list_backbones(args.pattern):
            spec = kft.get_backbone(name)
            print(f"{name:18} {spec.default_size:4d}px  "
                  f"{' > '.join(spec.block_names)}")
        return 0
    from kft.demo import run_demo

    run_demo(image_size=args.image_size,
             target_per_class=args.target_per_class,
             source_epochs=args.source_epochs,
             target_epochs=args.target_epochs, seed=args.seed,
             workdir=args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
