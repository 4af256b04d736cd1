"""Per-block learning rates that survive unfreezing.

`BlockwiseOptimizer` wraps one Keras optimizer and gives each group of
variables (a block of `kft.get_blocks`, or a regex over variable paths) its
own learning rate, like PyTorch `param_groups`. `GroupOptimizer` gives each
group its own optimizer (e.g. SGD for the backbone, AdamW for the head).

Both route every trainable variable to an inner optimizer with a rate
multiplier, and implement `retarget(variables)`, which `kft.freeze` /
`kft.changing_trainable` call whenever the trainable set changes (also
mid-`fit`): variables that stay trainable keep their slots, new ones get
fresh slots and their group's rate.

Groups: a key that names a block of `kft.get_blocks(model, patterns)` is
that block; any other key is a regex searched in variable paths. A key that
names a block and, read as a regex, also matches variables outside it is
an error, not silently one of the two.

Bias correction: every variable has its own step count, the number of
updates it received since it (last) became trainable, stored as the start
step in the `start_steps` optimizer variable. Adam-family corrections of a
newly unfrozen variable thus start at step 1, as in a PyTorch param group
added later. With a plain Keras Adam's shared counter, the first update of
a variable added at step t is (1 - beta_1) * sqrt(1 - beta_2**t) /
((1 - beta_1**t) * sqrt(1 - beta_2)) times its rate, whatever the
gradient: 2.5x at t=1000 and up to 3.2x with the default betas.

Schedules (`kft.optimizers.schedules`): `OneCycle` (PyTorch's
`OneCycleLR`, with its momentum cycle) and `Warmup`; they follow the
optimizer's global step, so per-block ratios hold at every step and a
block unfrozen at step `s` starts at the schedule's value at `s` times its
ratio. Weight averaging: `use_ema=True` on the wrappers, evaluated with
`averaged_weights(model)`.
"""

from kft.optimizers import schedules
from kft.optimizers.averaging import averaged_weights
from kft.optimizers.blockwise import BlockwiseOptimizer
from kft.optimizers.blockwise import layerwise_lr
from kft.optimizers.group import GroupOptimizer
from kft.optimizers.schedules import OneCycle
from kft.optimizers.schedules import OneCycleMomentum
from kft.optimizers.schedules import Warmup

__all__ = ["BlockwiseOptimizer", "GroupOptimizer", "OneCycle",
           "OneCycleMomentum", "Warmup", "averaged_weights", "layerwise_lr",
           "schedules"]
