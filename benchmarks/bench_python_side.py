"""kft's own Python-side work on large data: an evaluation of many examples
of many classes, and the listing of a folder tree of many folders.

    python benchmarks/bench_python_side.py --examples 50000 --classes 1000 \
        --images 5000

`kft.evaluation.report_from_predictions` on random float32 logits: the
peak memory numpy allocates above the scores (tracemalloc) and the
seconds. `list_images` (what `kft.data.from_directory` walks class
folders with) over a generated tree of one 8 px image per folder
(`<class>/s<i>/cam/obj/a.png`, six levels down): the best of 3 runs, and
plain `os.walk` over the same tree. Run with `PYTHONPATH=<another
checkout>` to compare two versions of kft on one machine.
"""

import argparse
import os
import tempfile
import time
import tracemalloc

import numpy as np

import kft
from kft.data import _files
from kft.evaluation import report_from_predictions


def evaluation(examples, classes, seed=0):
    """`(scores MiB, peak MiB above them, seconds)` of one report."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(examples, classes)).astype("float32")
    labels = rng.integers(0, classes, examples)
    tracemalloc.start()
    start = time.perf_counter()
    report_from_predictions(labels, logits)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return logits.nbytes / 2**20, peak / 2**20, seconds


def listing(images, classes=100, repeats=3):
    """`(folders, list_images best seconds, os.walk seconds)`."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "l1", "l2", "l3", "l4", "l5", "l6", "data")
        image = Image.new("RGB", (8, 8))
        for i in range(images):
            folder = os.path.join(root, f"class{i % classes:03d}", f"s{i}",
                                  "cam", "obj")
            os.makedirs(folder)
            image.save(os.path.join(folder, "a.png"))
        names = sorted(os.listdir(root))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            found = sum(len(_files.list_images(os.path.join(root, name),
                                               given=os.path.join(root,
                                                                  name)))
                        for name in names)
            times.append(time.perf_counter() - start)
        assert found == images, (found, images)
        start = time.perf_counter()
        folders = sum(len(dirs) for _, dirs, _ in os.walk(root))
        walk = time.perf_counter() - start
    return folders, min(times), walk


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=50000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=5000,
                        help="images (one per folder) of the listed tree")
    args = parser.parse_args(argv)
    print(f"kft {kft.__file__}")
    scores, peak, seconds = evaluation(args.examples, args.classes)
    print(f"report_from_predictions {args.examples} x {args.classes}: "
          f"scores {scores:.0f} MiB, peak above them {peak:.0f} MiB, "
          f"{seconds:.2f} s")
    folders, best, walk = listing(args.images)
    print(f"list_images {args.images} images in {folders} folders: "
          f"{best:.2f} s (best of 3); os.walk {walk:.2f} s")


if __name__ == "__main__":
    main()
