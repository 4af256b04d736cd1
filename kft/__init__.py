"""kft: fine-tuning pretrained vision backbones with Keras 3 on JAX."""

from kft._backend import apply_cpu_xla_flags
from kft._backend import enable_compilation_cache
from kft._backend import ensure_jax_backend

ensure_jax_backend()
apply_cpu_xla_flags()
enable_compilation_cache()

from kft import datasets  # noqa: E402
from kft import layers  # noqa: E402
from kft.backbones import BackboneSpec  # noqa: E402
from kft.backbones import create_backbone  # noqa: E402
from kft.backbones import get_backbone  # noqa: E402
from kft.backbones import list_backbones  # noqa: E402
from kft.backbones import register_backbone  # noqa: E402
from kft.blocks import get_blocks  # noqa: E402
from kft.classifier import build_classifier  # noqa: E402
from kft.evaluation import ClassificationReport  # noqa: E402
from kft.evaluation import classification_report  # noqa: E402
from kft.evaluation import evaluate_classifier  # noqa: E402
from kft.freezing import freeze  # noqa: E402
from kft.freezing import set_trainable_blocks  # noqa: E402
from kft.freezing import unfreeze_top  # noqa: E402
from kft.summary import trainable_summary  # noqa: E402
from kft.training_state import changing_trainable  # noqa: E402
from kft.training_state import refresh_training_state  # noqa: E402
from kft.training_state import retarget_optimizer  # noqa: E402

# -- optimizers (issue 3) --
from kft import optimizers  # noqa: E402
from kft.optimizers import BlockwiseOptimizer  # noqa: E402
from kft.optimizers import GroupOptimizer  # noqa: E402
from kft.optimizers import layerwise_lr  # noqa: E402
# -- callbacks and fine_tune recipe (issue 4) --
from kft import callbacks  # noqa: E402
from kft.recipes import FineTuneResult  # noqa: E402
from kft.recipes import fine_tune  # noqa: E402
# -- data pipelines (issue 5) --
from kft import augmentation  # noqa: E402
from kft import data  # noqa: E402
from kft import image_ops  # noqa: E402
# -- batch augmentation (issue 6) --
from kft import mixing  # noqa: E402
from kft.models import BatchAugmentModel  # noqa: E402
# -- feature caching (issue 7) --
from kft import feature_cache  # noqa: E402
from kft.feature_cache import FeatureCache  # noqa: E402
from kft.feature_cache import cache_features  # noqa: E402
from kft.feature_cache import fit_head  # noqa: E402
# -- CPU speed: convolutions XLA runs slowly on CPU (issue 7) --
from kft import cpu_convs  # noqa: E402
from kft.cpu_convs import fast_cpu_convs  # noqa: E402

__version__ = "0.1.0"

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
