"""Every use of Keras' and JAX's private API in kft, in one place.

kft changes what trains on a compiled Keras model, even inside a running
`fit`, which public Keras API does not allow; for that and a few speed-ups
it relies on internals of the Keras versions in `SUPPORTED_KERAS`. Each
such access is a function or a small base class here, so a Keras upgrade
is checked by reading this file (and `tests/test_compat.py`, which fails
if another module touches a private Keras attribute). Importing kft with
a Keras outside the supported range raises instead of silently bringing
back the bugs kft exists to prevent.

Held here: the JAX trainer's running state (`_jax_state`,
`_jax_state_synced`, `jax_state_sync`, `_get_jax_state`,
`_compiled_trainable_state`); the
optimizer's variable lists and hooks (`_variables`, `_trainable_variables`,
`_trainable_variables_indices`, `_var_key`, `_tracker`, `_iterations`,
`_learning_rate`, `_get_variable_index`, `_use_weight_decay`,
`_backend_update_step`, `_apply_weight_decay`, Nadam's `_u_product`,
Muon's `_should_use_adamw`);
layer traversal and flags (`_flatten_layers`, `_trainable_variables`,
`_layers`, `_trainable`);
metric direction (`_direction`); the compile config (`_compile_config`);
the preprocessing layers' hooks (`_transform_images`, `_get_zoom_matrix`,
`_get_fill_value`, their transformation keys); `keras.src` imports
(`io_utils`, the JAX random backend, `StatelessScope` detection,
`DotNotTrackScope`,
`DataAdapter`, the grain adapter, the base image preprocessing layer,
the code of `Trainer._symbolic_build`);
JAX's `xla_bridge._backends`, its compile-event names and its cache of
compiled single operations (`dispatch.xla_primitive_callable`).
"""

import contextlib
import functools
import importlib.metadata
import os
import sys

# [lowest, first unsupported) Keras version, as (major, minor).
SUPPORTED_KERAS = ((3, 15), (3, 16))


def check_keras_version(version=None):
    """Raises `ImportError` for a Keras outside `SUPPORTED_KERAS`.

    Reads the installed version without importing Keras.

    >>> check_keras_version("3.15.1")
    >>> check_keras_version("3.16.0")
    Traceback (most recent call last):
    ...
    ImportError: kft supports Keras >=3.15,<3.16 (it relies on Keras internals that change between releases); found Keras 3.16.0. Install a supported version: pip install "keras>=3.15,<3.16"
    """
    if version is None:
        version = importlib.metadata.version("keras")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    low, high = SUPPORTED_KERAS
    if not low <= parts < high:
        spec = f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"
        raise ImportError(
            f"kft supports Keras {spec} (it relies on Keras internals that "
            f"change between releases); found Keras {version}. Install a "
            f'supported version: pip install "keras{spec}"')


# -- the JAX trainer's state during `fit` -----------------------------------


def sync_fit_state(model):
    """Writes the running `fit` step's state back to the variables.

    Inside `fit` on JAX the newest values live in `model._jax_state`, in
    the order of the trainable set the step was compiled for.
    """
    if getattr(model, "_jax_state", None) is not None:
        model.jax_state_sync()


def callback_model(callback):
    """`callback.model` without the state sync Keras' property runs on JAX
    at every read: a read per batch copied the whole model state (weights
    and optimizer slots) back from the running step once per step, not
    once per epoch (~5 ms, 10-30% of a short step). For reading what
    needs no current weights (the train function, the name)."""
    return callback._model


def save_weights_only(model, path):
    """`model.save_weights(path)` without the optimizer's variables, which
    Keras writes with the weights (with Adam the file is 3x the weights)
    and a file of weights alone does not need (`load_weights` of it into a
    compiled model warns that the optimizer was skipped)."""
    from keras.src.saving import saving_lib

    optimizer = getattr(model, "optimizer", None)
    skipped = None if optimizer is None else [optimizer]
    saving_lib.save_weights_only(model, path, objects_to_skip=skipped)


def fit_state_pending(model):
    """Whether a running `fit` holds step state not yet written back."""
    return (getattr(model, "_jax_state", None) is not None
            and not getattr(model, "_jax_state_synced", True))


