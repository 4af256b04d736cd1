"""Domain adaptation: AdaBN, gradient reversal and DANN, MMD and CORAL
alignment losses, the domain-shift diagnostic and strategy recommendation.

Modules: `batchnorm` (`adapt_batchnorm`), `reversal` (`GradientReversal`,
`reversal_lambda`), `losses` (`mmd`, `coral`), `dann`
(`DomainAdaptationModel`, `domain_pairs`, `build_discriminator`),
`diagnostic` (`domain_shift`), `recommend` (`recommend_strategy`).
"""

from kft.adaptation.batchnorm import adapt_batchnorm  # noqa: F401
from kft.adaptation.dann import DomainAdaptationModel  # noqa: F401
from kft.adaptation.dann import build_discriminator  # noqa: F401
from kft.adaptation.dann import domain_pairs  # noqa: F401
from kft.adaptation.diagnostic import DomainShiftReport  # noqa: F401
from kft.adaptation.diagnostic import domain_shift  # noqa: F401
from kft.adaptation.losses import coral  # noqa: F401
from kft.adaptation.losses import mmd  # noqa: F401
from kft.adaptation.recommend import StrategyRecommendation  # noqa: F401
from kft.adaptation.recommend import recommend_strategy  # noqa: F401
from kft.adaptation.reversal import GradientReversal  # noqa: F401
from kft.adaptation.reversal import reversal_lambda  # noqa: F401
