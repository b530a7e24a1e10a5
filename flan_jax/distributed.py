"""Joining JAX's multi-process runtime, before anything touches a device.

An explicit coordinator (config.distributed, as launch/local_multiprocess.sh sets
it) wins. Otherwise `jax.distributed.initialize()` looks for a cluster itself:
SLURM, Open MPI, Kubernetes (GKE), Cloud TPU VMs, or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID in the environment. Where it finds none, the
run is one process.
"""

import jax

_NO_CLUSTER = "coordinator_address should be defined"  # what jax.distributed.initialize() says when it finds none


def initialize(cfg=None):
  """cfg: config.distributed (coordinator_address, num_processes, process_id); without it (the
  commands that take no config), the cluster JAX detects, if any."""
  # CPU devices of different processes talk through gloo (the default has no cross-process collectives).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if cfg is not None and cfg.coordinator_address:
    jax.distributed.initialize(cfg.coordinator_address, num_processes=cfg.num_processes, process_id=cfg.process_id)
    return
  try:
    jax.distributed.initialize()
  except ValueError as error:
    if _NO_CLUSTER not in str(error):
      raise
