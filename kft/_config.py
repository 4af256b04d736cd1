"""What `import kft` sets up, each never over a setting of the user's.

- **Backend**: Keras on JAX. `KERAS_BACKEND` unset -> set to `jax` (a
  `keras.json` naming another backend is overridden with one warning);
  another value, or Keras already imported with another backend, raises.
  Set `KERAS_BACKEND=jax` to make the choice explicit.
- **XLA CPU flags** (`apply_cpu_xla_flags`): on CPU-only JAX, YNNPACK's
  single-convolution fusion off, optimization barriers kept and XLA's
  older fusion emitters (faster training steps, less compile memory,
  measured in `benchmarks/RESULTS.md`); `KFT_XLA_CPU_FLAGS=mlir_emitters`
  keeps XLA's newer emitters, `=1` adds the algebraic-simplifier flag,
  `=0` sets none; a flag already in `XLA_FLAGS` wins; never applied once
  JAX has started or with a GPU/TPU plugin.
- **Compilation cache** (`enable_compilation_cache`): JAX's persistent
  cache in `~/.cache/kft/jax`, so a rerun loads compiled steps from disk.
  `KFT_COMPILATION_CACHE=0` turns it off, `KFT_COMPILATION_CACHE=DIR`
  moves it (`1`: the default directory); a directory or minimum compile time set for JAX before
  `import kft` is kept.
- **Step memory kept for reuse** (`reuse_freed_memory`): on CPU-only JAX,
  glibc keeps the memory a training step frees for the next step instead
  of unmapping it and faulting it in again (about 20% of a step).
  `KFT_MALLOC_REUSE=0` turns it off; never applied once JAX has started or
  with a GPU/TPU plugin, nor when the process started with
  `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (then a fresh step block costs
  a few hundred huge-page faults and goes back to the OS after the step:
  about as fast, far less memory).
- **Heap release after compiles** (`release_heap_after_compiles`): after
  each XLA compile (or persistent-cache load) of a second or more, JAX's
  cache of compiled single operations is dropped and glibc's free heap
  goes back to the OS (`malloc_trim`): the compiler's ~1 GiB of scratch
  memory and the ~100 MiB of eager-op programs that building a model
  compiles would otherwise stay in the process for good.
  `KFT_MALLOC_TRIM=0` turns it off.

And one thing it leaves as it was (`root_logging_kept`): Python's root
logger. grain imports orbax, whose first absl log call runs
`logging.basicConfig()` on a root logger without handlers; a user's own
`logging.basicConfig(level=...)` after `import kft` then did nothing.
"""

import contextlib
import json
import logging
import os
import sys
import warnings

from kft import _compat

logger = logging.getLogger("kft")

# Spellings of an on/off environment variable (compared lower-case).
_OFF, _ON = ("0", "false", "off", "no"), ("1", "true", "on", "yes")


@contextlib.contextmanager
def root_logging_kept():
    """Removes the handlers the block adds to a root logger that had none
    (absl's `logging.basicConfig()` on import: see the module docstring)."""
    root = logging.getLogger()
    had = list(root.handlers)
    try:
        yield
    finally:
        if not had:
            for handler in list(root.handlers):
                root.removeHandler(handler)


def _switch(name):
    """`$name` as on (unset, empty or `_ON`) / off (`_OFF`); anything
    else raises, so that a misspelt "off" does not leave the setting on."""
    value = os.environ.get(name, "").strip()
    if value.lower() in _OFF:
        return False
    if value == "" or value.lower() in _ON:
        return True
    raise ValueError(
        f"Environment variable {name} must be 0 (off) or 1 (on), or unset; "
        f"also accepted: {', '.join(_OFF[1:] + _ON[1:])}. Received: "
        f"{name}={value!r}")

# What Keras writes to keras.json on its first import when the file is
# missing: its "tensorflow" default is nobody's choice.
_KERAS_DEFAULT_CONFIG = {"floatx": "float32", "epsilon": 1e-07,
                         "backend": "tensorflow",
                         "image_data_format": "channels_last"}


