import os

# Scripts the resume and multi-process tests run in a subprocess, not a test module (the
# doctest collection would import and run it).
collect_ignore = ["resume_script.py", "multiprocess_script.py", "data"]

os.environ.setdefault("KERAS_BACKEND", "jax")
# The suite compiles hundreds of small programs, and on CPU XLA spends most
# of their compile time in LLVM's optimisation passes: without them
# tests/test_mixing.py ran in 42 s instead of 58 s (DEVELOPERS.md). Tests
# check results, not speed; benchmarks and users keep XLA's default level.
# Subprocesses inherit it; a level already in XLA_FLAGS wins.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""),
         "--xla_backend_optimization_level=0"]).strip()

# Many tests compile the same small programs (same model, same shapes);
# kft's compilation cache keeps only programs that took over 0.5 s, which
# at level 0 few do. Kept all, a repeat loads from the cache: 11-40% less
# CPU time on the files measured (DEVELOPERS.md). The cache is cold on a
# clean machine, as in CI.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import contextlib  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402


# Test files from the longest (seconds summed, mean of two CI runs at
# 34b89ac, 2026-12-05 21:25 UTC) down, then the short ones (under 5 s)
# in collection order:
# with `-n 2 --dist loadfile` each worker takes the next file when free,
# and a long file taken last left the other worker idle at the end (with
# the ten longest first only, 611.6 s in pytest for 1,181 s summed).
HEAVY_FIRST = (
    "test_cpu_convs.py", "test_cli_train.py", "test_multiprocess.py",
    "test_examples.py", "test_export.py", "test_augmentation.py",
    "test_callbacks.py", "test_backbones.py", "test_xla_flags.py",
    "test_compare.py", "test_mixing.py", "test_image_ops.py",
    "test_run_backup.py", "test_classifier.py", "test_adaptation.py",
    "test_gpu_check.py", "test_conv_grads.py", "test_data.py",
    "test_data_parallel.py", "test_layer_norm.py", "test_init_draws.py",
    "test_recipes.py", "test_regularizers.py", "test_model_parallel.py",
    "test_unfreezing_paths.py", "test_precise_bn.py", "test_optimizers.py",
    "test_first_day.py",
    "test_data_and_eval.py", "test_cli.py", "test_feature_cache.py",
    "test_plots.py", "test_training_inputs.py", "test_imbalance.py",
    "test_mixing_jit.py", "test_freezing.py", "test_model_aug_paths.py",
    "test_optimizers_retarget.py", "test_schedules.py", "test_lr_find.py",
    "test_interruptions.py", "test_readme_claims.py",
    "test_bench_export_parity.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    # Stable: each file's tests keep their order.
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def dtype_policy():
    """Builds under a dtype policy: `with dtype_policy("mixed_bfloat16"):`;
    the global policy is float32 again after the block (and the test)."""
    @contextlib.contextmanager
    def use(name):
        keras.config.set_dtype_policy(name)
        try:
            yield
        finally:
            keras.config.set_dtype_policy("float32")

    yield use
    keras.config.set_dtype_policy("float32")


BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="session")
def benchmark_script():
    """Imports a script of benchmarks/ by module name:
    `benchmark_script("export_parity")`. The scripts import their sibling
    modules (`_harness`) by plain name, so the folder is on `sys.path`
    while one is imported."""
    def load(name):
        sys.path.insert(0, BENCHMARKS)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(BENCHMARKS)

    return load


@pytest.fixture
def precise_bn_made(monkeypatch):
    """The `kft.callbacks.PreciseBatchNorm` callbacks `fine_tune` makes in
    the test, in order (a list filled as they are made)."""
    import kft
    from kft.training import fine_tune_phases

    made = []

    class Recorded(kft.callbacks.PreciseBatchNorm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(fine_tune_phases, "PreciseBatchNorm", Recorded)
    return made


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    # Auto-generated layer names ("dense_3") depend on earlier models;
    # tests start from a clean name space and a fixed seed. Without Keras'
    # `gc.collect()` there: a full collection of a worker's heap (JAX,
    # Keras, every model so far) took ~0.5 s per test, half the suite's
    # time (DEVELOPERS.md); `_collect_per_module` bounds the memory instead.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(autouse=True, scope="module")
def _collect_per_module():
    yield
    gc.collect()
