"""How often XLA crashes compiling VGG16 at 32x32 under each CPU flag.

Each run is a fresh process (no compilation cache) that builds
`keras.applications.VGG16(include_top=False, input_shape=(32, 32, 3))` and
predicts one image; a negative return code is a crash (-11: segfault).
This is why kft's algsimp flag is opt-in (the YNN flag, kft's CPU default,
never crashed here).

    python benchmarks/xla_algsimp_crash.py --runs 6
"""

import argparse
import os
import subprocess
import sys

CODE = """
import kft, keras, numpy as np
model = keras.applications.VGG16(include_top=False, weights=None,
                                 input_shape=(32, 32, 3))
model.predict(np.zeros((1, 32, 32, 3)), verbose=0)
"""
FLAG_SETS = {
    "none": "",
    "algsimp off": "--xla_disable_hlo_passes=algsimp",
    "ynn conv off": "--xla_cpu_experimental_ynn_fusion_type="
                    "-individual_convolution",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    for name, flags in FLAG_SETS.items():
        env = dict(os.environ, XLA_FLAGS=flags, KFT_XLA_CPU_FLAGS="0",
                   KFT_COMPILATION_CACHE="0")
        codes = [subprocess.run([sys.executable, "-c", CODE], env=env,
                                capture_output=True).returncode
                 for _ in range(args.runs)]
        crashes = sum(code != 0 for code in codes)
        print(f"{name:13s} crashed {crashes}/{args.runs} runs "
              f"(return codes {codes})", flush=True)


if __name__ == "__main__":
    main()
