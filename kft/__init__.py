"""kft: fine-tuning pretrained vision backbones with Keras 3 on JAX."""

from kft._backend import ensure_jax_backend

ensure_jax_backend()

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

__version__ = "0.1.0"

__all__ = [
    "BackboneSpec",
    "ClassificationReport",
    "build_classifier",
    "changing_trainable",
    "classification_report",
    "create_backbone",
    "datasets",
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
]
