import os
import subprocess
import sys

import numpy as np
import pytest

from kft import _compat
from kft import _config as _backend

FAST = _backend.CPU_XLA_FLAG_SETS["1"]
FLAGS = " ".join(FAST)
DEFAULT = (_backend.YNN_CONV_OFF, _backend.BARRIERS_KEPT,
           _backend.LEGACY_EMITTERS)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("XLA_FLAGS", "JAX_PLATFORMS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KFT_XLA_CPU_FLAGS", "1")
    monkeypatch.setattr(_compat, "jax_backends_initialised", lambda: False)
    monkeypatch.setattr(_backend, "_cpu_only", lambda: True)
    # A release whose XLA knows every flag, whichever jaxlib is installed.
    monkeypatch.setattr(_backend, "jaxlib_release", lambda: (0, 10, 2))
    return monkeypatch


def test_flags_are_added_on_cpu_when_asked(clean_env):
    assert _backend.apply_cpu_xla_flags() == FAST
    assert os.environ["XLA_FLAGS"] == FLAGS
    # Applying twice adds nothing more.
    assert _backend.apply_cpu_xla_flags() == ()
    assert os.environ["XLA_FLAGS"] == FLAGS


def test_user_flags_win(clean_env):
    clean_env.setenv("XLA_FLAGS", "--xla_disable_hlo_passes=fusion "
                                  "--xla_cpu_use_thunk_runtime=true")
    added = _backend.apply_cpu_xla_flags()
    assert added == (_backend.YNN_CONV_OFF, _backend.LEGACY_EMITTERS)
    assert os.environ["XLA_FLAGS"] == (
        "--xla_disable_hlo_passes=fusion --xla_cpu_use_thunk_runtime=true "
        + _backend.YNN_CONV_OFF + " " + _backend.LEGACY_EMITTERS)


def test_default_is_ynn_off_barriers_kept_and_older_emitters(clean_env):
    # An empty variable is unset, as kft's on/off switches read it (it
    # failed `import kft`).
    for setting in (None, "default", " default ", "", " "):
        clean_env.delenv("XLA_FLAGS", raising=False)
        if setting is None:
            clean_env.delenv("KFT_XLA_CPU_FLAGS")
        else:
            clean_env.setenv("KFT_XLA_CPU_FLAGS", setting)
        assert _backend.apply_cpu_xla_flags() == DEFAULT
        assert os.environ["XLA_FLAGS"] == " ".join(DEFAULT)
        assert "algsimp" not in os.environ["XLA_FLAGS"]


def test_mlir_emitters_are_the_default_without_the_older_ones(clean_env):
    assert "--xla_cpu_use_fusion_emitters=false" in DEFAULT
    clean_env.setenv("KFT_XLA_CPU_FLAGS", "mlir_emitters")
    assert _backend.apply_cpu_xla_flags() == (
        _backend.YNN_CONV_OFF, _backend.BARRIERS_KEPT)
    # The default's earlier name, when it was opt-in, still works.
    clean_env.delenv("XLA_FLAGS")
    clean_env.setenv("KFT_XLA_CPU_FLAGS", "legacy_emitters")
    assert _backend.apply_cpu_xla_flags() == DEFAULT


def test_unknown_setting_is_refused(clean_env):
    clean_env.setenv("KFT_XLA_CPU_FLAGS", "yes")
    with pytest.raises(ValueError, match="KFT_XLA_CPU_FLAGS='yes'"):
        _backend.apply_cpu_xla_flags()
    assert "XLA_FLAGS" not in os.environ


@pytest.mark.parametrize("setting", [
    {"KFT_XLA_CPU_FLAGS": "0"},
    {"backends": True},
    {"cpu_only": False},
])
def test_no_flags_when_off_too_late_or_not_cpu(clean_env, setting):
    if "KFT_XLA_CPU_FLAGS" in setting:
        clean_env.setenv("KFT_XLA_CPU_FLAGS", "0")
    if "backends" in setting:
        clean_env.setattr(_compat, "jax_backends_initialised", lambda: True)
    if "cpu_only" in setting:
        clean_env.setattr(_backend, "_cpu_only", lambda: False)
    assert _backend.apply_cpu_xla_flags() == ()
    assert "XLA_FLAGS" not in os.environ