def _keras_config_backend():
    """(backend the user chose in Keras' keras.json or None, its path).

    Mirrors where Keras looks: `$KERAS_HOME`, else `~/.keras` (`/tmp/.keras`
    when the home folder is not writable)."""
    if "KERAS_HOME" in os.environ:
        directory = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        if not os.access(home, os.W_OK):
            home = "/tmp"
        directory = os.path.join(home, ".keras")
    path = os.path.expanduser(os.path.join(directory, "keras.json"))
    try:
        with open(path) as file:
            config = json.load(file)
    except (OSError, ValueError):
        return None, path
    if not isinstance(config, dict) or config == _KERAS_DEFAULT_CONFIG:
        return None, path
    backend = config.get("backend")
    return (backend if isinstance(backend, str) else None), path


def ensure_jax_backend():
    """Makes Keras use JAX, or explains why it cannot.

    Sets `KERAS_BACKEND=jax` when it is unset, and says so (one warning on
    the `"kft"` logger) when Keras' `keras.json` names another backend,
    which this overrides (not for the file Keras writes itself on its
    first import, whose "tensorflow" is only Keras' default). Keras reads
    the variable once, on its first import, so a Keras already imported
    with another backend cannot be switched and we say so instead of
    running on the wrong engine.
    """
    requested = os.environ.get("KERAS_BACKEND")
    if requested is None:
        os.environ["KERAS_BACKEND"] = requested = "jax"
        configured, path = _keras_config_backend()
        if configured not in (None, "jax") and "keras" not in sys.modules:
            logger.warning(
                "kft: %s selects the %r backend; kft runs Keras on JAX, so "
                "it set KERAS_BACKEND=jax for this process. Set "
                "KERAS_BACKEND=jax yourself to silence this.", path,
                configured)
    if requested != "jax":
        raise ImportError(
            "kft runs on the JAX backend of Keras, but KERAS_BACKEND="
            f"{requested!r}. Unset it or set KERAS_BACKEND=jax before "
            "importing kft."
        )
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != "jax":
            raise ImportError(
                "Keras was imported with the "
                f"{keras.backend.backend()!r} backend before kft. Import kft "
                "first, or set KERAS_BACKEND=jax before importing keras."
            )


# JAX's own default; any other value was chosen by the user.
_JAX_MIN_COMPILE_TIME_DEFAULT = 1.0


def _set_by_user(jax, name, jax_default):
    """Whether the user configured a JAX option, by environment variable
    (JAX reads `JAX_<NAME>` on import) or by `jax.config.update`."""
    return (name.upper() in os.environ
            or getattr(jax.config, name) != jax_default)