def sync_fit_state_as_compiled(model):
    """Writes a running `fit` step's state back after flags changed by hand.

    The step's state lists follow the trainable set the step was compiled
    for, which `_compiled_trainable_state` records (at `compile`, and at
    every kft refresh). The flags are put back as recorded for the write,
    then set again as they are now. Returns `False` if nothing was recorded.
    """
    if not fit_state_pending(model):
        return True
    recorded = getattr(model, "_compiled_trainable_state", None)
    if recorded is None:
        return False
    current = {layer: layer.trainable for layer in model._flatten_layers()}
    set_trainable_flags(recorded.items())
    model.jax_state_sync()
    set_trainable_flags(current.items())
    return True


def set_trainable_flags(flags):
    """Gives each layer of `flags` (`(layer, trainable)` pairs) its own
    flag, and its own variables theirs, without the `trainable` setter's
    reset of its sublayers.

    Setting flags in flattened order (parents first) undid them where a
    model also tracks sub-models of layers listed before them (a
    `kft.DomainAdaptationModel`'s features and head): their setters set
    the frozen backbone trainable again.
    """
    for layer, flag in flags:
        flag = bool(flag)
        layer._trainable = flag
        for variable in layer._trainable_variables:
            variable.trainable = flag


def reread_fit_state(model):
    """Makes a running `fit` gather the state lists anew before its next
    step (they follow the trainable set)."""
    model._jax_state_synced = True


def record_trainable_state(model):
    """Records the current flags as those `compile` saw, so Keras does not
    warn "please recompile" for a change kft has already applied."""
    model._compiled_trainable_state = {
        layer: layer.trainable for layer in model._flatten_layers()}


def compile_config(model):
    """The arguments `model.compile` was called with, as a dict."""
    return model._compile_config.config


def clone_uncompiled(model, clone_function):
    """`keras.models.clone_model(model, clone_function=...)`, not compiled.

    Keras compiles the clone of a compiled model from its serialized
    compile config, which fails for a loss or metric whose function or
    class is not registered with Keras."""
    import keras

    compiled = model.compiled
    model.compiled = False
    try:
        return keras.models.clone_model(model, clone_function=clone_function)
    finally:
        model.compiled = compiled


# -- layers and metrics -------------------------------------------------------


def flatten_layers(layer, include_self=True, recursive=True):
    """`layer` and the layers inside it, depth first."""
    return list(layer._flatten_layers(include_self=include_self,
                                      recursive=recursive))


@contextlib.contextmanager
def graph_nodes_kept(model):
    """Drops, when the block ends, the graph nodes that models built in it
    from `model`'s own layers added to those layers: each kept the whole
    temporary model alive (a statistics copy per `adapt_batchnorm` call:
    the user's model grew with every call)."""
    counts = [(layer, len(layer._inbound_nodes), len(layer._outbound_nodes))
              for layer in flatten_layers(model)]
    try:
        yield
    finally:
        for layer, inbound, outbound in counts:
            del layer._inbound_nodes[inbound:]
            del layer._outbound_nodes[outbound:]


def call_inputs(layer):
    """The input tensors of each call of `layer` in the functional graphs
    it is part of, one list per call."""
    return [list(node.input_tensors) for node in layer._inbound_nodes]


def output_operation(model):
    """The layer or Keras op (`keras.ops.softmax` called in a functional
    graph is an op, not a layer) that makes `model`'s first output, or
    `None` for a model without a graph."""
    try:
        return model.outputs[0]._keras_history.operation
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def tensor_source(tensor):
    """`(operation, its input tensors)` that made `tensor` in a functional
    graph, or `(None, [])`."""
    try:
        history = tensor._keras_history
        node = history.operation._inbound_nodes[history.node_index]
        return history.operation, list(node.input_tensors)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None, []


def is_graph_model(model):
    """Whether `model` is functional or Sequential (kft's own functional
    subclasses included), not a subclassed model without a graph."""
    import keras
    from keras.src.models.functional import Functional

    return isinstance(model, (Functional, keras.Sequential))


