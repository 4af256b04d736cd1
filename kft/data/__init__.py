"""Input pipelines: image folders, TFDS and arrays, for `model.fit`.

Every loader returns `kft.data.ImageDataset` (a `grain.IterDataset` of
`(images, labels)` batches) carrying `class_names`, `class_counts` and
`skipped` (the bad files it left out). `digits` is scikit-learn's
handwritten digits as a transfer task (also `kft.datasets.digits`).
"""

from kft.data._arrays import from_arrays
from kft.data._arrays import from_tfds
from kft.data._dataset import ImageDataset
from kft.data._dataset import SkippedFilesWarning
from kft.data._directory import ImageSplits
from kft.data._directory import from_directory
from kft.data._images import SkippedFile
from kft.data._images import load_image
from kft.data.digits import TransferSplits
from kft.data.digits import digits

__all__ = [
    "ImageDataset",
    "ImageSplits",
    "SkippedFile",
    "SkippedFilesWarning",
    "TransferSplits",
    "from_arrays",
    "from_directory",
    "digits",
    "from_tfds",
    "load_image",
]
