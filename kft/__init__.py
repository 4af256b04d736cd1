"""kft: fine-tuning pretrained vision backbones with Keras 3 on JAX.

Subpackages:

- `kft.models`: backbone registry with named blocks, `simple_cnn`, block
  splitting, `build_classifier`, the batch-augmenting model.
- `kft.training`: changing what trains on a compiled model (state,
  freezing, summary), gradual unfreezing, `fine_tune`, feature caching.
- `kft.optimizers`: per-block learning rates (`BlockwiseOptimizer`,
  `GroupOptimizer`, `layerwise_lr`).
- `kft.augmentation`: augmentation presets, fast augmentation layers,
  Mixup/CutMix.
- `kft.ops`: image resampling and blur, convolutions XLA runs slowly on
  CPU.
- `kft.data`: image folder, array and TFDS pipelines; the digits and
  digits-M data.
- `kft.evaluation`: reports, plots, strategy comparison.
- `kft.regularizers`: fine-tuning without forgetting (L2-SP, EWC, LwF).
- `kft.adaptation`: domain adaptation and the domain-shift diagnostic.
- `kft.deploy`: export (ONNX, plain Keras) and prediction from files.
- `kft.runs`: run folders (`kft train`); `kft.cli`, `kft.demo`.
- `kft.distributed`: data and model parallel over devices, several
  processes (`python -m kft.distributed`), what a step all-reduces.

Importing kft selects Keras' JAX backend and applies kft's CPU defaults
(`kft._config` documents each and the variable that turns it off).
"""

import importlib
import os
import sys

from kft._compat import check_keras_version
from kft._compat import keep_interrupts
from kft._config import apply_cpu_xla_flags
from kft._config import enable_compilation_cache
from kft._config import ensure_jax_backend
from kft._config import release_heap_after_compiles
from kft._config import reuse_freed_memory
from kft._config import root_logging_kept

check_keras_version()
ensure_jax_backend()
apply_cpu_xla_flags()
reuse_freed_memory()  # before JAX starts its threads

__version__ = "0.1.0"

# Public modules: name -> module.
_MODULES = {
    "adaptation": "kft.adaptation",
    "augmentation": "kft.augmentation",
    "callbacks": "kft.callbacks",
    "conv_grads": "kft.ops.conv_grads",
    "cpu_convs": "kft.ops.cpu_convs",
    "data": "kft.data",
    "datasets": "kft.data.digits",
    "demo": "kft.demo",
    "deploy": "kft.deploy",
    "distributed": "kft.distributed",
    "feature_cache": "kft.training.feature_cache",
    "image_ops": "kft.ops.image_ops",
    "layers": "kft.layers",
    "mixing": "kft.augmentation.mixing",
    "optimizers": "kft.optimizers",
    "regularizers": "kft.regularizers",
    "runs": "kft.runs",
}