def enable_compilation_cache(directory=None):
    """Turns on JAX's persistent compilation cache.

    kft compiles one train step per trainable set (per stage of gradual
    unfreezing); with the cache a second run of the same recipe loads those
    programs from disk instead of compiling them again. kft calls this on
    import unless `KFT_COMPILATION_CACHE=0`, and never over a cache
    directory already configured for JAX (`JAX_COMPILATION_CACHE_DIR`, or
    `jax.config.update("jax_compilation_cache_dir", ...)` before
    `import kft`), which is then kept as it is. It also caches programs
    that took over 0.5 s to compile (JAX: 1 s), unless
    `jax_persistent_cache_min_compile_time_secs` was set by the user.
    Called on import, it logs the directory it chose (INFO, `"kft"`
    logger).

    `KFT_COMPILATION_CACHE`: unset, empty or `1`, the default directory;
    `0`, off (`false`, `off`, `no` too; `true`, `on`, `yes` mean `1`); any
    other value names the directory.

    Args:
        directory: Cache location (`~` expanded, made absolute). Defaults
            to `$KFT_COMPILATION_CACHE` if it names a directory, else
            `$XDG_CACHE_HOME/kft/jax` (by default `~/.cache/kft/jax`).

    Returns:
        The directory used, or `None` when kft left the cache setting alone.

    The cache holds compiled machine code that JAX runs: a folder other
    users can write to (a shared `/tmp/cache`) lets them plant code.

    Example:
    >>> import kft, os, tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "jax")  # yours alone
    >>> kft.enable_compilation_cache(folder) == folder
    True
    """
    import jax

    setting = os.environ.get("KFT_COMPILATION_CACHE", "").strip()
    announce = directory is None
    if directory is None:
        if setting.lower() in _OFF or _set_by_user(
                jax, "jax_compilation_cache_dir", None):
            return None
        directory = setting if setting.lower() not in _ON else ""
        # An empty or relative XDG_CACHE_HOME is to be ignored (the XDG
        # base directory spec): it put the cache in the working directory,
        # an image folder when a script ran there.
        xdg = os.path.expanduser(os.environ.get("XDG_CACHE_HOME", ""))
        directory = directory or os.path.join(
            xdg if os.path.isabs(xdg)
            else os.path.join(os.path.expanduser("~"), ".cache"),
            "kft", "jax")
    # "~/..." from a quoted or .env value, which no shell expanded; and
    # absolute, so that a later `os.chdir` does not move the cache.
    directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    jax.config.update("jax_compilation_cache_dir", directory)
    if not _set_by_user(jax, "jax_persistent_cache_min_compile_time_secs",
                        _JAX_MIN_COMPILE_TIME_DEFAULT):
        # Cache every program that took over half a second to compile.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if announce:
        logger.info("kft: JAX compilation cache in %s "
                    "(KFT_COMPILATION_CACHE=0 turns it off)", directory)
    return directory


# XLA CPU flags (measured in benchmarks/RESULTS.md). YNNPACK's fusion of
# single convolutions is slow on CPU, for weight gradients most: off is the
# default. So is the pass that turns `lax.optimization_barrier`s into
# scheduling constraints before fusion: kept, a barrier stops XLA from
# fusing (and so recomputing) a shifted-slice convolution into each of its
# consumers (`kft.ops.conv_grads`). XLA's older LLVM fusion emitters
# instead of its MLIR ones: with those barriers, full steps of EfficientNet
# and MobileNet run 1.1-2x faster and compile with 0.4-0.7 GiB less memory
# (ConvNeXt-tiny's compile took 1.2-1.6x longer with them, measured before
# `kft.ops.conv_grads` looped over kernel positions; 16-30 s now).
# Disabling the algebraic simplifier (which turns 3x3 convolutions on maps
# smaller than the kernel into slow loops; `kft.cpu_convs` rewrites those)
# is opt-in only: XLA can segfault compiling VGG16 with it.
YNN_CONV_OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
BARRIERS_KEPT = "--xla_disable_hlo_passes=cse_barrier_expander"
LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
ALGSIMP_OFF = "--xla_disable_hlo_passes=algsimp,cse_barrier_expander"
_DEFAULT_CPU_FLAGS = (YNN_CONV_OFF, BARRIERS_KEPT, LEGACY_EMITTERS)
CPU_XLA_FLAG_SETS = {
    "default": _DEFAULT_CPU_FLAGS,
    # The default's name while it was opt-in; kept for scripts that set it.
    "legacy_emitters": _DEFAULT_CPU_FLAGS,
    "mlir_emitters": (YNN_CONV_OFF, BARRIERS_KEPT),
    "1": (ALGSIMP_OFF, YNN_CONV_OFF, LEGACY_EMITTERS),
    "0": (),
}
# The jaxlib releases whose XLA knows each flag (first, last; checked on
# 18 releases from 0.4.30 to 0.12.0, listed in DEVELOPERS.md): XLA aborts
# the whole process on a flag it does not know ("Unknown flag in
# XLA_FLAGS"), and these come and go. A release after the last one
# checked gets only the flags every release knows
# (`xla_disable_hlo_passes`).
FLAG_RELEASES = {
    YNN_CONV_OFF: ((0, 8, 2), (0, 12, 0)),
    LEGACY_EMITTERS: ((0, 5, 3), (0, 11, 0)),
}
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin",
                        "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu",
                        "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")