def functional_like_constructor(cls):
    """Whether `cls(inputs, outputs, name=...)` builds a model of `cls`
    (what `keras.models.clone_model` checks before calling it)."""
    from keras.src.models.functional import functional_like_constructor

    return functional_like_constructor(cls)


def is_softmax_op(operation):
    """Whether `operation` is Keras' functional softmax op."""
    return (type(operation).__name__ == "Softmax"
            and type(operation).__module__.startswith("keras.src.ops"))


def is_leaf_with_weights(layer):
    """Whether `layer` creates trainable weights itself (not a container)."""
    return bool(layer._trainable_variables) and not layer._layers


def metric_name(metric):
    """The name `compile` logs a metric object or function under (Keras'
    `get_object_name`: a function's name in snake case)."""
    from keras.src.utils import naming

    return naming.get_object_name(metric)


def metric_direction(metric):
    """`"up"`, `"down"` or `None`: which way a Keras metric improves."""
    return getattr(metric, "_direction", None)


def print_msg(message):
    """Prints like Keras' progress output (also to absl logging when
    Keras' interactive logging is off)."""
    from keras.src.utils import io_utils

    io_utils.print_msg(message)


def in_stateless_scope():
    """Whether Keras is tracing a stateless call (`stateless_call`, a
    compiled train step), where layers may use state without assigning it."""
    from keras.src.backend.common import stateless_scope

    return stateless_scope.in_stateless_scope()


def is_traced(*tensors):
    """Whether JAX is tracing: under `jit`, or with traced inputs (`grad`)."""
    import jax
    from keras import ops

    # Under `jit` every new array is a tracer, even without traced inputs.
    probe = ops.zeros(())
    return any(isinstance(t, jax.core.Tracer) for t in (probe, *tensors))


def base_image_preprocessing_layer():
    """The base class of Keras' random image preprocessing layers."""
    from keras.src.layers.preprocessing.image_preprocessing import (
        base_image_preprocessing_layer as base)

    return base.BaseImagePreprocessingLayer


# -- preprocessing layers' hooks ----------------------------------------------
#
# kft's fast zoom, rotation, blur and erasing layers subclass these bases
# and implement `use_fast(images)` plus the computation; the bases hold the
# override of Keras' private hook and the transformation's keys.


@functools.cache
def zoom_layer_base():
    import keras

    class ZoomBase(keras.layers.RandomZoom):
        def _transform_images(self, images, transformation, interpolation):
            if transformation is None or not self.use_fast(images):
                return super()._transform_images(images, transformation,
                                                 interpolation)
            zooms = self.backend.cast(self.backend.numpy.concatenate(
                [transformation["width_zoom"], transformation["height_zoom"]],
                axis=1), "float32")
            matrix = self._get_zoom_matrix(zooms, images.shape[1],
                                           images.shape[2])
            return self.resample(images, matrix, interpolation)

    return ZoomBase


@functools.cache
def rotation_layer_base():
    import keras

    class RotationBase(keras.layers.RandomRotation):
        def _transform_images(self, images, transformation, interpolation):
            if not self.use_fast(images):
                return super()._transform_images(images, transformation,
                                                 interpolation)
            return self.resample(images, transformation["rotation_matrix"],
                                 interpolation)

    return RotationBase


@functools.cache
def blur_layer_base():
    import keras

    class BlurBase(keras.layers.RandomGaussianBlur):
        def transform_images(self, images, transformation=None,
                             training=True):
            if not (training and transformation is not None
                    and self.use_fast(images)):
                return super().transform_images(images, transformation,
                                                training)
            return self.blur(images, transformation["blur_factor"],
                             transformation["should_apply_blur"])

    return BlurBase


@functools.cache
def erasing_layer_base():
    import keras

    class ErasingBase(keras.layers.RandomErasing):
        def _get_fill_value(self, images, images_shape, seed):
            colour = self.fill_colour()
            if colour is None:
                return super()._get_fill_value(images, images_shape, seed)
            return colour

        def fill_colour(self):
            return None

    return ErasingBase


