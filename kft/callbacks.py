"""Keras callbacks of kft."""

from kft.training.compile_notice import CompileNotice
from kft.training.unfreezing import GradualUnfreezing

__all__ = ["CompileNotice", "GradualUnfreezing"]