def apply_cpu_xla_flags():
    """Adds kft's XLA CPU flags to `XLA_FLAGS`; called on `import kft`.

    `KFT_XLA_CPU_FLAGS` (read at that import) picks the set:

    - unset or `"default"`: `--xla_cpu_experimental_ynn_fusion_type=
      -individual_convolution`, i.e. XLA's own convolution code instead of
      YNNPACK's: measured faster for 22 of 24 backbone x size x strategy
      training steps on CPU (up to 1.8x), same losses, no crash;
      `--xla_disable_hlo_passes=cse_barrier_expander`, which keeps
      `lax.optimization_barrier` as an op until code generation, so that
      the barriers of `kft.ops.conv_grads` stop XLA from fusing a
      shifted-slice convolution into (and recomputing it in) each of its
      consumers (ConvNeXt-tiny's 224 px full step about 1.2x faster); and
      `--xla_cpu_use_fusion_emitters=false`, XLA's older LLVM fusion
      emitters instead of its MLIR ones: EfficientNet / MobileNet full
      steps 1.1-2x faster with peak RSS 0.4-0.7 GiB lower (the compile's),
      same losses; ConvNeXt-tiny compiled 1.2-1.6x longer, measured
      before kft looped over depthwise kernel positions
      (benchmarks/RESULTS.md). `"legacy_emitters"` is the same set.
    - `"mlir_emitters"`: the default without the last flag (XLA's MLIR
      fusion emitters; the default before 2026-12-03).
    - `"1"`: also disables `algsimp` (faster for some models, but XLA
      segfaulted compiling VGG16 at 32x32 with it).
    - `"0"`: no flags.

    Flags are added only when JAX has not initialised a backend yet (XLA
    reads `XLA_FLAGS` once: import kft before using JAX), when JAX will run
    on CPU only (`JAX_PLATFORMS=cpu`, or no GPU/TPU plugin installed: GPU
    runs never change), and never over the user's own setting of the same
    flag in `XLA_FLAGS`. XLA aborts the process on a flag it does not
    know, so a flag is added only for the jaxlib releases whose XLA has it
    (`FLAG_RELEASES`: YNNPACK's from 0.8.2, the older emitters' 0.5.3 to
    0.11.0; a release newer than 0.12 gets neither until kft has checked
    it); the others are left out, logged at DEBUG level.

    Returns:
        The flags added, as a tuple (empty when none were).

    Raises:
        ValueError: `KFT_XLA_CPU_FLAGS` is not one of the values above.

    Example:
    >>> import kft
    >>> kft.apply_cpu_xla_flags()  # applied on import already: nothing new
    ()
    """
    # Empty as unset, as kft's on/off switches read it.
    setting = os.environ.get("KFT_XLA_CPU_FLAGS", "").strip() or "default"
    if setting not in CPU_XLA_FLAG_SETS:
        raise ValueError(
            "Environment variable KFT_XLA_CPU_FLAGS must be one of "
            f"{tuple(CPU_XLA_FLAG_SETS)} (or unset). Received: "
            f"KFT_XLA_CPU_FLAGS={setting!r}")
    flags = CPU_XLA_FLAG_SETS[setting]
    if not flags or not _cpu_only() or _compat.jax_backends_initialised():
        return ()
    release = jaxlib_release()
    shown = ".".join(map(str, release or ())) or "(version unknown)"
    current = os.environ.get("XLA_FLAGS", "")
    theirs = [flag for flag in FLAG_RELEASES if flag.split("=")[0] in current
              and not _xla_knows(flag, release)]
    if theirs:
        # The user's own: XLA aborts the process at the first compile.
        warnings.warn(
            f"XLA_FLAGS holds {', '.join(f.split('=')[0] for f in theirs)}, "
            f"which the XLA of jaxlib {shown} does not know: XLA will abort "
            "the process at the first compile (\"Unknown flag in "
            "XLA_FLAGS\"). Remove it from XLA_FLAGS.", UserWarning,
            stacklevel=2)
    unknown = [flag for flag in flags if not _xla_knows(flag, release)]
    if unknown:
        message = (f"XLA CPU flags {' '.join(unknown)} left out: jaxlib "
                   f"{shown} does not know them (kft.apply_cpu_xla_flags)")
        if setting == "default":
            logger.debug("kft: %s", message)
        else:  # asked for by name: say it is not applied
            warnings.warn(f"KFT_XLA_CPU_FLAGS={setting}: {message}.",
                          UserWarning, stacklevel=2)
        flags = tuple(flag for flag in flags if flag not in unknown)
    added = tuple(flag for flag in flags
                  if flag.split("=")[0] not in current)
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
        _flag_state["added"] += added
    return added