@functools.cache
def equalization_layer_base():
    import keras

    class EqualizationBase(keras.layers.Equalization):
        def _custom_histogram_fixed_width(self, values, value_range, nbins):
            if not self.use_fast(values):
                return super()._custom_histogram_fixed_width(
                    values, value_range, nbins)
            # Keras' binning, then one count instead of its loop of one
            # reduction per bin.
            ops = self.backend
            values = ops.cast(values, "float32")
            low, high = (ops.cast(v, "float32") for v in value_range)
            scaled = (values - low) * (nbins - 1) / (high - low)
            indices = ops.numpy.clip(ops.cast(scaled, "int32"), 0, nbins - 1)
            return self.count(ops.numpy.reshape(indices, [-1]), nbins)

    return EqualizationBase


@functools.cache
def rand_augment_layer_base():
    import keras

    class RandAugmentBase(keras.layers.RandAugment):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stock = self.equalization
            self._tracker.untrack(stock)
            self.equalization = self.equalization_class().from_config(
                stock.get_config())

        def transform_images(self, images, transformation, training=True):
            if not (training and self.use_fast(images)):
                return super().transform_images(images, transformation,
                                                training)
            ops = self.backend
            # The branches in Keras' order: `layer_idxes` index them.
            branches = [self._branch(getattr(self, name), value)
                        for name, value in
                        transformation["transforms"].items()]
            images = ops.cast(images, self.compute_dtype)
            for i in range(self.num_ops):
                images = self.switch(transformation["layer_idxes"][i],
                                     branches, images)
            return images

        def _branch(self, layer, transformation):
            def apply(images):
                return self.backend.cast(
                    layer.transform_images(images, transformation),
                    self.compute_dtype)

            return apply

        def equalization_class(self):
            return keras.layers.Equalization

    return RandAugmentBase


# -- data ---------------------------------------------------------------------


def data_adapter_class():
    """Keras' `DataAdapter`: `fit` uses an instance given as `x` as it is
    (its length known, no warnings about `shuffle`), or `object` on a Keras
    without it."""
    try:
        from keras.src.trainers.data_adapters.data_adapter import DataAdapter
    except ImportError:  # pragma: no cover: a Keras that moved it.
        return object
    return DataAdapter


@functools.cache
def _symbolic_build_code():
    from keras.src.trainers.trainer import Trainer

    return getattr(Trainer._symbolic_build, "__code__", None)


def read_by_symbolic_build(depth=12):
    """Whether Keras' `Trainer._symbolic_build` is up the call stack
    (within `depth` frames): `fit` and `evaluate` read one batch there,
    for its shapes only, while the model's compiled loss or metrics are
    unbuilt, i.e. on a model's first `fit`/`evaluate` but not after one;
    a dataset that counts that read as a pass would shuffle the same
    run's epochs differently depending on what ran before."""
    code = _symbolic_build_code()
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def grain_adapter(dataset):
    """Keras' adapter for a grain dataset (for tf.data / torch loaders)."""
    from keras.src.trainers.data_adapters import grain_dataset_adapter

    return grain_dataset_adapter.GrainDatasetAdapter(dataset)


# -- optimizers ---------------------------------------------------------------


def tracked_variables(optimizer):
    """The variables a built optimizer updates, in its order."""
    return optimizer._trainable_variables


def own_variables(optimizer):
    """The optimizer's own variable list (slots, counters), mutable."""
    return optimizer._variables


def iterations_variable(optimizer):
    return optimizer._iterations


def raw_learning_rate(optimizer):
    """The learning rate as given: a `keras.Variable` or a schedule."""
    return optimizer._learning_rate


def variable_index(optimizer, variable):
    return optimizer._get_variable_index(variable)


def uses_weight_decay(optimizer, variable):
    return optimizer._use_weight_decay(variable)


def nadam_u_product(optimizer):
    return optimizer._u_product


def updates_variables_independently(optimizer):
    """Whether the optimizer updates each variable with `update_step` alone
    (no shared per-step state in an overridden `_backend_update_step`)."""
    import keras

    base = keras.optimizers.Optimizer._backend_update_step
    return type(optimizer)._backend_update_step is base


