"""Joining JAX's runtime from what JAX itself detects in the environment (here: a SLURM job step)."""

import os
import subprocess
import sys

from tests.helpers import ROOT, free_port

JOIN = """
import ml_collections
import jax
from flan_jax import distributed
distributed.initialize(ml_collections.ConfigDict(dict(coordinator_address="", num_processes=1, process_id=0)))
print(jax.process_index(), jax.process_count(), jax.device_count())
"""


def test_two_processes_of_a_slurm_job_step_join_without_a_coordinator_flag():
  slurm = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
           "JAX_COORDINATOR_PORT": str(free_port()), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  processes = [subprocess.Popen([sys.executable, "-c", JOIN], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, **slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)})
               for i in range(2)]
  outputs = [p.communicate(timeout=120) for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs
  assert sorted(out.split()[0] for out, _ in outputs) == ["0", "1"]
  assert all(out.split()[1:] == ["2", "4"] for out, _ in outputs)


def test_one_process_outside_any_cluster_runs_alone():
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR"))}
  result = subprocess.run([sys.executable, "-c", JOIN], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split()[:2] == ["0", "1"]