@pytest.mark.parametrize("release,expected", [
    ((0, 10, 2), DEFAULT),
    # The older emitters' flag is gone from 0.11.1 (what Python 3.12+
    # installs): XLA aborted the process on it at the first compile.
    ((0, 12, 0, 1), (_backend.YNN_CONV_OFF, _backend.BARRIERS_KEPT)),
    ((0, 11, 0), DEFAULT),
    ((0, 11, 1), (_backend.YNN_CONV_OFF, _backend.BARRIERS_KEPT)),
    # YNNPACK's flag from 0.8.2 on.
    ((0, 8, 1), (_backend.BARRIERS_KEPT, _backend.LEGACY_EMITTERS)),
    ((0, 8, 2), DEFAULT),
    ((0, 4, 38), (_backend.BARRIERS_KEPT,)),
    # A release kft has not checked, or no version found: only the flag
    # every release knows.
    ((0, 13, 0), (_backend.BARRIERS_KEPT,)),
    (None, (_backend.BARRIERS_KEPT,)),
])
def test_only_flags_the_installed_xla_knows_are_added(clean_env, release,
                                                      expected):
    clean_env.delenv("KFT_XLA_CPU_FLAGS")
    clean_env.setattr(_backend, "jaxlib_release", lambda: release)
    assert _backend.apply_cpu_xla_flags() == expected
    assert os.environ["XLA_FLAGS"] == " ".join(expected)


