#!/usr/bin/env bash
# The GPU benchmark in one call: carried wheels, environment checks, the
# 224 px bf16 matrix of kft vs PyTorch (benchmarks/bench_gpu.py).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out-dir DIR] [--backbones ...]
#                                [--wheels DIR] [--install-only]
#                                [--wheel-python X.Y] [--run SCRIPT]
#                                [other bench_gpu.py options]
#
# 1. Unless --dry-run: checks that the wheels kft needs beyond the GPU
#    image (WHEEL_PINS) are in --wheels (default .whl, or $KFT_WHEELS),
#    one version each, and installs them with --no-deps into a fresh
#    folder put first on PYTHONPATH. A missing wheel stops it at once,
#    naming the wheel and the command that fetches it.
# 2. Unless --dry-run, bench_gpu.py checks in fresh processes that every
#    module imports and that JAX and PyTorch both see a GPU; then it runs
#    the matrix, each backbone and side in its own process and timeout.
# --install-only stops after step 1; --wheel-python 3.12 installs wheels
# built for another Python (to try step 1 on a machine with another one).
# --run SCRIPT runs benchmarks/SCRIPT (e.g. bench_gpu_depthwise.py) with
# the other options instead of bench_gpu.py, after the same step 1.
# The Python used is $PYTHON (default python3). Exit codes: 2 wheels or
# install, 3 environment (imports, GPU), 1 a row failed, 0 otherwise.
set -euo pipefail

# What kft imports that the GPU image lacks, at the versions tested here.
WHEEL_PINS="keras==3.15.1 namex==0.1.0 optree==0.20.0 grain==0.2.18"
WHEEL_PINS+=" array_record==0.8.6 portpicker==1.6.0"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS="${KFT_WHEELS:-$REPO/.whl}"
DRY_RUN=0
INSTALL_ONLY=0
WHEEL_PYTHON=""
SCRIPT="bench_gpu.py"
ARGS=()

fail() {  # fail CODE MESSAGE...
    local code=$1
    shift
    echo "gpu_check: $*" >&2
    exit "$code"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1; ARGS+=("$1") ;;
        --install-only) INSTALL_ONLY=1 ;;
        --wheels) [ $# -ge 2 ] || fail 2 "--wheels needs a folder"
                  WHEELS="$2"; shift ;;
        --wheel-python) [ $# -ge 2 ] || fail 2 "--wheel-python needs X.Y"
                        WHEEL_PYTHON="$2"; shift ;;
        --run) [ $# -ge 2 ] || fail 2 "--run needs a script in benchmarks/"
               SCRIPT="$2"; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, "");
                                                       print}' "${BASH_SOURCE[0]}"
                   exec "$PYTHON" "$REPO/benchmarks/bench_gpu.py" --help ;;
        *) ARGS+=("$1") ;;
    esac
    shift
done

fetch_hint() {  # how to bring wheels, for the messages
    echo "Fetch them once on a machine with the package registry, from the" \
         "repository root (see DEVELOPERS.md, 'Benchmarks on a lent GPU" \
         "machine'): python3 -m pip download --no-deps --only-binary=:all:" \
         "--python-version 3.12 --implementation cp" \
         "--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64" \
         "--platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64" \
         "--platform manylinux2014_x86_64 -d .whl $*"
}

install_wheels() {
    [ -d "$WHEELS" ] || fail 2 "no wheel folder $WHEELS (give --wheels DIR)." \
        "$(fetch_hint "$WHEEL_PINS")"
    local pin name found missing=()
    for pin in $WHEEL_PINS; do
        name=${pin%%==*}
        # Wheel file names spell '-' as '_': array_record-0.8.6-cp312-...whl
        found=$(find "$WHEELS" -maxdepth 1 -iname "${name//-/_}-*.whl" | wc -l)
        if [ "$found" -eq 0 ]; then
            missing+=("$pin")
        elif [ "$found" -gt 1 ]; then
            fail 2 "$found wheels of $name in $WHEELS: keep one version" \
                "(two stop the install):" \
                "$(cd "$WHEELS" && ls -1 "${name//-/_}"-*.whl | tr '\n' ' ')"
        fi
    done
    [ ${#missing[@]} -eq 0 ] || fail 2 "missing wheel(s) in $WHEELS:" \
        "${missing[*]%%==*}. $(fetch_hint "${missing[*]}")"
    SITE="$(mktemp -d "${TMPDIR:-/tmp}/kft_gpu_site.XXXXXX")"
    local target=()
    if [ -n "$WHEEL_PYTHON" ]; then  # wheels built for another Python
        target=(--python-version "$WHEEL_PYTHON" --implementation cp
                --abi "cp${WHEEL_PYTHON//./}" --only-binary=:all:)
        local platform
        for platform in manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
            manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
            manylinux1_x86_64; do
            target+=(--platform "$platform")
        done
    fi
    echo "gpu_check: installing $(ls "$WHEELS"/*.whl | wc -l) wheels from" \
         "$WHEELS into $SITE" >&2
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" ${target[@]+"${target[@]}"} \
        "$WHEELS"/*.whl || { rm -rf "$SITE"
        fail 2 "pip could not install the wheels in $WHEELS (see pip's" \
            "message above)."; }
    export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
}

cd "$REPO"
case "$SCRIPT" in
    */*|.*|"") fail 2 "--run takes a file name in benchmarks/, not '$SCRIPT'" ;;
esac
[ -f "benchmarks/$SCRIPT" ] || fail 2 "--run: no benchmarks/$SCRIPT" \
    "(there are: $(cd benchmarks && ls bench_gpu*.py | tr '\n' ' '))"
if [ "$DRY_RUN" -eq 0 ] || [ "$INSTALL_ONLY" -eq 1 ]; then
    install_wheels
else
    echo "gpu_check: dry run: no wheels installed, no GPU needed" >&2
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "$INSTALL_ONLY" -eq 1 ]; then
    echo "gpu_check: wheels installed in $SITE"
    exit 0
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
status=0
"$PYTHON" "benchmarks/$SCRIPT" ${ARGS[@]+"${ARGS[@]}"} || status=$?
[ -z "${SITE:-}" ] || rm -rf "$SITE"
exit "$status"