_flag_state = {"added": ()}


def jaxlib_release():
    """The installed jaxlib's version as a tuple of its leading numbers
    (`(0, 10, 2)`), or `None` if not found; read without importing it."""
    import importlib.metadata
    import re

    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None
    numbers = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(n) for n in numbers.group().split(".")) if numbers \
        else None


def _xla_knows(flag, release):
    """Whether the XLA of jaxlib `release` has `flag` (by `FLAG_RELEASES`;
    a flag not listed there is known to every release)."""
    if flag not in FLAG_RELEASES:
        return True
    if release is None:
        return False
    first, last = FLAG_RELEASES[flag]
    return first <= release[:3] <= last


def environ_without_kft_flags(environ) -> dict:
    """A copy of `environ` without the XLA flags `import kft` added to
    this process' `XLA_FLAGS`: the environment of a child process, which
    decides on them itself when it imports kft (its own
    `KFT_XLA_CPU_FLAGS`; inherited, kft's flags would count as the
    user's).

    Example:
    >>> from kft import _config
    >>> _config.environ_without_kft_flags({"XLA_FLAGS": "--a=1"})
    {'XLA_FLAGS': '--a=1'}
    """
    environ = dict(environ)
    flags = environ.get("XLA_FLAGS")
    if flags is not None and _flag_state["added"]:
        kept = [flag for flag in flags.split()
                if flag not in _flag_state["added"]]
        if kept:
            environ["XLA_FLAGS"] = " ".join(kept)
        else:
            del environ["XLA_FLAGS"]
    return environ


def _cpu_only():
    import importlib.util

    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    for name in _ACCELERATOR_PLUGINS:
        try:
            if importlib.util.find_spec(name) is not None:
                return False
        except ModuleNotFoundError:
            continue
    return True


# glibc's `mallopt` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_KEPT_FREE_BYTES = 2**30
_reuse_state = {"applied": False}


