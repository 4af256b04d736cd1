"""Keras callbacks of kft."""

from kft.distributed.backup import BackupAndRestore
from kft.training.compile_notice import CompileNotice
from kft.training.precise_bn import PreciseBatchNorm
from kft.training.unfreeze_schedules import Every
from kft.training.unfreeze_schedules import Milestones
from kft.training.unfreeze_schedules import Plateau
from kft.training.unfreezing import GradualUnfreezing

__all__ = ["BackupAndRestore", "CompileNotice", "Every", "GradualUnfreezing", "Milestones",
           "Plateau", "PreciseBatchNorm"]