def set_tracked(optimizer, variables):
    """Points a built optimizer's variable list and index at `variables`."""
    # Plain assignment would make Keras' tracker list the model's variables
    # among the optimizer's own (and `fit` donate their buffers twice).
    object.__setattr__(optimizer, "_trainable_variables", list(variables))
    optimizer._trainable_variables_indices = {
        optimizer._var_key(v): i for i, v in enumerate(variables)}


@contextlib.contextmanager
def local_iterations(optimizer, steps):
    """Makes `optimizer.iterations` read `steps` (a per-variable count)."""
    saved = optimizer._iterations
    object.__setattr__(optimizer, "_iterations", steps)
    try:
        yield
    finally:
        object.__setattr__(optimizer, "_iterations", saved)


def _slot_lists(optimizer, own):
    """`{attribute: slots}` of a built Keras optimizer's per-variable
    state: every list parallel to `_trainable_variables` holding slot
    variables (Adam's `_momentums`, SGD's `momentums`, the EMA averages,
    ...; `None` where a variable has none, as Muon's `adam_velocities`),
    not the optimizer's own lists of all or of the model's variables."""
    import keras

    tracked = optimizer._trainable_variables
    excluded = {id(v) for v in tracked} | {id(v) for v in own}
    lists = {}
    for name, value in vars(optimizer).items():
        if (not isinstance(value, list) or value is tracked
                or value is optimizer._variables
                or len(value) != len(tracked) or not tracked):
            continue
        slots = [v for v in value if v is not None]
        if slots and all(isinstance(v, keras.Variable)
                         and id(v) not in excluded for v in slots):
            lists[name] = value
    return lists


def weight_decay_for(optimizer, variable):
    """The weight decay `optimizer` gives `variable`: Muon's
    `adam_weight_decay` for the variables its Adam path trains (all but
    2-D kernels), else `weight_decay`."""
    if (hasattr(optimizer, "_should_use_adamw")
            and optimizer._should_use_adamw(variable)):
        return optimizer.adam_weight_decay
    return optimizer.weight_decay


def steps_corrected(optimizer, variable):
    """Whether `optimizer`'s update of `variable` reads its step counter:
    Muon's does for the variables of its Adam path only."""
    return (not hasattr(optimizer, "_should_use_adamw")
            or optimizer._should_use_adamw(variable))


def untracked():
    """Keras' scope without automatic variable tracking, in which
    `LossScaleOptimizer.build` builds its inner optimizer."""
    from keras.src.utils.tracking import DotNotTrackScope

    return DotNotTrackScope()


def rebuild_optimizer(optimizer, variables):
    """Rebuilds a built plain Keras optimizer for `variables` in place,
    keeping the slots of the variables it already tracked.

    Slots are matched by the model variable they belong to (its position
    in Keras' per-variable lists), not by path: two `keras.applications`
    backbones in one model hold variables of the same paths."""
    import keras

    if [id(v) for v in optimizer._trainable_variables] == [
            id(v) for v in variables]:
        return
    own = [optimizer._iterations]
    if isinstance(optimizer._learning_rate, keras.Variable):
        own.append(optimizer._learning_rate)
    old_slots = {(name, id(variable)): slot.value
                 for name, slots in _slot_lists(optimizer, own).items()
                 for variable, slot in zip(optimizer._trainable_variables,
                                           slots) if slot is not None}
    # Shared state `build` creates under an auto-generated path (Nadam's
    # `_u_product`) is carried over by attribute: a rebuilt one would
    # restart from its initial value.
    old_state = {name: value.value for name, value in vars(optimizer).items()
                 if isinstance(value, keras.Variable)
                 and not any(value is o for o in own)}
    optimizer._variables[:] = own
    # Forgets the dropped variables' ids too: a new variable reusing one
    # would otherwise be taken as tracked and left out of `variables`.
    optimizer._tracker.stored_ids["variables"] = {id(v) for v in own}
    optimizer._trainable_variables_indices = {}
    optimizer.built = False
    optimizer.build(list(variables))
    optimizer.built = True
    restored = set()
    for name, slots in _slot_lists(optimizer, own).items():
        for variable, slot in zip(optimizer._trainable_variables, slots):
            old = old_slots.get((name, id(variable)))
            if (slot is not None and old is not None
                    and tuple(old.shape) == tuple(slot.shape)):
                slot.assign(old)
                restored.add(id(slot))
    if optimizer.use_ema:
        # `build` starts every average at zero, and after the first step
        # Keras only blends into it: a variable tracked from now on would
        # end `fit` (which writes the averages into the model) shrunk
        # towards zero. Its average starts at (a copy of: the step donates
        # both) its value instead.
        for variable, average in zip(
                variables, optimizer._model_variables_moving_average):
            if id(average) not in restored:
                average.assign(keras.ops.copy(variable.value))
    for name, old in old_state.items():
        new = getattr(optimizer, name, None)
        if (isinstance(new, keras.Variable)
                and tuple(old.shape) == tuple(new.shape)):
            new.assign(old)


