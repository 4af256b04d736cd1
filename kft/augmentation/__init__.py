"""Image augmentation: presets from `keras.layers`, fast layers, Mixup/CutMix.

- `presets`: `augmentation(preset)`, `eval_transform`, `attach`.
- `layers`: Keras' zoom, rotation, blur and erasing layers computed with
  `kft.ops.image_ops`; equalization and RandAugment that compile fast;
  hue and grayscale that draw only in training.
- `torch_style`: `RandomResizedCrop`, `RandomBrightnessScale`,
  `RandomContrastScale`, `RandomSaturationScale` and `GaussianBlur`, where
  torchvision's draws differ from Keras' layers.
- `mixing`: `MixUp`, `CutMix`, `MixUpOrCutMix`, run inside the compiled
  train step (also as `kft.layers`); `_batch_mix` holds their shared
  draws and mixing.
"""

from kft.augmentation.layers import IMAGENET_MEAN
from kft.augmentation.layers import Equalization
from kft.augmentation.layers import RandAugment
from kft.augmentation.layers import RandomErasing
from kft.augmentation.layers import RandomGaussianBlur
from kft.augmentation.layers import RandomGrayscale
from kft.augmentation.layers import RandomHue
from kft.augmentation.layers import RandomRotation
from kft.augmentation.layers import RandomZoom
from kft.augmentation.presets import PRESETS
from kft.augmentation.presets import attach
from kft.augmentation.presets import augmentation
from kft.augmentation.presets import eval_transform
from kft.augmentation.torch_style import GaussianBlur
from kft.augmentation.torch_style import RandomBrightnessScale
from kft.augmentation.torch_style import RandomContrastScale
from kft.augmentation.torch_style import RandomResizedCrop
from kft.augmentation.torch_style import RandomSaturationScale

__all__ = [
    "IMAGENET_MEAN",
    "Equalization",
    "GaussianBlur",
    "PRESETS",
    "RandAugment",
    "RandomBrightnessScale",
    "RandomContrastScale",
    "RandomErasing",
    "RandomGaussianBlur",
    "RandomGrayscale",
    "RandomHue",
    "RandomResizedCrop",
    "RandomSaturationScale",
    "RandomRotation",
    "RandomZoom",
    "attach",
    "augmentation",
    "eval_transform",
]
