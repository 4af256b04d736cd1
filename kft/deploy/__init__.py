"""Deployment: exporting a classifier and predicting from image files.

- `kft.export` (`kft.deploy.exporting`): ONNX (static batch 1 or dynamic) or a
  `.keras` file plain Keras loads, with metadata.
- `kft.predict` (`kft.deploy.prediction`): top-k labels for image files,
  folders, PIL images or arrays, from a model, a `.keras` or an `.onnx`
  file, with optional test-time augmentation.
- `inference_model` (`kft.deploy.inference`): the stock-Keras inference
  graph both build on; `read_metadata` (`kft.deploy.metadata`).
"""

from kft.deploy.exporting import export
from kft.deploy.inference import inference_model
from kft.deploy.inference import kft_layers
from kft.deploy.metadata import read_metadata
from kft.deploy.prediction import Prediction
from kft.deploy.prediction import predict

__all__ = ["Prediction", "export", "inference_model", "kft_layers",
           "predict", "read_metadata"]
