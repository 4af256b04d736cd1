"""How often XLA crashes compiling VGG16 at 32x32 under each CPU flag.

Each run is a fresh process (no compilation cache) that builds
`keras.applications.VGG16(include_top=False, input_shape=(32, 32, 3))` and
predicts one image; a non-zero exit is a crash (-11: segfault). This is
why kft's algsimp flag is opt-in (the YNN flag, kft's CPU default, never
crashed here).

    python benchmarks/xla_algsimp_crash.py --runs 6
"""

import argparse

import _harness
import _vs_torch

FLAG_SETS = {name: _vs_torch.XLA_FLAG_SETS[name]
             for name in ("none", "algsimp off", "ynn conv off")}


def predict_vgg16(_):
    """One VGG16 predict: what crashes or not (run in a fresh process)."""
    import kft  # noqa: F401  (selects the JAX backend before Keras loads)
    import keras
    import numpy as np

    model = keras.applications.VGG16(include_top=False, weights=None,
                                     input_shape=(32, 32, 3))
    model.predict(np.zeros((1, 32, 32, 3)), verbose=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--out", default=_harness.results_path(
        "xla_flags", "algsimp_crash.json"))
    args = parser.parse_args()
    record = {}
    for name, flags in FLAG_SETS.items():
        env = {"XLA_FLAGS": flags, "KFT_XLA_CPU_FLAGS": "0",
               "KFT_COMPILATION_CACHE": "0"}
        codes = [_harness.run_isolated("xla_algsimp_crash:predict_vgg16",
                                       env=env).returncode
                 for _ in range(args.runs)]
        crashes = sum(code != 0 for code in codes)
        record[name] = {"xla_flags": flags, "return_codes": codes,
                        "crashed": crashes}
        print(f"{name:13s} crashed {crashes}/{args.runs} runs "
              f"(return codes {codes})", flush=True)
    _harness.write_json(args.out, {"runs": args.runs, "flag_sets": record})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