def per_variable_optimizer_base():
    """A `keras.optimizers.Optimizer` base whose subclass updates all
    variables in `update_variables(grads, variables, learning_rate)`, weight
    decay included (Keras' own decay pass is skipped)."""
    import keras

    class PerVariableOptimizer(keras.optimizers.Optimizer):
        def _apply_weight_decay(self, variables):
            pass  # Applied per variable in `update_variables`.

        def _backend_update_step(self, grads, trainable_variables,
                                 learning_rate):
            self.update_variables(grads, trainable_variables, learning_rate)

        def update_variables(self, grads, variables, learning_rate):
            raise NotImplementedError

    return PerVariableOptimizer


# -- JAX ----------------------------------------------------------------------


def jax_backends_initialised():
    """Whether JAX has created its backends (after which XLA flags are
    read no more)."""
    import sys

    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - private module moved
        return True
    return bool(getattr(xla_bridge, "_backends", None))


def backend_compile_event():
    """The `jax.monitoring` duration event recorded after each XLA
    compile."""
    try:
        from jax._src import dispatch
    except ImportError:  # pragma: no cover - private module moved
        return "/jax/core/compile/backend_compile_duration"
    return getattr(dispatch, "BACKEND_COMPILE_EVENT",
                   "/jax/core/compile/backend_compile_duration")


def clear_eager_op_executables():
    """Drops JAX's cache of compiled single-operation programs.

    Every eager `jnp`/`lax` call on a new shape or dtype compiles one small
    XLA program, which JAX keeps for the life of the process (about 100
    MiB of them after building an EfficientNetB0). Returns whether it
    could (the cache is private to JAX).
    """
    try:
        from jax._src import dispatch
    except ImportError:  # pragma: no cover - private module moved
        return False
    clear = getattr(getattr(dispatch, "xla_primitive_callable", None),
                    "cache_clear", None)
    if clear is None:  # pragma: no cover - private API changed
        return False
    clear()
    return True


def cache_hit_event():
    """The `jax.monitoring` duration event recorded when a compiled program
    is loaded from the persistent cache (the compile time saved)."""
    return "/jax/compilation_cache/compile_time_saved_sec"


def keras_jax_random():
    """Keras' JAX random backend (`keras.src.backend.jax.random`): the
    module whose `normal` / `uniform` / `truncated_normal` every Keras
    random initializer reaches, looked up at call time, and its
    `jax_draw_seed` (an int, a `SeedGenerator` or a key -> a key)."""
    from keras.src.backend.jax import random

    return random


def _glibc_function(name):
    import ctypes

    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def malloc_trim_function():
    """glibc's `malloc_trim`, or `None` without glibc."""
    return _glibc_function("malloc_trim")


def mallopt_function():
    """glibc's `mallopt`, or `None` without glibc."""
    return _glibc_function("mallopt")


def glibc_version():
    """glibc's version as `(major, minor)`, or `None` without glibc."""
    version = _glibc_function("gnu_get_libc_version")
    if version is None:
        return None
    import ctypes

    version.restype = ctypes.c_char_p
    try:
        major, minor = version().decode().split(".")[:2]
        return int(major), int(minor)
    except ValueError:  # pragma: no cover - a glibc with an odd version
        return None


