import os

import grain
import jax
import numpy as np
import optax
import pytest
from grain import experimental as grain_experimental
from jax.sharding import PartitionSpec

from flan_jax import checkpoint, sharding, train
from flan_jax import model as model_lib
from tests.helpers import small_step_config


def make_state(mesh_config, rules_name, config):
  mesh = sharding.make_mesh(mesh_config)
  rules = sharding.rules(rules_name)
  model = model_lib.from_config(config.model)
  optimizer = optax.adam(1e-3)
  with sharding.context(mesh, rules):
    shapes, shardings = train.state_shapes(model, optimizer, mesh, rules)
    state = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0))
  return state, checkpoint.abstract(shapes, shardings)


def shard_streams(shards=2):
  """Stands in for pipeline.batches: a zip of one iterator per data shard."""
  return iter(grain_experimental.ZipIterDataset([grain.MapDataset.range(100 * s, 100 * s + 100).to_iter_dataset()
                                                 for s in range(shards)]))


def test_restores_onto_a_different_mesh_with_the_data_position(tmp_path):
  config = small_step_config()
  config.data.shards = 2
  state, _ = make_state(dict(data=8, fsdp=1, tensor=1), "dp", config)
  data = shard_streams()
  consumed = [next(data) for _ in range(3)]
  manager = checkpoint.manager(str(tmp_path), keep=2)
  checkpoint.save(manager, 3, state, data.get_state(), data_shards=2)
  manager.wait_until_finished()
  assert {"shard_0.json", "shard_1.json"} <= set(os.listdir(tmp_path / "checkpoints" / "3" / "data"))

  _, target = make_state(dict(data=1, fsdp=4, tensor=2), "fsdp_tp", config)
  fresh_data = shard_streams()
  restored = checkpoint.restore_latest(checkpoint.manager(str(tmp_path), keep=2), target, fresh_data, config.data)
  assert consumed == [(0, 100), (1, 101), (2, 102)] and next(fresh_data) == (3, 103)
  wq = restored.params["block_0"]["attention"]["wq"]
  assert wq.sharding == target.params["block_0"]["attention"]["wq"].sharding
  assert wq.sharding.spec == PartitionSpec("fsdp", "tensor", None)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


def test_no_checkpoint_gives_none_and_init_from_an_empty_directory_is_an_error(tmp_path):
  config = small_step_config()
  _, target = make_state(dict(data=-1, fsdp=1, tensor=1), "dp", config)
  assert checkpoint.restore_latest(checkpoint.manager(str(tmp_path), keep=1), target, shard_streams(),
                                   config.data) is None
  with pytest.raises(FileNotFoundError, match="checkpoints.*no checkpoint steps"):
    checkpoint.restore_params(str(tmp_path / "checkpoints"), target.params)


def test_a_checkpoint_of_another_model_size_is_a_config_error_not_unreadable(tmp_path):
  config = small_step_config()
  config.data.shards = 2
  state, _ = make_state(dict(data=-1, fsdp=1, tensor=1), "dp", config)
  manager = checkpoint.manager(str(tmp_path), keep=2)
  checkpoint.save(manager, 2, state, shard_streams().get_state(), data_shards=2)
  manager.wait_until_finished()
  config.model.mlp_dim *= 2
  _, target = make_state(dict(data=-1, fsdp=1, tensor=1), "dp", config)
  with pytest.raises(checkpoint.ConfigMismatchError, match=r"checkpoints/2 was written under another config.*"
                     r"params\.block_0\.mlp\.w_down: \(\d+, \d+\) in the checkpoint"):
    checkpoint.restore_latest(checkpoint.manager(str(tmp_path), keep=2), target, shard_streams(), config.data)
  assert os.listdir(tmp_path / "checkpoints") == ["2"]  # nothing moved aside

  config.model.mlp_dim //= 2  # the same model, read with data.num_workers other than the saved 0
  config.data.num_workers = 2
  _, target = make_state(dict(data=-1, fsdp=1, tensor=1), "dp", config)
  with pytest.raises(checkpoint.ConfigMismatchError, match=r"data\.num_workers=0, not 2"):
    checkpoint.restore_latest(checkpoint.manager(str(tmp_path), keep=2), target, shard_streams(), config.data)
  assert os.listdir(tmp_path / "checkpoints") == ["2"]
