"""Fine-tuning without forgetting: penalties in the compiled train step.

- `L2SP`: weights pulled toward their pretrained values (Li et al. 2018).
- `EWC` with `estimate_fisher`: a diagonal Fisher weights the pull
  (Kirkpatrick et al. 2017).
- `LwF` with `with_source_head`: distil the source head's outputs (Li &
  Hoiem 2016); `source_classifier` measures the source task.
- `regularize(model, penalty)` binds one to a model; `load_penalty` reads
  a penalty's side file (`penalty.save(path)`).
"""

from kft.regularizers.attach import regularize
from kft.regularizers.ewc import EWC
from kft.regularizers.fisher import FisherInformation
from kft.regularizers.fisher import estimate_fisher
from kft.regularizers.l2sp import L2SP
from kft.regularizers.lwf import LwF
from kft.regularizers.penalty import Penalty
from kft.regularizers.penalty import load_penalty
from kft.regularizers.source_head import KeptSourceHead
from kft.regularizers.source_head import source_classifier
from kft.regularizers.source_head import with_source_head

__all__ = ["EWC", "FisherInformation", "KeptSourceHead", "L2SP", "LwF",
           "Penalty", "estimate_fisher", "load_penalty", "regularize",
           "source_classifier", "with_source_head"]