_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_maps_huge_pages(environ=None, thp_enabled_path=_THP_ENABLED):
    """Whether this process's glibc backs its large blocks with huge pages.

    True when the process started with `GLIBC_TUNABLES` holding
    `glibc.malloc.hugetlb=1` (glibc 2.35+ then asks the kernel for
    transparent huge pages on the memory it maps) and the kernel has them
    on (`always` or `madvise` in `transparent_hugepage/enabled`). Without
    glibc, before glibc 2.35, or with the tunable unset, False.
    """
    environ = os.environ if environ is None else environ
    tunables = dict(item.partition("=")[::2] for item in
                    environ.get("GLIBC_TUNABLES", "").split(":") if item)
    if tunables.get("glibc.malloc.hugetlb", "").strip() != "1":
        return False
    if (glibc_version() or (0, 0)) < (2, 35):  # no such tunable before
        return False
    try:
        with open(thp_enabled_path) as f:
            modes = f.read()
    except OSError:
        return False
    return "[always]" in modes or "[madvise]" in modes


# -- fit's starting epoch -----------------------------------------------------


def restored_initial_epoch(model):
    """The epoch a `BackupAndRestore` resumes `fit` at (set in its
    `on_train_begin`), or `None`."""
    return getattr(model, "_initial_epoch", None)


def skip_remaining_epochs(model, epochs):
    """Makes the `fit` call whose callbacks run `on_train_begin` now start
    at `epochs`, its end: it runs no epoch (a resumed call that had
    stopped early). Keras reads `model._initial_epoch` right after
    `on_train_begin`, where `BackupAndRestore` sets it."""
    model._initial_epoch = epochs


def reset_initial_epoch(model):
    """Forgets the epoch a `BackupAndRestore` restored into `model`.

    Keras keeps `model._initial_epoch` after `fit` returns, so a later
    `fit(initial_epoch=...)` on the same model (the next phase of a
    recipe) would start at the restored epoch instead.
    """
    model._initial_epoch = None


def set_backup_epoch(callback, epoch):
    """Tells a `keras.callbacks.BackupAndRestore` the epoch that runs.

    Keras' callback learns it only in `on_epoch_end`, so in a resumed run
    its saves within the first epoch (an integer `save_freq`) would record
    epoch 0, and the next resume would start over from epoch 0.
    """
    callback._current_epoch = epoch


# -- regularizers -------------------------------------------------------------


def weight_variables(layer):
    """The variables of `layer` and its sublayers created trainable (its
    weights, whether frozen now or not), without duplicates, in order."""
    seen, out = set(), []
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        for v in sub._trainable_variables:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out


# -- weight averages and the learning rate (schedules, LR finder) -------------


def moving_averages(optimizer):
    """The EMA variables of an optimizer with `use_ema`, in the order of
    its tracked variables (`None` before it is built)."""
    return getattr(optimizer, "_model_variables_moving_average", None)


def set_moving_averages(optimizer, averages):
    """Points a `use_ema` optimizer at `averages` (already tracked by it)."""
    # Plain assignment would track the list a second time.
    object.__setattr__(optimizer, "_model_variables_moving_average",
                       list(averages))


def swap_learning_rate(optimizer, rate):
    """Sets the learning rate object (a schedule or a `keras.Variable`) as
    it is, returning the previous one; unlike the public setter it leaves
    the optimizer's variable list alone, so the old object can be put back
    with all state intact."""
    previous = optimizer._learning_rate
    object.__setattr__(optimizer, "_learning_rate", rate)
    return previous


# -- the JAX trainer's compiled train function, called directly --------------

_STATE_NAMES = ("trainable_variables", "non_trainable_variables",
                "optimizer_variables", "metrics_variables")


def train_state(model):
    """The state tuple `model.train_function(state, iterator)` takes, built
    from the variables as `fit` builds it (the call donates its buffers:
    write the returned state back with `set_train_state`)."""
    return model._get_jax_state(**{name: True for name in _STATE_NAMES})


def set_train_state(model, state):
    """Writes a state tuple returned by `model.train_function` back to the
    model's variables, as `fit` does when it ends."""
    model._jax_state = dict(zip(_STATE_NAMES, state))
    model._jax_state_synced = False
    model.jax_state_sync()
    model._jax_state = None


