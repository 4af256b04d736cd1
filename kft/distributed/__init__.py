"""Training kft models over several devices and processes.

kft on JAX's own runtime: `keras.distribution` (data and model parallel
meshes) and `jax.distributed` (several processes). Submodules:
`data_parallel` (one process, N devices), `processes` / `launch` (N
processes), `layouts` (model parallel layout maps), `collectives` (what a step
sends between devices, from its compiled HLO).
"""

from kft.distributed.collectives import collective_bytes  # noqa: F401
from kft.distributed.collectives import train_step_hlo  # noqa: F401
from kft.distributed.data_parallel import batch_shards  # noqa: F401
from kft.distributed.data_parallel import check_batch_size  # noqa: F401
from kft.distributed.data_parallel import check_placement  # noqa: F401
from kft.distributed.layouts import device_mesh  # noqa: F401
from kft.distributed.layouts import layout_map  # noqa: F401
from kft.distributed.launch import ProcessFailed  # noqa: F401
from kft.distributed.launch import launch_command  # noqa: F401
from kft.distributed.processes import data_shard  # noqa: F401
from kft.distributed.processes import every_example  # noqa: F401
from kft.distributed.processes import initialize  # noqa: F401
from kft.distributed.processes import is_primary  # noqa: F401
from kft.distributed.processes import process_count  # noqa: F401
from kft.distributed.processes import process_index  # noqa: F401
from kft.distributed.backup import BackupAndRestore  # noqa: F401
from kft.distributed.processes import barrier  # noqa: F401
from kft.distributed.processes import primary_path  # noqa: F401