def test_flags_that_cannot_apply_are_said_when_asked_for(clean_env):
    clean_env.setattr(_backend, "jaxlib_release", lambda: (0, 12, 0, 1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default says nothing
        clean_env.delenv("KFT_XLA_CPU_FLAGS")
        _backend.apply_cpu_xla_flags()
    # Asked for by name: the emitters' flag is not applied on jax 0.12.
    clean_env.delenv("XLA_FLAGS")
    clean_env.setenv("KFT_XLA_CPU_FLAGS", "legacy_emitters")
    with pytest.warns(UserWarning, match=r"KFT_XLA_CPU_FLAGS=legacy_emitters"
                      r": XLA CPU flags --xla_cpu_use_fusion_emitters=false "
                      r"left out: jaxlib 0.12.0.1 does not know them"):
        assert _backend.apply_cpu_xla_flags() == (
            _backend.YNN_CONV_OFF, _backend.BARRIERS_KEPT)
    # The user's own flag aborts the process at the first compile (kft's
    # README printed it among kft's defaults).
    clean_env.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
    clean_env.setenv("KFT_XLA_CPU_FLAGS", "default")
    with pytest.warns(UserWarning, match=r"XLA_FLAGS holds "
                      r"--xla_cpu_use_fusion_emitters, which the XLA of "
                      r"jaxlib 0.12.0.1 does not know: XLA will abort"):
        _backend.apply_cpu_xla_flags()


def test_the_installed_jaxlib_release_is_read():
    import jaxlib

    assert _backend.jaxlib_release()[:3] == tuple(
        int(n) for n in jaxlib.__version__.split(".")[:3])


@pytest.mark.parametrize("platforms,expected", [
    ("cpu", True), ("cuda", False), ("cuda,cpu", False), ("tpu", False)])
def test_jax_platforms_decides_cpu_only(monkeypatch, platforms, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert _backend._cpu_only() is expected


def test_a_gpu_plugin_means_not_cpu_only(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: object() if name == "jax_cuda12_plugin"
        else real(name, *a))
    assert _backend._cpu_only() is False


def _import_kft(env, code="import kft, os; print(os.environ.get('XLA_FLAGS'))"):
    return _import_kft_at_once([env], code)[0]


def _import_kft_at_once(envs, code="import kft, os; "
                                   "print(os.environ.get('XLA_FLAGS'))"):
    """The last line `code` prints in a fresh process per environment,
    the processes run at once (a fresh process costs 4-5 s)."""
    processes = []
    for env in envs:
        env = {k: v for k, v in os.environ.items()
               if k not in ("XLA_FLAGS", "KFT_XLA_CPU_FLAGS")} | env
        env.setdefault("JAX_PLATFORMS", "cpu")
        processes.append(subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    lines = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-2000:]
            lines.append(stdout.strip().splitlines()[-1])
    finally:
        for process in processes:
            process.kill()
    return lines


def test_importing_kft_sets_the_chosen_flags():
    # The import reads the setting (each setting's flags are checked in
    # this process above; a fresh process costs 4-5 s), for the release
    # installed.
    release = _backend.jaxlib_release()

    def known(flags):
        return " ".join(f for f in flags if _backend._xla_knows(f, release))

    assert _import_kft_at_once([{"KFT_XLA_CPU_FLAGS": "1"}, {}]) == [
        known(FAST), known(DEFAULT)]


_TRAIN = """
import kft, keras, numpy as np
keras.utils.set_random_seed(0)
layers = keras.layers
inputs = keras.Input((16, 16, 3))
x = layers.Rescaling(1 / 255)(inputs)
x = layers.Conv2D(16, 3, strides=2, padding="same")(x)
x = layers.Activation("hard_swish")(layers.BatchNormalization()(x))
y = layers.DepthwiseConv2D(3, padding="same")(x)
y = layers.Activation("relu")(layers.BatchNormalization()(y))
gate = layers.Dense(16, activation="hard_sigmoid")(
    layers.GlobalAveragePooling2D(keepdims=True)(y))
y = layers.Conv2D(16, 1)(layers.Multiply()([y, gate]))
x = layers.Add()([x, layers.BatchNormalization()(y)])
outputs = layers.Dense(3)(layers.GlobalAveragePooling2D()(x))
model = kft.fast_cpu_convs(keras.Model(inputs, outputs))
model.compile(keras.optimizers.SGD(0.05), keras.losses.
              SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
y = np.arange(8) % 3
print(*[float(model.train_on_batch(x, y)) for _ in range(3)])
"""


def test_both_emitters_train_the_same_model_to_the_same_losses():
    # A MobileNetV3-like block (kft's depthwise, 1x1 and ReLU layers,
    # BatchNorm, hard-swish, a squeeze-excite gate, a residual add; a whole
    # MobileNetV3Small took 40-60 s of compiling here) trained a few steps
    # under the default (older emitters) and the opt-out gives the same
    # losses to float rounding (the emitters' math functions differ in
    # the last bits: 1.2e-5 relative after 3 MobileNetV3Small steps).
    quick = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}  # conftest
    default, mlir = ([float(v) for v in line.split()]
                     for line in _import_kft_at_once(
                         [quick, {"KFT_XLA_CPU_FLAGS": "mlir_emitters",
                                  "KFT_COMPILATION_CACHE": "0", **quick}],
                         _TRAIN))
    assert len(default) == 3 and default[0] != default[2]
    np.testing.assert_allclose(mlir, default, rtol=1e-4)


def test_jax_initialised_before_kft_is_left_alone():
    code = ("import jax; jax.devices(); import kft, os; "
            "print(os.environ.get('XLA_FLAGS'))")
    assert _import_kft({"KFT_XLA_CPU_FLAGS": "1"}, code) == "None"


# -- heap release after compiles ---------------------------------------------


@pytest.fixture
def fresh_trim(monkeypatch):
    """`release_heap_after_compiles` as on a first import, with a recording
    `malloc_trim`; the listener it registers is removed afterwards."""
    import jax.monitoring

    from kft import _compat
    from kft import _config

    calls = []
    monkeypatch.setattr(_compat, "malloc_trim_function",
                        lambda: calls.append)
    monkeypatch.setattr(_config, "_trim_state",
                        {"listener": None, "trims": 0})
    yield calls, _config
    listener = _config._trim_state["listener"]
    if listener is not None:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_heap_is_trimmed_after_long_compiles_only(fresh_trim, monkeypatch):
    import jax.monitoring

    from kft import _compat

    calls, config = fresh_trim
    monkeypatch.delenv("KFT_MALLOC_TRIM", raising=False)
    assert config.release_heap_after_compiles()
    assert config.release_heap_after_compiles()  # once only
    event = _compat.backend_compile_event()
    jax.monitoring.record_event_duration_secs(event, 0.2)  # an eager op
    jax.monitoring.record_event_duration_secs("/jax/other", 30.0)
    assert calls == []
    jax.monitoring.record_event_duration_secs(event, 2.5)  # a train step
    assert calls == [0] and config._trim_state["trims"] == 1


def test_a_long_compile_drops_the_compiled_eager_ops(fresh_trim,
                                                     monkeypatch):
    """Eager ops leave compiled programs in JAX's cache; a long compile or
    a persistent-cache load of one drops them (with the trim), and eager
    ops still work after (they compile again)."""
    import jax.monitoring
    import jax.numpy as jnp
    from jax._src import dispatch

    from kft import _compat

    calls, config = fresh_trim
    monkeypatch.delenv("KFT_MALLOC_TRIM", raising=False)
    assert config.release_heap_after_compiles()
    np.testing.assert_array_equal(jnp.zeros((3, 5)) + 1, np.ones((3, 5)))
    cached = dispatch.xla_primitive_callable.cache_info
    assert cached().currsize > 0
    jax.monitoring.record_event_duration_secs(_compat.cache_hit_event(), 0.5)
    assert calls == [] and cached().currsize > 0  # a short program: kept
    jax.monitoring.record_event_duration_secs(_compat.cache_hit_event(), 4.0)
    assert calls == [0] and cached().currsize == 0
    np.testing.assert_array_equal(jnp.zeros((3, 5)) + 2, np.full((3, 5), 2))
    assert cached().currsize > 0


def test_heap_release_can_be_turned_off(fresh_trim, monkeypatch):
    calls, config = fresh_trim
    monkeypatch.setenv("KFT_MALLOC_TRIM", "0")
    assert not config.release_heap_after_compiles()
    assert config._trim_state["listener"] is None


def test_a_real_compile_reports_the_event_kft_listens_to():
    """JAX still records the backend-compile event under the name kft
    listens for (a private name: this fails if JAX renames it)."""
    import jax
    import jax.monitoring
    import numpy as np

    from kft import _compat

    seen = []

    def listener(event, duration, **kwargs):
        seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        jax.jit(lambda a: a * 3 + 1)(np.arange(7.0))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert _compat.backend_compile_event() in seen


# -- freed memory kept for the next step --------------------------------------


@pytest.fixture
def fresh_reuse(clean_env):
    """`reuse_freed_memory` as on a first import on CPU, with a recording
    `mallopt` (the real one would change this test process)."""
    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return 1

    clean_env.setattr(_compat, "mallopt_function", lambda: mallopt)
    clean_env.setattr(_backend, "_reuse_state", {"applied": False})
    clean_env.delenv("KFT_MALLOC_REUSE", raising=False)
    return calls, clean_env


def test_freed_memory_is_kept_on_cpu(fresh_reuse):
    calls, _ = fresh_reuse
    assert _backend.reuse_freed_memory()
    assert sorted(calls) == sorted([(-8, 1), (-4, 0), (-1, 2**30)])
    assert _backend.reuse_freed_memory()  # once only
    assert len(calls) == 3


@pytest.mark.parametrize("case", ["turned off", "gpu", "jax started",
                                  "mallopt refuses", "no glibc",
                                  "huge pages"])
def test_freed_memory_is_left_alone(fresh_reuse, case):
    calls, monkeypatch = fresh_reuse
    if case == "turned off":
        monkeypatch.setenv("KFT_MALLOC_REUSE", "0")
    elif case == "gpu":
        monkeypatch.setattr(_backend, "_cpu_only", lambda: False)
    elif case == "jax started":
        monkeypatch.setattr(_compat, "jax_backends_initialised",
                            lambda: True)
    elif case == "huge pages":
        monkeypatch.setattr(_compat, "glibc_maps_huge_pages", lambda: True)
    elif case == "mallopt refuses":
        monkeypatch.setattr(_compat, "mallopt_function",
                            lambda: lambda param, value: 0)
    else:
        monkeypatch.setattr(_compat, "mallopt_function", lambda: None)
    assert not _backend.reuse_freed_memory()
    assert calls == []


@pytest.mark.parametrize("tunables, thp, expected", [
    ("glibc.malloc.hugetlb=1", "always [madvise] never", True),
    ("glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1",
     "[always] madvise never", True),
    ("glibc.malloc.hugetlb=1", "always madvise [never]", False),
    ("glibc.malloc.hugetlb=0", "always [madvise] never", False),
    ("glibc.malloc.hugetlb=2", "always [madvise] never", False),
    ("", "always [madvise] never", False),
    ("glibc.malloc.hugetlb=1", None, False),  # no such file: no THP
])
def test_huge_page_mappings_need_the_tunable_and_the_kernel(
        tmp_path, monkeypatch, tunables, thp, expected):
    monkeypatch.setattr(_compat, "glibc_version", lambda: (2, 36))
    path = tmp_path / "enabled"
    if thp is not None:
        path.write_text(thp + "\n")
    environ = {"GLIBC_TUNABLES": tunables} if tunables else {}
    assert _compat.glibc_maps_huge_pages(
        environ, thp_enabled_path=str(path)) is expected
    # glibc before 2.35 has no such tunable; without glibc, no tunables.
    for version in ((2, 34), None):
        monkeypatch.setattr(_compat, "glibc_version", lambda: version)
        assert not _compat.glibc_maps_huge_pages(
            environ, thp_enabled_path=str(path))


def test_glibc_version_is_read_where_there_is_glibc():
    version = _compat.glibc_version()
    if _compat.mallopt_function() is None:
        assert version is None
    else:
        assert version >= (2, 17)


_FAULTS = """
import resource
import kft, keras, numpy as np
# A training step whose activations are XLA temporaries of ~100 MiB.
model = keras.Sequential([
    keras.Input((64, 64, 3)),
    keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
    keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
    keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
    from_logits=True))
x = np.random.default_rng(0).normal(size=(64, 64, 64, 3)).astype("float32")
y = np.arange(64) % 2
model.train_on_batch(x, y)
faults = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model.train_on_batch(x, y)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The median: on a loaded machine the odd step faults all its pages in even
# with reuse on (seen with and without kft's flags), a step without reuse
# always does.
# The kernel may back only part of the memory with huge pages (fragmented
# or busy machine): say how much it did.
huge_kb = sum(int(line.split()[1]) for line in open("/proc/self/smaps")
              if line.startswith("AnonHugePages:"))
print(kft._config._reuse_state["applied"], sorted(faults)[3], huge_kb)
"""


@pytest.mark.skipif(_compat.mallopt_function() is None, reason="no glibc")
def test_steps_reuse_their_memory_instead_of_faulting_it_in():
    # A process boundary is the point: mallopt applies to the whole process
    # and only before JAX starts its threads.
    def start(**env):
        return subprocess.Popen(
            [sys.executable, "-c", _FAULTS], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env={**{k: v for k, v in os.environ.items()
                    if k != "GLIBC_TUNABLES"},
                 "JAX_PLATFORMS": "cpu", "KFT_COMPILATION_CACHE": "0", **env})

    def faults(process):
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
        applied, count, huge_kb = stdout.split()[-3:]
        return applied == "True", int(count), int(huge_kb)

    # The three processes at once (the counts are each process' own; the
    # median step is robust to a loaded machine): ~7 s each alone.
    huge = _compat.glibc_maps_huge_pages(
        {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    processes = [start(KFT_MALLOC_REUSE="0"), start()] + (
        [start(GLIBC_TUNABLES="glibc.malloc.hugetlb=1")] if huge else [])
    try:
        pages = 64 * 2**20 // 4096
        applied, unreused, _ = faults(processes[0])
        assert not applied and unreused >= pages  # the buffers, again
        applied, count, _ = faults(processes[1])
        assert applied and count <= pages // 20
        if huge:
            # Huge pages: kft leaves reuse off, since the buffers, mapped
            # afresh each step, fault 2 MiB at a time. How much of them the
            # kernel backs with huge pages is its call (350-870 faults a
            # step seen, against 32 if all were huge), so the bound is
            # against 4 KiB faulting.
            applied, count, huge_kb = faults(processes[2])
            assert not applied
            if huge_kb:
                assert count <= unreused // 4, (count, unreused, huge_kb)
    finally:
        for process in processes:
            process.kill()
