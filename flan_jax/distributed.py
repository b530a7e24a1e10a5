"""Joining JAX's multi-process runtime, before anything touches a device.

An explicit coordinator (config.distributed, as launch/local_multiprocess.sh sets
it) wins; otherwise a SLURM job step with several tasks or a multi-host TPU VM is
detected from its environment and JAX finds the rest itself. One process alone
needs nothing.
"""

import os

import jax


def in_cluster() -> bool:
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return slurm_tasks > 1 or "," in tpu_hosts


def initialize(cfg):
  """cfg: config.distributed (coordinator_address, num_processes, process_id)."""
  # CPU devices of different processes talk through gloo (the default has no cross-process collectives).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if cfg.coordinator_address:
    jax.distributed.initialize(cfg.coordinator_address, num_processes=cfg.num_processes, process_id=cfg.process_id)
  elif in_cluster():
    jax.distributed.initialize()
