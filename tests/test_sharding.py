"""Meshes across hosts: hybrid (DCN) meshes and each process's rows of the batch."""

import jax
import pytest

from flan_jax import sharding

four_per_process = lambda device: device.id // 4  # 8 simulated devices as two processes of four


def test_each_process_needs_its_own_contiguous_block_of_rows():
  sharding.check_process_rows(sharding.make_mesh(dict(data=2, fsdp=1, tensor=4)), 16, four_per_process)
  sharding.check_process_rows(sharding.make_mesh(dict(data=2, fsdp=2, tensor=2)), 16, four_per_process)
  with pytest.raises(ValueError, match=r"process 0's devices hold rows \[0, 1, .*, 15\] .*own contiguous 8 rows"):
    sharding.check_process_rows(sharding.make_mesh(dict(data=1, fsdp=1, tensor=8)), 16, four_per_process)
  interleaved = [jax.devices()[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)]  # processes alternate along the data axis
  with pytest.raises(ValueError, match=r"process 0's devices hold rows \[0, 1, 4, 5, 8, 9, 12, 13\]"):
    sharding.check_process_rows(sharding.make_mesh(dict(data=8, fsdp=1, tensor=1), interleaved), 16, four_per_process)


def test_dcn_axes_must_divide_the_axis_and_match_the_processes():
  with pytest.raises(ValueError, match=r"mesh.dcn_data=3 must be positive and divide mesh.data=8"):
    sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1, dcn_data=3))
  with pytest.raises(ValueError, match=r"mesh.dcn_data=2 x mesh.dcn_fsdp=1 must equal the number of processes "
                                       r"the devices belong to \(1\)"):
    sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1, dcn_data=2))
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))
  assert dict(mesh.shape) == dict(data=8, fsdp=1, tensor=1)


def test_the_batch_follows_the_mesh_and_both_batch_sizes_are_checked_before_training(tiny_config):
  mesh = sharding.make_mesh(dict(data=2, fsdp=-1, tensor=2))  # 4 data x fsdp shards of the 8 devices
  tiny_config.data.rows_per_shard, tiny_config.train.microbatches = 3, 1
  sharding.resolve_batch_size(tiny_config, mesh)
  assert tiny_config.data.batch_size == 12
  tiny_config.data.rows_per_shard, tiny_config.train.microbatches = 3, 2
  with pytest.raises(ValueError, match=r"data.batch_size=12 must divide into train.microbatches=2"):
    sharding.resolve_batch_size(tiny_config, mesh)
  tiny_config.data.rows_per_shard, tiny_config.data.batch_size, tiny_config.train.microbatches = 0, 8, 1
  tiny_config.evals.seen.batch_size = 6
  with pytest.raises(ValueError, match=r"evals.seen.batch_size=6 must be a multiple of the 4 data x fsdp shards"):
    sharding.resolve_batch_size(tiny_config, mesh)
  tiny_config.evals.seen.batch_size = 8
  sharding.resolve_batch_size(tiny_config, mesh)
  assert tiny_config.data.batch_size == 8  # rows_per_shard 0: the batch as given