# Public names, by topic: name -> the module defining it.
_NAMES = {
    # Backbones, blocks and classifiers.
    "BackboneSpec": "kft.models.backbones",
    "create_backbone": "kft.models.backbones",
    "get_backbone": "kft.models.backbones",
    "list_backbones": "kft.models.backbones",
    "register_backbone": "kft.models.backbones",
    "get_blocks": "kft.models.blocks",
    "build_classifier": "kft.models.classifier",
    "Classifier": "kft.models.classifier_model",
    "BatchAugmentModel": "kft.models.batch_augment",
    # What trains: freezing and changing the trainable set of a compiled
    # model.
    "freeze": "kft.training.freezing",
    "set_trainable_blocks": "kft.training.freezing",
    "unfreeze_top": "kft.training.freezing",
    "trainable_summary": "kft.training.summary",
    "changing_trainable": "kft.training.state",
    "refresh_training_state": "kft.training.state",
    "retarget_optimizer": "kft.training.state",
    # Per-block learning rates.
    "BlockwiseOptimizer": "kft.optimizers",
    "GroupOptimizer": "kft.optimizers",
    "layerwise_lr": "kft.optimizers",
    # Learning-rate schedules, the range test, weight averaging.
    "OneCycle": "kft.optimizers.schedules",
    "Warmup": "kft.optimizers.schedules",
    "lr_find": "kft.training.lr_find",
    "LRFinderResult": "kft.training.lr_find",
    # Recipes and feature caching.
    "FineTuneResult": "kft.training.fine_tune",
    "fine_tune": "kft.training.fine_tune",
    "FeatureCache": "kft.training.feature_cache",
    "cache_features": "kft.training.feature_cache",
    "fit_head": "kft.training.feature_cache",
    # CPU speed.
    "fast_cpu_convs": "kft.ops.cpu_convs",
    # Evaluation.
    "ClassificationReport": "kft.evaluation",
    "classification_report": "kft.evaluation",
    "evaluate_classifier": "kft.evaluation",
    "EvaluationReport": "kft.evaluation",
    "evaluate": "kft.evaluation",
    "report_from_predictions": "kft.evaluation",
    "StrategyComparison": "kft.evaluation",
    "ComparisonInterrupted": "kft.evaluation",
    "compare_strategies": "kft.evaluation",
    # Imbalanced data.
    "balanced_class_weight": "kft.training.class_weights",
    # Deployment: export and prediction from files.
    "export": "kft.deploy.exporting",
    "predict": "kft.deploy.prediction",
    "Prediction": "kft.deploy.prediction",
    "onnx_parity": "kft.deploy.parity",
    # Fine-tuning without forgetting.
    "L2SP": "kft.regularizers",
    "EWC": "kft.regularizers",
    "LwF": "kft.regularizers",
    "FisherInformation": "kft.regularizers",
    "estimate_fisher": "kft.regularizers",
    "regularize": "kft.regularizers",
    "load_penalty": "kft.regularizers",
    "with_source_head": "kft.regularizers",
    "source_classifier": "kft.regularizers",
    # Domain adaptation and strategy advice.
    "adapt_batchnorm": "kft.adaptation.batchnorm",
    "GradientReversal": "kft.adaptation.reversal",
    "coral": "kft.adaptation.losses",
    "mmd": "kft.adaptation.losses",
    "DomainAdaptationModel": "kft.adaptation.dann",
    "domain_shift": "kft.adaptation.diagnostic",
    "recommend_strategy": "kft.adaptation.recommend",
    # Run folders: `kft train` as a library call.
    "TrainConfig": "kft.runs",
    "TrainRunResult": "kft.runs",
    "load_run": "kft.runs",
    "train_run": "kft.runs",
    # Data parallel over the devices of one process.
    "data_parallel": "kft.distributed.data_parallel",
    # Model parallel: layout maps and meshes.
    "device_mesh": "kft.distributed.layouts",
    "layout_map": "kft.distributed.layouts",
    # Several processes: who writes files.
    "is_primary": "kft.distributed.processes",
}


def __getattr__(name):
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    else:
        raise AttributeError(f"module 'kft' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_MODULES) | set(_NAMES))


def _run_as_command():
    # The `kft` console script imports this package before `kft.cli`;
    # `kft --help` must not wait seconds for Keras and JAX.
    argv = getattr(sys, "argv", None) or [""]
    name = os.path.splitext(os.path.basename(argv[0]))[0]
    return name in ("kft", "kft-script")


if not _run_as_command():
    enable_compilation_cache()
    release_heap_after_compiles()
    keep_interrupts()
    # Importing every module registers kft's Keras classes, so
    # `keras.models.load_model` finds them right after `import kft`. The
    # `kft` command loads modules on first use instead (`__getattr__`).
    with root_logging_kept():
        for _name in (*_MODULES, *_NAMES):
            __getattr__(_name)
    del _name

__all__ = sorted(
    ["apply_cpu_xla_flags", "enable_compilation_cache",
     "release_heap_after_compiles", "reuse_freed_memory", *_MODULES,
     *_NAMES])
