"""Table and PNG chart from saved `bench_vs_torch.py` results, no re-run.

Reads every `benchmarks/results/vs_torch/<tag>_*.json` of the given tags
(one JSON per run, as `bench_vs_torch.py` writes them), prints the markdown
table (median ms per step, first step in s, kft / PyTorch ratios) and
writes a bar chart of training images per second (needs matplotlib:
`pip install 'kft[bench]'`).

    python benchmarks/plot_results.py --tags cpu64 cpu224 --out chart.png
"""

import argparse
import glob
import json
import os

import _harness
import _vs_torch


def load(tags, directory):
    """Returns the saved runs of `tags` under `directory`, as dicts."""
    results = []
    for tag in tags:
        for path in sorted(glob.glob(os.path.join(directory,
                                                  f"{tag}_*.json"))):
            with open(path) as f:
                results.append(json.load(f))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", nargs="+", default=["cpu"])
    parser.add_argument("--dir", default=_harness.results_path("vs_torch"))
    parser.add_argument("--out", default=None,
                        help="PNG path; default <dir>/<tags>_chart.png")
    args = parser.parse_args()
    results = load(args.tags, args.dir)
    if not results:
        raise SystemExit(f"no results for tags {args.tags} in {args.dir}")
    sides = [s for s in _vs_torch.SIDES
             if any(r["side"] == s for r in results)]
    print(_vs_torch.table(results, sides))
    _vs_torch.chart(results, args.out or os.path.join(
        args.dir, "_".join(args.tags) + "_chart.png"))


if __name__ == "__main__":
    main()