def reuse_freed_memory():
    """Keeps the memory a training step frees for the next step, on CPU.

    XLA's CPU runtime allocates a step's temporary buffers at every step
    (322 MiB for EfficientNetB0's 224 px full-training step, batch 4) and
    frees them at its end. glibc serves blocks that large from its worker
    threads' arenas with a fresh `mmap` and unmaps them when freed, so each
    step page-faults all of it in again: 83,000 faults per step, 20-25% of
    that step's time (`benchmarks/RESULTS.md`). This sets glibc's
    `mallopt` so that the next step reuses the same pages: one arena
    (`M_ARENA_MAX=1`; other arenas map large blocks whatever the settings),
    no `mmap` for large blocks (`M_MMAP_MAX=0`), and up to 1 GiB of free
    memory kept at the top of the heap (`M_TRIM_THRESHOLD`).
    `release_heap_after_compiles` still hands the compiler's scratch memory
    back after each compile.

    Called on `import kft`, and applied only when JAX will run on CPU only
    (as `apply_cpu_xla_flags` decides) and has not started a backend yet
    (threads that already hold an arena keep it: import kft before using
    JAX). `KFT_MALLOC_REUSE=0` (read then) turns it off. Without glibc
    (macOS, Windows, musl) it does nothing. It is process-wide: every
    thread allocates from the one arena. The cost is memory: the pages stay
    in the process, and about one more copy of a step's buffers with them:
    XLA allocates them as one aligned block, and when it is freed under a
    longer-lived allocation (the next batch, or a small chunk glibc keeps
    in its per-thread cache right above it), glibc (2.36) cannot align the
    next step's block of the same size in that hole, which stays resident
    (224 px full steps inside `model.fit`, on / off: EfficientNetB0 158
    ms, 1480 MiB / 230 ms, 1165 MiB; ConvNeXt-tiny 925 ms, 3657 MiB / 1102
    ms, 1744 MiB; benchmarks/RESULTS.md).

    The better trade needs one setting before Python starts:
    `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python train.py`. glibc then
    maps large blocks with transparent huge pages, so a fresh step block
    costs a few hundred faults instead of tens of thousands and is
    unmapped after the step: step times about as with reuse (ConvNeXt-tiny
    at 224 px 0.9-1.2x, taking 656 MiB of fresh pages a step), peak
    memory below PyTorch's in 7 of the 8 full-training benchmark rows
    (benchmarks/RESULTS.md). This function
    sees the tunable (with the kernel's huge pages on) and leaves glibc
    alone then.

    Returns:
        `True` when applied (now or before).

    Raises:
        ValueError: `KFT_MALLOC_REUSE` is not `0`/`1` (or `false`/`true`,
            `off`/`on`, `no`/`yes`).

    Example:
    >>> import kft
    >>> kft.reuse_freed_memory() in (True, False)
    True
    """
    if _reuse_state["applied"]:
        return True
    if not _switch("KFT_MALLOC_REUSE"):
        return False
    if not _cpu_only() or _compat.jax_backends_initialised():
        return False
    if _compat.glibc_maps_huge_pages():
        return False
    mallopt = _compat.mallopt_function()
    if mallopt is None:
        return False
    # mallopt returns 1 on success.
    _reuse_state["applied"] = all(
        mallopt(param, value) == 1 for param, value in (
            (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _KEPT_FREE_BYTES)))
    return _reuse_state["applied"]


# Compiles shorter than this (Keras' eager ops while a model is built) free
# little; trimming after each would only add its cost to every op.
_TRIM_AFTER_COMPILE_S = 1.0
_trim_state = {"listener": None, "trims": 0}


def release_heap_after_compiles():
    """Returns freed heap to the OS after every long XLA compile.

    XLA's compiler allocates around a gigabyte while it compiles a training
    step (EfficientNetB0 at 64x64: the process grows from 0.75 to 2 GiB)
    and frees it when done, but glibc keeps the freed pages: the process
    stays that large for the rest of its life. This registers a
    `jax.monitoring` listener that calls glibc's `malloc_trim(0)` after
    each backend compile of at least one second, which hands the free
    pages back (measured in `benchmarks/RESULTS.md`). Before the trim it
    drops JAX's cache of compiled single operations: each eager op on a
    new shape compiles a small program that JAX keeps for good, and
    building a model runs a hundred of them (EfficientNetB0: 96 programs,
    ~100 MiB); a later eager op on such a shape compiles again (tens of
    milliseconds).
    A persistent-cache load of a program that took a second or more to
    compile counts as a compile. Called on `import kft`;
    `KFT_MALLOC_TRIM=0` (read then) turns it off. Without glibc (macOS,
    Windows, musl) it does nothing.

    Returns:
        `True` when the listener is registered (now or before).

    Raises:
        ValueError: `KFT_MALLOC_TRIM` is not `0`/`1` (or `false`/`true`,
            `off`/`on`, `no`/`yes`).

    Example:
    >>> import kft
    >>> kft.release_heap_after_compiles() in (True, False)
    True
    """
    if _trim_state["listener"] is not None:
        return True
    if not _switch("KFT_MALLOC_TRIM"):
        return False
    trim = _compat.malloc_trim_function()
    if trim is None:
        return False
    from jax import monitoring

    events = (_compat.backend_compile_event(), _compat.cache_hit_event())
    state = _trim_state

    def listener(event, duration, **kwargs):
        if event in events and duration >= _TRIM_AFTER_COMPILE_S:
            _compat.clear_eager_op_executables()
            trim(0)
            state["trims"] += 1

    monitoring.register_event_duration_secs_listener(listener)
    _trim_state["listener"] = listener
    return True