# A step's state: the variable groups each kind of step takes, by length.
_STEP_STATE = {4: _STATE_NAMES, 3: (
    "trainable_variables", "non_trainable_variables", "metrics_variables"),
    2: ("trainable_variables", "non_trainable_variables")}


def _refill(model, state):
    """Puts `state`'s arrays back into those of `model`'s variables left
    without a value; `False` when some were gone (donated)."""
    import jax

    complete = True
    for name, values in zip(_STEP_STATE.get(len(state), ()), state):
        variables = (model.optimizer.variables
                     if name == "optimizer_variables" else getattr(model, name))
        if len(variables) != len(values):
            continue
        for variable, value in zip(variables, values):
            if variable._value is not None and not (
                    isinstance(variable._value, jax.Array)
                    and variable._value.is_deleted()):
                continue
            if isinstance(value, jax.Array) and not value.is_deleted():
                variable._value = value
            else:
                complete = False
    return complete


def _pythonify_logs(logs):
    """Keras' `pythonify_logs` (3.15), with `except Exception` for its
    bare `except`: waiting on a step's result is where a Ctrl-C lands,
    and the bare one swallowed the `KeyboardInterrupt` (training went on;
    `kft train` never said "continue with --resume")."""
    from keras.src import backend

    result = {}
    for key, value in sorted((logs or {}).items()):
        if isinstance(value, dict):
            result.update(_pythonify_logs(value))
            continue
        try:
            if backend.is_tensor(value):
                value = backend.convert_to_numpy(value)
            value = float(value)
        except Exception:  # noqa: BLE001 - Keras keeps such values as is
            pass
        result[key] = value
    return result


def keep_interrupts():
    """Makes Keras' log conversion let Ctrl-C through (`_pythonify_logs`):
    in its module, where callback lists call it, and in the JAX trainer,
    which imported it by name."""
    from keras.src.backend.jax import trainer
    from keras.src.utils import python_utils

    python_utils.pythonify_logs = _pythonify_logs
    trainer.pythonify_logs = _pythonify_logs


class KeepsStateOnError:
    """A `keras.Model` mixin: a train, test or predict step that raises
    leaves the model's weights as they were before it.

    Keras' JAX trainer empties the variables before a loop's first step
    (they would hold a second copy) and refills them only from a step that
    returned, and each compiled step donates the state it is given: a step
    that raised (a bad batch found while tracing, also the second step of
    a `steps_per_execution` call) left every variable without a value or
    holding a deleted array, the model and the models sharing its layers
    unusable (`TypeError: 'NoneType' object is not callable`). The state
    the failing step was given is put back. A step that fails while it
    runs, after JAX took its buffers, cannot be undone: the error says so.
    """

    def _make_function(self, step_function, concatenate_outputs=False):
        given = []  # the state the running step was given

        def step(state, data):
            given[:] = [state]
            return step_function(state, data)

        function = super()._make_function(step, concatenate_outputs)

        def run(state, iterator):
            try:
                return function(state, iterator)
            except BaseException as error:
                complete = _refill(self, given[0] if given else state)
                # The trainer's record of the last state returned holds
                # arrays this call donated: it must not be written back.
                self._jax_state, self._jax_state_synced = None, True
                if not complete:
                    error.add_note(
                        "kft: the step failed after JAX had taken its state "
                        "(donated buffers): the model's weights are lost. "
                        "Load them again (a checkpoint, the best weights).")
                raise
            finally:
                given.clear()  # no reference kept between calls

        return run


# -- attaching state to a built model (the bound penalty's) -------------------


def untrack_variables(layer, variables):
    """Removes `variables` from `layer`'s weights (Keras'
    `Layer._untrack_variable`, which has no public form)."""
    for variable in variables:
        layer._untrack_variable(variable)


def set_tracked_attribute(layer, name, value):
    """`setattr(layer, name, value)`, tracked (a sublayer's variables join
    the layer's), also on a built layer: Keras locks a built subclassed
    layer's tracker, and unlocking it is how Keras itself adds state late
    (`Layer._untrack_variable`)."""
    tracker = layer._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        setattr(layer, name, value)
    finally:
        if locked:
            tracker.lock()
