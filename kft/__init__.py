"""kft: fine-tuning pretrained vision backbones with Keras 3 on JAX."""

import importlib
import os
import sys

from kft._backend import apply_cpu_xla_flags
from kft._backend import enable_compilation_cache
from kft._backend import ensure_jax_backend

ensure_jax_backend()
apply_cpu_xla_flags()

__version__ = "0.1.0"

# Public name -> the module defining it (a submodule maps to itself).
_EXPORTS = {
    "datasets": "kft.datasets",
    "layers": "kft.layers",
    "BackboneSpec": "kft.backbones",
    "create_backbone": "kft.backbones",
    "get_backbone": "kft.backbones",
    "list_backbones": "kft.backbones",
    "register_backbone": "kft.backbones",
    "get_blocks": "kft.blocks",
    "build_classifier": "kft.classifier",
    "ClassificationReport": "kft.evaluation",
    "classification_report": "kft.evaluation",
    "evaluate_classifier": "kft.evaluation",
    "freeze": "kft.freezing",
    "set_trainable_blocks": "kft.freezing",
    "unfreeze_top": "kft.freezing",
    "trainable_summary": "kft.summary",
    "changing_trainable": "kft.training_state",
    "refresh_training_state": "kft.training_state",
    "retarget_optimizer": "kft.training_state",
    # -- optimizers (issue 3) --
    "optimizers": "kft.optimizers",
    "BlockwiseOptimizer": "kft.optimizers",
    "GroupOptimizer": "kft.optimizers",
    "layerwise_lr": "kft.optimizers",
    # -- callbacks and fine_tune recipe (issue 4) --
    "callbacks": "kft.callbacks",
    "FineTuneResult": "kft.recipes",
    "fine_tune": "kft.recipes",
    # -- data pipelines (issue 5) --
    "augmentation": "kft.augmentation",
    "data": "kft.data",
    "image_ops": "kft.image_ops",
    # -- batch augmentation (issue 6) --
    "mixing": "kft.mixing",
    "BatchAugmentModel": "kft.models",
    # -- feature caching (issue 7) --
    "feature_cache": "kft.feature_cache",
    "FeatureCache": "kft.feature_cache",
    "cache_features": "kft.feature_cache",
    "fit_head": "kft.feature_cache",
    # -- CPU speed: convolutions XLA runs slowly on CPU (issue 7) --
    "cpu_convs": "kft.cpu_convs",
    "fast_cpu_convs": "kft.cpu_convs",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kft' has no attribute {name!r}")
    value = importlib.import_module(module)
    if module != f"kft.{name}":
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _run_as_command():
    # The `kft` console script imports this package before `kft.cli`;
    # `kft --help` must not wait seconds for Keras and JAX.
    argv = getattr(sys, "argv", None) or [""]
    name = os.path.splitext(os.path.basename(argv[0]))[0]
    return name in ("kft", "kft-script")


if not _run_as_command():
    enable_compilation_cache()
    # Importing every module registers kft's Keras classes, so
    # `keras.models.load_model` finds them right after `import kft`. The
    # `kft` command loads modules on first use instead (`__getattr__`).
    for _name in _EXPORTS:
        __getattr__(_name)
    del _name

__all__ = [
    "BackboneSpec",
    "apply_cpu_xla_flags",
    "ClassificationReport",
    "build_classifier",
    "changing_trainable",
    "classification_report",
    "create_backbone",
    "datasets",
    "enable_compilation_cache",
    "evaluate_classifier",
    "freeze",
    "get_backbone",
    "get_blocks",
    "layers",
    "list_backbones",
    "refresh_training_state",
    "register_backbone",
    "retarget_optimizer",
    "set_trainable_blocks",
    "trainable_summary",
    "unfreeze_top",
    # -- optimizers (issue 3) --
    "BlockwiseOptimizer",
    "GroupOptimizer",
    "layerwise_lr",
    "optimizers",
    # -- callbacks and fine_tune recipe (issue 4) --
    "callbacks",
    "FineTuneResult",
    "fine_tune",
    # -- data pipelines (issue 5) --
    "augmentation",
    "data",
    "image_ops",
    # -- batch augmentation (issue 6) --
    "BatchAugmentModel",
    "mixing",
    # -- feature caching (issue 7) --
    "FeatureCache",
    "cache_features",
    "feature_cache",
    "fit_head",
    # -- CPU speed: convolutions XLA runs slowly on CPU (issue 7) --
    "cpu_convs",
    "fast_cpu_convs",
]
